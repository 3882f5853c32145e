"""The seams between the engine's parts.

Custody (listener -> intake -> store -> ACK) and work (runner -> stages -> sinks)
meet only through the types here. Each protocol states its contract exactly;
implementations must not be weaker.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from engine.jsonbytes import compact_json


class Status(enum.StrEnum):
    """Life of a stored message.

    received -> processing -> done | filtered
                           -> retry -> processing ...
                           -> dead  -> (operator) received (replay) | released
    """

    RECEIVED = "received"
    PROCESSING = "processing"
    RETRY = "retry"
    DONE = "done"
    FILTERED = "filtered"
    DEAD = "dead"
    RELEASED = "released"


#: States a message can leave only by being worked on; never pruned.
UNFINISHED: frozenset[Status] = frozenset({Status.RECEIVED, Status.PROCESSING, Status.RETRY})


# ---------------------------------------------------------------- errors


class EngineError(Exception):
    """Base of every error the engine raises on purpose.

    Messages must never contain PHI: they go to logs, metrics and other systems.
    """


class ConfigError(EngineError):
    """A configuration is invalid. `findings` holds `file:line:col: path: message` lines."""

    def __init__(self, findings: Sequence[str]) -> None:
        super().__init__("\n".join(findings))
        self.findings = list(findings)


class TransientError(EngineError):
    """Worth retrying later (timeouts, 5xx, connection refused, 429).

    `retry_after` (seconds) is a hint from the peer, e.g. an HTTP Retry-After header.
    `ambiguous` marks a failure after the request may have reached the peer, safe to
    retry only because sinks are idempotent.
    """

    def __init__(self, reason: str, *, retry_after: float | None = None, ambiguous: bool = False) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.ambiguous = ambiguous


class PermanentError(EngineError):
    """Retrying will not help (a 4xx from a FHIR server, a message that cannot be mapped)."""


class MappingError(PermanentError):
    """A message cannot be converted. Names the segment and field, never the value."""

    def __init__(self, reason: str, *, segment: str | None = None, field: str | None = None) -> None:
        where = "-".join(p for p in (segment, field) if p)
        super().__init__(f"{where}: {reason}" if where else reason)
        self.segment = segment
        self.field = field


class StoreUnavailableError(EngineError):
    """The store cannot take the message now (disk full, database down, overload)."""


# ---------------------------------------------------------------- custody


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """The MSH fields the custody path needs; everything else waits for the work path.

    Values are the raw field text (components still joined by the component separator),
    except where a name says otherwise.
    """

    field_sep: str
    encoding_chars: str  # MSH-2 exactly as received (4 or 5 characters)
    sending_application: str  # MSH-3
    sending_facility: str  # MSH-4
    receiving_application: str  # MSH-5
    receiving_facility: str  # MSH-6
    message_type: str  # MSH-9 whole, e.g. ADT^A01^ADT_A01
    message_code: str  # MSH-9.1, e.g. ADT
    trigger_event: str  # MSH-9.2, e.g. A01
    control_id: str  # MSH-10
    processing_id: str  # MSH-11
    version_id: str  # MSH-12 (first component)
    accept_ack_type: str  # MSH-15: AL | NE | ER | SU | ""
    app_ack_type: str  # MSH-16
    charset: str  # MSH-18 first repetition, e.g. "8859/1", "UNICODE UTF-8", ""

    @property
    def enhanced_mode(self) -> bool:
        """HL7 v2 ch. 2: enhanced acknowledgement mode when MSH-15 or MSH-16 is valued."""
        return bool(self.accept_ack_type or self.app_ack_type)


@dataclass(frozen=True, slots=True)
class Inbound:
    """One framed message on its way into the store."""

    channel: str
    raw: bytes  # the frame payload exactly as received
    received_at: float  # epoch seconds
    sender: str  # dedup key part: MSH-3 + "|" + MSH-4
    control_id: str  # MSH-10
    content_hash: str  # sha256 hex of raw
    message_type: str  # MSH-9 (not PHI)
    charset: str  # the Python codec the text was decoded with
    ack: bytes  # the positive ACK sent for it, stored so an exact resend replays it
    ordering_key: str = ""  # hashed; "" = the channel's single order
    channel_version: str = ""  # config hash of the channel when it was received
    peer: str = ""  # remote address (ip), not PHI


IngestOutcome = Literal["stored", "duplicate", "collision"]


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What the store did with one Inbound.

    stored: new message. duplicate: same sender + control id + content hash already
    stored; `ack` is the stored ACK to replay and nothing is processed twice.
    collision: same sender + control id, other content; stored as new and flagged.
    """

    message_id: int
    outcome: IngestOutcome
    ack: bytes


