"""Custody: one framed message in, one acknowledgement out — only after a durable commit.

The path stays on the MSH segment: decode by MSH-18, read the header, check the channel
accepts it, hand it to the store (which group-commits everything that arrived in the
same moment), then answer. Mapping and delivery are the runner's job, unless the
channel asks for `ack: after_processing`.

Answers follow DESIGN.md §4 (HL7 v2 ch. 2, MLLP release 1; release 2 commit blocks as
an option).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from engine.config.models import AcceptConfig
from engine.hl7.ack import (
    COMMIT_ACK,
    COMMIT_NAK,
    AckError,
    ErrorCode,
    build_ack,
    is_ack,
    should_send_accept_ack,
)
from engine.hl7.decode import decode_message
from engine.hl7.fields import field_value
from engine.hl7.header import HeaderError, parse_header
from engine.mllp.server import ConnectionInfo
from engine.obs import metrics
from engine.pipeline.senders import QUARANTINE_REASON, SenderPolicy
from engine.pipeline.workers import apply_stages
from engine.types import (
    Inbound,
    MessageHeader,
    Stage,
    Status,
    Store,
    StoredMessage,
    StoreUnavailableError,
)

log = structlog.get_logger("hl7engine.intake")


_REFUSALS = {
    200: (ErrorCode.UNSUPPORTED_MESSAGE_TYPE, 9, 1, "Unsupported message type"),
    201: (ErrorCode.UNSUPPORTED_EVENT_CODE, 9, 2, "Unsupported event code"),
    202: (ErrorCode.UNSUPPORTED_PROCESSING_ID, 11, None, "Unsupported processing id"),
    203: (ErrorCode.UNSUPPORTED_VERSION_ID, 12, None, "Unsupported version id"),
}


@dataclass(frozen=True, slots=True)
class Acceptance:
    """What a channel accepts (its `accept:` config); the default accepts everything."""

    config: AcceptConfig = field(default_factory=AcceptConfig)

    def refusal(self, header: MessageHeader) -> AckError | None:
        """The ERR to answer with when this message is not accepted (table 0357)."""
        code = self.config.rejection(header.message_code.upper(), header.trigger_event.upper(),
                                     header.processing_id, header.version_id)
        if code is None:
            return None
        error_code, field_no, component, text = _REFUSALS[code]
        return AckError(error_code, segment="MSH", field=field_no, component=component, text=text)


@dataclass(slots=True)
class IntakeSettings:
    channel: str
    acceptance: Acceptance = field(default_factory=Acceptance)
    ack_mode: str = "on_commit"  # on_commit | after_processing
    mllp_release: int = 1
    charset_fallback: str = "utf-8"
    ordering_field: str | None = None  # e.g. "PID-3": per-patient order instead of per-channel
    channel_version: str = ""
    app_name: str = "HL7ENGINE"
    facility: str = ""
    senders: SenderPolicy | None = None  # mTLS sender binding (engine/pipeline/senders.py)


def ordering_key(text: str, field_path: str | None) -> str:
    """A hashed ordering key: the store keeps no extra copy of the identifier (PHI)."""
    if not field_path:
        return ""
    value = field_value(text, field_path)
    if not value:
        return ""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:24]


class Intake:
    """The MLLP handler of one channel."""

    def __init__(
        self,
        settings: IntakeSettings,
        store: Store,
        *,
        on_stored: Callable[[], None] = lambda: None,
        stages: Sequence[Stage] = (),
    ) -> None:
        self.settings = settings
        self._store = store
        self._on_stored = on_stored
        self._stages = list(stages)
        self._channel = settings.channel
        self._acks = {code: metrics.ACKS.labels(self._channel, code)
                      for code in ("AA", "AE", "AR", "CA", "CE", "CR", "commit_ack", "commit_nak")}
        self._ack_latency = metrics.ACK_LATENCY.labels(self._channel)

    async def handle(self, payload: bytes, conn: ConnectionInfo) -> bytes | None:
        started = time.perf_counter()
        response = await self._handle(payload, conn)
        if response is not None:
            self._ack_latency.observe(time.perf_counter() - started)
        return response

    async def _handle(self, payload: bytes, conn: ConnectionInfo) -> bytes | None:
        settings = self.settings
        received_at = time.time()
        decoded = decode_message(payload, fallback=settings.charset_fallback)
        try:
            header = parse_header(decoded.text)
        except HeaderError as exc:
            await self._quarantine(payload, f"header: {exc}", received_at, conn)
            # Echo whatever of MSH could be read, MSH-10 above all (MSA-2).
            return self._answer(exc.partial, "R", exc.ack_error(), decoded.codec)
        if is_ack(header):
            return None  # an ACK is never acknowledged
        if settings.senders is not None:
            # Who may send as MSH-3/4 is checked before anything else is said about the message.
            forbidden = settings.senders.refusal(header, conn)
            if forbidden is not None:
                log.warning("sender_not_allowed", channel=self._channel, connection_id=conn.connection_id,
                            field=f"MSH-{forbidden.field}",
                            certificate_cn=(conn.tls_subject or {}).get("commonName"))
                await self._quarantine(payload, QUARANTINE_REASON, received_at, conn)
                return self._answer(header, "R", forbidden, decoded.codec)
        refusal = settings.acceptance.refusal(header)
        if refusal is not None:
            await self._quarantine(payload, f"not accepted: {refusal.code.name.lower()}", received_at, conn)
            return self._answer(header, "R", refusal, decoded.codec)

        positive = self._answer_bytes(header, "A", None, decoded.codec)
        inbound = Inbound(
            channel=self._channel,
            raw=payload,
            received_at=received_at,
            sender=f"{header.sending_application}|{header.sending_facility}",
            control_id=header.control_id,
            content_hash=hashlib.sha256(payload).hexdigest(),
            message_type=f"{header.message_code}^{header.trigger_event}",
            charset=decoded.codec,
            ack=positive,
            ordering_key=ordering_key(decoded.text, settings.ordering_field),
            channel_version=settings.channel_version,
            peer=conn.peer_host,
        )
        try:
            (result,) = await self._store.ingest([inbound])
        except StoreUnavailableError:
            log.error("store_unavailable", channel=self._channel)
            error = AckError(ErrorCode.APPLICATION_INTERNAL_ERROR, text="Message could not be stored; resend later")
            return self._answer(header, "E" if header.enhanced_mode else "R", error, decoded.codec)

        if result.outcome == "duplicate":
            metrics.DUPLICATES.labels(self._channel).inc()
            return self._count_and_frame(result.ack, header, "A", positive_replay=True)
        if result.outcome == "collision":
            metrics.CONTROL_ID_COLLISIONS.labels(self._channel).inc()
            log.warning("control_id_collision", channel=self._channel, message_id=result.message_id)

        if settings.ack_mode == "after_processing" and self._stages:
            failure = await self._process_now(result.message_id, inbound)
            if failure is not None:
                self._on_stored()
                if header.enhanced_mode:
                    # Commit succeeded; the application error would go in a separate
                    # application ACK, which enhanced mode sends on its own connection.
                    return self._count_and_frame(positive, header, "A")
                error = AckError(ErrorCode.APPLICATION_INTERNAL_ERROR, text=failure)
                return self._answer(header, "E", error, decoded.codec)
        self._on_stored()
        return self._count_and_frame(positive, header, "A")

    async def _process_now(self, message_id: int, inbound: Inbound) -> str | None:
        """Run the stages before answering (`ack: after_processing`); a failure dead-letters
        the stored message and returns a PHI-free reason for the ERR segment."""
        message = StoredMessage(
            id=message_id, channel=inbound.channel, raw=inbound.raw, received_at=inbound.received_at,
            status=Status.RECEIVED, attempts=0, sender=inbound.sender, control_id=inbound.control_id,
            message_type=inbound.message_type, charset=inbound.charset,
        )
        outcome = apply_stages(self._stages, message)
        if outcome.error is None:
            return None
        await self._store.dead_letter(message_id, outcome.error)
        metrics.PROCESSED.labels(self._channel, "dead").inc()
        return outcome.error

    # ------------------------------------------------------------------ answers

    def _answer(self, header: MessageHeader | None, kind: str, error: AckError | None, codec: str) -> bytes | None:
        """kind: A (accept), E (error), R (reject); mapped to AA/AE/AR or CA/CE/CR."""
        if self.settings.mllp_release == 2:
            return self._count_commit(kind == "A")
        if header is not None and not should_send_accept_ack(header, success=kind == "A"):
            return None
        enhanced = header is not None and header.enhanced_mode
        code = ("C" if enhanced else "A") + kind
        self._acks[code].inc()
        return build_ack(header, code, error=error, encoding=codec)

    def _answer_bytes(self, header: MessageHeader, kind: str, error: AckError | None, codec: str) -> bytes:
        enhanced = header.enhanced_mode
        return build_ack(header, ("C" if enhanced else "A") + kind, error=error, encoding=codec)

    def _count_and_frame(self, ack: bytes, header: MessageHeader, kind: str,
                         positive_replay: bool = False) -> bytes | None:
        if self.settings.mllp_release == 2:
            return self._count_commit(True)
        if not should_send_accept_ack(header, success=True):
            return None
        self._acks[("C" if header.enhanced_mode else "A") + kind].inc()
        return ack

    def _count_commit(self, ok: bool) -> bytes:
        self._acks["commit_ack" if ok else "commit_nak"].inc()
        return COMMIT_ACK if ok else COMMIT_NAK

    async def _quarantine(self, payload: bytes, reason: str, received_at: float, conn: ConnectionInfo) -> None:
        metrics.QUARANTINED.labels(self._channel, reason.split(":", 1)[0]).inc()
        log.warning("message_rejected", channel=self._channel, reason=reason)
        quarantine = getattr(self._store, "quarantine", None)
        if quarantine is None:
            return
        try:
            await quarantine(self._channel, payload, reason, received_at, conn.peer_host)
        except Exception as exc:  # keeping rejected bytes is best effort; the AR goes out anyway
            log.error("quarantine_failed", channel=self._channel, error_type=exc.__class__.__name__)
