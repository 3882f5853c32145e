"""The MLLP listener and client over real loopback sockets (MLLP release 1, DESIGN.md §5)."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import tracemalloc

import pytest
from structlog.testing import capture_logs

from engine.mllp.client import MllpClient, MllpConnectionError, MllpTimeoutError, send_many
from engine.mllp.server import ConnectionInfo, MllpLimits, MllpServer
from engine.types import TransientError
from tests.integration.mllp_helpers import (
    CR,
    FS,
    VT,
    RawPeer,
    echo_handler,
    ensure_fd_limit,
    metric,
    running_server,
    unique_channel,
    wait_until,
)

PHI_PAYLOAD = b"MSH|^~\\&|A|B|C|D|202401011200||ADT^A01|1|P|2.5\rPID|||4711^^^H^MR||DOE^JANE\r"


def frame(payload: bytes) -> bytes:
    return VT + payload + FS + CR


class Gate:
    """A handler that blocks each frame until released, to hold work in flight."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.seen: list[bytes] = []

    async def __call__(self, payload: bytes, conn: ConnectionInfo) -> bytes | None:
        self.seen.append(payload)
        self.entered.set()
        await self.release.wait()
        return b"ACK|" + payload


class TestMllpServer:
    async def test_several_frames_in_one_write_answered_in_order(self) -> None:
        """Three frames in one TCP write get three responses, in order."""
        async with running_server() as server:
            peer = await RawPeer.connect(server.port)
            await peer.write(frame(b"one") + frame(b"two") + frame(b"three"))
            assert [await peer.read_frame() for _ in range(3)] == [b"ACK|one", b"ACK|two", b"ACK|three"]
            await peer.close()

    async def test_frame_sent_byte_by_byte(self) -> None:
        """A frame trickled one byte per write is answered once."""
        async with running_server() as server:
            peer = await RawPeer.connect(server.port)
            for byte in frame(b"MSH|slow"):
                await peer.write(bytes([byte]))
            assert await peer.read_frame() == b"ACK|MSH|slow"
            await peer.close()

    async def test_garbage_between_frames_skipped_and_counted(self) -> None:
        """Garbage before and between frames is counted and both frames are answered."""
        async with running_server() as server:
            peer = await RawPeer.connect(server.port)
            await peer.write(b"junk" + frame(b"a") + b"\n\n\n" + frame(b"b"))
            assert [await peer.read_frame(), await peer.read_frame()] == [b"ACK|a", b"ACK|b"]
            assert metric("hl7engine_garbage_bytes_total", channel=server.channel) == 7
            assert metric("hl7engine_messages_received_total", channel=server.channel) == 2
            assert metric("hl7engine_received_bytes_total", channel=server.channel) == 2
            await peer.close()

    async def test_too_large_frame_rejected_connection_continues(self) -> None:
        """An oversized frame gets no response; the next frame on the same connection is answered."""
        async with running_server(limits=MllpLimits(max_frame_bytes=1000)) as server:
            peer = await RawPeer.connect(server.port)
            await peer.write(frame(b"x" * 5000))
            await peer.write(frame(b"next"))
            assert await peer.read_frame() == b"ACK|next"
            labels = {"channel": server.channel, "reason": "too_large"}
            assert metric("hl7engine_frames_rejected_total", **labels) == 1
            await peer.close()

    async def test_interrupted_frame_then_resent_frame(self) -> None:
        """A start block inside a frame drops the partial frame and answers the resent one."""
        async with running_server() as server:
            peer = await RawPeer.connect(server.port)
            await peer.write(VT + b"partial" + frame(b"resent"))
            assert await peer.read_frame() == b"ACK|resent"
            labels = {"channel": server.channel, "reason": "interrupted"}
            assert metric("hl7engine_frames_rejected_total", **labels) == 1
            await peer.close()

    async def test_unfinished_frame_closed_at_deadline_others_served(self) -> None:
        """A frame that never ends closes its connection after frame_timeout; others are served meanwhile."""
        limits = MllpLimits(frame_timeout_s=0.4)
        async with running_server(limits=limits) as server:
            slow = await RawPeer.connect(server.port)
            await slow.write(VT + b"MSH|never ends")
            started = time.monotonic()
            other = await RawPeer.connect(server.port)
            await other.send(b"meanwhile")
            assert await other.read_frame() == b"ACK|meanwhile"
            assert await slow.read_eof() == b""
            assert time.monotonic() - started >= 0.3
            await wait_until(lambda: server.connections == 1, what="slow connection gone")
            assert metric("hl7engine_frames_rejected_total", channel=server.channel, reason="deadline") == 1
            labels = {"channel": server.channel, "reason": "frame_deadline"}
            assert metric("hl7engine_connections_closed_total", **labels) == 1
            await other.close()

    async def test_frame_deadline_restarts_for_each_frame(self) -> None:
        """A connection that keeps finishing its frames is not closed by the frame deadline."""
        limits = MllpLimits(frame_timeout_s=0.3)
        async with running_server(limits=limits) as server:
            peer = await RawPeer.connect(server.port)
            deadline = time.monotonic() + 0.6
            count = 0
            while time.monotonic() < deadline and count < 200:
                await peer.write(VT + b"a")  # each frame is split across two writes
                await peer.write(b"b" + FS + CR)
                assert await peer.read_frame() == b"ACK|ab"
                count += 1
            assert metric("hl7engine_frames_rejected_total", channel=server.channel, reason="deadline") == 0
            await peer.close()

    async def test_idle_connection_closed(self) -> None:
        """A connection that sends nothing is closed after idle_timeout."""
        async with running_server(limits=MllpLimits(idle_timeout_s=0.3)) as server:
            peer = await RawPeer.connect(server.port)
            assert await peer.read_eof() == b""
            labels = {"channel": server.channel, "reason": "idle"}
            await wait_until(
                lambda: metric("hl7engine_connections_closed_total", **labels) == 1,
                what="idle close counted",
            )

    async def test_idle_timeout_none_never_closes(self) -> None:
        """With idle_timeout_s=None a silent connection stays open while frame deadlines still apply."""
        limits = MllpLimits(idle_timeout_s=None, frame_timeout_s=0.2)
        async with running_server(limits=limits) as server:
            silent = await RawPeer.connect(server.port)
            slow = await RawPeer.connect(server.port)
            await slow.write(VT + b"never ends")
            assert await slow.read_eof() == b""  # closed by its frame deadline (> 0.2 s)
            await wait_until(lambda: server.connections == 1, what="only the silent connection left")
            await silent.send(b"still open")
            assert await silent.read_frame() == b"ACK|still open"
            await silent.close()

    async def test_busy_handler_is_not_idle(self) -> None:
        """A connection waiting for its handler's answer is not closed as idle."""
        gate = Gate()
        async with running_server(gate, limits=MllpLimits(idle_timeout_s=0.2)) as server:
            peer = await RawPeer.connect(server.port)
            await peer.send(b"slow")
            await asyncio.wait_for(gate.entered.wait(), 5)
            start = time.monotonic()
            await wait_until(lambda: time.monotonic() - start > 0.5, what="several idle periods")
            gate.release.set()
            assert await peer.read_frame() == b"ACK|slow"
            await peer.close()

    async def test_peer_not_reading_responses_is_bounded_and_closed_idle(self) -> None:
        """A peer that pipelines frames but never reads its responses is closed once idle."""

        async def big_response(payload: bytes, conn: ConnectionInfo) -> bytes | None:
            return b"R" * 65536

        limits = MllpLimits(max_frame_bytes=4096, idle_timeout_s=0.5)
        async with running_server(big_response, limits=limits) as server:
            peer = await RawPeer.connect(server.port)
            deadline = time.monotonic() + 2.0
            for _ in range(2000):  # stops early once our side's buffers are full
                if time.monotonic() > deadline:
                    break
                try:
                    await asyncio.wait_for(peer.write(frame(b"x" * 1000)), 0.2)
                except TimeoutError:
                    break
            labels = {"channel": server.channel, "reason": "idle"}
            await wait_until(lambda: metric("hl7engine_connections_closed_total", **labels) == 1,
                             what="non-reading peer closed as idle")
            await wait_until(lambda: server.connections == 0, what="connection gone")
            peer.writer.transport.abort()

    @pytest.mark.slow
    async def test_many_idle_connections_small_and_still_serving(self) -> None:
        """500 idle connections stay open, use little memory, and a 501st connection is answered."""
        count = 500
        ensure_fd_limit(4 * count + 256)
        limits = MllpLimits(max_connections=count + 10, max_connections_per_peer=count + 10)
        async with running_server(limits=limits) as server:
            loop = asyncio.get_running_loop()
            socks: list[socket.socket] = []
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for _ in range(count):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    socks.append(sock)
                    await loop.sock_connect(sock, ("127.0.0.1", server.port))
                await wait_until(lambda: server.connections == count, what="all idle connections accepted")
                gc.collect()
                per_connection = (tracemalloc.get_traced_memory()[0] - before) / count
            finally:
                tracemalloc.stop()
            # Client sockets are in the same process; both sides together stay a few KiB.
            assert per_connection < 8 * 1024, f"{per_connection:.0f} bytes per idle connection"
            async with MllpClient() as client:
                await client.connect("127.0.0.1", server.port)
                assert await client.send(b"501st", timeout=5) == b"ACK|501st"
            accepted = metric("hl7engine_connections_total", channel=server.channel, outcome="accepted")
            assert count + 1 == accepted
            for sock in socks:
                sock.close()
            await wait_until(lambda: server.connections == 0, what="idle connections closed")

    async def test_total_connection_limit(self) -> None:
        """Connections over max_connections are closed at once and counted."""
        async with running_server(limits=MllpLimits(max_connections=2)) as server:
            first, second = await RawPeer.connect(server.port), await RawPeer.connect(server.port)
            await wait_until(lambda: server.connections == 2, what="two connections")
            third = await RawPeer.connect(server.port)
            assert await third.read_eof() == b""
            assert metric("hl7engine_connections_total", channel=server.channel, outcome="refused_limit") == 1
            await first.close()
            await wait_until(lambda: server.connections == 1, what="first connection gone")
            fourth = await RawPeer.connect(server.port)
            await fourth.send(b"room again")
            assert await fourth.read_frame() == b"ACK|room again"
            for peer in (second, third, fourth):
                await peer.close()

    async def test_per_peer_connection_limit(self) -> None:
        """A peer over its limit is refused while another peer address is still admitted."""
        limits = MllpLimits(max_connections_per_peer=1)
        async with running_server(limits=limits) as server:
            first = await RawPeer.connect(server.port, local_host="127.0.0.1")
            await wait_until(lambda: server.connections == 1, what="first connection")
            again = await RawPeer.connect(server.port, local_host="127.0.0.1")
            assert await again.read_eof() == b""
            other = await RawPeer.connect(server.port, local_host="127.0.0.2")
            await other.send(b"other peer")
            assert await other.read_frame() == b"ACK|other peer"
            labels = {"channel": server.channel, "outcome": "refused_peer_limit"}
            assert metric("hl7engine_connections_total", **labels) == 1
            for peer in (first, again, other):
                await peer.close()

    async def test_allow_list_refuses_other_addresses(self) -> None:
        """A peer outside the allow-list is closed without an answer; an allowed one is served."""
        async with running_server(allow=["127.0.0.2/32"]) as server:
            refused = await RawPeer.connect(server.port, local_host="127.0.0.1")
            refused.writer.write(frame(b"let me in"))
            assert await refused.read_eof() == b""
            allowed = await RawPeer.connect(server.port, local_host="127.0.0.2")
            await allowed.send(b"hello")
            assert await allowed.read_frame() == b"ACK|hello"
            labels = {"channel": server.channel, "outcome": "refused_address"}
            assert metric("hl7engine_connections_total", **labels) == 1
            assert metric("hl7engine_messages_received_total", channel=server.channel) == 1
            await refused.close()
            await allowed.close()

    async def test_eof_mid_frame_counted(self) -> None:
        """A peer closing inside a frame is counted as closed_mid_frame."""
        async with running_server() as server:
            peer = await RawPeer.connect(server.port)
            await peer.write(VT + b"MSH|half")
            await peer.close()
            labels = {"channel": server.channel, "reason": "closed_mid_frame"}
            await wait_until(lambda: metric("hl7engine_frames_rejected_total", **labels) == 1,
                             what="closed_mid_frame counted")
            assert metric("hl7engine_messages_received_total", channel=server.channel) == 0

    async def test_half_close_still_answered(self) -> None:
        """A sender that half-closes after its frame still receives the response."""
        async with running_server() as server:
            peer = await RawPeer.connect(server.port)
            await peer.write(frame(b"then eof"))
            peer.writer.write_eof()
            assert frame(b"ACK|then eof") == await peer.read_eof()

    async def test_slow_handler_does_not_block_other_connections(self) -> None:
        """While one connection's handler is stuck, another connection is answered."""
        gate = Gate()

        async def handler(payload: bytes, conn: ConnectionInfo) -> bytes | None:
            if payload == b"stuck":
                return await gate(payload, conn)
            return b"ACK|" + payload

        async with running_server(handler) as server:
            stuck = await RawPeer.connect(server.port)
            await stuck.send(b"stuck")
            await asyncio.wait_for(gate.entered.wait(), 5)
            other = await RawPeer.connect(server.port)
            await other.send(b"free")
            assert await other.read_frame() == b"ACK|free"
            gate.release.set()
            assert await stuck.read_frame() == b"ACK|stuck"
            await stuck.close()
            await other.close()

    async def test_handler_sees_connection_info(self) -> None:
        """The handler gets the peer address, a per-connection id and no TLS subject."""
        seen: list[ConnectionInfo] = []

        async def handler(payload: bytes, conn: ConnectionInfo) -> bytes | None:
            seen.append(conn)
            return b"ok"

        async with running_server(handler) as server:
            for _ in range(2):
                async with MllpClient() as client:
                    await client.connect("127.0.0.1", server.port)
                    await client.send(b"a", timeout=5)
                    await client.send(b"b", timeout=5)
        assert [c.peer_host for c in seen] == ["127.0.0.1"] * 4
        assert seen[0].connection_id == seen[1].connection_id != seen[2].connection_id
        assert all(c.tls_subject is None and c.peer_port > 0 for c in seen)

    async def test_none_response_sends_nothing(self) -> None:
        """A handler returning None sends no frame; the next frame is still answered."""

        async def handler(payload: bytes, conn: ConnectionInfo) -> bytes | None:
            return None if payload == b"silent" else b"ACK|" + payload

        async with running_server(handler) as server:
            peer = await RawPeer.connect(server.port)
            await peer.write(frame(b"silent") + frame(b"loud"))
            assert await peer.read_frame() == b"ACK|loud"
            await peer.close()

    async def test_handler_exception_closes_only_that_connection(self) -> None:
        """A failing handler closes its connection, logs no payload, and other connections go on."""

        async def handler(payload: bytes, conn: ConnectionInfo) -> bytes | None:
            if payload.startswith(b"MSH"):
                raise ValueError(payload.decode())  # an exception text holding PHI
            return b"ACK|" + payload

        async with running_server(handler) as server:
            good = await RawPeer.connect(server.port)
            bad = await RawPeer.connect(server.port)
            with capture_logs() as logs:
                await bad.send(PHI_PAYLOAD)
                assert await bad.read_eof() == b""
            await good.send(b"still here")
            assert await good.read_frame() == b"ACK|still here"
            failures = [e for e in logs if e["event"] == "mllp_handler_failed"]
            assert len(failures) == 1 and failures[0]["error_type"] == "ValueError"
            assert "DOE" not in repr(logs) and "4711" not in repr(logs)
            assert metric("hl7engine_connections_closed_total", channel=server.channel, reason="error") == 1
            await good.close()

    async def test_connections_open_gauge(self) -> None:
        """The open-connections gauge follows connections in and out."""
        async with running_server() as server:
            peers = [await RawPeer.connect(server.port) for _ in range(3)]
            gauge = "hl7engine_connections_open"
            await wait_until(lambda: metric(gauge, channel=server.channel) == 3, what="gauge at 3")
            for peer in peers:
                await peer.close()
            await wait_until(lambda: metric(gauge, channel=server.channel) == 0, what="gauge at 0")


