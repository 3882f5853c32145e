"""PHI redaction: the last safety net before a log line is rendered, and message masking.

DESIGN.md §5.7: no PHI in logs. Code is expected to log only PHI-free fields (channel,
message id, reason words, segment ids, field numbers). This module catches mistakes:

- keys that usually hold content (raw, payload, name, dob ...) are replaced;
- any string that looks like HL7 v2 content (a segment id followed by the field
  separator, HL7 v2 ch. 2.5, or the MSH-2 encoding characters ``^~\\&``) is replaced;
- exceptions are shown as type and code location only: their messages may quote values;
- objects of unknown type are shown by type name only (their repr may hold content).

`mask_message` gives operators a structural view of a message (segment ids, separators,
the MSH segment) with every other field value replaced.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import sys
import traceback
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from types import TracebackType
from typing import Any

REDACTED = "[redacted]"
MASK = "***"

#: Keys whose values are content, whatever they hold. Compared lower-case.
DENY_KEYS: frozenset[str] = frozenset({
    "raw", "payload", "message", "msg", "text", "segment", "segments", "value", "values",
    "name", "patient", "dob", "birth_date", "birthdate", "address", "phone", "ssn", "mrn",
    "content", "body", "data", "hl7", "frame", "field_value", "family", "given", "email",
    "identifier", "identifiers", "exception", "exc_message", "error_message", "detail", "details",
    "line", "record", "bundle", "resource",
})
#: A key made of several words (split on "_" or "-") is content if any word is one of these.
DENY_WORDS: frozenset[str] = frozenset({
    "patient", "dob", "ssn", "mrn", "phone", "address", "raw", "payload", "content", "name",
    "birth", "email",
})
#: Keys always allowed even when a word above matches: engine-chosen identifiers.
ALLOW_KEYS: frozenset[str] = frozenset({
    "event", "level", "logger", "timestamp", "channel", "channel_name", "message_id",
    "message_ids", "message_type", "message_count", "control_id", "reason", "error_type", "code",
    "segment_id", "field", "sink", "sink_name", "stage", "stage_name", "status", "outcome",
    "attempts", "count", "logger_name", "plugin_name", "listener_name", "hostname",
})

# A segment id (3 upper-case letters/digits, HL7 v2 ch. 2.5) directly followed by a field
# separator, not glued to a longer word; or the usual MSH-2 encoding characters.
_HL7_PATTERN = re.compile(r"(?<![A-Za-z0-9])[A-Z][A-Z0-9]{2}\||\^~\\&|\|[^|\r\n]*\^[^|\r\n]*\|")
# Characters without which none of the patterns above can match: a cheap pre-check.
_HL7_MARKERS = ("|", "^~")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}\Z")
_MAX_DEPTH = 6
_MAX_FRAMES = 30


def looks_like_hl7(text: str) -> bool:
    """True when `text` holds something shaped like HL7 v2 content (segment or encoding chars)."""
    if not any(marker in text for marker in _HL7_MARKERS):
        return False
    return _HL7_PATTERN.search(text) is not None


def key_is_sensitive(key: str) -> bool:
    """True when a log key names content rather than an engine-chosen identifier."""
    lowered = key.lower()
    if lowered in ALLOW_KEYS:
        return False
    if lowered in DENY_KEYS:
        return True
    return any(word in DENY_WORDS for word in re.split(r"[_\-.]", lowered))


def exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes/contexts, outermost last (as Python prints them)."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    chain.reverse()
    return chain


def _frames(tb: TracebackType | None) -> list[str]:
    lines = []
    for frame, lineno in traceback.walk_tb(tb):
        module = frame.f_globals.get("__name__", "?")
        lines.append(f"  {module}:{lineno} in {frame.f_code.co_name}")
    if len(lines) > _MAX_FRAMES:
        lines = ["  ...", *lines[-_MAX_FRAMES:]]
    return lines


def summarize_exception(exc: BaseException) -> str:
    """A traceback without any exception message: types and module:line locations only.

    Exception messages may quote message content (a parser naming the value it choked
    on), so they are left out; the type and location are enough to find the bug.
    """
    parts: list[str] = []
    for index, item in enumerate(exception_chain(exc)):
        if index:
            parts.append("The above exception led to:")
        parts.append("Traceback (most recent call last):")
        parts.extend(_frames(item.__traceback__))
        parts.append(f"{type(item).__module__}.{type(item).__qualname__}: {REDACTED}")
    return "\n".join(parts)


def _exception_texts(exc: BaseException) -> set[str]:
    """Strings an exception could leak into other log text (e.g. a Task repr)."""
    texts: set[str] = set()
    for item in exception_chain(exc):
        candidates = [str(item), repr(item)]
        candidates.extend(arg for arg in item.args if isinstance(arg, str))
        texts.update(text for text in candidates if len(text) >= 3)
    return texts


def _resolve_exc_info(value: Any) -> BaseException | None:
    """structlog's exc_info may be True, a (type, value, tb) tuple or an exception."""
    if isinstance(value, BaseException):
        return value
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value[1]
    if value is True:
        return sys.exc_info()[1]
    return None


