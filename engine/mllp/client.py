"""An MLLP release 1 client: one frame out, exactly one response frame back.

Used by `hl7engine send`, the MLLP sink and the benchmark. One request is in flight per
connection at a time (MLLP has no request ids: responses are matched by order), so
concurrent `send` calls on one client queue behind each other.

After a timeout the connection is closed: a late response would otherwise be taken as
the answer to the next message. Errors are TransientError subclasses so a sink can pass
them to the runner unchanged; `ambiguous` says the message may have reached the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterable
from typing import cast

import structlog

from engine.mllp.framing import Frame, FrameDecoder, FrameTooLarge, encode_frame
from engine.types import EngineError, TransientError

log = structlog.get_logger("hl7engine.mllp.client")

DEFAULT_MAX_RESPONSE_BYTES = 16 << 20


class MllpError(EngineError):
    """Base of MLLP client failures."""


class MllpConnectionError(MllpError, TransientError):
    """Could not connect, or the connection closed or broke before the response arrived."""


class MllpTimeoutError(MllpError, TransientError):
    """No connection or no response within the timeout."""


class _ClientProtocol(asyncio.Protocol):
    """Decodes response frames and hands each to the one waiting `send`."""

    def __init__(self, max_response_bytes: int) -> None:
        self.decoder = FrameDecoder(max_response_bytes)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[bytes] | None = None
        self.lost = False
        self.lost_event = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for event in self.decoder.feed(data):
            if isinstance(event, Frame):
                waiter, self.waiter = self.waiter, None
                if waiter is not None and not waiter.done():
                    waiter.set_result(event.payload)
                else:
                    log.warning("mllp_client_unsolicited_frame")
            elif isinstance(event, FrameTooLarge):
                self.fail(MllpConnectionError("response frame exceeds the size limit", ambiguous=True))
                if self.transport is not None:
                    self.transport.abort()

    def fail(self, error: MllpError) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_event.set()
        self.fail(MllpConnectionError("connection closed before a response arrived", ambiguous=True))


class MllpClient:
    """A persistent MLLP connection. Use `async with MllpClient() as c: await c.connect(...)`."""

    def __init__(self, *, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self._max_response_bytes = max_response_bytes
        self._protocol: _ClientProtocol | None = None
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._protocol is not None and not self._protocol.lost

    async def connect(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        *,
        server_hostname: str | None = None,
    ) -> None:
        """Open the connection (and TLS session); TCP_NODELAY so each frame leaves at once."""
        loop = asyncio.get_running_loop()
        max_bytes = self._max_response_bytes
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _ClientProtocol(max_bytes),
                    host,
                    port,
                    ssl=ssl_context,
                    server_hostname=(server_hostname or host) if ssl_context is not None else None,
                ),
                timeout,
            )
        except TimeoutError as exc:
            raise MllpTimeoutError("connect timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            raise MllpConnectionError(f"connect failed: {type(exc).__name__}") from exc
        transport = protocol.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:  # asyncio sets it already on TCP; say so explicitly for every loop
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._protocol = protocol

    async def send(self, payload: bytes, timeout: float) -> bytes:
        """Send one frame (one write) and return the payload of the one response frame.

        Raises MllpTimeoutError (and closes the connection) when no response arrives in
        `timeout` seconds, MllpConnectionError when the connection is or gets closed.
        """
        async with self._lock:
            protocol = self._protocol
            if protocol is None or protocol.lost or protocol.transport is None:
                raise MllpConnectionError("not connected")
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[bytes] = loop.create_future()
            protocol.waiter = waiter
            protocol.transport.write(encode_frame(payload))
            timer = loop.call_later(timeout, protocol.fail, MllpTimeoutError("no response", ambiguous=True))
            try:
                return await waiter
            except MllpTimeoutError:
                protocol.transport.abort()
                raise
            finally:
                timer.cancel()

    async def close(self) -> None:
        """Close the connection and wait (briefly) until it is gone."""
        protocol, self._protocol = self._protocol, None
        if protocol is None or protocol.transport is None:
            return
        protocol.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(protocol.lost_event.wait(), 5.0)
        if not protocol.lost:
            protocol.transport.abort()

    async def __aenter__(self) -> MllpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def send_many(
    host: str,
    port: int,
    payloads: Iterable[bytes],
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 30.0,
    server_hostname: str | None = None,
) -> list[bytes]:
    """Send messages in order over one connection, each awaiting its response; return them."""
    responses: list[bytes] = []
    async with MllpClient() as client:
        await client.connect(host, port, ssl_context, timeout, server_hostname=server_hostname)
        for payload in payloads:
            responses.append(await client.send(payload, timeout))
    return responses
