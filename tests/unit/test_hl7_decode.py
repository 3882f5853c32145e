"""engine.hl7.decode: bytes to text per MSH-18, fallbacks, terminators."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.hl7.batch import split_messages
from engine.hl7.charset import codec_for, resolve_fallback
from engine.hl7.decode import decode, segments
from tests.support.corpus import CORPUS, corpus_rows


def msh(msh18: str = "", *, control_id: str = "C1") -> bytes:
    """An MSH segment with MSH-18 set, as ASCII bytes."""
    return f"MSH|^~\\&|APP|FAC|RAPP|RFAC|20240101||ADT^A01^ADT_A01|{control_id}|P|2.5.1||||||{msh18}".encode()


class TestDecode:
    def test_plain_ascii_without_msh18_uses_channel_default(self) -> None:
        """No MSH-18 means ASCII; the UTF-8 default reads it and is not called a fallback."""
        result = decode(msh() + b"\rPID|1\r")
        assert (result.codec, result.fallback_used, result.declared) == ("utf-8", False, "")
        assert result.text == (msh() + b"\rPID|1\r").decode("ascii")

    def test_genuine_latin1_with_8859_1(self) -> None:
        """Real ISO 8859-1 bytes (é as 0xE9) declared 8859/1 decode with the declared set."""
        result = decode(msh("8859/1") + b"\rPID|1||||Ren\xe9e^Andr\xe9\r")
        assert (result.codec, result.fallback_used, result.declared) == ("iso8859-1", False, "8859/1")
        assert "Renée^André" in result.text

    def test_utf8_bytes_declared_8859_1_read_as_utf8_and_flagged(self) -> None:
        """The corpus mislabel (8859/1 declared, UTF-8 bytes) is read as UTF-8, flagged as fallback."""
        result = decode(msh("8859/1") + "\rOBX|1|ST|||2.0 µg/mL\r".encode())
        assert (result.codec, result.fallback_used) == ("utf-8", True)
        assert "2.0 µg/mL" in result.text

    def test_strict_mode_honours_declared_single_byte_set(self) -> None:
        """trust_utf8=False keeps the declared 8859/1 even for UTF-8 looking bytes."""
        result = decode(msh("8859/1") + "\rPID|é\r".encode(), trust_utf8=False)
        assert (result.codec, result.fallback_used) == ("iso8859-1", False)
        assert "Ã©" in result.text

    def test_ascii_declared_but_utf8_bytes_falls_back(self) -> None:
        """Bytes invalid for ASCII use the channel fallback (UTF-8) and say so."""
        result = decode(msh("ASCII") + "\rPID|Zoë\r".encode())
        assert (result.codec, result.fallback_used, result.declared) == ("utf-8", True, "ASCII")
        assert "Zoë" in result.text

    def test_invalid_utf8_falls_back_to_latin1(self) -> None:
        """Bytes invalid for the declared UTF-8 and the default end at ISO 8859-1."""
        result = decode(msh("UNICODE UTF-8") + b"\rPID|\xe9\xff\r")
        assert (result.codec, result.fallback_used) == ("iso8859-1", True)
        assert "é\xff" in result.text

    def test_channel_fallback_charset_is_used(self) -> None:
        """A channel fallback of cp1252 reads undeclared 0x80 as the euro sign."""
        result = decode(msh() + b"\rNTE|1||\x80 5\r", fallback="cp1252")
        assert (result.codec, result.fallback_used) == ("cp1252", False)
        assert "€ 5" in result.text

    def test_unknown_fallback_name_still_decodes(self) -> None:
        """A fallback Python does not know is skipped for ISO 8859-1 rather than raising."""
        result = decode(msh() + b"\rPID|\xe9\r", fallback="no-such-codec")
        assert (result.codec, result.fallback_used) == ("iso8859-1", True)

    @pytest.mark.parametrize("fallback", ["utf-16", "rot13"])
    def test_unusable_fallback_is_skipped(self, fallback: str) -> None:
        """A wide or non-text fallback is never used: ISO 8859-1 reads the message instead."""
        result = decode(msh() + b"\rPID|\xe9\r", fallback=fallback)
        assert (result.codec, result.text.startswith("MSH|")) == ("iso8859-1", True)

    def test_unknown_declared_charset(self) -> None:
        """An MSH-18 outside table 0211 is reported and decoded with the fallback."""
        result = decode(msh("KLINGON") + b"\rPID|1\r")
        assert (result.codec, result.fallback_used, result.declared) == ("utf-8", True, "KLINGON")

    def test_first_repetition_is_the_declared_charset(self) -> None:
        """MSH-18 `UTF-8~UNICODE` declares its first repetition."""
        result = decode(msh("UTF-8~UNICODE") + "\rPID|ß\r".encode())
        assert (result.codec, result.fallback_used, result.declared) == ("utf-8", False, "UTF-8")

    def test_utf16_declared_on_single_byte_message_is_a_mislabel(self) -> None:
        """UNICODE UTF-16 cannot be true when "MSH" reads as three bytes: fallback, flagged."""
        result = decode(msh("UNICODE UTF-16") + b"\rPID|1\r")
        assert (result.codec, result.fallback_used) == ("utf-8", True)
        assert result.text.startswith("MSH|")

    @pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
    def test_utf16_message_with_bom(self, codec: str) -> None:
        """A UTF-16 message with a BOM decodes; MSH-18 is read from the text."""
        text = msh("UNICODE UTF-16").decode() + "\rPID|Łukasz\r"
        result = decode("\ufeff".encode(codec) + text.encode(codec))
        assert (result.text, result.codec, result.fallback_used) == (text, codec, False)
        assert result.declared == "UNICODE UTF-16"

    def test_utf16_without_bom_is_recognised(self) -> None:
        """UTF-16LE without a BOM is recognised by how "MSH" looks in it."""
        text = msh("UNICODE UTF-16").decode() + "\rPID|1\r"
        assert decode(text.encode("utf-16-le")).text == text

    def test_broken_utf16_does_not_raise(self) -> None:
        """An odd-length UTF-16 message decodes byte by byte instead of raising."""
        result = decode(b"\xff\xfeM\x00S\x00H\x00|")
        assert result.codec == "iso8859-1"

    def test_iso2022_code_extension(self) -> None:
        """`~ISO IR87` (ASCII default plus JIS X 0208 by escapes) reads Japanese text."""
        data = msh("~ISO IR87") + b"\rPID|1||||" + "山田^太郎".encode("iso2022_jp") + b"\r"
        result = decode(data)
        assert (result.codec, result.fallback_used) == ("iso2022_jp_2", False)
        assert "山田^太郎" in result.text

    def test_utf8_bom_is_stripped_from_text_only(self) -> None:
        """A UTF-8 BOM is not part of the text; the caller's bytes are untouched."""
        raw = b"\xef\xbb\xbf" + msh("UNICODE UTF-8") + b"\rPID|1\r"
        kept = bytes(raw)
        result = decode(raw)
        assert result.text.startswith("MSH|^~\\&|")
        assert raw == kept

    def test_leading_blanks_and_nuls_are_tolerated(self) -> None:
        """Whitespace and NUL bytes before "MSH" are skipped."""
        assert decode(b"\x00\r\n \t" + msh() + b"\r").text.startswith("MSH|")

    def test_msh18_read_after_batch_envelope(self) -> None:
        """In a batch, MSH-18 comes from the first MSH after FHS/BHS."""
        result = decode(b"FHS|^~\\&\rBHS|^~\\&\r" + msh("8859/1") + b"\rPID|\xe9\r")
        assert (result.declared, result.codec) == ("8859/1", "iso8859-1")

    def test_no_msh_at_all(self) -> None:
        """Garbage without MSH decodes with the default and declares nothing."""
        result = decode(b"hello \xff world")
        assert (result.codec, result.declared) == ("iso8859-1", "")

    @given(st.binary(max_size=600))
    def test_never_raises_on_arbitrary_bytes(self, data: bytes) -> None:
        """Any byte string decodes to some text with a real codec."""
        result = decode(data)
        assert isinstance(result.text, str)
        assert data.startswith(b"MSH") <= result.text.startswith("MSH")

    @given(
        st.sampled_from(
            [
                "",
                "ASCII",
                "8859/1",
                "8859/15",
                "UNICODE UTF-8",
                "UNICODE",
                "ISO IR87",
                "GB 18030-2000",
                "BIG-5",
                "KS X 1001",
                "UNICODE UTF-16",
                "??",
                "ISO IR14",
            ]
        ),
        st.binary(max_size=300),
    )
    def test_never_raises_whatever_msh18_declares(self, declared: str, body: bytes) -> None:
        """Any declared charset with any body bytes decodes without raising."""
        result = decode(msh(declared) + b"\r" + body)
        assert result.text.startswith("MSH|")
        assert result.declared == declared

    @given(st.text(alphabet=st.characters(codec="ascii", exclude_characters="\r\n|"), max_size=200))
    def test_ascii_text_round_trips(self, value: str) -> None:
        """ASCII messages come back character for character."""
        data = msh() + b"\rNTE|" + value.encode() + b"\r"
        assert decode(data).text.encode("ascii") == data


