"""engine.hl7.ack: ACK bytes per DESIGN.md §4 and HL7 v2 ch. 2, checked with python-hl7."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone

import hl7
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.hl7.ack import (
    COMMIT_ACK,
    COMMIT_NAK,
    AckCode,
    build_ack,
    choose_code,
    is_ack,
    new_control_id,
    should_send_accept_ack,
)
from engine.hl7.errors import AckError, ErrorCode, HeaderError
from engine.hl7.header import parse_header
from engine.types import MessageHeader

NOW = datetime(2024, 3, 5, 14, 7, 9, tzinfo=UTC)
DELIMITER_POOL = "|^~\\&#!$%*+/:;<=>?@[]{}_`'\",-."


def header(**changes: str) -> MessageHeader:
    """A v2.5.1 ADT^A04 header in original mode, with fields replaced as given."""
    base = parse_header("MSH|^~\\&|SAPP|SFAC|RAPP|RFAC|20240101||ADT^A04^ADT_A01|CTRL42|P|2.5.1\rPID|1")
    return dataclasses.replace(base, **changes)


def ack_segments(ack: bytes, codec: str = "utf-8") -> list[str]:
    """The ACK's segments; asserts CR-only terminators and a final CR."""
    text = ack.decode(codec)
    assert "\n" not in text and text.endswith("\r")
    return text[:-1].split("\r")


