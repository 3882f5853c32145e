"""Regenerate the generated parts of docs/operations.md: the metrics and alerts tables.

    python -m tools.gen_ops_docs          # rewrite the tables in place
    python -m tools.gen_ops_docs --check  # exit 1 when they are stale

The metrics table comes from engine/obs/metrics.py, the alerts table from
config/prometheus/alerts.yml. Text between the BEGIN/END GENERATED markers is replaced;
everything else in the file (runbooks, how-tos) is written by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from tools.metrics_catalog import engine_metrics

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "operations.md"
ALERTS = REPO / "config" / "prometheus" / "alerts.yml"
_BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (\w+)[^>]*-->\n).*?(<!-- END GENERATED: \2 -->)", re.DOTALL)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def metrics_table() -> str:
    rows = ["| Metric | Type | Labels | Meaning |", "| --- | --- | --- | --- |"]
    for info in engine_metrics():
        suffixes = " (`_bucket`, `_sum`, `_count`)" if info.type == "histogram" else ""
        name = f"`{info.name if suffixes else info.series[0]}`{suffixes}"
        labels = ", ".join(f"`{label}`" for label in info.labels) or "—"
        rows.append(f"| {name} | {info.type} | {labels} | {_cell(info.help)} |")
    return "\n".join(rows) + "\n"


def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"] if "alert" in rule]


def alerts_table() -> str:
    rows = ["| Alert | Severity | For | Fires when |", "| --- | --- | --- | --- |"]
    for rule in alert_rules():
        name = rule["alert"]
        summary = re.sub(r"\{\{ \$labels\.(\w+) \}\}", r"_\1_", rule["annotations"]["summary"])
        rows.append(f"| [{name}](#{name.lower()}) | {rule['labels']['severity']} | {rule.get('for', '0m')} "
                    f"| {_cell(summary)} |")
    return "\n".join(rows) + "\n"


GENERATORS = {"metrics": metrics_table, "alerts": alerts_table}


def render(current: str) -> str:
    def replace(match: re.Match[str]) -> str:
        return match.group(1) + GENERATORS[match.group(2)]() + match.group(3)

    return _BLOCK.sub(replace, current)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the tables in docs/operations.md.")
    parser.add_argument("--check", action="store_true", help="exit 1 when the tables are stale")
    args = parser.parse_args(argv)
    current = DOC.read_text(encoding="utf-8")
    updated = render(current)
    if args.check:
        if updated != current:
            print(f"{DOC} is stale: run python -m tools.gen_ops_docs", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(updated, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
