"""engine.hl7.header (MSH parse) and engine.hl7.fields (ordering key), checked against python-hl7."""

from __future__ import annotations

import hl7
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.hl7.batch import split_messages
from engine.hl7.decode import decode
from engine.hl7.errors import ErrorCode, HeaderError
from engine.hl7.fields import ordering_value, parse_field_path
from engine.hl7.header import parse_header, valid_delimiters
from engine.types import MessageHeader
from tests.support.corpus import CORPUS, corpus_rows

# Printable ASCII that is neither letter, digit nor blank: every legal delimiter.
DELIMITER_POOL = "|^~\\&#!$%*+/:;<=>?@[]{}_`'\",-."


def header_fields(header: MessageHeader) -> dict[int, str]:
    """The raw MSH fields a MessageHeader holds, keyed by MSH field number."""
    return {
        1: header.field_sep,
        2: header.encoding_chars,
        3: header.sending_application,
        4: header.sending_facility,
        5: header.receiving_application,
        6: header.receiving_facility,
        9: header.message_type,
        10: header.control_id,
        11: header.processing_id,
        15: header.accept_ack_type,
        16: header.app_ack_type,
    }


def reference_component(message: hl7.Message, segment: str, field: int, component: int) -> str:
    """python-hl7's reading of SEG-field.component (first repetition); "" where it has none."""
    try:
        return str(message.extract_field(segment, 1, field, 1, component))
    except IndexError:  # python-hl7 raises when a field without components is asked for .2
        return ""


def assert_agrees_with_python_hl7(header: MessageHeader, msh_line: str) -> None:
    """Every MessageHeader field equals what python-hl7 reads from the same MSH line."""
    # A second segment keeps hl7.parse's whole-message strip() away from MSH's last field.
    reference = hl7.parse(msh_line + "\rZZZ|1")
    segment = reference.segment("MSH")
    for number, value in header_fields(header).items():
        expected = str(segment[number]) if number < len(segment) else ""
        assert expected == value, f"MSH-{number}"
    assert reference_component(reference, "MSH", 9, 1) == header.message_code
    assert reference_component(reference, "MSH", 9, 2) == header.trigger_event
    assert reference_component(reference, "MSH", 12, 1) == header.version_id
    assert reference_component(reference, "MSH", 18, 1) == header.charset


@st.composite
def delimiter_sets(draw: st.DrawFn) -> tuple[str, str]:
    """(field separator, MSH-2) with 4 or 5 distinct encoding characters."""
    chars = draw(st.lists(st.sampled_from(DELIMITER_POOL), min_size=5, max_size=6, unique=True))
    return chars[0], "".join(chars[1:])


@st.composite
def generated_messages(draw: st.DrawFn) -> tuple[str, dict[int, str]]:
    """An MSH line with arbitrary delimiters and values, and the raw value of each field."""
    field_sep, encoding_chars = draw(delimiter_sets())
    component, repetition = encoding_chars[0], encoding_chars[1]
    value = st.text(
        alphabet=st.characters(
            exclude_characters=field_sep + encoding_chars + "\r\n", exclude_categories=["Cs"]
        ),
        max_size=12,
    )
    fields = {n: draw(value) for n in range(3, 19)}
    fields[9] = component.join(draw(st.lists(value.filter(bool), min_size=1, max_size=3)))
    fields[10] = draw(value.filter(bool))
    fields[12] = component.join(draw(st.lists(value, min_size=1, max_size=2)))
    fields[18] = repetition.join(draw(st.lists(value, min_size=1, max_size=3)))
    line = "MSH" + field_sep + encoding_chars + "".join(field_sep + fields[n] for n in range(3, 19))
    return line, fields


