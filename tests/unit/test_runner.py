"""The runner: retries with backoff, dead letters, per-key order, several sinks.

Runs against a real SQLite store; sinks are scripted, since the failures under test
(a server answering 503 then 200, a 400) are what a sink reports, not what it is.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from engine.pipeline.runner import RetryPolicy, Runner
from engine.store.sqlite import SQLiteStore
from engine.types import (
    NOT_ATTEMPTED,
    DeliveryResult,
    Exchange,
    Inbound,
    MappingError,
    MessageQuery,
    PermanentError,
    Status,
    TransientError,
)


class ScriptedSink:
    """Fails the listed message numbers (by control id) the given number of times."""

    def __init__(self, name: str, transient: dict[str, int] | None = None,
                 permanent: set[str] | None = None) -> None:
        self.name = name
        self.transient = dict(transient or {})
        self.permanent = set(permanent or ())
        self.delivered: list[str] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def deliver_many(self, exchanges: Sequence[Exchange]) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        for index, exchange in enumerate(exchanges):
            cid = exchange.message.control_id
            if cid in self.permanent:
                results.append(PermanentError("HTTP 400: Patient.gender invalid code"))
                continue
            if self.transient.get(cid, 0) > 0:
                self.transient[cid] -= 1
                results.append(TransientError("HTTP 503"))
                results.extend(NOT_ATTEMPTED for _ in exchanges[index + 1:])
                break
            self.delivered.append(cid)
            results.append(None)
        return results


class PassStage:
    name = "pass"

    def process(self, exchange: Exchange) -> Exchange | None:
        if "POISON" in exchange.text:
            raise MappingError("required segment missing", segment="PID")
        if "SKIP" in exchange.text:
            return None
        exchange.output = {"resourceType": "Bundle", "type": "transaction", "entry": []}
        return exchange


def inbound(cid: str, key: str = "", body: str = "") -> Inbound:
    raw = f"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|{cid}|P|2.5.1\rPID|1||{body}\r".encode()
    return Inbound(channel="ch", raw=raw, received_at=time.time(), sender="A|B", control_id=cid,
                   content_hash=hashlib.sha256(raw).hexdigest(), message_type="ADT^A01", charset="utf-8",
                   ack=b"ACK", ordering_key=key)


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SQLiteStore(tmp_path / "s.db")
    await s.open()
    yield s
    await s.close()


async def drain(runner: Runner, rounds: int = 50) -> None:
    """Run batches until nothing is due now (bounded)."""
    for _ in range(rounds):
        if not await runner.run_once():
            return


async def statuses(store: SQLiteStore) -> dict[str, Status]:
    return {m.control_id: m.status for m in await store.query(MessageQuery(limit=1000))}


FAST = RetryPolicy(initial_s=0.0, max_s=0.0, jitter=0.0, max_attempts=3)


class TestRunner:
    async def test_delivers_in_order_and_marks_done(self, store: SQLiteStore) -> None:
        """Messages reach the sink in arrival order and end as done."""
        await store.ingest([inbound(f"M{i}") for i in range(5)])
        sink = ScriptedSink("s")
        await drain(Runner("ch", store, [PassStage()], [sink], retry=FAST))
        assert [f"M{i}" for i in range(5)] == sink.delivered
        assert {Status.DONE} == set((await statuses(store)).values())

    async def test_poison_message_is_dead_lettered_and_the_rest_flow(self, store: SQLiteStore) -> None:
        """A mapping failure dead-letters that message with a PHI-free reason; later ones deliver."""
        await store.ingest([inbound("M1"), inbound("M2", body="POISON"), inbound("M3")])
        sink = ScriptedSink("s")
        await drain(Runner("ch", store, [PassStage()], [sink], retry=FAST))
        assert ["M1", "M3"] == sink.delivered
        dead = await store.query(MessageQuery(statuses=frozenset({Status.DEAD})))
        assert ["M2"] == [m.control_id for m in dead]
        assert "PID" in (dead[0].last_error or "")

    async def test_filtered_message_is_not_delivered(self, store: SQLiteStore) -> None:
        """A stage returning None ends the message as filtered."""
        await store.ingest([inbound("M1", body="SKIP")])
        sink = ScriptedSink("s")
        await drain(Runner("ch", store, [PassStage()], [sink], retry=FAST))
        assert [] == sink.delivered
        assert Status.FILTERED == (await statuses(store))["M1"]

    async def test_transient_failure_retries_then_succeeds_keeping_order(self, store: SQLiteStore) -> None:
        """A 503 on the head message holds the channel back; after the retry everything is in order."""
        await store.ingest([inbound("M1"), inbound("M2"), inbound("M3")])
        sink = ScriptedSink("s", transient={"M1": 2})
        await drain(Runner("ch", store, [PassStage()], [sink], retry=FAST))
        assert ["M1", "M2", "M3"] == sink.delivered
        assert {Status.DONE} == set((await statuses(store)).values())

    async def test_retries_exhausted_dead_letters_and_the_channel_moves_on(self, store: SQLiteStore) -> None:
        """After max_attempts transient failures the message is dead and the next is delivered."""
        await store.ingest([inbound("M1"), inbound("M2")])
        sink = ScriptedSink("s", transient={"M1": 99})
        await drain(Runner("ch", store, [PassStage()], [sink], retry=FAST))
        assert ["M2"] == sink.delivered
        dead = await store.query(MessageQuery(statuses=frozenset({Status.DEAD})))
        assert "retries exhausted after 3 attempts" in (dead[0].last_error or "")

    async def test_permanent_sink_error_dead_letters_only_that_message(self, store: SQLiteStore) -> None:
        """A 400 from the sink dead-letters one message; its neighbours are delivered."""
        await store.ingest([inbound("M1"), inbound("M2"), inbound("M3")])
        sink = ScriptedSink("s", permanent={"M2"})
        await drain(Runner("ch", store, [PassStage()], [sink], retry=FAST))
        assert ["M1", "M3"] == sink.delivered
        assert Status.DEAD == (await statuses(store))["M2"]

    async def test_per_key_order_lets_other_keys_pass_a_retrying_one(self, store: SQLiteStore) -> None:
        """With an ordering key, a retrying patient waits while other patients are delivered."""
        await store.ingest([inbound("A1", key="a"), inbound("B1", key="b"), inbound("A2", key="a"),
                            inbound("B2", key="b")])
        slow = RetryPolicy(initial_s=60.0, max_s=60.0, jitter=0.0, max_attempts=3)
        sink = ScriptedSink("s", transient={"A1": 1})
        await drain(Runner("ch", store, [PassStage()], [sink], retry=slow))
        # A1 waits a minute for its retry; A2 must not overtake it; B's are delivered.
        assert ["B1", "B2"] == [c for c in sink.delivered if c.startswith("B")]
        assert "A2" not in sink.delivered
        states = await statuses(store)
        assert Status.RETRY == states["A1"] and Status.RECEIVED == states["A2"]

    async def test_second_sink_failure_does_not_redeliver_to_the_first(self, store: SQLiteStore) -> None:
        """With two sinks, a retry after the second one failed skips the one that succeeded."""
        await store.ingest([inbound("M1")])
        first = ScriptedSink("first")
        second = ScriptedSink("second", transient={"M1": 1})
        await drain(Runner("ch", store, [PassStage()], [first, second], retry=FAST))
        assert ["M1"] == first.delivered
        assert ["M1"] == second.delivered
        assert Status.DONE == (await statuses(store))["M1"]


class TestRetryPolicy:
    def test_backoff_grows_and_is_capped(self) -> None:
        """Delays grow by the multiplier and never pass max_s (no jitter)."""
        policy = RetryPolicy(initial_s=1, max_s=10, multiplier=2, jitter=0)
        assert [1, 2, 4, 8, 10, 10] == [policy.delay(n) for n in range(1, 7)]

    def test_retry_after_is_honoured_up_to_the_cap(self) -> None:
        """A server's Retry-After lengthens the delay but not beyond max_s."""
        policy = RetryPolicy(initial_s=1, max_s=30, jitter=0)
        assert 20 == policy.delay(1, retry_after=20)
        assert 30 == policy.delay(1, retry_after=500)

    def test_jitter_stays_within_its_band(self) -> None:
        """Jitter spreads delays within +/- the configured fraction."""
        policy = RetryPolicy(initial_s=10, max_s=100, jitter=0.2)
        delays = [policy.delay(1) for _ in range(200)]
        assert all(8 <= d <= 12 for d in delays)
        assert len({round(d, 3) for d in delays}) > 10
