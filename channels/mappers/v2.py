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
    rep.numbered(9) -> list[str]                    # c[n] == rep.component(n) for n in 1..9; c[0] == ""
    rep.numbered_subcomponents(4, 3) -> list[str]   # s[k] == rep.component(4, k) for k in 1..3
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
from collections.abc import Callable

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
    """One repetition of a field: components split when it is made, leaves decoded on read
    (first subcomponents at once when the text holds no escape, null or subcomponent)."""

    __slots__ = ("_comps", "_delims", "_firsts", "raw")

    def __init__(self, raw: str, delims: Delimiters) -> None:
        self.raw = raw
        self._delims = delims
        comps = raw.split(delims.component) if delims.component else [raw]
        self._comps = comps  # components as received
        # Each component's first subcomponent, decoded. Most repetitions hold no
        # subcomponent separator, escape character or HL7 null: one look at the whole text
        # then proves every component is its own decoded value.
        sub_sep, esc = delims.subcomponent, delims.escape
        if (sub_sep and sub_sep in raw) or (esc and esc in raw) or _NULL in raw:
            self._firsts = [self._leaf(text, 1) for text in comps]
        else:
            self._firsts = comps

    def __bool__(self) -> bool:
        return bool(self.raw) and self.raw != _NULL

    def __repr__(self) -> str:  # never the value: reprs end up in logs and tracebacks
        return f"Repetition(<{len(self.raw)} chars>)"

    def _leaf(self, text: str, sub: int) -> str:
        """Decoded subcomponent `sub` (1-based) of one component's text; "" when empty."""
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
        esc = self._delims.escape
        if esc and esc in text:  # checked here: most leaves hold no escape, and a call costs more
            return unescape(text, self._delims)
        return text

    def component_raw(self, index: int) -> str:
        """Component `index` (1-based) as received, subcomponents still joined."""
        comps = self._comps
        return comps[index - 1] if 0 < index <= len(comps) else ""

    def component(self, index: int, sub: int = 1) -> str:
        """Decoded subcomponent `sub` of component `index` (both 1-based); "" when empty."""
        if sub == 1:  # the hottest call of every map: one list lookup
            firsts = self._firsts
            return firsts[index - 1] if 0 < index <= len(firsts) else ""
        comps = self._comps
        return self._leaf(comps[index - 1], sub) if 0 < index <= len(comps) else ""

    def subcomponents(self, index: int) -> list[str]:
        """All decoded subcomponents of component `index` (1-based)."""
        text = self.component_raw(index)
        sep = self._delims.subcomponent
        parts = text.split(sep) if sep else [text]
        return ["" if p == _NULL else unescape(p, self._delims) for p in parts]

    def numbered(self, count: int) -> list[str]:
        """Components 1..`count` at once, numbered as in the standard: ``c = rep.numbered(9)``
        gives ``c[n] == rep.component(n)`` for n in 1..9 ("" where absent; ``c[0]`` is "").

        For datatype maps that read most components of a field: one call instead of one each.
        """
        values = ["", *self._firsts[:count]]
        if len(values) <= count:
            values += [""] * (count + 1 - len(values))
        return values

    def numbered_subcomponents(self, index: int, count: int) -> list[str]:
        """Subcomponents 1..`count` of component `index`, numbered like `numbered`:
        ``s[k] == rep.component(index, k)`` for k in 1..count; ``s[0]`` is ""."""
        comps = self._comps
        text = comps[index - 1] if 0 < index <= len(comps) else ""
        sep = self._delims.subcomponent
        if sep and sep in text:
            values = ["", *[self._leaf(part, 1) for part in text.split(sep)[:count]]]
            if len(values) <= count:
                values += [""] * (count + 1 - len(values))
        else:  # one subcomponent: the component's first leaf
            values = [""] * (count + 1)
            firsts = self._firsts
            if count > 0 and 0 < index <= len(firsts):
                values[1] = firsts[index - 1]
        return values

    def components(self) -> list[str]:
        """Every component's first subcomponent, decoded."""
        return list(self._firsts)

    def component_count(self) -> int:
        return len(self._comps)

    def text(self) -> str:
        """The whole repetition decoded as one string (for ST/TX/FT fields)."""
        return "" if self.raw == _NULL else unescape(self.raw, self._delims)


