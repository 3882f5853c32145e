"""ORC/OBR/OBX/NTE/SPM/RXA/RXR/SCH/AI* maps (channels/mappers/segments/orders.py).

Each HL7 field below is commented with its FHIR target (IG ORC[ServiceRequest],
OBR[ServiceRequest], OBR[DiagnosticReport], OBX[Observation], NTE[Observation],
SPM[Specimen], RXA[Immunization], SCH[Appointment] ...).
"""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.bundle import Bundle as BundleR5
from fhir.resources.R4B.bundle import Bundle as BundleR4B

from channels.mappers.convert import convert_message
from channels.mappers.options import MappingOptions
from tests.unit.test_mappers_helpers import convert_both, resources, segment

UCUM = "http://unitsofmeasure.org"


def _segment(segment_id: str, fields: dict[int, str]) -> str:
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join((segment_id, *values))


def _message(kind: str, *segments: str, pid: bool = True) -> str:
    header = f"MSH|^~\\&|LAB|FAC|EHR|FAC|20240102030405+0100||{kind}|MSG1|P|2.5.1"
    patient = ["PID|1||MR1^^^HOSP^MR||DOE^JANE"] if pid else []
    return "\r".join((header, *patient, *segments)) + "\r"


def _convert(text: str, version: str = "R4B") -> dict[str, Any]:
    bundle = convert_message(text, MappingOptions(fhir_version=version)).bundle  # type: ignore[arg-type]
    (BundleR4B if version == "R4B" else BundleR5).model_validate(bundle)
    return bundle


def _all(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _url_of(bundle: dict[str, Any], resource: dict[str, Any]) -> str:
    return next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is resource)


def _by_url(bundle: dict[str, Any], url: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == url)


def _obx(value_type: str, value: str, units: str = "", **extra: str) -> str:
    fields = {1: "1", 2: value_type, 3: "2345-7^Glucose^LN", 5: value, 11: "F"}
    if units:
        fields[6] = units
    fields.update({int(k[1:]): v for k, v in extra.items()})
    return _segment("OBX", fields)


def _observation(value_type: str, value: str, units: str = "", version: str = "R4B", **extra: str) -> dict[str, Any]:
    bundle = _convert(
        _message("ORU^R01^ORU_R01", "OBR|1||F1|GLU^Glucose", _obx(value_type, value, units, **extra)), version
    )
    (observation,) = _all(bundle, "Observation")
    return observation


ORC = _segment(
    "ORC",
    {
        1: "NW",  # ORC-1 → status (when ORC-5 empty), intent order
        2: "P100^EHR",  # ORC-2 → identifier PLAC
        3: "F200^LAB",  # ORC-3 → identifier FILL
        4: "G1&EHR",  # ORC-4 (EIP.1) → requisition (PGN)
        5: "IP",  # ORC-5 → status active
        9: "20240102030000+0100",  # ORC-9 → authoredOn
        12: "55^ORDER^OLGA",  # ORC-12 → requester
    },
)
OBR = _segment(
    "OBR",
    {
        1: "1",
        2: "P100^EHR",  # OBR-2 → (ORC-2 wins) / DiagnosticReport.identifier
        3: "F200^LAB",  # OBR-3
        4: "24331-1^Lipid panel^LN",  # OBR-4 → code
        7: "20240102080000+0100",  # OBR-7 → DiagnosticReport.effectiveDateTime, Specimen.collection
        22: "20240102100000+0100",  # OBR-22 → DiagnosticReport.issued
        24: "CH",  # OBR-24 → DiagnosticReport.category
        25: "F",  # OBR-25 → DiagnosticReport.status final
    },
)


