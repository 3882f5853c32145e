"""`python -m bench.backlog`: backlog and memory behaviour of the engine (issue #6).

The engine runs as a separate process on a temporary SQLite store with one channel
whose `file` sink is down: it writes to /dev/full, so every write fails with ENOSPC,
which the sink classifies as transient (engine/sinks/file.py) and the runner retries
with backoff. With the sink down, N messages are sent over MLLP by C senders that each
wait for their ACK (bench/loadgen.py): that is the backlog build-up, measured in chunks
so a slowdown as the table grows shows. Then K idle MLLP connections are opened and
the engine is left alone for a while (CPU and RSS with backlog + idle connections +
sink down). Then the sink recovers: the config is rewritten to a real file and applied
with POST /api/reload (or by restarting the engine, `--recover restart`), and the
backlog drains until the NDJSON file holds one Bundle line per ACKed message.

Throughout, a sampler thread reads every `--sample-interval` seconds: the summed
VmRSS (and Pss) of the engine and its child processes (/proc/<pid>/status,
smaps_rollup; the worker pool is children of the engine), their CPU time, and
hl7engine_queue_depth and hl7engine_connections_open from /metrics.

Targets (issue #6): <= 150 MB RSS with 1,000 idle connections and a 100,000-message
backlog; the backlog drains with flat memory; ingestion stays responsive while a sink
is down (ACK p99; the custody target is <= 10 ms at C = 64).

Waiting here is polling with a deadline: the engine is another process, there is no
event to wait on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from bench.engine_proc import DEFAULT_ENGINE_COMMAND, REPO_ROOT, EngineProcess, ProcessUnavailable, descendants
from bench.idle import IdleConnections, raise_fd_limit
from bench.loadgen import LoadResult, run_load, run_sync, uvloop_available
from bench.messages import MessageSource, builtin_templates

SCHEMA_VERSION = 1
CHANNEL = "bench"
#: A sink target that accepts open() but fails every write with ENOSPC (Linux).
DOWN_SINK = Path("/dev/full")
_MB = 1024 * 1024
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_POLL_S = 0.05

# Targets of issue #6, as numbers the verdicts compare against.
TARGET_RSS_MB = 150.0
TARGET_INGEST_P99_MS = 10.0
#: "Flat" memory while draining: peak minus the RSS when the drain started.
TARGET_DRAIN_GROWTH_MB = 20.0
#: Waiting for a down sink should cost (almost) nothing: engine main-process CPU while quiet.
TARGET_QUIET_CPU_PERCENT = 10.0

ENGINE_CONFIG = """\
{workers}store:
  path: {store}
admin:
  listen: 127.0.0.1:{admin_port}
channels:
  - name: {channel}
    listen: 127.0.0.1:{mllp_port}
    ack: on_commit
    limits:
      max_connections_per_peer: {per_peer}
      max_connections: {per_peer}
    retry:
      initial_s: {retry_s}
      max_s: {retry_s}
      max_attempts: 1000000
    pipeline:
      - type: v2_to_fhir
        fhir_version: R4B
    sinks:
      - type: file
        path: {sink}
"""


@dataclass(frozen=True, slots=True)
class BacklogSettings:
    """One backlog run. Defaults are the issue #6 scenario."""

    messages: int = 100_000
    idle_connections: int = 1_000
    connections: int = 64
    chunks: int = 10
    reference: int = 10_000  # messages sent with the sink working first, for comparison; 0 = skip
    workers: int | None = None  # the engine's `workers:` (stage processes); None = its default (auto)
    retry_s: float = 2.0
    quiet_s: float = 5.0
    sample_interval_s: float = 0.5
    drain_timeout_s: float = 900.0
    ack_timeout_s: float = 10.0
    recover: Literal["reload", "restart"] = "reload"
    use_uvloop: bool = True
    keep_workdir: bool = False
    engine_command: tuple[str, ...] = DEFAULT_ENGINE_COMMAND


# ------------------------------------------------------------------ the engine