class TestMllpServerLifecycle:
    async def test_port_bound_after_start(self) -> None:
        """After start() the ephemeral port is known and accepts connections."""
        server = MllpServer("127.0.0.1", 0, echo_handler, channel=unique_channel())
        await server.start()
        try:
            assert server.port > 0
            assert await send_many("127.0.0.1", server.port, [b"x"], timeout=5) == [b"ACK|x"]
        finally:
            await server.close()

    async def test_drain_answers_in_flight_frame(self) -> None:
        """During drain a frame being handled gets its response, then the connection closes."""
        gate = Gate()
        async with running_server(gate) as server:
            busy = await RawPeer.connect(server.port)
            idle = await RawPeer.connect(server.port)
            await busy.send(b"in flight")
            await asyncio.wait_for(gate.entered.wait(), 5)
            drain = asyncio.create_task(server.drain(5.0))
            assert await idle.read_eof() == b""  # nothing in flight: closed at once
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", server.port)  # no longer accepting
            gate.release.set()
            assert frame(b"ACK|in flight") == await busy.read_eof()
            await asyncio.wait_for(drain, 5)
            assert server.connections == 0
            labels = {"channel": server.channel, "reason": "shutdown"}
            assert metric("hl7engine_connections_closed_total", **labels) == 2

    async def test_drain_waits_for_partial_frame_to_complete(self) -> None:
        """A frame half-received when drain starts is completed, answered, then the connection closes."""
        async with running_server() as server:
            peer = await RawPeer.connect(server.port)
            # The partial frame rides in the same write as a complete one: once that one is
            # answered, the server has read the partial frame too.
            await peer.write(frame(b"before") + VT + b"first half ")
            assert await peer.read_frame() == b"ACK|before"
            drain = asyncio.create_task(server.drain(5.0))
            await peer.write(b"second half" + FS + CR)
            assert frame(b"ACK|first half second half") == await peer.read_eof()
            await asyncio.wait_for(drain, 5)

    async def test_drain_deadline_force_closes(self) -> None:
        """A handler that never finishes is cut off at the drain deadline."""
        gate = Gate()
        async with running_server(gate) as server:
            peer = await RawPeer.connect(server.port)
            await peer.send(b"forever")
            await asyncio.wait_for(gate.entered.wait(), 5)
            started = time.monotonic()
            await server.drain(0.3)
            assert time.monotonic() - started < 3
            assert server.connections == 0
            assert await peer.read_eof() == b""