class TestParseHeader:
    def test_reads_every_field(self) -> None:
        """A typical MSH fills every MessageHeader field from its raw text."""
        header = parse_header(
            "MSH|^~\\&|APP^1.2^ISO|FAC|RAPP|RFAC|20240101||ADT^A04^ADT_A01|C123|P^T|2.5.1^USA|||AL|NE||"
            "UNICODE UTF-8~ASCII\rPID|1\r"
        )
        expected = MessageHeader(
            field_sep="|",
            encoding_chars="^~\\&",
            sending_application="APP^1.2^ISO",
            sending_facility="FAC",
            receiving_application="RAPP",
            receiving_facility="RFAC",
            message_type="ADT^A04^ADT_A01",
            message_code="ADT",
            trigger_event="A04",
            control_id="C123",
            processing_id="P^T",
            version_id="2.5.1",
            accept_ack_type="AL",
            app_ack_type="NE",
            charset="UNICODE UTF-8",
        )
        assert expected == header
        assert header.enhanced_mode

    def test_five_char_encoding_characters(self) -> None:
        """A v2.7 truncation character makes MSH-2 five characters, echoed as received."""
        header = parse_header("MSH|^~\\&#|A|B|||||ORU^R01|9|P|2.7")
        assert (header.encoding_chars, header.message_code, header.trigger_event, header.control_id) == (
            "^~\\&#",
            "ORU",
            "R01",
            "9",
        )

    def test_non_default_delimiters(self) -> None:
        """Any distinct delimiters work: the field separator is the character after MSH."""
        header = parse_header("MSH#*@!%#SEND#FAC#####ADT*A01#77#P#2.3\nPID#1")
        assert (
            header.field_sep,
            header.encoding_chars,
            header.sending_application,
            header.message_code,
            header.trigger_event,
            header.control_id,
            header.version_id,
        ) == ("#", "*@!%", "SEND", "ADT", "A01", "77", "2.3")

    def test_short_msh_pads_missing_fields(self) -> None:
        """Fields after the last one sent are empty; original mode when MSH-15/16 are absent."""
        header = parse_header("MSH|^~\\&|||||||ACK|1")
        assert (header.version_id, header.charset, header.processing_id, header.enhanced_mode) == (
            "",
            "",
            "",
            False,
        )

    def test_leading_bom_and_blanks(self) -> None:
        """A BOM or blank lines before MSH are tolerated."""
        assert parse_header("\ufeff\r\n MSH|^~\\&|||||||ADT^A01|X1").control_id == "X1"

    @pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"])
    def test_msh_ends_at_any_terminator(self, terminator: str) -> None:
        """The MSH segment ends at CR, LF or CRLF."""
        header = parse_header(f"MSH|^~\\&|||||||ADT^A01|1|P|2.5{terminator}PID|1|2|3|4|5|6|7|8|9|10")
        assert (header.version_id, header.charset) == ("2.5", "")

    def test_no_msh_first_is_error_100(self) -> None:
        """A first segment other than MSH is a segment sequence error with nothing readable."""
        with pytest.raises(HeaderError) as caught:
            parse_header("PID|1||123\rMSH|^~\\&|||||||ADT^A01|1")
        assert (caught.value.err_code, caught.value.partial, caught.value.field) == (
            ErrorCode.SEGMENT_SEQUENCE_ERROR,
            None,
            None,
        )

    def test_batch_header_first_is_error_100(self) -> None:
        """An FHS/BHS envelope must be split off before the header is read."""
        with pytest.raises(HeaderError) as caught:
            parse_header("FHS|^~\\&\rMSH|^~\\&|||||||ADT^A01|1")
        assert caught.value.err_code == ErrorCode.SEGMENT_SEQUENCE_ERROR

    @pytest.mark.parametrize("text", ["MSH", "MSHA^~\\&|", "MSH ^~\\&", "MSH\r|^~\\&", "MSH\x0b^~\\&"])
    def test_bad_field_separator_is_error_102(self, text: str) -> None:
        """A missing, alphanumeric, blank or control field separator is a data type error on MSH-1."""
        with pytest.raises(HeaderError) as caught:
            parse_header(text)
        assert (caught.value.err_code, caught.value.field, caught.value.partial) == (
            ErrorCode.DATA_TYPE_ERROR,
            1,
            None,
        )

    @pytest.mark.parametrize("encoding_chars", ["^~\\", "^~\\\\&", "^~\\&#!", "^^\\&", "^~ &", "^~a&", ""])
    def test_bad_encoding_characters_are_error_102_with_partial(self, encoding_chars: str) -> None:
        """Short, long, repeated or alphanumeric MSH-2 is error 102; MSH-10 is still read for MSA-2."""
        with pytest.raises(HeaderError) as caught:
            parse_header(f"MSH|{encoding_chars}|A|B|||||ADT^A01|CTRL9|P|2.5")
        error = caught.value
        assert (error.err_code, error.field) == (ErrorCode.DATA_TYPE_ERROR, 2)
        assert error.partial is not None
        assert ("CTRL9", encoding_chars) == (error.partial.control_id, error.partial.encoding_chars)

    def test_empty_message_type_is_error_101(self) -> None:
        """An empty MSH-9.1 is a required field missing, located at MSH-9."""
        with pytest.raises(HeaderError) as caught:
            parse_header("MSH|^~\\&|A|B|||||^A01|C1|P|2.5")
        error = caught.value
        assert (error.err_code, error.field) == (ErrorCode.REQUIRED_FIELD_MISSING, 9)
        assert error.partial is not None and error.partial.control_id == "C1"

    def test_empty_control_id_is_error_101(self) -> None:
        """An empty MSH-10 is a required field missing, located at MSH-10."""
        with pytest.raises(HeaderError) as caught:
            parse_header("MSH|^~\\&|A|B|||||ADT^A01||P|2.5")
        assert (caught.value.err_code, caught.value.field) == (ErrorCode.REQUIRED_FIELD_MISSING, 10)

    def test_ack_error_locates_the_field(self) -> None:
        """HeaderError.ack_error() points ERR-2 at MSH^1^field and carries the generic reason."""
        with pytest.raises(HeaderError) as caught:
            parse_header("MSH|^~\\&|A|B|||||ADT^A01||P|2.5")
        error = caught.value.ack_error()
        assert (error.segment, error.sequence, error.field, error.code) == (
            "MSH",
            1,
            10,
            ErrorCode.REQUIRED_FIELD_MISSING,
        )
        assert error.text == str(caught.value)

    @pytest.mark.parametrize(
        "text",
        [
            "MSH|^~\\&|JOHN DOE|123-45-6789|||||^A01|SECRETID",
            "MSH|^~\\&|JOHN DOE|123-45-6789|||||ADT^A01||SECRETID",
            "MSH|^~^&|JOHN DOE|123-45-6789|||||ADT^A01|SECRETID",
            "MSHXJOHN DOE",
            "JOHN DOE|123-45-6789",
        ],
    )
    def test_error_text_never_contains_values(self, text: str) -> None:
        """Reasons name fields only: no value from the message appears in the error text."""
        with pytest.raises(HeaderError) as caught:
            parse_header(text)
        for value in ("JOHN", "123-45", "SECRETID"):
            assert value not in str(caught.value)

    @given(generated_messages())
    def test_agrees_with_python_hl7(self, generated: tuple[str, dict[int, str]]) -> None:
        """For any delimiters (4 or 5 MSH-2 characters) and values, the header equals python-hl7's reading."""
        line, fields = generated
        header = parse_header(line + "\rPID|1")
        assert_agrees_with_python_hl7(header, line)
        assert fields[10] == header.control_id

    @given(delimiter_sets())
    def test_generated_delimiters_are_valid(self, delimiters: tuple[str, str]) -> None:
        """Every distinct 4/5-character set from the legal pool is accepted."""
        assert valid_delimiters(*delimiters)


