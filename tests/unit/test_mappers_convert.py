"""convert_message (channels/mappers/convert.py): determinism, field accounting, options, robustness."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.mappers import messages
from channels.mappers.convert import convert_message
from channels.mappers.messages import MappingContext
from channels.mappers.options import MappingOptions
from channels.mappers.v2 import Segment
from channels.mappers.validate import validate_bundle
from engine.types import MappingError
from tests.unit.test_mappers_helpers import MSH_A01, resources, segment

MESSAGE = "\r".join(
    [
        MSH_A01,
        "EVN|A01|20240101120000-0500",
        "PID|1||M1^^^HOSP||DOE^JANE||19800101|F",
        "ZPI|1|CUSTOM",
        "IN1|1|PLAN|||||||||||||||SEL||||||||||||||||||||POL1",
    ]
)


class TestDeterminism:
    def test_same_message_same_bundle_whatever_the_terminator(self) -> None:
        """CR, LF and CRLF versions of one message give byte-identical Bundles."""
        options = MappingOptions()
        outputs = {
            json.dumps(convert_message(MESSAGE.replace("\r", sep) + sep, options).bundle, sort_keys=True)
            for sep in ("\r", "\n", "\r\n")
        }
        assert len(outputs) == 1

    def test_other_message_other_full_urls(self) -> None:
        """A different message gives different fullUrls for its resources."""
        first = convert_message(MESSAGE, MappingOptions()).bundle
        second = convert_message(MESSAGE.replace("CTRL1", "CTRL2"), MappingOptions()).bundle
        assert {e["fullUrl"] for e in first["entry"]}.isdisjoint({e["fullUrl"] for e in second["entry"]})


class TestFieldAccounting:
    def test_unmapped_segments_and_fields(self) -> None:
        """Segments without a map are (SEG, "*"); present fields no mapper read are (SEG, n); never values."""
        extra_pid = segment("PID", {1: "2", 3: "M2", 5: "DOE^JOHN", 31: "Y"})  # PID-31 has no IG target
        result = convert_message(MESSAGE + "\r" + extra_pid, MappingOptions())
        assert ("ZPI", "*") in result.unmapped
        assert ("MSH", "12") in result.unmapped
        assert ("PID", "31") in result.unmapped
        assert ("PID", "3") not in result.unmapped
        for segment_id, field in result.unmapped:
            assert len(segment_id) == 3 and (field in ("*", "missing") or field.isdigit())
        assert len(result.unmapped) == len(set(result.unmapped))

    def test_segments_option_limits_the_maps(self) -> None:
        """segments: [MSH, PID] maps no Coverage and reports IN1 and EVN as unmapped segments."""
        result = convert_message(MESSAGE, MappingOptions(segments=["MSH", "PID"]))
        assert resources(result.bundle, "Coverage") == []
        assert ("IN1", "*") in result.unmapped and ("EVN", "*") in result.unmapped


class TestErrors:
    def test_several_messages_in_one_text(self) -> None:
        """Two MSH segments in one text raise MappingError naming MSH."""
        with pytest.raises(MappingError) as info:
            convert_message(MESSAGE + "\r" + MESSAGE, MappingOptions())
        assert info.value.segment == "MSH"

    def test_missing_pid_is_reported_not_refused(self) -> None:
        """An ADT A01 without PID maps its PV1 (no subject) and reports (PID, "missing")."""
        result = convert_message(MSH_A01 + "\rEVN|A01\rPV1|1|I", MappingOptions())
        encounters = resources(result.bundle, "Encounter")
        assert len(encounters) == 1 and "subject" not in encounters[0]
        assert resources(result.bundle, "Patient") == []
        assert ("PID", "missing") in result.unmapped
        validate_bundle(result.bundle, "R4B")

    def test_segment_needing_the_missing_pid_raises(self) -> None:
        """An NK1 in an ADT A01 without PID raises MappingError naming NK1 (its Patient is required)."""
        with pytest.raises(MappingError) as info:
            convert_message(MSH_A01 + "\rEVN|A01\rNK1|1|DOE^JOHN|SPO", MappingOptions())
        assert info.value.segment == "NK1"

    def test_mapper_bug_becomes_mapping_error_without_data(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An unexpected exception in a mapper surfaces as MappingError naming the segment, not the value."""

        def broken(seg: Segment, ctx: MappingContext) -> None:
            raise KeyError(seg.value(1))

        # Registered for this test only: the registry is process-wide.
        monkeypatch.setitem(messages._REGISTRY, "ZBG", messages.Registration("ZBG", broken, "test-only"))
        with pytest.raises(MappingError) as info:
            convert_message(MESSAGE + "\rZBG|SECRET-VALUE", MappingOptions())
        assert info.value.segment == "ZBG"
        assert "SECRET" not in str(info.value) and "KeyError" in str(info.value)


_SEGMENT_IDS = st.sampled_from(["PID", "PD1", "NK1", "IN1", "IN2", "GT1", "MRG", "EVN", "ZZZ"])
_FIELD_TEXT = st.text(alphabet='AZ09 -.+^~&\\|#"XHN', max_size=12)


def _segment_line(seg_id: str, fields: list[str]) -> str:
    return "|".join([seg_id, *fields])


class TestRobustness:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(tail=st.text(max_size=300))
    def test_arbitrary_text_after_msh_raises_only_mapping_error(self, tail: str) -> None:
        """Any text after a valid MSH converts or raises MappingError, never another exception or a bug."""
        try:
            convert_message(MSH_A01 + "\r" + tail, MappingOptions())
        except MappingError as exc:
            assert not str(exc).startswith("unexpected")

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        body=st.lists(
            st.tuples(_SEGMENT_IDS, st.lists(_FIELD_TEXT, max_size=50)),
            max_size=8,
        ),
        version=st.sampled_from(["R4B", "R5"]),
    )
    def test_random_segments_give_valid_bundles_or_mapping_errors(
        self, body: list[tuple[str, list[str]]], version: str
    ) -> None:
        """Random field content in our segments yields a Bundle valid for fhir.resources, or a MappingError."""
        lines = [MSH_A01.replace("ADT^A01^ADT_A01", "ADT^A08"), "PID|1||M1||DOE^J"]
        lines += [_segment_line(seg_id, fields) for seg_id, fields in body]
        try:
            result = convert_message("\r".join(lines), MappingOptions(fhir_version=version))  # type: ignore[arg-type]
        except MappingError as exc:
            assert not str(exc).startswith("unexpected"), str(exc)
            return
        validate_bundle(result.bundle, version)  # type: ignore[arg-type]
