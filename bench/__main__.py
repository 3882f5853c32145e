"""`python -m bench`: the whole benchmark in one invocation (issue #6, DESIGN §7).

For each target (the ACK-only baseline, python-hl7's MLLP server, the engine)
and each connection count C, drive the target (a child process) with the load
generator (this process) and report ACK msgs/s and p50/p99/max ACK latency,
with throughput as a ratio of the ACK-only baseline at the same C. For the
engine also: end-to-end delivered msgs/s (MLLP in -> Bundle line in the file
sink), peak RSS, and whether SIGTERM stops it cleanly. Prints a table and writes
a JSON result; `--compare old.json new.json` prints the deltas between two runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.engine_proc import (
    DEFAULT_ENGINE_COMMAND,
    REPO_ROOT,
    CpuMeter,
    EngineProcess,
    ProcessUnavailable,
    ServerProcess,
)
from bench.loadgen import LoadResult, run_load, run_sync, uvloop_available
from bench.messages import MessageSource, builtin_templates, corpus_dir, corpus_templates

SCHEMA_VERSION = 1
TARGETS = ("ack_only", "python_hl7", "engine")
BASELINE_MODULES = {"ack_only": "bench.baseline_server", "python_hl7": "bench.hl7_baseline_server"}
LABELS = {"ack_only": "ack-only", "python_hl7": "python-hl7", "engine": "engine"}
_MB = 1024 * 1024


# ------------------------------------------------------------------ options


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--connections", default="1,8,64", help="comma-separated connection counts C")
    parser.add_argument("--messages", type=int, default=None, help="max messages per run (default 1000000)")
    parser.add_argument("--duration", type=float, default=None, help="max seconds per run (default 5)")
    parser.add_argument("--out", type=Path, default=None, help="JSON result (default bench/results/<ts>.json)")
    parser.add_argument("--quick", action="store_true", help="short runs: the whole benchmark in < 30 s")
    parser.add_argument("--targets", default="ack-only,python-hl7,engine", help="comma-separated subset of the targets")
    parser.add_argument(
        "--mix",
        choices=("adt", "corpus", "adt+corpus"),
        default="adt",
        help="messages: the built-in ADT^A01 with IN1, corpus messages, or both in turn",
    )
    parser.add_argument("--e2e-messages", type=int, default=None, help="messages in the engine e2e phase")
    parser.add_argument("--drain-timeout", type=float, default=None, help="max seconds to wait for the sink")
    parser.add_argument("--ack-timeout", type=float, default=5.0, help="seconds before an ACK is an error")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio loops everywhere")
    parser.add_argument(
        "--engine-command",
        default=None,
        help="how to start the engine (default: this python -m engine); 'run -c <config>' is appended",
    )
    parser.add_argument(
        "--workers", type=int, default=None,
        help="engine stage processes (config `workers:`); default: the engine's own (auto)",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep the engine's temp dir (debug)")
    parser.add_argument(
        "--compare", nargs=2, type=Path, metavar=("OLD", "NEW"), help="print deltas between two results"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.messages = args.messages or (100_000 if quick else 1_000_000)
    args.duration = args.duration or (1.0 if quick else 5.0)
    args.e2e_messages = args.e2e_messages or (2_000 if quick else 20_000)
    args.drain_timeout = args.drain_timeout or (10.0 if quick else 60.0)
    args.connection_counts = [int(c) for c in args.connections.split(",") if c.strip()]
    args.target_list = [t.strip().replace("-", "_") for t in args.targets.split(",") if t.strip()]
    unknown = set(args.target_list) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    return args


def message_source(mix: str) -> MessageSource:
    templates = builtin_templates() if mix in ("adt", "adt+corpus") else []
    if mix in ("corpus", "adt+corpus"):
        root = corpus_dir(REPO_ROOT)
        if not root.is_dir():
            raise SystemExit(f"--mix {mix}: no corpus at {root}")
        corpus = corpus_templates(root)
        # Interleave so the ADT keeps half the traffic in the mixed load.
        templates = [t for pair in zip(templates * len(corpus), corpus, strict=False) for t in pair] or corpus
    return MessageSource(templates)


def machine_info(use_uvloop: bool) -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "uvloop": use_uvloop,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# -------------------------------------------------------------------- runs


def _drive(
    args: argparse.Namespace, target: str, host: str, port: int, connections: int, source: MessageSource
) -> LoadResult:
    return run_sync(
        run_load(
            host,
            port,
            target=target,
            connections=connections,
            source=source,
            max_messages=args.messages,
            max_duration_s=args.duration,
            ack_timeout_s=args.ack_timeout,
        ),
        use_uvloop=not args.no_uvloop,
    )


def _per_message_us(seconds: float, messages: int) -> float | None:
    return round(seconds / messages * 1e6, 1) if messages else None


def _drive_metered(
    args: argparse.Namespace, target: str, port: int, connections: int, source: MessageSource, server_pid: int,
    host: str = "127.0.0.1",
) -> tuple[LoadResult, dict[str, Any]]:
    """One run, plus the CPU the server (and its child processes) and this load generator used per ACK."""
    meter = CpuMeter(server_pid)
    own_before = time.process_time()
    result = _drive(args, target, host, port, connections, source)
    own_used = time.process_time() - own_before
    server_used, children_used = meter.lap()
    cpu = {
        "server_cpu_us_per_msg": _per_message_us(server_used, result.accepted),
        "children_cpu_us_per_msg": _per_message_us(children_used, result.accepted),
        "loadgen_cpu_us_per_msg": _per_message_us(own_used, result.accepted),
    }
    return result, cpu


def run_baseline(args: argparse.Namespace, target: str, source: MessageSource) -> dict[str, Any]:
    """Start a baseline server process and drive it at every C."""
    loop = "asyncio" if args.no_uvloop else "auto"
    try:
        with ServerProcess(BASELINE_MODULES[target], "--loop", loop) as server:
            runs = []
            for connections in args.connection_counts:
                result, cpu = _drive_metered(
                    args, target, server.port, connections, source, server.pid, host=server.host
                )
                runs.append(result.to_json() | cpu)
                _progress(result, cpu)
            return {"status": "ok", "uvloop": server.uvloop, "runs": runs}
    except ProcessUnavailable as error:
        return {"status": "unavailable", "reason": str(error), "runs": []}


def run_engine(args: argparse.Namespace, source: MessageSource) -> dict[str, Any]:
    """Start the engine; measure end to end first (empty backlog), then ACK runs at every C."""
    workdir = Path(tempfile.mkdtemp(prefix="hl7bench-"))
    command = shlex.split(args.engine_command) if args.engine_command else DEFAULT_ENGINE_COMMAND
    engine = EngineProcess(workdir, command, connections_per_peer=max(args.connection_counts),
                           workers=args.workers)
    section: dict[str, Any] = {
        "status": "ok",
        "runs": [],
        "workdir": str(workdir) if args.keep_workdir else None,
    }
    try:
        engine.start()
        section["ready_s"] = round(engine.wait_ready(), 3)
        section["end_to_end"] = measure_end_to_end(args, engine, source)
        for connections in args.connection_counts:
            result, cpu = _drive_metered(args, "engine", engine.mllp_port, connections, source, engine.pid)
            section["runs"].append(result.to_json() | cpu)
            _progress(result, cpu)
        peak = engine.peak_rss_bytes()
        section["peak_rss_mb"] = round(peak / _MB, 1) if peak is not None else None
    except ProcessUnavailable as error:
        section.update(status="unavailable", reason=str(error))
    finally:
        stopped = engine.stop()
        if stopped is not None:
            section["stop"] = {
                "signal": "SIGTERM",
                "exit_code": stopped.exit_code,
                "forced_kill": stopped.forced,
                "exited_before_sigterm": stopped.exited_before_signal,
                "seconds": stopped.seconds,
                "clean": stopped.clean,
            }
        if section["status"] == "ok" and stopped is not None and not stopped.clean:
            section["log_tail"] = engine.log_tail()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return section


def measure_end_to_end(args: argparse.Namespace, engine: EngineProcess, source: MessageSource) -> dict[str, Any]:
    """Delivered msgs/s from the first frame sent to the last Bundle line seen in the sink."""
    connections = max(args.connection_counts)
    before = engine.delivered()
    meter = CpuMeter(engine.pid)
    started = time.perf_counter()
    load = run_sync(
        run_load(
            "127.0.0.1",
            engine.mllp_port,
            target="engine",
            connections=connections,
            source=source,
            max_messages=args.e2e_messages,
            max_duration_s=2 * args.duration,
            ack_timeout_s=args.ack_timeout,
        ),
        use_uvloop=not args.no_uvloop,
    )
    load_done = time.perf_counter()
    count, last_seen = engine.wait_delivered(before + load.accepted, args.drain_timeout)
    delivered = count - before
    main_used, workers_used = meter.lap()
    elapsed = max(last_seen - started, 1e-9)
    result = {
        "connections": connections,
        "accepted": load.accepted,
        "delivered": delivered,
        "complete": delivered >= load.accepted > 0,
        "elapsed_s": round(elapsed, 3),
        "delivered_per_s": round(delivered / elapsed, 1),
        "sink_lag_s": round(max(last_seen - load_done, 0.0), 3),
        # Everything the engine spent per delivered message: custody, mapping, delivery.
        "engine_cpu_us_per_msg": _per_message_us(main_used, delivered),
        "workers_cpu_us_per_msg": _per_message_us(workers_used, delivered),
        "ack_run": load.to_json(),
    }
    rate = result["delivered_per_s"]
    print(f"  engine end-to-end: {delivered}/{load.accepted} delivered, {rate:,.0f} msgs/s", file=sys.stderr)
    return result


def _progress(result: LoadResult, cpu: dict[str, Any]) -> None:
    print(
        f"  {LABELS.get(result.target, result.target)} C={result.connections}: "
        f"{result.msgs_per_s:,.0f} msgs/s, p99 {result.p99_ms:.2f} ms, errors {result.errors}, "
        f"server CPU {cpu['server_cpu_us_per_msg']} us/msg",
        file=sys.stderr,
        flush=True,
    )


def add_ratios(targets: dict[str, Any]) -> None:
    """Each run's msgs/s as a fraction of the same-C ack-only run (and of python-hl7 for the engine)."""

    def by_connections(name: str) -> dict[int, float]:
        return {r["connections"]: r["msgs_per_s"] for r in targets.get(name, {}).get("runs", [])}

    ceiling, reference = by_connections("ack_only"), by_connections("python_hl7")
    for name, section in targets.items():
        for run in section.get("runs", []):
            base = ceiling.get(run["connections"])
            run["ratio_vs_ack_only"] = round(run["msgs_per_s"] / base, 4) if base else None
            if name == "engine":
                ref = reference.get(run["connections"])
                run["ratio_vs_python_hl7"] = round(run["msgs_per_s"] / ref, 2) if ref else None


