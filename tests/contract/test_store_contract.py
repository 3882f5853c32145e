"""The Store contract (engine/types.py `Store`, DESIGN.md §4-5), run against every implementation."""

from __future__ import annotations

import asyncio
import hashlib
import time

from engine.obs.metrics import REGISTRY
from engine.types import Inbound, MessageQuery, QueueStats, Status, Store

CHANNEL = "adt"


def hl7(control_id: str, body: str = "DOE^JANE") -> bytes:
    """A small ADT message; the non-ASCII byte and CR terminators check exact storage."""
    return (
        f"MSH|^~\\&|EPIC|HOSP|ENG|FAC|20240101120000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r"
        f"PID|1||123^^^HOSP^MR||{body}\r"
    ).encode("latin-1") + b"\xe9\r"


def inbound(
    control_id: str,
    *,
    raw: bytes | None = None,
    channel: str = CHANNEL,
    sender: str = "EPIC|HOSP",
    key: str = "",
    ack: bytes | None = None,
    received_at: float | None = None,
) -> Inbound:
    payload = hl7(control_id) if raw is None else raw
    return Inbound(
        channel=channel,
        raw=payload,
        received_at=time.time() if received_at is None else received_at,
        sender=sender,
        control_id=control_id,
        content_hash=hashlib.sha256(payload).hexdigest(),
        message_type="ADT^A01",
        charset="latin-1",
        ack=ack if ack is not None else b"MSA|AA|" + control_id.encode(),
        ordering_key=key,
        peer="127.0.0.1",
    )


async def ingest_ids(store: Store, *items: Inbound) -> list[int]:
    return [r.message_id for r in await store.ingest(list(items))]


async def leased_ids(store: Store, limit: int = 100, now: float | None = None, channel: str = CHANNEL) -> list[int]:
    return [m.id for m in await store.lease(channel, limit, time.time() if now is None else now)]


def commits_so_far() -> float:
    return REGISTRY.get_sample_value("hl7engine_store_batch_messages_count") or 0.0


class TestIngest:
    async def test_get_returns_exact_bytes_and_header_fields(self, store: Store) -> None:
        """A stored message comes back byte for byte with the header fields intake gave it."""
        raw = hl7("C1") + b"\x00\xff trailing"
        (result,) = await store.ingest([inbound("C1", raw=raw, key="k1", received_at=1000.5)])
        message = await store.get(result.message_id)
        assert message is not None
        assert raw == message.raw
        assert ("stored", Status.RECEIVED, 0) == (result.outcome, message.status, message.attempts)
        assert (CHANNEL, "EPIC|HOSP", "C1", "ADT^A01", "latin-1", "k1", 1000.5) == (
            message.channel, message.sender, message.control_id, message.message_type,
            message.charset, message.ordering_key, message.received_at,
        )
        assert (frozenset(), False, None) == (message.sinks_done, message.collision, message.last_error)

    async def test_one_call_returns_results_in_order_with_ascending_ids(self, store: Store) -> None:
        """Several items in one call get one result each, in order, with increasing ids."""
        results = await store.ingest([inbound(f"C{i}") for i in range(5)])
        assert ["stored"] * 5 == [r.outcome for r in results]
        ids = [r.message_id for r in results]
        assert sorted(ids) == ids and len(set(ids)) == 5
        assert [b"MSA|AA|C" + str(i).encode() for i in range(5)] == [r.ack for r in results]

    async def test_empty_ingest_stores_nothing(self, store: Store) -> None:
        """An empty call returns no results and leaves the store empty."""
        assert [] == await store.ingest([])
        assert [] == await store.query(MessageQuery())

    async def test_get_of_unknown_id_is_none(self, store: Store) -> None:
        """get() of an id never stored returns None."""
        assert await store.get(999_999) is None


