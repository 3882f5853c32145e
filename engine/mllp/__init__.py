"""MLLP (HL7 v2 Implementation Guide, Appendix C, release 1): framing, listener, client, TLS."""

from engine.mllp.client import MllpClient, MllpConnectionError, MllpError, MllpTimeoutError, send_many
from engine.mllp.framing import (
    Frame,
    FrameDecoder,
    FrameEvent,
    FrameInterrupted,
    FrameTooLarge,
    Garbage,
    encode_frame,
)
from engine.mllp.server import ConnectionInfo, Handler, MllpLimits, MllpServer

__all__ = [
    "ConnectionInfo",
    "Frame",
    "FrameDecoder",
    "FrameEvent",
    "FrameInterrupted",
    "FrameTooLarge",
    "Garbage",
    "Handler",
    "MllpClient",
    "MllpConnectionError",
    "MllpError",
    "MllpLimits",
    "MllpServer",
    "MllpTimeoutError",
    "encode_frame",
    "send_many",
]
