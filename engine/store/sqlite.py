"""The embedded default store: SQLite in WAL mode with group commit.

Durability (DESIGN.md §5.1-2): WAL journal with `synchronous=FULL`, so a COMMIT returns
only after the WAL is fsync'd; `ingest` resolves only after that COMMIT.

Group commit (DESIGN.md §7): one writer thread owns the only write connection. It takes
everything queued since its last commit (up to `max_batch` messages), runs it as ONE
transaction (each job inside its own SAVEPOINT, so one failing job does not undo the
others), commits once (one fsync), then wakes every waiting caller with a single
`call_soon_threadsafe` per event loop. Every write (lease, complete, retry ...) goes
through the same thread, so the runner's bookkeeping shares fsyncs with intake.
Reads (get, query, stats, next_due) run on a second thread with its own connection,
which WAL lets read while the writer writes. The event loop never touches SQLite.

Semantics the Store protocol leaves open, decided here (and in engine/store/base.py):
- `attempts` counts processing attempts: `lease` adds one, `unlease` takes it back (the
  message was never worked on), `recover` keeps it (a crash mid-work was an attempt, so
  a message that crashes the engine still reaches its retry limit), `requeue` resets it.
- `requeue` of dead/released keeps `sinks_done` (deliver only to the sinks that never
  got it); of done/filtered clears it (full redelivery).
- Dedup key (channel, sender, control_id, content_hash). A different hash under the same
  (channel, sender, control_id) is a collision, flagged only when the control id is not
  empty (an empty MSH-10 identifies nothing, so it cannot collide).
- `next_due` is the current time when any received row exists, else the earliest retry
  time; it does not look at per-key blocking, so a lease may still return nothing.
- `stats().oldest_pending_at` is the received_at of the unfinished row with the lowest id
  (ids follow arrival; an index lookup instead of a scan of the backlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
    decode_sinks,
    encode_sinks,
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

T = TypeVar("T")

#: Rows per DELETE while pruning: each chunk is its own job, so intake interleaves.
PRUNE_CHUNK = 1000
#: A lease scans windows of `limit * LEASE_WINDOW_FACTOR` unfinished rows ...
LEASE_WINDOW_FACTOR = 8
LEASE_MIN_WINDOW = 64
#: ... and at most this many windows: bounded work per lease whatever the backlog.
LEASE_MAX_WINDOWS = 8

# SQL literals for the status sets: partial indexes are used only when a query repeats
# their WHERE clause literally (bound parameters would not match).
# Every SQL string built with an f-string interpolates only these constants and "?"
# placeholders; values are always bound (hence the S608 noqa marks).
_UNFINISHED_SQL = "status IN ('received', 'processing', 'retry')"
_FINISHED_SQL = "status IN ('done', 'filtered', 'released')"
_REQUEUEABLE_SQL = "status IN (" + ", ".join(f"'{s.value}'" for s in sorted(REQUEUEABLE)) + ")"
_KEEP_SINKS_SQL = "status IN (" + ", ".join(f"'{s.value}'" for s in sorted(REQUEUE_KEEPS_SINKS_DONE)) + ")"


# ---------------------------------------------------------------- schema and migrations


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step; `version` is PRAGMA user_version once it has run."""

    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]


def _schema_v1(conn: sqlite3.Connection) -> None:
    statements = (
        f"""
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after prune
            channel TEXT NOT NULL,
            received_at REAL NOT NULL,
            raw BLOB NOT NULL,                     -- exact bytes as received (DESIGN.md §5.6)
            charset TEXT NOT NULL,
            sender TEXT NOT NULL,
            control_id TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            message_type TEXT NOT NULL,
            ordering_key TEXT NOT NULL DEFAULT '',
            channel_version TEXT NOT NULL DEFAULT '',
            peer TEXT NOT NULL DEFAULT '',
            ack BLOB NOT NULL,
            status TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s.value}'" for s in Status)})),
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            next_attempt_at REAL,
            sinks_done TEXT NOT NULL DEFAULT '',
            collision INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        )
        """,
        # Exact resend detection (DESIGN.md §4); its prefix also finds collisions.
        "CREATE UNIQUE INDEX ux_messages_dedup ON messages (channel, sender, control_id, content_hash)",
        # Lease scan in id order over unfinished rows only; covering, so skipping a
        # blocked key never reads the table. Finished rows (the bulk) are not in it.
        "CREATE INDEX ix_messages_unfinished"
        f" ON messages (channel, id, ordering_key, status, next_attempt_at) WHERE {_UNFINISHED_SQL}",
        # next_due: MIN(next_attempt_at) per channel without scanning.
        "CREATE INDEX ix_messages_retry_due ON messages (channel, next_attempt_at) WHERE status = 'retry'",
        # recover, dead-letter counts and listings, status-filtered queries.
        "CREATE INDEX ix_messages_status ON messages (status, channel, id)",
        # prune: finished rows by age.
        f"CREATE INDEX ix_messages_finished ON messages (updated_at) WHERE {_FINISHED_SQL}",
        # operator queries.
        "CREATE INDEX ix_messages_received_at ON messages (received_at)",
        "CREATE INDEX ix_messages_control_id ON messages (control_id)",
        """
        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            channel TEXT NOT NULL,
            raw BLOB NOT NULL,
            reason TEXT NOT NULL,
            received_at REAL NOT NULL,
            peer TEXT NOT NULL DEFAULT ''
        )
        """,
        "CREATE INDEX ix_quarantine_channel ON quarantine (channel, id)",
        "CREATE INDEX ix_quarantine_received_at ON quarantine (received_at)",
    )
    for sql in statements:
        conn.execute(sql)


