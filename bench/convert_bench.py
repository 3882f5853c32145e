"""`python -m bench.convert_bench`: HL7 v2 -> FHIR conversion alone, per core (issue #3, done-means 5).

Calls `channels.mappers.convert.convert_message(text, MappingOptions(...))` in a
loop, in this one process, for a typical ADT^A01 with IN1 and an ORU^R01 with
20 OBX (bench/messages.py), with `fhir.resources` validation off and on.
Messages per second per core = messages / CPU seconds of this process
(`time.process_time`), so other load on the machine does not distort it; wall
clock msgs/s is shown beside it. Each case is bounded by count and by time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.messages import ADT_A01_WITH_IN1, ORU_R01_20_OBX

MESSAGES = {"adt_a01_in1": ADT_A01_WITH_IN1, "oru_r01_20_obx": ORU_R01_20_OBX}
_WARMUP = 20  # at least 1; first calls load code tables and build caches; not what a running channel pays


@dataclass(frozen=True, slots=True)
class ConvertResult:
    """One case: message, validation on/off, and what it cost."""

    message: str
    validate: bool
    fhir_version: str
    iterations: int
    cpu_s: float
    wall_s: float
    msgs_per_cpu_s: float
    msgs_per_wall_s: float
    ms_per_message: float
    bundle_entries: int | None


Converter = Callable[[str, bool], object]


def load_converter(fhir_version: str) -> Converter:
    """convert_message bound to MappingOptions; raises ImportError while it does not exist yet."""
    convert = importlib.import_module("channels.mappers.convert")
    options_module = importlib.import_module("channels.mappers.options")
    options = {
        flag: options_module.MappingOptions(fhir_version=fhir_version, validate_output=flag) for flag in (False, True)
    }

    def run(text: str, validate: bool) -> object:
        return convert.convert_message(text, options[validate])

    return run


def measure(
    converter: Converter, name: str, text: str, validate: bool, fhir_version: str, max_s: float, max_n: int
) -> ConvertResult:
    """Convert `text` repeatedly until `max_s` CPU seconds or `max_n` messages."""
    for _ in range(_WARMUP):
        output = converter(text, validate)
    iterations = 0
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    cpu_deadline = cpu_start + max_s
    # Check the clock every few calls: a call is ~1 ms, the check itself is not free.
    while iterations < max_n and time.process_time() < cpu_deadline:
        for _ in range(10):
            converter(text, validate)
        iterations += 10
    cpu_s = time.process_time() - cpu_start
    wall_s = time.perf_counter() - wall_start
    return ConvertResult(
        message=name,
        validate=validate,
        fhir_version=fhir_version,
        iterations=iterations,
        cpu_s=round(cpu_s, 3),
        wall_s=round(wall_s, 3),
        msgs_per_cpu_s=round(iterations / cpu_s, 1),
        msgs_per_wall_s=round(iterations / wall_s, 1),
        ms_per_message=round(cpu_s * 1000 / iterations, 3),
        bundle_entries=bundle_entries(output),
    )


def bundle_entries(output: object) -> int | None:
    """Entries in the converted Bundle: a conversion that maps nothing would look fast."""
    bundle = getattr(output, "bundle", output)
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    return len(entries) if isinstance(entries, list) else None


def format_table(results: Sequence[ConvertResult]) -> str:
    lines = [
        f"{'message':<16}{'validate':>9}{'msgs/s/core':>13}{'ms/msg':>9}{'wall msgs/s':>13}{'n':>8}{'entries':>9}",
    ]
    for r in results:
        lines.append(
            f"{r.message:<16}{'on' if r.validate else 'off':>9}{r.msgs_per_cpu_s:>13,.0f}"
            f"{r.ms_per_message:>9.3f}{r.msgs_per_wall_s:>13,.0f}{r.iterations:>8}"
            f"{'-' if r.bundle_entries is None else r.bundle_entries:>9}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.convert_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--fhir-version", choices=("R4B", "R5"), default="R4B")
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per case (default 2)")
    parser.add_argument("--max-messages", type=int, default=50_000, help="messages per case at most")
    parser.add_argument("--quick", action="store_true", help="0.3 s per case")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    seconds = 0.3 if args.quick else args.seconds
    try:
        converter = load_converter(args.fhir_version)
    except ImportError as error:
        print(f"convert_message is not available yet: {error}", file=sys.stderr)
        return 2
    results = [
        measure(converter, name, text, validate, args.fhir_version, seconds, args.max_messages)
        for name, text in MESSAGES.items()
        for validate in (False, True)
    ]
    print(f"Python {platform.python_version()}, one process, FHIR {args.fhir_version}")
    print(format_table(results))
    if args.out:
        document: dict[str, Any] = {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "results": [asdict(r) for r in results],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
