"""Time rules of tests/corpus/ig_alignment.py: which v2 timestamp a ReportStream "…Z" came from."""

from __future__ import annotations

from typing import Any

from tests.corpus import ig_alignment

_MSH = "MSH|^~\\&|||||20230501102531-0400||ORU^R01^ORU_R01|1|P|2.5.1"


def _aligned(value: str, segment: str) -> tuple[Any, list[str]]:
    expected = {"entry": [{"resource": {"resourceType": "Observation", "valueDateTime": value}}]}
    aligned, rules = ig_alignment.align_cdc(expected, _MSH + "\r" + segment + "\r")
    return aligned["entry"][0]["resource"].get("valueDateTime"), rules


class TestTimeRules:
    def test_zoneless_value_sharing_a_prefix_with_msh7(self) -> None:
        """A zoneless OBX value (2023050110) is compared as a date although MSH-7 starts alike and has an offset."""
        assert _aligned("2023-05-01T10:00:00Z", "OBX|1|DT|X^Y^LN||2023050110") == (
            "2023-05-01",
            ["zoneless-time-as-utc"],
        )

    def test_plus_zero_offset_kept_as_sent(self) -> None:
        """A value sent with +0000 is compared in the +00:00 form, not as a date."""
        assert _aligned("2021-06-24T19:48:00Z", "OBX|1|DTM|X^Y^LN||20210624194800+0000") == (
            "2021-06-24T19:48:00+00:00",
            ["utc-offset-form"],
        )

    def test_other_offset_untouched(self) -> None:
        """A "…Z" whose v2 source has a non-zero offset is a real instant: left as ReportStream wrote it."""
        assert _aligned("2023-05-01T10:25:31Z", "OBX|1|DTM|X^Y^LN||20230501102531-0400") == (
            "2023-05-01T10:25:31Z",
            [],
        )


def _align(resources: list[dict[str, Any]], *segments: str) -> tuple[list[dict[str, Any]], list[str]]:
    aligned, rules = ig_alignment.align_cdc(
        {"entry": [{"resource": r} for r in resources]}, "\r".join((_MSH, *segments))
    )
    return [e["resource"] for e in aligned["entry"]], rules


class TestRowRules:
    def test_pid21_mothers_merged_and_unlinked(self) -> None:
        """PID-21 repetitions linked seealso from Patient become one mother RelatedPerson, no link."""
        patient = {
            "resourceType": "Patient",
            "id": "p",
            "link": [{"other": {"reference": f"RelatedPerson/{n}"}, "type": "seealso"} for n in ("a", "b")],
        }
        mothers = [{"resourceType": "RelatedPerson", "id": n, "identifier": [{"value": n}]} for n in ("a", "b")]
        resources, rules = _align([patient, *mothers], "PID|1||X" + "|" * 18 + "A~B")
        assert rules == ["mother-one-related-person"]
        assert resources == [
            {"resourceType": "Patient", "id": "p"},
            {"resourceType": "RelatedPerson", "id": "a", "identifier": [{"value": "a"}, {"value": "b"}]},
        ]

    def test_pid21_rule_needs_pid21(self) -> None:
        """Without PID-21 a Patient.link is left as ReportStream wrote it."""
        link = [{"other": {"reference": "RelatedPerson/a"}, "type": "seealso"}]
        resources, rules = _align(
            [{"resourceType": "Patient", "id": "p", "link": link}, {"resourceType": "RelatedPerson", "id": "a"}],
            "PID|1||X",
        )
        assert rules == [] and resources[0]["link"] == link

    def test_orc4_moves_to_requisition(self) -> None:
        """An identifier typed PGN holding ORC-4.1 becomes ServiceRequest.requisition."""
        pgn = {"type": {"coding": [{"code": "PGN"}]}, "value": "G1"}
        request = {"resourceType": "ServiceRequest", "identifier": [{"value": "P1"}, pgn]}
        resources, rules = _align([request], "PID|1", "ORC|NW|P1||G1^NS")
        assert rules == ["placer-group-number-requisition"]
        assert resources == [{"resourceType": "ServiceRequest", "identifier": [{"value": "P1"}], "requisition": pgn}]

    def test_collector_comment_compared_as_the_full_field(self) -> None:
        """OBR-39 "4438, Comment" (ReportStream) is compared as the field text "4438^Comment"."""
        specimen = {"resourceType": "Specimen", "note": [{"text": "4438, Comment"}, {"text": "other"}]}
        resources, rules = _align([specimen], "OBR|1" + "|" * 38 + "4438^Comment")
        assert rules == ["collector-comment-full-field"]
        assert resources[0]["note"] == [{"text": "4438^Comment"}, {"text": "other"}]