class TestDedup:
    async def test_exact_resend_replays_the_stored_ack(self, store: Store) -> None:
        """Same sender, control id and content: the original's id and ACK, nothing inserted."""
        (first,) = await store.ingest([inbound("C1", ack=b"ACK-ORIGINAL")])
        (again,) = await store.ingest([inbound("C1", ack=b"ACK-NEW-TIMESTAMP")])
        assert ("duplicate", first.message_id, b"ACK-ORIGINAL") == (again.outcome, again.message_id, again.ack)
        assert [first.message_id] == [m.id for m in await store.query(MessageQuery())]

    async def test_resend_in_the_same_call_is_a_duplicate(self, store: Store) -> None:
        """A resend inside the same transaction as its original is still detected."""
        first, second = await store.ingest([inbound("C1", ack=b"A1"), inbound("C1", ack=b"A2")])
        assert ("stored", "duplicate") == (first.outcome, second.outcome)
        assert (first.message_id, b"A1") == (second.message_id, second.ack)

    async def test_same_control_id_other_content_is_a_flagged_collision(self, store: Store) -> None:
        """Different content under a reused control id is stored as new and flagged."""
        (first,) = await store.ingest([inbound("C1")])
        (other,) = await store.ingest([inbound("C1", raw=hl7("C1", body="ROE^RICHARD"))])
        assert "collision" == other.outcome
        assert first.message_id != other.message_id
        original, flagged = await store.get(first.message_id), await store.get(other.message_id)
        assert original is not None and flagged is not None
        assert (False, True) == (original.collision, flagged.collision)

    async def test_other_sender_or_channel_is_not_a_duplicate(self, store: Store) -> None:
        """The dedup key includes the sender and the channel."""
        results = await store.ingest([
            inbound("C1"), inbound("C1", sender="LAB|HOSP"), inbound("C1", channel="orders"),
        ])
        assert ["stored", "stored", "stored"] == [r.outcome for r in results]
        assert 3 == len({r.message_id for r in results})


class TestGroupCommit:
    async def test_64_concurrent_ingests_are_coalesced_and_all_correct(self, store: Store) -> None:
        """64 callers at once each get their own correct result from fewer than 64 commits."""
        before = commits_so_far()
        distinct = [inbound(f"G{i}") for i in range(56)]
        resends = [inbound("DUP", ack=f"ACK{i}".encode()) for i in range(8)]
        results = await asyncio.gather(*(store.ingest([item]) for item in distinct + resends))
        commits = commits_so_far() - before
        # Coalesced: 64 callers, fewer commits (at least one happened).
        assert commits in range(1, 64), f"{commits} commits for 64 concurrent ingests"
        stored = [r for (r,) in results[:56]]
        assert ["stored"] * 56 == [r.outcome for r in stored]
        assert 56 == len({r.message_id for r in stored})
        for item, result in zip(distinct, stored, strict=True):
            message = await store.get(result.message_id)
            assert message is not None and item.raw == message.raw
        dup_results = [r for (r,) in results[56:]]
        # The first of 8 identical resends is stored; the other 7 are its duplicates.
        assert ["duplicate"] * 7 + ["stored"] == sorted(r.outcome for r in dup_results)
        original = next(r for r in dup_results if r.outcome == "stored")
        assert {original.message_id} == {r.message_id for r in dup_results}
        assert {original.ack} == {r.ack for r in dup_results}


class TestLease:
    async def test_oldest_first_up_to_limit_as_processing(self, store: Store) -> None:
        """lease() hands out the oldest messages first, no more than asked, one attempt each."""
        ids = await ingest_ids(store, *(inbound(f"C{i}", key=f"k{i}") for i in range(5)))
        leased = await store.lease(CHANNEL, 3, time.time())
        assert ids[:3] == [m.id for m in leased]
        assert [(Status.PROCESSING, 1)] * 3 == [(m.status, m.attempts) for m in leased]
        assert hl7("C0") == leased[0].raw

    async def test_a_leased_message_is_not_leased_again(self, store: Store) -> None:
        """A message in processing belongs to its worker; the next lease skips it."""
        ids = await ingest_ids(store, *(inbound(f"C{i}", key=f"k{i}") for i in range(3)))
        assert ids[:2] == await leased_ids(store, 2)
        assert ids[2:] == await leased_ids(store, 10)
        assert [] == await leased_ids(store, 10)

    async def test_lease_only_sees_its_channel(self, store: Store) -> None:
        """Messages of another channel are never handed out."""
        await store.ingest([inbound("C1", channel="orders")])
        assert [] == await leased_ids(store)
        (order,) = await ingest_ids(store, inbound("C2", channel="orders"))
        leased_orders = await leased_ids(store, channel="orders")
        assert 2 == len(leased_orders) and order in leased_orders

    async def test_zero_limit_leases_nothing(self, store: Store) -> None:
        """limit 0 returns nothing and changes nothing."""
        (mid,) = await ingest_ids(store, inbound("C1"))
        assert [] == await leased_ids(store, 0)
        message = await store.get(mid)
        assert message is not None and Status.RECEIVED == message.status


