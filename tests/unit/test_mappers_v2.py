"""The fast parse tree (channels/mappers/v2.py), checked against python-hl7 as the reference."""

from __future__ import annotations

import hl7
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.mappers.escape import Delimiters, escape
from channels.mappers.v2 import parse_message, split_messages, value
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