class BacklogEngine(EngineProcess):
    """The bench engine with a retry policy, room for K idle connections, and a switchable sink.

    `sink_path` (where Bundles land once the sink works) stays the file `delivered()` counts;
    `sink_target` is what the config currently points the sink at.
    """

    def __init__(self, workdir: Path, settings: BacklogSettings) -> None:
        super().__init__(workdir, command=settings.engine_command)
        self.settings = settings
        self.sink_target = DOWN_SINK

    def write_config(self) -> Path:
        # Every sender is the one peer 127.0.0.1: the per-peer bound must admit all of them.
        per_peer = self.settings.connections + self.settings.idle_connections + 16
        self.config_path.write_text(
            ENGINE_CONFIG.format(
                workers="" if self.settings.workers is None else f"workers: {self.settings.workers}\n",
                store=self.workdir / "hl7engine.db",
                admin_port=self.admin_port,
                channel=CHANNEL,
                mllp_port=self.mllp_port,
                per_peer=per_peer,
                retry_s=self.settings.retry_s,
                sink=self.sink_target,
            ),
            encoding="utf-8",
        )
        return self.config_path

    def use_sink(self, target: Path) -> None:
        self.sink_target = target
        self.write_config()

    def reload(self) -> None:
        """POST /api/reload (the admin API is open on loopback when no tokens are configured)."""
        response = httpx.post(f"http://127.0.0.1:{self.admin_port}/api/reload", timeout=30.0)
        if response.status_code != 200:
            raise ProcessUnavailable(f"reload refused: HTTP {response.status_code} {response.text[:200]}")


# ------------------------------------------------------------------ sampling


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of the engine's process tree and its gauges."""

    t: float  # seconds since the run started
    phase: str
    rss_bytes: int  # summed VmRSS of the engine and its descendants
    pss_bytes: int | None  # summed Pss (shared pages split between processes)
    main_rss_bytes: int
    processes: int
    cpu_main_s: float
    cpu_children_s: float
    queue_depth: float | None
    connections_open: float | None


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux)."""
    return [pid, *descendants(pid)]


def _status_kb(pid: int, key: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return None


def _pss_kb(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return None


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (/proc/<pid>/stat fields 14 and 15)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return 0.0


_GAUGE_RE = re.compile(rb'^(hl7engine_queue_depth|hl7engine_connections_open)\{channel="([^"]*)"\} (\S+)$', re.M)


def scrape_gauges(client: httpx.Client, admin_port: int, channel: str = CHANNEL) -> dict[str, float]:
    """hl7engine_queue_depth and hl7engine_connections_open of `channel` ({} when unreachable)."""
    try:
        body = client.get(f"http://127.0.0.1:{admin_port}/metrics").content
    except httpx.HTTPError:
        return {}
    return {
        m.group(1).decode(): float(m.group(3))
        for m in _GAUGE_RE.finditer(body)
        if m.group(2).decode() == channel
    }


class Sampler:
    """A thread reading the engine every `interval_s`; `phase` labels the samples taken."""

    def __init__(self, engine: BacklogEngine, interval_s: float) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.phase = "start"
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backlog-sampler", daemon=True)
        self._t0 = time.monotonic()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def now(self) -> float:
        return time.monotonic() - self._t0

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def take(self, client: httpx.Client) -> Sample | None:
        process = self.engine.process
        if process is None or process.poll() is not None:
            return None
        pids = process_tree(process.pid)
        rss = [_status_kb(pid, "VmRSS:") or 0 for pid in pids]
        pss = [_pss_kb(pid) for pid in pids]
        gauges = scrape_gauges(client, self.engine.admin_port)
        sample = Sample(
            t=round(self.now(), 3),
            phase=self.phase,
            rss_bytes=sum(rss) * 1024,
            pss_bytes=None if None in pss else sum(p or 0 for p in pss) * 1024,
            main_rss_bytes=rss[0] * 1024,
            processes=len(pids),
            cpu_main_s=_cpu_s(pids[0]),
            cpu_children_s=sum(_cpu_s(pid) for pid in pids[1:]),
            queue_depth=gauges.get("hl7engine_queue_depth"),
            connections_open=gauges.get("hl7engine_connections_open"),
        )
        with self._lock:
            self.samples.append(sample)
        return sample

    def _run(self) -> None:
        with httpx.Client(timeout=1.0) as client:
            while True:
                self.take(client)
                if self._stop.wait(self.interval_s):  # periodic sampling, not synchronisation
                    return


# ------------------------------------------------------------------ phases


def wait_for_gauge(
    sampler: Sampler, predicate: Callable[[Sample], bool], timeout_s: float
) -> Sample | None:
    """Poll the sampler's readings until one satisfies `predicate` (or the deadline passes)."""
    deadline = time.monotonic() + timeout_s
    seen = len(sampler.snapshot())
    while time.monotonic() < deadline:
        samples = sampler.snapshot()
        for sample in samples[seen:]:
            if predicate(sample):
                return sample
        seen = len(samples)
        time.sleep(_POLL_S)
    return None


