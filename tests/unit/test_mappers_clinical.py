"""AL1 → AllergyIntolerance, DG1 → Condition, PR1 → Procedure (segments/clinical.py).

Each HL7 field below is commented with its FHIR target (IG AL1[AllergyIntolerance],
DG1[Condition], DG1[Encounter], PR1[Procedure]).
"""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.bundle import Bundle as BundleR5
from fhir.resources.R4B.bundle import Bundle as BundleR4B

from channels.mappers.convert import convert_message
from channels.mappers.options import MappingOptions
from engine.types import MappingError

SNOMED = "http://snomed.info/sct"


def _segment(segment_id: str, fields: dict[int, str]) -> str:
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join((segment_id, *values))


def _message(*segments: str, pid: bool = True) -> str:
    header = "MSH|^~\\&|SEND|FAC|RECV|FAC|20240102030405+0100||ADT^A01^ADT_A01|MSG1|P|2.5.1"
    patient = ["PID|1||MR1^^^HOSP^MR||DOE^JANE"] if pid else []
    return "\r".join((header, *patient, *segments)) + "\r"


def _convert(text: str, version: str = "R4B") -> dict[str, Any]:
    bundle = convert_message(text, MappingOptions(fhir_version=version)).bundle  # type: ignore[arg-type]
    (BundleR4B if version == "R4B" else BundleR5).model_validate(bundle)
    return bundle


