"""The `type: nats` sink itself: one NATS connection (behaviour: engine/sinks/nats.py).

Kept apart from the config model so that registering the sink, and validating a config
that does not use it, never loads nats-py: only `engine.sinks.nats._build` imports this
module, when a channel has a nats sink.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from engine.sinks.base import OneByOneSink
from engine.sinks.mllp import WarmUp
from engine.sinks.nats import SubjectTemplate, subject_values
from engine.sinks.payload import PayloadMode, broker_messages, headers, message_id
from engine.types import Exchange, PermanentError, TransientError

log = structlog.get_logger("hl7engine.sinks.nats")


class NatsSink(OneByOneSink):
    """One NATS connection; each broker message is one acknowledged JetStream publish."""

    def __init__(
        self,
        name: str,
        channel: str,
        servers: list[str],
        subject: SubjectTemplate,
        *,
        stream: str | None = None,
        create_stream: bool = False,
        duplicate_window_s: float = 600.0,
        payload: PayloadMode = "bundle",
        auth: Mapping[str, Any] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.name = name
        self._channel = channel
        self._servers = servers
        self._subject = subject
        self._stream = stream
        self._create_stream = create_stream
        self._duplicate_window_s = duplicate_window_s
        self._payload: PayloadMode = payload
        self._auth = dict(auth or {})
        self._timeout_s = timeout_s
        self._client: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._warm_up = WarmUp()

    async def start(self) -> None:
        """Connect (and create the stream) in the background (WarmUp); a broker that is
        down does not stop the engine: the runner retries, and the next delivery connects."""
        await self._warm_up.start(self._jetstream, self._unreachable)

    async def close(self) -> None:
        await self._warm_up.stop()
        await self._disconnect()

    def _unreachable(self, exc: Exception) -> None:
        reason = str(exc) if isinstance(exc, TransientError) else type(exc).__name__
        log.warning("nats_sink_unreachable", channel=self._channel, sink=self.name, reason=reason)

    async def _disconnect(self) -> None:
        client, self._client, self._js = self._client, None, None
        if client is not None and not client.is_closed:
            try:
                await client.close()
            except nats.errors.Error as exc:
                log.info("nats_sink_close_failed", channel=self._channel, sink=self.name,
                         error_type=type(exc).__name__)

    async def deliver(self, exchange: Exchange) -> None:
        messages = broker_messages(exchange, self._payload)
        async with self._warm_up.lock:
            js = await self._jetstream()
        for message in messages:
            subject = self._subject.render(subject_values(exchange, self.name, message.resource_type))
            message_headers: dict[str, Any] = headers(exchange, message, count=len(messages))
            message_headers["Nats-Msg-Id"] = message_id(exchange, message.suffix)
            try:
                await js.publish(subject, message.body, timeout=self._timeout_s, stream=self._stream,
                                 headers=message_headers)
            except nats.errors.MaxPayloadError:
                raise PermanentError("message larger than the NATS server's max_payload") from None
            except nats.js.errors.NoStreamResponseError:
                raise TransientError("no JetStream stream captures the subject") from None
            except nats.js.errors.APIError as exc:
                raise TransientError(f"JetStream refused the publish (error code {exc.err_code})") from None
            except nats.errors.TimeoutError:
                raise TransientError("JetStream did not acknowledge the publish in time", ambiguous=True) from None
            except (nats.errors.Error, OSError) as exc:
                await self._drop_connection()
                raise TransientError(f"nats publish failed: {type(exc).__name__}", ambiguous=True) from None

    async def _jetstream(self) -> JetStreamContext:
        """The JetStream context over a live connection, connecting when there is none."""
        if self._client is not None and self._js is not None and self._client.is_connected:
            return self._js
        await self._drop_connection()
        client = NatsClient()
        try:
            await self._connect(client)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise TransientError(f"nats connect failed: {type(exc).__name__}") from None
        except BaseException:  # cancelled (engine stopping): leave no half-open client behind
            with contextlib.suppress(Exception):
                await client.close()
            raise
        js = client.jetstream(timeout=self._timeout_s)
        self._client, self._js = client, js
        if self._create_stream:
            await self._ensure_stream(js)
        return js

    async def _connect(self, client: NatsClient) -> None:
        await client.connect(
            servers=self._servers,
            name=f"hl7engine-{self._channel}-{self.name}",
            connect_timeout=max(1, math.ceil(self._timeout_s)),
            allow_reconnect=False,  # module docstring: the runner reconnects
            max_reconnect_attempts=1,  # two tries per server, then give up (0 would mean forever)
            reconnect_time_wait=0,
            error_cb=self._on_error,
            **self._auth,
        )

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        assert self._stream is not None
        try:
            await js.stream_info(self._stream)
            return
        except nats.js.errors.NotFoundError:
            pass
        except (nats.errors.Error, OSError) as exc:
            await self._drop_connection()
            raise TransientError(f"JetStream stream lookup failed: {type(exc).__name__}") from None
        try:
            await js.add_stream(name=self._stream, subjects=[self._subject.wildcard()],
                                duplicate_window=self._duplicate_window_s)
        except nats.js.errors.BadRequestError as exc:
            # Another instance created it meanwhile, or the subjects overlap another stream.
            log.warning("nats_stream_not_created", channel=self._channel, sink=self.name, error_code=exc.err_code)
        except (nats.errors.Error, OSError) as exc:
            await self._drop_connection()
            raise TransientError(f"JetStream stream creation failed: {type(exc).__name__}") from None
        else:
            log.info("nats_stream_created", channel=self._channel, sink=self.name, stream=self._stream)

    async def _drop_connection(self) -> None:
        await self._disconnect()

    async def _on_error(self, exc: Exception) -> None:
        log.info("nats_client_error", channel=self._channel, sink=self.name, error_type=type(exc).__name__)
