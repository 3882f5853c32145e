"""MLLP release 1 framing: a pure, incremental decoder and a one-write encoder.

HL7 v2 Implementation Guide, Appendix C (MLLP release 1): a frame is
``<VT=0x0B> payload <FS=0x1C><CR=0x0D>``. The decoder does no I/O: feed it whatever a
socket read returned and it hands back events. Any chunking of a byte stream yields the
same frames, the same too-large/interrupted events and the same garbage total between
two frames (garbage may be reported in several pieces, one per feed, so metrics stay live).

Choices where the standard is silent, made so that a sender's *next* message stays
readable:

- End block: ``FS`` ends the frame and a ``CR`` right after it is consumed. A sender that
  omits the ``CR`` still gets its frame read; whatever follows a bare ``FS`` is outside a
  frame, so it is garbage up to the next ``VT``.
- Start block inside a frame: the sender gave up on the partial frame (typically a
  timeout and resend), so the ``VT`` starts a new frame and the partial one is reported as
  `FrameInterrupted` with its length (or as `FrameTooLarge` if it already exceeded the
  limit, so the report does not depend on chunking). A ``VT`` while discarding a too-large
  frame likewise starts a new frame.
- Too large: once a frame's payload exceeds ``max_frame_bytes`` the decoder reports
  `FrameTooLarge` once, drops what it buffered, and discards input up to the frame's end
  block (or the next start block). It never buffers more than ``max_frame_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"  # VT
END_BLOCK = b"\x1c"  # FS
CARRIAGE_RETURN = 0x0D  # CR, the second byte of the end block
_TRAILER = b"\x1c\r"

# Decoder states.
_HUNTING = 0  # outside a frame, looking for a start block
_IN_FRAME = 1  # buffering a payload
_DISCARDING = 2  # inside a too-large frame, dropping bytes
_AFTER_END = 3  # just saw FS; a CR here belongs to the end block


@dataclass(frozen=True, slots=True)
class Frame:
    """A complete frame: the payload between the start and end blocks, exactly as sent."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes outside any frame (before a start block) that were skipped."""

    count: int


@dataclass(frozen=True, slots=True)
class FrameTooLarge:
    """A frame grew past ``max_frame_bytes``; the rest of it is being discarded."""

    limit: int


@dataclass(frozen=True, slots=True)
class FrameInterrupted:
    """A start block arrived inside a frame; the partial frame (``discarded`` bytes) was dropped."""

    discarded: int


FrameEvent = Frame | Garbage | FrameTooLarge | FrameInterrupted


def encode_frame(payload: bytes) -> bytes:
    """Wrap one payload in MLLP release 1 blocks, as one bytes object (one socket write).

    Raises ValueError when the payload holds a start or end block byte, which would break
    the receiver's framing (the message names the problem, never the content).
    """
    if START_BLOCK in payload or END_BLOCK in payload:
        raise ValueError("MLLP payload contains a framing byte (VT or FS)")
    return START_BLOCK + payload + _TRAILER


class FrameDecoder:
    """Incremental MLLP decoder with bounded memory (at most ``max_frame_bytes`` buffered)."""

    __slots__ = ("_buffer", "_frames_started", "_max_frame_bytes", "_state")

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._state = _HUNTING
        self._frames_started = 0

    @property
    def in_frame(self) -> bool:
        """True while a frame has started and not ended (buffering, or discarding a too-large one)."""
        return self._state in (_IN_FRAME, _DISCARDING)

    @property
    def discarding(self) -> bool:
        """True while dropping the rest of a frame already reported as `FrameTooLarge`."""
        return self._state == _DISCARDING

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes of the partial frame held in memory."""
        return len(self._buffer)

    @property
    def frames_started(self) -> int:
        """Start blocks seen so far; a change tells the caller a new frame began (frame deadline)."""
        return self._frames_started

    def feed(self, data: bytes | bytearray | memoryview) -> list[FrameEvent]:
        """Consume one chunk of the stream and return the events it completed, in order."""
        if not isinstance(data, bytes):
            data = bytes(data)
        events: list[FrameEvent] = []
        pos = 0
        size = len(data)
        while pos < size:
            state = self._state
            if state == _IN_FRAME:
                pos = self._read_payload(data, pos, events)
            elif state == _HUNTING:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    events.append(Garbage(size - pos))
                    return events
                if start > pos:
                    events.append(Garbage(start - pos))
                pos = start + 1
                self._begin_frame()
            elif state == _AFTER_END:
                if data[pos] == CARRIAGE_RETURN:
                    pos += 1
                self._state = _HUNTING
            else:  # _DISCARDING
                pos = self._discard(data, pos)
        return events

    def _begin_frame(self) -> None:
        self._state = _IN_FRAME
        self._frames_started += 1
        self._buffer.clear()

    def _read_payload(self, data: bytes, pos: int, events: list[FrameEvent]) -> int:
        """Buffer payload bytes from `pos`; return where reading should continue."""
        end = data.find(END_BLOCK, pos)
        restart = data.find(START_BLOCK, pos, end if end >= 0 else len(data))
        if restart >= 0:
            partial = len(self._buffer) + restart - pos
            # Past the limit it is "too large", whichever read the VT arrived in (chunking invariance).
            events.append(FrameTooLarge(self._max_frame_bytes) if partial > self._max_frame_bytes
                          else FrameInterrupted(partial))
            self._begin_frame()
            return restart + 1
        buffer = self._buffer
        if end < 0:
            if len(buffer) + len(data) - pos > self._max_frame_bytes:
                self._too_large(events)
            else:
                buffer += data[pos:] if pos else data
            return len(data)
        if len(buffer) + end - pos > self._max_frame_bytes:
            self._too_large(events)
        elif buffer:
            buffer += data[pos:end]
            events.append(Frame(bytes(buffer)))
            buffer.clear()
        else:
            # Common case: the whole frame arrived in one read; one copy, no buffering.
            events.append(Frame(data[pos:end]))
        self._state = _AFTER_END
        return end + 1

    def _too_large(self, events: list[FrameEvent]) -> None:
        events.append(FrameTooLarge(self._max_frame_bytes))
        self._buffer = bytearray()  # release the memory, not just the length
        self._state = _DISCARDING

    def _discard(self, data: bytes, pos: int) -> int:
        end = data.find(END_BLOCK, pos)
        restart = data.find(START_BLOCK, pos, end if end >= 0 else len(data))
        if restart >= 0:
            self._begin_frame()
            return restart + 1
        if end < 0:
            return len(data)
        self._state = _AFTER_END
        return end + 1
