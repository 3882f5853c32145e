"""The MLLP listener: frames in, one handler call per frame, responses out in order.

MLLP release 1 (HL7 v2 Implementation Guide, Appendix C) over asyncio's public API
(add_reader on the listening socket, connect_accepted_socket, Protocol/Transport). Read
top to bottom as the lifecycle: limits and connection identity, one connection's life
(admitted -> optional TLS handshake -> frames -> close), then the server (start ->
accept -> stop_accepting -> drain -> close).

Why our own accept step: the allow-list and the connection limits are checked on the
raw socket, before a single byte is read or a TLS handshake is spent on it, and a failed
handshake is visible to us (counted as tls_failed). `create_server(ssl=...)` gives
neither, and upgrading inside `connection_made` with `start_tls` races the first TLS
bytes on uvloop.

Why a Protocol and not streams: an idle connection then costs a transport, this object,
an empty decoder and one timer handle, with no task and no reader buffer; a worker task
exists only while the connection has frames to answer. Timeouts use one lazily re-armed
`loop.call_at` handle per connection: a read only stores a timestamp, and the handle,
when it fires, checks the real deadlines and re-arms itself.

Resources are bounded (DESIGN.md §5.3): frame size (decoder), frame deadline, idle
timeout, TLS handshake time, connections per listener and per peer, and per-connection
queued frames (reading pauses while more than `max_frame_bytes` of received frames wait
for the handler).

Rate limits per peer address (engine/mllp/ratelimit.py), both optional: new connections
per second (over it: refused at accept like the other limits, counted as refused_rate)
and messages per second across the peer's connections. Over the message rate the
connection waits before handing its next frame to the handler and stops reading
meanwhile, so TCP flow control slows the sender down: backpressure, never a dropped or
refused message (an AR would make many senders resend at once, or stop the interface).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import structlog

from engine.mllp.framing import Frame, FrameDecoder, FrameInterrupted, FrameTooLarge, Garbage, encode_frame
from engine.mllp.ratelimit import PeerBuckets, RateSpec
from engine.mllp.tls import peer_subject
from engine.obs import metrics

log = structlog.get_logger("hl7engine.mllp")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
CloseReason = Literal["peer", "idle", "frame_deadline", "shutdown", "error"]


@dataclass(frozen=True, slots=True)
class MllpLimits:
    """Per-listener resource limits (DESIGN.md §5.3). Times in seconds, sizes in bytes."""

    max_frame_bytes: int = 1 << 20
    frame_timeout_s: float = 30.0  # a started frame must end within this (slowloris)
    idle_timeout_s: float | None = 300.0  # no bytes, nothing in flight this long: close (None: never)
    max_connections: int = 1000
    max_connections_per_peer: int = 100
    backlog: int = 512  # listen() backlog; never below 128
    tls_handshake_timeout_s: float = 30.0  # a TLS peer must finish its handshake within this
    peer_connection_rate: RateSpec | None = None  # new connections/s per peer address (None: no limit)
    peer_message_rate: RateSpec | None = None  # frames/s per peer address, all its connections together


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """Who is on the other end of a connection. Identifies systems, never patients."""

    peer_host: str
    peer_port: int
    connection_id: int
    tls_subject: Mapping[str, str] | None = None
    tls_dns_names: tuple[str, ...] = ()  # subjectAltName DNS entries of the verified client certificate


#: Called once per frame, in order per connection; returns the response payload or None.
Handler = Callable[[bytes, ConnectionInfo], Awaitable[bytes | None]]


class _ChannelMetrics:
    """The listener's metric children, bound to its channel label once (cheap per frame)."""

    def __init__(self, channel: str) -> None:
        self.open = metrics.CONNECTIONS_OPEN.labels(channel)
        self.received = metrics.MESSAGES_RECEIVED.labels(channel)
        self.received_bytes = metrics.RECEIVED_BYTES.labels(channel)
        self.garbage = metrics.GARBAGE_BYTES.labels(channel)
        self.too_large = metrics.FRAMES_REJECTED.labels(channel, "too_large")
        self.interrupted = metrics.FRAMES_REJECTED.labels(channel, "interrupted")
        self.deadline = metrics.FRAMES_REJECTED.labels(channel, "deadline")
        self.closed_mid_frame = metrics.FRAMES_REJECTED.labels(channel, "closed_mid_frame")
        self.throttled = metrics.MESSAGES_THROTTLED.labels(channel)
        self._channel = channel

    def connection(self, outcome: str) -> None:
        metrics.CONNECTIONS.labels(self._channel, outcome).inc()

    def closed(self, reason: CloseReason) -> None:
        metrics.CONNECTIONS_CLOSED.labels(self._channel, reason).inc()