# ------------------------------------------------------------------ output


def format_table(result: dict[str, Any]) -> str:
    machine, settings = result["machine"], result["settings"]
    lines = [
        f"machine: {machine['nproc']} cores ({machine['cpu']}), Python {machine['python']}, "
        f"uvloop {'on' if machine['uvloop'] else 'off'}",
        f"load: {settings['mix']} messages (~{settings['mean_message_bytes']:.0f} bytes), "
        f"each run <= {settings['max_messages']} messages and <= {settings['max_duration_s']} s, "
        "one message in flight per connection",
        "",
        f"{'target':<11}{'C':>5}{'msgs/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'vs ack-only':>13}{'not AA/CA':>11}{'errors':>8}{'CPU us/msg':>12}",
    ]
    for name, section in result["targets"].items():
        label = LABELS.get(name, name)
        if section["status"] != "ok":
            lines.append(f"{label:<11} unavailable: {section.get('reason', '')[:300]}")
        for run in section.get("runs", []):
            ratio = run.get("ratio_vs_ack_only")
            lines.append(
                f"{label:<11}{run['connections']:>5}{run['msgs_per_s']:>11,.0f}{run['p50_ms']:>9.2f}"
                f"{run['p99_ms']:>9.2f}{run['max_ms']:>9.1f}"
                f"{(f'{ratio:.1%}' if ratio is not None else '-'):>13}"
                f"{run['rejected'] + run['mismatched']:>11}{run['errors']:>8}"
                f"{_num(run.get('server_cpu_us_per_msg')):>12}"
            )
    lines.extend(_engine_lines(result["targets"].get("engine")))
    return "\n".join(lines)


