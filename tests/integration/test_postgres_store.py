"""PostgresStore beyond the shared contract: several instances on one database (issue #4).

Two store objects on one schema stand for two engine instances (each has its own pool,
writer and instance id). tests/contract/ holds every store to the single-instance rules.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from engine.store.postgres import MIGRATIONS, PostgresStore
from engine.types import Inbound, Status, Store, StoreUnavailableError
from tests.support.pg import install_order_audit, order_violations, pg_url

__all__ = ["pg_url"]

CHANNEL = "adt"
_schemas = itertools.count(1)

Open = Callable[..., Awaitable[PostgresStore]]


def inbound(control_id: str, *, key: str = "", body: str = "DOE^JANE") -> Inbound:
    raw = (
        f"MSH|^~\\&|EPIC|HOSP|ENG|FAC|20240101120000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r"
        f"PID|1||123^^^HOSP^MR||{body}\r"
    ).encode()
    return Inbound(
        channel=CHANNEL, raw=raw, received_at=time.time(), sender="EPIC|HOSP", control_id=control_id,
        content_hash=hashlib.sha256(raw).hexdigest(), message_type="ADT^A01", charset="utf-8",
        ack=b"MSA|AA|" + control_id.encode(), ordering_key=key, peer="127.0.0.1",
    )


@pytest.fixture
def schema() -> str:
    return f"multi_{next(_schemas)}"


@pytest.fixture
async def open_store(pg_url: str, schema: str) -> AsyncIterator[Open]:
    """Opens PostgresStore instances on this test's schema; closes them all afterwards."""
    opened: list[PostgresStore] = []

    async def factory(**kwargs: Any) -> PostgresStore:
        store = PostgresStore(pg_url, schema=schema, pool_max=4, **kwargs)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


