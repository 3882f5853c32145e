"""MLLP release 1 framing (HL7 v2 IG Appendix C): the pure decoder and encoder."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.mllp.framing import (
    Frame,
    FrameDecoder,
    FrameEvent,
    FrameInterrupted,
    FrameTooLarge,
    Garbage,
    encode_frame,
)

VT, FS, CR = b"\x0b", b"\x1c", b"\r"


def frame(payload: bytes) -> bytes:
    return VT + payload + FS + CR


def feed_chunks(decoder: FrameDecoder, chunks: list[bytes]) -> list[FrameEvent]:
    events: list[FrameEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def normalise(events: list[FrameEvent]) -> list[FrameEvent]:
    """Merge adjacent Garbage events: only the total per gap is chunking-invariant."""
    merged: list[FrameEvent] = []
    for event in events:
        if isinstance(event, Garbage) and merged and isinstance(merged[-1], Garbage):
            merged[-1] = Garbage(merged[-1].count + event.count)
        else:
            merged.append(event)
    return merged


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


class TestFrameDecoder:
    def test_single_frame(self) -> None:
        """A complete frame yields its payload exactly."""
        assert [Frame(b"MSH|^~\\&|A")] == FrameDecoder(100).feed(frame(b"MSH|^~\\&|A"))

    def test_several_frames_in_one_chunk(self) -> None:
        """Several frames in one read all come out, in order."""
        data = frame(b"one") + frame(b"two") + frame(b"three")
        assert [Frame(b"one"), Frame(b"two"), Frame(b"three")] == FrameDecoder(100).feed(data)

    def test_byte_by_byte(self) -> None:
        """A frame fed one byte at a time yields the same payload, once."""
        decoder = FrameDecoder(100)
        data = frame(b"MSH|x\rPID|1\r")
        events = feed_chunks(decoder, [data[i : i + 1] for i in range(len(data))])
        assert [Frame(b"MSH|x\rPID|1\r")] == events
        assert not decoder.in_frame

    def test_garbage_before_start_block_is_counted(self) -> None:
        """Bytes before a start block are skipped and counted."""
        events = FrameDecoder(100).feed(b"noise\n" + frame(b"a"))
        assert [Garbage(6), Frame(b"a")] == events

    def test_garbage_only(self) -> None:
        """A chunk without any start block is all garbage."""
        assert [Garbage(4)] == FrameDecoder(100).feed(b"abcd")

    def test_end_block_without_cr(self) -> None:
        """A bare FS ends the frame; what follows it is outside the frame."""
        events = FrameDecoder(100).feed(VT + b"a" + FS + b"xy" + frame(b"b"))
        assert [Frame(b"a"), Garbage(2), Frame(b"b")] == events

    def test_cr_after_fs_split_across_feeds(self) -> None:
        """The CR of the end block is consumed even when it arrives in the next read."""
        decoder = FrameDecoder(100)
        assert [Frame(b"a")] == decoder.feed(VT + b"a" + FS)
        assert decoder.feed(CR) == []
        assert [Frame(b"b")] == decoder.feed(frame(b"b"))

    def test_payload_of_exactly_the_limit_is_accepted(self) -> None:
        """A payload of max_frame_bytes is still a frame."""
        assert [Frame(b"x" * 10)] == FrameDecoder(10).feed(frame(b"x" * 10))

    def test_too_large_then_resync(self) -> None:
        """An oversized frame is reported once and the next frame is read normally."""
        decoder = FrameDecoder(10)
        events = decoder.feed(frame(b"x" * 11) + frame(b"ok"))
        assert [FrameTooLarge(10), Frame(b"ok")] == events

    def test_too_large_streamed_never_buffers_past_limit(self) -> None:
        """A huge frame arriving in pieces keeps at most max_frame_bytes buffered."""
        decoder = FrameDecoder(1000)
        events = decoder.feed(VT)
        for _ in range(100):
            events += decoder.feed(b"y" * 300)
            assert decoder.buffered_bytes <= 1000
        assert decoder.discarding
        events += decoder.feed(FS + CR + frame(b"next"))
        assert [FrameTooLarge(1000), Frame(b"next")] == events
        assert not decoder.in_frame

    def test_start_block_inside_frame_starts_a_new_frame(self) -> None:
        """A VT inside a frame drops the partial frame (reported with its size) and reads the new one."""
        decoder = FrameDecoder(100)
        events = decoder.feed(VT + b"partial")
        events += decoder.feed(b"!" + frame(b"resent"))
        assert [FrameInterrupted(8), Frame(b"resent")] == events

    def test_start_block_while_discarding_starts_a_new_frame(self) -> None:
        """A VT while discarding a too-large frame starts a new frame."""
        decoder = FrameDecoder(4)
        events = decoder.feed(VT + b"too")
        events += decoder.feed(b"long" + frame(b"ok"))
        assert [FrameTooLarge(4), Frame(b"ok")] == events

    def test_oversized_partial_before_start_block_is_too_large(self) -> None:
        """An interrupted partial frame already past the limit is reported as too large."""
        events = FrameDecoder(4).feed(VT + b"toolong" + frame(b"ok"))
        assert [FrameTooLarge(4), Frame(b"ok")] == events

    def test_in_frame_and_frames_started(self) -> None:
        """in_frame is true exactly while a frame is open; frames_started counts start blocks."""
        decoder = FrameDecoder(100)
        decoder.feed(b"zz")
        assert (decoder.in_frame, decoder.frames_started, decoder.buffered_bytes) == (False, 0, 0)
        decoder.feed(VT + b"abc")
        assert (decoder.in_frame, decoder.frames_started, decoder.buffered_bytes) == (True, 1, 3)
        decoder.feed(FS + CR)
        assert (decoder.in_frame, decoder.frames_started, decoder.buffered_bytes) == (False, 1, 0)

    def test_accepts_bytearray_and_memoryview(self) -> None:
        """Input buffers other than bytes decode the same and yield bytes payloads."""
        data = frame(b"abc")
        assert [Frame(b"abc")] == FrameDecoder(10).feed(bytearray(data))
        events = FrameDecoder(10).feed(memoryview(data))
        assert [Frame(b"abc")] == events
        assert isinstance(events[0], Frame) and type(events[0].payload) is bytes

    def test_rejects_non_positive_limit(self) -> None:
        """A limit below one byte is a programming error."""
        try:
            FrameDecoder(0)
        except ValueError:
            return
        raise AssertionError("FrameDecoder(0) did not raise")


class TestEncodeFrame:
    def test_wraps_payload(self) -> None:
        """The frame is VT + payload + FS + CR."""
        assert encode_frame(b"MSA|AA\r") == b"\x0bMSA|AA\r\x1c\r"

    def test_round_trip(self) -> None:
        """Decoding an encoded payload yields it back."""
        assert [Frame(b"MSH|1\r")] == FrameDecoder(100).feed(encode_frame(b"MSH|1\r"))

    def test_rejects_framing_bytes(self) -> None:
        """A payload holding VT or FS would break framing and is refused without echoing it."""
        for bad in (b"a\x0bb", b"a\x1cb"):
            try:
                encode_frame(bad)
            except ValueError as exc:
                assert "a\x0bb" not in str(exc) and "a\x1cb" not in str(exc)
            else:
                raise AssertionError("encode_frame accepted a framing byte")


payloads = st.binary(max_size=60).map(lambda b: b.replace(VT, b"").replace(FS, b""))
garbage = st.binary(max_size=20).map(lambda b: b.replace(VT, b""))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[FrameEvent]]:
    """A byte stream of frames with garbage between them, and the events it must yield."""
    parts: list[bytes] = []
    expected: list[FrameEvent] = []
    leading = draw(garbage)
    parts.append(leading)
    if leading:
        expected.append(Garbage(len(leading)))
    for payload in draw(st.lists(payloads, max_size=8)):
        bare_fs = draw(st.booleans())
        gap = draw(garbage)
        if bare_fs and gap.startswith(CR):
            gap = gap[1:]  # a CR right after a bare FS is read as part of the end block
        parts.append(VT + payload + (FS if bare_fs else FS + CR) + gap)
        expected.append(Frame(payload))
        if gap:
            expected.append(Garbage(len(gap)))
    return b"".join(parts), expected


class TestFrameDecoderProperties:
    @settings(max_examples=300, deadline=None)
    @given(streams(), st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
    def test_any_chunking_yields_the_same_events(
        self, stream: tuple[bytes, list[FrameEvent]], cuts: list[int]
    ) -> None:
        """Any split of the stream yields the same frames and the same garbage count per gap."""
        data, expected = stream
        events = feed_chunks(FrameDecoder(1000), split(data, cuts))
        assert expected == normalise(events)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(payloads, min_size=1, max_size=8),
        st.integers(min_value=1, max_value=40),
        st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    )
    def test_size_limit_is_chunking_invariant_and_bounded(
        self, frames: list[bytes], limit: int, cuts: list[int]
    ) -> None:
        """Frames over the limit are reported as too large, the rest read, memory bounded by the limit."""
        data = b"".join(frame(p) for p in frames)
        expected: list[FrameEvent] = [Frame(p) if len(p) <= limit else FrameTooLarge(limit) for p in frames]
        decoder = FrameDecoder(limit)
        events: list[FrameEvent] = []
        for chunk in split(data, cuts):
            events.extend(decoder.feed(chunk))
            assert decoder.buffered_bytes <= limit
        assert expected == events
        assert not decoder.in_frame

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.sampled_from([VT, FS, CR, b"a", b"MSH|", b"\n"]), max_size=80).map(b"".join),
        st.integers(min_value=1, max_value=12),
        st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    )
    def test_arbitrary_bytes_chunking_invariant(self, data: bytes, limit: int, cuts: list[int]) -> None:
        """Even with stray VT/FS/CR anywhere, chunked and whole feeds give the same events."""
        whole = FrameDecoder(limit).feed(data)
        decoder = FrameDecoder(limit)
        chunked: list[FrameEvent] = []
        for chunk in split(data, cuts):
            chunked.extend(decoder.feed(chunk))
            assert decoder.buffered_bytes <= limit
        assert normalise(whole) == normalise(chunked)
