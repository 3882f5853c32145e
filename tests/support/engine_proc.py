"""Runs the engine as a real subprocess (`python -m engine run`) for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(
    directory: Path,
    *,
    mllp_port: int,
    admin_port: int,
    channel: str = "adt",
    extra_channel_yaml: str = "",
    pipeline_yaml: str = "      - type: v2_to_fhir\n        fhir_version: R4B\n",
) -> Path:
    """The DESIGN.md §3 shape, with paths inside `directory`."""
    config = directory / "engine.yaml"
    config.write_text(
        f"""store:
  path: {directory / 'store.db'}
admin:
  listen: 127.0.0.1:{admin_port}
channels:
  - name: {channel}
    listen: 127.0.0.1:{mllp_port}
    ack: on_commit
{extra_channel_yaml}    pipeline:
{pipeline_yaml}    sinks:
      - type: file
        path: {directory / 'out.ndjson'}
""",
        encoding="utf-8",
    )
    return config


class EngineProcess:
    def __init__(self, config: Path, admin_port: int, log_path: Path) -> None:
        self.config = config
        self.admin_port = admin_port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "run", "-c", str(self.config)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        log.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.admin_port}/readyz"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine exited with {self.proc.returncode}; see {self.log_path}")
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError),
                urllib.request.urlopen(url, timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"engine not ready after {timeout}s; see {self.log_path}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
