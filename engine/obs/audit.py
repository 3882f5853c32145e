"""The audit trail: an append-only, hash-chained file of operator actions.

Every content view, export, replay, release and reload is an `hl7engine.audit` log
event; besides going to the log stream, each is appended here as one JSON line:

    {"seq": 7, "ts": "...", "event": "message_content_viewed", ..., "prev": "<hash of line 6>",
     "hash": "<sha256 of this line without 'hash'>"}

Editing, deleting or reordering any line breaks the chain from that line on, which
`hl7engine audit verify` reports with the line number. Appends take an exclusive file
lock and re-read the last line under it, so the engine and CLI commands (separate
processes) can write to the same trail; each append is fsynced.

The events hold who/what/when and message ids — never message content (the redaction
processor runs before this one).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AUDIT_LOGGER_NAME = "hl7engine.audit"
GENESIS = "0" * 64
_TAIL_BYTES = 64 * 1024


def _digest(entry: dict[str, Any]) -> str:
    canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _last_line(fd: int) -> bytes | None:
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    start = max(0, size - _TAIL_BYTES)
    tail = os.pread(fd, size - start, start).rstrip(b"\n")
    return tail.rsplit(b"\n", 1)[-1] or None


class AuditTrail:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, event: MutableMapping[str, Any]) -> dict[str, Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last = _last_line(fd)
            seq, prev = 0, GENESIS
            if last is not None:
                previous = json.loads(last)
                seq, prev = int(previous["seq"]) + 1, str(previous["hash"])
            entry: dict[str, Any] = {
                "seq": seq,
                "ts": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                **{k: v for k, v in event.items() if k not in {"seq", "prev", "hash", "timestamp"}},
                "prev": prev,
            }
            entry["hash"] = _digest(entry)
            os.write(fd, json.dumps(entry, ensure_ascii=False, default=str).encode() + b"\n")
            os.fsync(fd)
            return entry
        finally:
            os.close(fd)  # also releases the lock


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    entries: int
    line: int | None = None  # 1-based line of the first break
    reason: str = ""


def verify(path: Path) -> Verification:
    """Walk the chain from the first line; report the first line that does not fit."""
    prev = GENESIS
    count = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                entry = json.loads(raw)
                stated = entry.pop("hash")
            except (ValueError, KeyError, AttributeError):
                return Verification(False, count, number, "not an audit entry")
            if entry.get("seq") != count:
                return Verification(False, count, number, f"sequence {entry.get('seq')} where {count} was due")
            if entry.get("prev") != prev:
                return Verification(False, count, number, "does not chain to the line before")
            if _digest(entry) != stated:
                return Verification(False, count, number, "content does not match its hash")
            prev = stated
            count += 1
    return Verification(True, count)


class AuditTrailProcessor:
    """structlog processor: appends `hl7engine.audit` events to the trail, passes all on."""

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = trail

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event_dict.get("logger") == AUDIT_LOGGER_NAME:
            entry = self._trail.append(dict(event_dict))
            event_dict["audit_seq"] = entry["seq"]
        return event_dict