class TestBuildAck:
    def test_positive_ack_exact_bytes(self) -> None:
        """AA: swapped applications, ACK^<trigger>^ACK, fresh MSH-10, echoed MSH-11/12, MSA-2 = MSH-10."""
        ack = build_ack(header(), AckCode.AA, now=NOW, control_id="ACK1")
        assert ack == (
            b"MSH|^~\\&|RAPP|RFAC|SAPP|SFAC|20240305140709+0000||ACK^A04^ACK|ACK1|P|2.5.1\rMSA|AA|CTRL42\r"
        )

    def test_echoes_msh18_and_encodes_in_sender_charset(self) -> None:
        """MSH-18 is echoed and the bytes use the codec chosen at decode (ISO 8859-1 here)."""
        ack = build_ack(
            header(charset="8859/1", receiving_application="Hôpital"), "AA", encoding="iso8859-1", now=NOW
        )
        msh = ack_segments(ack, "iso8859-1")[0].split("|")
        assert (msh[2], msh[17], len(msh)) == ("Hôpital", "8859/1", 18)
        assert b"H\xf4pital" in ack

    def test_unencodable_characters_are_replaced_not_raised(self) -> None:
        """A value the sender's charset cannot hold becomes '?' instead of failing the ACK."""
        ack = build_ack(header(receiving_application="Zoë"), "AA", encoding="ascii", now=NOW)
        assert b"|Zo?|" in ack

    def test_unknown_codec_falls_back_to_utf8(self) -> None:
        """An unknown codec name cannot stop the ACK: UTF-8 is used."""
        assert b"MSA|AA|CTRL42\r" in build_ack(header(), "AA", encoding="no-such-codec")

    def test_sender_delimiters_are_echoed(self) -> None:
        """Field separator and all five MSH-2 characters are the sender's."""
        original = parse_header("MSH#*@!%$#SAPP#SFAC#RAPP#RFAC#2024##ORU*R01*ORU_R01#C7#P#2.7")
        ack = build_ack(original, "CA", now=NOW, control_id="A1").decode()
        assert ack.startswith("MSH#*@!%$#RAPP#RFAC#SAPP#SFAC#20240305140709+0000##ACK*R01*ACK#A1#P#2.7\r")
        assert "MSA#CA#C7\r" in ack

    def test_no_header_gives_default_delimiters_and_empty_msa2(self) -> None:
        """Without a readable MSH: default delimiters, our identity in MSH-3/4, AR with empty MSA-2."""
        error = AckError(ErrorCode.SEGMENT_SEQUENCE_ERROR, text="first segment is not MSH")
        ack = build_ack(
            None,
            "AR",
            error=error,
            now=NOW,
            control_id="Z1",
            sending_application="HL7ENGINE",
            sending_facility="SITE",
        )
        assert ack_segments(ack) == [
            "MSH|^~\\&|HL7ENGINE|SITE|||20240305140709+0000||ACK^^ACK|Z1|P|2.5.1",
            "MSA|AR|",
            "ERR|||100^Segment sequence error^HL70357|E||||first segment is not MSH",
        ]
        assert str(hl7.parse(ack.decode()).segment("MSA")[1]) == "AR"

    def test_our_identity_does_not_override_the_swap(self) -> None:
        """sending_application/facility fill MSH-3/4 only when the original left MSH-5/6 empty."""
        ack = build_ack(
            header(receiving_facility=""), "AA", sending_application="ME", sending_facility="HERE"
        )
        assert ack_segments(ack)[0].split("|")[2:4] == ["RAPP", "HERE"]

    def test_partial_header_with_broken_msh2_echoes_control_id(self) -> None:
        """A header rejected for MSH-2 still has its MSH-10 echoed, under default delimiters."""
        with pytest.raises(HeaderError) as caught:
            parse_header("MSH|^~\\\\&|SAPP|SFAC|||||ADT^A01|CTRL9|P|2.5")
        ack = build_ack(caught.value.partial, "AR", error=caught.value.ack_error(), now=NOW, control_id="Q")
        segments = ack_segments(ack)
        assert segments[0].startswith("MSH|^~\\&|||SAPP|SFAC|")
        assert segments[1] == "MSA|AR|CTRL9"
        assert segments[2].startswith("ERR||MSH^1^2|102^Data type error^HL70357|E|")

    def test_err_v25_layout(self) -> None:
        """v2.5+: ERR-2 location, ERR-3 CWE from table 0357, ERR-4 severity, ERR-8 message."""
        error = AckError(ErrorCode.REQUIRED_FIELD_MISSING, "E", "MSH", 1, 10, text="MSH-10 is empty")
        segments = ack_segments(build_ack(header(), "AR", error=error, now=NOW))
        assert segments[1:] == [
            "MSA|AR|CTRL42",
            "ERR||MSH^1^10|101^Required field missing^HL70357|E||||MSH-10 is empty",
        ]

    def test_err_location_with_component(self) -> None:
        """A component location fills ERL as segment^sequence^field^repetition^component."""
        error = AckError(ErrorCode.UNSUPPORTED_EVENT_CODE, segment="MSH", sequence=1, field=9, component=2)
        err = ack_segments(build_ack(header(), "AR", error=error, now=NOW))[2]
        assert err == "ERR||MSH^1^9^1^2|201^Unsupported event code^HL70357|E"

    def test_err_v23_layout_uses_eld_and_msa3(self) -> None:
        """Before v2.5: ERR-1 as ELD with a CE in subcomponents, the message in MSA-3; MSH-9 per v2.3.1."""
        error = AckError(
            ErrorCode.APPLICATION_INTERNAL_ERROR, segment="PID", sequence=1, field=3, text="oops"
        )
        segments = ack_segments(build_ack(header(version_id="2.3.1"), "AE", error=error, now=NOW))
        assert "ACK^A04^ACK" in segments[0]
        assert segments[1:] == ["MSA|AE|CTRL42|oops", "ERR|PID^1^3^207&Application internal error&HL70357"]

    def test_v22_message_type_has_no_structure_component(self) -> None:
        """MSH-9.3 (message structure) exists from v2.3.1; a v2.2 ACK is ACK^<trigger>."""
        assert "|ACK^A04|" in ack_segments(build_ack(header(version_id="2.2"), "AA"))[0]

    def test_msa3_withdrawn_from_v27(self) -> None:
        """MSA-3 carries text up to v2.6 and is left out from v2.7 (withdrawn)."""
        assert ack_segments(build_ack(header(version_id="2.6"), "AA", text="ok"))[1] == "MSA|AA|CTRL42|ok"
        assert ack_segments(build_ack(header(version_id="2.7"), "AA", text="ok"))[1] == "MSA|AA|CTRL42"

    def test_engine_text_is_escaped_and_round_trips(self) -> None:
        """Delimiters in engine text become HL7 escapes; python-hl7 unescapes them back."""
        text = "a|b^c~d\\e&f"
        ack = build_ack(header(version_id="2.5"), "AE", text=text, now=NOW)
        assert ack_segments(ack)[1] == "MSA|AE|CTRL42|a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"
        parsed = hl7.parse(ack.decode())
        assert text == parsed.unescape(str(parsed.segment("MSA")[3]))

    def test_echoed_values_are_sanitised(self) -> None:
        """Framing bytes, terminators and the field separator vanish from echoed values."""
        dirty = header(control_id="C\x0b1\x1c|2\r\n", sending_application="S\rA|PP", trigger_event="A\x1c04")
        ack = build_ack(dirty, "AA", now=NOW, control_id="X\x0b1")
        assert b"\x0b" not in ack and b"\x1c" not in ack
        segments = ack_segments(ack)
        assert segments[0].split("|")[4] == "SAPP" and "|ACK^A04^ACK|X1|" in segments[0]
        assert segments[1] == "MSA|AA|C12"

    def test_invalid_code_is_rejected(self) -> None:
        """MSA-1 must be one of table 0008's codes."""
        with pytest.raises(ValueError, match="XX"):
            build_ack(header(), "XX")

    def test_generated_control_ids_are_fresh_and_fit_st20(self) -> None:
        """Without a control_id each ACK gets a new MSH-10 of at most 20 characters."""
        ids = {ack_segments(build_ack(header(), "AA"))[0].split("|")[9] for _ in range(50)}
        assert len(ids) == 50 and all(len(i) <= 20 for i in ids)
        assert len(new_control_id()) == 20

    def test_default_timestamp_is_local_time_with_offset(self) -> None:
        """MSH-7 defaults to now, as YYYYMMDDHHMMSS+ZZZZ."""
        stamp = ack_segments(build_ack(header(), "AA"))[0].split("|")[6]
        assert re.fullmatch(r"\d{14}[+-]\d{4}", stamp)
        parsed = datetime.strptime(stamp, "%Y%m%d%H%M%S%z")
        assert abs(parsed - datetime.now(UTC)) < timedelta(seconds=5)

    def test_naive_timestamp_has_no_offset(self) -> None:
        """A naive `now` is written without a zone; an aware one with its own offset."""
        assert "|20240305140709|" in build_ack(header(), "AA", now=NOW.replace(tzinfo=None)).decode()
        offset = NOW.astimezone(timezone(timedelta(hours=-5)))
        assert "|20240305090709-0500|" in build_ack(header(), "AA", now=offset).decode()

    @given(
        st.lists(st.sampled_from(DELIMITER_POOL), min_size=5, max_size=6, unique=True),
        st.lists(st.text(st.characters(exclude_categories=["Cs"]), max_size=15), min_size=7, max_size=7),
        st.sampled_from(list(AckCode)),
    )
    def test_property_structure_survives_any_values(
        self, delimiters: list[str], values: list[str], code: AckCode
    ) -> None:
        """Any delimiters/values: same MSH-1/2, MSA-2 = clean MSH-10, no 0x0B/0x1C, hl7.parse reads it."""
        field_sep, encoding_chars = delimiters[0], "".join(delimiters[1:])
        original = header(
            field_sep=field_sep,
            encoding_chars=encoding_chars,
            control_id=values[0],
            sending_application=values[1],
            sending_facility=values[2],
            receiving_application=values[3],
            trigger_event=values[4],
            processing_id=values[5],
            charset=values[6],
        )
        error = AckError(ErrorCode.APPLICATION_INTERNAL_ERROR, text="x")  # keeps MSA off hl7.parse's strip()
        ack = build_ack(original, code, error=error, now=NOW)
        assert b"\x0b" not in ack and b"\x1c" not in ack

        def sanitised(value: str) -> str:
            return "".join(c for c in value if c not in "\x0b\x1c\r\n" + field_sep)

        parsed = hl7.parse(ack.decode("utf-8"))
        msh, msa = parsed.segment("MSH"), parsed.segment("MSA")
        assert (field_sep, encoding_chars) == (str(msh[1]), str(msh[2]))
        assert (str(code), sanitised(values[0])) == (str(msa[1]), str(msa[2]))
        assert (sanitised(values[1]), sanitised(values[2])) == (str(msh[5]), str(msh[6]))
        assert str(parsed.segment("ERR")[3]).startswith("207")


