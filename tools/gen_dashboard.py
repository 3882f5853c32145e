"""Generate config/grafana/hl7engine-dashboard.json (Grafana 9+, schemaVersion 39).

    python -m tools.gen_dashboard          # rewrite the committed dashboard
    python -m tools.gen_dashboard --check  # exit 1 when the committed file is stale

The dashboard is built as data here, not written as JSON by hand, so each panel is one
call and the layout cannot drift into overlapping panels. Variables: `datasource` (any
Prometheus) and `channel` (multi-select, from hl7engine_messages_received_total). Every
query filters on `channel=~"$channel"` where the metric has a channel label; the
tests (tests/unit/test_dashboard.py) check that and that every metric exists in
engine/obs/metrics.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parents[1] / "config" / "grafana" / "hl7engine-dashboard.json"
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
CH = 'channel=~"$channel"'
RATE = "$__rate_interval"
WIDTH = 24


@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


@dataclass
class Panel:
    title: str
    targets: list[Target]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 8
    height: int = 8
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)


def q(expr: str, legend: str = "") -> Target:
    return Target(" ".join(expr.split()), legend)


def quantile(phi: float, bucket: str, by: str, legend: str) -> Target:
    grouping = f"le, {by}" if by else "le"
    return q(f"histogram_quantile({phi}, sum by ({grouping}) (rate({bucket}{{{CH}}}[{RATE}])))", legend)


# ---------------------------------------------------------------- panels, by row

OVERVIEW = [
    Panel("Engine ready", [q("min(hl7engine_ready)")], kind="stat", width=4, height=4,
          description="1 when every listener and the store are up (GET /readyz names a failing check).",
          defaults={"mappings": [{"type": "value", "options": {
              "0": {"text": "NOT READY", "color": "red"}, "1": {"text": "READY", "color": "green"}}}],
              "thresholds": {"mode": "absolute", "steps": [{"color": "red", "value": None},
                                                           {"color": "green", "value": 1}]}}),
    Panel("Received", [q(f"sum(rate(hl7engine_messages_received_total{{{CH}}}[{RATE}]))")], kind="stat",
          unit="reqps", width=4, height=4, description="Messages per second taken in by the selected channels."),
    Panel("ACK latency p99", [quantile(0.99, "hl7engine_ack_latency_seconds_bucket", "", "p99")],
          kind="stat", unit="s", width=4, height=4,
          description="99th percentile of last byte received to ACK written.",
          defaults={"thresholds": {"mode": "absolute", "steps": [
              {"color": "green", "value": None}, {"color": "orange", "value": 0.25}, {"color": "red", "value": 0.5}]}}),
    Panel("Queue depth", [q(f"sum(hl7engine_queue_depth{{{CH}}})")], kind="stat", width=4, height=4,
          description="Stored messages not yet delivered (received, processing, retry)."),
    Panel("Oldest pending", [q(f"max(hl7engine_queue_oldest_age_seconds{{{CH}}})")], kind="stat", unit="s",
          width=4, height=4, description="Age of the oldest undelivered message.",
          defaults={"thresholds": {"mode": "absolute", "steps": [
              {"color": "green", "value": None}, {"color": "orange", "value": 300}, {"color": "red", "value": 1800}]}}),
    Panel("Dead letters", [q(f"sum(hl7engine_dead_letters{{{CH}}})")], kind="stat", width=4, height=4,
          description="Messages waiting for an operator (hl7engine messages list --status dead).",
          defaults={"thresholds": {"mode": "absolute", "steps": [
              {"color": "green", "value": None}, {"color": "red", "value": 1}]}}),
]

ROWS: list[tuple[str, list[Panel]]] = [
    ("Throughput", [
        Panel("Messages received per second", [
            q(f"sum by (channel) (rate(hl7engine_messages_received_total{{{CH}}}[{RATE}]))", "{{channel}}")],
            unit="reqps", width=12),
        Panel("ACKs sent by code", [
            q(f"sum by (code) (rate(hl7engine_acks_total{{{CH}}}[{RATE}]))", "{{code}}")],
            unit="reqps", width=12,
            description="AA/CA accepted; AE/CE error; AR/CR rejected (HL7 v2 ch. 2, MSA-1)."),
    ]),
    ("Latency", [
        Panel("ACK latency", [
            quantile(0.5, "hl7engine_ack_latency_seconds_bucket", "channel", "{{channel}} p50"),
            quantile(0.99, "hl7engine_ack_latency_seconds_bucket", "channel", "{{channel}} p99")],
            unit="s", width=12, description="Last byte of a frame to its ACK written (mostly the durable commit)."),
        Panel("Delivery latency", [
            quantile(0.5, "hl7engine_delivery_latency_seconds_bucket", "channel, sink", "{{channel}}/{{sink}} p50"),
            quantile(0.99, "hl7engine_delivery_latency_seconds_bucket", "channel, sink", "{{channel}}/{{sink}} p99")],
            unit="s", width=12, description="Receipt to delivered, per sink, including queueing and retries."),
    ]),
    ("Queue and dead letters", [
        Panel("Queue depth", [q(f"sum by (channel) (hl7engine_queue_depth{{{CH}}})", "{{channel}}")]),
        Panel("Oldest pending message age", [
            q(f"max by (channel) (hl7engine_queue_oldest_age_seconds{{{CH}}})", "{{channel}}")], unit="s"),
        Panel("Dead letters", [q(f"sum by (channel) (hl7engine_dead_letters{{{CH}}})", "{{channel}}")],
              description="Current dead-letter list size; it falls when messages are replayed or released."),
    ]),
    ("Delivery", [
        Panel("Sink deliveries by outcome", [
            q(f"sum by (channel, sink, outcome) (rate(hl7engine_sink_deliveries_total{{{CH}}}[{RATE}]))",
              "{{channel}}/{{sink}} {{outcome}}")], unit="reqps"),
        Panel("Retries and dead letters per second", [
            q(f'sum by (channel) (rate(hl7engine_messages_processed_total{{{CH}, outcome="retry"}}[{RATE}]))',
              "{{channel}} retry"),
            q(f'sum by (channel) (rate(hl7engine_messages_processed_total{{{CH}, outcome="dead"}}[{RATE}]))',
              "{{channel}} dead")], unit="reqps"),
        Panel("Work outcomes", [
            q(f"sum by (channel, outcome) (rate(hl7engine_messages_processed_total{{{CH}}}[{RATE}]))",
              "{{channel}} {{outcome}}")], unit="reqps", description="done, filtered, retry, dead per attempt."),
    ]),
    ("Mapping", [
        Panel("Unmapped fields (top 10 in range)", [Target(
            " ".join(f"""topk(10, sum by (segment, field) (increase(hl7engine_fields_unmapped_total{{{CH}}}[$__range])))
            """.split()), instant=True, table=True)],
            kind="table", width=12, description="Fields present in messages that no mapper used (never values).",
            options={"sortBy": [{"displayName": "Value", "desc": True}]}),
        Panel("Stage time p99", [
            quantile(0.99, "hl7engine_stage_seconds_bucket", "channel, stage", "{{channel}}/{{stage}}")],
            unit="s", width=12),
    ]),
    ("Connections", [
        Panel("Open connections", [q(f"sum by (channel) (hl7engine_connections_open{{{CH}}})", "{{channel}}")]),
        Panel("Connections by outcome", [
            q(f"sum by (channel, outcome) (rate(hl7engine_connections_total{{{CH}}}[{RATE}]))",
              "{{channel}} {{outcome}}")], unit="cps",
            description="accepted, refused_limit, refused_peer_limit, refused_address, refused_rate, tls_failed."),
        Panel("Frames rejected and quarantined", [
            q(f"sum by (channel, reason) (rate(hl7engine_frames_rejected_total{{{CH}}}[{RATE}]))",
              "{{channel}} rejected {{reason}}"),
            q(f"sum by (channel, reason) (rate(hl7engine_quarantined_total{{{CH}}}[{RATE}]))",
              "{{channel}} quarantined {{reason}}")], unit="reqps"),
    ]),
    ("Store", [
        Panel("Commit latency", [
            q(f"histogram_quantile(0.5, sum by (le) (rate(hl7engine_store_commit_seconds_bucket[{RATE}])))", "p50"),
            q(f"histogram_quantile(0.99, sum by (le) (rate(hl7engine_store_commit_seconds_bucket[{RATE}])))", "p99")],
            unit="s", width=6, description="One group commit: transaction plus fsync."),
        Panel("Messages per commit", [
            q(f"sum(rate(hl7engine_store_batch_messages_sum[{RATE}]))"
              f" / sum(rate(hl7engine_store_batch_messages_count[{RATE}]))", "mean")], width=6),
        Panel("Store errors", [
            q(f"sum by (operation) (rate(hl7engine_store_errors_total[{RATE}]))", "{{operation}}")],
            unit="reqps", width=6, description="Failed store operations; failed ingests are answered AR/CE."),
        Panel("Store disk free", [
            q("min by (instance) (hl7engine_store_filesystem_avail_bytes / hl7engine_store_filesystem_size_bytes)",
              "{{instance}}")],
            unit="percentunit", width=6, description="Free share of the filesystem holding the SQLite store."),
    ]),
]


# ---------------------------------------------------------------- JSON


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = []
    for index, target in enumerate(panel.targets):
        item: dict[str, Any] = {"datasource": DS, "expr": target.expr, "refId": chr(ord("A") + index)}
        if target.legend:
            item["legendFormat"] = target.legend
        if target.instant:
            item["instant"] = True
            item["range"] = False
        if target.table:
            item["format"] = "table"
        targets.append(item)
    defaults: dict[str, Any] = {"unit": panel.unit, **panel.defaults}
    body: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "datasource": DS,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": panel.options or _default_options(panel.kind),
        "targets": targets,
    }
    if panel.description:
        body["description"] = panel.description
    if panel.kind == "table":
        body["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True}}}]
    return body


def _default_options(kind: str) -> dict[str, Any]:
    if kind == "stat":
        return {"colorMode": "background", "graphMode": "area", "reduceOptions": {
            "calcs": ["lastNotNull"], "fields": "", "values": False}}
    return {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"}}


def _layout(panels: list[Panel], first_id: int, y: int) -> tuple[list[dict[str, Any]], int, int]:
    """Place panels left to right, wrapping at 24 columns. Returns (json, next id, next y)."""
    out: list[dict[str, Any]] = []
    x, row_height = 0, 0
    for panel in panels:
        if x + panel.width > WIDTH:
            x, y, row_height = 0, y + row_height, 0
        out.append(_panel_json(panel, first_id, x, y))
        first_id += 1
        x += panel.width
        row_height = max(row_height, panel.height)
    return out, first_id, y + row_height


def build_dashboard() -> dict[str, Any]:
    panels, next_id, y = _layout(OVERVIEW, 1, 0)
    for title, row_panels in ROWS:
        panels.append({"id": next_id, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}, "panels": []})
        placed, next_id, y = _layout(row_panels, next_id + 1, y + 1)
        panels.extend(placed)
    return {
        "uid": "hl7engine",
        "title": "hl7engine",
        "description": "HL7 v2 interface engine: intake, ACKs, queue, delivery, mapping, connections, store.",
        "tags": ["hl7engine", "hl7", "fhir"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
            {"name": "channel", "label": "Channel", "type": "query", "datasource": DS,
             "definition": "label_values(hl7engine_messages_received_total, channel)",
             "query": {"query": "label_values(hl7engine_messages_received_total, channel)",
                       "refId": "PrometheusVariableQueryEditor-VariableQuery"},
             "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "hide": 0,
             "refresh": 2, "sort": 1, "regex": "", "options": []},
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build_dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed dashboard is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run python -m tools.gen_dashboard", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
