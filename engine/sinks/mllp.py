"""`type: mllp` — forward each message to another MLLP endpoint (the router use case).

HL7 v2 ch. 2 (original acknowledgement mode) over MLLP release 1 (HL7 v2 IG, appendix
C): one persistent connection, one message in flight, each answered by one ACK.

The ACK is correlated, not assumed: MSA-2 must echo the forwarded message's MSH-10
(HL7 v2.5 ch. 2.14.8). Anything else (an ACK for another message, no readable MSA, no
answer within `timeout_s`) resets the connection, so a late ACK can never be read as
the answer to the next message, and the message is retried as *ambiguous*: it may have
reached the peer, which is safe only because a receiver such as hl7engine treats an
exact resend as a duplicate (DESIGN.md §4).

MSA-1 (HL7 table 0008): AA and CA mean done. AE/CE (application or commit error) and
AR/CR (reject) follow `on_ae` / `on_ar`: `dead` dead-letters the message with the ACK's
error code (ERR-3, or ERR-1.4 before v2.5; table 0357), `retry` retries it with the
channel's backoff. Codes in `retry_codes` are always retried: 207 (application internal
error) is what an engine answers while its store is down or overloaded. MSA-3 and ERR-8
texts are never kept: a peer may quote message content in them.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Self

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.config.models import HostPort, InputFile
from engine.hl7.decode import decode
from engine.hl7.fields import field_value
from engine.hl7.header import HeaderError, parse_header
from engine.mllp.client import MllpClient, MllpConnectionError, MllpTimeoutError
from engine.mllp.tls import client_context
from engine.registry import BuildContext, Registry
from engine.sinks.base import OneByOneSink
from engine.types import Exchange, PermanentError, TransientError

log = structlog.get_logger("hl7engine.sinks.mllp")

Policy = Literal["retry", "dead"]

_SAFE_CODE = re.compile(r"[A-Za-z0-9]{1,10}")


class ClientTlsConfig(BaseModel):
    """TLS towards the peer (TLS 1.2 or newer); mutual TLS when `cert` is given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca: InputFile | None = Field(default=None, description="CA bundle the peer's certificate must chain to; "
                                 "default: the system trust store.")
    cert: InputFile | None = Field(default=None, description="Client certificate chain (PEM) for mutual TLS.")
    key: InputFile | None = Field(default=None, description="Private key of `cert` (PEM); omit when `cert` holds it.")
    verify: bool = Field(default=True, description="Check the peer's certificate and host name. Turn off for "
                         "testing only: it accepts any peer, including an attacker in the middle.")
    server_name: str | None = Field(default=None, description="Host name expected in the peer's certificate; "
                                    "default: the target host.")

    @model_validator(mode="after")
    def _key_needs_cert(self) -> Self:
        if self.key is not None and self.cert is None:
            raise ValueError("'key' needs 'cert' (the certificate it belongs to)")
        return self

    def context(self) -> ssl.SSLContext:
        return client_context(self.ca, self.cert, self.key, self.verify)