def _engine_lines(engine: dict[str, Any] | None) -> list[str]:
    if not engine:
        return []
    lines = [""]
    e2e = engine.get("end_to_end")
    if e2e:
        lines.append(
            f"engine end-to-end (MLLP in -> Bundle line in file sink), C={e2e['connections']}: "
            f"{e2e['delivered_per_s']:,.0f} msgs/s ({e2e['delivered']} of {e2e['accepted']} ACKed "
            f"delivered in {e2e['elapsed_s']:.2f} s; sink lag after last ACK {e2e['sink_lag_s']:.2f} s"
            f"{'' if e2e['complete'] else '; INCOMPLETE'})"
        )
        if e2e.get("engine_cpu_us_per_msg") is not None:
            lines.append(
                f"engine CPU per delivered message: {_num(e2e['engine_cpu_us_per_msg'])} us in the engine process"
                f" + {_num(e2e.get('workers_cpu_us_per_msg'))} us in stage workers"
            )
    for run in engine.get("runs", []):
        if run.get("ratio_vs_python_hl7") is not None:
            lines.append(f"engine C={run['connections']}: {run['ratio_vs_python_hl7']:.1f}x python-hl7")
    if engine.get("peak_rss_mb") is not None:
        lines.append(f"engine peak RSS: {engine['peak_rss_mb']:.1f} MB")
    stop = engine.get("stop")
    if stop:
        verdict = "clean" if stop["clean"] else "NOT clean"
        kill = ", needed SIGKILL" if stop["forced_kill"] else ""
        kill += ", had already exited" if stop.get("exited_before_sigterm") else ""
        lines.append(f"engine stop on SIGTERM: exit {stop['exit_code']} in {stop['seconds']:.2f} s{kill} ({verdict})")
    if engine.get("log_tail"):
        lines.append(f"engine log tail: {engine['log_tail'][:500]}")
    return lines


