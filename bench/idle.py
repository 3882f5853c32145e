"""Idle MLLP connections: K senders that connect and then say nothing (issue #6 memory target).

A hospital network keeps many persistent MLLP connections open that are quiet most of
the time (MLLP release 1 has no keep-alive of its own). The engine must hold them
cheaply: this module opens them from the benchmark process, proves one of them still
carries a message end to end (`probe`), and counts how many the engine left open.

Plain blocking sockets with a selector: no event loop, so this can run beside the
load generator's own loop runs without sharing one.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import time
from types import TracebackType

from bench.loadgen import END_BLOCK, START_BLOCK, parse_ack
from bench.messages import MessageSource

#: File descriptors the benchmark keeps for itself beyond the idle connections.
_SPARE_FDS = 256


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to cover `needed` sockets (children inherit it).

    Returns the soft limit now in force; never above the hard limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed + _SPARE_FDS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        soft = new_soft
    return int(soft)


class IdleConnections:
    """K open, silent connections to one MLLP listener; a context manager that closes them."""

    def __init__(self, host: str, port: int, count: int, *, connect_timeout_s: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.count = count
        self.connect_timeout_s = connect_timeout_s
        self.sockets: list[socket.socket] = []
        self.connect_failures = 0

    def __enter__(self) -> IdleConnections:
        self.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> int:
        """Connect until `count` are open; returns how many connected (failures are counted)."""
        while len(self.sockets) + self.connect_failures < self.count:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
            except OSError:
                self.connect_failures += 1
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets.append(sock)
        return len(self.sockets)

    def still_open(self) -> int:
        """How many connections the engine has not closed: a closed one reads as EOF (or a reset)."""
        closed = 0
        with selectors.DefaultSelector() as selector:  # epoll: more than FD_SETSIZE sockets is fine
            for sock in self.sockets:
                selector.register(sock, selectors.EVENT_READ, data=sock)
            for key, _ in selector.select(timeout=0):
                readable: socket.socket = key.data
                try:
                    if readable.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                        closed += 1
                except BlockingIOError:
                    continue
                except OSError:
                    closed += 1
        return len(self.sockets) - closed

    def probe(self, source: MessageSource, timeout_s: float = 10.0) -> str:
        """Send one message on the last idle connection and return its MSA-1 ('' if none came).

        Proves the idle connections are live sessions, not sockets the engine has given up on.
        The message is then part of the channel's work like any other.
        """
        if not self.sockets:
            return ""
        sock = self.sockets[-1]
        control_id, message = source.next()
        deadline = time.monotonic() + timeout_s
        buffer = b""
        sock.settimeout(timeout_s)
        try:
            sock.sendall(START_BLOCK + message + END_BLOCK)
            while END_BLOCK not in buffer and time.monotonic() < deadline:
                chunk = sock.recv(4096)
                if not chunk:
                    return ""
                buffer += chunk
        except OSError:
            return ""
        if END_BLOCK not in buffer:
            return ""
        ack = parse_ack(buffer[: buffer.find(END_BLOCK)])
        if ack is None or ack[1] != control_id:
            return ""
        return ack[0].decode("ascii", "replace")

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets.clear()
