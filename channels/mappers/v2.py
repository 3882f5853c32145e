"""A fast, lazy HL7 v2 parse tree for the work path (HL7 v2.5.1 ch. 2.5-2.7).

python-hl7's ``hl7.parse`` builds the whole tree eagerly (~1 ms/message); this one
splits segments and fields once with ``str.split`` and splits repetitions,
components and subcomponents only when a mapper asks. python-hl7 stays the reference
for correctness (tests/unit/test_mappers_v2.py compares both on generated messages).

Public API::

    parse_message(text: str) -> V2Message          # raises MappingError when there is no MSH
    split_messages(text: str) -> list[str]          # one text per MSH; batch envelopes dropped

    msg.delims: Delimiters                          # from MSH-1/MSH-2 (see escape.py)
    msg.msh: Segment
    msg.segments("PID") -> list[Segment]            # in message order; msg.segments() = all
    msg.first("PID") -> Segment | None

    seg.id: str; seg.position: int (0-based index in the message)
    seg.field(3) -> list[Repetition]                # non-empty repetitions; [] when empty
    seg.all_repetitions(3) -> list[Repetition]      # by position, empty ones included
    seg.rep(3, 1) -> Repetition                     # 1-based position, empty when absent
    seg.raw(3) -> str                               # field text as received (not decoded)
    seg.value(3, 1, 1) -> str                       # decoded first repetition's PID-3.1.1, "" if empty
    seg.get("3.1") / seg.get("3(2).1.2") -> str     # the same by path; (n) picks a repetition
    value(seg, 3, 1) -> str                         # function form of seg.value
    seg.present_fields() -> list[int]; seg.unused_fields() -> list[int]

    rep.component(1, sub=1) -> str                  # decoded; "" when empty
    rep.subcomponents(1) -> list[str]; rep.components() -> list[str] (first subcomponents)
    rep.raw: str; bool(rep) is False when the repetition has no content

Rules:
- Segment terminators: CR, LF or CRLF, mixed freely; blank lines and a UTF-8 BOM are
  ignored.
- Delimiters come from the message's MSH (or FHS/BHS when a batch header comes first):
  MSH-1 is the field separator, MSH-2 the encoding characters (4 or 5 with the v2.7
  truncation character). MSH numbering follows the standard: ``seg.raw(1)`` is the
  field separator, ``seg.raw(2)`` the encoding characters, MSH-3 the sending app.
- Escape sequences are decoded after splitting, per leaf (escape.py), so an escape
  never creates a delimiter.
- The HL7 null ``""`` (explicit delete) reads as "" like an empty value: FHIR output
  cannot express "delete this element" inside a conditional update.
- Field accounting: every access through ``field``/``rep``/``raw``/``value``/``get``
  marks the field used, so ``unused_fields()`` lists what no mapper touched.
"""

from __future__ import annotations

import re

from channels.mappers.escape import DEFAULT_DELIMITERS, Delimiters, unescape
from engine.types import MappingError

__all__ = [
    "DEFAULT_DELIMITERS",
    "Delimiters",
    "Repetition",
    "Segment",
    "V2Message",
    "parse_message",
    "split_messages",
    "value",
]

_HEADER_IDS = ("MSH", "FHS", "BHS")
_BATCH_ENVELOPE = frozenset({"FHS", "BHS", "BTS", "FTS"})
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")
_PATH = re.compile(r"^(\d+)(?:\((\d+)\))?(?:\.(\d+))?(?:\.(\d+))?$")
_NULL = '""'


class Repetition:
    """One repetition of a field: components split on demand, leaves decoded on read."""

    __slots__ = ("_comps", "_delims", "raw")

    def __init__(self, raw: str, delims: Delimiters) -> None:
        self.raw = raw
        self._delims = delims
        self._comps: list[str] | None = None

    def __bool__(self) -> bool:
        return bool(self.raw) and self.raw != _NULL

    def __repr__(self) -> str:  # never the value: reprs end up in logs and tracebacks
        return f"Repetition(<{len(self.raw)} chars>)"

    def _components(self) -> list[str]:
        comps = self._comps
        if comps is None:
            sep = self._delims.component
            comps = self.raw.split(sep) if sep else [self.raw]
            self._comps = comps
        return comps

    def component_raw(self, index: int) -> str:
        """Component `index` (1-based) as received, subcomponents still joined."""
        comps = self._components()
        return comps[index - 1] if 0 < index <= len(comps) else ""

    def component(self, index: int, sub: int = 1) -> str:
        """Decoded subcomponent `sub` of component `index` (both 1-based); "" when empty."""
        comps = self._comps
        if comps is None:
            comps = self._components()
        if not 0 < index <= len(comps):
            return ""
        text = comps[index - 1]  # inlined component_raw: this is the hottest call of every map
        if not text:
            return ""
        sep = self._delims.subcomponent
        if sep and sep in text:
            parts = text.split(sep)
            text = parts[sub - 1] if 0 < sub <= len(parts) else ""
        elif sub != 1:
            return ""
        if text == _NULL:
            return ""
        return unescape(text, self._delims)

    def subcomponents(self, index: int) -> list[str]:
        """All decoded subcomponents of component `index` (1-based)."""
        text = self.component_raw(index)
        sep = self._delims.subcomponent
        parts = text.split(sep) if sep else [text]
        return ["" if p == _NULL else unescape(p, self._delims) for p in parts]

    def components(self) -> list[str]:
        """Every component's first subcomponent, decoded."""
        return [self.component(i) for i in range(1, len(self._components()) + 1)]

    def component_count(self) -> int:
        return len(self._components())

    def text(self) -> str:
        """The whole repetition decoded as one string (for ST/TX/FT fields)."""
        return "" if self.raw == _NULL else unescape(self.raw, self._delims)


