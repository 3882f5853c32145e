"""The store for several engine instances: PostgreSQL through asyncpg (DESIGN.md §1-2, issue #4).

N engines behind a TCP load balancer share one database. The same Store contract as
SQLite holds (tests/contract/), plus what sharing needs:

Durability (DESIGN.md §5.1): `ingest` resolves after COMMIT returns. PostgreSQL makes a
commit durable (WAL flushed) with `synchronous_commit` on, its default; this store never
turns it off, and when `open` finds it `off` (server, role or url setting) it reconnects
with `synchronous_commit=on` as a startup setting of every pooled connection.

Group commit (DESIGN.md §7): one writer task per instance takes every write queued since
its last commit (intake's ingests and the runner's complete / retry / dead-letter /
unlease / mark-sink-done calls), runs them as ONE transaction on one pooled connection,
with one set-based statement per run of same-kind jobs (unnest arrays), then resolves
every caller. A job that fails on its own (unknown id) fails alone; a batch the server
refuses for its data (a character PostgreSQL cannot store, an index row too large) is
retried job by job so only the offending job fails.

Dedup across instances (DESIGN.md §4): a unique index on (channel, sender, control_id,
content_hash) and `INSERT ... ON CONFLICT DO NOTHING RETURNING`; a row that lost the
race to another instance is a duplicate, and its stored ACK is read back. The collision
flag is set when another row with the same (channel, sender, control_id) was visible at
insert time; two instances inserting colliding messages in the same instant may both
miss the flag (it is informational; both messages are kept).

Leases across instances: a lease sets `leased_by` (this instance's id) and
`leased_until` (the database clock plus `lease_timeout_s`, so hosts' clocks never
matter). While the instance lives, a heartbeat task pushes `leased_until` forward for
its leases, so a slow batch is never taken over; once an instance dies its leases expire
and any instance leases those messages again. `recover()` on start frees only this
instance's leases and expired ones, never a live instance's.

Per-key order across instances, and its cost: a lease is two statements, no explicit
transaction. (1) The scan: unfinished rows of the channel in id order (index only, no
payload), windows of them through base.LeasePlanner; a `processing` row whose lease
expired counts as due. (2) The claim, one statement: lock the chosen rows
`FOR UPDATE SKIP LOCKED`, re-judge them as they are now, keep a row only while every
chosen row of its key up to it is locked and still due (a row another transaction holds,
or that stopped being due, blocks the rest of its key), and set the kept rows to
processing. No lock is held between the two, nor between leases and ingests: two
instances leasing at once may each get fewer rows than asked, never a message whose
key's earlier message another instance holds. Cost: two round trips per lease, no
waiting on other instances; `next_due` adds a bounded check so a key held elsewhere does
not make a runner spin.

What "earlier" means across instances: ids come from one sequence, but two ingest
transactions on two instances may commit out of id order. Only messages that were in
flight at the same time (neither ACKed before the other arrived) can be affected, and
they have no order of their own: they are delivered in commit order. A message sent
after another's ACK always gets a higher id, allocated after that ACK's commit, so
causal order (how MLLP senders work: the next message after the ACK) is always kept.
(An earlier design took a per-channel advisory lock, shared by ingests and exclusive
for lease scans, to forbid even that; it cut ACK throughput about fivefold and bought no
order a sender can observe.)

Decided here, beyond the protocol (and as in SQLite): `attempts` counts processing
attempts (`lease` +1, `unlease` -1, `recover` and lease expiry keep it, `requeue` resets
it); `next_due` ignores leases held by other instances (the runner polls every second
anyway, which is when expired leases are picked up); error texts name the operation and
PostgreSQL's SQLSTATE, never the server's message (it can quote values).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import structlog

from engine.obs.metrics import STORE_BATCH_SIZE, STORE_COMMIT_LATENCY, STORE_ERRORS
from engine.store.base import (
    ID_CHUNK,
    REQUEUE_KEEPS_SINKS_DONE,
    REQUEUEABLE,
    LeaseCandidate,
    LeasePlanner,
    check_completion,
    chunked,
    clamp_limit,
)
from engine.types import (
    Inbound,
    IngestResult,
    MessageQuery,
    QuarantinedFrame,
    QueueStats,
    Status,
    Store,
    StoredMessage,
    StoreUnavailableError,
)

if TYPE_CHECKING:
    from typing import TypeAlias

    from asyncpg.pool import PoolConnectionProxy  # type: ignore[import-untyped, unused-ignore]

    # Explicit aliases: without asyncpg-stubs these are Any, and mypy still accepts them.
    Connection: TypeAlias = PoolConnectionProxy[asyncpg.Record]
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    Record: TypeAlias = asyncpg.Record

log = structlog.get_logger("hl7engine.store.postgres")

T = TypeVar("T")

#: First key of every advisory lock this store takes (ASCII "HL7"), so its locks never
#: meet another application's in pg_locks; the second key names what is locked.
LOCK_CLASS = 0x484C37

#: Rows per DELETE while pruning: each chunk is its own transaction.
PRUNE_CHUNK = 1000
#: A lease scans windows of `limit * LEASE_WINDOW_FACTOR` unfinished rows (index only) ...
LEASE_WINDOW_FACTOR = 8
LEASE_MIN_WINDOW = 64
#: ... and at most this many windows: bounded work per lease whatever the backlog.
LEASE_MAX_WINDOWS = 8
#: Received rows `next_due` examines for one that no other instance's lease blocks.
NEXT_DUE_SCAN = 256
#: Blocked keys passed back to the scan to skip (beyond it the scan just reads them).
MAX_EXCLUDED_KEYS = 2000

_SCHEMA_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_INSTANCE_ID_MAX = 200

# Status sets as SQL literals: partial indexes are used only when a query repeats their
# WHERE clause literally. f-strings below interpolate only these constants; every value
# is a bound parameter (hence the S608 marks).
_UNFINISHED_SQL = "status IN ('received', 'processing', 'retry')"
_FINISHED_SQL = "status IN ('done', 'filtered', 'released')"
_REQUEUEABLE_SQL = "status IN (" + ", ".join(f"'{s.value}'" for s in sorted(REQUEUEABLE)) + ")"
_KEEP_SINKS_SQL = "status IN (" + ", ".join(f"'{s.value}'" for s in sorted(REQUEUE_KEEPS_SINKS_DONE)) + ")"
#: The database clock as epoch seconds (leases never depend on the engines' clocks).
_DB_NOW = "extract(epoch FROM clock_timestamp())::float8"
#: Clearing the lease columns: every transition out of `processing` does it.
_NO_LEASE = "leased_by = NULL, leased_until = NULL"


# ---------------------------------------------------------------- schema and migrations


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step, recorded in `hl7engine_schema_version` in the same transaction."""

    version: int
    summary: str
    statements: tuple[str, ...]


