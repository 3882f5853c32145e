"""Encryption at rest as a Store wrapper: `EncryptedStore(inner, keyring)` works on any Store.

Only message bytes are sealed (AES-256-GCM, engine/store/crypto.py): the raw message of
each row and the raw bytes of each quarantined frame. What stays in clear is what the
store needs to index and the operator API lists, none of it message content beyond the
header: channel, sender (MSH-3|MSH-4), control id (MSH-10), message type, charset, the
hashed ordering key, the peer address, timestamps, status and PHI-free error reasons,
the stored ACK (which echoes only MSH-3..6, MSH-10 and engine text) and the content hash.

Dedup keeps working unchanged: intake computes `content_hash` (SHA-256 of the whole
message as received) from the plaintext before the wrapper seals it, and the inner
store compares hashes, never ciphertexts (which differ on every seal).

Reads decrypt with whichever configured key a row names, so rotating the active key
needs no downtime; `rekey` then moves old rows to the active key in pages. A row that
cannot be decrypted (its key id is not configured, or it was altered) never stops the
engine: `lease` dead-letters it with a reason naming the key id, `get` raises a clear
EncryptionError (a StoreUnavailableError), and listings (`query`, `quarantined`) return
it with empty bytes so the rest of the page stays usable.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import structlog

from engine.config.models import EncryptionConfig, EngineConfig
from engine.obs import metrics
from engine.store.crypto import EncryptionError, Keyring, decode_key, is_sealed, key_id_of
from engine.types import (
    Inbound,
    IngestResult,
    MessageQuery,
    QuarantinedFrame,
    QueueStats,
    Status,
    Store,
    StoredMessage,
)

log = structlog.get_logger("hl7engine.store.encrypted")

Table = Literal["messages", "quarantine"]
TABLES: tuple[Table, ...] = ("messages", "quarantine")
#: Rows per rekey page: a page of typical 1-10 KB messages stays a few MB in memory.
REKEY_PAGE = 200
#: Failed rows a rekey report lists by id (the count is always complete).
MAX_REPORTED_FAILURES = 100


def message_context(channel: str, sender: str, control_id: str) -> tuple[str, ...]:
    """Associated data of a stored message: the row it belongs to (fields every read returns)."""
    return ("message", channel, sender, control_id)


def quarantine_context(channel: str, reason: str) -> tuple[str, ...]:
    """Associated data of a quarantined frame."""
    return ("quarantine", channel, reason)


@dataclass(frozen=True, slots=True)
class RawRow:
    """One row's stored bytes and the context they are sealed for (re-encryption only)."""

    table: Table
    id: int
    context: tuple[str, ...]
    raw: bytes
    content_hash: str | None = None  # messages: the dedup hash of the plaintext


@runtime_checkable
class RawAccess(Protocol):
    """Extension methods an inner store offers so its rows can be re-encrypted in place.

    Pages are by ascending id after `after_id`. `replace_raw` sets raw = new only where
    raw is still old (compare-and-swap) for each (id, old, new), in one transaction, and
    returns how many rows changed. SQLiteStore implements them.
    """

    async def message_raw_page(
        self, after_id: int, limit: int
    ) -> list[tuple[int, str, str, str, str, bytes]]: ...  # id, channel, sender, control_id, hash, raw
    async def quarantine_raw_page(
        self, after_id: int, limit: int
    ) -> list[tuple[int, str, str, bytes]]: ...  # id, channel, reason, raw
    async def replace_raw(self, table: str, changes: Sequence[tuple[int, bytes, bytes]]) -> int: ...


@dataclass(slots=True)
class RekeyReport:
    """What `rekey` did. `failed` lists (table, id, reason) for the first failures."""

    examined: int = 0
    current: int = 0  # already sealed under the active key
    rekeyed: int = 0  # re-sealed (or sealed for the first time) under the active key
    failures: int = 0
    failed: list[tuple[str, int, str]] = field(default_factory=list)
    by_key: dict[str, int] = field(default_factory=dict)  # rows found per key id ("plaintext")

    def fail(self, table: str, row_id: int, reason: str) -> None:
        self.failures += 1
        if len(self.failed) < MAX_REPORTED_FAILURES:
            self.failed.append((table, row_id, reason))


