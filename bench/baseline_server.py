"""The ACK-only baseline: the ceiling for a Python MLLP server on this machine.

It frames (MLLP release 1: <VT> message <FS><CR>) and answers each frame with a
fixed ACK, nothing more: no HL7 parsing, no storage. The only per-message work is
a byte scan for MSH-10 so that MSA-2 echoes it (HL7 v2 ch. 2.14.8.2); without
that echo no sender, and not our load generator, would accept the ACK.

Socket hygiene as DESIGN §7 asks: TCP_NODELAY, one write per ACK frame, a listen
backlog of 1024, persistent connections.

Run: `python -m bench.baseline_server [--port 0] [--ack-code AA] [--loop auto]`;
prints `LISTENING <host>:<port>` once bound and exits 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from collections.abc import Callable
from typing import cast

from bench.loadgen import run_sync, uvloop_available

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\r"
_MSH10_INDEX = 9  # after splitting MSH on its separator: MSH, MSH-2, MSH-3, ... MSH-10


def control_id_of(frame: bytes) -> bytes:
    """MSH-10 of a frame body, by a byte scan of the first segment only."""
    header_end = frame.find(b"\r")
    header = frame if header_end < 0 else frame[:header_end]
    if not header.startswith(b"MSH") or len(header) < 4:
        return b""
    parts = header.split(header[3:4], _MSH10_INDEX + 1)
    return parts[_MSH10_INDEX] if len(parts) > _MSH10_INDEX else b""


def ack_builder(ack_code: str) -> Callable[[bytes], bytes]:
    """A function from frame body to a whole ACK frame, with the fixed part precomputed."""
    head = (
        START_BLOCK
        + b"MSH|^~\\&|BENCH|BASELINE|||20240101000000||ACK|BASELINEACK|P|2.5.1\rMSA|"
        + ack_code.encode("ascii")
        + b"|"
    )
    tail = b"\r" + END_BLOCK

    def build(frame: bytes) -> bytes:
        return head + control_id_of(frame) + tail

    return build


class AckOnlyProtocol(asyncio.Protocol):
    """Frames the byte stream and writes one fixed ACK per complete frame."""

    def __init__(self, build_ack: Callable[[bytes], bytes]) -> None:
        self.build_ack = build_ack
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while (end := self.buffer.find(END_BLOCK)) >= 0:
            start = self.buffer.rfind(START_BLOCK, 0, end)
            frame = bytes(self.buffer[start + 1 : end]) if start >= 0 else None
            del self.buffer[: end + len(END_BLOCK)]
            if frame is not None:  # bytes without a start block are garbage: skip them
                self.transport.write(self.build_ack(frame))


async def serve(host: str, port: int, ack_code: str, announce: Callable[[str], None]) -> None:
    """Listen until SIGTERM/SIGINT, announcing the bound address once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    build = ack_builder(ack_code)
    server = await loop.create_server(lambda: AckOnlyProtocol(build), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()
    announce(f"LISTENING {bound[0]}:{bound[1]} uvloop={int(_using_uvloop(loop))}")
    await stop.wait()
    server.close()


def _using_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.startswith("uvloop")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ack-code", default="AA", help="MSA-1 to answer (AR lets tests check rejects)")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    use_uvloop = args.loop != "asyncio" and uvloop_available()
    if args.loop == "uvloop" and not use_uvloop:
        raise SystemExit("uvloop is not installed")
    run_sync(serve(args.host, args.port, args.ack_code, lambda line: print(line, flush=True)), use_uvloop)


if __name__ == "__main__":
    main()
