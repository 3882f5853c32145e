"""IN1 → Coverage/Organization/subscriber, IN2, GT1 (channels/mappers/segments/insurance.py)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.types import MappingError
from tests.unit.test_mappers_helpers import MSH_A01, by_name, convert_both, one, resources, segment

PID = "PID|1||M1^^^HOSP||DOE^JANE||19800101|F"
COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"


def _convert(*segments: str, version: str = "R4B") -> tuple[dict[str, Any], list[tuple[str, str]]]:
    results = convert_both("\r".join([MSH_A01, PID, *segments]) + "\r")
    return results[version].bundle, results[version].unmapped


def _url(bundle: dict[str, Any], resource: dict[str, Any]) -> str:
    return next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is resource)


IN1_RELATED = segment(
    "IN1",
    {
        1: "1",
        2: "PLAN7^Gold Plan^L",
        3: "PAYER9^^^NAIC",
        4: "ACME INSURANCE",
        5: "1 INSURANCE WAY^^HARTFORD^CT^06101",
        6: "SMITH^BOB",
        7: "^WPN^PH^^^860^5550000",
        8: "GRP42",
        9: "ACME EMPLOYEES",
        10: "EMP77^^^ACME^SN",
        11: "ACME CORP",
        12: "20240101",
        13: "20241231",
        15: "HMO^Health Maintenance Organization^HL70086",
        16: "DOE^JOHN",
        17: "SPO^Spouse^HL70063",
        18: "19790505",
        19: "2 OAK ST^^BOSTON^MA^02101",
        22: "2",
        35: "PLANCODE35",
        36: "POL123",
        43: "M",
        46: "OLDPLAN",
        49: "SUB55^^^ACME",
    },
)


class TestIn1ToCoverage:
    def test_every_row(self) -> None:
        """Each valued IN1 field lands in the Coverage, payor Organization, policy holder or subscriber."""
        bundle, unmapped = _convert(IN1_RELATED)
        coverage = one(bundle, "Coverage")
        patient = one(bundle, "Patient")
        payor = by_name(bundle, "Organization", "ACME INSURANCE")  # IN1-4 → payor name
        holder = by_name(bundle, "Organization", "ACME CORP")  # IN1-11 → policyHolder
        subscriber = one(bundle, "RelatedPerson")
        assert coverage["status"] == "active"
        assert coverage["beneficiary"] == {"reference": _url(bundle, patient)}
        assert coverage["payor"] == [{"reference": _url(bundle, payor)}]
        assert payor["identifier"][0]["value"] == "PAYER9"  # IN1-3 → payor identifier
        assert payor["address"][0]["city"] == "HARTFORD"  # IN1-5 → payor address
        assert payor["contact"][0]["name"]["family"] == "SMITH"  # IN1-6 → payor contact name
        assert payor["contact"][0]["telecom"][0]["value"] == "860 5550000"  # IN1-7 → payor contact telecom
        assert coverage["policyHolder"] == {"reference": _url(bundle, holder)}
        assert holder["identifier"][0]["value"] == "EMP77"  # IN1-10 → policy holder identifier
        ids = {(i.get("type", {}).get("coding", [{}])[0].get("code"), i["value"]) for i in coverage["identifier"]}
        assert ("MB", "POL123") in ids  # IN1-36 → identifier (MB)
        assert ("XV", "PLAN7") in ids  # IN1-2 → identifier (XV)
        assert {"use": "old", "value": "OLDPLAN"} in coverage["identifier"]  # IN1-46
        assert coverage["subscriberId"] == "POL123"  # IN1-36 → subscriberId
        assert coverage["period"] == {"start": "2024-01-01", "end": "2024-12-31"}  # IN1-12, IN1-13
        assert coverage["type"]["coding"][0]["code"] == "HMO"  # IN1-15 → type
        assert coverage["relationship"]["coding"][0]["code"] == "SPS"  # IN1-17 → relationship
        assert coverage["order"] == 2  # IN1-22 → order
        group = {
            "type": {"coding": [{"system": COVERAGE_CLASS, "code": "group"}]},
            "value": "GRP42",
            "name": "ACME EMPLOYEES",
        }
        assert group in coverage["class"]  # IN1-8, IN1-9 → class group
        assert {"type": {"coding": [{"system": COVERAGE_CLASS, "code": "plan"}]}, "value": "PLANCODE35"} in coverage[
            "class"
        ]
        sub_ids = [e["valueIdentifier"]["value"] for e in coverage["extension"]]
        assert sub_ids == ["EMP77", "SUB55"]  # IN1-10 (CX.5 SN) and IN1-49 → subscriberId extension
        assert coverage["subscriber"] == {"reference": _url(bundle, subscriber)}  # IN1-16/17 not self
        assert subscriber["name"][0]["family"] == "DOE" and subscriber["name"][0]["given"] == ["JOHN"]  # IN1-16
        assert subscriber["birthDate"] == "1979-05-05"  # IN1-18
        assert subscriber["address"][0]["line"] == ["2 OAK ST"]  # IN1-19
        assert subscriber["gender"] == "male"  # IN1-43
        assert subscriber["identifier"][0]["value"] == "SUB55"  # IN1-49
        assert subscriber["patient"] == {"reference": _url(bundle, patient)}
        assert [f for s, f in unmapped if s == "IN1"] == []

    def test_self_subscriber_is_the_patient(self) -> None:
        """IN1-17 SEL → subscriber is the Patient, no RelatedPerson."""
        bundle, _ = _convert(segment("IN1", {1: "1", 4: "PAYER", 16: "DOE^JANE", 17: "SEL", 36: "P1"}))
        coverage = one(bundle, "Coverage")
        assert coverage["subscriber"] == coverage["beneficiary"]
        assert resources(bundle, "RelatedPerson") == []

    def test_conditional_request_on_policy_number(self) -> None:
        """Coverage entries match on IN1-36, never on the plan id shared by every member."""
        results = convert_both("\r".join([MSH_A01, PID, IN1_RELATED]) + "\r")
        entry = next(e for e in results["R4B"].bundle["entry"] if e["resource"]["resourceType"] == "Coverage")
        assert entry["request"] == {"method": "POST", "url": "Coverage", "ifNoneExist": "identifier=POL123"}

    def test_r5_shape(self) -> None:
        """R5: payor → insurer + paymentBy, kind insurance, subscriberId and class.value as Identifiers."""
        bundle, _ = _convert(IN1_RELATED, version="R5")
        coverage = one(bundle, "Coverage")
        assert "payor" not in coverage and coverage["insurer"] == coverage["paymentBy"][0]["party"]
        assert coverage["kind"] == "insurance"
        assert coverage["subscriberId"] == [{"value": "POL123"}]
        assert {"value": "GRP42"} in [c["value"] for c in coverage["class"]]
        payor = by_name(bundle, "Organization", "ACME INSURANCE")
        assert payor["contact"][-1]["address"]["city"] == "HARTFORD"  # R5 Organization.contact.address

    def test_several_insurance_groups(self) -> None:
        """Two IN1 groups give two Coverages; each IN2 enriches the Coverage of the IN1 before it."""
        bundle, _ = _convert(
            segment("IN1", {1: "1", 4: "FIRST", 17: "SEL", 36: "A1"}),
            segment("IN2", {6: "MEDICARE1"}),
            segment("IN1", {1: "2", 4: "SECOND", 17: "SEL", 36: "B2"}),
            segment("IN2", {8: "MEDICAID2"}),
        )
        first, second = resources(bundle, "Coverage")
        assert {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MC"}]},
            "value": "MEDICARE1",
        } in first["identifier"]
        assert any(i["value"] == "MEDICAID2" for i in second["identifier"])
        assert not any(i["value"] == "MEDICAID2" for i in first["identifier"])

    def test_identifier_order_and_numbers(self) -> None:
        """Coverage.identifier: IN1-2 (XV), IN1-46 (use old), then IN1-36 as MB and as SN."""
        coverage = one(_convert(IN1_RELATED)[0], "Coverage")
        kinds = [
            (i.get("type", {}).get("coding", [{}])[0].get("code"), i.get("use"), i["value"])
            for i in coverage["identifier"]
        ]
        assert kinds == [
            ("XV", None, "PLAN7"),
            (None, "old", "OLDPLAN"),
            ("MB", None, "POL123"),
            ("SN", None, "POL123"),
        ]

    def test_set_id_orders_the_coverage_without_a_priority(self) -> None:
        """IN1-22 gives Coverage.order; without it, IN1-1 (the group's position) does."""
        assert one(_convert(IN1_RELATED)[0], "Coverage")["order"] == 2  # IN1-22
        bundle, _ = _convert(segment("IN1", {1: "3", 4: "PAYER", 17: "SEL", 36: "P1"}))
        assert one(bundle, "Coverage")["order"] == 3  # IN1-1

    def test_self_subscriber_member_number_on_the_patient(self) -> None:
        """IN1-17 SEL: the member number (IN1-36, else IN2-61) is a Patient identifier of type MB."""
        bundle, _ = _convert(segment("IN1", {1: "1", 4: "PAYER", 17: "SEL", 36: "P1"}), segment("IN2", {61: "M61"}))
        members = [
            i
            for i in one(bundle, "Patient")["identifier"]
            if i.get("type", {}).get("coding", [{}])[0].get("code") == "MB"
        ]
        assert [i["value"] for i in members] == ["M61"]

    def test_related_subscriber_without_a_name(self) -> None:
        """IN1-17 naming a relative (PAR) makes the subscriber RelatedPerson even without IN1-16; EMR does not."""
        bundle, _ = _convert(segment("IN1", {1: "1", 4: "PAYER", 17: "PAR", 36: "P1"}))
        parent = one(bundle, "RelatedPerson")
        assert one(bundle, "Coverage")["subscriber"] == {"reference": _url(bundle, parent)}
        assert parent["relationship"][0]["coding"][0]["code"] == "PRN"  # Relationship map PAR → PRN
        bundle, _ = _convert(segment("IN1", {1: "1", 4: "PAYER", 17: "EMR", 36: "P1"}))
        assert resources(bundle, "RelatedPerson") == [] and "subscriber" not in one(bundle, "Coverage")

    def test_missing_payor_is_marked_absent(self) -> None:
        """Without IN1-3/-4/-5 the required payor carries data-absent-reason, not an invented name."""
        bundle, _ = _convert(segment("IN1", {1: "1", 17: "SEL", 36: "P1"}))
        payor = one(bundle, "Coverage")["payor"]
        assert payor == [
            {
                "extension": [
                    {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
                ]
            }
        ]

    def test_in1_without_pid_is_a_mapping_error(self) -> None:
        """IN1 before any PID raises MappingError naming IN1."""
        with pytest.raises(MappingError) as info:
            convert_both(MSH_A01.replace("ADT^A01^ADT_A01", "ZZZ^Z01") + "\rIN1|1||||\r")
        assert info.value.segment == "IN1"


class TestIn2:
    def test_subscriber_details(self) -> None:
        """IN2-2 SSN and IN2-63 phone land on the subscriber; IN2-61 → Coverage identifier; IN2-72 → relationship."""
        bundle, unmapped = _convert(
            segment("IN1", {1: "1", 4: "PAYER", 16: "DOE^JOHN"}),
            segment("IN2", {2: "999-11-2222", 61: "MEMBER61", 63: "^PRN^PH^^^617^5553333", 72: "SPO^Spouse^HL70063"}),
        )
        coverage = one(bundle, "Coverage")
        subscriber = one(bundle, "RelatedPerson")
        ssn = next(i for i in subscriber["identifier"] if i.get("system") == "http://hl7.org/fhir/sid/us-ssn")
        assert ssn["value"] == "999112222"  # IN2-2 (dashes removed)
        assert subscriber["telecom"][0]["value"] == "617 5553333"  # IN2-63
        assert any(i["value"] == "MEMBER61" for i in coverage["identifier"])  # IN2-61
        assert coverage["relationship"]["coding"][0]["code"] == "SPS"  # IN2-72 (IN1-17 empty)
        assert [f for s, f in unmapped if s == "IN2"] == []

    def test_relationship_table_0344_names_the_subscriber(self) -> None:
        """IN2-72 (table 0344) with IN1-17 empty: 04 → a RelatedPerson subscriber, 01 → the Patient."""
        bundle, _ = _convert(segment("IN1", {1: "1", 4: "PAYER", 36: "P1"}), segment("IN2", {72: "04"}))
        child = one(bundle, "RelatedPerson")
        coverage = one(bundle, "Coverage")
        assert coverage["subscriber"] == {"reference": _url(bundle, child)}
        assert coverage["relationship"]["coding"][0] == {
            "system": "http://terminology.hl7.org/CodeSystem/v2-0344",
            "code": "04",
        }
        bundle, _ = _convert(segment("IN1", {1: "1", 4: "PAYER", 36: "P1"}), segment("IN2", {72: "01"}))
        coverage = one(bundle, "Coverage")
        assert coverage["subscriber"] == coverage["beneficiary"] and resources(bundle, "RelatedPerson") == []


class TestGt1ToGuarantor:
    def test_guarantor_person_on_the_account(self) -> None:
        """GT1 → RelatedPerson guarantor on the PID-18 Account with GT1-2/-3/-5/-6/-8/-9/-11/-13."""
        pid = "PID|1||M1||DOE^JANE|||F||||||||||ACCT1"
        gt1 = segment(
            "GT1",
            {
                1: "1",
                2: "G1",
                3: "DOE^JOHN",
                5: "2 OAK ST^^BOSTON^MA",
                6: "^PRN^PH^^^617^5554444",
                8: "19790505",
                9: "M",
                11: "SPO^Spouse^HL70063",
                13: "20240101",
            },
        )
        results = convert_both("\r".join([MSH_A01, pid, gt1]) + "\r")
        bundle, unmapped = results["R4B"].bundle, results["R4B"].unmapped
        account = one(bundle, "Account")
        person = one(bundle, "RelatedPerson")
        assert account["identifier"][0]["value"] == "ACCT1"
        assert account["guarantor"] == [
            {"party": {"reference": _url(bundle, person)}, "period": {"start": "2024-01-01"}}
        ]
        assert person["identifier"][0]["value"] == "G1"  # GT1-2
        assert person["name"][0]["family"] == "DOE"  # GT1-3
        assert person["address"][0]["city"] == "BOSTON"  # GT1-5
        assert person["telecom"][0]["use"] == "home"  # GT1-6
        assert person["birthDate"] == "1979-05-05"  # GT1-8
        assert person["gender"] == "male"  # GT1-9
        assert person["relationship"][0]["coding"][0]["code"] == "SPS"  # GT1-11
        assert [f for s, f in unmapped if s == "GT1"] == []

    def test_self_guarantor_without_account(self) -> None:
        """GT1-11 SEL → the Patient guarantees; an Account is created for it when PID-18 is empty."""
        bundle, _ = _convert(segment("GT1", {1: "1", 3: "DOE^JANE", 11: "SEL"}))
        account = one(bundle, "Account")
        patient = one(bundle, "Patient")
        assert account["guarantor"] == [{"party": {"reference": _url(bundle, patient)}}]