class EncryptedStore:
    """Seals raw bytes on the way in, opens them on the way out; delegates everything else."""

    def __init__(self, inner: Store, keyring: Keyring) -> None:
        self.inner = inner
        self.keyring = keyring
        self._decrypt_errors = metrics.STORE_ERRORS.labels("decrypt")

    # -- lifecycle

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    # -- custody

    async def ingest(self, items: Sequence[Inbound]) -> list[IngestResult]:
        seal = self.keyring.seal
        sealed = [
            dataclasses.replace(item, raw=seal(item.raw, message_context(item.channel, item.sender, item.control_id)))
            for item in items
        ]
        return await self.inner.ingest(sealed)

    async def quarantine(self, channel: str, raw: bytes, reason: str, received_at: float, peer: str = "") -> int:
        sealed = self.keyring.seal(raw, quarantine_context(channel, reason))
        return await self.inner.quarantine(channel, sealed, reason, received_at, peer)

    async def quarantined(
        self, channel: str | None = None, after_id: int = 0, limit: int = 100
    ) -> list[QuarantinedFrame]:
        frames = await self.inner.quarantined(channel, after_id, limit)
        return [self._open_frame(f) for f in frames]

    async def prune_quarantine(self, received_before: float) -> int:
        return await self.inner.prune_quarantine(received_before)

    # -- work

    async def lease(self, channel: str, limit: int, now: float) -> list[StoredMessage]:
        """Leased messages, decrypted; one that cannot be decrypted is dead-lettered with a
        reason naming its key id (operators add the key and replay it), never raised."""
        leased = await self.inner.lease(channel, limit, now)
        opened: list[StoredMessage] = []
        for message in leased:
            try:
                opened.append(self._open_message(message))
            except EncryptionError as exc:
                self._count_failure("lease", message.channel, message.id, exc)
                await self.inner.dead_letter(message.id, str(exc))
        return opened

    async def next_due(self, channel: str) -> float | None:
        return await self.inner.next_due(channel)

    async def mark_sink_done(self, message_id: int, sink: str) -> None:
        await self.inner.mark_sink_done(message_id, sink)

    async def complete(self, message_id: int, status: Status = Status.DONE) -> None:
        await self.inner.complete(message_id, status)

    async def unlease(self, message_ids: Sequence[int]) -> None:
        await self.inner.unlease(message_ids)

    async def schedule_retry(self, message_id: int, error: str, next_attempt_at: float) -> None:
        await self.inner.schedule_retry(message_id, error, next_attempt_at)

    async def dead_letter(self, message_id: int, reason: str) -> None:
        await self.inner.dead_letter(message_id, reason)

    async def recover(self) -> int:
        return await self.inner.recover()

    # -- operator

    async def get(self, message_id: int) -> StoredMessage | None:
        """The message decrypted; EncryptionError (naming the key id) when it cannot be."""
        message = await self.inner.get(message_id)
        if message is None:
            return None
        try:
            return self._open_message(message)
        except EncryptionError as exc:
            self._count_failure("get", message.channel, message.id, exc)
            raise EncryptionError(f"message {message.id}: {exc}") from exc

    async def query(self, q: MessageQuery) -> list[StoredMessage]:
        """A page of messages; a row that cannot be decrypted comes back with empty `raw`
        (and is logged), so listing, replay and release keep working while a key is missing."""
        rows = await self.inner.query(q)
        out: list[StoredMessage] = []
        for message in rows:
            try:
                out.append(self._open_message(message))
            except EncryptionError as exc:
                self._count_failure("query", message.channel, message.id, exc)
                out.append(dataclasses.replace(message, raw=b""))
        return out

    async def requeue(self, message_ids: Sequence[int]) -> int:
        return await self.inner.requeue(message_ids)

    async def release(self, message_ids: Sequence[int]) -> int:
        return await self.inner.release(message_ids)

    async def prune(self, finished_before: float, channel: str | None = None) -> int:
        return await self.inner.prune(finished_before, channel)

    async def stats(self, channel: str) -> QueueStats:
        return await self.inner.stats(channel)

    async def diagnostics(self) -> dict[str, object]:
        """The inner store's diagnostics (when it has any) plus the active key id."""
        inner: Callable[[], Awaitable[dict[str, object]]] | None = getattr(self.inner, "diagnostics", None)
        found = dict(await inner()) if inner is not None else {}
        found["encryption_active_key"] = self.keyring.active
        return found

    # -- re-encryption

    def raw_access(self) -> RawAccess:
        """The inner store's raw-row extension, or EncryptionError when it has none."""
        if not isinstance(self.inner, RawAccess):
            raise EncryptionError(f"{type(self.inner).__name__} cannot re-encrypt rows in place "
                                  "(no message_raw_page/quarantine_raw_page/replace_raw)")
        return self.inner

    async def iter_raw(self, table: Table, page_size: int = REKEY_PAGE) -> AsyncIterator[list[RawRow]]:
        """Every row of `table` as stored (sealed or not), one page at a time, by id."""
        access = self.raw_access()
        after_id = 0
        while True:
            page: list[RawRow]
            if table == "messages":
                rows = await access.message_raw_page(after_id, page_size)
                page = [RawRow(table, r[0], message_context(r[1], r[2], r[3]), r[5], r[4]) for r in rows]
            else:
                frames = await access.quarantine_raw_page(after_id, page_size)
                page = [RawRow(table, f[0], quarantine_context(f[1], f[2]), f[3]) for f in frames]
            if not page:
                return
            yield page
            if len(page) < page_size:
                return
            after_id = page[-1].id

    async def update_raw(self, table: Table, changes: Sequence[tuple[int, bytes, bytes]]) -> int:
        """Replace rows' raw bytes (id, old, new) where they are still `old`."""
        if not changes:
            return 0
        return await self.raw_access().replace_raw(table, changes)

    async def rekey(
        self,
        *,
        page_size: int = REKEY_PAGE,
        dry_run: bool = False,
        progress: Callable[[RekeyReport], None] | None = None,
    ) -> RekeyReport:
        """Re-seal every row not under the active key (rows written before encryption was
        enabled included), page by page. Safe while the engine runs: rows are replaced
        only if unchanged since read, and readers accept every configured key meanwhile."""
        report = RekeyReport()
        active = self.keyring.active
        for table in TABLES:
            async for page in self.iter_raw(table, page_size):
                changes: list[tuple[int, bytes, bytes]] = []
                for row in page:
                    report.examined += 1
                    key_id = self._key_id(row, report)
                    if key_id is None:
                        continue
                    report.by_key[key_id] = report.by_key.get(key_id, 0) + 1
                    if key_id == active:
                        report.current += 1
                        continue
                    resealed = self._reseal(row, report)
                    if resealed is not None:
                        changes.append((row.id, row.raw, resealed))
                if dry_run:
                    report.rekeyed += len(changes)
                else:
                    report.rekeyed += await self.update_raw(table, changes)
                if progress is not None:
                    progress(report)
        return report

    def _key_id(self, row: RawRow, report: RekeyReport) -> str | None:
        try:
            return key_id_of(row.raw) or "plaintext"
        except EncryptionError as exc:
            report.fail(row.table, row.id, str(exc))
            return None

    def _reseal(self, row: RawRow, report: RekeyReport) -> bytes | None:
        try:
            plaintext = self.keyring.open_or_plain(row.raw, row.context)
        except EncryptionError as exc:
            report.fail(row.table, row.id, str(exc))
            return None
        if row.content_hash is not None and hashlib.sha256(plaintext).hexdigest() != row.content_hash:
            # Authentic ciphertext, but of another row with the same channel, sender and control id.
            report.fail(row.table, row.id, "cannot decrypt: content does not match the row's content hash")
            return None
        return self.keyring.seal(plaintext, row.context)

    # -- helpers

    def _open_message(self, message: StoredMessage) -> StoredMessage:
        if not is_sealed(message.raw):
            return message  # written before encryption was enabled; `rekey` seals it
        context = message_context(message.channel, message.sender, message.control_id)
        return dataclasses.replace(message, raw=self.keyring.open(message.raw, context))

    def _open_frame(self, frame: QuarantinedFrame) -> QuarantinedFrame:
        try:
            raw = self.keyring.open_or_plain(frame.raw, quarantine_context(frame.channel, frame.reason))
        except EncryptionError as exc:
            self._count_failure("quarantined", frame.channel, frame.id, exc)
            return dataclasses.replace(frame, raw=b"")
        return dataclasses.replace(frame, raw=raw)

    def _count_failure(self, operation: str, channel: str, row_id: int, exc: EncryptionError) -> None:
        self._decrypt_errors.inc()
        log.error("decrypt_failed", operation=operation, channel=channel, row_id=row_id,
                  key_id=getattr(exc, "key_id", None), error=str(exc))


def keyring_from_config(config: EncryptionConfig) -> Keyring:
    """Read every configured key now (ConfigError naming the key id when one is missing or bad)."""
    keys = {key_id: decode_key(ref.reveal(), key_id) for key_id, ref in config.keys.items()}
    return Keyring(keys, config.active)


def wrap_if_configured(store: Store, config: EngineConfig) -> Store:
    """`store` wrapped in EncryptedStore when the config has an `encryption:` section."""
    if config.encryption is None:
        return store
    return EncryptedStore(store, keyring_from_config(config.encryption))


def _conforms(store: EncryptedStore) -> Store:
    """Never called: makes mypy prove EncryptedStore satisfies the Store protocol."""
    return store