class Segment:
    """One segment; field n is ``_fields[n]`` (for MSH, ``_fields[1]`` is MSH-1)."""

    __slots__ = ("_fields", "_reps", "delims", "id", "position", "used")

    def __init__(self, fields: list[str], delims: Delimiters, position: int) -> None:
        self.id = fields[0]
        self._fields = fields
        self.delims = delims
        self.position = position
        self.used: set[int] = set()
        self._reps: dict[int, list[Repetition]] = {}

    def __repr__(self) -> str:
        return f"Segment({self.id}, {len(self._fields) - 1} fields, at {self.position})"

    def __len__(self) -> int:
        """Number of the last field present (0 when the segment is only its id)."""
        return len(self._fields) - 1

    def mark_used(self, *numbers: int) -> None:
        """Declare fields consumed without reading them (e.g. mapped by another segment's mapper)."""
        self.used.update(numbers)

    def raw(self, number: int) -> str:
        """Field `number` exactly as received (not decoded), "" when absent."""
        self.used.add(number)
        fields = self._fields
        return fields[number] if 0 < number < len(fields) else ""

    def all_repetitions(self, number: int) -> list[Repetition]:
        """Every repetition of field `number` by position, empty ones included ([] if the field is empty)."""
        reps = self._reps.get(number)
        if reps is None:
            text = self.raw(number)
            if not text:
                reps = []
            else:
                rep_sep = self.delims.repetition
                is_msh_delims = self.id in _HEADER_IDS and number in (1, 2)
                parts = [text] if is_msh_delims or not rep_sep else text.split(rep_sep)
                reps = [Repetition(p, self.delims) for p in parts]
            self._reps[number] = reps
        else:
            self.used.add(number)
        return reps

    def field(self, number: int) -> list[Repetition]:
        """Non-empty repetitions of field `number`, in order ([] when the field is empty)."""
        return [r for r in self.all_repetitions(number) if r]

    def rep(self, number: int, repetition: int = 1) -> Repetition:
        """Repetition `repetition` (1-based, by position) of field `number`; empty when absent."""
        reps = self.all_repetitions(number)
        if 0 < repetition <= len(reps):
            return reps[repetition - 1]
        return Repetition("", self.delims)

    def value(self, number: int, component: int = 1, sub: int = 1) -> str:
        """Decoded text of field `number`, first repetition, component, subcomponent; "" if empty."""
        if self.id in _HEADER_IDS and number in (1, 2):
            return self.raw(number)
        return self.rep(number).component(component, sub)

    def get(self, path: str) -> str:
        """Decoded value at a path like ``"3"``, ``"3.1"``, ``"3.4.2"`` or ``"3(2).1"``."""
        match = _PATH.match(path)
        if not match:
            raise ValueError(f"bad field path {path!r}")
        number = int(match.group(1))
        repetition = int(match.group(2) or 1)
        component = int(match.group(3) or 1)
        sub = int(match.group(4) or 1)
        if self.id in _HEADER_IDS and number in (1, 2):
            return self.raw(number)
        return self.rep(number, repetition).component(component, sub)

    def text(self, number: int) -> str:
        """Field `number`, first repetition, decoded as one string (ST/TX/FT)."""
        return self.rep(number).text()

    def fields_as_received(self) -> list[str]:
        """Every field's raw text, index n = field n (does not mark anything used)."""
        return list(self._fields)

    def present_fields(self) -> list[int]:
        """Numbers of fields with content (MSH-1/MSH-2 excluded: they are the delimiters)."""
        start = 3 if self.id in _HEADER_IDS else 1
        fields = self._fields
        return [n for n in range(start, len(fields)) if fields[n] and fields[n] != _NULL]

    def unused_fields(self) -> list[int]:
        """Present fields that no accessor has read."""
        used = self.used
        return [n for n in self.present_fields() if n not in used]