class TestOruR01:
    def test_order_report_and_results(self) -> None:
        """ORC+OBR → ServiceRequest and DiagnosticReport; each OBX is a result of the report."""
        bundle = _convert(
            _message(
                "ORU^R01^ORU_R01",
                ORC,
                OBR,
                _obx("NM", "182", "mg/dL^mg/dL^UCUM", **{"_7": "0-199", "_8": "N"}),
                "NTE|1|L|Fasting sample",  # NTE-3 → Observation.note.text
                _obx("CWE", "260385009^Negative^SCT"),
            )
        )
        (request,) = _all(bundle, "ServiceRequest")
        (report,) = _all(bundle, "DiagnosticReport")
        observations = _all(bundle, "Observation")
        assert request["status"] == "active"
        assert request["intent"] == "order"
        assert [i["type"]["coding"][0]["code"] for i in request["identifier"]] == ["PLAC", "FILL"]
        assert request["requisition"]["value"] == "G1"
        assert request["authoredOn"] == "2024-01-02T03:00:00+01:00"
        assert _by_url(bundle, request["requester"]["reference"])["name"][0]["family"] == "ORDER"
        assert request["code"]["coding"][0]["code"] == "24331-1"
        assert report["status"] == "final"
        assert report["basedOn"][0]["reference"] == _url_of(bundle, request)
        assert report["effectiveDateTime"] == "2024-01-02T08:00:00+01:00"
        assert report["issued"] == "2024-01-02T10:00:00+01:00"
        assert report["category"][0]["coding"][0]["code"] == "CH"
        assert [r["reference"] for r in report["result"]] == [_url_of(bundle, o) for o in observations]
        first = observations[0]
        assert first["valueQuantity"] == {"value": 182, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}
        assert first["status"] == "final"
        assert first["referenceRange"][0]["low"]["value"] == 0
        assert first["referenceRange"][0]["high"]["value"] == 199
        assert first["referenceRange"][0]["text"] == "0-199"
        assert first["interpretation"][0]["coding"][0]["code"] == "N"
        assert first["note"] == [{"text": "Fasting sample"}]
        assert first["basedOn"][0]["reference"] == _url_of(bundle, request)
        assert observations[1]["valueCodeableConcept"]["coding"][0]["code"] == "260385009"

    def test_obr_specimen_is_linked(self) -> None:
        """IG OBR[Specimen]: the report and its observations share the OBR's Specimen."""
        bundle = _convert(_message("ORU^R01^ORU_R01", OBR, _obx("ST", "ok")))
        (specimen,) = _all(bundle, "Specimen")
        (report,) = _all(bundle, "DiagnosticReport")
        (observation,) = _all(bundle, "Observation")
        url = _url_of(bundle, specimen)
        assert report["specimen"] == [{"reference": url}]
        assert observation["specimen"] == {"reference": url}
        assert specimen["collection"]["collectedDateTime"] == "2024-01-02T08:00:00+01:00"

    def test_collector_comment_is_a_specimen_note(self) -> None:
        """OBR-39 → the OBR Specimen's note, the whole field as text (IG OBR[Specimen], CWE[Annotation])."""
        obr = _segment("OBR", {1: "1", 3: "F1", 4: "GLU^Glucose", 39: "C1^Hemolyzed sample~Second"})
        bundle = _convert(_message("ORU^R01^ORU_R01", obr))
        specimen = _all(bundle, "Specimen")[0]
        assert specimen["note"] == [{"text": "C1^Hemolyzed sample"}, {"text": "Second"}]

    def test_spm_specimen_replaces_the_obr_link(self) -> None:
        """An SPM gives a Specimen of its own that the group's observations point at."""
        spm = _segment(
            "SPM",
            {
                1: "1",
                2: "S1&LAB",  # SPM-2 → identifier (placer)
                4: "BLD^Whole blood^HL70487",  # SPM-4 → type
                17: "20240102075000+0100",  # SPM-17 → collection.collectedDateTime
                18: "20240102090000+0100",  # SPM-18 → receivedTime
            },
        )
        bundle = _convert(_message("ORU^R01^ORU_R01", OBR, _obx("ST", "ok"), spm))
        spm_specimen = next(s for s in _all(bundle, "Specimen") if "type" in s)
        assert spm_specimen["type"]["coding"][0]["code"] == "BLD"
        assert spm_specimen["identifier"][0]["value"] == "S1"
        assert spm_specimen["receivedTime"] == "2024-01-02T09:00:00+01:00"
        (observation,) = _all(bundle, "Observation")
        assert observation["specimen"]["reference"] == _url_of(bundle, spm_specimen)
        (report,) = _all(bundle, "DiagnosticReport")
        assert {"reference": _url_of(bundle, spm_specimen)} in report["specimen"]

    def test_report_without_patient(self) -> None:
        """No PID: no ServiceRequest (subject required), but the report and results still map."""
        bundle = _convert(_message("ORU^R01^ORU_R01", OBR, _obx("ST", "ok"), pid=False))
        assert _all(bundle, "ServiceRequest") == []
        (report,) = _all(bundle, "DiagnosticReport")
        assert "basedOn" not in report
        assert len(_all(bundle, "Observation")) == 1

    def test_r5_validates(self) -> None:
        """The same ORU validates as R5, ServiceRequest.code as a CodeableReference."""
        bundle = _convert(_message("ORU^R01^ORU_R01", ORC, OBR, _obx("NM", "5", "g^g^UCUM")), "R5")
        (request,) = _all(bundle, "ServiceRequest")
        assert request["code"]["concept"]["coding"][0]["code"] == "24331-1"