class RedactPHI:
    """structlog processor that removes PHI from an event dict; put it last before the renderer.

    With `log_content=True` (opt-in; **logs will contain PHI**) values pass unchanged and
    exceptions are rendered with their messages and full tracebacks.
    """

    def __init__(self, *, log_content: bool = False) -> None:
        self._log_content = log_content
        # Log keys come from code, a small bounded set: remember each decision.
        self._key_cache: dict[str, bool] = {}

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        exc = _resolve_exc_info(event_dict.pop("exc_info", None))
        if self._log_content:
            if exc is not None:
                event_dict["exception"] = "".join(traceback.format_exception(exc)).rstrip("\n")
            return event_dict
        leaked = _exception_texts(exc) if exc is not None else set()
        cleaned = {key: self._clean_item(key, value, leaked, 0) for key, value in event_dict.items()}
        if exc is not None:
            cleaned["exception"] = summarize_exception(exc)
        return cleaned

    def _sensitive(self, key: str) -> bool:
        decision = self._key_cache.get(key)
        if decision is None:
            decision = key_is_sensitive(key)
            if len(self._key_cache) < 4096:
                self._key_cache[key] = decision
        return decision

    def _clean_item(self, key: Any, value: Any, leaked: set[str], depth: int) -> Any:
        if isinstance(key, str) and key != "event" and self._sensitive(key) and value is not None:
            return REDACTED
        return self._clean_value(value, leaked, depth)

    def _clean_value(self, value: Any, leaked: set[str], depth: int) -> Any:
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self._clean_str(value, leaked)
        if isinstance(value, enum.Enum):
            return self._clean_value(value.value, leaked, depth)
        if depth >= _MAX_DEPTH:
            return REDACTED
        if isinstance(value, Mapping):
            return {str(k): self._clean_item(str(k), v, leaked, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean_value(item, leaked, depth + 1) for item in _bounded(value)]
        if isinstance(value, BaseException):
            return f"{type(value).__name__}: {REDACTED}"
        if isinstance(value, dt.datetime | dt.date | dt.time):
            return value.isoformat()
        if isinstance(value, PurePath):
            return self._clean_str(str(value), leaked)
        if isinstance(value, bytes | bytearray | memoryview):
            return REDACTED
        # Anything else could render its content through repr (a dataclass holding raw bytes).
        return f"<{type(value).__name__}>"

    @staticmethod
    def _clean_str(text: str, leaked: set[str]) -> str:
        if looks_like_hl7(text):
            return REDACTED
        for secret in leaked:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


def _bounded(items: Iterable[Any], limit: int = 100) -> list[Any]:
    out = []
    for index, item in enumerate(items):
        if index >= limit:
            out.append("...")
            break
        out.append(item)
    return out


def mask_message(text: str) -> str:
    """Mask every field value except in MSH; keep segment ids, separators and terminators.

    HL7 v2 ch. 2.5: segments end with CR (we also accept LF and CRLF, keeping what was
    received); MSH-1 is the field separator. A segment's fields become "***" when valued
    and stay empty when empty, so an operator sees the structure but no values. Lines
    that are not segments are masked whole.
    """
    field_sep = text[3] if text.startswith("MSH") and len(text) > 3 else "|"
    pieces = re.split(r"(\r\n|\r|\n)", text)
    out: list[str] = []
    for piece in pieces:
        if piece in ("\r\n", "\r", "\n") or piece == "":
            out.append(piece)
            continue
        out.append(_mask_segment(piece, field_sep))
    return "".join(out)


def _mask_segment(segment: str, field_sep: str) -> str:
    segment_id, sep, rest = segment.partition(field_sep)
    if not _SEGMENT_ID.match(segment_id):
        return MASK
    if segment_id == "MSH" or not sep:
        return segment
    return segment_id + sep + field_sep.join(MASK if value else "" for value in rest.split(field_sep))
