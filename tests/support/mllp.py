"""A deliberately independent, minimal MLLP client for tests (not the engine's own)."""

from __future__ import annotations

import asyncio

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


def frame(payload: bytes) -> bytes:
    return SB + payload + EB + CR


async def read_frame(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    data = await asyncio.wait_for(reader.readuntil(EB + CR), timeout)
    start = data.rfind(SB)
    return data[start + 1 : -2]


async def exchange(host: str, port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(frame(payload))
        await writer.drain()
        return await read_frame(reader, timeout)
    finally:
        writer.close()


def msa(ack: bytes) -> list[str]:
    """MSA fields of an ACK: [code, control id, ...]."""
    for segment in ack.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA"):
            return segment.decode("latin-1").split(segment.decode("latin-1")[3])[1:]
    raise AssertionError("no MSA segment in the ACK")


def err_code(ack: bytes) -> str:
    for segment in ack.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"ERR"):
            text = segment.decode("latin-1")
            fields = text.split(text[3])
            if len(fields) > 3 and fields[3]:
                return fields[3].split("^")[0]  # v2.5+: ERR-3 (CWE)
            if len(fields) > 1:  # before v2.5: ERR-1 (ELD), its 4th component is the code (CE)
                parts = fields[1].split("^")
                return parts[3].split("&")[0] if len(parts) > 3 else ""
            return ""
    return ""
