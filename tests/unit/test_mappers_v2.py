"""The fast parse tree (channels/mappers/v2.py), checked against python-hl7 as the reference."""

from __future__ import annotations

import hl7
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.mappers.escape import Delimiters, escape
from channels.mappers.v2 import Segment, parse_message, split_messages, value
from engine.types import MappingError

MSH = "MSH|^~\\&|SENDAPP|SENDFAC|RCVAPP|RCVFAC|20240101120000-0500||ADT^A01^ADT_A01|CTRL1|P|2.5.1"

# Leaf text: letters, digits, spaces and the delimiters themselves (escaped before joining).
_leaf = st.text(alphabet="abcXYZ019 .-|^~&\\", min_size=1, max_size=6)
_subs = st.lists(_leaf, min_size=1, max_size=3)
_comps = st.lists(_subs, min_size=1, max_size=3)
_reps = st.lists(_comps, min_size=1, max_size=3)
_fields = st.lists(_reps, min_size=1, max_size=6)
_delimiter_sets = st.sampled_from(
    [Delimiters(), Delimiters("*", "!", "@", "#", "$"), Delimiters("|", "^", "~", "\\", "&", "#")]
)


def _build_field(reps: list[list[list[str]]], d: Delimiters) -> str:
    return d.repetition.join(
        d.component.join(d.subcomponent.join(escape(leaf, d) for leaf in comp) for comp in rep) for rep in reps
    )


def _msh(d: Delimiters) -> str:
    enc = d.component + d.repetition + d.escape + d.subcomponent + d.truncation
    fields = ["MSH", enc, "APP", "FAC", "", "", "20240101", "", f"ADT{d.component}A01", "1", "P", "2.5"]
    return d.field.join(fields)


class TestParseMessageAgainstPythonHl7:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(fields=_fields, d=_delimiter_sets)
    def test_every_leaf_matches_python_hl7(self, fields: list[list[list[list[str]]]], d: Delimiters) -> None:
        """Every subcomponent of a generated ZZZ segment decodes to what python-hl7 extracts and what we encoded."""
        # A trailing segment keeps python-hl7's strip() of the whole text away from our leaves.
        zzz = d.field.join(["ZZZ", *(_build_field(f, d) for f in fields)])
        text = _msh(d) + "\r" + zzz + "\rZZE" + d.field + "end\r"
        ours = parse_message(text).first("ZZZ")
        ref = hl7.parse(text)
        assert ours is not None
        for f_no, reps in enumerate(fields, start=1):
            for r_no, comps in enumerate(reps, start=1):
                for c_no, subs in enumerate(comps, start=1):
                    for s_no, leaf in enumerate(subs, start=1):
                        expected = ref[f"ZZZ.F{f_no}.R{r_no}.C{c_no}.S{s_no}"]
                        actual = ours.rep(f_no, r_no).component(c_no, s_no)
                        assert expected == actual == leaf

    @settings(max_examples=30, deadline=None)
    @given(d=_delimiter_sets)
    def test_msh_numbering_matches_python_hl7(self, d: Delimiters) -> None:
        """MSH-1 is the field separator, MSH-2 the encoding characters, MSH-3 the sending application."""
        text = _msh(d) + "\r"
        ours = parse_message(text).msh
        ref = hl7.parse(text)
        assert ours.value(1) == d.field
        assert ours.value(2) == ref["MSH.F2"]
        assert ours.value(3) == ref["MSH.F3"] == "APP"
        assert ours.value(9, 2) == ref["MSH.F9.R1.C2"] == "A01"


class TestParseMessage:
    def test_any_segment_terminator(self) -> None:
        """CR, LF, CRLF and a mix split segments the same way; blank lines and a BOM are ignored."""
        body = ["PID|1||123", "NK1|1|DOE^JANE"]
        variants = [
            "\r".join([MSH, *body]),
            "\n".join([MSH, *body]),
            "\r\n".join([MSH, *body]) + "\r\n",
            "\ufeff" + MSH + "\r\n\r\n" + body[0] + "\n" + body[1] + "\r",
        ]
        for text in variants:
            msg = parse_message(text)
            assert [s.id for s in msg.segments()] == ["MSH", "PID", "NK1"]
            nk1 = msg.first("NK1")
            assert nk1 is not None and nk1.value(2, 2) == "JANE"

    def test_escape_never_creates_a_delimiter(self) -> None:
        """An escaped ^ stays inside its component instead of splitting it."""
        msg = parse_message(MSH + "\rPID|1||A\\S\\B^C\r")
        pid = msg.first("PID")
        assert pid is not None
        assert pid.value(3, 1) == "A^B"
        assert pid.value(3, 2) == "C"

    def test_truncation_character_is_not_a_delimiter(self) -> None:
        """A fifth MSH-2 character (v2.7 truncation) is read but splits nothing."""
        msg = parse_message("MSH|^~\\&#|A|B\rPID|1||12#3\r")
        assert msg.delims.truncation == "#"
        pid = msg.first("PID")
        assert pid is not None and pid.value(3) == "12#3"

    def test_get_paths(self) -> None:
        """seg.get reads field, repetition, component and subcomponent paths."""
        pid = parse_message(MSH + "\rPID|1||A^^^AUTH&1.2&ISO~B\r").first("PID")
        assert pid is not None
        assert pid.get("3") == "A"
        assert pid.get("3.4.2") == "1.2"
        assert pid.get("3(2).1") == "B"
        assert pid.get("9") == ""
        assert value(pid, 3, 4, 3) == "ISO"

    def test_null_reads_as_empty(self) -> None:
        """The HL7 null "" reads as an empty value and is not a present field."""
        pid = parse_message(MSH + '\rPID|1||""\r').first("PID")
        assert pid is not None
        assert pid.value(3) == ""
        assert pid.present_fields() == [1]

    def test_field_accounting_tracks_reads(self) -> None:
        """Fields read through the accessors are used; the others are reported unused."""
        pid = parse_message(MSH + "\rPID|1||123||DOE^J|||F\r").first("PID")
        assert pid is not None
        pid.value(3)
        pid.field(5)
        assert pid.unused_fields() == [1, 8]

    def test_no_msh_is_a_mapping_error(self) -> None:
        """Text without an MSH raises MappingError naming MSH."""
        with pytest.raises(MappingError) as info:
            parse_message("PID|1||123\r")
        assert info.value.segment == "MSH"

    def test_repr_hides_values(self) -> None:
        """Reprs of tree nodes (which end up in tracebacks) never show field values."""
        pid = parse_message(MSH + "\rPID|1||SECRET123\r").first("PID")
        assert pid is not None
        assert "SECRET" not in repr(pid) and "SECRET" not in repr(pid.rep(3))


