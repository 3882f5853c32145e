"""Build acknowledgements exactly as DESIGN.md §4 says (HL7 v2.5 ch. 2.9 and 2.14).

The ACK answers in the sender's terms: its field separator and MSH-2 echoed exactly,
its charset, CR segment terminators. Everything echoed is sanitised so no value can
break the ACK's structure or its MLLP frame; everything the engine writes itself (MSA-3,
ERR-8) is generic text with HL7 escape sequences for delimiters, never message content.
"""

from __future__ import annotations

import enum
import functools
import itertools
import secrets
import time
from datetime import datetime
from typing import Literal

from engine.hl7.errors import AckError, ErrorCode
from engine.hl7.header import DEFAULT_ENCODING_CHARS, DEFAULT_FIELD_SEP, valid_delimiters
from engine.types import MessageHeader

__all__ = [
    "COMMIT_ACK",
    "COMMIT_NAK",
    "AckCode",
    "AckError",
    "ErrorCode",
    "Outcome",
    "build_ack",
    "choose_code",
    "is_ack",
    "new_control_id",
    "should_send_accept_ack",
]

#: MLLP release 2 commit acknowledgement payloads (HL7 MLLP R2, §1.3); the server frames them.
COMMIT_ACK = b"\x06"
COMMIT_NAK = b"\x15"

DEFAULT_VERSION = "2.5.1"  # MSH-12 of an ACK to a message whose header could not be read
DEFAULT_PROCESSING_ID = "P"

# Characters no echoed value may carry: MLLP start/end block and segment terminators.
_FRAMING = "\x0b\x1c\r\n"


class AckCode(enum.StrEnum):
    """MSA-1, HL7 table 0008: original mode (A*) and enhanced commit ACKs (C*)."""

    AA = "AA"
    AE = "AE"
    AR = "AR"
    CA = "CA"
    CE = "CE"
    CR = "CR"


#: What happened to a message, in the words of the DESIGN.md §4 table.
Outcome = Literal["accepted", "rejected", "unavailable", "app_error"]

_CODES: dict[tuple[Outcome, bool], AckCode] = {  # (outcome, enhanced mode) -> MSA-1
    ("accepted", False): AckCode.AA,
    ("accepted", True): AckCode.CA,
    ("rejected", False): AckCode.AR,  # no MSH, MSH-9/11/12 not accepted: resending won't help
    ("rejected", True): AckCode.CR,
    ("unavailable", False): AckCode.AR,  # store down, disk full, overload: resend later
    ("unavailable", True): AckCode.CE,
    ("app_error", False): AckCode.AE,  # ack: after_processing and a mapper failed
    ("app_error", True): AckCode.AE,  # the application ACK after an earlier CA
}


def choose_code(header: MessageHeader | None, outcome: Outcome) -> AckCode:
    """MSA-1 for an outcome, in original or enhanced mode per the header (DESIGN.md §4).

    Without a readable header the mode is unknown; original mode is assumed.
    """
    enhanced = header is not None and header.enhanced_mode
    return _CODES[(outcome, enhanced)]


def should_send_accept_ack(header: MessageHeader | None, success: bool) -> bool:
    """Whether to answer at all (HL7 v2.5 ch. 2.9.3, MSH-15 per table 0155).

    Original mode always answers. Enhanced mode: AL always, NE never, ER only on error,
    SU only on success; MSH-15 empty (only MSH-16 valued) counts as AL. An unknown value
    answers, since a missing ACK makes a sender resend forever.
    """
    if header is None or not header.enhanced_mode:
        return True
    condition = header.accept_ack_type
    if condition == "NE":
        return False
    if condition == "ER":
        return not success
    if condition == "SU":
        return success
    return True


def is_ack(header: MessageHeader) -> bool:
    """True for an acknowledgement (MSH-9.1 = ACK), which is never itself acknowledged."""
    return header.message_code == "ACK"


