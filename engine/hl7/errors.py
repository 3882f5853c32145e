"""Error vocabulary of the custody path: HL7 table 0357 codes and the errors that carry them.

Every reason text here names segments and fields, never their values (HIPAA: these texts
reach logs, metrics and ACKs).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from engine.types import EngineError, MessageHeader

#: HL7 table 0516 (error severity): Warning, Information, Error; Fatal added in v2.7.
Severity = Literal["W", "I", "E", "F"]


class ErrorCode(enum.IntEnum):
    """HL7 table 0357, message error condition codes (HL7 v2.5 ch. 2, ERR-3 / ELD-4)."""

    MESSAGE_ACCEPTED = 0
    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_RECORD_LOCKED = 206
    APPLICATION_INTERNAL_ERROR = 207

    @property
    def description(self) -> str:
        """The table's display text, used as CWE.2 of ERR-3."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.MESSAGE_ACCEPTED: "Message accepted",
    ErrorCode.SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    ErrorCode.DATA_TYPE_ERROR: "Data type error",
    ErrorCode.TABLE_VALUE_NOT_FOUND: "Table value not found",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    ErrorCode.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    ErrorCode.UNSUPPORTED_VERSION_ID: "Unsupported version id",
    ErrorCode.UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    ErrorCode.DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    ErrorCode.APPLICATION_RECORD_LOCKED: "Application record locked",
    ErrorCode.APPLICATION_INTERNAL_ERROR: "Application internal error",
}


@dataclass(frozen=True, slots=True)
class AckError:
    """One ERR segment of an ACK (HL7 v2.5 ch. 2.14.5).

    `segment`/`sequence`/`field`/`component` form ERR-2 (ERL: segment id ^ segment
    sequence ^ field position ^ field repetition ^ component number); `text` is ERR-8,
    a generic text written by the engine, never a value taken from the message.
    """

    code: ErrorCode
    severity: Severity = "E"
    segment: str = ""
    sequence: int | None = None
    field: int | None = None
    component: int | None = None
    text: str = ""


class HeaderError(EngineError):
    """The MSH segment cannot be used: the message is rejected before custody.

    `err_code` is the HL7 table 0357 code for ERR-3 (100 no MSH first, 101 required
    field empty, 102 bad delimiters). `partial` is what could still be read (so the
    ACK can echo MSH-10 and the sender's delimiters); None when nothing could.
    """

    def __init__(
        self,
        reason: str,
        err_code: ErrorCode,
        *,
        field: int | None = None,
        partial: MessageHeader | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.err_code = err_code
        self.field = field
        self.partial = partial

    def ack_error(self) -> AckError:
        """The ERR segment describing this error (location MSH^1^<field> when known)."""
        if self.field is None:
            return AckError(self.err_code, text=self.reason)
        return AckError(self.err_code, segment="MSH", sequence=1, field=self.field, text=self.reason)