def hold(seconds: float) -> None:
    """Leave the engine alone for a measured interval (the sampler reads it meanwhile)."""
    time.sleep(seconds)


def wait_drained(engine: BacklogEngine, expected: int, timeout_s: float) -> dict[str, Any]:
    """Poll the sink file until it holds `expected` Bundle lines in all.

    Rates count only the lines added while waiting. `flowing_per_s` starts at the first
    new line, so it leaves out the wait for the sink's next retry; the per-second
    timeline shows whether the rate holds as the backlog shrinks.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    before = count = engine.delivered()
    timeline: list[tuple[float, int]] = []
    first_line_at: float | None = None
    last_change = started
    next_mark = started
    while count < expected and time.monotonic() < deadline:
        if engine.process is not None and engine.process.poll() is not None:
            break
        time.sleep(_POLL_S)
        now_count = engine.delivered()
        now = time.monotonic()
        if now_count != count:
            first_line_at = now if first_line_at is None else first_line_at
            count, last_change = now_count, now
        if now >= next_mark:
            timeline.append((round(now - started, 2), count - before))
            next_mark = now + 1.0
    timeline.append((round(last_change - started, 2), count - before))
    drained = count - before
    flowing = last_change - first_line_at if first_line_at is not None else 0.0
    return {
        "expected": expected,
        "delivered": count,
        "complete": count >= expected,
        "seconds": round(last_change - started, 3),
        "first_line_after_s": None if first_line_at is None else round(first_line_at - started, 3),
        "delivered_per_s": round(drained / max(last_change - started, 1e-9), 1),
        "flowing_per_s": round(drained / flowing, 1) if flowing > 0 else None,
        "timeline": timeline,
    }


def sink_ids(path: Path) -> tuple[int, int]:
    """(lines, distinct Bundle ids) in the NDJSON sink; the runner sets Bundle.id = <channel>-<message id>."""
    tail_id = re.compile(rb'"id":"([^"]+)"\}\s*$')
    ids: set[bytes] = set()
    lines = 0
    with contextlib.suppress(FileNotFoundError), path.open("rb") as sink:
        for line in sink:
            lines += 1
            match = tail_id.search(line[-96:])
            if match is not None:
                ids.add(match.group(1))
                continue
            with contextlib.suppress(ValueError, AttributeError):
                ident = json.loads(line).get("id")
                if isinstance(ident, str):
                    ids.add(ident.encode())
    return lines, len(ids)


# ------------------------------------------------------------------ summary


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value / _MB, 1)


def _phase(samples: Sequence[Sample], *phases: str) -> list[Sample]:
    return [s for s in samples if s.phase in phases]


def cpu_percent(samples: Sequence[Sample]) -> dict[str, float | None]:
    """CPU use of the engine (main process, children) over a run of samples, in % of one core."""
    if len(samples) < 2:
        return {"main": None, "children": None}
    first, last = samples[0], samples[-1]
    span = max(last.t - first.t, 1e-9)
    return {
        "main": round(100 * (last.cpu_main_s - first.cpu_main_s) / span, 1),
        "children": round(100 * (last.cpu_children_s - first.cpu_children_s) / span, 1),
    }


def rss_summary(samples: Sequence[Sample]) -> dict[str, Any]:
    if not samples:
        return {}
    rss = [s.rss_bytes for s in samples]
    pss = [s.pss_bytes for s in samples if s.pss_bytes is not None]
    return {
        "rss_start_mb": _mb(rss[0]),
        "rss_peak_mb": _mb(max(rss)),
        "rss_end_mb": _mb(rss[-1]),
        "pss_peak_mb": _mb(max(pss)) if pss else None,
        "main_rss_peak_mb": _mb(max(s.main_rss_bytes for s in samples)),
        "processes": max(s.processes for s in samples),
    }


def rss_by_phase(samples: Sequence[Sample]) -> dict[str, dict[str, float | None]]:
    """The last reading of each phase: what the empty engine, the backlog and the idle connections cost."""
    last: dict[str, Sample] = {}
    for sample in samples:
        last[sample.phase] = sample
    return {
        phase: {"rss_mb": _mb(s.rss_bytes), "pss_mb": _mb(s.pss_bytes), "main_rss_mb": _mb(s.main_rss_bytes)}
        for phase, s in last.items()
    }


def rss_slope_mb_per_min(samples: Sequence[Sample]) -> float | None:
    """Least-squares slope of the summed RSS over time: ~0 when memory is flat."""
    if len(samples) < 3:
        return None
    ts = [s.t for s in samples]
    ys = [s.rss_bytes / _MB for s in samples]
    mean_t, mean_y = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mean_t) ** 2 for t in ts)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (y - mean_y) for t, y in zip(ts, ys, strict=True))
    return round(60 * cov / var, 2)


def build_summary(results: Sequence[LoadResult]) -> dict[str, Any]:
    elapsed = sum(r.elapsed_s for r in results)
    accepted = sum(r.accepted for r in results)
    return {
        "sent": sum(r.sent for r in results),
        "accepted": accepted,
        "not_accepted": sum(r.rejected + r.mismatched for r in results),
        "errors": sum(r.errors for r in results),
        "elapsed_s": round(elapsed, 3),
        "msgs_per_s": round(accepted / elapsed, 1) if elapsed else 0.0,
        "worst_chunk_p99_ms": max((r.p99_ms for r in results), default=0.0),
        "median_chunk_p99_ms": sorted(r.p99_ms for r in results)[len(results) // 2] if results else 0.0,
        "max_ms": max((r.max_ms for r in results), default=0.0),
        "first_chunk_msgs_per_s": results[0].msgs_per_s if results else 0.0,
        "last_chunk_msgs_per_s": results[-1].msgs_per_s if results else 0.0,
        "chunks": [r.to_json() for r in results],
    }


def verdicts(result: dict[str, Any], settings: BacklogSettings) -> dict[str, bool | None]:
    """Pass/fail per check (None: not measured); the last four are issue #6's targets, as we read them."""
    build, drained, idle = result["build"], result["drain"], result["idle"]

    def at_most(value: float | None, bound: float) -> bool | None:
        return None if value is None else value <= bound

    return {
        "all_acked": build["accepted"] == settings.messages and build["errors"] == 0,
        "drained_complete": drained["complete"],
        "no_duplicates": drained.get("distinct_ids") == drained.get("sink_lines"),
        "queue_depth_back_to_zero": result["queue_depth"]["final"] == 0,
        "idle_connections_kept": idle.get("still_open_after_drain") == idle.get("opened"),
        f"quiet_engine_cpu_le_{TARGET_QUIET_CPU_PERCENT:.0f}pct": at_most(
            idle["engine_cpu_percent"]["main"], TARGET_QUIET_CPU_PERCENT
        ),
        f"rss_backlog_plus_idle_le_{TARGET_RSS_MB:.0f}mb": at_most(idle.get("rss_peak_mb"), TARGET_RSS_MB),
        f"drain_rss_growth_le_{TARGET_DRAIN_GROWTH_MB:.0f}mb": at_most(
            drained.get("rss_growth_mb"), TARGET_DRAIN_GROWTH_MB
        ),
        f"ingest_p99_while_sink_down_le_{TARGET_INGEST_P99_MS:.0f}ms": at_most(
            build["worst_chunk_p99_ms"], TARGET_INGEST_P99_MS
        ),
    }