def _all(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _by_url(bundle: dict[str, Any], url: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == url)


AL1 = _segment(
    "AL1",
    {
        1: "1",
        2: "DA",  # AL1-2 → category medication (+ alternate-codes), type allergy
        3: "70618^Penicillin^RXNORM",  # AL1-3 → code
        4: "SV",  # AL1-4 → criticality high, reaction.severity severe
        5: "Hives~Wheezing",  # AL1-5 → reaction.manifestation.text
        6: "20200115",  # AL1-6 → onsetDateTime
    },
)


class TestAl1ToAllergyIntolerance:
    def test_every_row(self) -> None:
        """AL1-2..6 land in category, type, code, criticality, reaction and onset."""
        bundle = _convert(_message(AL1))
        (allergy,) = _all(bundle, "AllergyIntolerance")
        assert allergy["clinicalStatus"]["coding"][0]["code"] == "active"
        assert allergy["category"] == ["medication"]
        original = allergy["_category"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]
        assert original["code"] == "DA"
        assert allergy["type"] == "allergy"
        assert allergy["code"]["coding"][0]["code"] == "70618"
        assert allergy["criticality"] == "high"
        assert allergy["reaction"] == [
            {"manifestation": [{"text": "Hives"}, {"text": "Wheezing"}], "severity": "severe"}
        ]
        assert allergy["onsetDateTime"] == "2020-01-15"
        assert _by_url(bundle, allergy["patient"]["reference"])["resourceType"] == "Patient"

    def test_severity_without_manifestation_keeps_criticality_only(self) -> None:
        """R4 reaction needs a manifestation: without AL1-5 only criticality is set."""
        (allergy,) = _all(_convert(_message(_segment("AL1", {1: "1", 3: "X^Y", 4: "MI"}))), "AllergyIntolerance")
        assert allergy["criticality"] == "low"
        assert "reaction" not in allergy

    def test_needs_a_patient(self) -> None:
        """AllergyIntolerance.patient is required: an AL1 with no PID before it is refused."""
        with pytest.raises(MappingError) as caught:
            convert_message("MSH|^~\\&|A|B|C|D|20240101||ORU^R01|1|P|2.5.1\r" + AL1 + "\r", MappingOptions())
        assert caught.value.segment == "AL1"

    def test_r5_shape(self) -> None:
        """R5: type is a CodeableConcept and manifestation a CodeableReference."""
        (allergy,) = _all(_convert(_message(AL1), "R5"), "AllergyIntolerance")
        assert allergy["type"]["coding"][0]["code"] == "allergy"
        assert allergy["reaction"][0]["manifestation"][0] == {"concept": {"text": "Hives"}}


DG1 = _segment(
    "DG1",
    {
        1: "1",
        3: "I21.9^Acute MI^I10C",  # DG1-3 → code
        4: "Heart attack",  # DG1-4 → code.text
        5: "20240101120000+0100",  # DG1-5 → onsetDateTime
        6: "A",  # DG1-6 → Encounter.diagnosis.use
        15: "1",  # DG1-15 → Encounter.diagnosis.rank
        16: "123^DOC^DAN",  # DG1-16 → asserter
        19: "20240102080000+0100",  # DG1-19 → recordedDate + condition-assertedDate
        20: "D55^^1.2.3^ISO",  # DG1-20 → identifier
    },
)


class TestDg1ToCondition:
    def test_every_row(self) -> None:
        """DG1-3/4/5/16/19/20 land on the Condition."""
        bundle = _convert(_message("PV1|1|I", DG1))
        (condition,) = _all(bundle, "Condition")
        assert condition["code"]["coding"][0] == {
            "system": "http://hl7.org/fhir/sid/icd-10-cm",
            "code": "I21.9",
            "display": "Acute MI",
        }
        assert condition["code"]["text"] == "Heart attack"
        assert condition["onsetDateTime"] == "2024-01-01T12:00:00+01:00"
        assert condition["recordedDate"] == "2024-01-02T08:00:00+01:00"
        assert condition["extension"][0]["url"].endswith("condition-assertedDate")
        assert condition["identifier"][0]["value"] == "D55"
        assert _by_url(bundle, condition["asserter"]["reference"])["name"][0]["family"] == "DOC"
        assert condition["category"][0]["coding"][0]["code"] == "encounter-diagnosis"

    def test_encounter_lists_the_diagnosis(self) -> None:
        """IG DG1[Encounter]: the Encounter's diagnosis points at the Condition, with use and rank."""
        bundle = _convert(_message("PV1|1|I", DG1))
        (encounter,) = _all(bundle, "Encounter")
        (condition_entry,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition"]
        diagnosis = encounter["diagnosis"][0]
        assert diagnosis["condition"]["reference"] == condition_entry["fullUrl"]
        assert diagnosis["rank"] == 1
        assert diagnosis["use"]["coding"][0]["code"] == "AD"
        assert (
            condition_entry["resource"]["encounter"]["reference"]
            == bundle["entry"][[e["resource"]["resourceType"] for e in bundle["entry"]].index("Encounter")]["fullUrl"]
        )

    def test_delete_action_marks_entered_in_error(self) -> None:
        """DG1-21 = D → verificationStatus entered-in-error."""
        dg1 = _segment("DG1", {1: "1", 3: "X1^Y", 21: "D"})
        (condition,) = _all(_convert(_message(dg1)), "Condition")
        assert condition["verificationStatus"]["coding"][0]["code"] == "entered-in-error"

    def test_r5_shape(self) -> None:
        """R5: clinicalStatus is required (data-absent-reason) and asserter is a participant."""
        bundle = _convert(_message("PV1|1|I", DG1), "R5")
        (condition,) = _all(bundle, "Condition")
        assert condition["clinicalStatus"]["extension"][0]["valueCode"] == "unknown"
        assert condition["participant"][0]["function"]["coding"][0]["code"] == "author"
        (encounter,) = _all(bundle, "Encounter")
        assert "rank" not in encounter["diagnosis"][0]
        assert encounter["diagnosis"][0]["condition"][0]["reference"]["reference"].startswith("urn:uuid:")


PR1 = _segment(
    "PR1",
    {
        1: "1",
        3: "80146002^Appendectomy^SCT",  # PR1-3 → code
        4: "Lap appendectomy",  # PR1-4 → code.text
        5: "20240103100000+0100",  # PR1-5 → performedPeriod.start
        6: "D^Diagnostic^HL70230",  # PR1-6 → category
        7: "90",  # PR1-7 → performedPeriod.end = start + 90 min
        8: "11^ANES^ANA",  # PR1-8 → performer (anesthesiologist)
        11: "22^SURG^SAM",  # PR1-11 → performer (surgeon)
        15: "K35^Appendicitis^I10",  # PR1-15 → reasonCode
        19: "P77",  # PR1-19 → identifier
    },
)


class TestPr1ToProcedure:
    def test_every_row(self) -> None:
        """PR1 rows land on the Procedure; status is unknown (v2 carries none)."""
        bundle = _convert(_message(PR1))
        (procedure,) = _all(bundle, "Procedure")
        assert procedure["status"] == "unknown"
        assert procedure["code"]["coding"][0]["code"] == "80146002"
        assert procedure["code"]["text"] == "Lap appendectomy"
        assert procedure["performedPeriod"] == {
            "start": "2024-01-03T10:00:00+01:00",
            "end": "2024-01-03T11:30:00+01:00",
        }
        assert procedure["category"]["coding"][0]["code"] == "D"
        functions = [p["function"]["coding"][0]["code"] for p in procedure["performer"]]
        assert functions == ["88189002", "304292004"]
        assert all(p["function"]["coding"][0]["system"] == SNOMED for p in procedure["performer"])
        assert procedure["reasonCode"][0]["coding"][0]["code"] == "K35"
        assert procedure["identifier"][0]["value"] == "P77"

    def test_without_duration_a_datetime(self) -> None:
        """PR1-5 without PR1-7 → performedDateTime."""
        pr1 = _segment("PR1", {1: "1", 3: "X^Y", 5: "20240103"})
        (procedure,) = _all(_convert(_message(pr1)), "Procedure")
        assert procedure["performedDateTime"] == "2024-01-03"

    def test_r5_shape(self) -> None:
        """R5: performed[x] → occurrence[x], reasonCode → reason, category a list."""
        (procedure,) = _all(_convert(_message(PR1), "R5"), "Procedure")
        assert procedure["occurrencePeriod"]["end"] == "2024-01-03T11:30:00+01:00"
        assert procedure["reason"][0]["concept"]["coding"][0]["code"] == "K35"
        assert procedure["category"][0]["coding"][0]["code"] == "D"
