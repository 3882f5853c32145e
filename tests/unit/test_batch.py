"""engine.hl7.batch: files and streams split into byte-exact messages."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.hl7.batch import split_messages, split_text
from tests.support.corpus import CORPUS, corpus_rows


def message(control_id: str, terminator: bytes = b"\r") -> bytes:
    """A three-segment message, each segment ended by `terminator`."""
    segments = [
        b"MSH|^~\\&|A|B|||||ADT^A01|" + control_id.encode() + b"|P|2.5",
        b"EVN|A01",
        b"PID|1||" + b"9",
    ]
    return b"".join(s + terminator for s in segments)


class TestSplitMessages:
    def test_back_to_back_messages(self) -> None:
        """Each line starting with MSH begins a new message; bytes are kept exactly."""
        first, second = message("1"), message("2", b"\n")
        assert [first, second] == split_messages(first + second)

    def test_batch_envelope_is_dropped(self) -> None:
        """FHS/BHS before and BTS/FTS after are removed; the messages are untouched."""
        first, second = message("1"), message("2")
        data = b"FHS|^~\\&|F\rBHS|^~\\&|B\r" + first + second + b"BTS|2\rFTS|1\r"
        assert [first, second] == split_messages(data)

    def test_nested_batches(self) -> None:
        """Several BHS..BTS batches inside one FHS..FTS file yield all their messages in order."""
        messages = [message(str(i), b"\r\n") for i in range(4)]
        data = (
            b"FHS|^~\\&\r\nBHS|^~\\&\r\n" + messages[0] + messages[1] + b"BTS|2\r\n"
            b"BHS|^~\\&\r\n" + messages[2] + messages[3] + b"BTS|2\r\nFTS|2\r\n"
        )
        assert messages == split_messages(data)

    def test_bom_and_trailing_blank_lines(self) -> None:
        """A leading BOM and blank lines after the last segment are not part of the message."""
        assert [message("1", b"\n")] == split_messages(
            b"\xef\xbb\xbf" + message("1", b"\n") + b"\n\n  \n\r\n"
        )

    def test_mixed_terminators_inside_a_message(self) -> None:
        """CR, LF and CRLF mixed in one message stay as they were."""
        data = b"MSH|^~\\&|A|||||ADT^A01|1|P|2.5\r\nEVN|A01\nPID|1\r"
        assert [data] == split_messages(data + b"\r\n")

    def test_last_segment_without_terminator(self) -> None:
        """A message ending without a terminator ends at the end of the data."""
        assert split_messages(b"MSH|^~\\&|x\rPID|1") == [b"MSH|^~\\&|x\rPID|1"]

    def test_blank_lines_between_segments_stay_inside(self) -> None:
        """A blank line inside a message is part of its bytes (byte-exact), not a split point."""
        data = b"MSH|^~\\&|x\r\rPID|1\r"
        assert [data] == split_messages(data)

    def test_mllp_dump_framing_bytes(self) -> None:
        """MLLP start blocks at a line start and end-block lines are not message bytes."""
        assert split_messages(b"\x0bMSH|a\r\x1c\r\x0bMSH|b\r\x1c\r") == [b"MSH|a\r", b"MSH|b\r"]

    def test_stray_lines_before_first_message_form_their_own_chunk(self) -> None:
        """Content before the first MSH is returned alone so the caller rejects it (ERR 100) visibly."""
        assert [b"hello\n", message("1")] == split_messages(b"hello\n" + message("1"))

    def test_empty_and_blank_input(self) -> None:
        """Nothing but blanks holds no message."""
        assert [] == split_messages(b"") == split_messages(b"\r\n \n\x00\r")

    def test_msh_inside_a_field_does_not_split(self) -> None:
        """Only a segment starting with MSH starts a message, not "MSH" inside a field."""
        data = b"MSH|^~\\&|x\rNTE|1||see MSH|2\r"
        assert [data] == split_messages(data)

    @given(
        st.lists(st.sampled_from([b"\r", b"\n", b"\r\n"]), min_size=1, max_size=8),
        st.booleans(),
        st.booleans(),
        # No bare "\n": after a final "\r" it would complete a CRLF, not add a blank line.
        st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b" \n", b"\x00\r"]),
    )
    def test_property_count_and_bytes(
        self, terminators: list[bytes], batch: bool, bom: bool, tail: bytes
    ) -> None:
        """Any terminators, envelope, BOM and trailing blanks: every message comes back byte-exact."""
        messages = [message(str(i), t) for i, t in enumerate(terminators)]
        body = b"".join(messages)
        if batch:
            body = b"FHS|^~\\&\rBHS|^~\\&\n" + body + b"BTS|" + str(len(messages)).encode() + b"\r\nFTS|1\r"
        data = (b"\xef\xbb\xbf" if bom else b"") + body + tail
        assert messages == split_messages(data)


class TestSplitText:
    def test_text_version(self) -> None:
        """split_text splits decoded text the same way, keeping non-ASCII characters."""
        text = "FHS|^~\\&\rMSH|^~\\&|Zoë\rPID|1\nMSH|^~\\&|山田\r\nBTS|2\rFTS|1"
        assert split_text(text) == ["MSH|^~\\&|Zoë\rPID|1\n", "MSH|^~\\&|山田\r\n"]

    def test_leading_bom_character(self) -> None:
        """A decoded BOM (U+FEFF) before MSH is dropped like the byte form."""
        assert split_text("\ufeffMSH|^~\\&|x\r") == ["MSH|^~\\&|x\r"]


@pytest.mark.corpus
class TestCorpusBatches:
    def test_every_corpus_file_splits_into_its_message_count(self) -> None:
        """Each corpus file yields as many messages as INDEX.csv lists for it, each starting at MSH."""
        expected = Counter(row["file"] for row in corpus_rows())
        batches = 0
        for name, count in expected.items():
            data = (CORPUS / name).read_bytes()
            messages = split_messages(data)
            assert count == len(messages), name
            assert all(m.startswith(b"MSH") and m in data for m in messages), name
            batches += b"BHS" in data
        assert batches >= 1  # the corpus holds FHS/BHS batch files; the check must cover one