class Segment:
    """One segment; field n is ``_fields[n]`` (for MSH, ``_fields[1]`` is MSH-1)."""

    __slots__ = ("_blank", "_every", "_fields", "_is_header", "_plain", "_present", "delims", "id", "position", "used")

    def __init__(self, fields: list[str], delims: Delimiters, position: int) -> None:
        self.id = fields[0]
        self._fields = fields
        self.delims = delims
        self.position = position
        self.used: set[int] = set()
        self._is_header = self.id in _HEADER_IDS  # MSH-1/MSH-2 are the delimiters themselves
        self._plain = _plain_text_check(delims)
        # Repetitions per field number (all of them, and the non-empty ones), split on the
        # first read of that field: mappers test a field with field(n) and then read it
        # with rep(n), so each field is split once. The lists are shared between callers,
        # who only read them.
        self._every: list[list[Repetition] | None] | None = None
        self._present: list[list[Repetition] | None] | None = None
        self._blank: Repetition | None = None  # what rep() returns for an absent repetition

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

    def _repetitions(self, number: int) -> list[Repetition]:
        """Every repetition of field `number` (0 < number < len(fields)), split once; not marked used."""
        every = self._every
        if every is None:
            every = self._every = [None] * len(self._fields)
        reps = every[number]
        if reps is None:
            text = self._fields[number]
            rep_sep = self.delims.repetition
            if not text:
                reps = []
            elif not rep_sep or rep_sep not in text or (self._is_header and number < 3):
                reps = [Repetition(text, self.delims)]
            else:
                reps = [Repetition(part, self.delims) for part in text.split(rep_sep)]
            every[number] = reps
        return reps

    # Only a present field is marked used: unused_fields() looks at nothing else, and the
    # maps ask for many absent fields (PV1-45, OBX-29 ...), so their answer stays short.

    def all_repetitions(self, number: int) -> list[Repetition]:
        """Every repetition of field `number` by position, empty ones included ([] if the field is empty).

        The list is shared by every caller: read it, do not change it.
        """
        fields = self._fields
        if 0 < number < len(fields) and fields[number]:
            self.used.add(number)
            return self._repetitions(number)
        return []

    def field(self, number: int) -> list[Repetition]:
        """Non-empty repetitions of field `number`, in order ([] when the field is empty).

        The list is shared by every caller: read it, do not change it.
        """
        fields = self._fields
        if not (0 < number < len(fields) and fields[number]):
            return []
        self.used.add(number)
        present_by_number = self._present
        if present_by_number is None:
            present_by_number = self._present = [None] * len(fields)
        present = present_by_number[number]
        if present is None:
            reps = self._repetitions(number)
            single = len(reps) == 1 and reps[0].raw != _NULL
            present = reps if single else [r for r in reps if r.raw and r.raw != _NULL]  # bool(r), no call each
            present_by_number[number] = present
        return present

    def rep(self, number: int, repetition: int = 1) -> Repetition:
        """Repetition `repetition` (1-based, by position) of field `number`; empty when absent."""
        fields = self._fields
        if 0 < number < len(fields) and fields[number]:
            self.used.add(number)
            reps = self._repetitions(number)
            if 0 < repetition <= len(reps):
                return reps[repetition - 1]
        blank = self._blank
        if blank is None:  # one per segment: a Repetition never changes once made
            blank = self._blank = Repetition("", self.delims)
        return blank

    def value(self, number: int, component: int = 1, sub: int = 1) -> str:
        """Decoded text of field `number`, first repetition, component, subcomponent; "" if empty."""
        fields = self._fields
        if not (0 < number < len(fields) and fields[number]):
            return ""
        self.used.add(number)
        text = fields[number]
        if self._is_header and number < 3:
            return text  # MSH-1 / MSH-2 are the delimiters, as received
        if component == 1 and sub == 1 and self._plain(text) is None:
            return text  # no delimiter, escape or null in it: the text is its own first leaf
        return self._repetitions(number)[0].component(component, sub)

    def get(self, path: str) -> str:
        """Decoded value at a path like ``"3"``, ``"3.1"``, ``"3.4.2"`` or ``"3(2).1"``."""
        match = _PATH.match(path)
        if not match:
            raise ValueError(f"bad field path {path!r}")
        number = int(match.group(1))
        repetition = int(match.group(2) or 1)
        component = int(match.group(3) or 1)
        sub = int(match.group(4) or 1)
        if self._is_header and number in (1, 2):
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
        start = 3 if self._is_header else 1
        fields = self._fields
        return [n for n in range(start, len(fields)) if fields[n] and fields[n] != _NULL]

    def unused_fields(self) -> list[int]:
        """Present fields that no accessor has read."""
        start = 3 if self._is_header else 1
        fields, used = self._fields, self.used
        return [n for n in range(start, len(fields)) if n not in used and fields[n] and fields[n] != _NULL]


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