class TestOrderingValue:
    TEXT = "MSH|^~\\&|A|B|||||ADT^A01|1|P|2.5\rEVN|A01\nPID|1||123^^^H&1.2&ISO^MR~456||DO\\F\\E^JOHN\r"

    @pytest.mark.parametrize(
        ("spec", "expected"),
        [
            ("PID-3", "123"),
            ("PID-3.1", "123"),
            ("PID-3.4", "H&1.2&ISO"),
            ("PID-3.4.2", "1.2"),
            ("PID-5", "DO\\F\\E"),
            ("PID-5.2", "JOHN"),
            ("PID-5.3", None),
            ("PID-9", None),
            ("ZZZ-1", None),
            ("MSH-9.2", "A01"),
            ("MSH-10", "1"),
            ("MSH-2", "^~\\&"),
            ("EVN-1", "A01"),
        ],
    )
    def test_paths(self, spec: str, expected: str | None) -> None:
        """First repetition, the requested component/subcomponent, escapes as is, None when empty."""
        assert expected == ordering_value(self.TEXT, spec)

    @pytest.mark.parametrize("spec", ["PID", "PID-0", "pid-3", "PID-3.0", "PID-3.1.1.1", "PID-x"])
    def test_invalid_path_raises(self, spec: str) -> None:
        """Malformed paths are rejected (config validation), never silently matching nothing."""
        with pytest.raises(ValueError, match="field path"):
            parse_field_path(spec)

    def test_text_without_msh(self) -> None:
        """Text that does not start with MSH has no delimiters to read: None."""
        assert ordering_value("PID|1||123", "PID-3") is None

    @given(generated_messages(), st.lists(st.text(alphabet="ABC123 ./", max_size=6), min_size=1, max_size=4))
    def test_agrees_with_python_hl7(
        self, generated: tuple[str, dict[int, str]], components: list[str]
    ) -> None:
        """PID-3 components read cheaply equal python-hl7's extract_field."""
        line, _ = generated
        encoding_chars = line[4 : line.index(line[3], 4)]
        if any(c in "ABC123 ./" for c in line[3] + encoding_chars):
            return  # the value alphabet must not collide with the generated delimiters
        field_sep, component = line[3], encoding_chars[0]
        text = f"{line}\rPID{field_sep}1{field_sep}{field_sep}{component.join(components)}{field_sep}X\r"
        reference = hl7.parse(text)
        for number in range(1, len(components) + 1):
            expected = reference_component(reference, "PID", 3, number)
            assert (expected or None) == ordering_value(text, f"PID-3.{number}")


