"""The shipped channel samples (channels/adt/samples/*.hl7 + *.expected.json), issue 3 done-means 4."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_mappers_helpers import bundle_mismatches, convert_both, one

SAMPLES = Path(__file__).parents[2] / "channels" / "adt" / "samples"
SAMPLE_FILES = sorted(SAMPLES.glob("*.hl7"))


def _resolve(bundle: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == reference["reference"])
    return found


class TestChannelSamples:
    def test_samples_exist(self) -> None:
        """The adt channel ships its own samples, each with an expected Bundle."""
        assert len(SAMPLE_FILES) >= 4
        for sample in SAMPLE_FILES:
            assert sample.with_suffix(".expected.json").is_file(), sample.name

    @pytest.mark.parametrize("sample", SAMPLE_FILES, ids=lambda p: p.stem)
    def test_sample_matches_expected_subset(self, sample: Path) -> None:
        """Every element of the expected Bundle is in the R4B output; R4B and R5 both validate."""
        expected = json.loads(sample.with_suffix(".expected.json").read_text(encoding="utf-8"))
        results = convert_both(sample.read_text(encoding="utf-8"))
        assert bundle_mismatches(expected, results["R4B"].bundle) == []


class TestBeginnerExample:
    def test_every_value_in_place(self) -> None:
        """The beginner's PID and IN1 give a linked Patient, Account, Coverage, payor Organization and subscriber."""
        bundle = convert_both((SAMPLES / "beginner-a04.hl7").read_text(encoding="utf-8"))["R4B"].bundle
        patient = one(bundle, "Patient")
        coverage = one(bundle, "Coverage")
        account = one(bundle, "Account")
        subscriber = _resolve(bundle, coverage["subscriber"])
        payor = _resolve(bundle, coverage["payor"][0])
        assert patient["identifier"][0] == {"value": "000395122"}  # PID-3 → identifier
        assert patient["name"] == [{"family": "LEVERKUHN", "given": ["ADRIAN", "C"]}]  # PID-5 → name
        assert patient["birthDate"] == "1988-05-17"  # PID-7 → birthDate (no zone: time kept as originalText)
        assert patient["_birthDate"]["extension"][0]["valueString"] == "19880517180606"
        assert patient["gender"] == "male"  # PID-8 → gender
        assert patient["address"] == [
            {"line": ["6 66TH AVE NE"], "city": "WEIMAR", "state": "DL", "postalCode": "98052"}
        ]
        assert patient["telecom"] == [{"system": "phone", "value": "(157)983-3296", "use": "home"}]  # PID-13
        assert patient["maritalStatus"]["coding"][0]["code"] == "S"  # PID-16 → maritalStatus
        assert account["identifier"] == [{"value": "12345678"}]  # PID-18 → Account.identifier
        assert _resolve(bundle, account["subject"][0]) is patient
        assert {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "87654321"}.items() <= patient["identifier"][
            1
        ].items()
        assert _resolve(bundle, coverage["beneficiary"]) is patient
        assert payor["resourceType"] == "Organization" and payor["name"] == "LIFE PRUDENT BUYER"  # IN1-4
        assert payor["address"] == [{"line": ["PO BOX 23523", "WELLINGTON"], "city": "ON", "state": "98111"}]  # IN1-5
        assert subscriber["resourceType"] == "RelatedPerson"  # IN1-17 is not self
        assert subscriber["name"] == [{"family": "THOMAS", "given": ["JAMES", "M"]}]  # IN1-16
        assert subscriber["relationship"][0]["coding"][0]["code"] == "F"  # IN1-17
        assert _resolve(bundle, subscriber["patient"]) is patient
        assert coverage["identifier"][0]["value"] == "PRE2"  # IN1-2 → identifier (first)
        assert coverage["class"][0]["value"] == "19601"  # IN1-8 → class (group)
        assert coverage["subscriberId"] == "ZKA535529776"  # IN1-36 → subscriberId / identifier