async def wait_for(probe: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    """Poll `probe` until it is true or `timeout` passes (never a bare sleep to synchronise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe():
            return True
        await asyncio.sleep(0.05)
    return await probe()


class TestSchema:
    async def test_two_instances_opening_at_once_migrate_once(self, open_store: Open, pg_url: str, schema: str) -> None:
        """Concurrent opens on an empty schema both succeed and record each version once."""
        first, second = await asyncio.gather(open_store(), open_store())
        conn = await asyncpg.connect(pg_url, server_settings={"search_path": schema})
        try:
            versions = [r[0] for r in await conn.fetch("SELECT version FROM hl7engine_schema_version")]
        finally:
            await conn.close()
        assert [m.version for m in MIGRATIONS] == versions
        assert isinstance(first, Store) and isinstance(second, Store)

    async def test_a_newer_schema_is_refused(self, open_store: Open, pg_url: str, schema: str) -> None:
        """An engine never runs on a schema written by a newer engine."""
        await open_store()
        conn = await asyncpg.connect(pg_url, server_settings={"search_path": schema})
        try:
            await conn.execute("INSERT INTO hl7engine_schema_version (version, summary) VALUES (999, 'future')")
        finally:
            await conn.close()
        with pytest.raises(StoreUnavailableError, match="newer than this engine"):
            await open_store()

    async def test_commits_stay_durable_even_when_the_session_asks_otherwise(self, pg_url: str, schema: str) -> None:
        """A connection that starts with synchronous_commit=off is switched back on."""
        store = PostgresStore(f"{pg_url}?synchronous_commit=off", schema=schema, pool_min=2)
        await store.open()
        try:
            assert "on" == (await store.diagnostics())["synchronous_commit"]
        finally:
            await store.close()

    async def test_an_unreachable_server_is_store_unavailable(self, pg_url: str) -> None:
        """A server that does not answer gives StoreUnavailableError naming the operation only."""
        from tests.support.engine_proc import free_port

        store = PostgresStore(f"postgresql://nobody@127.0.0.1:{free_port()}/none", connect_timeout_s=2)
        with pytest.raises(StoreUnavailableError, match="during open"):
            await store.open()


class TestConnectionLoss:
    async def test_killed_server_connections_fail_calls_cleanly_and_the_store_recovers(
        self, open_store: Open, pg_url: str
    ) -> None:
        """Backends killed under the store: calls fail as StoreUnavailableError (AR 207), then work again."""
        store = await open_store(pool_min=2)
        await store.ingest([inbound("C0")])
        conn = await asyncpg.connect(pg_url)
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'hl7engine' AND datname = current_database()"
            )
        finally:
            await conn.close()
        assert killed >= 1
        outcomes: list[str] = []
        for n in range(1, 6):  # bounded: the pool replaces a dead connection on its next use
            try:
                (result,) = await store.ingest([inbound(f"C{n}")])
            except StoreUnavailableError as exc:
                assert f"C{n}" not in str(exc)
                outcomes.append("unavailable")
                continue
            outcomes.append(result.outcome)
            break
        assert "stored" == outcomes[-1], outcomes


class TestDedupAcrossInstances:
    async def test_the_same_message_through_two_instances_is_stored_once(self, open_store: Open) -> None:
        """Resends racing through two instances: one row, one id and the original ACK for all."""
        one, two = await open_store(), await open_store()
        calls = [(one if i % 2 else two).ingest([inbound("C1")]) for i in range(20)]
        results = [r for (r,) in await asyncio.gather(*calls)]
        assert 1 == sum(r.outcome == "stored" for r in results)
        assert {"stored", "duplicate"} == {r.outcome for r in results}
        assert 1 == len({r.message_id for r in results})
        assert {b"MSA|AA|C1"} == {r.ack for r in results}

    async def test_a_collision_seen_through_the_other_instance_is_flagged(self, open_store: Open) -> None:
        """A reused control id with new content is flagged even when the first came via another instance."""
        one, two = await open_store(), await open_store()
        (first,) = await one.ingest([inbound("C1")])
        (other,) = await two.ingest([inbound("C1", body="ROE^RICHARD")])
        assert ("stored", "collision") == (first.outcome, other.outcome)


class TestGroupCommit:
    async def test_a_bad_item_fails_alone(self, open_store: Open) -> None:
        """A value PostgreSQL cannot store (NUL in text) fails its own call; the batch's others commit."""
        store = await open_store()
        calls = [store.ingest([inbound(f"G{i}")]) for i in range(10)] + [store.ingest([inbound("BAD\x00")])]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[-1], StoreUnavailableError)
        assert "BAD" not in str(results[-1])
        assert ["stored"] * 10 == [r[0].outcome for r in results[:-1]]  # type: ignore[index]

    async def test_runner_updates_of_one_batch_share_a_commit(self, open_store: Open) -> None:
        """complete/retry/dead-letter issued together land in one transaction and all apply."""
        store = await open_store()
        ids = [r.message_id for r in await store.ingest([inbound(f"C{i}", key=f"k{i}") for i in range(6)])]
        await store.lease(CHANNEL, 10, time.time())
        now = time.time()
        await asyncio.gather(
            store.complete(ids[0]), store.complete(ids[1], Status.FILTERED),
            store.schedule_retry(ids[2], "timeout", now + 60), store.dead_letter(ids[3], "permanent"),
            store.mark_sink_done(ids[4], "file"), store.mark_sink_done(ids[4], "fhir"), store.unlease([ids[5]]),
        )
        got = [await store.get(i) for i in ids]
        assert [Status.DONE, Status.FILTERED, Status.RETRY, Status.DEAD, Status.PROCESSING, Status.RECEIVED] == [
            m.status for m in got if m is not None
        ]
        assert frozenset({"file", "fhir"}) == got[4].sinks_done  # type: ignore[union-attr]
        with pytest.raises(KeyError):
            await store.complete(999_999)