#: Append new steps here; never edit a released one. Versions run in order, each in its
#: own transaction together with its user_version bump.
MIGRATIONS: tuple[Migration, ...] = (Migration(1, "messages and quarantine tables", _schema_v1),)


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the schema to the newest version; returns it. Refuses a newer database."""
    latest = migrations[-1].version if migrations else 0
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > latest:
        raise StoreUnavailableError(
            f"store schema version {current} is newer than this engine supports ({latest})"
        )
    for step in migrations:
        if step.version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            step.apply(conn)
            conn.execute(f"PRAGMA user_version = {int(step.version)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        current = step.version
    return current


# ---------------------------------------------------------------- errors


def _is_fatal(exc: sqlite3.Error) -> bool:
    """Errors that mean the database, not the job, is in trouble (full, I/O, busy, corrupt).

    They abort the whole group transaction; other sqlite3 errors fail only their job.
    """
    return isinstance(exc, sqlite3.OperationalError) or type(exc) in (
        sqlite3.DatabaseError,
        sqlite3.InternalError,
    )


def _unavailable(operation: str, exc: sqlite3.Error) -> StoreUnavailableError:
    # SQLite's error name (SQLITE_FULL, SQLITE_IOERR_...), never its message or values.
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    STORE_ERRORS.labels(operation).inc()
    error = StoreUnavailableError(f"store unavailable during {operation}: {name}")
    error.__cause__ = exc
    return error


# ---------------------------------------------------------------- connection threads


@dataclass(slots=True, eq=False)
class _Job:
    operation: str  # a fixed word: metric label and error text
    fn: Callable[[sqlite3.Connection], Any]
    weight: int  # messages it carries (ingest) or 1
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    items: tuple[Inbound, ...] | None = None  # ingest jobs: merged with their neighbours
    now: float = 0.0


@dataclass(slots=True, eq=False)
class _Stop:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Outcome:
    job: _Job
    value: Any = None
    error: BaseException | None = None


def _resolve(outcomes: list[_Outcome]) -> None:
    """Runs on the event loop: hand every job of a batch its result."""
    for outcome in outcomes:
        future = outcome.job.future
        if future.done():  # the caller was cancelled; the work itself still happened
            continue
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.value)


def _settle(outcomes: list[_Outcome]) -> None:
    """One thread hop per event loop per batch, not one per job."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome.job.loop, []).append(outcome)
    for loop, group in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, group)