class TestOrdering:
    async def test_channel_wide_key_is_fifo_behind_a_retrying_head(self, store: Store) -> None:
        """With the default key "", a head waiting to retry holds back the whole channel."""
        head, *rest = await ingest_ids(store, *(inbound(f"C{i}") for i in range(3)))
        now = time.time()
        assert [head] == await leased_ids(store, 1, now)
        await store.schedule_retry(head, "sink timeout", now + 60)
        assert [] == await leased_ids(store, 10, now)
        assert [head, *rest] == await leased_ids(store, 10, now + 61)

    async def test_a_retrying_key_does_not_block_other_keys(self, store: Store) -> None:
        """Only the stuck key waits; later messages of other keys flow on."""
        a1, b1, a2, b2 = await ingest_ids(
            store, inbound("A1", key="a"), inbound("B1", key="b"), inbound("A2", key="a"), inbound("B2", key="b")
        )
        now = time.time()
        assert [a1] == await leased_ids(store, 1, now)
        await store.schedule_retry(a1, "sink timeout", now + 60)
        assert [b1, b2] == await leased_ids(store, 10, now)
        assert [a1, a2] == await leased_ids(store, 10, now + 61)

    async def test_a_processing_message_blocks_later_ones_of_its_key(self, store: Store) -> None:
        """While a worker holds a key's message, that key's successors wait; others don't."""
        a1, a2, b1 = await ingest_ids(store, inbound("A1", key="a"), inbound("A2", key="a"), inbound("B1", key="b"))
        assert [a1] == await leased_ids(store, 1)
        assert [b1] == await leased_ids(store, 10)
        await store.complete(a1)
        assert [a2] == await leased_ids(store, 10)

    async def test_one_lease_may_carry_several_messages_of_a_key_in_order(self, store: Store) -> None:
        """Messages of one key can share a lease, in order (the runner processes them in turn)."""
        ids = await ingest_ids(store, *(inbound(f"A{i}", key="a") for i in range(4)))
        assert ids == await leased_ids(store, 10)

    async def test_dead_letter_unblocks_its_key(self, store: Store) -> None:
        """A dead-lettered head no longer holds back its key (one bad message never blocks)."""
        head, nxt = await ingest_ids(store, inbound("C1"), inbound("C2"))
        await leased_ids(store, 1)
        await store.dead_letter(head, "mapping failed: PID-3")
        assert [nxt] == await leased_ids(store, 10)

    async def test_a_long_blocked_key_does_not_starve_a_later_key(self, store: Store) -> None:
        """A blocked key with a backlog longer than one scan window still lets others through."""
        items = [inbound(f"A{i}", key="a") for i in range(300)] + [inbound("B1", key="b")]
        ids = await ingest_ids(store, *items)
        now = time.time()
        assert [ids[0]] == await leased_ids(store, 1, now)
        await store.schedule_retry(ids[0], "sink timeout", now + 60)
        assert [ids[-1]] == await leased_ids(store, 1, now)


class TestUnlease:
    async def test_unlease_gives_back_without_counting_an_attempt(self, store: Store) -> None:
        """Unleased messages are received again with their attempt count restored."""
        ids = await ingest_ids(store, inbound("C1"), inbound("C2"))
        await leased_ids(store, 10)
        await store.unlease(ids)
        for mid in ids:
            message = await store.get(mid)
            assert message is not None and (Status.RECEIVED, 0) == (message.status, message.attempts)
        again = await store.lease(CHANNEL, 10, time.time())
        assert [(mid, 1) for mid in ids] == [(m.id, m.attempts) for m in again]

    async def test_unlease_ignores_messages_not_in_processing(self, store: Store) -> None:
        """Only processing messages are given back; finished ones stay finished."""
        (mid,) = await ingest_ids(store, inbound("C1"))
        await leased_ids(store)
        await store.complete(mid)
        await store.unlease([mid])
        message = await store.get(mid)
        assert message is not None and Status.DONE == message.status


class TestRetry:
    async def test_schedule_retry_records_error_and_due_time(self, store: Store) -> None:
        """A retry keeps its reason and is leased again only once due, counting a new attempt."""
        (mid,) = await ingest_ids(store, inbound("C1"))
        now = time.time()
        await leased_ids(store, 1, now)
        await store.schedule_retry(mid, "fhir 503", now + 30)
        message = await store.get(mid)
        assert message is not None
        assert (Status.RETRY, "fhir 503", now + 30) == (message.status, message.last_error, message.next_attempt_at)
        assert [] == await leased_ids(store, 1, now + 29)
        (again,) = await store.lease(CHANNEL, 1, now + 30)
        assert (mid, 2) == (again.id, again.attempts)

    async def test_next_due_tracks_received_and_retry_rows(self, store: Store) -> None:
        """next_due: None when idle, now when something is received, else the earliest retry."""
        assert await store.next_due(CHANNEL) is None
        first, second = await ingest_ids(store, inbound("C1", key="a"), inbound("C2", key="b"))
        before = time.time()
        due = await store.next_due(CHANNEL)
        assert due is not None and due <= time.time() + 1
        await leased_ids(store, 10)
        assert await store.next_due(CHANNEL) is None
        await store.schedule_retry(first, "timeout", before + 50)
        await store.schedule_retry(second, "timeout", before + 20)
        assert before + 20 == await store.next_due(CHANNEL)


