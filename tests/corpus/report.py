"""Conformance figures per corpus source: a printed table and build/conformance.json.

Run it on its own with `python -m tests.corpus.report` (from the repository root), or let
tests/corpus/test_conformance.py write it. Figures:

- cdc-prime-reportstream: expected leaf values matched / total after normalisation, pairs
  passing the full subset match, pairs passing once the documented deliberate differences
  are rewritten into the IG's form (ig_alignment.py), and pairs passing on the resource
  types their folder isolates (harness.CDC_FOCUS), per test folder.
- microsoft-FHIR-Converter: leaf values matched / total per resource type, resources
  paired by identifier.
- linuxforhealth: assertions passed / evaluated, per test class and per segment
  (`unsupported` ones are counted apart).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tests.corpus import harness

REPORT_PATH = harness.REPO_ROOT / "build" / "conformance.json"
CORE_SEGMENTS = ("PID", "IN1", "NK1", "PV1")
_INDEX = re.compile(r"\[\d+\]")


def _fraction(matched: int, total: int) -> float:
    return round(matched / total, 4) if total else 1.0


def _cdc_section(run: harness.CorpusRun) -> dict[str, Any]:
    groups: dict[str, dict[str, int]] = {}
    causes: Counter[str] = Counter()
    ig_causes: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    for pair in run.cdc:
        group = groups.setdefault(
            pair.group, {"matched": 0, "total": 0, "pairs": 0, "passed": 0, "focus_passed": 0, "ig_passed": 0}
        )
        group["matched"] += pair.matched
        group["total"] += pair.total
        group["pairs"] += 1
        group["passed"] += int(pair.passed)
        group["focus_passed"] += int(pair.focus_passed)
        group["ig_passed"] += int(pair.ig_passed)
        rules.update(pair.ig_rules)
        for difference in pair.differences:
            path = _INDEX.sub("[]", difference.split(": ", 1)[0])
            causes[path] += 1
        for difference in pair.ig_differences:
            ig_causes[_INDEX.sub("[]", difference)[:160]] += 1
        if pair.error:
            causes[f"conversion failed: {pair.error}"] += 1
    matched = sum(g["matched"] for g in groups.values())
    total = sum(g["total"] for g in groups.values())
    return {
        "matched": matched,
        "total": total,
        "fraction": _fraction(matched, total),
        "pairs": len(run.cdc),
        "passed": sum(int(p.passed) for p in run.cdc),
        "focus_passed": sum(int(p.focus_passed) for p in run.cdc),
        "ig_passed": sum(int(p.ig_passed) for p in run.cdc),
        "ig_rules_applied": dict(rules.most_common()),
        "ig_top_mismatches": ig_causes.most_common(40),
        "ig_failing_pairs": {p.key: p.ig_differences[:10] for p in run.cdc if not p.ig_passed},
        "groups": {name: {**g, "fraction": _fraction(g["matched"], g["total"])} for name, g in sorted(groups.items())},
        "top_mismatches": causes.most_common(25),
        "failing_pairs": sorted(p.key for p in run.cdc if not p.passed),
    }


def _microsoft_section(run: harness.CorpusRun) -> dict[str, Any]:
    types: dict[str, list[int]] = {}
    for scores in run.microsoft.values():
        for kind, (matched, total, resources, paired) in scores.items():
            acc = types.setdefault(kind, [0, 0, 0, 0])
            acc[0] += matched
            acc[1] += total
            acc[2] += resources
            acc[3] += paired
    matched = sum(t[0] for t in types.values())
    total = sum(t[1] for t in types.values())
    return {
        "matched": matched,
        "total": total,
        "fraction": _fraction(matched, total),
        "messages": len(run.microsoft),
        "types": {
            kind: {
                "matched": t[0],
                "total": t[1],
                "fraction": _fraction(t[0], t[1]),
                "resources": t[2],
                "paired": t[3],
            }
            for kind, t in sorted(types.items(), key=lambda item: -item[1][1])
        },
    }


def _tally(results: list[harness.AssertionResult], key: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for result in results:
        name = getattr(result, key)
        bucket = out.setdefault(name, {"passed": 0, "failed": 0, "unsupported": 0})
        bucket[{"pass": "passed", "fail": "failed", "unsupported": "unsupported"}[result.status]] += 1
    for bucket in out.values():
        evaluated = bucket["passed"] + bucket["failed"]
        bucket["fraction"] = _fraction(bucket["passed"], evaluated)
    return dict(sorted(out.items()))


def _lfh_section(run: harness.CorpusRun) -> dict[str, Any]:
    passed = sum(1 for r in run.lfh if r.status == "pass")
    failed = sum(1 for r in run.lfh if r.status == "fail")
    core = [r for r in run.lfh if r.segment in CORE_SEGMENTS and r.status != "unsupported"]
    core_passed = sum(1 for r in core if r.status == "pass")
    return {
        "passed": passed,
        "evaluated": passed + failed,
        "unsupported": sum(1 for r in run.lfh if r.status == "unsupported"),
        "fraction": _fraction(passed, passed + failed),
        "core_segments": {
            "segments": list(CORE_SEGMENTS),
            "passed": core_passed,
            "evaluated": len(core),
            "fraction": _fraction(core_passed, len(core)),
        },
        "classes": _tally(run.lfh, "group"),
        "segments": _tally(run.lfh, "segment"),
        "failing": sorted(
            f"{r.message} {r.stmt}" for r in run.lfh if r.status == "fail" and r.segment in CORE_SEGMENTS
        ),
    }


def build_report(run: harness.CorpusRun) -> dict[str, Any]:
    errors = Counter(c.error_type for c in run.r4b.values() if c.error_type)
    return {
        "corpus": str(run.corpus),
        "seconds": round(run.seconds, 2),
        "messages": len(run.messages),
        "converted": sum(1 for c in run.r4b.values() if c.bundle is not None),
        "errors": dict(errors),
        "sources": {
            harness.CDC: _cdc_section(run),
            harness.MICROSOFT: _microsoft_section(run),
            harness.LFH: _lfh_section(run),
        },
    }


def achieved_figures(report: dict[str, Any]) -> dict[str, float]:
    """The figures floors.json ratchets, by the same names."""
    sources = report["sources"]
    cdc = sources[harness.CDC]
    lfh_section = sources[harness.LFH]
    return {
        "cdc_matched_fraction": cdc["fraction"],
        "cdc_pairs_passed": float(cdc["passed"]),
        "cdc_focus_pairs_passed": float(cdc["focus_passed"]),
        "cdc_pairs_passed_ig_aligned": float(cdc["ig_passed"]),
        "microsoft_matched_fraction": sources[harness.MICROSOFT]["fraction"],
        "lfh_passed_fraction": lfh_section["fraction"],
        "lfh_core_passed_fraction": lfh_section["core_segments"]["fraction"],
    }


def format_table(report: dict[str, Any]) -> str:
    sources = report["sources"]
    cdc = sources[harness.CDC]
    ms = sources[harness.MICROSOFT]
    lfh_section = sources[harness.LFH]
    lines = [
        f"corpus: {report['messages']} messages, {report['converted']} converted, "
        f"errors {report['errors'] or 'none'}, {report['seconds']} s",
        "",
        f"{'source':<40} {'matched':>9} {'total':>9} {'fraction':>9}  notes",
        f"{harness.CDC:<40} {cdc['matched']:>9} {cdc['total']:>9} {cdc['fraction']:>9.1%}  "
        f"{cdc['passed']}/{cdc['pairs']} pairs pass ({cdc['ig_passed']} with the deliberate differences "
        f"in IG form), {cdc['focus_passed']} on their focus types",
        f"{harness.MICROSOFT:<40} {ms['matched']:>9} {ms['total']:>9} {ms['fraction']:>9.1%}  "
        f"{ms['messages']} messages",
        f"{harness.LFH:<40} {lfh_section['passed']:>9} {lfh_section['evaluated']:>9} "
        f"{lfh_section['fraction']:>9.1%}  {lfh_section['unsupported']} unsupported; "
        f"PID/IN1/NK1/PV1 {lfh_section['core_segments']['passed']}/"
        f"{lfh_section['core_segments']['evaluated']} ({lfh_section['core_segments']['fraction']:.1%})",
        "",
        "CDC per test folder (passed/pairs, passed with differences in IG form, on focus types, matched fraction):",
    ]
    for name, group in cdc["groups"].items():
        lines.append(
            f"  {name:<44} {group['passed']:>3}/{group['pairs']:<3} ig {group['ig_passed']:>3}"
            f" focus {group['focus_passed']:>3} {group['fraction']:>7.1%}"
        )
    lines.append("Microsoft per resource type (matched/total):")
    for kind, scores in ms["types"].items():
        lines.append(
            f"  {kind:<44} {scores['matched']:>6}/{scores['total']:<6} {scores['fraction']:>7.1%}"
            f"  paired {scores['paired']}/{scores['resources']}"
        )
    lines.append("LinuxForHealth per segment (passed/evaluated, unsupported):")
    for name, bucket in lfh_section["segments"].items():
        evaluated = bucket["passed"] + bucket["failed"]
        lines.append(
            f"  {name:<44} {bucket['passed']:>4}/{evaluated:<4} {bucket['fraction']:>7.1%}"
            f"  ({bucket['unsupported']} unsupported)"
        )
    lines.append("LinuxForHealth per test class:")
    for name, bucket in lfh_section["classes"].items():
        evaluated = bucket["passed"] + bucket["failed"]
        lines.append(f"  {name:<44} {bucket['passed']:>4}/{evaluated:<4} {bucket['fraction']:>7.1%}")
    lines.append("CDC top mismatches (path: count):")
    lines.extend(f"  {path}: {count}" for path, count in cdc["top_mismatches"][:15])
    lines.append("CDC mismatches left once the deliberate differences are in IG form:")
    lines.extend(f"  {count:>4}  {path}" for path, count in cdc["ig_top_mismatches"][:20])
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: Path = REPORT_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def main() -> int:
    corpus = harness.locate_corpus()
    if corpus is None:
        print(f"corpus not found (set {harness.CORPUS_ENV})", file=sys.stderr)
        return 2
    report = build_report(harness.run_corpus(corpus))
    print(format_table(report))
    print(f"\nwritten: {write_report(report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