class _ConnectionThread:
    """One sqlite3 connection owned by one thread, running queued jobs in drained batches.

    `transactional` threads (the writer) run a batch as one transaction with a savepoint
    per job; the reader runs each job on its own.
    """

    def __init__(
        self,
        name: str,
        connect: Callable[[], sqlite3.Connection],
        *,
        transactional: bool,
        max_batch: int,
        max_pending: int,
    ) -> None:
        self.name = name
        self.connect = connect
        self.transactional = transactional
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._queue: queue.SimpleQueue[_Job | _Stop] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._accepting = False  # touched only on the event loop

    # -- event-loop side

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._main, args=(loop, ready), name=self.name, daemon=True)
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._thread = None  # it ended after failing to connect
            raise
        self._accepting = True

    def submit(
        self, operation: str, fn: Callable[[sqlite3.Connection], T], weight: int = 1,
        items: tuple[Inbound, ...] | None = None, now: float = 0.0,
    ) -> asyncio.Future[T]:
        if not self._accepting:
            raise StoreUnavailableError("store is not open")
        if self._queue.qsize() >= self.max_pending:
            STORE_ERRORS.labels(operation).inc()
            raise StoreUnavailableError(f"store overloaded during {operation}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(operation, fn, weight, loop, future, items, now))
        return future

    async def stop(self) -> None:
        """Finish every queued job, close the connection, end the thread."""
        self._accepting = False
        if self._thread is None or not self._thread.is_alive():
            self._thread = None
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Stop(loop, done))
        await done
        self._thread = None

    # -- thread side

    def _main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = self.connect()
        except BaseException as exc:
            error: BaseException = exc
            if isinstance(exc, sqlite3.Error):
                error = _unavailable("open", exc)
            elif isinstance(exc, OSError):  # the directory cannot be created or written
                error = StoreUnavailableError(f"store cannot open its file: {exc.strerror}")
                error.__cause__ = exc
            loop.call_soon_threadsafe(_set_future, ready, None, error)
            return
        loop.call_soon_threadsafe(_set_future, ready, None, None)
        try:
            stop = self._serve(conn)
        finally:
            conn.close()
        if stop is not None:
            stop.loop.call_soon_threadsafe(_set_future, stop.future, None, None)

    def _serve(self, conn: sqlite3.Connection) -> _Stop | None:
        while True:
            first = self._queue.get()
            if isinstance(first, _Stop):
                return first
            batch, stop = self._drain(first)
            try:
                outcomes = self._run_batch(conn, batch) if self.transactional else self._run_each(conn, batch)
            except Exception as exc:  # a bug in the batch loop must not kill the thread
                outcomes = [_Outcome(job, error=_unexpected(job, exc)) for job in batch]
            _settle(outcomes)
            if stop is not None:
                return stop

    def _drain(self, first: _Job) -> tuple[list[_Job], _Stop | None]:
        batch = [first]
        weight = first.weight
        while weight < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Stop):
                return batch, item
            batch.append(item)
            weight += item.weight
        return batch, None

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> list[_Outcome]:
        started = time.perf_counter()
        outcomes: list[_Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Optimistic first: jobs almost never fail on their own, and a savepoint per
            # job costs three statements. If one does fail, redo the batch with savepoints
            # so only that job is undone.
            try:
                outcomes = _run_merged(conn, batch)
            except sqlite3.Error as exc:
                if _is_fatal(exc):
                    raise
                outcomes = self._redo_with_savepoints(conn, batch)
            except Exception:
                outcomes = self._redo_with_savepoints(conn, batch)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # Fatal (disk full, I/O, busy): nothing in this batch is durable, so every
            # caller hears so; the thread goes on serving the next batch.
            _rollback(conn)
            return [_Outcome(job, error=_unavailable(job.operation, exc)) for job in batch]
        STORE_COMMIT_LATENCY.observe(time.perf_counter() - started)
        messages = sum(job.weight for job in batch if job.operation == "ingest")
        if messages:
            STORE_BATCH_SIZE.observe(messages)
        return outcomes

    def _redo_with_savepoints(self, conn: sqlite3.Connection, batch: list[_Job]) -> list[_Outcome]:
        conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
        return [_run_in_savepoint(conn, job) for job in batch]

    def _run_each(self, conn: sqlite3.Connection, batch: list[_Job]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        for job in batch:
            try:
                outcomes.append(_Outcome(job, value=job.fn(conn)))
            except sqlite3.Error as exc:
                _rollback(conn)
                outcomes.append(_Outcome(job, error=_unavailable(job.operation, exc)))
            except Exception as exc:
                outcomes.append(_Outcome(job, error=exc))
        return outcomes


def _run_merged(conn: sqlite3.Connection, batch: list[_Job]) -> list[_Outcome]:
    """Run a batch in order; each run of consecutive ingest jobs becomes one `_ingest`
    over all their items (a few statements per batch instead of two per message)."""
    outcomes: list[_Outcome] = []
    index = 0
    while index < len(batch):
        job = batch[index]
        if job.items is None:
            outcomes.append(_Outcome(job, value=job.fn(conn)))
            index += 1
            continue
        run = [job]
        while index + len(run) < len(batch) and batch[index + len(run)].items is not None:
            run.append(batch[index + len(run)])
        merged = [item for j in run for item in j.items or ()]
        results = _ingest(conn, merged, job.now)
        start = 0
        for member in run:
            count = len(member.items or ())
            outcomes.append(_Outcome(member, value=results[start : start + count]))
            start += count
        index += len(run)
    return outcomes


def _run_in_savepoint(conn: sqlite3.Connection, job: _Job) -> _Outcome:
    """Run one job inside the group transaction; a job's own failure undoes only it.

    Fatal sqlite3 errors propagate and abort the whole batch.
    """
    conn.execute("SAVEPOINT job")
    try:
        value = job.fn(conn)
    except sqlite3.Error as exc:
        if _is_fatal(exc):
            raise
        conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")
        return _Outcome(job, error=_unavailable(job.operation, exc))
    except Exception as exc:
        conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")
        return _Outcome(job, error=exc)
    conn.execute("RELEASE job")
    return _Outcome(job, value=value)


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite may already have rolled back on its own (SQLITE_FULL, SQLITE_IOERR).
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _unexpected(job: _Job, exc: Exception) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        return _unavailable(job.operation, exc)
    return exc


def _set_future(future: asyncio.Future[None], value: None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


# ---------------------------------------------------------------- row mapping

_MESSAGE_COLUMNS = (
    "id, channel, raw, received_at, status, attempts, sender, control_id, message_type, charset,"
    " ordering_key, last_error, next_attempt_at, sinks_done, collision, channel_version, updated_at"
)


def _to_message(row: tuple[Any, ...]) -> StoredMessage:
    return StoredMessage(
        id=row[0],
        channel=row[1],
        raw=bytes(row[2]),
        received_at=row[3],
        status=_STATUS[row[4]],
        attempts=row[5],
        sender=row[6],
        control_id=row[7],
        message_type=row[8],
        charset=row[9],
        ordering_key=row[10],
        last_error=row[11],
        next_attempt_at=row[12],
        sinks_done=decode_sinks(row[13]),
        collision=bool(row[14]),
        channel_version=row[15],
        updated_at=row[16],
    )


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


# ---------------------------------------------------------------- write jobs (writer thread)


_INSERT_COLUMNS = (
    "channel, received_at, raw, charset, sender, control_id, content_hash, message_type, ordering_key,"
    " channel_version, peer, ack, status, attempts, sinks_done, collision, updated_at"
)
_INSERT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'received', 0, '', ?, ?)"
_INSERT_CHUNK = 400  # rows per INSERT statement: 14 parameters each, well under SQLite's limit


def _ingest(conn: sqlite3.Connection, items: Sequence[Inbound], now: float) -> list[IngestResult]:
    """Dedup and insert a batch: one lookup per (channel, sender) and one INSERT per chunk.

    A resend later in the same batch sees its original, as if the items came one by one:
    an exact resend (same sender, control id and content hash) is a duplicate of the stored
    row; the same control id with other content is stored as a flagged collision.
    """
    # What is already stored under each (channel, sender, control id) of the batch.
    known: dict[tuple[str, str, str], dict[str, int | None]] = {}
    acks: dict[int, bytes] = {}
    groups: dict[tuple[str, str], set[str]] = {}
    for item in items:
        groups.setdefault((item.channel, item.sender), set()).add(item.control_id)
    for (channel, sender), control_ids in groups.items():
        for id_chunk in chunked(sorted(control_ids), ID_CHUNK):
            rows = conn.execute(
                "SELECT control_id, content_hash, id, ack FROM messages"  # noqa: S608
                f" WHERE channel = ? AND sender = ? AND control_id IN ({_placeholders(len(id_chunk))})",
                (channel, sender, *id_chunk),
            ).fetchall()
            for control_id, content_hash, message_id, ack in rows:
                known.setdefault((channel, sender, control_id), {})[content_hash] = message_id
                acks[message_id] = bytes(ack)
    results: list[IngestResult | None] = []
    pending: list[tuple[int, Inbound, bool]] = []  # (position in results, item, collision)
    for item in items:
        key = (item.channel, item.sender, item.control_id)
        hashes = known.setdefault(key, {})
        if item.content_hash in hashes:
            # Duplicate of a stored row, or of an earlier item of this batch (id known after insert).
            results.append(IngestResult(hashes[item.content_hash] or -1, "duplicate", item.ack))
            continue
        collision = bool(hashes) and item.control_id != ""
        hashes[item.content_hash] = None
        pending.append((len(results), item, collision))
        results.append(None)
    inserted: dict[tuple[str, str, str, str], int] = {}
    for chunk in chunked(pending, _INSERT_CHUNK):
        params: list[Any] = []
        for _, item, collision in chunk:
            params.extend((item.channel, item.received_at, item.raw, item.charset, item.sender, item.control_id,
                           item.content_hash, item.message_type, item.ordering_key, item.channel_version,
                           item.peer, item.ack, int(collision), now))
        rows = conn.execute(
            f"INSERT INTO messages ({_INSERT_COLUMNS}) VALUES {', '.join([_INSERT_ROW] * len(chunk))}"  # noqa: S608
            " RETURNING id, channel, sender, control_id, content_hash",
            params,
        ).fetchall()
        for message_id, channel, sender, control_id, content_hash in rows:
            inserted[(channel, sender, control_id, content_hash)] = message_id
    for position, item, collision in pending:
        message_id = inserted[(item.channel, item.sender, item.control_id, item.content_hash)]
        results[position] = IngestResult(message_id, "collision" if collision else "stored", item.ack)
        acks[message_id] = item.ack
    final: list[IngestResult] = []
    for item, result in zip(items, results, strict=True):
        assert result is not None
        if result.outcome != "duplicate":
            final.append(result)
            continue
        message_id = result.message_id
        if message_id == -1:  # the original is earlier in this batch
            message_id = inserted[(item.channel, item.sender, item.control_id, item.content_hash)]
        final.append(IngestResult(message_id, "duplicate", acks[message_id]))
    return final


_STATUS = {status.value: status for status in Status}  # a dict lookup, not an Enum call, per row


def _lease(conn: sqlite3.Connection, channel: str, limit: int, now: float) -> list[StoredMessage]:
    if limit <= 0:
        return []
    planner = LeasePlanner(limit, now)
    window = max(limit * LEASE_WINDOW_FACTOR, LEASE_MIN_WINDOW)
    after_id = 0
    for _ in range(LEASE_MAX_WINDOWS):
        blocked = sorted(planner.blocked_keys)
        # Keys already blocked are skipped inside SQLite (on the covering index), so a
        # long stuck key costs C-speed index steps, not Python rows.
        exclude = ""
        if blocked and len(blocked) <= ID_CHUNK:
            exclude = f" AND ordering_key NOT IN ({_placeholders(len(blocked))})"
        else:
            blocked = []
        cursor = conn.execute(
            "SELECT id, ordering_key, status, next_attempt_at FROM messages INDEXED BY ix_messages_unfinished"  # noqa: S608
            f" WHERE channel = ? AND {_UNFINISHED_SQL} AND id > ?{exclude} ORDER BY id LIMIT ?",
            (channel, after_id, *blocked, window),
        )
        # Rows are stepped out of SQLite only as the planner asks for them: once it is
        # full, the rest of the window is never read (usually most of it).
        seen = [0, after_id]  # rows read, last id read

        def candidates(rows: sqlite3.Cursor, seen: list[int] = seen) -> Iterator[LeaseCandidate]:
            for row in rows:
                seen[0] += 1
                seen[1] = row[0]
                yield LeaseCandidate(row[0], row[1], _STATUS[row[2]], row[3])

        planner.feed(candidates(cursor))
        cursor.close()
        if planner.full or seen[0] < window:
            break
        after_id = seen[1]
    leased: list[StoredMessage] = []
    for ids in chunked(planner.chosen, ID_CHUNK):
        rows = conn.execute(
            "UPDATE messages SET status = 'processing', attempts = attempts + 1, updated_at = ?"  # noqa: S608
            f" WHERE id IN ({_placeholders(len(ids))}) RETURNING {_MESSAGE_COLUMNS}",
            (now, *ids),
        ).fetchall()
        leased.extend(_to_message(r) for r in rows)
    return sorted(leased, key=lambda m: m.id)


def _require_one(cursor: sqlite3.Cursor, message_id: int) -> None:
    if cursor.rowcount != 1:
        raise KeyError(message_id)


def _mark_sink_done(conn: sqlite3.Connection, message_id: int, sink: str, now: float) -> None:
    row = conn.execute("SELECT sinks_done FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        raise KeyError(message_id)
    sinks = decode_sinks(row[0]) | {sink}
    conn.execute(
        "UPDATE messages SET sinks_done = ?, updated_at = ? WHERE id = ?",
        (encode_sinks(sinks), now, message_id),
    )


def _complete(conn: sqlite3.Connection, message_id: int, status: Status, now: float) -> None:
    cursor = conn.execute(
        "UPDATE messages SET status = ?, next_attempt_at = NULL, updated_at = ? WHERE id = ?",
        (status.value, now, message_id),
    )
    _require_one(cursor, message_id)


def _complete_many(conn: sqlite3.Connection, message_ids: Sequence[int], status: Status, now: float) -> None:
    expected = len(set(message_ids))
    changed = 0
    for ids in chunked(sorted(set(message_ids)), ID_CHUNK):
        cursor = conn.execute(
            "UPDATE messages SET status = ?, next_attempt_at = NULL, updated_at = ?"  # noqa: S608
            f" WHERE id IN ({_placeholders(len(ids))})",
            (status.value, now, *ids),
        )
        changed += cursor.rowcount
    if changed != expected:
        raise KeyError(f"{expected - changed} of {expected} messages to complete do not exist")


def _unlease(conn: sqlite3.Connection, message_ids: Sequence[int], now: float) -> None:
    for ids in chunked(message_ids, ID_CHUNK):
        conn.execute(
            "UPDATE messages SET status = 'received', attempts = MAX(attempts - 1, 0), updated_at = ?"  # noqa: S608
            f" WHERE id IN ({_placeholders(len(ids))}) AND status = 'processing'",
            (now, *ids),
        )


def _schedule_retry(conn: sqlite3.Connection, message_id: int, error: str, at: float, now: float) -> None:
    cursor = conn.execute(
        "UPDATE messages SET status = 'retry', last_error = ?, next_attempt_at = ?, updated_at = ?"
        " WHERE id = ?",
        (error, at, now, message_id),
    )
    _require_one(cursor, message_id)


def _dead_letter(conn: sqlite3.Connection, message_id: int, reason: str, now: float) -> None:
    cursor = conn.execute(
        "UPDATE messages SET status = 'dead', last_error = ?, next_attempt_at = NULL, updated_at = ?"
        " WHERE id = ?",
        (reason, now, message_id),
    )
    _require_one(cursor, message_id)


def _recover(conn: sqlite3.Connection, now: float) -> int:
    cursor = conn.execute(
        "UPDATE messages SET status = 'received', updated_at = ? WHERE status = 'processing'", (now,)
    )
    return cursor.rowcount


def _requeue(conn: sqlite3.Connection, message_ids: Sequence[int], now: float) -> int:
    count = 0
    for ids in chunked(message_ids, ID_CHUNK):
        cursor = conn.execute(
            "UPDATE messages SET status = 'received', attempts = 0, last_error = NULL,"  # noqa: S608
            f" next_attempt_at = NULL, sinks_done = CASE WHEN {_KEEP_SINKS_SQL} THEN sinks_done ELSE '' END,"
            f" updated_at = ? WHERE id IN ({_placeholders(len(ids))}) AND {_REQUEUEABLE_SQL}",
            (now, *ids),
        )
        count += cursor.rowcount
    return count


def _release(conn: sqlite3.Connection, message_ids: Sequence[int], now: float) -> int:
    count = 0
    for ids in chunked(message_ids, ID_CHUNK):
        cursor = conn.execute(
            "UPDATE messages SET status = 'released', updated_at = ?"  # noqa: S608
            f" WHERE id IN ({_placeholders(len(ids))}) AND status = 'dead'",
            (now, *ids),
        )
        count += cursor.rowcount
    return count


def _prune_chunk(conn: sqlite3.Connection, finished_before: float, channel: str | None = None) -> int:
    cursor = conn.execute(
        "DELETE FROM messages WHERE id IN (SELECT id FROM messages INDEXED BY ix_messages_finished"  # noqa: S608
        f" WHERE {_FINISHED_SQL} AND updated_at < ? AND (? IS NULL OR channel = ?) LIMIT ?)",
        (finished_before, channel, channel, PRUNE_CHUNK),
    )
    return cursor.rowcount


def _quarantine(
    conn: sqlite3.Connection, *, channel: str, raw: bytes, reason: str, received_at: float, peer: str
) -> int:
    cursor = conn.execute(
        "INSERT INTO quarantine (channel, raw, reason, received_at, peer) VALUES (?, ?, ?, ?, ?)",
        (channel, raw, reason, received_at, peer),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _prune_quarantine_chunk(conn: sqlite3.Connection, received_before: float) -> int:
    cursor = conn.execute(
        "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine WHERE received_at < ? LIMIT ?)",
        (received_before, PRUNE_CHUNK),
    )
    return cursor.rowcount


# ---------------------------------------------------------------- read jobs (reader thread)


def _get(conn: sqlite3.Connection, message_id: int) -> StoredMessage | None:
    row = conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()  # noqa: S608
    return None if row is None else _to_message(row)


def _query(conn: sqlite3.Connection, q: MessageQuery) -> list[StoredMessage]:
    """Pick ids with index-ordered scans (never a sort of a whole status), then load rows."""
    limit = clamp_limit(q.limit)
    if limit == 0 or (q.statuses is not None and not q.statuses):
        return []
    where = ["id > ?"]
    params: list[Any] = [q.after_id]
    if q.since is not None:
        where.append("received_at >= ?")
        params.append(q.since)
    if q.until is not None:
        where.append("received_at < ?")
        params.append(q.until)
    if q.control_id is not None or (q.channel is None and q.statuses is None):
        # One scan in id order: along the control id index, or along the table itself.
        source = "messages"
        if q.control_id is not None:
            source = "messages INDEXED BY ix_messages_control_id"
            where.append("control_id = ?")
            params.append(q.control_id)
        if q.channel is not None:
            where.append("channel = ?")
            params.append(q.channel)
        if q.statuses is not None:
            where.append(f"status IN ({_placeholders(len(q.statuses))})")
            params.extend(s.value for s in q.statuses)
        ids = [
            r[0]
            for r in conn.execute(
                f"SELECT id FROM {source} WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",  # noqa: S608
                (*params, limit),
            )
        ]
    else:
        # One ordered scan of ix_messages_status per status, merged: a page of a channel
        # costs at most len(statuses) * limit index entries, however large the table.
        if q.channel is not None:
            where.append("channel = ?")
            params.append(q.channel)
        per_status = []
        for status in sorted(q.statuses if q.statuses is not None else Status):
            rows = conn.execute(
                f"SELECT id FROM messages WHERE status = ? AND {' AND '.join(where)}"  # noqa: S608
                " ORDER BY id LIMIT ?",
                (status.value, *params, limit),
            ).fetchall()
            per_status.append([r[0] for r in rows])
        ids = list(heapq.merge(*per_status))[:limit]
    if not ids:
        return []
    rows = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id IN ({_placeholders(len(ids))}) ORDER BY id",  # noqa: S608
        ids,
    ).fetchall()
    return [_to_message(r) for r in rows]


def _stats(conn: sqlite3.Connection, channel: str) -> QueueStats:
    conn.execute("BEGIN")  # one snapshot for the three numbers
    try:
        pending = conn.execute(
            f"SELECT COUNT(*) FROM messages WHERE channel = ? AND {_UNFINISHED_SQL}", (channel,)  # noqa: S608
        ).fetchone()[0]
        oldest = conn.execute(
            "SELECT received_at FROM messages INDEXED BY ix_messages_unfinished"  # noqa: S608
            f" WHERE channel = ? AND {_UNFINISHED_SQL} ORDER BY id LIMIT 1",
            (channel,),
        ).fetchone()
        dead = conn.execute(
            "SELECT COUNT(*) FROM messages WHERE status = 'dead' AND channel = ?", (channel,)
        ).fetchone()[0]
    finally:
        conn.execute("COMMIT")
    return QueueStats(pending=pending, oldest_pending_at=None if oldest is None else oldest[0], dead=dead)


def _next_due(conn: sqlite3.Connection, channel: str, now: float) -> float | None:
    received = conn.execute(
        "SELECT 1 FROM messages WHERE status = 'received' AND channel = ? LIMIT 1", (channel,)
    ).fetchone()
    if received is not None:
        return now
    row = conn.execute(
        "SELECT MIN(next_attempt_at) FROM messages WHERE channel = ? AND status = 'retry'", (channel,)
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def _list_quarantine(
    conn: sqlite3.Connection, channel: str | None, after_id: int, limit: int
) -> list[QuarantinedFrame]:
    where = "id > ?"
    params: list[Any] = [after_id]
    if channel is not None:
        where += " AND channel = ?"
        params.append(channel)
    rows = conn.execute(
        f"SELECT id, channel, raw, reason, received_at, peer FROM quarantine WHERE {where}"  # noqa: S608
        " ORDER BY id LIMIT ?",
        (*params, clamp_limit(limit)),
    ).fetchall()
    return [QuarantinedFrame(r[0], r[1], bytes(r[2]), r[3], r[4], r[5]) for r in rows]


def _diagnostics(conn: sqlite3.Connection) -> dict[str, object]:
    return {
        "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
        "synchronous": conn.execute("PRAGMA synchronous").fetchone()[0],
        "user_version": conn.execute("PRAGMA user_version").fetchone()[0],
        "page_size": conn.execute("PRAGMA page_size").fetchone()[0],
        "max_page_count": conn.execute("PRAGMA max_page_count").fetchone()[0],
    }


# ---------------------------------------------------------------- the store


class SQLiteStore:
    """The Store protocol (engine/types.py) on one SQLite file; single engine instance.

    `max_batch` bounds the messages one group commit carries. `max_pending` bounds the
    queued writes: beyond it `ingest` fails fast with StoreUnavailableError (AR 207,
    backpressure instead of memory growth, DESIGN.md §5.3). `max_size_bytes` caps the
    database file (PRAGMA max_page_count): a full store refuses new messages rather than
    filling the disk. `clock` stamps updated_at (tests pass a fake).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_batch: int = 512,
        busy_timeout_s: float = 5.0,
        max_pending: int = 10_000,
        max_size_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if str(path) == ":memory:" or str(path).startswith("file:"):
            raise ValueError("SQLiteStore needs a file path (two connections must see one database)")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._max_size_bytes = max_size_bytes
        self._clock = clock
        self._writer = _ConnectionThread(
            "hl7engine-store-writer", self._connect_writer,
            transactional=True, max_batch=max_batch, max_pending=max_pending,
        )
        self._reader = _ConnectionThread(
            "hl7engine-store-reader", self._connect_reader,
            transactional=False, max_batch=max_batch, max_pending=max_pending,
        )
        self._open = False

    # -- lifecycle

    async def open(self) -> None:
        """Create or migrate the database and start the writer and reader threads."""
        if self._open:
            return
        await self._writer.start()  # first: it creates the file and the schema
        try:
            await self._reader.start()
        except BaseException:
            await self._writer.stop()
            raise
        self._open = True

    async def close(self) -> None:
        """Finish queued work (every write already submitted commits), then close."""
        if not self._open:
            return
        self._open = False
        await self._reader.stop()
        await self._writer.stop()

    def _connect_writer(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreUnavailableError(f"store could not enable WAL (journal_mode is {mode})")
            conn.execute("PRAGMA synchronous = FULL")  # fsync the WAL on every COMMIT
            migrate(conn)
            if self._max_size_bytes is not None:
                page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                pages = max(1, self._max_size_bytes // page_size)
                conn.execute(f"PRAGMA max_page_count = {int(pages)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")
        return conn

    # -- custody

    async def ingest(self, items: Sequence[Inbound]) -> list[IngestResult]:
        """Store `items` in one transaction; returns after it is fsync'd (DESIGN.md §5.1)."""
        if not items:
            return []
        batch = tuple(items)
        now = self._clock()
        return await self._writer.submit("ingest", lambda conn: _ingest(conn, batch, now), len(batch),
                                         items=batch, now=now)

    async def quarantine(
        self, channel: str, raw: bytes, reason: str, received_at: float, peer: str = ""
    ) -> int:
        """Keep a frame refused before custody (DESIGN.md §4); durable when it returns."""
        return await self._writer.submit(
            "quarantine", lambda conn: _quarantine(
                conn, channel=channel, raw=raw, reason=reason, received_at=received_at, peer=peer
            )
        )

    async def quarantined(
        self, channel: str | None = None, after_id: int = 0, limit: int = 100
    ) -> list[QuarantinedFrame]:
        """Quarantined frames, oldest first, keyset-paginated by id (engine/admin.py reads it)."""
        return await self._reader.submit(
            "quarantined", lambda conn: _list_quarantine(conn, channel, after_id, limit)
        )

    async def prune_quarantine(self, received_before: float) -> int:
        """Delete quarantined frames received before the given time, in chunks."""
        return await self._prune_in_chunks(
            "prune_quarantine", lambda conn: _prune_quarantine_chunk(conn, received_before)
        )

    # -- work

    async def lease(self, channel: str, limit: int, now: float) -> list[StoredMessage]:
        """Due messages oldest first, set to processing (attempts + 1), per-key order kept."""
        return await self._writer.submit("lease", lambda conn: _lease(conn, channel, limit, now))

    async def next_due(self, channel: str) -> float | None:
        """Now if anything is received; else the earliest retry time; None if idle."""
        now = self._clock()
        return await self._reader.submit("next_due", lambda conn: _next_due(conn, channel, now))

    async def mark_sink_done(self, message_id: int, sink: str) -> None:
        now = self._clock()
        await self._writer.submit("mark_sink_done", lambda conn: _mark_sink_done(conn, message_id, sink, now))

    async def complete(self, message_id: int, status: Status = Status.DONE) -> None:
        check_completion(status)
        now = self._clock()
        await self._writer.submit("complete", lambda conn: _complete(conn, message_id, status, now))

    async def complete_many(self, message_ids: Sequence[int], status: Status = Status.DONE) -> None:
        """`complete` for a whole batch in one statement (the runner's common case)."""
        check_completion(status)
        if not message_ids:
            return
        now = self._clock()
        ids = tuple(message_ids)
        await self._writer.submit("complete", lambda conn: _complete_many(conn, ids, status, now))

    async def unlease(self, message_ids: Sequence[int]) -> None:
        """Give back leased messages without counting an attempt (processing -> received)."""
        if not message_ids:
            return
        ids, now = tuple(message_ids), self._clock()
        await self._writer.submit("unlease", lambda conn: _unlease(conn, ids, now))

    async def schedule_retry(self, message_id: int, error: str, next_attempt_at: float) -> None:
        now = self._clock()
        await self._writer.submit(
            "schedule_retry", lambda conn: _schedule_retry(conn, message_id, error, next_attempt_at, now)
        )

    async def dead_letter(self, message_id: int, reason: str) -> None:
        now = self._clock()
        await self._writer.submit("dead_letter", lambda conn: _dead_letter(conn, message_id, reason, now))

    async def recover(self) -> int:
        """After a crash: every processing message back to received, in one UPDATE."""
        now = self._clock()
        return await self._writer.submit("recover", lambda conn: _recover(conn, now))

    # -- operator

    async def get(self, message_id: int) -> StoredMessage | None:
        return await self._reader.submit("get", lambda conn: _get(conn, message_id))

    async def query(self, q: MessageQuery) -> list[StoredMessage]:
        """Keyset-paginated by id (ascending); at most MAX_QUERY_LIMIT rows per page."""
        return await self._reader.submit("query", lambda conn: _query(conn, q))

    async def requeue(self, message_ids: Sequence[int]) -> int:
        """Replay dead/released/done/filtered messages; returns how many were requeued."""
        if not message_ids:
            return 0
        ids, now = tuple(message_ids), self._clock()
        return await self._writer.submit("requeue", lambda conn: _requeue(conn, ids, now))

    async def release(self, message_ids: Sequence[int]) -> int:
        """Dead -> released (the operator gives up on them); returns how many."""
        if not message_ids:
            return 0
        ids, now = tuple(message_ids), self._clock()
        return await self._writer.submit("release", lambda conn: _release(conn, ids, now))

    async def prune(self, finished_before: float, channel: str | None = None) -> int:
        """Delete done/filtered/released rows last updated before the given time (one channel's, or all)."""
        return await self._prune_in_chunks("prune", lambda conn: _prune_chunk(conn, finished_before, channel))

    async def stats(self, channel: str) -> QueueStats:
        return await self._reader.submit("stats", lambda conn: _stats(conn, channel))

    async def diagnostics(self) -> dict[str, object]:
        """The writer connection's settings (journal mode, synchronous, schema version)."""
        return await self._writer.submit("diagnostics", _diagnostics)

    # -- raw rows, for re-encryption in place (engine/store/encrypted.py RawAccess)

    async def message_raw_page(self, after_id: int, limit: int) -> list[tuple[int, str, str, str, str, bytes]]:
        """(id, channel, sender, control_id, content_hash, raw) of messages after `after_id`, by id."""
        sql = ("SELECT id, channel, sender, control_id, content_hash, raw FROM messages"
               " WHERE id > ? ORDER BY id LIMIT ?")
        rows = await self._reader.submit(
            "raw_page", lambda conn: conn.execute(sql, (after_id, clamp_limit(limit))).fetchall())
        return [(r[0], r[1], r[2], r[3], r[4], bytes(r[5])) for r in rows]

    async def quarantine_raw_page(self, after_id: int, limit: int) -> list[tuple[int, str, str, bytes]]:
        """(id, channel, reason, raw) of quarantined frames after `after_id`, by id."""
        sql = "SELECT id, channel, reason, raw FROM quarantine WHERE id > ? ORDER BY id LIMIT ?"
        rows = await self._reader.submit(
            "raw_page", lambda conn: conn.execute(sql, (after_id, clamp_limit(limit))).fetchall())
        return [(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    async def replace_raw(self, table: str, changes: Sequence[tuple[int, bytes, bytes]]) -> int:
        """For each (id, old, new): raw = new where raw is still old; one transaction; rows changed."""
        sql = {"messages": "UPDATE messages SET raw = ? WHERE id = ? AND raw = ?",
               "quarantine": "UPDATE quarantine SET raw = ? WHERE id = ? AND raw = ?"}[table]
        batch = [(new, row_id, old) for row_id, old, new in changes]
        if not batch:
            return 0
        return await self._writer.submit("replace_raw", lambda conn: sum(
            conn.execute(sql, params).rowcount for params in batch))

    async def _prune_in_chunks(self, operation: str, chunk: Callable[[sqlite3.Connection], int]) -> int:
        # One job per chunk, so ingests queued meanwhile commit between chunks.
        total = 0
        while True:
            deleted = await self._writer.submit(operation, chunk)
            total += deleted
            if deleted < PRUNE_CHUNK:
                return total


def _conforms(store: SQLiteStore) -> Store:
    """Never called: makes mypy prove SQLiteStore satisfies the Store protocol."""
    return store