class TestDeadLetter:
    async def test_dead_letter_then_requeue_replays(self, store: Store) -> None:
        """A dead message keeps its reason, is not leased, and a requeue makes it due again."""
        (mid,) = await ingest_ids(store, inbound("C1"))
        await leased_ids(store)
        await store.dead_letter(mid, "mapping failed: PID-3")
        dead = await store.get(mid)
        assert dead is not None and (Status.DEAD, "mapping failed: PID-3") == (dead.status, dead.last_error)
        assert [] == await leased_ids(store)
        requeued = await store.requeue([mid])
        assert requeued == len([mid]), "requeue reports the one dead message it moved"
        replay = await store.get(mid)
        assert replay is not None and (Status.RECEIVED, 0) == (replay.status, replay.attempts)
        assert [mid] == await leased_ids(store)

    async def test_release_moves_only_dead_messages(self, store: Store) -> None:
        """release() turns dead into released and leaves every other status alone."""
        dead, live = await ingest_ids(store, inbound("C1", key="a"), inbound("C2", key="b"))
        await leased_ids(store, 1)
        await store.dead_letter(dead, "permanent")
        released_count = await store.release([dead, live])
        assert released_count == len([dead]), "only the dead one of the two is released"
        released, received = await store.get(dead), await store.get(live)
        assert released is not None and received is not None
        assert (Status.RELEASED, Status.RECEIVED) == (released.status, received.status)
        assert 1 == await store.requeue([dead])

    async def test_requeue_ignores_unfinished_messages(self, store: Store) -> None:
        """Replaying something still in the queue is a no-op."""
        ids = await ingest_ids(store, inbound("C1", key="a"), inbound("C2", key="b"))
        await leased_ids(store, 1)
        assert 0 == await store.requeue(ids)
        assert 0 == await store.release(ids)

    async def test_requeue_of_dead_keeps_sinks_done_of_done_clears_them(self, store: Store) -> None:
        """Replaying a dead message skips sinks that had it; replaying a done one redelivers to all."""
        dead, done = await ingest_ids(store, inbound("C1", key="a"), inbound("C2", key="b"))
        await leased_ids(store)
        for mid in (dead, done):
            await store.mark_sink_done(mid, "file")
        await store.dead_letter(dead, "fhir 400")
        await store.complete(done)
        assert 2 == await store.requeue([dead, done])
        replay_dead, replay_done = await store.get(dead), await store.get(done)
        assert replay_dead is not None and replay_done is not None
        assert (frozenset({"file"}), frozenset()) == (replay_dead.sinks_done, replay_done.sinks_done)


class TestSinksDone:
    async def test_sinks_done_accumulates_and_survives_a_retry(self, store: Store) -> None:
        """Each successful sink is remembered once, and a later lease still shows it."""
        (mid,) = await ingest_ids(store, inbound("C1"))
        now = time.time()
        await leased_ids(store, 1, now)
        await store.mark_sink_done(mid, "file")
        await store.mark_sink_done(mid, "fhir")
        await store.mark_sink_done(mid, "file")
        await store.schedule_retry(mid, "kafka timeout", now)
        (again,) = await store.lease(CHANNEL, 1, now)
        assert frozenset({"file", "fhir"}) == again.sinks_done


class TestComplete:
    async def test_complete_done_and_filtered(self, store: Store) -> None:
        """complete() records the final outcome it is given."""
        a, b = await ingest_ids(store, inbound("C1", key="a"), inbound("C2", key="b"))
        await leased_ids(store)
        await store.complete(a)
        await store.complete(b, Status.FILTERED)
        done, filtered = await store.get(a), await store.get(b)
        assert done is not None and filtered is not None
        assert (Status.DONE, Status.FILTERED) == (done.status, filtered.status)


class TestRecover:
    async def test_recover_returns_processing_messages_to_received(self, store: Store) -> None:
        """After a crash every in-flight message is due again, and the count says how many."""
        ids = await ingest_ids(store, *(inbound(f"C{i}", key=f"k{i}") for i in range(4)))
        await leased_ids(store, 3)
        assert 3 == await store.recover()
        assert ids == await leased_ids(store)
        await store.complete(ids[0])
        assert 3 == await store.recover()
        assert 0 == await store.recover()
        done = await store.get(ids[0])
        assert done is not None and Status.DONE == done.status