class TestMllpClient:
    async def test_send_returns_response(self) -> None:
        """send() writes one frame and returns the payload of the response frame."""
        async with running_server() as server, MllpClient() as client:
            await client.connect("127.0.0.1", server.port)
            assert client.connected
            assert await client.send(b"MSH|1", timeout=5) == b"ACK|MSH|1"
            assert await client.send(b"MSH|2", timeout=5) == b"ACK|MSH|2"

    async def test_concurrent_sends_are_serialised(self) -> None:
        """Concurrent sends on one client each get their own response."""
        async with running_server() as server, MllpClient() as client:
            await client.connect("127.0.0.1", server.port)
            payloads = [f"m{i}".encode() for i in range(20)]
            results = await asyncio.gather(*(client.send(p, timeout=5) for p in payloads))
            assert [b"ACK|" + p for p in payloads] == results

    async def test_timeout_raises_and_closes(self) -> None:
        """No response within the timeout raises MllpTimeoutError (transient, ambiguous) and closes."""
        gate = Gate()
        async with running_server(gate) as server, MllpClient() as client:
            await client.connect("127.0.0.1", server.port)
            with pytest.raises(MllpTimeoutError) as caught:
                await client.send(b"slow", timeout=0.2)
            assert isinstance(caught.value, TransientError) and caught.value.ambiguous
            await wait_until(lambda: not client.connected, what="client closed")
            gate.release.set()

    async def test_server_closing_raises_connection_error(self) -> None:
        """The server closing before answering raises MllpConnectionError."""

        async def handler(payload: bytes, conn: ConnectionInfo) -> bytes | None:
            raise RuntimeError("boom")

        async with running_server(handler) as server, MllpClient() as client:
            await client.connect("127.0.0.1", server.port)
            with pytest.raises(MllpConnectionError):
                await client.send(b"x", timeout=5)

    async def test_connect_refused(self) -> None:
        """Connecting to a port nobody listens on raises MllpConnectionError."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        with pytest.raises(MllpConnectionError):
            await MllpClient().connect("127.0.0.1", port, timeout=5)

    async def test_send_without_connection(self) -> None:
        """send() before connect() raises MllpConnectionError."""
        with pytest.raises(MllpConnectionError):
            await MllpClient().send(b"x", timeout=1)

    async def test_send_many_in_order(self) -> None:
        """send_many returns one response per message, in order."""
        async with running_server() as server:
            responses = await send_many("127.0.0.1", server.port, [b"a", b"b", b"c"], timeout=5)
        assert responses == [b"ACK|a", b"ACK|b", b"ACK|c"]
