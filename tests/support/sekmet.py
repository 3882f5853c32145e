"""SEKMET, a FHIR R4 server from PyPI (`sekmet-fhir`), run on loopback for integration tests.

SEKMET pins fhir.resources<9, so it lives in its own virtualenv, created on first use
and reused afterwards (default ~/.cache/hl7engine-test/sekmet-venv, or
$HL7ENGINE_SEKMET_VENV). CI can create it ahead of the tests with

    python -m tests.support.sekmet --install

Each server gets a temporary directory with its settings.yaml and SQLite database,
binds 127.0.0.1 on a free port, runs with its workflow simulator and traffic log off,
and can be stopped and started again on the same port and database (an outage).
Settings are SEKMET's own (sekmet/config.py in the wheel): host, port, base_url,
db_path, simulator.enabled, log_inbound, validation.inbound, server_auth.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

SEKMET_REQUIREMENT = "sekmet-fhir>=0.1.1,<0.2"
VENV_ENV = "HL7ENGINE_SEKMET_VENV"
REQUIRE_ENV = "HL7ENGINE_REQUIRE_SERVICES"
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hl7engine-test" / "sekmet-venv"
_INSTALL_TIMEOUT_S = 900
_START_TIMEOUT_S = 90.0
_STOP_TIMEOUT_S = 15.0


class SekmetUnavailableError(RuntimeError):
    """SEKMET cannot be installed or started here; the message says why."""


def services_required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def venv_dir() -> Path:
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV)


def ensure_installed() -> Path:
    """The `sekmet` executable of the test virtualenv, creating the venv when missing.

    A lock file serialises concurrent installers (parallel test runs on one machine).
    """
    venv = venv_dir()
    exe = venv / "bin" / "sekmet"
    if _works(venv):
        return exe
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _works(venv):
            return exe
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             SEKMET_REQUIREMENT],
        ]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SekmetUnavailableError(f"installing SEKMET failed: {exc.__class__.__name__}") from exc
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
                raise SekmetUnavailableError(f"installing SEKMET failed (rc={done.returncode}): {tail[0]}")
        if not _works(venv):
            raise SekmetUnavailableError("SEKMET installed but `import sekmet` fails in its venv")
    return exe


def _works(venv: Path) -> bool:
    python = venv / "bin" / "python"
    if not (venv / "bin" / "sekmet").exists() or not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "import sekmet.main"], capture_output=True, timeout=120, check=False)
    return probe.returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SmartClient:
    """A SMART Backend Services client registered with SEKMET by its public key."""

    client_id: str
    public_key_pem: Path
    scopes: str = "system/*.*"


@dataclass
class SekmetServer:
    """One SEKMET process: start, stop, start again (same port, same database)."""

    exe: Path
    workdir: Path
    smart_clients: list[SmartClient] = field(default_factory=list)
    static_tokens: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = None
    _log: Any = None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/fhir"

    @property
    def token_url(self) -> str:
        """SEKMET's token endpoint; client assertions must name exactly this as `aud`."""
        return f"{self.root_url}/auth/token"

    @property
    def log_path(self) -> Path:
        return self.workdir / "sekmet.log"

    def settings(self) -> dict[str, Any]:
        auth: dict[str, Any] = {"types": ["none"]}
        if self.smart_clients or self.static_tokens:
            auth = {
                "types": (["smart"] if self.smart_clients else []) + (["bearer"] if self.static_tokens else []),
                "tokens": self.static_tokens,
                "smart_clients": [
                    {"client_id": c.client_id, "public_key_path": str(c.public_key_pem), "scopes": c.scopes}
                    for c in self.smart_clients
                ],
                "token_lifetime": 3600,
            }
        return {
            "base_url": self.base_url,
            "host": "127.0.0.1",
            "port": self.port,
            "data_dir": str(self.workdir / "data"),
            "db_path": str(self.workdir / "data" / "sekmet.db"),
            "own_private_key_path": str(self.workdir / "keys" / "sekmet_private.pem"),
            "simulator": {"enabled": False},
            "log_inbound": False,  # its traffic log would store every Bundle a second time
            "validation": {"inbound": "strict"},
            "server_auth": auth,
        }

    def start(self) -> None:
        """Start the process and return once GET /metadata answers 200."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "settings.yaml"
        config.write_text(json.dumps(self.settings(), indent=1), encoding="utf-8")  # JSON is YAML
        self._log = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
        self._proc = subprocess.Popen(
            [str(self.exe), "serve", "-c", str(config)],
            cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise SekmetUnavailableError(f"SEKMET exited with {self._proc.returncode}: {self._log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/metadata", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # polling a child process's readiness with a deadline, not synchronising tests
        self.stop()
        raise SekmetUnavailableError(f"SEKMET did not answer /metadata within {_START_TIMEOUT_S:.0f} s")

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-5:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (then SIGKILL after a grace period) to this server's own process group."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=_STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------ reading back

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Accept": "application/fhir+json"}
        if token is None and self.static_tokens:
            token = self.static_tokens[0]
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)

    def search(self, resource_type: str, **params: str) -> dict[str, Any]:
        with self.client() as http:
            response = http.get(f"/{resource_type}", params=params)
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    def count(self, resource_type: str, **params: str) -> int:
        total = self.search(resource_type, _summary="count", **params).get("total")
        assert isinstance(total, int), f"{resource_type}: no total in the search result"
        return total


def main() -> int:
    """`python -m tests.support.sekmet --install`: create the venv (CI runs this before the tests)."""
    if "--install" not in sys.argv[1:]:
        print("usage: python -m tests.support.sekmet --install", file=sys.stderr)
        return 2
    try:
        exe = ensure_installed()
    except SekmetUnavailableError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(exe)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