@pytest.mark.corpus
class TestCorpusHeaders:
    def test_every_corpus_header_parses_or_fails_with_its_code(self) -> None:
        """Each corpus MSH parses as python-hl7 reads it, or fails 101/102 where python-hl7 sees the gap."""
        rows = corpus_rows()
        files: dict[str, list[bytes]] = {}
        outcomes: dict[str, int] = {"parsed": 0, "101": 0, "102": 0}
        for row in rows:
            if row["file"] not in files:
                files[row["file"]] = split_messages((CORPUS / row["file"]).read_bytes())
            text = decode(files[row["file"]][int(row["msg_no"]) - 1]).text
            msh_line = text.replace("\n", "\r").split("\r")[0]
            reference = hl7.parse(msh_line + "\rZZZ|1").segment("MSH")
            encoding_chars = str(reference[2])
            try:
                header = parse_header(text)
            except HeaderError as error:
                if not valid_delimiters(str(reference[1]), encoding_chars):
                    assert (error.err_code, error.field) == (ErrorCode.DATA_TYPE_ERROR, 2), row["file"]
                    assert row["nondefault_delims"] == "True", row["file"]
                    outcomes["102"] += 1
                else:
                    assert error.err_code == ErrorCode.REQUIRED_FIELD_MISSING, row["file"]
                    assert str(reference[error.field or 0]).split(encoding_chars[0])[0] == "", row["file"]
                    outcomes["101"] += 1
                continue
            assert_agrees_with_python_hl7(header, msh_line)
            assert header.message_type == row["msh9"], row["file"]
            assert header.version_id == row["msh12"].split("^")[0], row["file"]
            outcomes["parsed"] += 1
        assert sum(outcomes.values()) == len(rows)
        assert outcomes["parsed"] > len(rows) // 2, outcomes