_PROCESS_PREFIX = secrets.token_hex(3).upper()
_SEQUENCE = itertools.count(1)


def new_control_id() -> str:
    """A fresh MSH-10 for an ACK: 6 random hex digits per process + a 14-digit counter.

    20 characters, the ST length of MSH-10 up to v2.6.
    """
    return f"{_PROCESS_PREFIX}{next(_SEQUENCE) % 10**14:014d}"


def build_ack(
    header: MessageHeader | None,
    code: AckCode | str,
    *,
    error: AckError | None = None,
    text: str = "",
    now: datetime | None = None,
    control_id: str | None = None,
    sending_application: str = "",
    sending_facility: str = "",
    encoding: str = "utf-8",
) -> bytes:
    """The ACK message for `header`, encoded with `encoding` (the codec chosen at decode).

    MSH: 3/4 = original MSH-5/6 (or `sending_application`/`sending_facility` when the
    original left them empty or had no readable header), 5/6 = original MSH-3/4, 7 = `now`,
    9 = ACK^<trigger>^ACK, 10 = `control_id` or a fresh one, 11/12/18 echoed.
    MSA-2 echoes MSH-10 always (empty when there was no header). MSA-3 carries `text` up
    to v2.6 (withdrawn in v2.7). `error` adds an ERR segment: ERR-2/3/4/8 from v2.5,
    ERR-1 (ELD) before v2.5 (HL7 v2.5 ch. 2.14.5).
    """
    if header is not None and valid_delimiters(header.field_sep, header.encoding_chars):
        field_sep, encoding_chars = header.field_sep, header.encoding_chars
    else:
        field_sep, encoding_chars = DEFAULT_FIELD_SEP, DEFAULT_ENCODING_CHARS
    code = AckCode(code)
    echo, escape = _writers(field_sep, encoding_chars)
    component = encoding_chars[0]

    if header is None:
        msh3, msh4, msh5, msh6 = sending_application, sending_facility, "", ""
        trigger, processing_id, version = "", DEFAULT_PROCESSING_ID, DEFAULT_VERSION
        charset, echoed_control_id = "", ""
    else:
        msh3, msh4, msh5, msh6, trigger, processing_id, version, charset, echoed_control_id = echo(
            header.receiving_application,
            header.receiving_facility,
            header.sending_application,
            header.sending_facility,
            header.trigger_event,
            header.processing_id,
            header.version_id,
            header.charset,
            header.control_id,
        )
        msh3 = msh3 or sending_application
        msh4 = msh4 or sending_facility
        processing_id = processing_id or DEFAULT_PROCESSING_ID
        version = version or DEFAULT_VERSION
    release = _release(version)

    message_type = component.join(["ACK", trigger, "ACK"] if release >= (2, 3, 1) else ["ACK", trigger])
    msh = [
        "MSH",
        encoding_chars,
        msh3,
        msh4,
        msh5,
        msh6,
        _timestamp(now),
        "",
        message_type,
        echo(control_id)[0] if control_id else new_control_id(),
        processing_id,
        version,
    ]
    if charset:
        msh += ["", "", "", "", "", charset]  # MSH-13..17 empty, MSH-18

    msa = ["MSA", str(code), echoed_control_id]
    msa_text = text or (error.text if error is not None and release < (2, 5) else "")
    if msa_text and release < (2, 7):
        msa.append(escape(msa_text))

    segments = [field_sep.join(msh), field_sep.join(msa)]
    if error is not None:
        segments.append(_err_segment(error, release, field_sep, encoding_chars, escape))
    message = "\r".join(segments) + "\r"
    try:
        return message.encode(encoding, "replace")
    except LookupError:
        return message.encode("utf-8", "replace")