@dataclass(slots=True)
class StoredMessage:
    id: int
    channel: str
    raw: bytes
    received_at: float
    status: Status
    attempts: int
    sender: str
    control_id: str
    message_type: str
    charset: str
    ordering_key: str = ""
    last_error: str | None = None
    next_attempt_at: float | None = None
    sinks_done: frozenset[str] = frozenset()
    collision: bool = False
    channel_version: str = ""
    updated_at: float = 0.0

    def text(self) -> str:
        """The message text as intake decoded it (BOM and leading blanks dropped; never raises)."""
        from engine.hl7.decode import decode_message

        return decode_message(self.raw, fallback=self.charset or "utf-8").text


@dataclass(frozen=True, slots=True)
class QueueStats:
    pending: int  # received + retry + processing
    oldest_pending_at: float | None  # received_at of the oldest unfinished message
    dead: int


@dataclass(frozen=True, slots=True)
class MessageQuery:
    channel: str | None = None
    statuses: frozenset[Status] | None = None
    since: float | None = None  # received_at >= since
    until: float | None = None  # received_at < until
    control_id: str | None = None
    after_id: int = 0  # keyset pagination: id > after_id, ascending
    limit: int = 100


@dataclass(frozen=True, slots=True)
class QuarantinedFrame:
    """A frame refused before custody (no parsable MSH, unaccepted type), kept as received.

    DESIGN.md §4: such frames get AR/CR, are not processed, and their raw bytes are kept
    so an operator can see what the sender sent. `reason` is a fixed word chosen by the
    engine (e.g. `no_msh`, `unaccepted_type`), never message content.
    """

    id: int
    channel: str
    raw: bytes
    reason: str
    received_at: float
    peer: str


@runtime_checkable
class Store(Protocol):
    """Durable inbox. One contract test suite runs against every implementation.

    Invariants:
    - `ingest` returns only after every item is durable (fsync'd); one call is one
      transaction (group commit). The caller ACKs only after it returns.
    - `lease` hands each due message to one worker at a time, oldest first, and never
      hands out a message while an earlier message with the same ordering key is
      unfinished and not in this lease (per-key order).
    - Nothing unfinished or dead is ever pruned.
    """

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ingest(self, items: Sequence[Inbound]) -> list[IngestResult]: ...
    async def lease(self, channel: str, limit: int, now: float) -> list[StoredMessage]: ...
    async def next_due(self, channel: str) -> float | None: ...
    async def mark_sink_done(self, message_id: int, sink: str) -> None: ...
    async def complete(self, message_id: int, status: Status = Status.DONE) -> None: ...
    async def unlease(self, message_ids: Sequence[int]) -> None: ...
    async def schedule_retry(self, message_id: int, error: str, next_attempt_at: float) -> None: ...
    async def dead_letter(self, message_id: int, reason: str) -> None: ...
    async def recover(self) -> int: ...
    async def get(self, message_id: int) -> StoredMessage | None: ...
    async def query(self, q: MessageQuery) -> list[StoredMessage]: ...
    async def requeue(self, message_ids: Sequence[int]) -> int: ...
    async def release(self, message_ids: Sequence[int]) -> int: ...
    async def prune(self, finished_before: float, channel: str | None = None) -> int: ...
    async def stats(self, channel: str) -> QueueStats: ...
    # Frames refused before custody (no MSH, unaccepted type): kept as received, never processed.
    async def quarantine(self, channel: str, raw: bytes, reason: str, received_at: float,
                         peer: str = "") -> int: ...
    async def quarantined(self, channel: str | None = None, after_id: int = 0,
                          limit: int = 100) -> list[QuarantinedFrame]: ...
    async def prune_quarantine(self, received_before: float) -> int: ...


