"""`type: file` — one FHIR Bundle per line (NDJSON), fsynced before messages are marked done.

Each line is the Bundle of one stored message; the runner sets its `Bundle.id` to
`<channel>-<message id>` (engine/pipeline/workers.py), so a line can be traced back to the stored message and a
redelivery after a crash can be recognised: the runner marks a batch done only after
this sink returns, so at most the last batch written can come again. On start the sink
reads back the tail of the file (bounded) to learn those ids and skips them, and cuts
off a torn last line left by a crash mid-write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.config.models import OutputFile
from engine.registry import BuildContext, Registry
from engine.types import DeliveryResult, Exchange, PermanentError, TransientError

#: How many recent line ids are remembered for redelivery detection.
_RECENT_IDS = 4096
#: Read size when scanning the file's tail backwards on start.
_CHUNK = 256 * 1024
#: A line's end: the runner sets Bundle.id last, so it closes the line.
_LINE_ID = re.compile(rb'"id":"([A-Za-z0-9_.-]+-[0-9]+)"}\n')


def _last_newline_end(fd: int, size: int) -> int:
    """Offset just past the last newline (0 if none): where the last whole line ends."""
    position = size
    while position > 0:
        start = max(0, position - _CHUNK)
        index = os.pread(fd, position - start, start).rfind(b"\n")
        if index >= 0:
            return start + index + 1
        position = start
    return 0


class FileSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["file"]
    path: OutputFile = Field(description="NDJSON output file; one Bundle per line. Relative to the working directory.")
    name: str | None = Field(default=None, description="Sink name for metrics and the store; default 'file'.")
    fsync: bool = Field(default=True, description="fsync after each batch (turn off only for throwaway output).")


def line_id(exchange: Exchange) -> str:
    return f"{exchange.message.channel}-{exchange.message.id}"


class FileSink:
    """Appends Bundles to an NDJSON file; one write and one fsync per batch."""

    def __init__(self, name: str, path: Path, *, fsync: bool = True) -> None:
        self.name = name
        self.path = path
        self._fsync = fsync
        self._fd: int | None = None
        self._recent: deque[str] = deque(maxlen=_RECENT_IDS)
        self._recent_set: set[str] = set()

    async def start(self) -> None:
        await asyncio.to_thread(self._open)

    async def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            await asyncio.to_thread(os.close, fd)

    async def deliver_many(self, exchanges: Sequence[Exchange]) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        lines: list[bytes] = []
        ids: list[str] = []
        for exchange in exchanges:
            ident = line_id(exchange)
            line = exchange.output_json()
            if line is None:
                results.append(PermanentError("no FHIR output to write (no mapping stage in the pipeline?)"))
                continue
            results.append(None)
            if ident in self._recent_set:
                continue  # already on disk: a redelivery after a crash
            lines.append(line + b"\n")
            ids.append(ident)
        if lines:
            try:
                await asyncio.to_thread(self._append, b"".join(lines))
            except OSError as exc:
                # Disk full, permissions changed, volume gone: all worth retrying later.
                error = TransientError(f"file sink write failed: {exc.__class__.__name__} errno={exc.errno}")
                return [error if r is None else r for r in results]
            for ident in ids:
                self._remember(ident)
        return results

    # ------------------------------------------------------------ blocking helpers

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            self._repair_and_learn(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _repair_and_learn(self, fd: int) -> None:
        """Cut a torn last line, then learn the ids of the last lines written.

        Reads backwards in small chunks and looks only at each line's end, where the
        runner put `"id":"<channel>-<n>"}`: memory stays bounded however large the lines.
        """
        size = os.fstat(fd).st_size
        end = _last_newline_end(fd, size)
        if end < size:
            # A crash mid-write left a torn line; it was never marked done, so it comes again.
            os.ftruncate(fd, end)
            os.fsync(fd)
        found: list[str] = []
        position = end
        carry = b""
        while position > 0 and len(found) < _RECENT_IDS:
            start = max(0, position - _CHUNK)
            chunk = os.pread(fd, position - start, start) + carry
            # Keep the chunk's first (possibly partial) line for the next round.
            first_newline = chunk.find(b"\n") if start > 0 else -1
            carry = chunk[: first_newline + 1] if start > 0 else b""
            body = chunk[first_newline + 1 :] if start > 0 else chunk
            found.extend(m.group(1).decode() for m in reversed(list(_LINE_ID.finditer(body))))
            position = start
        for ident in reversed(found[:_RECENT_IDS]):
            self._remember(ident)

    def _remember(self, ident: str) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(ident)
        self._recent_set.add(ident)

    def _append(self, data: bytes) -> None:
        if self._fd is None:
            raise OSError(9, "file sink is not open")
        before = os.fstat(self._fd).st_size
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if self._fsync:
                os.fsync(self._fd)
        except OSError:
            # Leave no torn batch behind (e.g. ENOSPC mid-write): the retry writes it whole.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)
            raise


def _build(config: BaseModel, ctx: BuildContext) -> FileSink:
    assert isinstance(config, FileSinkConfig)
    return FileSink(config.name or "file", Path(config.path), fsync=config.fsync)


def register(registry: Registry) -> None:
    registry.add_sink("file", FileSinkConfig, "Append one FHIR Bundle per line to an NDJSON file.", _build)
