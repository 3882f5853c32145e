"""SQLiteStore specifics: schema, group commit, durability, failure handling (DESIGN.md §5)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.obs.metrics import REGISTRY
from engine.store import SQLiteStore
from engine.store.base import LeaseCandidate, LeasePlanner, decode_sinks, encode_sinks
from engine.store.sqlite import PRUNE_CHUNK
from engine.types import Inbound, MessageQuery, Status, Store, StoreUnavailableError

REPO = Path(__file__).resolve().parents[2]
PATIENT = "DOE^JANE"  # fake PHI: must never appear in an error text
ACKED_BEFORE_KILL = 1500  # the child is killed mid-stream, with ingests in flight


def raw_for(n: int, padding: int = 0) -> bytes:
    """Message n's exact bytes (also computed by the crash child, so both sides agree)."""
    return (
        f"MSH|^~\\&|EPIC|HOSP|ENG|FAC|20240101120000||ADT^A01|N{n}|P|2.5.1\r"
        f"PID|1||{n}^^^HOSP^MR||{PATIENT}\r"
    ).encode("latin-1") + b"\xe9\xff" + b"Z" * padding


def inbound(n: int, *, key: str = "", padding: int = 0) -> Inbound:
    raw = raw_for(n, padding)
    return Inbound(
        channel="adt", raw=raw, received_at=time.time(), sender="EPIC|HOSP", control_id=f"N{n}",
        content_hash=hashlib.sha256(raw).hexdigest(), message_type="ADT^A01", charset="latin-1",
        ack=b"MSA|AA|N" + str(n).encode(), ordering_key=key,
    )


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    instance = SQLiteStore(tmp_path / "store.db")
    await instance.open()
    try:
        yield instance
    finally:
        await instance.close()


class TestSchema:
    async def test_wal_and_full_sync_on_the_writer(self, store: SQLiteStore) -> None:
        """The writer runs in WAL mode with synchronous=FULL (2) at the newest schema version."""
        settings_ = await store.diagnostics()
        assert ("wal", 2, 1) == (settings_["journal_mode"], settings_["synchronous"], settings_["user_version"])

    async def test_satisfies_the_store_protocol(self, store: SQLiteStore) -> None:
        """SQLiteStore is a Store (runtime check of the protocol's methods)."""
        assert isinstance(store, Store)

    async def test_reopen_keeps_data_and_schema(self, tmp_path: Path) -> None:
        """Closing and reopening runs no migration twice and keeps every message."""
        first = SQLiteStore(tmp_path / "db" / "store.db")
        await first.open()
        (result,) = await first.ingest([inbound(1)])
        await first.close()
        second = SQLiteStore(tmp_path / "db" / "store.db")
        await second.open()
        try:
            message = await second.get(result.message_id)
            assert message is not None and raw_for(1) == message.raw
            assert 1 == (await second.diagnostics())["user_version"]
        finally:
            await second.close()

    async def test_refuses_a_newer_schema(self, tmp_path: Path) -> None:
        """A database written by a newer engine is not touched: open() raises."""
        path = tmp_path / "store.db"
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        newer = SQLiteStore(path)
        with pytest.raises(StoreUnavailableError, match="newer"):
            await newer.open()

    async def test_rejects_in_memory_databases(self) -> None:
        """:memory: cannot be shared by the writer and reader connections, so it is refused."""
        with pytest.raises(ValueError, match="file path"):
            SQLiteStore(":memory:")

    async def test_use_before_open_is_unavailable(self, tmp_path: Path) -> None:
        """Calls on a store that is not open fail as unavailable instead of hanging."""
        with pytest.raises(StoreUnavailableError):
            await SQLiteStore(tmp_path / "s.db").ingest([inbound(1)])


class TestGroupCommit:
    async def test_one_call_is_one_commit(self, store: SQLiteStore) -> None:
        """An ingest of 100 items is a single group commit carrying 100 messages."""
        count, total = sample("hl7engine_store_batch_messages_count"), sample("hl7engine_store_batch_messages_sum")
        await store.ingest([inbound(n) for n in range(100)])
        assert 1 == sample("hl7engine_store_batch_messages_count") - count
        assert 100 == sample("hl7engine_store_batch_messages_sum") - total

    async def test_concurrent_identical_resends_store_one_message(self, store: SQLiteStore) -> None:
        """The same message from 16 callers at once is stored once; the rest are duplicates."""
        results = await asyncio.gather(*(store.ingest([inbound(7)]) for _ in range(16)))
        outcomes = sorted(r.outcome for (r,) in results)
        assert ["duplicate"] * 15 + ["stored"] == outcomes
        assert 1 == len({r.message_id for (r,) in results})

    async def test_a_failing_job_does_not_undo_its_batch_neighbours(self, tmp_path: Path) -> None:
        """A job that fails (unknown id) rolls back alone; ingests committed with it persist."""
        path = tmp_path / "store.db"
        store = SQLiteStore(path)
        await store.open()
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # hold the writer so the three jobs queue together
            ingest_a = asyncio.ensure_future(store.ingest([inbound(1)]))
            missing = asyncio.ensure_future(store.complete(424242))
            ingest_b = asyncio.ensure_future(store.ingest([inbound(2)]))
            await asyncio.sleep(0)  # let the three tasks submit their jobs
            blocker.execute("ROLLBACK")
            (a,), (b,) = await ingest_a, await ingest_b
            with pytest.raises(KeyError):
                await missing
            assert ("stored", "stored") == (a.outcome, b.outcome)
            assert [a.message_id, b.message_id] == [m.id for m in await store.query(MessageQuery())]
        finally:
            blocker.close()
            await store.close()


