"""Read one field by path ("PID-3", "PID-3.1", "PID-3.4.2") without parsing the message.

Used for the runner's per-patient ordering key, so it must cost about what a few
`str.find` calls cost. Paths follow HL7's own notation: SEG-field[.component[.subcomponent]],
first occurrence of the segment, first repetition of the field. Values keep their
escape sequences (`\\F\\` stays four characters): the key only has to be stable.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_PATH = re.compile(r"([A-Z][A-Z0-9]{2})-([1-9][0-9]*)(?:\.([1-9][0-9]*))?(?:\.([1-9][0-9]*))?")


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A parsed path; component defaults to 1 and subcomponent to the whole component."""

    segment: str
    field: int
    component: int = 1
    subcomponent: int | None = None


@functools.lru_cache(maxsize=64)
def parse_field_path(spec: str) -> FieldPath:
    """Parse "PID-3" / "PID-3.1" / "PID-3.4.2"; raises ValueError for anything else (config check)."""
    match = _PATH.fullmatch(spec.strip())
    if match is None:
        raise ValueError(f"field path {spec!r} is not SEG-field[.component[.subcomponent]], e.g. PID-3.1")
    segment, field, component, subcomponent = match.groups()
    return FieldPath(segment, int(field), int(component or 1), int(subcomponent) if subcomponent else None)


def field_value(text: str, spec: str) -> str | None:
    """The value at `spec` in a decoded message, or None when absent or empty.

    `text` must start with its MSH segment (as `decode` returns it); the delimiters
    come from MSH-1/MSH-2. MSH paths count fields the HL7 way (MSH-1 is the separator).
    """
    path = parse_field_path(spec)
    if not text.startswith("MSH") or len(text) < 8:
        return None
    field_sep = text[3]
    encoding_end = text.find(field_sep, 4)
    encoding_chars = text[4:encoding_end] if encoding_end >= 0 else text[4:8]
    if len(encoding_chars) < 4:
        return None
    line = _segment_line(text, path.segment, field_sep)
    if line is None:
        return None
    index = path.field - 1 if path.segment == "MSH" else path.field
    if path.segment == "MSH" and path.field <= 2:
        value = field_sep if path.field == 1 else encoding_chars
        return value or None
    fields = line.split(field_sep, index + 1)
    if index >= len(fields):
        return None
    component, repetition, subcomponent = encoding_chars[0], encoding_chars[1], encoding_chars[3]
    value = fields[index].partition(repetition)[0]
    components = value.split(component, path.component)  # the wanted one is never the remainder
    value = components[path.component - 1] if path.component <= len(components) else ""
    if path.subcomponent is not None:
        parts = value.split(subcomponent)
        value = parts[path.subcomponent - 1] if path.subcomponent <= len(parts) else ""
    return value or None


def _segment_line(text: str, segment: str, field_sep: str) -> str | None:
    """The first line of `segment` (up to its terminator), or None when there is none."""
    prefix = segment + field_sep
    if text.startswith(prefix):
        start = 0
    else:
        found = [i + 1 for i in (text.find("\r" + prefix), text.find("\n" + prefix)) if i >= 0]
        if not found:
            return None
        start = min(found)
    end = len(text)
    for terminator in ("\r", "\n"):
        position = text.find(terminator, start, end)
        if position >= 0:
            end = position
    return text[start:end]


#: The runner's per-patient ordering key reads one field; same function.
ordering_value = field_value
