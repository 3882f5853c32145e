"""Alert rules (config/prometheus/alerts.yml), their promtool tests, their docs, and the disk gauge they read."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.obs import metrics
from engine.obs.disk import filesystem_space, record_store_filesystem
from tools import gen_ops_docs
from tools.metrics_catalog import exposed_series, expr_metric_names

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "config" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
OPERATIONS = REPO / "docs" / "operations.md"
# Labels an annotation may print: bounded names chosen by the engine or Prometheus, never PHI.
SAFE_LABELS = {"job", "instance", "channel", "sink", "operation", "outcome"}


def need_promtool() -> str:
    path = shutil.which("promtool")
    if path is not None:
        return path
    reason = "promtool not installed (Debian package `prometheus`: apt-get install -y prometheus)"
    if os.environ.get("HL7ENGINE_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def unit_tests() -> list[dict[str, Any]]:
    return [check for test in yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]
            for check in test["alert_rule_test"]]


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub derives from headings: lower case, punctuation dropped, spaces to dashes."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in markdown.splitlines() if line.startswith("#")}


class TestPromtool:
    def test_check_rules_accepts_the_file(self) -> None:
        """`promtool check rules` parses every rule and template."""
        result = promtool("check", "rules", str(ALERTS))
        assert 0 == result.returncode, result.stdout + result.stderr
        assert f"SUCCESS: {len(rules())} rules found" in result.stdout

    def test_unit_tests_pass(self) -> None:
        """`promtool test rules alerts_test.yml`: each alert fires when it should, with its labels and text."""
        result = promtool("test", "rules", ALERT_TESTS.name)
        assert 0 == result.returncode, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_unit_tests_catch_a_wrong_threshold(self, tmp_path: Path) -> None:
        """With the queue-age threshold raised tenfold, the unit tests fail: they really check the rules."""
        text = ALERTS.read_text(encoding="utf-8")
        assert "(hl7engine_queue_oldest_age_seconds) > 300" in text
        (tmp_path / "alerts.yml").write_text(
            text.replace("(hl7engine_queue_oldest_age_seconds) > 300", "(hl7engine_queue_oldest_age_seconds) > 3000"),
            encoding="utf-8")
        shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
        result = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
        assert 0 != result.returncode
        assert "HL7EngineQueueOldestAgeHigh" in result.stdout + result.stderr


class TestRuleContent:
    def test_every_alert_has_severity_summary_description_and_runbook(self) -> None:
        """Each rule is an alert with a known severity, a summary, a runbook link and first steps."""
        for rule in rules():
            assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            assert {"summary", "description", "runbook_url"} == set(rule["annotations"]), rule["alert"]
            assert "First steps:" in rule["annotations"]["description"], rule["alert"]

    def test_expressions_read_only_engine_metrics(self) -> None:
        """Every metric in an expr is exported by engine/obs/metrics.py (or is Prometheus's own `up`)."""
        known = exposed_series() | {"up"}
        unknown = {(rule["alert"], name) for rule in rules() for name in expr_metric_names(rule["expr"]) - known}
        assert set() == unknown

    def test_annotations_print_only_bounded_labels(self) -> None:
        """Templates use channel/sink/instance-style labels only, never $value or anything content-like."""
        for rule in rules():
            for text in rule["annotations"].values():
                assert "$value" not in text, rule["alert"]
                assert set(re.findall(r"\$labels\.(\w+)", text)) <= SAFE_LABELS, rule["alert"]

    def test_required_alerts_exist(self) -> None:
        """Silent channel, queue age, dead letters, sink failing, disk, ACK latency, not ready (issue #5)."""
        assert {
            "HL7EngineChannelSilent", "HL7EngineQueueOldestAgeHigh", "HL7EngineDeadLettersRising",
            "HL7EngineSinkFailing", "HL7EngineStoreDiskNearlyFull", "HL7EngineAckLatencyHigh",
            "HL7EngineNotReady",
        } <= {rule["alert"] for rule in rules()}


class TestUnitTestCoverage:
    def test_every_alert_and_severity_fires_in_some_test(self) -> None:
        """alerts_test.yml expects each (alert, severity) pair to fire at least once."""
        fired = {(check["alertname"], alert["exp_labels"]["severity"])
                 for check in unit_tests() for alert in check.get("exp_alerts") or []}
        assert {(rule["alert"], rule["labels"]["severity"]) for rule in rules()} == fired

    def test_every_alert_has_a_case_where_it_stays_quiet(self) -> None:
        """Each alert also has an evaluation where it must not fire (no false positives)."""
        quiet = {check["alertname"] for check in unit_tests() if not check.get("exp_alerts")}
        assert {rule["alert"] for rule in rules()} == quiet


class TestOperationsDocs:
    def test_every_runbook_url_points_at_a_heading(self) -> None:
        """runbook_url anchors resolve to a heading in docs/operations.md."""
        anchors = github_anchors(OPERATIONS.read_text(encoding="utf-8"))
        missing = {rule["annotations"]["runbook_url"] for rule in rules()
                   if rule["annotations"]["runbook_url"].partition("#")[2] not in anchors}
        assert set() == missing

    def test_generated_tables_are_current(self) -> None:
        """The metrics and alerts tables match engine/obs/metrics.py and alerts.yml (python -m tools.gen_ops_docs)."""
        current = OPERATIONS.read_text(encoding="utf-8")
        assert gen_ops_docs.render(current) == current

    def test_metrics_table_lists_every_engine_metric(self) -> None:
        """Each hl7engine_* series family appears in the metrics reference."""
        text = OPERATIONS.read_text(encoding="utf-8")
        names = {name.removesuffix("_bucket") for name in exposed_series()
                 if name.startswith("hl7engine_") and not name.endswith(("_sum", "_count"))}
        assert set() == {name for name in names if f"`{name}`" not in text}


class TestStoreFilesystemGauge:
    def test_measures_the_nearest_existing_directory(self, tmp_path: Path) -> None:
        """A store path whose directories do not exist yet is measured at its nearest existing parent."""
        space = filesystem_space(tmp_path / "not" / "yet" / "store.db")
        assert space is not None
        avail, size = space
        assert 0 < avail <= size

    def test_sets_the_gauges_the_disk_alerts_read(self, tmp_path: Path) -> None:
        """record_store_filesystem publishes avail and size bytes for the SQLite store's filesystem."""
        metrics.STORE_FS_AVAIL.set(-1)
        metrics.STORE_FS_SIZE.set(-1)
        record_store_filesystem(tmp_path / "store.db")
        avail = metrics.REGISTRY.get_sample_value("hl7engine_store_filesystem_avail_bytes")
        size = metrics.REGISTRY.get_sample_value("hl7engine_store_filesystem_size_bytes")
        assert avail is not None and size is not None
        assert 0 < avail <= size

    def test_no_path_leaves_the_gauges_alone(self) -> None:
        """A PostgreSQL store (no local path) does not publish a misleading local disk."""
        metrics.STORE_FS_AVAIL.set(123)
        record_store_filesystem(None)
        assert 123 == metrics.REGISTRY.get_sample_value("hl7engine_store_filesystem_avail_bytes")