_SCHEMA_V1 = (
    f"""
    CREATE TABLE messages (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused, even after prune
        channel text NOT NULL,
        received_at double precision NOT NULL,
        raw bytea NOT NULL,                        -- exact bytes as received (DESIGN.md §5.6)
        charset text NOT NULL,
        sender text NOT NULL,
        control_id text NOT NULL,
        content_hash text NOT NULL,
        message_type text NOT NULL,
        ordering_key text NOT NULL DEFAULT '',
        channel_version text NOT NULL DEFAULT '',
        peer text NOT NULL DEFAULT '',
        ack bytea NOT NULL,
        status text NOT NULL CHECK (status IN ({", ".join(f"'{s.value}'" for s in Status)})),
        attempts integer NOT NULL DEFAULT 0,
        last_error text,
        next_attempt_at double precision,
        sinks_done text[] NOT NULL DEFAULT '{{}}',
        collision boolean NOT NULL DEFAULT false,
        updated_at double precision NOT NULL,
        leased_by text,                            -- instance id while processing
        leased_until double precision              -- database clock, epoch seconds
    )
    """,
    # Exact resend detection across instances (DESIGN.md §4); its prefix finds collisions.
    "CREATE UNIQUE INDEX ux_messages_dedup ON messages (channel, sender, control_id, content_hash)",
    # Lease scan in id order over unfinished rows only, index-only; finished rows (the
    # bulk) are not in it.
    "CREATE INDEX ix_messages_unfinished ON messages (channel, id)"
    f" INCLUDE (ordering_key, status, next_attempt_at, leased_until) WHERE {_UNFINISHED_SQL}",
    "CREATE INDEX ix_messages_retry_due ON messages (channel, next_attempt_at) WHERE status = 'retry'",
    "CREATE INDEX ix_messages_received ON messages (channel, id) WHERE status = 'received'",
    # next_due: is an earlier message of this key in flight (processing or retry)?
    "CREATE INDEX ix_messages_in_flight ON messages (channel, ordering_key, id)"
    " INCLUDE (leased_until) WHERE status IN ('processing', 'retry')",
    # Heartbeat and recover: this instance's leases.
    "CREATE INDEX ix_messages_leased_by ON messages (leased_by) WHERE status = 'processing'",
    "CREATE INDEX ix_messages_status ON messages (status, channel, id)",
    f"CREATE INDEX ix_messages_finished ON messages (updated_at) WHERE {_FINISHED_SQL}",
    "CREATE INDEX ix_messages_received_at ON messages (received_at)",
    "CREATE INDEX ix_messages_control_id ON messages (control_id, id)",
    """
    CREATE TABLE quarantine (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        channel text NOT NULL,
        raw bytea NOT NULL,
        reason text NOT NULL,
        received_at double precision NOT NULL,
        peer text NOT NULL DEFAULT ''
    )
    """,
    "CREATE INDEX ix_quarantine_channel ON quarantine (channel, id)",
    "CREATE INDEX ix_quarantine_received_at ON quarantine (received_at)",
)

#: Append new steps here; never edit a released one.
MIGRATIONS: tuple[Migration, ...] = (Migration(1, "messages and quarantine tables", _SCHEMA_V1),)


async def migrate(
    conn: Connection, migrations: Sequence[Migration] = MIGRATIONS, *, schema: str | None = None
) -> int:
    """Bring the schema to the newest version; returns it. Refuses a newer database.

    Two engines opening one database at once must not both create tables: the whole
    check-and-apply (and creating `schema` when given; the connection's search_path must
    name it) runs under a session advisory lock, so the second waits and then finds the
    schema current.
    """
    latest = migrations[-1].version if migrations else 0
    lock = _lock_key(f"migrate:{schema or ''}")
    await conn.execute("SELECT pg_advisory_lock($1, $2)", LOCK_CLASS, lock)
    try:
        if schema is not None:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS hl7engine_schema_version ("
            " version integer PRIMARY KEY, summary text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM hl7engine_schema_version"))
        if current > latest:
            raise StoreUnavailableError(
                f"store schema version {current} is newer than this engine supports ({latest})"
            )
        for step in migrations:
            if step.version <= current:
                continue
            async with conn.transaction():
                for sql in step.statements:
                    await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO hl7engine_schema_version (version, summary) VALUES ($1, $2)",
                    step.version, step.summary,
                )
            log.info("store_migrated", version=step.version)
            current = step.version
        return current
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS, lock)


def _lock_key(name: str) -> int:
    """A stable signed 32-bit key for an advisory lock on `name` (a channel, a schema).

    Two names sharing a key only share a lock: more waiting, never less safety.
    """
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=4).digest(),
                          "big", signed=True)


# ---------------------------------------------------------------- errors

#: SQLSTATE classes that blame the data of a job, not the database: retry job by job.
#: 22 data exception (e.g. a NUL character in text), 23 integrity, 54 program limit
#: (an index row too large).
_DATA_CLASSES = ("22", "23", "54")


def _sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", "") or "")