def _parse_networks(allow: Sequence[str | IPNetwork] | None) -> tuple[IPNetwork, ...] | None:
    if allow is None:
        return None
    return tuple(ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net for net in allow)


def _peer_dns_names(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str, ...]:
    """subjectAltName DNS entries of the verified peer certificate (sender binding matches on them)."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        return ()
    entries = cast(tuple[tuple[str, str], ...], cert.get("subjectAltName", ()))
    return tuple(value for kind, value in entries if kind == "DNS")


def _address_allowed(host: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return any(address in net for net in networks)


class _Connection(asyncio.Protocol):
    """One MLLP connection: decode, queue frames, answer them in order, enforce deadlines."""

    __slots__ = (
        "_attach", "_close_reason", "_decoder", "_draining", "_eof", "_frame_started_at",
        "_frames_started", "_info", "_last_activity", "_limits", "_loop", "_lost", "_metrics",
        "_queue", "_queued_bytes", "_reading_paused", "_server", "_timer", "_transport", "_worker",
        "_write_resumed", "connection_id", "peer_host", "peer_port",
    )

    def __init__(self, server: MllpServer, peer_host: str, peer_port: int, connection_id: int) -> None:
        self._server = server
        self._loop = server.loop
        self._limits = server.limits
        self._metrics = server.metrics
        self.peer_host = peer_host
        self.peer_port = peer_port
        self.connection_id = connection_id
        self._attach: asyncio.Task[None] | None = None  # the socket -> transport (+ TLS) step
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(server.limits.max_frame_bytes)
        self._queue: deque[bytes] | None = None  # created on the first frame: idle connections stay small
        self._queued_bytes = 0
        self._worker: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._frame_started_at = 0.0
        self._frames_started = 0
        self._info: ConnectionInfo | None = None
        self._reading_paused = False
        self._write_resumed: asyncio.Future[None] | None = None
        self._eof = False
        self._draining = False
        self._close_reason: CloseReason | None = None
        self._lost = False

    # ---------------------------------------------------------------- attaching

    def attach(self, sock: socket.socket) -> None:
        """Wrap an admitted socket in a transport; with TLS, the handshake happens first."""
        self._attach = self._loop.create_task(self._connect(sock))
        self._server.track(self._attach)

    async def _connect(self, sock: socket.socket) -> None:
        context = self._server.ssl_context
        try:
            await self._loop.connect_accepted_socket(
                lambda: self,
                sock,
                ssl=context,
                ssl_handshake_timeout=self._limits.tls_handshake_timeout_s if context else None,
            )
        except asyncio.CancelledError:  # shutdown during the handshake
            sock.close()
            self._finish("shutdown")
            raise
        except Exception as exc:  # ssl.SSLError, OSError, handshake timeout: no session
            sock.close()
            if context is not None:
                self._metrics.connection("tls_failed")
            log.info("mllp_attach_failed", channel=self._server.channel, tls=context is not None,
                     error_type=type(exc).__name__)
            self._finish("error")
        finally:
            self._attach = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Called once the transport (and TLS session, if any) is up."""
        self._transport = cast(asyncio.Transport, transport)
        self._metrics.connection("accepted")
        ssl_object = transport.get_extra_info("ssl_object") if self._server.ssl_context else None
        self._info = ConnectionInfo(self.peer_host, self.peer_port, self.connection_id,
                                    peer_subject(ssl_object), _peer_dns_names(ssl_object))
        self._last_activity = self._loop.time()
        if self._limits.idle_timeout_s is not None:
            self._arm_timer(self._last_activity + self._limits.idle_timeout_s)
        if self._draining:
            self._close("shutdown")

    # ---------------------------------------------------------------- reading

    def data_received(self, data: bytes) -> None:
        if self._close_reason is not None:
            return
        now = self._loop.time()
        self._last_activity = now
        decoder = self._decoder
        queued_before = self._queued_bytes
        frames = 0
        for event in decoder.feed(data):
            if isinstance(event, Frame):
                frames += 1
                queue = self._queue
                if queue is None:
                    queue = self._queue = deque()
                queue.append(event.payload)
                self._queued_bytes += len(event.payload)
            elif isinstance(event, Garbage):
                self._metrics.garbage.inc(event.count)
            elif isinstance(event, FrameTooLarge):
                self._metrics.too_large.inc()
            elif isinstance(event, FrameInterrupted):
                self._metrics.interrupted.inc()
        if frames:  # one increment per read, not per frame: each inc takes a lock
            self._metrics.received.inc(frames)
            self._metrics.received_bytes.inc(self._queued_bytes - queued_before)
        if decoder.in_frame and decoder.frames_started != self._frames_started:
            # A frame is left partial by this read; its deadline starts at its start block
            # (approximated by this read, which is at most one read late).
            self._frame_started_at = now
            self._arm_timer(now + self._limits.frame_timeout_s)
        self._frames_started = decoder.frames_started
        if self._queue:
            if self._queued_bytes > self._limits.max_frame_bytes:
                self._pause_reading()
            if self._worker is None:
                self._start_worker()
        if self._draining and not decoder.in_frame:
            self._pause_reading()  # the frame we waited for is complete; take nothing new
            self._close_if_done()

    def eof_received(self) -> bool:
        """Keep the write side open (plain TCP) until frames already received are answered."""
        self._eof = True
        return self._server.ssl_context is None and (bool(self._queue) or self._worker is not None)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self._draining and self._transport is not None:
            self._reading_paused = False
            self._last_activity = self._loop.time()
            if self._decoder.in_frame:
                # The peer could not send while we were not reading: restart its frame clock.
                self._frame_started_at = self._last_activity
                self._arm_timer(self._last_activity + self._limits.frame_timeout_s)
            self._transport.resume_reading()

    # ---------------------------------------------------------------- answering

    def _start_worker(self) -> None:
        self._worker = self._loop.create_task(self._work())
        self._server.track(self._worker)

    async def _work(self) -> None:
        """Hand queued frames to the handler one at a time and write each response in order."""
        info, transport = self._info, self._transport
        assert info is not None and transport is not None
        handler = self._server.handler
        queue = self._queue
        assert queue is not None  # started only once a frame is queued
        message_rate = self._server.message_rate
        try:
            while queue and not self._lost and self._close_reason is None:
                if message_rate is not None:
                    delay = message_rate.reserve(self.peer_host)
                    if delay > 0:
                        await self._throttle(delay)
                        if self._lost or self._close_reason is not None:
                            break
                payload = queue.popleft()
                self._queued_bytes -= len(payload)
                response = await handler(payload, info)
                if self._lost or self._close_reason is not None:
                    break
                if response is not None:
                    transport.write(encode_frame(response))
                    if self._write_resumed is not None:
                        await self._write_resumed  # the peer is not reading its ACKs; wait
                if not queue:
                    self._resume_reading()
        except Exception as exc:
            # The payload may hold PHI: log the exception type only, never its text.
            log.error("mllp_handler_failed", channel=self._server.channel,
                      connection_id=info.connection_id, error_type=type(exc).__name__)
            self._close("error")
        finally:
            self._worker = None
        self._close_if_done()

    async def _throttle(self, delay: float) -> None:
        """Over the peer's message rate: stop reading (TCP pushes back on the sender) and
        wait for the token already reserved. Queued frames stay queued, in order."""
        self._metrics.throttled.inc()
        self._pause_reading()
        await asyncio.sleep(delay)

    def _close_if_done(self) -> None:
        """Close a draining or half-closed connection once nothing is left to answer."""
        if self._queue or self._worker is not None:
            return
        if self._draining and (self._eof or not self._decoder.in_frame):
            self._close("shutdown")
        elif self._eof:
            self._close("peer")

    def pause_writing(self) -> None:
        if self._write_resumed is None:
            self._write_resumed = self._loop.create_future()

    def resume_writing(self) -> None:
        waiter, self._write_resumed = self._write_resumed, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---------------------------------------------------------------- deadlines

    def _arm_timer(self, when: float) -> None:
        if self._close_reason is not None:
            return  # the timer slot now holds the close's abort fallback
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return  # it fires first and re-arms itself for the later deadline
            timer.cancel()
        self._timer = self._loop.call_at(when, self._check_deadlines)

    def _check_deadlines(self) -> None:
        self._timer = None
        if self._close_reason is not None or self._lost:
            return
        now = self._loop.time()
        limits = self._limits
        if self._decoder.in_frame and not self._reading_paused:
            deadline = self._frame_started_at + limits.frame_timeout_s
            if deadline <= now:
                self._metrics.deadline.inc()
                self._close("frame_deadline", abort=True)
                return
            self._arm_timer(deadline)
        if limits.idle_timeout_s is None:
            return
        # Waiting on our own handler is not idleness; waiting on a peer that reads no
        # responses (writes paused) and sends nothing is.
        busy = self._write_resumed is None and (
            self._worker is not None or bool(self._queue) or self._decoder.in_frame
        )
        idle_deadline = (now if busy else self._last_activity) + limits.idle_timeout_s
        if idle_deadline <= now:
            self._close("idle")
            return
        self._arm_timer(idle_deadline)

    # ---------------------------------------------------------------- closing

    def begin_drain(self) -> None:
        """Shutdown: answer what was received (finishing a partial frame), then close."""
        self._draining = True
        if self._transport is None:
            if self._attach is not None:
                self._attach.cancel()  # still in the TLS handshake: nothing received yet
        elif not self._decoder.in_frame:
            self._pause_reading()
            self._close_if_done()

    def force_close(self) -> None:
        self._close("shutdown", abort=True)
        for task in (self._attach, self._worker):
            if task is not None:
                task.cancel()

    def _close(self, reason: CloseReason, *, abort: bool = False) -> None:
        if self._close_reason is not None or self._transport is None:
            return
        self._close_reason = reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if abort or self._write_resumed is not None:
            self._transport.abort()  # nothing to flush, or a peer that reads nothing
            return
        self._transport.close()  # flushes responses already written, then closes
        # A graceful close waits for the peer to read what is buffered; do not wait forever.
        self._timer = self._loop.call_later(self._limits.frame_timeout_s, self._transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(self._close_reason or "peer")

    def _finish(self, reason: CloseReason) -> None:
        """Bookkeeping once the connection is gone, whether or not it ever had a transport."""
        if self._lost:
            return
        self._lost = True
        self._close_reason = self._close_reason or reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._decoder.in_frame and not self._decoder.discarding and reason != "frame_deadline":
            self._metrics.closed_mid_frame.inc()
        self._metrics.closed(reason)
        self._queue = None  # never answered, so the sender will resend them
        self._queued_bytes = 0
        self.resume_writing()  # release a worker waiting to write
        self._server.unregister(self)


class MllpServer:
    """An MLLP listener for one channel. Lifecycle: start -> stop_accepting -> drain -> close."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        *,
        limits: MllpLimits | None = None,
        ssl_context: ssl.SSLContext | None = None,
        channel: str = "default",
        allow: Sequence[str | IPNetwork] | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.handler = handler
        self.limits = limits or MllpLimits()
        self.ssl_context = ssl_context
        self.channel = channel
        self.metrics = _ChannelMetrics(channel)
        self._allow = _parse_networks(allow)
        rates = self.limits
        self._connection_rate = PeerBuckets(rates.peer_connection_rate) if rates.peer_connection_rate else None
        self.message_rate = PeerBuckets(rates.peer_message_rate) if rates.peer_message_rate else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[socket.socket] = []
        self._accepting = False
        self._accept_retry: asyncio.TimerHandle | None = None
        self._connections: set[_Connection] = set()
        self._per_peer: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._no_connections = asyncio.Event()
        self._no_connections.set()
        self._port = 0

    # ---------------------------------------------------------------- startup

    async def start(self) -> None:
        """Bind and listen; afterwards `port` holds the bound port (useful with port 0)."""
        self._loop = asyncio.get_running_loop()
        self._listeners = await self._bind()
        self._port = int(self._listeners[0].getsockname()[1])
        self._accepting = True
        self._watch_listeners()
        log.info("mllp_listening", channel=self.channel, port=self._port, tls=self.ssl_context is not None)

    async def _bind(self) -> list[socket.socket]:
        """One listening socket per address `host` resolves to, as asyncio.create_server does."""
        infos = await self.loop.getaddrinfo(
            self.host or None, self._requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        listeners: list[socket.socket] = []
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                listeners.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # v4 has its own socket
                sock.bind(address)
                sock.listen(max(self.limits.backlog, 128))
                sock.setblocking(False)
        except OSError:
            for sock in listeners:
                sock.close()
            raise
        return listeners

    @property
    def port(self) -> int:
        return self._port

    @property
    def connections(self) -> int:
        """Open connections, including those still in their TLS handshake."""
        return len(self._connections)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("MllpServer.start() has not been awaited")
        return self._loop

    # ---------------------------------------------------------------- accepting

    def _watch_listeners(self) -> None:
        self._accept_retry = None
        if self._accepting:
            for sock in self._listeners:
                self.loop.add_reader(sock.fileno(), self._accept_ready, sock)

    def _unwatch_listeners(self) -> None:
        for sock in self._listeners:
            self.loop.remove_reader(sock.fileno())

    def _accept_ready(self, listener: socket.socket) -> None:
        """Accept what the backlog holds (bounded per wake-up so reads are not starved)."""
        for _ in range(max(self.limits.backlog, 128)):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the peer gave up while queued
            except OSError as exc:
                # Out of file descriptors or buffers: stop accepting for a moment instead of
                # spinning on a listener that stays readable (asyncio's servers do the same).
                log.warning("mllp_accept_paused", channel=self.channel, error_type=type(exc).__name__)
                self._unwatch_listeners()
                self._accept_retry = self.loop.call_later(1.0, self._watch_listeners)
                return
            self._admit(sock, str(address[0]), int(address[1]))

    def _admit(self, sock: socket.socket, host: str, port: int) -> None:
        """Refuse at once (nothing read, no handshake) or hand the socket to a new connection."""
        refusal = self._refusal(host)
        if refusal is not None:
            sock.close()
            self.metrics.connection(refusal)
            if refusal == "refused_address":  # a configuration matter, worth a line; floods are not
                log.warning("mllp_connection_refused", channel=self.channel, reason=refusal, peer=host)
            return
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(self, host, port, next(self._ids))
        self._register(conn)
        conn.attach(sock)

    def _refusal(self, host: str) -> str | None:
        """Why a new connection from `host` is refused (a CONNECTIONS outcome), or None to admit."""
        if self._allow is not None and not _address_allowed(host, self._allow):
            return "refused_address"
        # Before the connection limits: attempts refused for being over a limit still
        # spend tokens, so a peer hammering a full listener is slowed down too.
        if self._connection_rate is not None and not self._connection_rate.try_take(host):
            return "refused_rate"
        if len(self._connections) >= self.limits.max_connections:
            return "refused_limit"
        if self._per_peer.get(host, 0) >= self.limits.max_connections_per_peer:
            return "refused_peer_limit"
        return None

    def _register(self, conn: _Connection) -> None:
        self._connections.add(conn)
        self._per_peer[conn.peer_host] = self._per_peer.get(conn.peer_host, 0) + 1
        self._no_connections.clear()
        self.metrics.open.inc()

    def unregister(self, conn: _Connection) -> None:
        """Called by a connection once it is gone."""
        self._connections.discard(conn)
        left = self._per_peer.get(conn.peer_host, 1) - 1
        if left > 0:
            self._per_peer[conn.peer_host] = left
        else:
            self._per_peer.pop(conn.peer_host, None)
        self.metrics.open.dec()
        if not self._connections:
            self._no_connections.set()

    def track(self, task: asyncio.Task[None]) -> None:
        """Keep a reference to a connection's task until it ends (shutdown waits for it)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- shutdown

    async def stop_accepting(self) -> None:
        """Close the listening sockets; open connections carry on."""
        if not self._accepting:
            return
        self._accepting = False
        if self._accept_retry is not None:
            self._accept_retry.cancel()
            self._accept_retry = None
        else:
            self._unwatch_listeners()
        for sock in self._listeners:
            sock.close()

    async def drain(self, timeout: float) -> None:
        """Answer frames already received (and partial frames that complete), close
        connections as they finish, and force-close whatever is left after `timeout`."""
        await self.stop_accepting()
        for conn in list(self._connections):
            conn.begin_drain()
        deadline = self.loop.time() + max(0.0, timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_connections.wait(), timeout)
        forced = len(self._connections)
        for conn in list(self._connections):
            conn.force_close()
        if forced:
            log.warning("mllp_drain_forced", channel=self.channel, connections=forced)
        remaining = deadline - self.loop.time()
        if self._tasks and remaining > 0:
            # Handlers of connections the peer already closed may still be committing.
            await asyncio.wait(set(self._tasks), timeout=remaining)
        await self._cancel_tasks()

    async def _cancel_tasks(self) -> None:
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop everything now: force-close connections, cancel tasks, release the socket."""
        await self.stop_accepting()
        for conn in list(self._connections):
            conn.force_close()
        await self._cancel_tasks()
        if self._connections:
            # connection_lost callbacks run on the next loop iterations.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_connections.wait(), 1.0)

    async def __aenter__(self) -> MllpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