class TestParticipationRules:
    def test_zoneless_obr7_beside_offset_obx14(self) -> None:
        """A "…Z" with the digits of a zoneless OBR-7 is a date even when OBX-14 has the same digits with -0500."""
        value, rules = _aligned(
            "2023-05-06T05:00:00Z",
            "OBR|1|X||C^D^LN|||20230506050000\rOBX|1|ST|A^B^LN||x" + "|" * 9 + "20230506050000-0500",
        )
        assert (value, rules) == ("2023-05-06", ["zoneless-time-as-utc"])

    def test_plain_prt10_compared_as_identifier(self) -> None:
        """A PRT-10 value without UDI lead characters moves from udiCarrier to identifier; a UDI stays."""
        device = {"resourceType": "Device", "udiCarrier": [{"deviceIdentifier": "D1"}, {"deviceIdentifier": "+H1"}]}
        resources, rules = _align([device], "PID|1", "OBX|1", "PRT|1" + "|" * 9 + "D1~+H1")
        assert rules == ["device-identifier-not-udi"]
        assert resources[0]["udiCarrier"] == [{"deviceIdentifier": "+H1"}]
        assert resources[0]["identifier"] == [{"value": "D1"}]

    def test_prt5_related_person_compared_as_practitioner(self) -> None:
        """An observation-group PRT-5 RelatedPerson is compared as a Practitioner; after PID it is left."""
        person = {"resourceType": "RelatedPerson", "identifier": [{"value": "123"}], "name": [{"family": "SMITH"}]}
        resources, rules = _align([dict(person)], "PID|1", "OBX|1", "PRT|1||||123^SMITH")
        assert rules == ["observation-participant-practitioner"] and resources[0]["resourceType"] == "Practitioner"
        resources, rules = _align([dict(person)], "PID|1", "PRT|1||||123^SMITH")
        assert rules == [] and resources[0]["resourceType"] == "RelatedPerson"


class TestPractitionerRoleRules:
    def test_performer_function_moves_to_the_reference(self) -> None:
        """An OBR-34 event-performerFunction on a PractitionerRole moves onto the performer Reference."""
        function = {"url": ig_alignment.SD + "event-performerFunction", "valueCodeableConcept": {"text": "SPRF"}}
        role = {"resourceType": "PractitionerRole", "id": "r", "extension": [function]}
        report = {"resourceType": "DiagnosticReport", "performer": [{"reference": "PractitionerRole/r"}]}
        resources, rules = _align([report, role], "PID|1", "OBR|1" + "|" * 33 + "1&TECH")
        assert "performer-function-on-reference" in rules
        assert resources[0]["performer"] == [{"reference": "PractitionerRole/r", "extension": [function]}]
        assert "extension" not in resources[1]

    def test_ndl_practitioners_merged_only_on_ndl_identifiers(self) -> None:
        """Practitioners sharing an OBR-33 CNN.1 identifier merge; others sharing a different identifier stay apart."""

        def person(pid: str, value: str, family: str) -> dict[str, Any]:
            name = [{"family": family}]
            return {"resourceType": "Practitioner", "id": pid, "identifier": [{"value": value}], "name": name}

        role = {"resourceType": "PractitionerRole", "id": "r", "practitioner": {"reference": "Practitioner/b"}}
        report = {
            "resourceType": "DiagnosticReport",
            "resultsInterpreter": [{"reference": "PractitionerRole/r"}],
            "performer": [{"reference": f"Practitioner/{p}"} for p in "acd"],
        }
        people = [person("a", "123", "A"), person("b", "123", "B"), person("c", "1", "C"), person("d", "1", "D")]
        resources, rules = _align([report, role, *people], "PID|1", "OBR|1" + "|" * 31 + "123&A~123&B")
        assert "same-identifier-practitioners" in rules
        families = [[n["family"] for n in r["name"]] for r in resources if r["resourceType"] == "Practitioner"]
        assert families == [["A", "B"], ["C"], ["D"]]
        assert resources[1]["practitioner"] == {"reference": "Practitioner/a"}

    def test_repeated_ordering_provider_merged_only_with_the_same_name(self) -> None:
        """An ORC-12 / OBR-16 identifier held by two Practitioners of one name merges; two names stay apart."""

        def person(pid: str, family: str, **more: Any) -> dict[str, Any]:
            return {
                "resourceType": "Practitioner",
                "id": pid,
                "identifier": [{"value": "9"}],
                "name": [{"family": family}],
                **more,
            }

        orders = [{"resourceType": "ServiceRequest", "requester": {"reference": f"Practitioner/{p}"}} for p in "ab"]
        orc, obr = "ORC|RE" + "|" * 11 + "9^LAB", "OBR|1" + "|" * 15 + "9^LAB"
        same = [person("a", "LAB", address=[{"city": "X"}]), person("b", "LAB")]
        resources, rules = _align([*orders, *same], "PID|1", orc, obr)
        assert "same-identifier-practitioners" in rules
        assert [r["id"] for r in resources if r["resourceType"] == "Practitioner"] == ["a"]
        different = [person("a", "LAB"), person("b", "OTHER")]
        resources, rules = _align([*orders, *different], "PID|1", orc, obr)
        assert "same-identifier-practitioners" not in rules
        assert [r["id"] for r in resources if r["resourceType"] == "Practitioner"] == ["a", "b"]


