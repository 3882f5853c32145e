"""A bounded MLLP load generator: C persistent connections, one message in flight each.

Each connection sends a frame and waits for its ACK before sending the next, as
real senders do (HL7 v2 ch. 2, original acknowledgment mode; MLLP release 1).
A run stops at `max_messages` sent or `max_duration_s` elapsed, whichever comes
first. Every ACK is checked: MSA-1 AA/CA counts as accepted, any other code as
rejected, and MSA-2 must echo the MSH-10 we sent (DESIGN §4).

Connections are `asyncio.Protocol`s that send the next frame from
`data_received`: no task or future per message, so the generator costs as little
CPU as possible on a machine it shares with the server under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import math
import socket
import time
from array import array
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar, cast

from bench.messages import MessageSource

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\r"
_NS_PER_MS = 1_000_000
_T = TypeVar("_T")


# ------------------------------------------------------------------- ACKs


def parse_ack(frame: bytes) -> tuple[bytes, bytes] | None:
    """(MSA-1, MSA-2) of an ACK frame body, or None when it has no MSH/MSA.

    The field separator is the ACK's own MSH-1, so any delimiters work.
    """
    start = frame.find(b"MSH")
    if start < 0 or len(frame) < start + 4:
        return None
    separator = frame[start + 3 : start + 4]
    # MSA must start a segment: "MSA|" can also end a random MSH-10 in the ACK's header.
    msa = -1
    for terminator in (b"\r", b"\n"):
        found = frame.find(terminator + b"MSA" + separator, start)
        if found >= 0 and (msa < 0 or found + 1 < msa):
            msa = found + 1
    if msa < 0:
        return None
    end = len(frame)
    for terminator in (b"\r", b"\n"):
        found = frame.find(terminator, msa)
        if 0 <= found < end:
            end = found
    fields = frame[msa:end].split(separator)
    code = fields[1] if len(fields) > 1 else b""
    control_id = fields[2] if len(fields) > 2 else b""
    return code, control_id


ACCEPT_CODES = frozenset({b"AA", b"CA"})


# ---------------------------------------------------------------- results


def percentile_ms(sorted_ns: list[int], fraction: float) -> float:
    """Nearest-rank percentile of sorted nanosecond samples, in milliseconds."""
    if not sorted_ns:
        return 0.0
    # The smallest rank covering `fraction` of the samples; the epsilon absorbs float error.
    rank = max(1, min(len(sorted_ns), math.ceil(fraction * len(sorted_ns) - 1e-9)))
    return sorted_ns[rank - 1] / _NS_PER_MS


@dataclass(slots=True)
class LoadResult:
    """What one run measured. `msgs_per_s` counts accepted (AA/CA) ACKs only."""

    target: str
    connections: int
    sent: int
    accepted: int
    rejected: int
    mismatched: int
    errors: int
    elapsed_s: float
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    ack_codes: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -------------------------------------------------------------------- run


class _Run:
    """Shared state of one run: the budget, the counters and the latency samples."""

    def __init__(self, source: MessageSource, max_messages: int, max_duration_s: float) -> None:
        self.source = source
        self.max_messages = max_messages
        self.max_duration_s = max_duration_s
        self.deadline = float("inf")
        self.sent = 0
        self.accepted = 0
        self.rejected = 0
        self.mismatched = 0
        self.latencies_ns = array("q")  # 8 bytes a sample: a long run stays small
        self.codes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.started_ns = 0
        self.last_ack_ns = 0

    def start_clock(self) -> None:
        self.started_ns = time.perf_counter_ns()
        self.last_ack_ns = self.started_ns
        self.deadline = time.perf_counter() + self.max_duration_s

    def claim(self) -> bool:
        """Take one message from the budget, if count and time allow."""
        if self.sent >= self.max_messages or time.perf_counter() >= self.deadline:
            return False
        self.sent += 1
        return True

    def record(self, latency_ns: int, ack: tuple[bytes, bytes] | None, expected: bytes) -> None:
        self.latencies_ns.append(latency_ns)
        self.last_ack_ns = time.perf_counter_ns()
        if ack is None:
            self.mismatched += 1
            self.codes["unparsable"] += 1
            return
        code, control_id = ack
        self.codes[code.decode("ascii", "replace")[:4]] += 1
        if control_id != expected:
            self.mismatched += 1
        elif code in ACCEPT_CODES:
            self.accepted += 1
        else:
            self.rejected += 1


class _Connection(asyncio.Protocol):
    """One sender: write a frame, wait for its ACK, repeat until the budget is spent."""

    def __init__(self, run: _Run, done: asyncio.Future[None]) -> None:
        self.run = run
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.expected: bytes | None = None
        self.sent_ns = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Without NODELAY a small frame can wait ~40 ms for the peer's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_next(self) -> None:
        assert self.transport is not None
        if not self.run.claim():
            self.expected = None
            self.transport.close()
            return
        control_id, message = self.run.source.next()
        self.expected = control_id
        self.sent_ns = time.perf_counter_ns()
        self.transport.write(START_BLOCK + message + END_BLOCK)  # one write per frame

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(END_BLOCK)) >= 0:
            frame = bytes(self.buffer[:end])
            del self.buffer[: end + len(END_BLOCK)]
            self._on_ack(frame)

    def _on_ack(self, frame: bytes) -> None:
        if self.expected is None:
            self.run.errors["unsolicited_ack"] += 1
            return
        latency = time.perf_counter_ns() - self.sent_ns
        self.run.record(latency, parse_ack(frame), self.expected)
        self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.expected is not None:
            self.run.errors["closed_without_ack"] += 1
            self.expected = None
        if not self.done.done():
            self.done.set_result(None)

    def abort_if_stuck(self, now_ns: int, timeout_ns: int) -> None:
        """Give up on an ACK that is overdue (counted as an error, connection dropped)."""
        if self.expected is not None and now_ns - self.sent_ns > timeout_ns and self.transport:
            self.run.errors["ack_timeout"] += 1
            self.expected = None
            self.transport.abort()


async def _watchdog(connections: list[_Connection], ack_timeout_s: float) -> None:
    timeout_ns = int(ack_timeout_s * 1e9)
    while True:
        await asyncio.sleep(min(0.25, ack_timeout_s / 4))
        now = time.perf_counter_ns()
        for connection in connections:
            connection.abort_if_stuck(now, timeout_ns)


async def run_load(
    host: str,
    port: int,
    *,
    target: str,
    connections: int,
    source: MessageSource,
    max_messages: int,
    max_duration_s: float,
    ack_timeout_s: float = 5.0,
) -> LoadResult:
    """Drive host:port with `connections` senders until the message or time budget is spent."""
    loop = asyncio.get_running_loop()
    run = _Run(source, max_messages, max_duration_s)
    dones: list[asyncio.Future[None]] = []
    senders: list[_Connection] = []

    async def connect() -> None:
        done: asyncio.Future[None] = loop.create_future()
        try:
            _, sender = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(run, done), host, port), ack_timeout_s
            )
        except (OSError, TimeoutError):
            run.errors["connect_failed"] += 1
            return
        senders.append(sender)
        dones.append(done)

    # Connect everyone first so connection setup is not part of the measurement.
    await asyncio.gather(*(connect() for _ in range(connections)))
    run.start_clock()
    for sender in senders:
        sender.send_next()
    watchdog = asyncio.create_task(_watchdog(senders, ack_timeout_s))
    try:
        hard_limit = max_duration_s + 2 * ack_timeout_s + 5
        if dones:
            await asyncio.wait(dones, timeout=hard_limit)
    finally:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        for sender in senders:
            if sender.transport is not None and not sender.transport.is_closing():
                sender.transport.abort()
    return _result(run, target, connections)


def _result(run: _Run, target: str, connections: int) -> LoadResult:
    samples = sorted(run.latencies_ns)
    elapsed_s = max(run.last_ack_ns - run.started_ns, 1) / 1e9
    return LoadResult(
        target=target,
        connections=connections,
        sent=run.sent,
        accepted=run.accepted,
        rejected=run.rejected,
        mismatched=run.mismatched,
        errors=sum(run.errors.values()),
        elapsed_s=round(elapsed_s, 4),
        msgs_per_s=round(run.accepted / elapsed_s, 1) if run.accepted else 0.0,
        p50_ms=round(percentile_ms(samples, 0.50), 3),
        p99_ms=round(percentile_ms(samples, 0.99), 3),
        max_ms=round(samples[-1] / _NS_PER_MS, 3) if samples else 0.0,
        ack_codes=dict(run.codes),
        error_kinds=dict(run.errors),
    )


# ------------------------------------------------------------ event loops


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when asked for and installed, else None (the default loop)."""
    if not use_uvloop or not uvloop_available():
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = importlib.import_module("uvloop").new_event_loop
    return factory


def run_sync(coroutine: Coroutine[Any, Any, _T], use_uvloop: bool) -> _T:
    """Run `coroutine` on a fresh event loop (uvloop when asked for and installed)."""
    with asyncio.Runner(loop_factory=loop_factory(use_uvloop)) as runner:
        return runner.run(coroutine)