class V2Message:
    """A parsed message: its delimiters and its segments in order."""

    __slots__ = ("_by_id", "delims", "msh", "segment_list")

    def __init__(self, segment_list: list[Segment], delims: Delimiters, msh: Segment) -> None:
        self.segment_list = segment_list
        self.delims = delims
        self.msh = msh
        by_id: dict[str, list[Segment]] = {}
        for seg in segment_list:
            by_id.setdefault(seg.id, []).append(seg)
        self._by_id = by_id

    def __repr__(self) -> str:
        return f"V2Message({' '.join(s.id for s in self.segment_list)})"

    def segments(self, segment_id: str | None = None) -> list[Segment]:
        """Segments with this id in message order (all segments when None)."""
        if segment_id is None:
            return list(self.segment_list)
        return list(self._by_id.get(segment_id, ()))

    def first(self, segment_id: str) -> Segment | None:
        found = self._by_id.get(segment_id)
        return found[0] if found else None


def _lines(text: str) -> list[str]:
    if text.startswith("\ufeff"):
        text = text[1:]
    return [line for line in _LINE_BREAKS.split(text) if line.strip()]


def _delimiters(header_line: str) -> Delimiters:
    """MSH-1 and MSH-2 of a header line (MSH, FHS or BHS)."""
    if len(header_line) < 4:
        raise MappingError("segment too short to hold the field separator", segment="MSH", field="1")
    field_sep = header_line[3]
    if field_sep.isalnum() or field_sep.isspace():
        raise MappingError("invalid field separator", segment="MSH", field="1")
    enc_end = header_line.find(field_sep, 4)
    enc = header_line[4:] if enc_end < 0 else header_line[4:enc_end]
    chars = [*enc[:5]] + [""] * (5 - min(len(enc), 5))
    component, repetition, escape_char, subcomponent, truncation = chars
    used = {field_sep}
    cleaned: list[str] = []
    for ch in (component, repetition, escape_char, subcomponent, truncation):
        # A repeated or alphanumeric "delimiter" is malformed MSH-2: treat it as absent
        # rather than let it split ordinary text.
        if not ch or ch in used or ch.isalnum() or ch.isspace():
            cleaned.append("")
        else:
            cleaned.append(ch)
            used.add(ch)
    return Delimiters(field_sep, cleaned[0], cleaned[1], cleaned[2], cleaned[3], cleaned[4])


def _header_fields(line: str, delims: Delimiters) -> list[str]:
    """MSH/FHS/BHS split so index n is field n: [id, MSH-1, MSH-2, MSH-3, ...]."""
    parts = line.split(delims.field)
    return [parts[0], delims.field, *parts[1:]]


def parse_message(text: str) -> V2Message:
    """Parse one message (segments before its MSH, e.g. FHS/BHS, are kept as segments).

    Raises MappingError when no MSH (or FHS/BHS header) gives the delimiters.
    """
    lines = _lines(text)
    header = next((ln for ln in lines if ln[:3] in _HEADER_IDS), None)
    if header is None:
        raise MappingError("no MSH segment", segment="MSH")
    delims = _delimiters(header)
    field_sep = delims.field
    segments: list[Segment] = []
    msh: Segment | None = None
    for position, line in enumerate(lines):
        seg_id = line[:3]
        if seg_id in _HEADER_IDS and line[3:4] == field_sep:
            seg = Segment(_header_fields(line, delims), delims, position)
            if seg_id == "MSH" and msh is None:
                msh = seg
        else:
            seg = Segment(line.split(field_sep), delims, position)
        segments.append(seg)
    if msh is None:
        raise MappingError("no MSH segment", segment="MSH")
    return V2Message(segments, delims, msh)


def split_messages(text: str) -> list[str]:
    """Split a text holding several messages (a batch, or messages back to back).

    Returns one CR-terminated text per MSH; FHS/BHS/BTS/FTS envelopes are dropped.
    Lines before the first MSH that are not envelope segments are dropped too.
    """
    messages: list[list[str]] = []
    for line in _lines(text):
        seg_id = line[:3]
        if seg_id in _BATCH_ENVELOPE:
            continue
        if seg_id == "MSH":
            messages.append([line])
        elif messages:
            messages[-1].append(line)
    return ["\r".join(m) + "\r" for m in messages]


def value(seg: Segment, number: int, component: int = 1, sub: int = 1) -> str:
    """Function form of ``Segment.value``: decoded SEG-number.component.sub, "" when empty."""
    return seg.value(number, component, sub)