class TestTextAndDuplicateRules:
    def test_line_break_command_compared_decoded(self) -> None:
        """A `\\.br\\` kept by ReportStream is compared as the line break ours decodes it to."""
        observation = {"resourceType": "Observation", "valueString": "A\\.br\\B"}
        resources, rules = _align([observation], "PID|1", "OBX|1|TX|X^Y^LN||A\\.br\\B")
        assert rules == ["line-break-decoded"]
        assert resources[0]["valueString"] == "A\nB"

    def test_identical_spm_specimens_count_once_but_obr_specimens_do_not_merge(self) -> None:
        """Two identical Specimens with SPM-2 identifiers become one; identical identifier-less OBR Specimens stay."""
        spm = {"resourceType": "Specimen", "identifier": [{"value": "S1"}], "type": {"text": "Blood"}}
        obr = {"resourceType": "Specimen", "collection": {"collectedDateTime": "2023-07-24"}}
        specimens = [dict(spm, id="1"), dict(spm, id="2"), dict(obr, id="3"), dict(obr, id="4")]
        resources, rules = _align(specimens, "PID|1")
        assert "duplicate-resources" in rules
        assert [r["id"] for r in resources] == ["1", "3", "4"]

    def test_not_applicable_sex_compared_as_other(self) -> None:
        """NK1-15 N: ReportStream's gender unknown is compared as the IG's other; without N it stays."""
        person = {"resourceType": "RelatedPerson", "gender": "unknown"}
        resources, rules = _align([dict(person)], "PID|1", "NK1|1|DOE^J" + "|" * 13 + "N")
        assert "administrative-sex-not-applicable" in rules and resources[0]["gender"] == "other"
        resources, rules = _align([dict(person)], "PID|1", "NK1|1|DOE^J" + "|" * 13 + "U")
        assert "administrative-sex-not-applicable" not in rules and resources[0]["gender"] == "unknown"

    def test_personal_number_compared_as_mobile(self) -> None:
        """PID-13 XTN.2 PRS: ReportStream's home default is compared as the IG map's mobile."""
        patient = {"resourceType": "Patient", "telecom": [{"system": "phone", "value": "555", "use": "home"}]}
        resources, rules = _align([patient], "PID|1" + "|" * 12 + "555^PRS^PH")
        assert "telecom-use-default" in rules
        assert resources[0]["telecom"][0]["use"] == "mobile"

    def test_empty_discharge_location_goes_with_its_reference(self) -> None:
        """PV1-37 without DLD.1: the empty destination Location and the reference to it go."""
        encounter = {"resourceType": "Encounter", "hospitalization": {"destination": {"reference": "Location/l"}}}
        location = {"resourceType": "Location", "id": "l"}
        resources, rules = _align([encounter, location], "PID|1", "PV1|1|O" + "|" * 35 + "^202305061200")
        assert "empty-discharge-location" in rules
        assert resources == [{"resourceType": "Encounter"}]
