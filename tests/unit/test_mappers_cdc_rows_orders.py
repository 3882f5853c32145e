"""IG rows added for the remaining CDC pairs: ORC-22..24 on the requester, OBR-15 (SPS) on
the Specimen, SFT → Device + MessageHeader.source (channels/mappers/segments/orders.py,
software.py)."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.bundle import Bundle as BundleR5
from fhir.resources.R4B.bundle import Bundle as BundleR4B

from channels.mappers.convert import convert_message
from channels.mappers.options import MappingOptions

_MSH = "MSH|^~\\&|LAB^1.2.3^ISO|FAC^9.8.7^ISO|EHR|FAC|20240102030405+0100||ORU^R01^ORU_R01|MSG1|P|2.5.1"
_PID = "PID|1||MR1^^^HOSP^MR||DOE^JANE"
_SFT = "SFT|Acme Labs|4.2|LabWare|B123|lab system|20230101120000+0100"


def _segment(segment_id: str, fields: dict[int, str]) -> str:
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join((segment_id, *values))


def _convert(*segments: str, version: str = "R4B") -> dict[str, Any]:
    text = "\r".join(segments) + "\r"
    bundle = convert_message(text, MappingOptions(fhir_version=version)).bundle  # type: ignore[arg-type]
    (BundleR4B if version == "R4B" else BundleR5).model_validate(bundle)
    return bundle


def _unmapped(*segments: str) -> list[tuple[str, str]]:
    text = "\r".join(segments) + "\r"
    return list(convert_message(text, MappingOptions(fhir_version="R4B")).unmapped)


def _all(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _by_ref(bundle: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == ref["reference"])


_ORC = _segment(
    "ORC",
    {
        1: "NW",
        2: "P1^EHR",
        12: "1234^SMITH^JOHN",
        21: "General Hospital^^^^^^XX^^^GH1",
        22: "1 Main St^^Springfield^IL^62701",
        23: "^WPN^PH^^1^217^5550100",
        24: "2 Oak Ave^^Springfield^IL^62702",
    },
)


class TestOrderingFacilityRows:
    def test_facility_address_and_phone_on_the_organization(self) -> None:
        """ORC-22 → Organization.address and ORC-23 → Organization.telecom of the ORC-21 requester."""
        bundle = _convert(_MSH, _PID, _ORC, "OBR|1|P1^EHR||2345-7^Glucose^LN")
        role = _by_ref(bundle, _all(bundle, "ServiceRequest")[0]["requester"])
        organization = _by_ref(bundle, role["organization"])
        assert organization["address"][0]["line"] == ["1 Main St"]
        assert organization["telecom"][0]["value"] == "+1 217 5550100"

    def test_provider_address_on_the_practitioner(self) -> None:
        """ORC-24 → Practitioner.address of the ORC-12 ordering provider."""
        bundle = _convert(_MSH, _PID, _ORC, "OBR|1|P1^EHR||2345-7^Glucose^LN", version="R5")
        role = _by_ref(bundle, _all(bundle, "ServiceRequest")[0]["requester"])
        assert _by_ref(bundle, role["practitioner"])["address"][0]["postalCode"] == "62702"

    def test_facility_address_without_facility_is_unmapped(self) -> None:
        """ORC-22 without ORC-21 has no Organization to go on (org-1): reported unmapped."""
        orc = _segment("ORC", {1: "NW", 2: "P1^EHR", 12: "1234^SMITH", 22: "1 Main St^^Springfield"})
        assert ("ORC", "22") in _unmapped(_MSH, _PID, orc, "OBR|1|P1^EHR||2345-7^Glucose^LN")


class TestSpecimenSource:
    @pytest.mark.parametrize("version", ["R4B", "R5"])
    def test_sps_components_on_the_specimen(self, version: str) -> None:
        """OBR-15 SPS.1 type, SPS.2 additive, SPS.3 note, SPS.4 body site, SPS.6 condition."""
        obr = _segment(
            "OBR",
            {
                1: "1",
                4: "2345-7^Glucose^LN",
                15: "BLD&Whole blood&HL70487^EDTA&EDTA&HL70371^drawn cold^LA&Left arm&HL70163^^FRZ&Frozen&HL70493",
                39: "C1^Collector note",
            },
        )
        specimen = _all(_convert(_MSH, _PID, obr, version=version), "Specimen")[0]
        assert specimen["type"]["coding"][0]["code"] == "BLD"
        site = specimen["collection"]["bodySite"]
        assert (site if version == "R4B" else site["concept"])["coding"][0]["code"] == "LA"  # R5: CodeableReference
        assert specimen["condition"][0]["coding"][0]["code"] == "FRZ"
        assert [n["text"] for n in specimen["note"]] == ["drawn cold", "C1^Collector note"]
        if version == "R4B":  # R5 drops the container (its additive lives on a Device there)
            assert specimen["container"][0]["additiveCodeableConcept"]["coding"][0]["code"] == "EDTA"


class TestSoftwareSegment:
    def test_sft_gives_a_device_and_the_header_software(self) -> None:
        """SFT-3/SFT-2 → MessageHeader.source.software/version; SFT → Device (IG SFT[Device])."""
        bundle = _convert(_MSH, _SFT, _PID)
        source = _all(bundle, "MessageHeader")[0]["source"]
        assert (source["software"], source["version"]) == ("LabWare", "4.2")
        device = _all(bundle, "Device")[0]
        assert device["manufacturer"] == "Acme Labs"
        assert device["deviceName"] == [{"name": "LabWare", "type": "manufacturer-name"}]
        assert (device["modelNumber"], device["note"]) == ("B123", [{"text": "lab system"}])
        assert device["version"][0]["value"] == "4.2"

    def test_device_is_an_entity_of_the_source_provenance(self) -> None:
        """IG ORU_R01: SFT → Provenance[1].entity.what(Device)."""
        bundle = _convert(_MSH, _SFT, _PID)
        device_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Device")
        provenance = _all(bundle, "Provenance")[0]
        assert {"role": "source", "what": {"reference": device_url}} in provenance["entity"]

    def test_r5_device_names_and_install_date(self) -> None:
        """R5: deviceName → name (registered-name); the install date is version.installDate."""
        device = _all(_convert(_MSH, _SFT, _PID, version="R5"), "Device")[0]
        assert device["name"] == [{"value": "LabWare", "type": "registered-name"}]
        assert device["version"][0]["installDate"].startswith("2023-01-01T12:00:00")

    def test_vendor_with_identifier_is_not_a_manufacturer(self) -> None:
        """SFT-1 with XON.10: IG row gives no manufacturer (an R6 Reference); SFT-1 is reported unmapped."""
        sft = "SFT|Acme^^^^^^XX^^^ACME1|4.2|LabWare"
        assert "manufacturer" not in _all(_convert(_MSH, sft, _PID), "Device")[0]
        assert ("SFT", "1") in _unmapped(_MSH, sft, _PID)
