"""Servers under test, each a child process of the benchmark.

`ServerProcess` runs a baseline (bench.baseline_server, bench.hl7_baseline_server)
and learns its port from the `LISTENING host:port` line it prints.
`EngineProcess` writes an engine config shaped exactly like DESIGN §3 (temporary
SQLite store, admin port, one channel with `ack: on_commit`, pipeline
`v2_to_fhir` R4B, a `file` sink), runs `python -m engine run -c <config>`, waits
for `GET /readyz`, counts Bundle lines in the sink file, reads the peak RSS and
stops the engine with SIGTERM.

Waiting here is polling with a deadline: these are other processes, there is
no event to wait on.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
_POLL_S = 0.02
_BOX = "│╭╰─┃┏┗"  # rich-style traceback frames


class ProcessUnavailable(RuntimeError):
    """A server under test did not start (or died). The reason holds no message content."""


# --------------------------------------------------------------- baselines


class ServerProcess:
    """A baseline server in a child process; a context manager that stops it on exit."""

    def __init__(self, module: str, *extra_args: str, start_timeout_s: float = 15.0) -> None:
        self.argv = [sys.executable, "-m", module, "--port", "0", *extra_args]
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.host = ""
        self.port = 0
        self.uvloop = False
        self.exit_code: int | None = None

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen(self.argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, env=_child_env())
        line = _read_line(self.process, self.start_timeout_s)
        if not line.startswith("LISTENING "):
            self.stop()
            raise ProcessUnavailable(f"{self.argv[2]} did not announce its port (got {line[:80]!r})")
        address, *flags = line.split()[1:]
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.uvloop = "uvloop=1" in flags
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
        if self.process is None or self.exit_code is not None:
            return self.exit_code
        self.exit_code = _terminate(self.process, timeout_s)[0]
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.exit_code


def _read_line(process: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The first stdout line of `process`, or '' if none came before the deadline."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return ""
    return process.stdout.readline().decode("utf-8", "replace").strip()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    return env


def _terminate(process: subprocess.Popen[bytes], timeout_s: float) -> tuple[int, bool]:
    """(exit code, forced): SIGTERM and wait; SIGKILL when the deadline passes."""
    if process.poll() is not None:
        return process.returncode, False
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout_s), False
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(), True


# -------------------------------------------------------------------- engine


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (the engine config needs it before the engine binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


ENGINE_CONFIG = """\
{workers}store:
  path: {store}
admin:
  listen: 127.0.0.1:{admin_port}
channels:
  - name: bench
    listen: 127.0.0.1:{mllp_port}
    ack: on_commit{limits}
    pipeline:
      - type: v2_to_fhir
        fhir_version: R4B
    sinks:
      - type: file
        path: {sink}
