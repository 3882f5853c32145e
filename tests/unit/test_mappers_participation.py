"""PRT in an observation group (channels/mappers/segments/participation.py): IG PRT[Device],
PRT[PractitionerRole] through the ORU_R01 row OBSERVATION.PRT."""

from __future__ import annotations

from typing import Any

from channels.mappers.segments.participation import is_udi_form
from tests.unit.test_mappers_helpers import convert_both, one, resources, segment

_MSH = "MSH|^~\\&|LAB|FAC|EHR|FAC|20240102030405+0100||ORU^R01^ORU_R01|MSG1|P|2.5.1"
_OBX = "OBX|1|ST|1234-5^Test^LN||result||||||F"


def _convert(*segments: str) -> dict[str, Any]:
    results = convert_both("\r".join((_MSH, "PID|1||P1^^^H^MR", "OBR|1|ORD1", _OBX, *segments)))
    return results["R4B"].bundle | {"unmapped": results["R4B"].unmapped, "r5": results["R5"].bundle}


class TestUdiForm:
    def test_issuing_agency_prefixes(self) -> None:
        """GS1 "(01)", HIBCC "+" and ICCBBA "=" are UDI forms; a plain identifier is not."""
        assert [is_udi_form(t) for t in ("(01)00844588003288", "+H123", "=/A9999", "CDC_301")] == [
            True,
            True,
            True,
            False,
        ]


class TestPrtDevice:
    def test_plain_prt10_is_an_identifier_and_udi_fields_map(self) -> None:
        """PRT-10 not in a UDI form → identifier; PRT-16 → udiCarrier; PRT-17..22 → dates, lot, serial, type."""
        prt = segment(
            "PRT",
            {
                2: "A",
                10: "DEV1^NS^1.2.3^ISO",
                16: "(01)00844588003288",
                17: "20210501102531-0400",
                18: "20250501",
                19: "LOT1",
                20: "SER2",
                21: "DON3",
                22: "TYPE^Device type^L",
            },
        )
        bundle = _convert(prt)
        device = one(bundle, "Device")
        assert device["identifier"] == [{"system": "urn:oid:1.2.3", "value": "DEV1"}]
        assert device["udiCarrier"] == [{"deviceIdentifier": "(01)00844588003288"}]
        assert (device["manufactureDate"], device["expirationDate"]) == ("2021-05-01T10:25:31-04:00", "2025-05-01")
        assert (device["lotNumber"], device["serialNumber"], device["distinctIdentifier"]) == ("LOT1", "SER2", "DON3")
        assert device["type"]["coding"][0]["code"] == "TYPE"
        assert one(bundle, "Observation")["device"]["reference"].startswith("urn:uuid:")

    def test_udi_prt10_is_a_udi_carrier(self) -> None:
        """PRT-10 in a UDI form → udiCarrier; in R5 (no issuer) it is an identifier."""
        bundle = _convert(segment("PRT", {10: "+H123ABC"}))
        assert one(bundle, "Device")["udiCarrier"] == [{"deviceIdentifier": "+H123ABC"}]
        assert {"value": "+H123ABC"} in one(bundle["r5"], "Device")["identifier"]

    def test_prt_outside_observation_group_is_reported(self) -> None:
        """A PRT after PID (patient participation) makes nothing and its fields are reported unmapped."""
        text = "\r".join((_MSH, "PID|1||P1^^^H^MR", segment("PRT", {10: "DEV1"})))
        result = convert_both(text)["R4B"]
        assert resources(result.bundle, "Device") == []
        assert ("PRT", "10") in {(s, str(f)) for s, f in result.unmapped}


class TestPrtPractitionerRole:
    def test_prt5_is_the_observation_performer(self) -> None:
        """PRT-5 → Practitioner in a PractitionerRole (PRT-4 → code) referenced from Observation.performer."""
        bundle = _convert(segment("PRT", {4: "RO^Responsible observer^HL70443", 5: "123^SMITH^JO"}))
        practitioner = one(bundle, "Practitioner")
        assert practitioner["name"][0]["family"] == "SMITH"
        role = one(bundle, "PractitionerRole")
        assert role["code"][0]["coding"][0]["code"] == "RO"
        assert one(bundle, "Observation")["performer"] == [{"reference": _full_url(bundle, role)}]


def _full_url(bundle: dict[str, Any], resource: dict[str, Any]) -> str:
    return next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is resource)