class TestSplitMessages:
    def test_batch_envelope_is_dropped(self) -> None:
        """FHS/BHS/BTS/FTS are dropped and each MSH starts a message."""
        text = "FHS|^~\\&\nBHS|^~\\&\n" + MSH + "\nPID|1\n" + MSH + "\nPID|2\nBTS|2\nFTS|1\n"
        parts = split_messages(text)
        assert len(parts) == 2
        assert parts[1].startswith("MSH|") and "PID|2" in parts[1] and "BTS" not in parts[1]


# Fields with empty repetitions, HL7 nulls and escapes, so every accessor's shortcut meets them.
_odd_leaf = st.one_of(_leaf, st.just('""'), st.just(""))
_odd_fields = st.lists(
    st.lists(st.lists(st.lists(_odd_leaf, min_size=1, max_size=3), min_size=1, max_size=4), min_size=1, max_size=3),
    min_size=1,
    max_size=5,
)


def _zzz(fields: list[list[list[list[str]]]], d: Delimiters) -> str:
    """A message whose ZZZ segment holds `fields`; a null leaf is written as the null itself."""

    def leaf(text: str) -> str:
        return text if text == '""' else escape(text, d)

    built = [
        d.repetition.join(d.component.join(d.subcomponent.join(leaf(x) for x in comp) for comp in rep) for rep in reps)
        for reps in fields
    ]
    return _msh(d) + "\r" + d.field.join(["ZZZ", *built]) + "\r"


class TestAccessorsAgree:
    """The accessors share split results and take shortcuts (plain text, numbered lists); each
    must read what the general path rep(n, r).component(c, s) reads, in any order."""

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(fields=_odd_fields, d=_delimiter_sets)
    def test_value_field_and_numbered_match_component(self, fields: list[list[list[list[str]]]], d: Delimiters) -> None:
        """value(), field(), numbered() and numbered_subcomponents() agree with component() on fresh segments."""
        text = _zzz(fields, d)

        def fresh() -> Segment:
            seg = parse_message(text).first("ZZZ")
            assert seg is not None
            return seg

        reference = fresh()
        for number in range(0, len(fields) + 3):
            reps = reference.all_repetitions(number)
            assert [r.raw for r in fresh().field(number)] == [r.raw for r in reps if r]
            for component in range(1, 6):
                for sub in range(1, 5):
                    assert fresh().value(number, component, sub) == reference.rep(number).component(component, sub)
            for r_no in range(1, len(reps) + 2):
                rep = fresh().rep(number, r_no)
                general = reference.rep(number, r_no)
                numbered = rep.numbered(5)
                assert numbered[0] == "" and len(numbered) == 6
                for component in range(1, 6):
                    assert numbered[component] == general.component(component)
                    subs = rep.numbered_subcomponents(component, 3)
                    assert subs == ["", *(general.component(component, sub) for sub in (1, 2, 3))]

    def test_absent_fields_read_as_empty_and_are_not_reported(self) -> None:
        """Reading fields a segment does not have gives empty values and changes no accounting."""
        pid = parse_message(MSH + "\rPID|1||123\r").first("PID")
        assert pid is not None
        assert (pid.value(45), pid.field(45), pid.all_repetitions(0), pid.value(-1)) == ("", [], [], "")
        assert not pid.rep(45) and pid.rep(45).component(1) == ""
        assert pid.unused_fields() == [1, 3]
        pid.value(3)
        assert pid.unused_fields() == [1]

    def test_repeated_reads_share_the_split(self) -> None:
        """A field is split once: field(), rep() and all_repetitions() hand out the same objects."""
        pid = parse_message(MSH + "\rPID|1||A~~B\r").first("PID")
        assert pid is not None
        every = pid.all_repetitions(3)
        assert [r.raw for r in every] == ["A", "", "B"]
        assert pid.field(3) == [every[0], every[2]] and pid.field(3) is pid.field(3)
        assert pid.rep(3, 3) is every[2]
