"""Prometheus end to end: promtool checks the engine's real /metrics, and a real server scrapes it.

The engine runs as a subprocess (tests/support/engine_proc.py) with the DESIGN.md §3
config; `promtool` and `prometheus` come from Debian's `prometheus` package. Without them
the tests skip, and fail when HL7ENGINE_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.engine_proc import REPO, EngineProcess, free_port, write_config
from tests.support.messages import adt_a01
from tests.support.mllp import exchange, msa

ALERTS = REPO / "config" / "prometheus" / "alerts.yml"
P99_QUERY = "histogram_quantile(0.99, sum(rate(hl7engine_ack_latency_seconds_bucket[1m])) by (le))"


def need_binary(name: str) -> str:
    """Path of a Debian-packaged tool; skip without it, fail when CI requires services."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} not installed (Debian package `prometheus`: apt-get install -y prometheus)"
    if os.environ.get("HL7ENGINE_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class RunningEngine:
    process: EngineProcess
    mllp_port: int
    admin_port: int

    def send(self, control_id: str) -> str:
        """Send one ADT^A01 and return its MSA-1 code."""
        ack = asyncio.run(exchange("127.0.0.1", self.mllp_port, adt_a01(control_id).encode()))
        return msa(ack)[0]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    directory = tmp_path_factory.mktemp("prom-engine")
    mllp_port, admin_port = free_port(), free_port()
    config = write_config(directory, mllp_port=mllp_port, admin_port=admin_port)
    process = EngineProcess(config, admin_port, directory / "engine.log")
    process.start()
    try:
        process.wait_ready()
        yield RunningEngine(process, mllp_port, admin_port)
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.terminate(timeout=30)


def http_json(url: str, timeout: float = 5.0) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = json.loads(response.read().decode())
    assert isinstance(body, dict)
    return body


class TestMetricsExposition:
    def test_promtool_check_metrics_accepts_the_real_exposition(self, engine: RunningEngine) -> None:
        """`promtool check metrics` finds no problem in /metrics after real traffic."""
        promtool = need_binary("promtool")
        assert ["AA", "AA", "AA"] == [engine.send(f"EXPO{i}") for i in range(3)]
        exposition = engine.process.metrics()
        result = subprocess.run([promtool, "check", "metrics"], input=exposition.encode(),
                                capture_output=True, timeout=30, check=False)
        assert (0, b"", b"") == (result.returncode, result.stdout, result.stderr)

    def test_exposition_carries_the_traffic(self, engine: RunningEngine) -> None:
        """The checked exposition is not empty: it counts the AA ACKs and their latency per channel."""
        engine.send("EXPO-COUNT")
        families = {f.name: f for f in text_string_to_metric_families(engine.process.metrics())}
        acks = {s.labels["code"]: s.value for s in families["hl7engine_acks"].samples
                if s.name == "hl7engine_acks_total" and s.labels["channel"] == "adt"}
        latency_count = [s.value for s in families["hl7engine_ack_latency_seconds"].samples
                         if s.name == "hl7engine_ack_latency_seconds_count"]
        assert acks["AA"] >= 1
        assert latency_count and latency_count[0] >= 1


class TestPrometheusServer:
    def test_scrapes_the_engine_and_answers_the_ack_latency_p99(self, engine: RunningEngine, tmp_path: Path) -> None:
        """A real Prometheus scraping every second returns a number for the ACK latency p99, and loads alerts.yml."""
        binary = need_binary("prometheus")
        port = free_port()
        shutil.copy(ALERTS, tmp_path / "alerts.yml")
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files: [alerts.yml]\n"
            "scrape_configs:\n  - job_name: hl7engine\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{engine.admin_port}']\n",
            encoding="utf-8")
        log = (tmp_path / "prometheus.log").open("wb")
        server = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        api = f"http://127.0.0.1:{port}/api/v1"
        try:
            wait_until(lambda: _ready(f"http://127.0.0.1:{port}/-/ready", server), 30, "prometheus ready")
            value = self._p99_while_sending(engine, api, server)
            rules = http_json(f"{api}/rules")
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=5)
        assert 0.0 <= value < 10.0
        groups = rules["data"]["groups"]  # type: ignore[index]
        assert {"hl7engine.availability", "hl7engine.intake", "hl7engine.work", "hl7engine.capacity"} == {
            g["name"] for g in groups}

    @staticmethod
    def _p99_while_sending(engine: RunningEngine, api: str, server: subprocess.Popen[bytes]) -> float:
        """Send one message per poll until the quantile has two scrapes with traffic between them."""
        url = f"{api}/query?" + urllib.parse.urlencode({"query": P99_QUERY})
        deadline = time.monotonic() + 60
        for attempt in range(400):
            assert server.poll() is None, "prometheus exited"
            assert "AA" == engine.send(f"PROM{attempt}")
            result = http_json(url)["data"]["result"]  # type: ignore[index]
            if result:
                value = float(result[0]["value"][1])
                if math.isfinite(value):
                    return value
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)  # pacing the poll: a scrape happens every second
        raise AssertionError("no finite ACK latency p99 from Prometheus within 60 s")


def _ready(url: str, server: subprocess.Popen[bytes]) -> bool:
    assert server.poll() is None, "prometheus exited before it was ready"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check()` until true or the deadline; bounded in time and in attempts."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 1):
        if check():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