class TestDurability:
    def test_sigkill_loses_no_acknowledged_message(self, tmp_path: Path) -> None:
        """Every id printed after ingest returned survives SIGKILL with its exact bytes."""
        path = tmp_path / "crash.db"
        child = (
            "import asyncio, sys\n"
            "from engine.store import SQLiteStore\n"
            "from tests.unit.test_sqlite_store import inbound\n"
            "async def main():\n"
            "    store = SQLiteStore(sys.argv[1])\n"
            "    await store.open()\n"
            "    async def worker(w):\n"
            "        for i in range(100000):\n"
            "            n = w * 100000 + i\n"
            "            (r,) = await store.ingest([inbound(n)])\n"
            "            sys.stdout.write(f'{n} {r.message_id}\\n')\n"
            "            sys.stdout.flush()\n"
            "    await asyncio.gather(*(worker(w) for w in range(8)))\n"
            "asyncio.run(main())\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [sys.executable, "-c", child, str(path)], cwd=REPO, env=env, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        out = b""
        deadline = time.monotonic() + 60
        try:
            while out.count(b"\n") < ACKED_BEFORE_KILL and time.monotonic() < deadline and proc.poll() is None:
                ready, _, _ = select.select([proc.stdout], [], [], 1.0)
                if ready:
                    out += os.read(proc.stdout.fileno(), 65536)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        out += proc.stdout.read()
        proc.stdout.close()
        complete_lines = out.decode().split("\n")[:-1]  # a line cut by the kill is not counted
        acked = [(int(n), int(message_id)) for n, message_id in (line.split() for line in complete_lines)]
        assert len(acked) >= ACKED_BEFORE_KILL, "the child did not acknowledge enough messages in time"

        async def stored() -> dict[int, bytes | None]:
            reopened = SQLiteStore(path)
            await reopened.open()
            try:
                return {mid: (m.raw if (m := await reopened.get(mid)) else None) for _, mid in acked}
            finally:
                await reopened.close()

        found = asyncio.run(stored())
        assert [raw_for(n) for n, _ in acked] == [found[mid] for _, mid in acked]


class TestFailures:
    async def test_disk_full_is_unavailable_and_the_store_recovers(self, tmp_path: Path) -> None:
        """A full database refuses ingests without PHI in the error, keeps serving, and takes
        messages again once pruning frees space."""
        store = SQLiteStore(tmp_path / "full.db", max_size_bytes=400 * 1024)
        await store.open()
        try:
            finished = [r.message_id for r in await store.ingest([inbound(n, padding=3000) for n in range(20)])]
            await store.lease("adt", 100, time.time())
            for message_id in finished:
                await store.complete(message_id)
            error: StoreUnavailableError | None = None
            for n in range(100, 400):  # bounded: 400 KiB holds far fewer 3 KiB messages
                try:
                    await store.ingest([inbound(n, padding=3000)])
                except StoreUnavailableError as exc:
                    error = exc
                    break
            assert error is not None, "the size cap was never reached"
            assert "SQLITE_FULL" in str(error)
            assert PATIENT not in str(error) and "N1" not in str(error)
            assert (await store.get(finished[0])) is not None  # reads still work
            assert len(finished) == await store.prune(time.time() + 60)
            (again,) = await store.ingest([inbound(999, padding=3000)])
            assert "stored" == again.outcome
        finally:
            await store.close()

    async def test_locked_database_is_unavailable_without_blocking_the_loop(self, tmp_path: Path) -> None:
        """While another process holds the write lock, ingest fails as unavailable after the
        busy timeout, the event loop keeps running meanwhile, and the store works afterwards."""
        path = tmp_path / "locked.db"
        store = SQLiteStore(path, busy_timeout_s=0.3)
        await store.open()
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            ticks = 0
            pending = asyncio.ensure_future(store.ingest([inbound(1)]))
            deadline = time.monotonic() + 10
            while not pending.done() and time.monotonic() < deadline:
                await asyncio.sleep(0)
                ticks += 1
            with pytest.raises(StoreUnavailableError, match="SQLITE_BUSY"):
                await pending
            assert ticks > 10
            blocker.execute("ROLLBACK")
            (result,) = await store.ingest([inbound(1)])
            assert "stored" == result.outcome
        finally:
            blocker.close()
            await store.close()

    async def test_too_many_queued_writes_fail_fast(self, tmp_path: Path) -> None:
        """Beyond max_pending queued writes, ingest refuses at once (backpressure, not memory)."""
        path = tmp_path / "busy.db"
        store = SQLiteStore(path, max_pending=4)
        await store.open()
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            tasks = [asyncio.ensure_future(store.ingest([inbound(n)])) for n in range(10)]
            await asyncio.sleep(0)
            refused = [t for t in tasks if t.done() and isinstance(t.exception(), StoreUnavailableError)]
            assert len(refused) >= 5
            assert all("overloaded" in str(t.exception()) for t in refused)
            blocker.execute("ROLLBACK")
            accepted = [t for t in tasks if t not in refused]
            results = await asyncio.gather(*accepted)
            assert ["stored"] * len(accepted) == [r.outcome for (r,) in results]
        finally:
            blocker.close()
            await store.close()


class TestLeaseAcrossInstances:
    async def test_two_stores_on_one_file_never_share_a_message(self, tmp_path: Path) -> None:
        """Two store objects (two writer connections) leasing at once split the messages."""
        path = tmp_path / "shared.db"
        one, two = SQLiteStore(path), SQLiteStore(path)
        await one.open()
        await two.open()
        try:
            ids = [r.message_id for r in await one.ingest([inbound(n, key=f"k{n}") for n in range(120)])]
            got: dict[int, list[int]] = {0: [], 1: []}

            async def worker(index: int, store: SQLiteStore) -> None:
                for _ in range(120):
                    batch = await store.lease("adt", 5, time.time())
                    if not batch:
                        return
                    for message in batch:
                        got[index].append(message.id)
                        await store.complete(message.id)

            await asyncio.wait_for(asyncio.gather(worker(0, one), worker(1, two)), timeout=60)
            assert not set(got[0]) & set(got[1])
            assert sorted(ids) == sorted(got[0] + got[1])
        finally:
            await one.close()
            await two.close()


class TestRecoverAfterRestart:
    async def test_processing_rows_come_back_after_reopen(self, tmp_path: Path) -> None:
        """Messages leased when the engine stopped are leasable again after recover()."""
        path = tmp_path / "store.db"
        first = SQLiteStore(path)
        await first.open()
        ids = [r.message_id for r in await first.ingest([inbound(n) for n in range(3)])]
        await first.lease("adt", 2, time.time())
        await first.close()
        second = SQLiteStore(path)
        await second.open()
        try:
            assert 2 == await second.recover()
            leased = await second.lease("adt", 10, time.time())
            assert ids == [m.id for m in leased]
            assert [2, 2, 1] == [m.attempts for m in leased]  # the interrupted attempt counts
        finally:
            await second.close()


class TestPruneChunks:
    async def test_prune_deletes_more_than_one_chunk(self, store: SQLiteStore) -> None:
        """prune works through several chunks and reports the total."""
        count = PRUNE_CHUNK * 2 + 17
        ids = [r.message_id for r in await store.ingest([inbound(n, key=str(n)) for n in range(count)])]
        await store.lease("adt", count, time.time())
        for start in range(0, count, 500):
            await asyncio.gather(*(store.complete(i) for i in ids[start : start + 500]))
        assert count == await store.prune(time.time() + 60)
        assert [] == await store.query(MessageQuery())


class TestQuarantine:
    async def test_quarantined_frames_keep_exact_bytes(self, store: SQLiteStore) -> None:
        """Refused frames are kept byte for byte and listed per channel, oldest first."""
        first = await store.quarantine("adt", b"\x0bgarbage\x00\xff", "no_msh", 100.0, "10.0.0.1")
        second = await store.quarantine("lab", b"MSH|bad", "unaccepted_type", 101.0)
        frames = await store.quarantined()
        assert [first, second] == [f.id for f in frames]
        assert (b"\x0bgarbage\x00\xff", "no_msh", 100.0, "10.0.0.1") == (
            frames[0].raw, frames[0].reason, frames[0].received_at, frames[0].peer
        )
        assert [second] == [f.id for f in await store.quarantined("lab")]
        assert [second] == [f.id for f in await store.quarantined(None, first)]
        assert 1 == await store.prune_quarantine(100.5)
        assert [second] == [f.id for f in await store.quarantined()]


class TestSinksCodec:
    def test_round_trip(self) -> None:
        """sinks_done text decodes to the set that was encoded; empty text is no sink."""
        assert frozenset({"fhir", "file"}) == decode_sinks(encode_sinks(["file", "fhir", "file"]))
        assert frozenset() == decode_sinks("")


_rows = st.lists(
    st.tuples(
        st.sampled_from(["", "a", "b", "c"]),
        st.sampled_from([Status.RECEIVED, Status.PROCESSING, Status.RETRY]),
        st.sampled_from([None, 5.0, 15.0]),
    ),
    max_size=30,
)


class TestLeasePlanner:
    def test_skips_blocked_keys_and_stops_at_limit(self) -> None:
        """A processing head blocks its key, a due retry is chosen, the limit is respected."""
        planner = LeasePlanner(limit=2, now=10.0)
        planner.feed([
            LeaseCandidate(1, "a", Status.PROCESSING, None),
            LeaseCandidate(2, "a", Status.RECEIVED, None),
            LeaseCandidate(3, "b", Status.RETRY, 5.0),
            LeaseCandidate(4, "c", Status.RETRY, 15.0),
            LeaseCandidate(5, "c", Status.RECEIVED, None),
            LeaseCandidate(6, "b", Status.RECEIVED, None),
            LeaseCandidate(7, "d", Status.RECEIVED, None),
        ])
        assert [3, 6] == planner.chosen
        assert planner.full

    @settings(max_examples=200, deadline=None)
    @given(_rows, st.integers(min_value=0, max_value=10))
    def test_never_hands_out_a_message_behind_an_unchosen_one_of_its_key(
        self, rows: list[tuple[str, Status, float | None]], limit: int
    ) -> None:
        """Per-key order: every chosen row is due, and all earlier rows of its key are chosen too."""
        candidates = [LeaseCandidate(i + 1, key, status, at) for i, (key, status, at) in enumerate(rows)]
        planner = LeasePlanner(limit=limit, now=10.0)
        planner.feed(candidates)
        chosen = set(planner.chosen)
        assert len(chosen) <= limit and planner.chosen == sorted(chosen)
        for row in candidates:
            if row.id in chosen:
                assert planner.is_due(row)
                assert all(e.id in chosen for e in candidates if e.ordering_key == row.ordering_key and e.id < row.id)


class TestBatchedIngest:
    async def test_mixed_batch_matches_one_by_one_semantics(self, store: SQLiteStore) -> None:
        """One batch holding an original, its exact resend, a same-id collision, a stored
        message's resend and a new one gives the outcomes item-by-item ingest would."""
        import dataclasses
        import hashlib

        stored = inbound(1)
        (first,) = await store.ingest([stored])
        new = inbound(2)
        collision_raw = new.raw + b"NTE|1||other content\r"
        collision = dataclasses.replace(new, raw=collision_raw,
                                        content_hash=hashlib.sha256(collision_raw).hexdigest())
        results = await store.ingest([new, new, collision, stored, inbound(3)])
        outcomes = [r.outcome for r in results]
        assert ["stored", "duplicate", "collision", "duplicate", "stored"] == outcomes
        assert results[0].message_id == results[1].message_id
        assert first.message_id == results[3].message_id
        assert stored.ack == results[3].ack
        assert len({results[0].message_id, results[2].message_id, results[4].message_id}) == 3

    async def test_concurrent_callers_share_statements_and_get_their_own_results(self, store: SQLiteStore) -> None:
        """64 concurrent single-message ingests (merged by the writer) each get their own id."""
        import asyncio

        items = [inbound(100 + i) for i in range(64)]
        results = await asyncio.gather(*(store.ingest([i]) for i in items))
        ids = [r[0].message_id for r in results]
        assert 64 == len(set(ids))
        for item, (result,) in zip(items, results, strict=True):
            got = await store.get(result.message_id)
            assert got is not None and item.raw == got.raw and item.control_id == got.control_id


class TestCompleteMany:
    async def test_completes_a_batch_in_one_call(self, store: SQLiteStore) -> None:
        """complete_many marks every leased message done; a missing id is an error."""
        from engine.types import MessageQuery, Status

        results = await store.ingest([inbound(200 + i) for i in range(5)])
        ids = [r.message_id for r in results]
        await store.lease("adt", 10, time.time())
        await store.complete_many(ids[:4])
        statuses = {m.id: m.status for m in await store.query(MessageQuery(limit=10))}
        assert [Status.DONE] * 4 + [Status.PROCESSING] == [statuses[i] for i in ids]
        with pytest.raises(KeyError):
            await store.complete_many([ids[4], 999_999])
