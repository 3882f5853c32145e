"""IG rows that the remaining CDC ReportStream pairs exercise (issue 3): CQ units, MSG display,
MSH-3 source by HD.3, SPM-32, OBR-32 results interpreter, OBR-16 with ORC-21, MSH-22/23."""

from __future__ import annotations

from typing import Any

from channels.mappers.datatypes import cq_to_quantity
from tests.unit.test_mappers_helpers import convert_both, one, rep, resources, settings

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _msh(fields: str = "LAB^1.2.3^ISO|FAC", kind: str = "ORU^R01^ORU_R01", tail: str = "") -> str:
    return f"MSH|^~\\&|{fields}|||20240102030405+0100||{kind}|M1|P|2.5.1{tail}"


def _oru(*segments: str, msh: str | None = None) -> dict[str, Any]:
    text = "\r".join((msh or _msh(), "PID|1||MR1^^^HOSP^MR||DOE^JANE", *segments)) + "\r"
    results = convert_both(text)  # validates R4B and R5
    return results["R4B"].bundle


def _target(bundle: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == reference["reference"])


class TestCqUnit:
    def test_original_text_is_the_unit(self) -> None:
        """IG CQ.2 → unit through CWE[string]: CWE.9 wins over CWE.2; code/system stay from CWE.1/3."""
        quantity = cq_to_quantity(rep("2^mL&millilitre&UCUM&&&&&&Two millilitres"), settings())
        assert quantity == {
            "value": 2,
            "unit": "Two millilitres",
            "system": "http://unitsofmeasure.org",
            "code": "mL",
        }

    def test_text_then_identifier(self) -> None:
        """Without CWE.9 the unit is CWE.2, without CWE.2 it is CWE.1."""
        assert cq_to_quantity(rep("2^mL&millilitre"))["unit"] == "millilitre"  # type: ignore[index]
        assert cq_to_quantity(rep("2^mL"))["unit"] == "mL"  # type: ignore[index]


class TestEventCodingDisplay:
    def test_display_without_trigger(self) -> None:
        """IG MSG[Coding]: display MSG.1^MSG.2^MSG.3 even when MSG.2 is empty (code from table 0076)."""
        header = one(_oru("OBR|1||F1|GLU^Glucose", msh=_msh(kind="ORU^^ORU_R01")), "MessageHeader")
        assert header["eventCoding"]["display"] == "ORU^^ORU_R01"
        assert header["eventCoding"]["code"] == "ORU"


class TestSourceByUniversalIdType:
    def test_uri_gets_the_urn_prefix(self) -> None:
        """IG HD[MessageHeader.source-endpoint]: HD.3 URI → "urn:uri:"+HD.2."""
        header = one(_oru("OBR|1||F1|GLU", msh=_msh("LAB^lab-app^URI|FAC")), "MessageHeader")
        assert header["source"]["endpoint"] == "urn:uri:lab-app"

    def test_absolute_uri_kept(self) -> None:
        """An HD.2 that is already an absolute URI is not prefixed a second time."""
        header = one(_oru("OBR|1||F1|GLU", msh=_msh("LAB^https://lab.example/app^URI|FAC")), "MessageHeader")
        assert header["source"]["endpoint"] == "https://lab.example/app"

    def test_other_type_goes_to_the_name(self) -> None:
        """IG HD.2 row for other HD.3 (CLIA): name HD.1+" - "+HD.3+":"+HD.2, endpoint data-absent."""
        header = one(_oru("OBR|1||F1|GLU", msh=_msh("LAB^05D0000000^CLIA|FAC")), "MessageHeader")
        assert header["source"]["name"] == "LAB - CLIA:05D0000000"
        assert "endpoint" not in header["source"]


class TestSpecimenShipmentId:
    def test_spm32_typed_ship(self) -> None:
        """IG SPM-32 → Specimen.identifier[3] typed SHIP (v2-0203) through EI."""
        spm = "SPM|1|S1&LAB" + "|" * 30 + "SH9^CARRIER"
        specimens = resources(_oru("OBR|1||F1|GLU", spm), "Specimen")
        shipment = [i for s in specimens for i in s.get("identifier", []) if i.get("value") == "SH9"]
        assert [i["type"]["coding"][0]["code"] for i in shipment] == ["SHIP"]
        assert shipment[0]["type"]["coding"][0]["system"] == V2_0203


class TestResultsInterpreter:
    def test_obr32_is_a_practitioner_role(self) -> None:
        """IG OBR-32 → resultsInterpreter(PractitionerRole) via NDL: NDL.1 CNN practitioner
        (CNN.7 degree as suffix[2]), NDL.2/3 period."""
        obr = "OBR|1||F1|GLU" + "|" * 28 + "7&DOE&JO&&JR&DR&MD^20240101000000+0100^20240201000000+0100"
        bundle = _oru(obr)
        report = one(bundle, "DiagnosticReport")
        role = _target(bundle, report["resultsInterpreter"][0])
        assert role["resourceType"] == "PractitionerRole"
        assert role["period"] == {"start": "2024-01-01T00:00:00+01:00", "end": "2024-02-01T00:00:00+01:00"}
        practitioner = _target(bundle, role["practitioner"])
        assert practitioner["name"] == [{"family": "DOE", "given": ["JO"], "prefix": ["DR"], "suffix": ["JR", "MD"]}]


class TestOrderingProviderWithFacility:
    def test_obr16_joins_orc21(self) -> None:
        """IG ORC-21 → requester(PractitionerRole.organization); OBR-16 stands in for ORC-12 as
        the role's practitioner."""
        orc = "ORC|RE" + "|" * 20 + "Lab Org^^^^^^^^^L9"
        obr = "OBR|1||F1|GLU" + "|" * 12 + "16^ORDER^OLGA"
        bundle = _oru(orc, obr)
        request = one(bundle, "ServiceRequest")
        role = _target(bundle, request["requester"])
        assert role["resourceType"] == "PractitionerRole"
        assert _target(bundle, role["organization"])["name"] == "Lab Org"
        assert _target(bundle, role["practitioner"])["name"][0]["family"] == "ORDER"

    def test_obr16_alone_is_the_practitioner(self) -> None:
        """IG OBR-16 → requester(Practitioner) when neither ORC-12 nor ORC-21 is valued."""
        bundle = _oru("ORC|RE", "OBR|1||F1|GLU" + "|" * 12 + "16^ORDER^OLGA")
        assert _target(bundle, one(bundle, "ServiceRequest")["requester"])["resourceType"] == "Practitioner"


class TestResponsibleOrganizationName:
    def test_msh22_names_a_shared_organization(self) -> None:
        """MSH-22 and MSH-23 with one identifier are one Organization; MSH-22 (first) names it."""
        xon = "^^^^^A&1.2.9&ISO^XX^^^ORG1"
        tail = f"||||||||||Sending Org{xon}|Receiving Org{xon}"
        bundle = _oru("OBR|1||F1|GLU", msh=_msh(tail=tail))
        names = [o.get("name") for o in resources(bundle, "Organization")]
        assert "Sending Org" in names and "Receiving Org" not in names
