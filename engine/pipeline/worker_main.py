"""A stage worker process: `python -m engine.pipeline.worker_main [--nice N]`.

The engine starts these (engine/pipeline/workers.py) and talks to each over its stdin
and stdout: length-prefixed pickles, one request and one reply at a time. A request is
`(ChannelSpec, chunk of messages)`, a reply `("ok", [StageOutcome, ...])` or
`("error", exception type name)`. The first frame a worker writes is `("ready", pid)`,
once the mapping code is imported.

Why pipes and not multiprocessing: the worker's life is tied to the engine's by the
pipe itself (stdin at end of file means the engine is gone, even after a SIGKILL), and
nothing else is needed: no resource-tracker process (~13 MB), no executor manager and
queue feeder threads competing with the event loop for the GIL.

Only the frames go to fd 1: anything a library prints is sent to stderr instead, so it
cannot corrupt the protocol.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import signal
import struct
import sys
from typing import IO, Any

HEADER = struct.Struct(">Q")  # payload length, 8 bytes big-endian
MAX_FRAME = 1 << 31  # a chunk is a few MB at most; more means a corrupt stream


def encode(obj: Any) -> bytes:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    """`size` bytes, or None at end of file (the engine closed our stdin or died)."""
    parts: list[bytes] = []
    remaining = size
    while remaining:
        part = stream.read(remaining)
        if not part:
            return None
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def read_frame(stream: IO[bytes]) -> Any | None:
    header = _read_exactly(stream, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ValueError("frame too large")
    payload = _read_exactly(stream, size)
    if payload is None:
        return None
    return pickle.loads(payload)  # noqa: S301 - our own parent process, over a private pipe


def _protocol_streams() -> tuple[IO[bytes], IO[bytes]]:
    """(requests, replies); afterwards fd 1 is stderr, so stray prints go to the log."""
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    return sys.stdin.buffer, replies


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    from engine.pipeline.workers import warm_up, work_chunk

    replies.write(encode(("ready", warm_up())))
    while True:
        request = read_frame(requests)
        if request is None:
            return  # the engine is gone or closed the pool
        spec, chunk = request
        try:
            reply: tuple[str, Any] = ("ok", work_chunk(spec, chunk))
        except Exception as exc:  # stages catch their own errors; this is a worker bug
            reply = ("error", type(exc).__name__)
        replies.write(encode(reply))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.pipeline.worker_main")
    parser.add_argument("--nice", type=int, default=0, help="niceness to add (0-19)")
    args = parser.parse_args(argv)
    if args.nice:
        # Custody (store, then ACK) is what senders wait on; mapping works off a durable
        # queue and can wait. A higher niceness lets the kernel give the engine process
        # the core whenever both want it, and this worker every cycle it leaves idle.
        with contextlib.suppress(OSError):
            os.nice(args.nice)
    # A terminal's Ctrl-C reaches the whole process group; the engine then drains, still
    # using its workers, and ends them itself by closing their input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, replies = _protocol_streams()
    with contextlib.suppress(BrokenPipeError):  # the engine went away mid-reply
        serve(requests, replies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