class TestSegments:
    @pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"])
    def test_each_terminator(self, terminator: str) -> None:
        """CR, LF and CRLF all split segments the same way."""
        text = terminator.join(["MSH|^~\\&|A", "EVN|A01", "PID|1"]) + terminator
        assert segments(text) == ["MSH|^~\\&|A", "EVN|A01", "PID|1"]

    def test_mixed_terminators_and_blank_lines(self) -> None:
        """Mixed terminators and blank or whitespace-only lines yield only segments."""
        assert segments("MSH|x\r\nEVN|y\n\nPID|z\r \r\nPV1|w\r\n\r\n") == ["MSH|x", "EVN|y", "PID|z", "PV1|w"]

    @given(
        st.lists(
            st.text(alphabet="ABZ019|^~&\\ é", min_size=1, max_size=20).filter(lambda s: not s.isspace()),
            min_size=1,
            max_size=12,
        ),
        st.lists(st.sampled_from(["\r", "\n", "\r\n", "\r\r", "\n\n"]), min_size=12, max_size=12),
    )
    def test_any_terminator_mix(self, lines: list[str], terminators: list[str]) -> None:
        """Segments joined by any mix of terminators split back into the same list."""
        text = "".join(line + terminators[i] for i, line in enumerate(lines))
        assert lines == segments(text)