"""

# Every benchmark sender connects from 127.0.0.1, i.e. one peer, whereas C real senders
# are C hosts: the per-peer bound (DESIGN §5.3) is raised to C so it does not cap the load.
LIMITS = """
    limits:
      max_connections_per_peer: {per_peer}
      max_connections: {total}"""


@dataclass(frozen=True, slots=True)
class StopResult:
    """How the engine ended: exit code, whether SIGKILL was needed, and how long it took."""

    exit_code: int
    forced: bool
    seconds: float
    exited_before_signal: bool = False

    @property
    def clean(self) -> bool:
        return self.exit_code == 0 and not self.forced and not self.exited_before_signal


#: How to start the engine; `run -c <config>` is appended (DESIGN §3 CLI).
DEFAULT_ENGINE_COMMAND = (sys.executable, "-m", "engine")


class EngineProcess:
    """`python -m engine run` on a temporary store and file sink under `workdir`."""

    def __init__(
        self,
        workdir: Path,
        command: Sequence[str] = DEFAULT_ENGINE_COMMAND,
        connections_per_peer: int | None = None,
        workers: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.workers = workers  # the engine's `workers:`; None = its default (auto)
        self.command = list(command)
        self.connections_per_peer = connections_per_peer
        self.mllp_port = free_port()
        self.admin_port = free_port()
        self.config_path = workdir / "engine.yaml"
        self.sink_path = workdir / "out.ndjson"
        self.log_path = workdir / "engine.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._sink_offset = 0
        self._sink_lines = 0

    def write_config(self) -> Path:
        """DESIGN §3's config; plus channel `limits` when `connections_per_peer` is set."""
        per_peer = self.connections_per_peer
        limits = LIMITS.format(per_peer=per_peer, total=max(per_peer, 256)) if per_peer else ""
        self.config_path.write_text(
            ENGINE_CONFIG.format(
                workers="" if self.workers is None else f"workers: {self.workers}\n",
                limits=limits,
                store=self.workdir / "hl7engine.db",
                admin_port=self.admin_port,
                mllp_port=self.mllp_port,
                sink=self.sink_path,
            ),
            encoding="utf-8",
        )
        return self.config_path

    @property
    def argv(self) -> list[str]:
        return [*self.command, "run", "-c", str(self.config_path)]

    def start(self) -> None:
        self.write_config()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=_child_env()
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait_ready(self, timeout_s: float = 30.0) -> float:
        """Poll GET /readyz until 200; returns seconds taken. Raises if it dies or times out."""
        assert self.process is not None
        url = f"http://127.0.0.1:{self.admin_port}/readyz"
        started = time.monotonic()
        deadline = started + timeout_s
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ProcessUnavailable(
                        f"engine exited with code {self.process.returncode} before ready; log tail: {self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return time.monotonic() - started
                time.sleep(0.1)
        raise ProcessUnavailable(f"engine not ready after {timeout_s:.0f}s; log tail: {self.log_tail()}")

    def log_tail(self, lines: int = 6) -> str:
        """The last lines of the engine's own log (the engine keeps PHI out of its logs).

        Lines of drawn traceback boxes are skipped: the exception line says more.
        """
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        kept = [line.strip() for line in text.splitlines() if line.strip() and line.strip()[0] not in _BOX]
        return " | ".join(kept[-lines:])

    def delivered(self) -> int:
        """Complete lines in the sink file so far (read incrementally)."""
        try:
            with self.sink_path.open("rb") as sink:
                sink.seek(self._sink_offset)
                chunk = sink.read()
        except FileNotFoundError:
            return 0
        last_newline = chunk.rfind(b"\n")
        if last_newline >= 0:
            self._sink_lines += chunk.count(b"\n", 0, last_newline + 1)
            self._sink_offset += last_newline + 1
        return self._sink_lines

    def wait_delivered(self, expected: int, timeout_s: float) -> tuple[int, float]:
        """Poll the sink until `expected` lines; returns (lines, perf_counter when last seen growing)."""
        deadline = time.perf_counter() + timeout_s
        count = self.delivered()
        last_change = time.perf_counter()
        while count < expected and time.perf_counter() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(_POLL_S)
            now_count = self.delivered()
            if now_count != count:
                count, last_change = now_count, time.perf_counter()
        return count, last_change

    def peak_rss_bytes(self) -> int | None:
        """Peak resident memory (VmHWM) of the engine and of any worker processes it started."""
        if self.process is None:
            return None
        pids = [self.process.pid, *descendants(self.process.pid)]
        peaks = [peak for pid in pids if (peak := _vm_hwm_bytes(pid)) is not None]
        return sum(peaks) if peaks else None

    def stop(self, timeout_s: float = 30.0) -> StopResult | None:
        if self.process is None:
            return None
        started = time.monotonic()
        already_exited = self.process.poll() is not None
        code, forced = _terminate(self.process, timeout_s)
        return StopResult(code, forced, round(time.monotonic() - started, 3), already_exited)


def _vm_hwm_bytes(pid: int) -> int | None:
    """Linux's peak RSS of one process (/proc/<pid>/status VmHWM), or psutil's current RSS."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    # Not Linux: psutil (optional) gives the current RSS, sampled once, a lower bound of the peak.
    try:
        psutil = importlib.import_module("psutil")
    except ImportError:
        return None
    try:
        rss: int = psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None
    return rss


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds one process has used so far (/proc/<pid>/stat; Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name (which may hold spaces): utime is the
    # 14th field of the line, stime the 15th, both in clock ticks.
    fields = stat.rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class CpuMeter:
    """CPU seconds used by a process (and, separately, its descendants) between two reads.

    CPU per message is what a benchmark on a shared 2-core box can still measure
    honestly when other load makes wall-clock rates move: it does not depend on
    who else got the cores. Descendants that exit between reads are not counted.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._main, self._children = self._read()

    def _read(self) -> tuple[float, dict[int, float]]:
        children = {child: cpu_seconds(child) for child in descendants(self.pid)}
        return cpu_seconds(self.pid) or 0.0, {k: v for k, v in children.items() if v is not None}

    def lap(self) -> tuple[float, float]:
        """(main process, descendants) CPU seconds since the previous lap; starts the next."""
        main, children = self._read()
        main_used = main - self._main
        children_used = sum(used - self._children.get(pid, 0.0) for pid, used in children.items())
        self._main, self._children = main, children
        return main_used, children_used


def descendants(pid: int) -> list[int]:
    """Child processes, recursively, from /proc/<pid>/task/*/children (Linux)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                kids = [int(k) for k in children.read_text().split()]
                found.extend(kids)
                pending.extend(kids)
    return found
