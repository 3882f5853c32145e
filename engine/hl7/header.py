"""Read the MSH segment with `str.split` only: the custody path's whole parse.

HL7 v2.5 ch. 2.15.9: MSH-1 is the character after "MSH" (the field separator), MSH-2
the encoding characters (component, repetition, escape, subcomponent, and from v2.7 an
optional fifth, truncation). Fields keep their raw text, escape sequences included;
python-hl7 remains the reference (tests compare against `hl7.parse`), but it costs
~65 µs for an MSH alone against a few µs here.
"""

from __future__ import annotations

import functools

from engine.hl7.errors import ErrorCode, HeaderError
from engine.types import MessageHeader

__all__ = [
    "DEFAULT_ENCODING_CHARS",
    "DEFAULT_FIELD_SEP",
    "HeaderError",
    "is_delimiter",
    "parse_header",
    "valid_delimiters",
]

DEFAULT_FIELD_SEP = "|"
DEFAULT_ENCODING_CHARS = "^~\\&"

_LEADING_BLANKS = "\ufeff \t\r\n\x00"
_MSH_FIELDS = 18  # the highest field the header reads (MSH-18)


def is_delimiter(char: str) -> bool:
    """A usable HL7 delimiter: one printable ASCII character, not a letter, digit or blank."""
    return len(char) == 1 and char.isascii() and char.isprintable() and not (char.isalnum() or char == " ")


@functools.lru_cache(maxsize=64)
def valid_delimiters(field_sep: str, encoding_chars: str) -> bool:
    """MSH-1 and MSH-2 form a usable set: 4 or 5 encoding characters, all distinct delimiters."""
    return (
        is_delimiter(field_sep)
        and len(encoding_chars) in (4, 5)
        and all(is_delimiter(c) for c in encoding_chars)
        and len(set(encoding_chars + field_sep)) == len(encoding_chars) + 1
    )


def parse_header(text: str) -> MessageHeader:
    """The MessageHeader of a decoded message whose first segment must be MSH.

    Raises HeaderError with the table 0357 code: 100 when the first segment is not MSH
    (batch envelopes are split off first, see engine.hl7.batch), 102 when MSH-1/MSH-2
    are not a usable delimiter set, 101 when MSH-9.1 or MSH-10 is empty. `partial` on
    the error holds what could be read so the ACK can still echo MSH-10.
    """
    if not text.startswith("MSH"):
        text = text.lstrip(_LEADING_BLANKS)
        if not text.startswith("MSH"):
            raise HeaderError("first segment is not MSH", ErrorCode.SEGMENT_SEQUENCE_ERROR)
    line = text[: _line_end(text)]
    field_sep = line[3:4]
    if not is_delimiter(field_sep):
        raise HeaderError(
            "MSH-1 (field separator) is missing or not a valid delimiter",
            ErrorCode.DATA_TYPE_ERROR,
            field=1,
        )
    fields = line.split(field_sep, _MSH_FIELDS)
    encoding_chars = fields[1] if len(fields) > 1 else ""
    if not valid_delimiters(field_sep, encoding_chars):
        raise HeaderError(
            "MSH-2 (encoding characters) must be 4 or 5 distinct delimiters",
            ErrorCode.DATA_TYPE_ERROR,
            field=2,
            partial=_build(fields, field_sep, encoding_chars, *_usable_separators(field_sep, encoding_chars)),
        )
    header = _build(fields, field_sep, encoding_chars, encoding_chars[0], encoding_chars[1])
    if not header.message_code:
        raise HeaderError(
            "MSH-9 (message type) is empty", ErrorCode.REQUIRED_FIELD_MISSING, field=9, partial=header
        )
    if not header.control_id:
        raise HeaderError(
            "MSH-10 (message control id) is empty",
            ErrorCode.REQUIRED_FIELD_MISSING,
            field=10,
            partial=header,
        )
    return header


def _line_end(text: str) -> int:
    """Index of the first segment terminator (CR or LF), or the text's length."""
    end = len(text)
    for terminator in ("\r", "\n"):
        found = text.find(terminator, 0, end)
        if found >= 0:
            end = found
    return end


def _usable_separators(field_sep: str, encoding_chars: str) -> tuple[str, str]:
    """Component and repetition separators for reading a header whose MSH-2 is broken."""
    component = encoding_chars[0:1]
    repetition = encoding_chars[1:2]
    if not is_delimiter(component) or component == field_sep:
        component = "^" if field_sep != "^" else "\x00"
    if not is_delimiter(repetition) or repetition in (field_sep, component):
        repetition = "~" if "~" not in (field_sep, component) else "\x00"
    return component, repetition


def _build(
    fields: list[str], field_sep: str, encoding_chars: str, component: str, repetition: str
) -> MessageHeader:
    """Assemble the header from `line.split(field_sep)`; fields[n - 1] is MSH-n."""
    if len(fields) < _MSH_FIELDS:
        fields = fields + [""] * (_MSH_FIELDS - len(fields))
    message_type = fields[8]
    message_code, _, rest = message_type.partition(component)
    return MessageHeader(
        field_sep=field_sep,
        encoding_chars=encoding_chars,
        sending_application=fields[2],
        sending_facility=fields[3],
        receiving_application=fields[4],
        receiving_facility=fields[5],
        message_type=message_type,
        message_code=message_code,
        trigger_event=rest.partition(component)[0],
        control_id=fields[9],
        processing_id=fields[10],
        version_id=fields[11].partition(component)[0],
        accept_ack_type=fields[14],
        app_ack_type=fields[15],
        charset=fields[17].partition(repetition)[0],
    )
