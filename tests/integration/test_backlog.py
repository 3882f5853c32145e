"""Backlog behaviour, bounded (issue #6): the engine keeps ACKing while its sink is down, holds
idle connections, and drains the whole backlog with flat memory once the sink recovers.

Runs `bench.backlog`'s scenario on a small scale: the engine as a separate process
(`python -m engine run`), a file sink on /dev/full (every write fails with ENOSPC, a
transient error), 3,000 messages over 32 waiting senders, 200 idle connections, then
POST /api/reload with a real sink file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bench.backlog import DOWN_SINK, BacklogSettings, run_backlog

MESSAGES = 3_000
IDLE_CONNECTIONS = 200
#: Generous: the drain must not hold the backlog in memory (it is ~35 MB of Bundles here).
MAX_DRAIN_GROWTH_MB = 60.0

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not DOWN_SINK.exists(),
    reason="needs Linux: /proc for memory readings and /dev/full as the failing sink",
)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = BacklogSettings(
        messages=MESSAGES,
        idle_connections=IDLE_CONNECTIONS,
        connections=32,
        chunks=3,
        reference=0,
        retry_s=1.0,
        quiet_s=1.5,
        sample_interval_s=0.25,
        drain_timeout_s=60.0,
    )
    workdir: Path = tmp_path_factory.mktemp("backlog")
    return run_backlog(settings, workdir=workdir, progress=lambda _line: None)


class TestBacklog:
    def test_every_message_is_acked_while_the_sink_is_down(self, result: dict[str, Any]) -> None:
        """All 3,000 messages get AA although the sink accepts nothing."""
        build = result["build"]
        assert (MESSAGES, 0, 0) == (build["accepted"], build["not_accepted"], build["errors"])

    def test_nothing_reaches_the_sink_while_it_is_down(self, result: dict[str, Any]) -> None:
        """No Bundle line appears in the real sink file before the sink recovers."""
        assert 0 == result["idle"]["sink_lines_while_down"]

    def test_idle_connections_stay_open_and_live(self, result: dict[str, Any]) -> None:
        """200 idle connections are accepted, one still carries a message, none is closed by the engine."""
        idle = result["idle"]
        assert (IDLE_CONNECTIONS, 0, "AA") == (idle["opened"], idle["connect_failures"], idle["probe_ack"])
        assert IDLE_CONNECTIONS == idle["still_open_after_drain"]

    def test_backlog_drains_completely_after_the_sink_recovers(self, result: dict[str, Any]) -> None:
        """Every ACKed message (and the probe) ends up as exactly one Bundle line in the sink."""
        drained = result["drain"]
        assert drained["complete"]
        assert MESSAGES + 1 == drained["expected"] == drained["sink_lines"] == drained["distinct_ids"]

    def test_memory_stays_flat_while_draining(self, result: dict[str, Any]) -> None:
        """Summed RSS of the engine and its workers grows by less than 60 MB during the drain."""
        growth = result["drain"]["rss_growth_mb"]
        assert growth is not None
        assert growth < MAX_DRAIN_GROWTH_MB

    def test_queue_depth_rises_then_returns_to_zero(self, result: dict[str, Any]) -> None:
        """hl7engine_queue_depth on /metrics shows the backlog, then 0 once it has drained."""
        depth = result["queue_depth"]
        assert depth["max"] is not None
        assert depth["max"] >= MESSAGES
        assert 0 == depth["final"]

    def test_engine_stops_cleanly_after_the_drain(self, result: dict[str, Any]) -> None:
        """SIGTERM after the drain exits 0 without needing SIGKILL."""
        assert result["stop"]["clean"]

    def test_waiting_for_a_down_sink_costs_little_cpu(self, result: dict[str, Any]) -> None:
        """With the backlog stored and no traffic, the engine's main process uses under 25% of a core."""
        assert result["idle"]["engine_cpu_percent"]["main"] < 25.0