class TestChooseCode:
    @pytest.mark.parametrize(
        ("outcome", "original", "enhanced"),
        [
            ("accepted", "AA", "CA"),
            ("rejected", "AR", "CR"),
            ("unavailable", "AR", "CE"),
            ("app_error", "AE", "AE"),
        ],
    )
    def test_design_table(self, outcome: str, original: str, enhanced: str) -> None:
        """MSA-1 follows DESIGN.md §4 for original (MSH-15/16 empty) and enhanced mode."""
        assert original == choose_code(header(), outcome)  # type: ignore[arg-type]
        assert enhanced == choose_code(header(accept_ack_type="AL"), outcome)  # type: ignore[arg-type]
        assert enhanced == choose_code(header(app_ack_type="NE"), outcome)  # type: ignore[arg-type]

    def test_without_header_original_mode(self) -> None:
        """An unreadable header is answered in original mode (AR)."""
        assert choose_code(None, "rejected") == AckCode.AR


class TestShouldSendAcceptAck:
    @pytest.mark.parametrize(
        ("msh15", "msh16", "success", "expected"),
        [
            ("", "", True, True),
            ("", "", False, True),
            ("AL", "", True, True),
            ("AL", "", False, True),
            ("NE", "AL", True, False),
            ("NE", "", False, False),
            ("ER", "", True, False),
            ("ER", "", False, True),
            ("SU", "", True, True),
            ("SU", "", False, False),
            ("", "AL", True, True),
            ("", "AL", False, True),
            ("??", "", True, True),
        ],
    )
    def test_msh15_rules(self, msh15: str, msh16: str, success: bool, expected: bool) -> None:
        """Original mode always; enhanced per MSH-15 (AL/NE/ER/SU, empty = AL, unknown answers)."""
        assert expected == should_send_accept_ack(header(accept_ack_type=msh15, app_ack_type=msh16), success)

    def test_no_header(self) -> None:
        """Without a header the mode is unknown and the sender gets an answer."""
        assert should_send_accept_ack(None, False)


class TestIsAck:
    def test_ack_message(self) -> None:
        """MSH-9.1 = ACK marks an acknowledgement, which is never acknowledged."""
        assert is_ack(parse_header("MSH|^~\\&|||||||ACK^A01^ACK|1|P|2.5"))

    def test_other_message(self) -> None:
        """Other message codes are not ACKs, even when the trigger says ACK."""
        assert not is_ack(header(message_code="ADT", trigger_event="ACK"))


class TestCommitBlocks:
    def test_payloads(self) -> None:
        """MLLP release 2 commit acknowledgement payloads are ACK (0x06) and NAK (0x15)."""
        assert (COMMIT_ACK, COMMIT_NAK) == (b"\x06", b"\x15")


class TestErrorCode:
    def test_table_0357(self) -> None:
        """The enum holds table 0357's codes, each with its display text."""
        assert [int(c) for c in ErrorCode] == [0, 100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207]
        assert ErrorCode.UNSUPPORTED_VERSION_ID.description == "Unsupported version id"