class TestPrune:
    async def test_prune_removes_only_finished_messages(self, store: Store) -> None:
        """done, filtered and released go; received, processing, retry and dead stay."""
        ids = await ingest_ids(store, *(inbound(f"C{i}", key=f"k{i}") for i in range(7)))
        received, processing, retry, dead, done, filtered, released = ids
        now = time.time()
        await store.lease(CHANNEL, 6, now)
        await store.unlease([received])
        await store.schedule_retry(retry, "timeout", now + 3600)
        await store.dead_letter(dead, "permanent")
        await store.complete(done)
        await store.complete(filtered, Status.FILTERED)
        await store.dead_letter(released, "permanent")
        await store.release([released])
        assert 0 == await store.prune(now - 3600)
        assert 3 == await store.prune(time.time() + 60)
        remaining = [m.id for m in await store.query(MessageQuery())]
        assert [received, processing, retry, dead] == remaining


class TestStats:
    async def test_stats_count_pending_and_dead(self, store: Store) -> None:
        """pending counts received, processing and retry; oldest is the first unfinished one."""
        assert QueueStats(0, None, 0) == await store.stats(CHANNEL)
        ids = await ingest_ids(store, *(inbound(f"C{i}", key=f"k{i}", received_at=100.0 + i) for i in range(5)))
        await store.lease(CHANNEL, 3, time.time())
        await store.complete(ids[0])
        await store.dead_letter(ids[1], "permanent")
        await store.schedule_retry(ids[2], "timeout", time.time() + 60)
        assert QueueStats(pending=3, oldest_pending_at=102.0, dead=1) == await store.stats(CHANNEL)
        assert QueueStats(0, None, 0) == await store.stats("other")


class TestQuery:
    async def test_keyset_pagination_covers_everything_once(self, store: Store) -> None:
        """Following after_id page by page yields every message once, ascending."""
        ids = await ingest_ids(store, *(inbound(f"C{i}") for i in range(25)))
        seen: list[int] = []
        after = 0
        for _ in range(10):
            page = await store.query(MessageQuery(after_id=after, limit=10))
            if not page:
                break
            seen += [m.id for m in page]
            after = page[-1].id
        assert ids == seen

    async def test_filters_combine(self, store: Store) -> None:
        """channel, statuses, time range and control id each narrow the result."""
        a, b, c, d = await ingest_ids(
            store,
            inbound("X1", key="a", received_at=100.0),
            inbound("X2", key="b", received_at=200.0),
            inbound("X3", key="c", received_at=300.0),
            inbound("X1", channel="orders", received_at=150.0),
        )
        await store.lease(CHANNEL, 1, time.time())
        await store.dead_letter(a, "permanent")

        async def ids(**kw: object) -> list[int]:
            return [m.id for m in await store.query(MessageQuery(**kw))]  # type: ignore[arg-type]

        assert [a, b, c] == await ids(channel=CHANNEL)
        assert [a] == await ids(channel=CHANNEL, statuses=frozenset({Status.DEAD}))
        assert [a, b, c, d] == await ids(statuses=frozenset({Status.DEAD, Status.RECEIVED}))
        assert [b, d] == await ids(since=150.0, until=300.0)
        assert [a, d] == await ids(control_id="X1")
        assert [d] == await ids(control_id="X1", channel="orders")
        assert [c] == await ids(channel=CHANNEL, statuses=frozenset({Status.RECEIVED}), after_id=b)
        assert [] == await ids(statuses=frozenset())


class TestConcurrentLease:
    async def test_concurrent_leasers_never_share_a_message(self, store: Store) -> None:
        """Four workers leasing at once together get every message exactly once."""
        ids = await ingest_ids(store, *(inbound(f"C{i}", key=f"k{i % 50}") for i in range(200)))
        got: list[list[int]] = [[] for _ in range(4)]

        async def worker(mine: list[int]) -> None:
            for _ in range(200):  # bounded: 200 messages need far fewer rounds
                batch = await store.lease(CHANNEL, 7, time.time())
                if not batch:
                    return
                for message in batch:
                    mine.append(message.id)
                    await store.complete(message.id)

        await asyncio.wait_for(asyncio.gather(*(worker(m) for m in got)), timeout=60)
        everything = [mid for mine in got for mid in mine]
        assert len(everything) == len(set(everything))
        assert sorted(ids) == sorted(everything)
