"""`hl7engine send`: an MLLP client for files of messages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.hl7.batch import split_messages
from engine.mllp.client import MllpClient
from engine.mllp.tls import client_context

_POSITIVE = frozenset({"AA", "CA"})


def ack_code(response: bytes) -> str:
    """MSA-1 of an ACK ("" if there is none); an MLLP release 2 commit block counts as CA."""
    if response == b"\x06":
        return "CA"
    text = response.decode("latin-1")
    for segment in text.replace("\n", "\r").split("\r"):
        if segment.startswith("MSA") and len(segment) > 4:
            return segment[4:].split(segment[3], 2)[0]
    return ""


def parse_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"target must be HOST:PORT, got {target!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def send_files(
    target: str,
    files: list[Path],
    *,
    timeout: float,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    out: Callable[[str], None],
) -> bool:
    """Sends every message of every file on one connection, waiting for each ACK.

    Prints each ACK (segments on their own lines). Returns False if any ACK was not
    AA/CA or did not arrive.
    """
    host, port = parse_target(target)
    ssl_context = client_context(tls_ca, tls_cert, tls_key) if tls_ca or tls_cert else None
    client = MllpClient()
    await client.connect(host, port, ssl_context=ssl_context, timeout=timeout)
    all_ok = True
    try:
        for path in files:
            for raw in split_messages(path.read_bytes()):
                response = await client.send(raw, timeout=timeout)
                code = ack_code(response)
                all_ok = all_ok and code in _POSITIVE
                out(response.decode("utf-8", errors="replace").replace("\r", "\n").rstrip("\n"))
                out("")
    finally:
        await client.close()
    return all_ok