class TestCharsetTable:
    @pytest.mark.parametrize(
        ("declared", "codec"),
        [
            ("ASCII", "ascii"),
            ("8859/1", "iso8859-1"),
            ("8859/15", "iso8859-15"),
            ("unicode  utf-8", "utf-8"),
            ("UTF-8", "utf-8"),
            ("UNICODE", "utf-8"),
            ("UNICODE UTF-16", "utf-16"),
            ("BIG-5", "big5"),
            ("rot13", None),
            ("", None),
        ],
    )
    def test_table_0211_names(self, declared: str, codec: str | None) -> None:
        """Table 0211 names (case and blanks normalised) map to Python codecs; others to None."""
        assert codec == codec_for(declared)

    def test_resolve_fallback_accepts_ascii_compatible(self) -> None:
        """A configured fallback resolves to its canonical codec name."""
        assert resolve_fallback("latin-1") == "iso8859-1"

    @pytest.mark.parametrize("name", ["rot13", "no-such-codec", "utf-16"])
    def test_resolve_fallback_rejects_unusable(self, name: str) -> None:
        """Non-text, unknown and non-ASCII-compatible fallbacks are configuration errors."""
        with pytest.raises(ValueError, match="charset"):
            resolve_fallback(name)


@pytest.mark.corpus
class TestCorpusDecode:
    def test_every_corpus_message_decodes_as_its_utf8_file(self) -> None:
        """Every corpus message (all stored as UTF-8) decodes to its UTF-8 text, declared MSH-18 kept."""
        rows = corpus_rows()
        by_file: dict[str, list[dict[str, str]]] = {}
        for row in rows:
            by_file.setdefault(row["file"], []).append(row)
        checked = 0
        for name, file_rows in by_file.items():
            messages = split_messages((CORPUS / name).read_bytes())
            for row in file_rows:
                raw = messages[int(row["msg_no"]) - 1]
                result = decode(raw)
                assert result.text == raw.decode("utf-8"), name
                assert result.declared == row["msh18"].split("~")[0], name
                if row["msh18"] == "8859/1" and row["non_ascii"] == "True":
                    assert (result.codec, result.fallback_used) == ("utf-8", True), name
                checked += 1
        assert checked == len(rows)