def _is_data_error(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        return _sqlstate(exc)[:2] in _DATA_CLASSES
    # Client-side encoding of an argument (e.g. a lone surrogate in a str).
    return isinstance(exc, asyncpg.DataError | UnicodeError)


def _is_database_error(exc: BaseException) -> bool:
    """Errors from reaching or using the database (as opposed to bugs in this module).

    Every asyncpg exception counts: besides PostgresError and InterfaceError it raises
    others (InternalClientError, ProtocolError ...) when a connection dies mid-call.
    """
    return isinstance(exc, OSError | TimeoutError | UnicodeError) or type(exc).__module__.startswith("asyncpg")


def _unavailable(operation: str, exc: BaseException) -> StoreUnavailableError:
    # SQLSTATE or the exception type; never the server's message, which can quote values.
    name = _sqlstate(exc) or type(exc).__name__
    STORE_ERRORS.labels(operation).inc()
    error = StoreUnavailableError(f"store unavailable during {operation}: {name}")
    error.__cause__ = exc
    return error


# ---------------------------------------------------------------- row mapping

_MESSAGE_COLUMNS = (
    "id, channel, raw, received_at, status, attempts, sender, control_id, message_type, charset,"
    " ordering_key, last_error, next_attempt_at, sinks_done, collision, channel_version, updated_at"
)


def _to_message(row: Record) -> StoredMessage:
    return StoredMessage(
        id=row["id"],
        channel=row["channel"],
        raw=bytes(row["raw"]),
        received_at=row["received_at"],
        status=Status(row["status"]),
        attempts=row["attempts"],
        sender=row["sender"],
        control_id=row["control_id"],
        message_type=row["message_type"],
        charset=row["charset"],
        ordering_key=row["ordering_key"],
        last_error=row["last_error"],
        next_attempt_at=row["next_attempt_at"],
        sinks_done=frozenset(row["sinks_done"]),
        collision=bool(row["collision"]),
        channel_version=row["channel_version"],
        updated_at=row["updated_at"],
    )


# ---------------------------------------------------------------- group commit


@dataclass(slots=True, eq=False)
class _Job:
    kind: str  # a fixed word: handler, metric label and error text
    args: tuple[Any, ...]
    weight: int  # messages it carries (ingest) or 1
    future: asyncio.Future[Any]


#: A handler runs a run of same-kind jobs inside the batch transaction and returns one
#: result per job: a value, or an exception for that job alone.
_Handler = Callable[["Connection", list[_Job], float], Awaitable[list[Any]]]


@dataclass(slots=True)
class _GroupCommitter:
    """Coalesces the writes queued on this event loop into one transaction per batch."""

    pool_of: Callable[[], Pool]
    handlers: dict[str, _Handler]
    clock: Callable[[], float]
    max_batch: int
    max_pending: int
    acquire_timeout_s: float
    _queue: deque[_Job] = field(default_factory=deque)
    _pending_weight: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _accepting: bool = False

    def start(self) -> None:
        self._accepting = True
        self._task = asyncio.create_task(self._run(), name="hl7engine-store-writer")

    def submit(self, kind: str, args: tuple[Any, ...], weight: int = 1) -> asyncio.Future[Any]:
        if not self._accepting:
            raise StoreUnavailableError("store is not open")
        if self._pending_weight + weight > self.max_pending and self._queue:
            STORE_ERRORS.labels(kind).inc()
            raise StoreUnavailableError(f"store overloaded during {kind}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(kind, args, weight, future))
        self._pending_weight += weight
        self._wake.set()
        return future

    async def stop(self) -> None:
        """Commit everything already queued, then end the writer task."""
        self._accepting = False
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._take()
                try:
                    await self._commit(batch)
                except Exception as exc:  # a bug here must not kill the writer
                    for job in batch:
                        _fail(job, exc)
            if not self._accepting:
                return

    def _take(self) -> list[_Job]:
        batch = [self._queue.popleft()]
        weight = batch[0].weight
        while self._queue and weight + self._queue[0].weight <= self.max_batch:
            job = self._queue.popleft()
            batch.append(job)
            weight += job.weight
        self._pending_weight -= weight
        return batch

    async def _commit(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            async with self.pool_of().acquire(timeout=self.acquire_timeout_s) as conn, conn.transaction():
                results = await self._apply(conn, batch)
        except Exception as exc:
            if len(batch) > 1 and _is_data_error(exc):
                # One job's data was refused; nothing of the batch committed. Retry each
                # alone so only the offending job fails (the SQLite store's savepoints).
                for job in batch:
                    await self._commit([job])
                return
            for job in batch:
                _fail(job, _unavailable(job.kind, exc) if _is_database_error(exc) else exc)
            return
        STORE_COMMIT_LATENCY.observe(time.perf_counter() - started)
        messages = sum(job.weight for job in batch if job.kind == "ingest")
        if messages:
            STORE_BATCH_SIZE.observe(messages)
        for job, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                _fail(job, result)
            elif not job.future.done():
                job.future.set_result(result)

    async def _apply(self, conn: Connection, batch: list[_Job]) -> list[Any]:
        """Runs of consecutive same-kind jobs, each as one set-based statement, in order."""
        now = self.clock()
        results: list[Any] = []
        start = 0
        while start < len(batch):
            end = start + 1
            while end < len(batch) and batch[end].kind == batch[start].kind:
                end += 1
            run = batch[start:end]
            results.extend(await self.handlers[run[0].kind](conn, run, now))
            start = end
        return results


def _fail(job: _Job, exc: BaseException) -> None:
    if not job.future.done():  # the caller was cancelled; the outcome is still what happened
        job.future.set_exception(exc)


# ---------------------------------------------------------------- write handlers


async def _ingest(conn: Connection, jobs: list[_Job], now: float) -> list[Any]:
    items: list[Inbound] = [item for job in jobs for item in job.args[0]]
    results = await _ingest_items(conn, items, now)
    out: list[Any] = []
    position = 0
    for job in jobs:
        count = len(job.args[0])
        out.append(results[position : position + count])
        position += count
    return out


async def _ingest_items(conn: Connection, items: Sequence[Inbound], now: float) -> list[IngestResult]:
    """Dedup and insert in item order, so a resend later in the same batch sees its original."""
    known = await conn.fetch(
        "SELECT k.ord, d.id, d.ack, (k.control_id <> '' AND EXISTS ("
        "   SELECT 1 FROM messages o WHERE o.channel = k.channel AND o.sender = k.sender"
        "   AND o.control_id = k.control_id AND o.content_hash <> k.content_hash)) AS other"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
        "   WITH ORDINALITY AS k(channel, sender, control_id, content_hash, ord)"
        " LEFT JOIN messages d ON d.channel = k.channel AND d.sender = k.sender"
        "   AND d.control_id = k.control_id AND d.content_hash = k.content_hash",
        [i.channel for i in items], [i.sender for i in items],
        [i.control_id for i in items], [i.content_hash for i in items],
    )
    existing: dict[int, tuple[int | None, bytes | None, bool]] = {
        int(r["ord"]) - 1: (r["id"], None if r["ack"] is None else bytes(r["ack"]), bool(r["other"]))
        for r in known
    }
    results: list[IngestResult | None] = [None] * len(items)
    first_in_batch: dict[tuple[str, str, str, str], int] = {}  # dedup key -> index of its insert
    hashes_in_batch: dict[tuple[str, str, str], set[str]] = {}
    to_insert: list[tuple[int, bool]] = []  # (index, collision)
    duplicates_in_batch: list[tuple[int, int]] = []  # (index, index of original)
    for index, item in enumerate(items):
        stored_id, stored_ack, other = existing.get(index, (None, None, False))
        if stored_id is not None and stored_ack is not None:
            results[index] = IngestResult(stored_id, "duplicate", stored_ack)
            continue
        key = (item.channel, item.sender, item.control_id, item.content_hash)
        if key in first_in_batch:
            duplicates_in_batch.append((index, first_in_batch[key]))
            continue
        prefix = key[:3]
        seen = hashes_in_batch.setdefault(prefix, set())
        collision = item.control_id != "" and (other or bool(seen - {item.content_hash}))
        seen.add(item.content_hash)
        first_in_batch[key] = index
        to_insert.append((index, collision))
    if to_insert:
        rows = [items[i] for i, _ in to_insert]
        inserted = await conn.fetch(
            "INSERT INTO messages (channel, received_at, raw, charset, sender, control_id, content_hash,"
            " message_type, ordering_key, channel_version, peer, ack, status, attempts, collision, updated_at)"
            " SELECT channel, received_at, raw, charset, sender, control_id, content_hash, message_type,"
            "  ordering_key, channel_version, peer, ack, 'received', 0, collision, $14"
            " FROM unnest($1::text[], $2::float8[], $3::bytea[], $4::text[], $5::text[], $6::text[],"
            "  $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bytea[], $13::bool[])"
            "  WITH ORDINALITY AS u(channel, received_at, raw, charset, sender, control_id, content_hash,"
            "  message_type, ordering_key, channel_version, peer, ack, collision, ord)"
            " ORDER BY ord"  # ids follow item order
            " ON CONFLICT (channel, sender, control_id, content_hash) DO NOTHING"
            " RETURNING id, channel, sender, control_id, content_hash",
            [r.channel for r in rows], [r.received_at for r in rows], [r.raw for r in rows],
            [r.charset for r in rows], [r.sender for r in rows], [r.control_id for r in rows],
            [r.content_hash for r in rows], [r.message_type for r in rows], [r.ordering_key for r in rows],
            [r.channel_version for r in rows], [r.peer for r in rows], [r.ack for r in rows],
            [c for _, c in to_insert], now,
        )
        new_ids = {
            (r["channel"], r["sender"], r["control_id"], r["content_hash"]): int(r["id"]) for r in inserted
        }
        lost: list[int] = []
        for index, collision in to_insert:
            item = items[index]
            new_id = new_ids.get((item.channel, item.sender, item.control_id, item.content_hash))
            if new_id is None:
                lost.append(index)  # another instance committed the same message meanwhile
            else:
                results[index] = IngestResult(new_id, "collision" if collision else "stored", item.ack)
        if lost:
            await _read_back_duplicates(conn, items, lost, results)
    for index, original in duplicates_in_batch:
        first = results[original]
        assert first is not None
        results[index] = IngestResult(first.message_id, "duplicate", first.ack)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


async def _read_back_duplicates(
    conn: Connection, items: Sequence[Inbound], lost: list[int], results: list[IngestResult | None]
) -> None:
    """Rows that lost the insert race to another instance: replay the winner's ACK."""
    rows = await conn.fetch(
        "SELECT k.ord, d.id, d.ack FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
        "   WITH ORDINALITY AS k(channel, sender, control_id, content_hash, ord)"
        " JOIN messages d ON d.channel = k.channel AND d.sender = k.sender"
        "   AND d.control_id = k.control_id AND d.content_hash = k.content_hash",
        [items[i].channel for i in lost], [items[i].sender for i in lost],
        [items[i].control_id for i in lost], [items[i].content_hash for i in lost],
    )
    for r in rows:
        results[lost[int(r["ord"]) - 1]] = IngestResult(int(r["id"]), "duplicate", bytes(r["ack"]))
    if any(results[i] is None for i in lost):
        # Conflict yet no visible row: cannot happen under READ COMMITTED; refuse the batch.
        raise StoreUnavailableError("store ingest could not resolve a duplicate")


def _missing(jobs: list[_Job], found: set[int]) -> list[Any]:
    """None for jobs whose message id was updated, KeyError(id) for the others."""
    return [None if job.args[0] in found else KeyError(job.args[0]) for job in jobs]


async def _complete(conn: Connection, jobs: list[_Job], now: float) -> list[Any]:
    rows = await conn.fetch(
        f"UPDATE messages m SET status = u.status, next_attempt_at = NULL, {_NO_LEASE}, updated_at = $3"  # noqa: S608
        " FROM unnest($1::bigint[], $2::text[]) AS u(id, status) WHERE m.id = u.id RETURNING m.id",
        [j.args[0] for j in jobs], [j.args[1].value for j in jobs], now,
    )
    return _missing(jobs, {r["id"] for r in rows})


async def _schedule_retry(conn: Connection, jobs: list[_Job], now: float) -> list[Any]:
    rows = await conn.fetch(
        "UPDATE messages m SET status = 'retry', last_error = u.error, next_attempt_at = u.at,"  # noqa: S608
        f" {_NO_LEASE}, updated_at = $4"
        " FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS u(id, error, at) WHERE m.id = u.id"
        " RETURNING m.id",
        [j.args[0] for j in jobs], [j.args[1] for j in jobs], [j.args[2] for j in jobs], now,
    )
    return _missing(jobs, {r["id"] for r in rows})


async def _dead_letter(conn: Connection, jobs: list[_Job], now: float) -> list[Any]:
    rows = await conn.fetch(
        "UPDATE messages m SET status = 'dead', last_error = u.reason, next_attempt_at = NULL,"  # noqa: S608
        f" {_NO_LEASE}, updated_at = $3"
        " FROM unnest($1::bigint[], $2::text[]) AS u(id, reason) WHERE m.id = u.id RETURNING m.id",
        [j.args[0] for j in jobs], [j.args[1] for j in jobs], now,
    )
    return _missing(jobs, {r["id"] for r in rows})


async def _mark_sink_done(conn: Connection, jobs: list[_Job], now: float) -> list[Any]:
    # Aggregated per id first: two sinks of one message in the same batch both count.
    rows = await conn.fetch(
        "UPDATE messages m SET sinks_done = ARRAY(SELECT DISTINCT s FROM unnest(m.sinks_done || a.sinks) s"
        "  ORDER BY s), updated_at = $3"
        " FROM (SELECT id, array_agg(sink) AS sinks FROM unnest($1::bigint[], $2::text[]) AS u(id, sink)"
        "  GROUP BY id) a"
        " WHERE m.id = a.id RETURNING m.id",
        [j.args[0] for j in jobs], [j.args[1] for j in jobs], now,
    )
    return _missing(jobs, {r["id"] for r in rows})


def _unlease_handler(instance_id: str) -> _Handler:
    async def unlease(conn: Connection, jobs: list[_Job], now: float) -> list[Any]:
        # Only this instance's leases: if ours expired and another instance took the
        # message over, giving it back would hand it out twice at once.
        ids = sorted({mid for job in jobs for mid in job.args[0]})
        for chunk in chunked(ids, ID_CHUNK):
            await conn.execute(
                "UPDATE messages SET status = 'received', attempts = GREATEST(attempts - 1, 0),"  # noqa: S608
                f" {_NO_LEASE}, updated_at = $2"
                " WHERE id = ANY($1::bigint[]) AND status = 'processing' AND leased_by = $3",
                list(chunk), now, instance_id,
            )
        return [None] * len(jobs)

    return unlease


async def _quarantine(conn: Connection, jobs: list[_Job], now: float) -> list[Any]:
    rows = await conn.fetch(
        "INSERT INTO quarantine (channel, raw, reason, received_at, peer)"
        " SELECT channel, raw, reason, received_at, peer FROM unnest($1::text[], $2::bytea[], $3::text[],"
        "  $4::float8[], $5::text[]) WITH ORDINALITY AS u(channel, raw, reason, received_at, peer, ord)"
        " ORDER BY ord RETURNING id",
        *(list(column) for column in zip(*(job.args for job in jobs), strict=True)),
    )
    return sorted(int(r["id"]) for r in rows)  # ids follow job order (ORDER BY ord)


# ---------------------------------------------------------------- the store


@dataclass(frozen=True, slots=True)
class _Row:
    """One unfinished row as the lease scan sees it."""

    id: int
    ordering_key: str
    status: Status
    next_attempt_at: float | None
    leased_until: float | None


class PostgresStore:
    """The Store protocol (engine/types.py) on PostgreSQL, shared by several engine instances.

    `url` is a libpq-style URL (postgresql://user@host:5432/db); `password` a string or a
    callable asked on every new connection (a rotated secret is picked up). `pool_min`
    / `pool_max` bound the connections. `lease_timeout_s` is how long a dead instance's
    leases block its messages. `instance_id` names this instance in `leased_by`: give
    each instance a stable, distinct one so that a restart takes back its own leases at
    once; the default is unique per process, so a restarted instance waits for its old
    leases to expire. `schema` puts the tables in that schema (created if missing).
    `max_batch` bounds the messages per group commit; `max_pending` the queued writes
    (beyond it `ingest` fails fast: AR 207, backpressure, DESIGN.md §5.3).
    """

    def __init__(
        self,
        url: str,
        *,
        password: str | Callable[[], str] | None = None,
        pool_min: int = 1,
        pool_max: int = 10,
        lease_timeout_s: float = 300.0,
        instance_id: str | None = None,
        schema: str | None = None,
        max_batch: int = 512,
        max_pending: int = 10_000,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= pool_min <= pool_max or pool_max < 1:
            raise ValueError("need 0 <= pool_min <= pool_max and pool_max >= 1")
        if lease_timeout_s <= 0:
            raise ValueError("lease_timeout_s must be positive")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if schema is not None and not _SCHEMA_NAME_RE.fullmatch(schema):
            raise ValueError("schema must be 1-63 lower-case letters, digits or '_', not starting with a digit")
        if instance_id is not None and not 0 < len(instance_id) <= _INSTANCE_ID_MAX:
            raise ValueError(f"instance_id must be 1-{_INSTANCE_ID_MAX} characters")
        self.url = url
        self.schema = schema
        self.lease_timeout_s = float(lease_timeout_s)
        self.instance_id = instance_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._password = password
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._clock = clock
        self._pool: Pool | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._writer = _GroupCommitter(
            pool_of=self._require_pool,
            handlers={
                "ingest": _ingest,
                "complete": _complete,
                "schedule_retry": _schedule_retry,
                "dead_letter": _dead_letter,
                "mark_sink_done": _mark_sink_done,
                "unlease": _unlease_handler(self.instance_id),
                "quarantine": _quarantine,
            },
            clock=clock,
            max_batch=max_batch,
            max_pending=max_pending,
            acquire_timeout_s=connect_timeout_s,
        )

    # -- lifecycle

    async def open(self) -> None:
        """Connect, create or migrate the schema, start the writer and the lease heartbeat."""
        if self._pool is not None:
            return
        if callable(self._password):
            self._password()  # a missing secret fails here, naming the reference (ConfigError)
        settings = {"application_name": "hl7engine"}
        if self.schema is not None:
            settings["search_path"] = self.schema
        pool = await self._create_pool(settings)
        try:
            async with pool.acquire(timeout=self._connect_timeout_s) as conn:
                durable = await conn.fetchval("SHOW synchronous_commit") != "off"
            if not durable:
                # The server, role or url turned it off; this store's ACKs promise durable
                # commits. A startup setting (not SET) survives the pool's RESET ALL.
                await _close_pool(pool)
                pool = await self._create_pool({**settings, "synchronous_commit": "on"})
            async with pool.acquire(timeout=self._connect_timeout_s) as conn:
                await migrate(conn, schema=self.schema)
        except Exception as exc:
            await _close_pool(pool)
            if _is_database_error(exc):
                raise _unavailable("open", exc) from None
            raise
        self._pool = pool
        self._writer.start()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="hl7engine-store-heartbeat")

    async def close(self) -> None:
        """Commit every write already submitted, then close the connections."""
        if self._pool is None:
            return
        await self._writer.stop()  # drains the queue: it still needs the pool
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        pool, self._pool = self._pool, None
        await _close_pool(pool)

    async def _create_pool(self, settings: dict[str, str]) -> Pool:
        try:
            return await asyncpg.create_pool(
                self.url,
                password=self._password,
                min_size=self._pool_min,
                max_size=self._pool_max,
                timeout=self._connect_timeout_s,
                command_timeout=self._command_timeout_s,
                server_settings=settings,
            )
        except Exception as exc:
            if _is_database_error(exc):
                raise _unavailable("open", exc) from None
            raise

    def _require_pool(self) -> Pool:
        if self._pool is None:
            raise StoreUnavailableError("store is not open")
        return self._pool

    async def _read(self, operation: str, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Run `fn` on a pooled connection; database failures become StoreUnavailableError."""
        pool = self._require_pool()
        try:
            async with pool.acquire(timeout=self._connect_timeout_s) as conn:
                return await fn(conn)
        except Exception as exc:
            if _is_database_error(exc):
                raise _unavailable(operation, exc) from None
            raise

    async def _write(self, operation: str, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Like `_read`, inside one transaction (operator actions; not group-committed)."""

        async def in_transaction(conn: Connection) -> T:
            async with conn.transaction():
                return await fn(conn)

        return await self._read(operation, in_transaction)

    async def _heartbeat_loop(self) -> None:
        """Keep this instance's leases alive, so only a dead instance's leases expire."""
        interval = max(0.2, self.lease_timeout_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._read("heartbeat", self._extend_leases)
            except StoreUnavailableError:
                log.warning("store_heartbeat_failed")  # retried next interval; the error was counted

    async def _extend_leases(self, conn: Connection) -> None:
        # An already expired lease is not revived: another instance may own it now.
        await conn.execute(
            f"UPDATE messages SET leased_until = {_DB_NOW} + $2"  # noqa: S608
            f" WHERE status = 'processing' AND leased_by = $1 AND leased_until >= {_DB_NOW}",
            self.instance_id, self.lease_timeout_s,
        )

    # -- custody

    async def ingest(self, items: Sequence[Inbound]) -> list[IngestResult]:
        """Store `items` in one transaction; returns after COMMIT (durable, DESIGN.md §5.1)."""
        if not items:
            return []
        result: list[IngestResult] = await self._writer.submit("ingest", (tuple(items),), len(items))
        return result

    async def quarantine(
        self, channel: str, raw: bytes, reason: str, received_at: float, peer: str = ""
    ) -> int:
        """Keep a frame refused before custody (DESIGN.md §4); durable when it returns."""
        result: int = await self._writer.submit("quarantine", (channel, raw, reason, received_at, peer))
        return result

    async def quarantined(
        self, channel: str | None = None, after_id: int = 0, limit: int = 100
    ) -> list[QuarantinedFrame]:
        """Quarantined frames, oldest first, keyset-paginated by id."""

        async def run(conn: Connection) -> list[QuarantinedFrame]:
            rows = await conn.fetch(
                "SELECT id, channel, raw, reason, received_at, peer FROM quarantine"
                " WHERE id > $1 AND ($2::text IS NULL OR channel = $2) ORDER BY id LIMIT $3",
                after_id, channel, clamp_limit(limit),
            )
            return [
                QuarantinedFrame(r["id"], r["channel"], bytes(r["raw"]), r["reason"], r["received_at"], r["peer"])
                for r in rows
            ]

        return await self._read("quarantined", run)

    async def prune_quarantine(self, received_before: float) -> int:
        """Delete quarantined frames received before the given time, in chunks."""
        return await self._prune_in_chunks(
            "prune_quarantine",
            "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine WHERE received_at < $1 LIMIT $2)",
            received_before,
        )

    # -- work

    async def lease(self, channel: str, limit: int, now: float) -> list[StoredMessage]:
        """Due messages oldest first, set to processing (attempts + 1), per-key order kept
        across every instance sharing the database (see the module docstring)."""
        if limit <= 0:
            return []
        chosen = await self._read("lease", lambda conn: self._scan(conn, channel, limit, now))
        if not chosen:
            return []
        return await self._read("lease", lambda conn: self._claim(conn, chosen, now))

    async def _scan(self, conn: Connection, channel: str, limit: int, now: float) -> list[_Row]:
        """Pick candidates from the unfinished rows (index only), one statement per window.

        Windows are separate snapshots; that is safe because `_claim` re-reads and
        re-judges every chosen row under its lock.
        """
        planner = LeasePlanner(limit, now)
        rows_by_id: dict[int, _Row] = {}
        window = max(limit * LEASE_WINDOW_FACTOR, LEASE_MIN_WINDOW)
        after_id = 0
        for _ in range(LEASE_MAX_WINDOWS):
            blocked = sorted(planner.blocked_keys)
            if len(blocked) > MAX_EXCLUDED_KEYS:
                blocked = []
            records = await conn.fetch(
                f"SELECT id, ordering_key, status, next_attempt_at, leased_until, {_DB_NOW} AS db_now"  # noqa: S608
                f" FROM messages WHERE channel = $1 AND {_UNFINISHED_SQL} AND id > $2"
                " AND ordering_key <> ALL($3::text[]) ORDER BY id LIMIT $4",
                channel, after_id, blocked, window,
            )
            rows = [_row(r) for r in records]
            rows_by_id.update((row.id, row) for row in rows)
            planner.feed(_candidate(row, float(r["db_now"])) for row, r in zip(rows, records, strict=True))
            if planner.full or len(records) < window:
                break
            after_id = rows[-1].id
        return [rows_by_id[i] for i in planner.chosen]

    async def _claim(self, conn: Connection, chosen: list[_Row], now: float) -> list[StoredMessage]:
        """One statement: lock the chosen rows (SKIP LOCKED), keep each only while every
        chosen row of its key up to it is locked and still due, set those to processing."""
        records = await conn.fetch(
            "WITH chosen AS (SELECT * FROM unnest($1::bigint[], $2::text[]) AS c(id, ordering_key)),"  # noqa: S608
            " locked AS MATERIALIZED (SELECT id, status, next_attempt_at, leased_until FROM messages"
            "  WHERE id = ANY($1::bigint[]) FOR UPDATE SKIP LOCKED),"
            " judged AS (SELECT c.id, bool_and(COALESCE("
            "   l.status = 'received'"
            "   OR (l.status = 'retry' AND (l.next_attempt_at IS NULL OR l.next_attempt_at <= $3))"
            f"   OR (l.status = 'processing' AND l.leased_until < {_DB_NOW}), false))"
            "  OVER (PARTITION BY c.ordering_key ORDER BY c.id) AS keep"
            "  FROM chosen c LEFT JOIN locked l ON l.id = c.id)"
            " UPDATE messages m SET status = 'processing', attempts = attempts + 1, leased_by = $4,"
            f" leased_until = {_DB_NOW} + $5, updated_at = $6"
            f" FROM judged j WHERE m.id = j.id AND j.keep RETURNING {_prefixed('m', _MESSAGE_COLUMNS)}",
            [row.id for row in chosen], [row.ordering_key for row in chosen], now,
            self.instance_id, self.lease_timeout_s, self._clock(),
        )
        return sorted((_to_message(r) for r in records), key=lambda m: m.id)

    async def next_due(self, channel: str) -> float | None:
        """Now if a received message can be leased; else the earliest retry time; None if idle.

        Unlike SQLite, a received message whose key another instance holds (its earlier
        message is processing there) is not due: the runner would otherwise spin on
        leases that return nothing. It becomes due when that instance finishes; this
        instance then sees it at its next poll (the runner's idle poll, 1 s) or wake.
        A processing message whose lease expired is due now. Only the first
        NEXT_DUE_SCAN received rows are examined, so the check stays bounded.
        """
        now = self._clock()

        async def run(conn: Connection) -> float | None:
            row = await conn.fetchrow(
                "SELECT EXISTS (SELECT 1 FROM (SELECT id, ordering_key FROM messages"  # noqa: S608
                "   WHERE channel = $1 AND status = 'received' ORDER BY id LIMIT $2) r"
                "  WHERE NOT EXISTS (SELECT 1 FROM messages e WHERE e.channel = $1"
                "   AND e.ordering_key = r.ordering_key AND e.id < r.id"
                f"   AND e.status IN ('processing', 'retry') AND NOT (e.status = 'processing'"
                f"   AND e.leased_until < {_DB_NOW}))"
                " ) AS received,"
                " EXISTS (SELECT 1 FROM messages WHERE channel = $1 AND status = 'processing'"
                f"  AND leased_until < {_DB_NOW}) AS expired,"
                " (SELECT MIN(next_attempt_at) FROM messages WHERE channel = $1 AND status = 'retry') AS retry",
                channel, NEXT_DUE_SCAN,
            )
            assert row is not None
            if row["received"] or row["expired"]:
                return now
            return None if row["retry"] is None else float(row["retry"])

        return await self._read("next_due", run)

    async def mark_sink_done(self, message_id: int, sink: str) -> None:
        await self._writer.submit("mark_sink_done", (message_id, sink))

    async def complete(self, message_id: int, status: Status = Status.DONE) -> None:
        await self._writer.submit("complete", (message_id, check_completion(status)))

    async def unlease(self, message_ids: Sequence[int]) -> None:
        """Give back this instance's leased messages without counting an attempt."""
        if message_ids:
            await self._writer.submit("unlease", (tuple(message_ids),))

    async def schedule_retry(self, message_id: int, error: str, next_attempt_at: float) -> None:
        await self._writer.submit("schedule_retry", (message_id, error, next_attempt_at))

    async def dead_letter(self, message_id: int, reason: str) -> None:
        await self._writer.submit("dead_letter", (message_id, reason))

    async def recover(self) -> int:
        """On start: this instance's leases and expired ones back to received, in one UPDATE.

        A live instance's leases are left alone: it is still working on them.
        """
        now = self._clock()

        async def run(conn: Connection) -> int:
            status = await conn.execute(
                f"UPDATE messages SET status = 'received', {_NO_LEASE}, updated_at = $2"  # noqa: S608
                f" WHERE status = 'processing' AND (leased_by = $1 OR leased_until < {_DB_NOW})",
                self.instance_id, now,
            )
            return _rowcount(status)

        return await self._write("recover", run)

    # -- operator

    async def get(self, message_id: int) -> StoredMessage | None:
        async def run(conn: Connection) -> StoredMessage | None:
            row = await conn.fetchrow(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = $1", message_id)  # noqa: S608
            return None if row is None else _to_message(row)

        return await self._read("get", run)

    async def query(self, q: MessageQuery) -> list[StoredMessage]:
        """Keyset-paginated by id (ascending); at most MAX_QUERY_LIMIT rows per page."""
        return await self._read("query", lambda conn: _query(conn, q))

    async def requeue(self, message_ids: Sequence[int]) -> int:
        """Replay dead/released/done/filtered messages; returns how many were requeued."""
        if not message_ids:
            return 0
        ids, now = list(message_ids), self._clock()

        async def run(conn: Connection) -> int:
            count = 0
            for chunk in chunked(ids, ID_CHUNK):
                status = await conn.execute(
                    "UPDATE messages SET status = 'received', attempts = 0, last_error = NULL,"  # noqa: S608
                    " next_attempt_at = NULL,"
                    f" sinks_done = CASE WHEN {_KEEP_SINKS_SQL} THEN sinks_done ELSE '{{}}'::text[] END,"
                    f" {_NO_LEASE}, updated_at = $2 WHERE id = ANY($1::bigint[]) AND {_REQUEUEABLE_SQL}",
                    list(chunk), now,
                )
                count += _rowcount(status)
            return count

        return await self._write("requeue", run)

    async def release(self, message_ids: Sequence[int]) -> int:
        """Dead -> released (the operator gives up on them); returns how many."""
        if not message_ids:
            return 0
        ids, now = list(message_ids), self._clock()

        async def run(conn: Connection) -> int:
            count = 0
            for chunk in chunked(ids, ID_CHUNK):
                status = await conn.execute(
                    "UPDATE messages SET status = 'released', updated_at = $2"
                    " WHERE id = ANY($1::bigint[]) AND status = 'dead'",
                    list(chunk), now,
                )
                count += _rowcount(status)
            return count

        return await self._write("release", run)

    async def prune(self, finished_before: float, channel: str | None = None) -> int:
        """Delete done/filtered/released rows last updated before the given time (one channel's, or all)."""
        return await self._prune_in_chunks(
            "prune",
            "DELETE FROM messages WHERE id IN (SELECT id FROM messages"  # noqa: S608
            f" WHERE {_FINISHED_SQL} AND updated_at < $1 AND ($3::text IS NULL OR channel = $3) LIMIT $2)",
            finished_before,
            channel,
        )

    async def stats(self, channel: str) -> QueueStats:
        async def run(conn: Connection) -> QueueStats:
            # One statement, one snapshot for the three numbers.
            row = await conn.fetchrow(
                f"SELECT (SELECT COUNT(*) FROM messages WHERE channel = $1 AND {_UNFINISHED_SQL}) AS pending,"  # noqa: S608
                f" (SELECT received_at FROM messages WHERE channel = $1 AND {_UNFINISHED_SQL}"
                "   ORDER BY id LIMIT 1) AS oldest,"
                " (SELECT COUNT(*) FROM messages WHERE status = 'dead' AND channel = $1) AS dead",
                channel,
            )
            assert row is not None
            return QueueStats(pending=int(row["pending"]), oldest_pending_at=row["oldest"], dead=int(row["dead"]))

        return await self._read("stats", run)

    async def diagnostics(self) -> dict[str, object]:
        """Settings that matter for durability and sharing (synchronous_commit, schema version)."""

        async def run(conn: Connection) -> dict[str, object]:
            return {
                "synchronous_commit": await conn.fetchval("SHOW synchronous_commit"),
                "schema_version": await conn.fetchval("SELECT MAX(version) FROM hl7engine_schema_version"),
                "server_version": await conn.fetchval("SHOW server_version"),
                "instance_id": self.instance_id,
                "lease_timeout_s": self.lease_timeout_s,
            }

        return await self._read("diagnostics", run)

    # -- raw rows, for re-encryption in place (engine/store/encrypted.py RawAccess)

    async def message_raw_page(self, after_id: int, limit: int) -> list[tuple[int, str, str, str, str, bytes]]:
        """(id, channel, sender, control_id, content_hash, raw) of messages after `after_id`, by id."""
        rows = await self._read("raw_page", lambda conn: conn.fetch(
            "SELECT id, channel, sender, control_id, content_hash, raw FROM messages"
            " WHERE id > $1 ORDER BY id LIMIT $2", after_id, clamp_limit(limit)))
        return [(r[0], r[1], r[2], r[3], r[4], bytes(r[5])) for r in rows]

    async def quarantine_raw_page(self, after_id: int, limit: int) -> list[tuple[int, str, str, bytes]]:
        """(id, channel, reason, raw) of quarantined frames after `after_id`, by id."""
        rows = await self._read("raw_page", lambda conn: conn.fetch(
            "SELECT id, channel, reason, raw FROM quarantine WHERE id > $1 ORDER BY id LIMIT $2",
            after_id, clamp_limit(limit)))
        return [(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    async def replace_raw(self, table: str, changes: Sequence[tuple[int, bytes, bytes]]) -> int:
        """For each (id, old, new): raw = new where raw is still old; one transaction; rows changed."""
        sql = {
            "messages": "UPDATE messages m SET raw = c.new FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])"
                        " AS c(id, old, new) WHERE m.id = c.id AND m.raw = c.old",
            "quarantine": "UPDATE quarantine q SET raw = c.new FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])"
                          " AS c(id, old, new) WHERE q.id = c.id AND q.raw = c.old",
        }[table]
        if not changes:
            return 0
        ids, olds, news = ([c[i] for c in changes] for i in range(3))
        status = await self._write("replace_raw", lambda conn: conn.execute(sql, ids, olds, news))
        return _rowcount(status)

    async def _prune_in_chunks(self, operation: str, sql: str, before: float, *extra: Any) -> int:
        # One transaction per chunk, so other writers interleave.
        total = 0
        while True:
            status = await self._read(operation, lambda conn: conn.execute(sql, before, PRUNE_CHUNK, *extra))
            deleted = _rowcount(status)
            total += deleted
            if deleted < PRUNE_CHUNK:
                return total


# ---------------------------------------------------------------- helpers


async def _close_pool(pool: Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), timeout=10)
    except (TimeoutError, Exception):
        pool.terminate()


def _prefixed(alias: str, columns: str) -> str:
    """`a, b` -> `m.a, m.b`: a column list qualified by a table alias."""
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def _rowcount(status: str) -> int:
    """Rows touched, from a command tag such as 'UPDATE 3' or 'DELETE 0'."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _row(r: Record) -> _Row:
    return _Row(int(r["id"]), r["ordering_key"], Status(r["status"]), r["next_attempt_at"], r["leased_until"])


def _candidate(row: _Row, db_now: float) -> LeaseCandidate:
    """The planner's view: a processing row whose lease expired is due like a received one."""
    status = row.status
    if status is Status.PROCESSING and row.leased_until is not None and row.leased_until < db_now:
        status = Status.RECEIVED
    return LeaseCandidate(row.id, row.ordering_key, status, row.next_attempt_at)


async def _query(conn: Connection, q: MessageQuery) -> list[StoredMessage]:
    """Keyset pages in id order; with a status filter, one ordered index scan per status."""
    limit = clamp_limit(q.limit)
    if limit == 0 or (q.statuses is not None and not q.statuses):
        return []
    where = ["id > $1"]
    params: list[Any] = [q.after_id]

    def bind(condition: str, value: Any) -> None:
        params.append(value)
        where.append(condition.format(f"${len(params)}"))

    if q.since is not None:
        bind("received_at >= {}", q.since)
    if q.until is not None:
        bind("received_at < {}", q.until)
    if q.channel is not None:
        bind("channel = {}", q.channel)
    if q.control_id is not None:
        bind("control_id = {}", q.control_id)
    params.append(limit)
    limit_ref = f"${len(params)}"
    conditions = " AND ".join(where)
    if q.statuses is None:
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {conditions} ORDER BY id LIMIT {limit_ref}"  # noqa: S608
    else:
        # Each branch walks ix_messages_status (status, channel, id) in order and stops at
        # `limit`: a page costs at most len(statuses) * limit index entries.
        branches = " UNION ALL ".join(
            f"(SELECT {_MESSAGE_COLUMNS} FROM messages WHERE status = '{s.value}' AND {conditions}"  # noqa: S608
            f" ORDER BY id LIMIT {limit_ref})"
            for s in sorted(q.statuses)
        )
        sql = f"SELECT * FROM ({branches}) AS page ORDER BY id LIMIT {limit_ref}"  # noqa: S608
    return [_to_message(r) for r in await conn.fetch(sql, *params)]


def _conforms(store: PostgresStore) -> Store:
    """Never called: makes mypy prove PostgresStore satisfies the Store protocol."""
    return store


__all__ = ["MIGRATIONS", "Migration", "PostgresStore", "migrate"]