# ------------------------------------------------------------------ the run


class BacklogRun:
    """The scenario, one method per phase, in the order `run` calls them."""

    def __init__(self, settings: BacklogSettings, workdir: Path, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.workdir = workdir
        self.say = say
        self.source = MessageSource(builtin_templates())
        self.engine = BacklogEngine(workdir, settings)
        self.sampler = Sampler(self.engine, settings.sample_interval_s)
        self.idle: IdleConnections | None = None
        self.expected = 0  # Bundle lines the sink must hold at the end
        self.lines_before_down = 0  # Bundle lines written before the sink went down (the reference)
        self.result: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "settings": {k: v for k, v in asdict(settings).items() if k != "engine_command"},
            "message_bytes": round(self.source.mean_size, 1),
        }

    def run(self) -> dict[str, Any]:
        self.engine.sink_target = self.engine.sink_path if self.settings.reference else DOWN_SINK
        self.engine.start()
        try:
            self.result["ready_s"] = round(self.engine.wait_ready(), 2)
            with self.sampler:
                hold(min(1.0, self.settings.quiet_s))
                if self.settings.reference:
                    self.reference()
                self.build()
                self.hold_idle()
                self.recover()
                self.drain()
        finally:
            if self.idle is not None:
                self.idle.close()
            self.stop()
        self.summarise()
        return self.result

    def reference(self) -> None:
        """ACK rate and latency with the sink working (the work path running too, as in production)."""
        self.sampler.phase = "reference"
        count = self.settings.reference
        self.say(f"reference: {count} messages over C={self.settings.connections}, sink working")
        load = self._load(count)
        self.expected += load.accepted
        delivered, _ = self.engine.wait_delivered(self.expected, self.settings.drain_timeout_s)
        self.result["reference"] = {**load.to_json(), "delivered": delivered}
        self.engine.use_sink(DOWN_SINK)
        self.engine.reload()

    def build(self) -> None:
        """N messages with the sink down, in chunks so a slowdown as the table grows shows."""
        self.sampler.phase = "build"
        self.lines_before_down = self.engine.delivered()
        settings = self.settings
        self.say(f"backlog: {settings.messages} messages over C={settings.connections}, sink down ({DOWN_SINK})")
        per_chunk = -(-settings.messages // settings.chunks)
        results: list[LoadResult] = []
        remaining = settings.messages
        while remaining > 0:
            count = min(per_chunk, remaining)
            load = self._load(count)
            results.append(load)
            remaining -= count
            self.say(f"  chunk {len(results)}: {load.accepted}/{count} AA, {load.msgs_per_s:,.0f} msgs/s, "
                     f"p99 {load.p99_ms:.1f} ms, errors {load.errors}")
            if load.sent < count:
                break  # the engine stopped answering: later chunks would only repeat the failure
        build = build_summary(results)
        self.result["build"] = build
        self.expected += build["accepted"]

    def hold_idle(self) -> None:
        """Open K idle connections and leave the engine alone: RSS and CPU with backlog + idle + sink down."""
        self.sampler.phase = "idle"
        settings, sampler = self.settings, self.sampler
        backlog = self.result["build"]["accepted"]
        depth = wait_for_gauge(sampler, lambda s: (s.queue_depth or 0) >= backlog, 15.0)
        self.idle = idle = IdleConnections("127.0.0.1", self.engine.mllp_port, settings.idle_connections)
        opened = idle.open()
        registered = wait_for_gauge(sampler, lambda s: (s.connections_open or 0) >= opened, 15.0)
        probe = idle.probe(self.source)
        self.expected += probe in ("AA", "CA")
        self.say(f"idle: {opened} connections open ({idle.connect_failures} failed), probe ACK {probe or 'none'}; "
                 f"holding {settings.quiet_s:.0f} s")
        quiet_from = sampler.now()
        hold(settings.quiet_s)
        quiet = [s for s in sampler.snapshot() if s.phase == "idle" and s.t >= quiet_from]
        self.result["idle"] = {
            "opened": opened,
            "connect_failures": idle.connect_failures,
            "registered_by_engine": registered is not None,
            "probe_ack": probe,
            "queue_depth_seen": None if depth is None else depth.queue_depth,
            "sink_lines_while_down": self.engine.delivered() - self.lines_before_down,
            **rss_summary(quiet),
            "engine_cpu_percent": cpu_percent(quiet),
        }

    def recover(self) -> None:
        """Point the sink at a real file: POST /api/reload, or restart the engine."""
        self.sampler.phase = "recover"
        engine = self.engine
        engine.use_sink(engine.sink_path)
        if self.settings.recover == "reload":
            engine.reload()
        else:
            engine.stop()
            engine.log_path = self.workdir / "engine-restarted.log"
            engine.start()
            self.result["restart_ready_s"] = round(engine.wait_ready(), 2)
            assert self.idle is not None
            self.idle.close()
            self.idle = IdleConnections("127.0.0.1", engine.mllp_port, self.settings.idle_connections)
            self.idle.open()
        self.say(f"sink recovered by {self.settings.recover}; draining to {self.expected} Bundle lines")

    def drain(self) -> None:
        self.sampler.phase = "drain"
        drained = wait_drained(self.engine, self.expected, self.settings.drain_timeout_s)
        self.sampler.phase = "settle"
        final = wait_for_gauge(self.sampler, lambda s: s.queue_depth == 0, 15.0)
        assert self.idle is not None
        self.result["idle"]["still_open_after_drain"] = self.idle.still_open()
        self.result["queue_depth_final"] = None if final is None else final.queue_depth
        self.result["drain"] = drained

    def stop(self) -> None:
        stopped = self.engine.stop()
        if stopped is not None:
            self.result["stop"] = {"exit_code": stopped.exit_code, "forced_kill": stopped.forced,
                                   "seconds": stopped.seconds, "clean": stopped.clean}
        self.result["log_tail"] = self.engine.log_tail(3)

    def summarise(self) -> None:
        samples = self.sampler.snapshot()
        drain_samples = [s for s in samples if s.phase == "drain"]
        summary = rss_summary(drain_samples)
        lines, distinct = sink_ids(self.engine.sink_path)
        self.result["drain"].update(
            **summary,
            rss_growth_mb=round(summary["rss_peak_mb"] - summary["rss_start_mb"], 1) if summary else None,
            rss_slope_mb_per_min=rss_slope_mb_per_min(drain_samples),
            engine_cpu_percent=cpu_percent(drain_samples),
            sink_lines=lines,
            distinct_ids=distinct,
        )
        depths = [s.queue_depth for s in samples if s.queue_depth is not None]
        self.result["queue_depth"] = {"max": max(depths, default=None), "final": self.result.pop("queue_depth_final")}
        self.result["peak"] = rss_summary(samples)
        self.result["rss_by_phase"] = rss_by_phase(samples)
        self.result["store_mb"] = _mb(sum(p.stat().st_size for p in self.workdir.glob("hl7engine.db*")))
        self.result["machine"]["loadavg_end"] = os.getloadavg()
        self.result["samples"] = [_compact(s) for s in samples]
        self.result["verdicts"] = verdicts(self.result, self.settings)

    def _load(self, count: int) -> LoadResult:
        return run_sync(
            run_load(
                "127.0.0.1",
                self.engine.mllp_port,
                target="engine",
                connections=self.settings.connections,
                source=self.source,
                max_messages=count,
                max_duration_s=max(60.0, count / 100),  # a hard bound; the count ends a healthy run
                ack_timeout_s=self.settings.ack_timeout_s,
            ),
            use_uvloop=self.settings.use_uvloop,
        )


def run_backlog(
    settings: BacklogSettings, workdir: Path | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The whole scenario; returns the JSON-ready result (raises ProcessUnavailable if the engine fails).

    A temporary `workdir` (store, sink file, logs) is removed afterwards unless `keep_workdir`.
    """
    own_workdir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="hl7engine-backlog-"))
    raise_fd_limit(settings.connections + settings.idle_connections)
    try:
        result = BacklogRun(settings, workdir, progress or _say).run()
    finally:
        if own_workdir and not settings.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if not own_workdir or settings.keep_workdir:
        result["workdir"] = str(workdir)
    return result


def machine() -> dict[str, Any]:
    """Where this ran; the load average says how much other work shared the cores."""
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }


def _compact(sample: Sample) -> list[Any]:
    """[t, phase, rss MB, pss MB, queue depth, connections open, cpu main s, cpu children s]."""
    return [sample.t, sample.phase, _mb(sample.rss_bytes), _mb(sample.pss_bytes), sample.queue_depth,
            sample.connections_open, round(sample.cpu_main_s, 2), round(sample.cpu_children_s, 2)]


# ------------------------------------------------------------------ output


def format_table(result: dict[str, Any]) -> str:
    s, build, idle, drained = result["settings"], result["build"], result["idle"], result["drain"]
    cpu_idle, cpu_drain = idle["engine_cpu_percent"], drained["engine_cpu_percent"]
    load = result["machine"]
    phases = result["rss_by_phase"]
    rows: list[tuple[str, str]] = []
    reference = result.get("reference")
    if reference:
        rows += [
            ("reference ACK msgs/s (sink up, C same)", _num(reference["msgs_per_s"])),
            ("  p50 / p99 / max ACK ms", _slash(reference["p50_ms"], reference["p99_ms"], reference["max_ms"])),
        ]
    rows += [
        ("build-up ACK msgs/s (sink down)", _num(build["msgs_per_s"])),
        ("  first / last chunk msgs/s", _slash(build["first_chunk_msgs_per_s"], build["last_chunk_msgs_per_s"])),
        ("  p99 median / worst chunk, max ms",
         _slash(build["median_chunk_p99_ms"], build["worst_chunk_p99_ms"], build["max_ms"])),
        ("  accepted / errors", _slash(build["accepted"], build["errors"])),
        ("queue depth max (metric)", _num(result["queue_depth"]["max"])),
        ("store on disk MB", _num(result.get("store_mb"))),
        ("idle connections open, probe ACK", f"{idle['opened']}, {idle['probe_ack'] or '-'}"),
        ("RSS empty / +backlog / +idle MB",
         _slash(*(phases.get(p, {}).get("rss_mb") for p in ("start", "build", "idle")))),
        ("RSS backlog + idle, sink down MB", _num(idle.get("rss_peak_mb"))),
        ("  Pss sum / engine main RSS MB", _slash(idle.get("pss_peak_mb"), idle.get("main_rss_peak_mb"))),
        ("  engine CPU % main / children", _slash(cpu_idle["main"], cpu_idle["children"])),
    ]
    if "restart_ready_s" in result:
        rows.append(("restart to ready s", _num(result["restart_ready_s"])))
    rows += [
        ("drain msgs/s from recovery", _num(drained["delivered_per_s"])),
        ("  while flowing msgs/s", _num(drained.get("flowing_per_s"))),
        ("  lines / expected", _slash(drained["delivered"], drained["expected"])),
        ("  seconds, first line after s", _slash(drained["seconds"], drained["first_line_after_s"])),
        ("  RSS start / peak / end MB",
         _slash(drained.get("rss_start_mb"), drained.get("rss_peak_mb"), drained.get("rss_end_mb"))),
        ("  RSS growth MB, slope MB/min", _slash(drained.get("rss_growth_mb"), drained.get("rss_slope_mb_per_min"))),
        ("  engine CPU % main / children", _slash(cpu_drain["main"], cpu_drain["children"])),
        ("peak RSS whole run MB", _num(result["peak"].get("rss_peak_mb"))),
    ]
    width = max(len(label) for label, _ in rows) + 2
    lines = [
        f"backlog: {s['messages']:,} messages (~{result['message_bytes']:.0f} bytes) over C={s['connections']}, "
        f"{s['idle_connections']} idle connections; sink down = {DOWN_SINK}; recover by {s['recover']}",
        f"machine: {load['nproc']} cores, Python {load['python']}, load average "
        f"{load['loadavg_start'][0]:.1f} at start, {load.get('loadavg_end', [0.0])[0]:.1f} at end",
        "",
        *(f"{label:<{width}}{value:>20}" for label, value in rows),
        "",
        "checks: " + ", ".join(f"{k} {_verdict(v)}" for k, v in result["verdicts"].items()),
    ]
    stop = result.get("stop")
    if stop:
        lines.append(f"engine stop on SIGTERM: exit {stop['exit_code']} in {stop['seconds']:.2f} s"
                     f"{' (needed SIGKILL)' if stop['forced_kill'] else ''}")
    return "\n".join(lines)


def _verdict(value: bool | None) -> str:
    return "n/a" if value is None else "ok" if value else "MISSED"


def _slash(*values: float | None) -> str:
    return " / ".join(_num(v) for v in values)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> tuple[BacklogSettings, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench.backlog", description=__doc__.splitlines()[0])
    defaults = BacklogSettings()
    parser.add_argument("--messages", type=int, default=defaults.messages, help="backlog size N")
    parser.add_argument("--idle-connections", type=int, default=defaults.idle_connections, help="idle MLLP K")
    parser.add_argument("--connections", type=int, default=defaults.connections, help="senders C")
    parser.add_argument("--chunks", type=int, default=defaults.chunks, help="build-up measured in this many runs")
    parser.add_argument("--reference", type=int, default=defaults.reference,
                        help="messages sent first with the sink working, for comparison (0 = skip)")
    parser.add_argument("--workers", type=int, default=None,
                        help="engine stage processes (config `workers:`); default: the engine's own (auto)")
    parser.add_argument("--retry-s", type=float, default=defaults.retry_s, help="sink retry interval")
    parser.add_argument("--quiet-s", type=float, default=defaults.quiet_s, help="seconds idle before recovery")
    parser.add_argument("--sample-interval", type=float, default=defaults.sample_interval_s)
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout_s)
    parser.add_argument("--recover", choices=("reload", "restart"), default=defaults.recover)
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio loop in the load generator")
    parser.add_argument("--engine-command", default=None, help="how to start the engine ('run -c …' appended)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temp store and sink (debug)")
    parser.add_argument("--out", type=Path, default=None, help="JSON result (default bench/results/backlog-<ts>.json)")
    args = parser.parse_args(argv)
    settings = replace(
        defaults,
        messages=args.messages,
        idle_connections=args.idle_connections,
        connections=args.connections,
        chunks=max(1, args.chunks),
        reference=max(0, args.reference),
        workers=args.workers,
        retry_s=args.retry_s,
        quiet_s=args.quiet_s,
        sample_interval_s=args.sample_interval,
        drain_timeout_s=args.drain_timeout,
        recover=args.recover,
        use_uvloop=not args.no_uvloop and uvloop_available(),
        keep_workdir=args.keep_workdir,
        engine_command=tuple(args.engine_command.split()) if args.engine_command else DEFAULT_ENGINE_COMMAND,
    )
    return settings, args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings, args = parse_args(argv)
    try:
        result = run_backlog(settings)
    except ProcessUnavailable as error:
        print(f"engine unavailable: {error}", file=sys.stderr)
        return 1
    result["command"] = ["python", "-m", "bench.backlog", *argv]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or REPO_ROOT / "bench" / "results" / f"backlog-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(format_table(result))
    print(f"\nresult: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

