"""The python-hl7 baseline: python-hl7's own asyncio MLLP server, parsing every message.

It uses `hl7.mllp.start_hl7_server`, whose `HL7StreamReader.readmessage()` runs
`hl7.parse` on each frame, and answers with `Message.create_ack()` (MSA-1 AA,
MSA-2 = MSH-10, HL7 v2 ch. 2.14.8). This is what a straightforward Python MLLP
receiver costs; DESIGN §7 puts it near 900 msgs/s on this kind of machine. No
storage. The server's one-write-per-frame (`writeblock`) and asyncio's default
TCP_NODELAY are python-hl7's own behaviour and are kept as they are.

Run: `python -m bench.hl7_baseline_server [--port 0] [--loop auto]`;
prints `LISTENING <host>:<port>` once bound and exits 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from typing import Any

import hl7.mllp

from bench.loadgen import run_sync, uvloop_available


async def answer(reader: Any, writer: Any) -> None:
    """Parse each message with python-hl7 and write its AA acknowledgment."""
    try:
        while True:
            message = await reader.readmessage()
            writer.writemessage(message.create_ack())
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the sender closed the connection
    finally:
        writer.close()


async def serve(host: str, port: int, announce: Callable[[str], None]) -> None:
    """Listen until SIGTERM/SIGINT, announcing the bound address once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The corpus holds UTF-8; python-hl7 would decode as ASCII by default.
    server = await hl7.mllp.start_hl7_server(answer, host, port, encoding="utf-8", backlog=1024)
    bound = server.sockets[0].getsockname()
    uvloop_on = type(loop).__module__.startswith("uvloop")
    announce(f"LISTENING {bound[0]}:{bound[1]} uvloop={int(uvloop_on)}")
    await stop.wait()
    server.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    use_uvloop = args.loop != "asyncio" and uvloop_available()
    if args.loop == "uvloop" and not use_uvloop:
        raise SystemExit("uvloop is not installed")
    run_sync(serve(args.host, args.port, lambda line: print(line, flush=True)), use_uvloop)


if __name__ == "__main__":
    main()