def _err_segment(
    error: AckError, release: tuple[int, ...], field_sep: str, encoding_chars: str, escape: _Escaper
) -> str:
    """ERR per the version: v2.5+ ERR-2 location, ERR-3 CWE, ERR-4 severity, ERR-8 text;
    earlier versions ERR-1 as ELD (segment^sequence^field^code&text&HL70357)."""
    component, subcomponent = encoding_chars[0], encoding_chars[3]
    sequence = "" if error.sequence is None else str(error.sequence)
    field_position = "" if error.field is None else str(error.field)
    component_number = "" if error.component is None else str(error.component)
    segment_id = escape(error.segment)
    code = [str(int(error.code)), escape(error.code.description), "HL70357"]
    if release < (2, 5):
        eld = [segment_id, sequence, field_position, subcomponent.join(code)]
        return field_sep.join(["ERR", component.join(eld).rstrip(component)])
    # ERL: segment ^ sequence ^ field ^ field repetition (first) ^ component
    erl = [segment_id, sequence, field_position, "1" if component_number else "", component_number]
    location = component.join(erl).rstrip(component)
    fields = ["ERR", "", location, component.join(code), error.severity, "", "", "", escape(error.text)]
    return field_sep.join(fields).rstrip(field_sep)


@functools.lru_cache(maxsize=64)
def _release(version: str) -> tuple[int, ...]:
    """MSH-12 as a comparable tuple ("2.3.1" -> (2, 3, 1)); unreadable means current (2.5.1)."""
    parts = version.strip().split(".")
    if not all(p.isdigit() for p in parts):
        return (2, 5, 1)
    return tuple(int(p) for p in parts)


def _timestamp(now: datetime | None) -> str:
    """MSH-7 as HL7 DTM/TS: YYYYMMDDHHMMSS plus +/-ZZZZ when the time is zone-aware."""
    if now is not None:
        return now.strftime("%Y%m%d%H%M%S%z")
    return _CLOCK.now()


class _SecondClock:
    """The local time formatted once per second: formatting costs ~3 µs, an ACK far less."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            # Text before second: a racing thread at worst reads the previous second's text.
            self._text = datetime.fromtimestamp(second).astimezone().strftime("%Y%m%d%H%M%S%z")
            self._second = second
        return self._text


_CLOCK = _SecondClock()


@functools.lru_cache(maxsize=32)
def _writers(field_sep: str, encoding_chars: str) -> tuple[_Echo, _Escaper]:
    """Translation tables per delimiter set, built once (senders rarely vary them)."""
    return _Echo(field_sep), _Escaper(field_sep, encoding_chars)


class _Echo:
    """Sanitise echoed values: drop framing bytes, terminators and the field separator."""

    __slots__ = ("_table",)

    def __init__(self, field_sep: str) -> None:
        self._table = str.maketrans("", "", _FRAMING + field_sep)

    def __call__(self, *values: str) -> list[str]:
        # One translate over all values first: nearly every header is already clean.
        joined = "".join(values)
        if len(joined.translate(self._table)) == len(joined):
            return list(values)
        return [value.translate(self._table) for value in values]


class _Escaper:
    """Write engine text into a field: HL7 escapes for delimiters (ch. 2.7.4), no framing bytes."""

    __slots__ = ("_table",)

    def __init__(self, field_sep: str, encoding_chars: str) -> None:
        component, repetition, escape, subcomponent = (encoding_chars[i] for i in range(4))
        mapping: dict[str, str | None] = {c: None for c in _FRAMING}
        mapping.update(
            {
                escape: f"{escape}E{escape}",
                field_sep: f"{escape}F{escape}",
                component: f"{escape}S{escape}",
                repetition: f"{escape}R{escape}",
                subcomponent: f"{escape}T{escape}",
            }
        )
        if len(encoding_chars) > 4:  # v2.7 truncation character
            mapping[encoding_chars[4]] = f"{escape}P{escape}"
        self._table = str.maketrans(mapping)

    def __call__(self, value: str) -> str:
        return value.translate(self._table)