_PLAIN_CHECKS: dict[Delimiters, Callable[[str], object]] = {}


def _plain_text_check(delims: Delimiters) -> Callable[[str], object]:
    """A search for anything that makes a field's text more than one plain value: a
    component, repetition or subcomponent separator, the escape character, or the HL7
    null. Returns None when the text holds none of them. One per delimiter set (bounded:
    delimiters come from messages, and a new set only costs a compile)."""
    check = _PLAIN_CHECKS.get(delims)
    if check is None:
        marks = [delims.component, delims.repetition, delims.escape, delims.subcomponent, _NULL]
        check = re.compile("|".join(re.escape(mark) for mark in marks if mark)).search
        if len(_PLAIN_CHECKS) < 64:
            _PLAIN_CHECKS[delims] = check
    return check


def _lines(text: str) -> list[str]:
    if text.startswith("\ufeff"):
        text = text[1:]
    # CR alone (the standard terminator) needs no regular expression. A line is kept when
    # it holds something other than whitespace (`not line.isspace()` is `line.strip()`
    # without building the stripped copy).
    lines = text.split("\r") if "\n" not in text else _LINE_BREAKS.split(text)
    return [line for line in lines if line and not line.isspace()]


def _delimiters(header_line: str) -> Delimiters:
    """MSH-1 and MSH-2 of a header line (MSH, FHS or BHS)."""
    if len(header_line) < 4:
        raise MappingError("segment too short to hold the field separator", segment="MSH", field="1")
    field_sep = header_line[3]
    if field_sep.isalnum() or field_sep.isspace():
        raise MappingError("invalid field separator", segment="MSH", field="1")
    enc_end = header_line.find(field_sep, 4)
    enc = (header_line[4:] if enc_end < 0 else header_line[4:enc_end])[:5]
    key = field_sep + enc
    known = _KNOWN_DELIMITERS.get(key)
    if known is not None:
        return known
    delims = _new_delimiters(field_sep, enc)
    if len(_KNOWN_DELIMITERS) < 64:
        _KNOWN_DELIMITERS[key] = delims
    return delims


# MSH-1 + the first five characters of MSH-2 → their Delimiters: nearly every message uses
# "|^~\&" (bounded: delimiters come from messages).
_KNOWN_DELIMITERS: dict[str, Delimiters] = {}


def _new_delimiters(field_sep: str, enc: str) -> Delimiters:
    chars = [*enc] + [""] * (5 - len(enc))
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