# ---------------------------------------------------------------- work


class Exchange:
    """One message travelling through a channel's stages to its sinks.

    The FHIR output exists in two forms, each made on first use: `output` (a dict, what
    stages build) and `output_json()` (UTF-8 JSON, what sinks write). Stages that run in
    worker processes send back only the JSON, so the engine process never re-serialises.
    """

    __slots__ = ("_output", "_output_json", "_text", "message", "properties")

    def __init__(
        self,
        message: StoredMessage,
        text: str | None = None,
        output: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
        output_json: bytes | None = None,
    ) -> None:
        self.message = message
        self._text = text
        self.properties: dict[str, Any] = properties if properties is not None else {}
        self._output = output
        self._output_json = output_json

    @property
    def text(self) -> str:
        """The decoded message text, segment terminators as received.

        Decoded from the stored bytes on first use when not given: after stages ran in a
        worker process most sinks only write the output, and need no text at all.
        """
        if self._text is None:
            self._text = self.message.text()
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        self._text = value

    @property
    def output(self) -> dict[str, Any] | None:
        """The FHIR Bundle once a mapper ran (None before, or for non-FHIR pipelines)."""
        if self._output is None and self._output_json is not None:
            self._output = json.loads(self._output_json)
        return self._output

    @output.setter
    def output(self, value: dict[str, Any] | None) -> None:
        self._output = value
        self._output_json = None

    def output_json(self) -> bytes | None:
        """The output as compact UTF-8 JSON (one line: no raw newlines in JSON strings)."""
        if self._output_json is None and self._output is not None:
            self._output_json = compact_json(self._output)
        return self._output_json


class Stage(Protocol):
    """A filter or mapper. Pure: no I/O, no shared mutable state.

    Return the exchange (possibly changed) to pass it on; return None and the message
    is filtered (status `filtered`, no sink sees it). Raise MappingError/PermanentError
    for a message that can never pass; anything else unexpected is treated as
    permanent too (the runner dead-letters it with the exception type, never its text).
    """

    name: str

    def process(self, exchange: Exchange) -> Exchange | None: ...


class NotAttempted:
    """Marker in `Sink.deliver_many` results: the sink stopped before this exchange."""

    _instance: NotAttempted | None = None

    def __new__(cls) -> NotAttempted:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_ATTEMPTED"


NOT_ATTEMPTED = NotAttempted()

#: One result per exchange: None = delivered, an EngineError = failed, NOT_ATTEMPTED.
DeliveryResult = EngineError | NotAttempted | None


class Sink(Protocol):
    """A delivery target. The runner owns retries; a sink only classifies failures.

    Delivery must be idempotent: the runner may hand a message again that the sink
    already delivered (after a crash between delivery and the store update).

    `deliver_many` receives exchanges in the channel's order and returns one result per
    exchange, in the same order: None when delivered, a PermanentError (the message is
    dead-lettered; the sink goes on with the next one), or a TransientError (retried with
    backoff). At the first TransientError the sink stops: every later exchange gets
    NOT_ATTEMPTED, so nothing overtakes a message that will be retried. Any other
    exception escaping is treated by the runner as transient for the whole batch.
    """

    name: str

    async def start(self) -> None: ...
    async def deliver_many(self, exchanges: Sequence[Exchange]) -> list[DeliveryResult]: ...
    async def close(self) -> None: ...
