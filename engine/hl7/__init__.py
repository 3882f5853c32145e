"""HL7 v2 custody-path layer: decode (MSH-18), MSH header, ACKs, batch split, field lookup.

Everything here touches only what the custody path needs (the MSH segment) and uses
`str`/`bytes` operations; python-hl7 is the reference the tests compare against.
"""

from engine.hl7.ack import (
    COMMIT_ACK,
    COMMIT_NAK,
    AckCode,
    Outcome,
    build_ack,
    choose_code,
    is_ack,
    new_control_id,
    should_send_accept_ack,
)
from engine.hl7.batch import split_messages, split_text
from engine.hl7.charset import codec_for, resolve_fallback
from engine.hl7.decode import Decoded, decode, decode_message, segments
from engine.hl7.errors import AckError, ErrorCode, HeaderError, Severity
from engine.hl7.fields import FieldPath, field_value, ordering_value, parse_field_path
from engine.hl7.header import (
    DEFAULT_ENCODING_CHARS,
    DEFAULT_FIELD_SEP,
    is_delimiter,
    parse_header,
    valid_delimiters,
)

__all__ = [
    "COMMIT_ACK",
    "COMMIT_NAK",
    "DEFAULT_ENCODING_CHARS",
    "DEFAULT_FIELD_SEP",
    "AckCode",
    "AckError",
    "Decoded",
    "ErrorCode",
    "FieldPath",
    "HeaderError",
    "Outcome",
    "Severity",
    "build_ack",
    "choose_code",
    "codec_for",
    "decode",
    "decode_message",
    "field_value",
    "is_ack",
    "is_delimiter",
    "new_control_id",
    "ordering_value",
    "parse_field_path",
    "parse_header",
    "resolve_fallback",
    "segments",
    "should_send_accept_ack",
    "split_messages",
    "split_text",
    "valid_delimiters",
]