class TestObxValues:
    @pytest.mark.parametrize(
        "value_type,value,units,element,expected",
        [
            (
                "NM",
                "7.5",
                "kg^kilogram^UCUM",
                "valueQuantity",
                {"value": 7.5, "unit": "kilogram", "system": UCUM, "code": "kg"},
            ),
            ("NM", "12", "", "valueQuantity", {"value": 12}),
            ("ST", "Positive", "", "valueString", "Positive"),
            ("FT", "line1\\.br\\line2", "", "valueString", "line1\nline2"),
            (
                "CE",
                "10828004^Positive^SCT",
                "",
                "valueCodeableConcept",
                {"coding": [{"system": "http://snomed.info/sct", "code": "10828004", "display": "Positive"}]},
            ),
            ("DT", "20240105", "", "valueDateTime", "2024-01-05"),
            ("TS", "202401051030+0100", "", "valueDateTime", "2024-01-05T10:30:00+01:00"),
            ("TM", "1030", "", "valueTime", "10:30:00"),
            (
                "NR",
                "1^5",
                "mm^mm^UCUM",
                "valueRange",
                {
                    "low": {"value": 1, "unit": "mm", "system": UCUM, "code": "mm"},
                    "high": {"value": 5, "unit": "mm", "system": UCUM, "code": "mm"},
                },
            ),
            ("IS", "POS", "", "valueCodeableConcept", {"coding": [{"code": "POS"}]}),
            ("XYZ", "a^b", "", "valueString", "a b"),
        ],
    )
    def test_value_by_type(self, value_type: str, value: str, units: str, element: str, expected: Any) -> None:
        """OBX-2 chooses value[x] (IG OBX-5 rows); OBX-6 gives the units."""
        assert _observation(value_type, value, units)[element] == expected

    def test_sn_range_ratio_quantity_and_text(self) -> None:
        """SN: "-" → valueRange, ":" → valueRatio, comparator → valueQuantity, "<>" → valueString."""
        rng = _observation("SN", "^1^-^3", "mg^mg^UCUM")["valueRange"]
        assert (rng["low"]["value"], rng["high"]["value"], rng["high"]["unit"]) == (1, 3, "mg")
        ratio = _observation("SN", "^1^:^128")["valueRatio"]
        assert (ratio["numerator"]["value"], ratio["denominator"]["value"]) == (1, 128)
        quantity = _observation("SN", ">^10", "mg^mg^UCUM")["valueQuantity"]
        assert (quantity["comparator"], quantity["value"], quantity["code"]) == (">", 10, "mg")
        assert _observation("SN", "<>^5")["valueString"] == "<> 5"

    def test_repeated_text_is_one_string(self) -> None:
        """A repeated TX is one multi-line valueString."""
        assert _observation("TX", "first~second")["valueString"] == "first\nsecond"

    def test_repeated_numbers_are_components(self) -> None:
        """A repeated NM gives components (IG OBX[Observation-Component])."""
        observation = _observation("NM", "1~2")
        assert [c["valueQuantity"]["value"] for c in observation["component"]] == [1, 2]
        assert "valueQuantity" not in observation

    def test_encapsulated_data_is_an_attachment(self) -> None:
        """ED with Base64 → the valueAttachment extension (R4B) / native valueAttachment (R5)."""
        ed = "LAB^APPLICATION^PDF^Base64^JVBERi0x"
        r4b = _observation("ED", ed)
        attachment = r4b["extension"][0]["valueAttachment"]
        assert attachment == {"contentType": "PDF", "data": "JVBERi0x"}
        assert _observation("ED", ed, version="R5")["valueAttachment"] == attachment

    def test_hex_attachment_is_base64(self) -> None:
        """ED with Hex data is re-encoded as base64."""
        attachment = _observation("ED", "LAB^TEXT^PLAIN^Hex^4869")["extension"][0]["valueAttachment"]
        assert attachment["data"] == "SGk="

    def test_status_codes(self) -> None:
        """OBX-11: F → final, C → corrected, N → unknown + dataAbsentReason, empty → unknown."""
        assert _observation("ST", "x", **{"_11": "C"})["status"] == "corrected"
        not_asked = _observation("ST", "", **{"_11": "N"})
        assert not_asked["status"] == "unknown"
        assert not_asked["dataAbsentReason"]["coding"][0]["code"] == "not-asked"
        assert _observation("ST", "x", **{"_11": ""})["status"] == "unknown"

    def test_invalid_number_is_reported(self) -> None:
        """An NM that is not a number gives no value and reports OBX-5 unmapped."""
        result = convert_message(_message("ORU^R01^ORU_R01", "OBR|1||F1|X^Y", _obx("NM", "abc")), MappingOptions())
        observation = next(
            e["resource"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == "Observation"
        )
        assert not any(k.startswith("value") for k in observation)
        assert ("OBX", "5") in result.unmapped

    def test_performing_organization_and_director(self) -> None:
        """OBX-23/24/25 → a PractitionerRole (MDIR) of the performing Organization."""
        observation_bundle = _convert(
            _message(
                "ORU^R01^ORU_R01",
                "OBR|1||F1|X^Y",
                _obx(
                    "ST",
                    "x",
                    **{"_23": "Big Lab^^^^^^^^^LAB1", "_24": "1 Main St^^Town^ST^12345", "_25": "9^DIRECTOR^DORA"},
                ),
            )
        )
        (observation,) = _all(observation_bundle, "Observation")
        role = _by_url(observation_bundle, observation["performer"][0]["reference"])
        assert role["code"][0]["coding"][0]["code"] == "MDIR"
        organization = _by_url(observation_bundle, role["organization"]["reference"])
        assert organization["name"] == "Big Lab"
        assert organization["address"][0]["city"] == "Town"


class TestNteToAnnotation:
    def test_each_repetition_is_a_note_with_author_and_time(self) -> None:
        """NTE-3 repetitions → one Annotation each, sharing NTE-5 (author) and NTE-6 (time)."""
        nte = _segment(
            "NTE",
            {
                1: "1",
                3: "line one~line two",  # NTE-3 → note.text (per repetition)
                5: "12^NOTER^NED",  # NTE-5 → note.authorReference
                6: "20240102090000+0100",  # NTE-6 → note.time
            },
        )
        bundle = _convert(_message("ORU^R01^ORU_R01", "OBR|1||F1|X^Y", _obx("ST", "x"), nte))
        (observation,) = _all(bundle, "Observation")
        assert [n["text"] for n in observation["note"]] == ["line one", "line two"]
        assert all(n["time"] == "2024-01-02T09:00:00+01:00" for n in observation["note"])
        author = _by_url(bundle, observation["note"][0]["authorReference"]["reference"])
        assert author["name"][0]["family"] == "NOTER"

    def test_note_after_pid_is_reported_unmapped(self) -> None:
        """An NTE with nothing to annotate maps nothing and reports its fields."""
        result = convert_message(_message("ORU^R01^ORU_R01", "NTE|1||patient comment"), MappingOptions())
        assert ("NTE", "3") in result.unmapped


class TestOrmO01:
    def test_order_with_notes_and_supporting_observation(self) -> None:
        """ORM: no DiagnosticReport; NTE after OBR → ServiceRequest.note; OBX → supportingInfo."""
        bundle = _convert(
            _message(
                "ORM^O01^ORM_O01",
                ORC,
                OBR,
                "NTE|1||Call before drawing",  # NTE-3 → ServiceRequest.note
                _obx("ST", "fasting"),
            )
        )
        assert _all(bundle, "DiagnosticReport") == []
        (request,) = _all(bundle, "ServiceRequest")
        assert request["note"] == [{"text": "Call before drawing"}]
        (observation,) = _all(bundle, "Observation")
        assert request["supportingInfo"] == [{"reference": _url_of(bundle, observation)}]

    def test_order_status_from_order_control(self) -> None:
        """Without ORC-5, ORC-1 gives the status (OrderControlCode); unknown codes → unknown."""
        orc = _segment("ORC", {1: "CA", 2: "P1"})
        (request,) = _all(_convert(_message("ORM^O01", orc, "OBR|1|P1||X^Y")), "ServiceRequest")
        assert request["status"] == "active"
        orc = _segment("ORC", {1: "ZZ", 2: "P1"})
        (request,) = _all(_convert(_message("ORM^O01", orc, "OBR|1|P1||X^Y")), "ServiceRequest")
        assert request["status"] == "unknown"

    def test_obr_alone_opens_an_order(self) -> None:
        """An OBR without ORC still gives a ServiceRequest; reflex orders keep OBR-11 G."""
        obr = _segment("OBR", {1: "1", 2: "P9", 4: "X^Y", 11: "G"})  # OBR-11 G → intent reflex-order
        (request,) = _all(_convert(_message("ORM^O01", obr)), "ServiceRequest")
        assert request["intent"] == "reflex-order"
        assert request["identifier"][0]["value"] == "P9"

    def test_order_without_patient_is_reported_not_raised(self) -> None:
        """No PID: no ServiceRequest, the ORC fields are reported unmapped, no exception."""
        result = convert_message(_message("ORM^O01", "ORC|NW|1000|9999", pid=False), MappingOptions())
        assert not [e for e in result.bundle["entry"] if e["resource"]["resourceType"] == "ServiceRequest"]
        assert ("ORC", "2") in result.unmapped


class TestVxuV04:
    RXA = _segment(
        "RXA",
        {
            1: "0",
            2: "1",
            3: "20240110093000+0100",  # RXA-3 → occurrenceDateTime
            5: "08^HepB^CVX",  # RXA-5 → vaccineCode
            6: "0.5",  # RXA-6 → doseQuantity.value
            7: "mL^mL^UCUM",  # RXA-7 → doseQuantity unit
            10: "77^NURSE^NINA",  # RXA-10 → performer (AP)
            15: "LOT42",  # RXA-15 → lotNumber
            16: "20251231",  # RXA-16 → expirationDate
            17: "MSD^Merck^MVX",  # RXA-17 → manufacturer
            20: "CP",  # RXA-20 → status completed
        },
    )

    def test_immunization(self) -> None:
        """ORC + RXA + RXR → one Immunization (no ServiceRequest)."""
        orc = _segment("ORC", {1: "RE", 2: "IZ1^EHR", 12: "66^ORDER^OTTO"})  # ORC-2 → identifier, ORC-12 → OP
        rxr = "RXR|IM^Intramuscular^HL70162|LD^Left deltoid^HL70163"  # RXR-1 → route, RXR-2 → site
        bundle = _convert(_message("VXU^V04^VXU_V04", orc, self.RXA, rxr))
        assert _all(bundle, "ServiceRequest") == []
        (immunization,) = _all(bundle, "Immunization")
        assert immunization["status"] == "completed"
        assert immunization["vaccineCode"]["coding"][0]["code"] == "08"
        assert immunization["occurrenceDateTime"] == "2024-01-10T09:30:00+01:00"
        assert immunization["doseQuantity"] == {"value": 0.5, "unit": "mL", "system": UCUM, "code": "mL"}
        assert immunization["lotNumber"] == "LOT42"
        assert immunization["expirationDate"] == "2025-12-31"
        assert immunization["identifier"][0]["value"] == "IZ1"
        functions = sorted(p["function"]["coding"][0]["code"] for p in immunization["performer"])
        assert functions == ["AP", "OP"]
        assert _by_url(bundle, immunization["manufacturer"]["reference"])["name"] == "Merck"
        assert immunization["route"]["coding"][0]["code"] == "IM"
        assert immunization["site"]["coding"][0]["code"] == "LD"

    def test_deleted_administration(self) -> None:
        """RXA-21 = D → entered-in-error."""
        rxa = self.RXA + "|D"  # RXA-21
        (immunization,) = _all(_convert(_message("VXU^V04", rxa)), "Immunization")
        assert immunization["status"] == "entered-in-error"

    def test_r5_validates(self) -> None:
        """The immunization validates as R5 (manufacturer a CodeableReference)."""
        (immunization,) = _all(_convert(_message("VXU^V04", self.RXA), "R5"), "Immunization")
        assert immunization["manufacturer"]["reference"]["reference"].startswith("urn:uuid:")


class TestSiuS12:
    def test_appointment(self) -> None:
        """SCH + PID + AIS/AIP/AIL → Appointment with its participants."""
        sch = _segment(
            "SCH",
            {
                1: "A1^EHR",  # SCH-1 → identifier (placer)
                2: "B2^SCHED",  # SCH-2 → identifier (filler)
                7: "CHECKUP^Checkup^HL70276",  # SCH-7 → reasonCode
                8: "ROUTINE^Routine^HL70277",  # SCH-8 → appointmentType
                9: "30",  # SCH-9 → minutesDuration
                11: "^^^20240201090000+0100^20240201093000+0100",  # SCH-11 (TQ.4/5) → start/end
                25: "Booked",  # SCH-25 → status booked
            },
        )
        ais = "AIS|1||99213^Office visit^CPT|20240201090000+0100"  # AIS-3 → serviceType
        aip = _segment(
            "AIP",
            {
                1: "1",
                3: "44^DOC^DAVE",  # AIP-3 → participant actor (Practitioner)
                4: "ATND",  # AIP-4 → participant type
                6: "20240201090000+0100",  # AIP-6 → participant period.start
                9: "30",  # AIP-9 (duration, minutes) → period.end = start + 30 minutes
            },
        )
        ail = "AIL|1||ROOM1^^^CLINIC"  # AIL-3 → participant Location
        header = "MSH|^~\\&|S|F|R|F|20240102030405+0100||SIU^S12^SIU_S12|M1|P|2.5.1"
        text = "\r".join((header, sch, "PID|1||MR1^^^HOSP^MR||DOE^JANE", ais, aip, ail)) + "\r"
        bundle = _convert(text)
        (appointment,) = _all(bundle, "Appointment")
        assert appointment["status"] == "booked"
        assert appointment["minutesDuration"] == 30
        assert appointment["start"] == "2024-02-01T09:00:00+01:00"
        assert appointment["end"] == "2024-02-01T09:30:00+01:00"
        reason_codes = [c["code"] for c in appointment["reasonCode"][0]["coding"]]
        assert reason_codes == ["866149003", "CHECKUP"]  # IG AppointmentReasonCodes first, v2 code kept
        assert appointment["appointmentType"]["coding"][0]["code"] == "ROUTINE"
        assert appointment["serviceType"][0]["coding"][0]["code"] == "99213"
        actors = [
            _by_url(bundle, p["actor"]["reference"])["resourceType"]
            for p in appointment["participant"]
            if "reference" in p.get("actor", {})
        ]
        assert sorted(actors) == ["Location", "Patient", "Practitioner"]
        practitioner = next(p for p in appointment["participant"] if p.get("period"))
        assert practitioner["period"]["end"] == "2024-02-01T09:30:00+01:00"
        _convert(text, "R5")


class TestNdlLocations:
    def test_ndl_point_of_care_levels_are_role_locations(self) -> None:
        """OBR-32 NDL.4-11 → one Location per valued level (PL order), all listed on PractitionerRole.location."""
        ndl = "123&SMITH&JO^20230401102531-0400^^POC^Room 1^Bed A^Hosp&2.16.1&ISO^^^Bldg^Floor 2"
        text = "\r".join(
            (
                "MSH|^~\\&|LAB|FAC|EHR|FAC|20240102030405+0100||ORU^R01^ORU_R01|MSG1|P|2.5.1",
                "PID|1||P1^^^H^MR",
                segment("OBR", {1: "1", 2: "ORD1", 4: "1234-5^Test^LN", 32: ndl}),
            )
        )
        bundle = convert_both(text)["R4B"].bundle
        codes = sorted(loc["physicalType"]["coding"][0]["code"] for loc in resources(bundle, "Location"))
        assert codes == ["bd", "bu", "lvl", "ro", "si", "wa"]
        role = next(r for r in resources(bundle, "PractitionerRole") if "location" in r)
        assert len(role["location"]) == 6

    def test_ndl_location_status_on_every_level(self) -> None:
        """NDL.8 (location status) → status of every valued Location level (IG NDL.8 rows "IF PL.n VALUED")."""
        ndl = "123&SMITH&JO^^^POC^Room 1^Bed A^Hosp^active^^Bldg^Floor 2"
        text = "\r".join(
            (
                "MSH|^~\\&|LAB|FAC|EHR|FAC|20240102030405+0100||ORU^R01^ORU_R01|MSG1|P|2.5.1",
                "PID|1||P1^^^H^MR",
                segment("OBR", {1: "1", 2: "ORD1", 4: "1234-5^Test^LN", 32: ndl}),
            )
        )
        locations = resources(convert_both(text)["R4B"].bundle, "Location")
        assert len(locations) == 6
        assert [loc.get("status") for loc in locations] == ["active"] * 6

    def test_technician_and_transcriptionist_repetitions_are_practitioner_roles(self) -> None:
        """OBR-34/35: a PractitionerRole per repetition (NDL[PractitionerRole]), function on the performer Reference."""
        technicians = "1&TECH&ONE^20230401102531-0400~2&TECH&TWO"
        text = "\r".join(
            (
                "MSH|^~\\&|LAB|FAC|EHR|FAC|20240102030405+0100||ORU^R01^ORU_R01|MSG1|P|2.5.1",
                "PID|1||P1^^^H^MR",
                segment("OBR", {1: "1", 2: "ORD1", 4: "1234-5^Test^LN", 25: "F", 34: technicians, 35: "3&TYPE&TIM"}),
            )
        )
        bundle = convert_both(text)["R4B"].bundle
        (report,) = resources(bundle, "DiagnosticReport")
        targets = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
        performers = [(targets[p["reference"]], p["extension"][0]) for p in report["performer"]]
        assert [role["resourceType"] for role, _ in performers] == ["PractitionerRole"] * 3
        functions = [ext["valueCodeableConcept"]["coding"][0]["code"] for _, ext in performers]
        assert functions == ["SPRF", "SPRF", "TRANS"]
        assert performers[0][0]["period"]["start"] == "2023-04-01T10:25:31-04:00"
        names = [targets[role["practitioner"]["reference"]]["name"][0]["family"] for role, _ in performers]
        assert names == ["TECH", "TECH", "TYPE"]
