"""Which OBRs of one message are one order, SPECIMEN_OBSERVATION focus, XAD padding and
HD.2-only assigning authorities (channels/mappers/segments/orders.py, datatypes.py)."""

from __future__ import annotations

from typing import Any

from channels.mappers.datatypes import cx_to_identifier, xad_to_address
from tests.unit.test_mappers_helpers import convert_both, rep, resources, settings

_MSH = "MSH|^~\\&|LAB|FAC|EHR|FAC|20240102030405+0100||ORU^R01^ORU_R01|MSG1|P|2.5.1"
_PID = "PID|1||MR1^^^HOSP&1.2.3&ISO^MR||DOE^JANE"
_ORC = "ORC|RE|P1^LAB^1.2.3.4^ISO|F1^LAB^1.2.3.5^ISO"


def _obr(set_id: int, placer: str, filler: str, code: str) -> str:
    return f"OBR|{set_id}|{placer}|{filler}|{code}^Panel {code}^LN|||20240102030405+0100"


def _oru(*segments: str) -> dict[str, Any]:
    text = "\r".join((_MSH, _PID, *segments)) + "\r"
    results = convert_both(text)
    return results["R4B"].bundle


def _codes(bundle: dict[str, Any], resource_type: str) -> list[str]:
    return sorted(r["code"]["coding"][0]["code"] for r in resources(bundle, resource_type))


class TestOrderIdentity:
    def test_obrs_sharing_a_placer_number_with_own_filler_numbers_stay_apart(self) -> None:
        """Two OBRs with one placer number (OBR-2) but two filler numbers (OBR-3) give two orders and two reports."""
        bundle = _oru(
            _ORC,
            _obr(1, "P1^LAB^1.2.3.4^ISO", "F1^LAB^1.2.3.5^ISO", "1-1"),
            "OBX|1|ST|X^Y^LN||one",
            _obr(2, "P1^LAB^1.2.3.4^ISO", "F2^LAB^1.2.3.5^ISO", "2-2"),
            "OBX|1|ST|X^Y^LN||two",
        )
        assert _codes(bundle, "ServiceRequest") == ["1-1", "2-2"]
        assert _codes(bundle, "DiagnosticReport") == ["1-1", "2-2"]

    def test_panels_sharing_a_placer_number_without_filler_numbers_stay_apart(self) -> None:
        """Result OBRs with one placer number, no filler number and different OBR-4 codes are separate orders."""
        bundle = _oru(
            "ORC|RE|55^FormNumber",
            _obr(1, "55^FormNumber", "", "1-1"),
            _obr(2, "55^FormNumber", "", "2-2"),
            _obr(3, "55^FormNumber", "", "3-3"),
        )
        assert _codes(bundle, "ServiceRequest") == ["1-1", "2-2", "3-3"]
        assert _codes(bundle, "DiagnosticReport") == ["1-1", "2-2", "3-3"]

    def test_same_order_sent_twice_is_still_one_entry(self) -> None:
        """Two OBRs with the same placer number and the same code remain one ServiceRequest."""
        bundle = _oru(
            "ORC|RE|55^FormNumber",
            _obr(1, "55^FormNumber", "", "1-1"),
            _obr(2, "55^FormNumber", "", "1-1"),
        )
        assert _codes(bundle, "ServiceRequest") == ["1-1"]


class TestSpecimenObservation:
    def test_obx_after_spm_has_the_specimen_as_focus(self) -> None:
        """IG ORU_R01 SPECIMEN_OBSERVATION.OBX: focus is the SPM's Specimen; the OBR's own OBX has none."""
        bundle = _oru(
            _ORC,
            _obr(1, "P1^LAB^1.2.3.4^ISO", "F1^LAB^1.2.3.5^ISO", "1-1"),
            "OBX|1|ST|R^Result^LN||result",
            "SPM|1|S1&LAB&1.2.3.6&ISO||119297000^Blood^SCT",
            "OBX|1|NM|21612-7^Age^LN||28|a^year^UCUM",
        )
        (specimen,) = [
            e for e in bundle["entry"] if e["resource"]["resourceType"] == "Specimen" and "type" in e["resource"]
        ]
        by_code = {r["code"]["coding"][0]["code"]: r for r in resources(bundle, "Observation")}
        assert by_code["21612-7"]["focus"] == [{"reference": specimen["fullUrl"]}]
        assert "focus" not in by_code["R"]


class TestDatatypeEdges:
    def test_address_padding_is_trimmed(self) -> None:
        """XAD components lose the sender's leading and trailing blanks; blank-only lines go."""
        address = xad_to_address(rep(" 123 MAIN ST.^   ^SAN DIEGO ^CA^99999"), settings())
        assert address == {"line": ["123 MAIN ST."], "city": "SAN DIEGO", "state": "CA", "postalCode": "99999"}

    def test_universal_id_alone_names_the_assigner(self) -> None:
        """CX.4 with only HD.2 (no HD.1 or HD.3) keeps the authority as assigner.identifier (IG HD.2 row)."""
        identifier = cx_to_identifier(rep("12345678^^^&NPI^MR"), settings())
        assert identifier is not None
        assert identifier["assigner"] == {"identifier": {"value": "NPI"}}
        assert "system" not in identifier


class TestObservationIdentity:
    def test_obx_sharing_an_identifier_with_other_codes_stay_apart(self) -> None:
        """Two OBX with one OBX-21 identifier but different OBX-3 codes give two Observations (no silent merge)."""
        bundle = _oru(
            _ORC,
            _obr(1, "P1^LAB^1.2.3.4^ISO", "F1^LAB^1.2.3.5^ISO", "1-1"),
            "OBX|1|ST|A^Flu A^LN||neg" + "|" * 16 + "entity id",
            "OBX|2|ST|B^Flu B^LN||pos" + "|" * 16 + "entity id",
        )
        assert _codes(bundle, "Observation") == ["A", "B"]


class TestDescribedLocation:
    def test_pl_with_only_a_description_still_makes_a_location(self) -> None:
        """PV1-11 holding only PL.9 gives a Location with that description (IG PL.9), referenced as temporary."""
        msh = "MSH|^~\\&|A|B|C|D|20240101120000-0500||ADT^A01^ADT_A01|1|P|2.5.1"
        text = "\r".join((msh, _PID, "PV1|1|I|W^1^2^HOSP" + "|" * 8 + "^^^^^^^^Its Temporary")) + "\r"
        bundle = convert_both(text)["R5"].bundle
        (described,) = [e for e in bundle["entry"] if e["resource"].get("description") == "Its Temporary"]
        encounter = resources(bundle, "Encounter")[0]
        assert described["fullUrl"] in {item["location"]["reference"] for item in encounter["location"]}