class TestLeasesAcrossInstances:
    async def test_recover_frees_only_this_instances_leases(self, open_store: Open) -> None:
        """On start an instance takes back its own in-flight messages, never a live peer's."""
        one, two = await open_store(), await open_store()
        a, b = (r.message_id for r in await one.ingest([inbound("A1", key="a"), inbound("B1", key="b")]))
        assert [a] == [m.id for m in await one.lease(CHANNEL, 1, time.time())]
        assert [b] == [m.id for m in await two.lease(CHANNEL, 1, time.time())]
        assert 1 == await two.recover()
        mine, theirs = await one.get(a), await two.get(b)
        assert mine is not None and theirs is not None
        assert (Status.PROCESSING, Status.RECEIVED) == (mine.status, theirs.status)
        await two.unlease([a])  # not its lease: nothing happens
        still = await one.get(a)
        assert still is not None and Status.PROCESSING == still.status

    async def test_a_dead_instances_lease_expires_and_another_takes_over(self, open_store: Open) -> None:
        """Leases of an instance that stopped beating expire; the survivor gets them, in key order."""
        crashed = await open_store(lease_timeout_s=0.5)
        survivor = await open_store(lease_timeout_s=0.5)
        ids = [r.message_id for r in await crashed.ingest([inbound(f"A{i}", key="a") for i in range(3)])]
        assert ids[:1] == [m.id for m in await crashed.lease(CHANNEL, 1, time.time())]
        await crashed.close()  # stands for SIGKILL: no heartbeat, no completion
        assert [] == [m.id for m in await survivor.lease(CHANNEL, 10, time.time())]  # key a is still held
        got: list[int] = []

        async def take() -> bool:
            got.extend(m.id for m in await survivor.lease(CHANNEL, 10, time.time()))
            return bool(got)

        assert await wait_for(take, timeout=10)
        assert ids == got
        first = await survivor.get(ids[0])
        assert first is not None and 2 == first.attempts

    async def test_a_live_instances_lease_is_kept_alive_by_its_heartbeat(self, open_store: Open) -> None:
        """A batch held longer than lease_timeout_s is not taken over while its instance lives."""
        holder = await open_store(lease_timeout_s=0.6)
        other = await open_store(lease_timeout_s=0.6)
        (mid,) = [r.message_id for r in await holder.ingest([inbound("C1")])]
        assert [mid] == [m.id for m in await holder.lease(CHANNEL, 1, time.time())]
        deadline = time.monotonic() + 2.0  # over three lease timeouts
        while time.monotonic() < deadline:
            assert [] == await other.lease(CHANNEL, 10, time.time())
            await asyncio.sleep(0.1)
        await holder.complete(mid)

    async def test_a_message_blocked_by_another_instance_is_not_due(self, open_store: Open) -> None:
        """next_due does not call a key held elsewhere due (no spinning), but an expired lease is."""
        holder = await open_store(lease_timeout_s=0.5)
        other = await open_store(lease_timeout_s=0.5)
        await holder.ingest([inbound("A1", key="a"), inbound("A2", key="a")])
        assert 1 == len(await holder.lease(CHANNEL, 1, time.time()))
        assert await other.next_due(CHANNEL) is None
        await holder.close()  # its lease now runs out

        async def due() -> bool:
            return await other.next_due(CHANNEL) is not None

        assert await wait_for(due, timeout=10)

    async def test_two_instances_leasing_at_once_keep_per_key_order(
        self, open_store: Open, pg_url: str, schema: str
    ) -> None:
        """Two instances racing over 300 messages of 20 keys: each leased once, never out of key order."""
        one, two = await open_store(), await open_store()
        await install_order_audit(pg_url, schema)
        ids = [r.message_id for r in await one.ingest([inbound(f"C{i}", key=f"k{i % 20}") for i in range(300)])]
        leased: list[int] = []

        async def worker(store: PostgresStore) -> None:
            for _ in range(300):  # bounded: far more rounds than 300 messages need
                batch = await store.lease(CHANNEL, 7, time.time())
                if not batch:
                    if len(leased) >= len(ids):
                        return
                    await asyncio.sleep(0.01)
                    continue
                leased.extend(m.id for m in batch)
                await asyncio.gather(*(store.complete(m.id) for m in batch))

        await asyncio.wait_for(asyncio.gather(worker(one), worker(two), worker(one), worker(two)), timeout=60)
        assert sorted(ids) == sorted(leased)
        assert [] == await order_violations(pg_url, schema)

    async def test_the_order_witness_catches_an_out_of_order_lease(
        self, open_store: Open, pg_url: str, schema: str
    ) -> None:
        """The audit trigger itself works: leasing a key's second message behind its first is recorded."""
        store = await open_store()
        await install_order_audit(pg_url, schema)
        first, second = (r.message_id for r in await store.ingest([inbound("A1", key="a"), inbound("A2", key="a")]))
        conn = await asyncpg.connect(pg_url, server_settings={"search_path": schema})
        try:
            await conn.execute("UPDATE messages SET status = 'processing', attempts = 1 WHERE id = $1", second)
        finally:
            await conn.close()
        assert [(second, first, "received")] == await order_violations(pg_url, schema)