def format_comparison(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Per target and C: msgs/s and p99 old -> new with the relative change."""
    lines = [
        f"old: {old.get('started_at')}  new: {new.get('started_at')}",
        f"{'target':<11}{'C':>5}{'msgs/s old':>12}{'new':>10}{'delta':>9}{'p99 old':>10}{'new':>8}",
    ]

    def runs(doc: dict[str, Any], name: str) -> dict[int, dict[str, Any]]:
        return {r["connections"]: r for r in doc.get("targets", {}).get(name, {}).get("runs", [])}

    for name in TARGETS:
        before, after = runs(old, name), runs(new, name)
        for connections in sorted(set(before) | set(after)):
            a, b = before.get(connections), after.get(connections)
            old_rate = a["msgs_per_s"] if a else None
            new_rate = b["msgs_per_s"] if b else None
            lines.append(
                f"{LABELS[name]:<11}{connections:>5}{_num(old_rate):>12}{_num(new_rate):>10}"
                f"{_delta(old_rate, new_rate):>9}{_ms(a):>10}{_ms(b):>8}"
            )
    for label, path in (("e2e msgs/s", ("end_to_end", "delivered_per_s")), ("peak RSS MB", ("peak_rss_mb",))):
        was, now = _dig(old, path), _dig(new, path)
        lines.append(f"engine {label}: {_num(was)} -> {_num(now)} ({_delta(was, now)})")
    return "\n".join(lines)


def _dig(doc: dict[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = doc.get("targets", {}).get("engine", {})
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, int | float) else None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ms(run: dict[str, Any] | None) -> str:
    return "-" if run is None else f"{run['p99_ms']:.2f}"


def _delta(old: float | None, new: float | None) -> str:
    if not old or new is None:
        return "-"
    return f"{(new - old) / old:+.1%}"


# -------------------------------------------------------------------- main


def run_benchmark(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    source = message_source(args.mix)
    use_uvloop = not args.no_uvloop and uvloop_available()
    result: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": ["python", "-m", "bench", *argv],
        "machine": machine_info(use_uvloop),
        "settings": {
            "connections": args.connection_counts,
            "max_messages": args.messages,
            "max_duration_s": args.duration,
            "e2e_messages": args.e2e_messages,
            "drain_timeout_s": args.drain_timeout,
            "mix": args.mix,
            "engine_workers": args.workers,
            "templates": len(source.templates),
            "mean_message_bytes": round(source.mean_size, 1),
            "quick": args.quick,
        },
        "targets": {},
    }
    started = time.monotonic()
    for target in TARGETS:
        if target not in args.target_list:
            continue
        print(f"{LABELS[target]} ...", file=sys.stderr, flush=True)
        section = run_engine(args, source) if target == "engine" else run_baseline(args, target, source)
        result["targets"][target] = section
    result["wall_s"] = round(time.monotonic() - started, 1)
    add_ratios(result["targets"])
    return result


def default_out_path() -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return REPO_ROOT / "bench" / "results" / f"{stamp}.json"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.compare:
        old, new = (json.loads(path.read_text(encoding="utf-8")) for path in args.compare)
        print(format_comparison(old, new))
        return 0
    result = run_benchmark(args, argv)
    out = args.out or default_out_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(format_table(result))
    print(f"\nresult: {out} (wall {result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
