"""Helpers for MLLP integration tests: real sockets on 127.0.0.1, waits with deadlines."""

from __future__ import annotations

import asyncio
import itertools
import resource
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from engine.mllp.framing import Frame, FrameDecoder, encode_frame
from engine.mllp.server import ConnectionInfo, Handler, MllpServer
from engine.obs.metrics import REGISTRY

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
WAIT_S = 5.0  # generous upper bound for anything that should happen "promptly"

_channel_ids = itertools.count(1)


def unique_channel(prefix: str = "mllp-test") -> str:
    """A fresh channel label, so each test reads only its own metric values."""
    return f"{prefix}-{next(_channel_ids)}-{time.monotonic_ns()}"


def metric(name: str, **labels: str) -> float:
    """Current value of one sample in the engine registry (0 when never set)."""
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def wait_until(
    predicate: Callable[[], bool],
    timeout: float = WAIT_S,
    what: str = "condition",
) -> None:
    """Poll `predicate` until true, failing after `timeout` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def echo_handler(payload: bytes, conn: ConnectionInfo) -> bytes | None:
    """Answers every frame with ACK| + its payload, so order is visible in responses."""
    return b"ACK|" + payload


@asynccontextmanager
async def running_server(handler: Handler = echo_handler, **kwargs: Any) -> AsyncIterator[MllpServer]:
    """An MllpServer on an ephemeral loopback port, closed afterwards."""
    kwargs.setdefault("channel", unique_channel())
    server = MllpServer("127.0.0.1", 0, handler, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


class RawPeer:
    """A plain TCP peer that writes raw bytes and reads decoded frames (or EOF)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._decoder = FrameDecoder(1 << 20)
        self._frames: list[bytes] = []

    @classmethod
    async def connect(cls, port: int, local_host: str | None = None) -> RawPeer:
        local = (local_host, 0) if local_host else None
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
        return cls(reader, writer)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, payload: bytes) -> None:
        await self.write(encode_frame(payload))

    async def read_frame(self, timeout: float = WAIT_S) -> bytes:
        """The next response frame; AssertionError on EOF or timeout."""
        async with asyncio.timeout(timeout):
            while not self._frames:
                data = await self.reader.read(65536)
                if not data:
                    raise AssertionError("connection closed before a frame arrived")
                self._frames.extend(e.payload for e in self._decoder.feed(data) if isinstance(e, Frame))
        return self._frames.pop(0)

    async def read_eof(self, timeout: float = WAIT_S) -> bytes:
        """Everything the server sends until it closes the connection (then closes our side)."""
        received = b""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    await self.close()
                    return received
                received += data

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def ensure_fd_limit(needed: int) -> None:
    """Raise the soft open-file limit to `needed` when the hard limit allows it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