class WarmUp:
    """Connects a sink in the background at start; deliveries wait for it to end.

    The engine starts sinks before its listeners, so a peer that is down or slow (a
    black-holed address costs a whole connect timeout) must not hold up custody. The
    lock is taken before `start` returns, so a delivery always queues behind the
    warm-up and never races it for the connection. Deliveries connect under `lock` too.
    """

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self, connect: Callable[[], Awaitable[object]], on_failure: Callable[[Exception], None]) -> None:
        await self.lock.acquire()

        async def run() -> None:
            try:
                await connect()
            except Exception as exc:  # reported, then left to the first delivery to retry
                on_failure(exc)

        self._task = asyncio.create_task(run(), name="sink-warm-up")
        # A done callback runs even when the task is cancelled before it started.
        self._task.add_done_callback(lambda _: self.lock.release())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class MllpSinkConfig(BaseModel):
    """Forward each message over MLLP; the peer's ACK decides the outcome."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["mllp"]
    target: HostPort = Field(description="Peer MLLP endpoint, host:port.")
    name: str | None = Field(default=None, description="Sink name for metrics and the store; default 'mllp'.")
    tls: ClientTlsConfig | None = Field(default=None, description="Connect with TLS; omit for plain TCP.")
    timeout_s: float = Field(default=30.0, gt=0, description="Seconds to connect, and to wait for each ACK.")
    payload: Literal["original", "transformed"] = Field(
        default="original",
        description="original: the stored bytes exactly as received. transformed: the v2 text as the "
        "pipeline's stages left it (BOM and leading blanks dropped), encoded in the charset it was received in.",
    )
    on_ae: Policy = Field(default="dead", description="AE/CE (application or commit error): dead-letter or retry.")
    on_ar: Policy = Field(default="dead", description="AR/CR (rejected): dead-letter or retry.")
    retry_codes: tuple[str, ...] = Field(
        default=("207",),
        description="ERR-3 codes (HL7 table 0357) retried whatever on_ae/on_ar say; 207 = application "
        "internal error, sent by engines whose store is unavailable.",
    )


# ---------------------------------------------------------------- the ACK


@dataclass(frozen=True, slots=True)
class AckPolicy:
    on_ae: Policy = "dead"
    on_ar: Policy = "dead"
    retry_codes: frozenset[str] = frozenset({"207"})


@dataclass(frozen=True, slots=True)
class AckReading:
    """What the sink reads from an ACK: MSA-1, MSA-2 and the first error code."""

    code: str
    control_id: str
    error_code: str


class AckMismatchError(TransientError):
    """The answer is not an ACK for the forwarded message; the connection must be reset."""


def read_ack(ack: bytes) -> AckReading | None:
    """MSA-1, MSA-2 and ERR-3.1 (or ERR-1.4.1, the v2.3/v2.4 ELD form), None without an MSA.

    The error code is kept only when it looks like a code (letters and digits, at most
    10): it goes into the dead-letter reason, which must never carry message content.
    """
    text = decode(ack).text
    code = field_value(text, "MSA-1")
    if code is None:
        return None
    error = field_value(text, "ERR-3.1") or field_value(text, "ERR-1.4.1") or ""
    return AckReading(
        code=code.strip().upper(),
        control_id=field_value(text, "MSA-2") or "",
        error_code=error if _SAFE_CODE.fullmatch(error) else "",
    )


def judge_ack(ack: bytes, control_id: str, policy: AckPolicy) -> None:
    """Return when the ACK says the peer took the message; raise otherwise.

    AckMismatchError (transient, ambiguous): no MSA, MSA-2 is not `control_id`, or MSA-1
    is not a table 0008 code. TransientError: AE/CE/AR/CR under a `retry` policy or with
    a retry code. PermanentError: AE/CE/AR/CR under `dead`.
    """
    reading = read_ack(ack)
    if reading is None:
        raise AckMismatchError("mllp peer answered without a readable MSA segment", ambiguous=True)
    if reading.control_id != control_id:
        raise AckMismatchError("mllp ACK does not echo the forwarded MSH-10 in MSA-2", ambiguous=True)
    if reading.code in ("AA", "CA"):
        return
    if reading.code in ("AE", "CE"):
        chosen = policy.on_ae
    elif reading.code in ("AR", "CR"):
        chosen = policy.on_ar
    else:
        raise AckMismatchError("mllp ACK has an MSA-1 outside HL7 table 0008", ambiguous=True)
    reason = f"mllp peer answered {reading.code}"
    if reading.error_code:
        reason += f" (ERR-3 {reading.error_code})"
    if chosen == "retry" or reading.error_code in policy.retry_codes:
        raise TransientError(reason)
    raise PermanentError(reason)


# ---------------------------------------------------------------- the sink


class MllpSink(OneByOneSink):
    """One persistent MLLP connection to `host:port`; one message in flight."""

    def __init__(
        self,
        name: str,
        channel: str,
        target: HostPort,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
        timeout_s: float = 30.0,
        payload: Literal["original", "transformed"] = "original",
        policy: AckPolicy | None = None,
    ) -> None:
        self.name = name
        self._channel = channel
        self._target = target
        self._ssl_context = ssl_context
        self._server_name = server_name
        self._timeout_s = timeout_s
        self._payload = payload
        self._policy = policy or AckPolicy()
        self._client = MllpClient()
        self._warm_up = WarmUp()

    async def start(self) -> None:
        """Connect in the background (WarmUp); a peer that is down does not stop the engine:
        it may come back later, and the runner retries."""
        await self._warm_up.start(self._ensure_connected, self._unreachable)

    async def close(self) -> None:
        await self._warm_up.stop()
        await self._client.close()

    def _unreachable(self, exc: Exception) -> None:
        reason = str(exc) if isinstance(exc, TransientError) else type(exc).__name__
        log.warning("mllp_sink_unreachable", channel=self._channel, sink=self.name, reason=reason)

    async def deliver(self, exchange: Exchange) -> None:
        payload, control_id = self._outgoing(exchange)
        ack = await self._send(payload, exchange.message.id)
        try:
            judge_ack(ack, control_id, self._policy)
        except AckMismatchError:
            await self._reset("ack_mismatch", exchange.message.id)
            raise

    def _outgoing(self, exchange: Exchange) -> tuple[bytes, str]:
        """The bytes to forward and the MSH-10 their ACK must echo."""
        message = exchange.message
        if self._payload == "original":
            return message.raw, message.control_id
        # Stages run in worker processes that send back only the FHIR output, so the runner
        # hands sinks an empty `text`; then the stored message, decoded as intake decoded
        # it, is what the stages saw, and what is sent.
        text = exchange.text or message.text()
        try:
            control_id = parse_header(text).control_id
        except HeaderError as exc:
            raise PermanentError(f"transformed message has no usable MSH: {exc}") from None
        try:
            return text.encode(message.charset or "utf-8"), control_id
        except (UnicodeEncodeError, LookupError):
            raise PermanentError("transformed message cannot be encoded in its original charset") from None

    async def _send(self, payload: bytes, message_id: int) -> bytes:
        """Send on the open connection; a reused one the peer had closed gets one more try
        on a fresh connection (peers close idle connections; a resend is a duplicate the
        receiver absorbs, never a lost message)."""
        while True:
            async with self._warm_up.lock:
                fresh = await self._ensure_connected()
            try:
                return await self._client.send(payload, self._timeout_s)
            except MllpTimeoutError:
                await self._reset("timeout", message_id)
                raise
            except MllpConnectionError:
                await self._reset("closed", message_id)
                if fresh:
                    raise

    async def _ensure_connected(self) -> bool:
        """Connect when needed; True when the connection is new."""
        if self._client.connected:
            return False
        await self._client.close()
        await self._connect()
        return True

    async def _connect(self) -> None:
        await self._client.connect(
            self._target.host,
            self._target.port,
            self._ssl_context,
            self._timeout_s,
            server_hostname=self._server_name,
        )

    async def _reset(self, reason: str, message_id: int) -> None:
        log.warning("mllp_sink_reset", channel=self._channel, sink=self.name, reason=reason, message_id=message_id)
        await self._client.close()


def _build(config: BaseModel, ctx: BuildContext) -> MllpSink:
    assert isinstance(config, MllpSinkConfig)
    tls = config.tls
    return MllpSink(
        config.name or "mllp",
        ctx.channel,
        config.target,
        ssl_context=tls.context() if tls is not None else None,
        server_name=tls.server_name if tls is not None else None,
        timeout_s=config.timeout_s,
        payload=config.payload,
        policy=AckPolicy(config.on_ae, config.on_ar, frozenset(config.retry_codes)),
    )


def register(registry: Registry) -> None:
    registry.add_sink("mllp", MllpSinkConfig, "Forward the v2 message to another MLLP endpoint; ACK decides.", _build)
