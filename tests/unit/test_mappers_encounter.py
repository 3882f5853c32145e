"""PV1/PV2 → Encounter, Location, Practitioner (channels/mappers/segments/encounter.py).

Each HL7 field in the messages below is commented with its FHIR target (IG PV1[Encounter],
PV2[Encounter], PL[Location], DLD[Location-Discharge]).
"""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.bundle import Bundle as BundleR5
from fhir.resources.R4B.bundle import Bundle as BundleR4B

from channels.mappers.convert import convert_message
from channels.mappers.options import MappingOptions

V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


def _message(*segments: str, event: str = "A01") -> str:
    header = f"MSH|^~\\&|SEND|FAC|RECV|FAC|20240102030405+0100||ADT^{event}^ADT_A01|MSG1|P|2.5.1"
    return "\r".join((header, "PID|1||MR1^^^HOSP^MR||DOE^JANE", *segments)) + "\r"


def _convert(text: str, version: str = "R4B", **options: Any) -> dict[str, Any]:
    bundle = convert_message(text, MappingOptions(fhir_version=version, **options)).bundle  # type: ignore[arg-type]
    (BundleR4B if version == "R4B" else BundleR5).model_validate(bundle)
    return bundle


def _all(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _one(bundle: dict[str, Any], kind: str) -> dict[str, Any]:
    found = _all(bundle, kind)
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def _by_url(bundle: dict[str, Any], url: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == url)


def _segment(segment_id: str, fields: dict[int, str]) -> str:
    """A segment with the given fields at their numbers (the rest empty)."""
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join((segment_id, *values))


FULL_PV1 = _segment(
    "PV1",
    {
        1: "1",
        2: "I",  # PV1-2 → class IMP, status in-progress
        3: "4E^136^B^HOSP^^^MAIN^3^Window bed",  # PV1-3 → location: bed → room → level → ward → building → site
        4: "E",  # PV1-4 → type (AdmissionType)
        5: "PRE7^^^HOSP",  # PV1-5 → hospitalization.preAdmissionIdentifier
        6: "3W^301^A^HOSP",  # PV1-6 → location completed
        7: "1234^ATTEND^ANNA^^^DR",  # PV1-7 → participant ATND
        8: "5678^REFER^ROB",  # PV1-8 → participant REF
        9: "9012^CONSULT^CARL",  # PV1-9 → participant CON
        10: "MED",  # PV1-10 → serviceType (HospitalService)
        11: "XRAY^^^HOSP",  # PV1-11 → location temporary
        13: "R",  # PV1-13 → hospitalization.reAdmission
        14: "7^Physician referral",  # PV1-14 → hospitalization.admitSource
        15: "A0~A1",  # PV1-15 → hospitalization.specialArrangement
        16: "VIP",  # PV1-16 → hospitalization.specialCourtesy
        17: "3456^ADMIT^ALMA",  # PV1-17 → participant ADM
        19: "V100^^^HOSP^VN",  # PV1-19 → identifier VN
        37: "HOME&Home&HL70113",  # PV1-37 → hospitalization.destination (Location.type = DLD.1)
        38: "VEG",  # PV1-38 → hospitalization.dietPreference
        40: "O",  # PV1-40 → operationalStatus of the bed
        44: "20240101080000+0100",  # PV1-44 → period.start
        50: "ALT9^^^HOSP",  # PV1-50 → identifier
    },
)


class TestPv1ToEncounter:
    def test_class_status_type_and_identifiers(self) -> None:
        """PV1-2/4/19/50 land in class, status, type and identifier."""
        enc = _one(_convert(_message(FULL_PV1)), "Encounter")
        assert enc["class"] == {"system": V3_ACT, "code": "IMP", "display": "inpatient encounter"}
        assert enc["status"] == "in-progress"
        assert enc["type"][0]["coding"][0]["code"] == "E"
        visit = enc["identifier"][0]
        assert visit["value"] == "V100"
        assert visit["type"]["coding"][0]["code"] == "VN"
        assert visit["type"]["text"] == "visit number"
        assert enc["identifier"][1]["value"] == "ALT9"

    def test_participants_are_practitioners(self) -> None:
        """PV1-7/8/9/17 become participants with the IG's v3 ParticipationType codes."""
        bundle = _convert(_message(FULL_PV1))
        enc = _one(bundle, "Encounter")
        codes = [p["type"][0]["coding"][0]["code"] for p in enc["participant"]]
        assert codes == ["ATND", "REF", "CON", "ADM"]
        assert enc["participant"][0]["type"][0]["coding"][0]["display"] == "attender"
        assert enc["participant"][1]["type"][0]["text"] == "referrer"
        attending = _by_url(bundle, enc["participant"][0]["individual"]["reference"])
        assert attending["resourceType"] == "Practitioner"
        assert attending["name"][0]["family"] == "ATTEND"
        assert attending["identifier"][0]["value"] == "1234"
        assert all(p["type"][0]["coding"][0]["system"] == PARTICIPATION for p in enc["participant"])

    def test_period_and_hospitalization(self) -> None:
        """PV1-44 → period.start; PV1-5/13/14/15/16/38 → hospitalization."""
        enc = _one(_convert(_message(FULL_PV1)), "Encounter")
        assert enc["period"] == {"start": "2024-01-01T08:00:00+01:00"}
        hosp = enc["hospitalization"]
        assert hosp["preAdmissionIdentifier"]["value"] == "PRE7"
        assert hosp["reAdmission"]["coding"][0]["code"] == "R"
        assert hosp["admitSource"]["coding"][0]["code"] == "7"
        assert [c["coding"][0]["code"] for c in hosp["specialArrangement"]] == ["A0", "A1"]
        assert hosp["specialCourtesy"][0]["coding"][0]["code"] == "VIP"
        assert hosp["dietPreference"][0]["coding"][0]["code"] == "VEG"

    def test_discharge_destination_is_a_location(self) -> None:
        """PV1-37 (DLD) → hospitalization.destination, a Location typed by DLD.1."""
        bundle = _convert(_message(FULL_PV1))
        enc = _one(bundle, "Encounter")
        destination = _by_url(bundle, enc["hospitalization"]["destination"]["reference"])
        assert destination["type"][0]["coding"][0]["display"] == "Home"

    def test_assigned_location_is_a_partof_chain(self) -> None:
        """PV1-3 gives bed → room → level → ward → building → facility, linked by partOf."""
        bundle = _convert(_message(FULL_PV1))
        enc = _one(bundle, "Encounter")
        assigned = enc["location"][0]
        assert assigned["status"] == "active"
        chain = []
        url: str | None = assigned["location"]["reference"]
        while url:
            location = _by_url(bundle, url)
            chain.append((location["physicalType"]["coding"][0]["code"], location["identifier"][0]["value"]))
            url = location.get("partOf", {}).get("reference")
        assert chain == [("bd", "B"), ("ro", "136"), ("lvl", "3"), ("wa", "4E"), ("bu", "MAIN"), ("si", "HOSP")]
        bed = _by_url(bundle, assigned["location"]["reference"])
        assert bed["description"] == "Window bed"  # PL.9
        assert bed["operationalStatus"]["code"] == "O"  # PV1-40

    def test_location_assigning_authority(self) -> None:
        """PL.11 → identifier.assigner of every level; PL.10 (EI) keeps only EI.1 then (IG DefaultAssigner rows)."""
        pv1 = _segment("PV1", {1: "1", 2: "I", 3: "^101^^HOSP^^^^^^ENT9&NS&1.2&ISO^AUTH&1.2.3&ISO"})
        bundle = _convert(_message(pv1))
        room = _by_url(bundle, _one(bundle, "Encounter")["location"][0]["location"]["reference"])
        site = _by_url(bundle, room["partOf"]["reference"])
        authority = next(o for o in _all(bundle, "Organization") if o.get("name") == "AUTH")
        authority_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is authority)
        for identifier in room["identifier"] + site["identifier"]:
            assert identifier["assigner"] == {"reference": authority_url}  # PL.11
        assert {"value": "ENT9", "assigner": {"reference": authority_url}} in room["identifier"]  # PL.10 EI.1

    def test_prior_and_temporary_locations(self) -> None:
        """PV1-6 is completed; PV1-11 is active with the temporary classification."""
        enc = _one(_convert(_message(FULL_PV1)), "Encounter")
        statuses = [loc["status"] for loc in enc["location"]]
        assert statuses == ["active", "completed", "active"]
        assert enc["location"][2]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "temporary"

    def test_preadmit_class_plans_the_location(self) -> None:
        """PV1-2 = P makes the assigned location "planned" and the status planned."""
        enc = _one(_convert(_message("PV1|1|P|W1^^^HOSP")), "Encounter")
        assert enc["location"][0]["status"] == "planned"
        assert enc["status"] == "planned"
        assert enc["class"]["code"] == "PRENC"

    def test_discharge_time_finishes_the_encounter(self) -> None:
        """PV1-45 valued → period.end and status finished."""
        pv1 = _segment("PV1", {2: "O", 44: "20240101080000+0100", 45: "20240101100000+0100"})  # PV1-45 → end
        enc = _one(_convert(_message(pv1)), "Encounter")
        assert enc["status"] == "finished"
        assert enc["period"]["end"] == "2024-01-01T10:00:00+01:00"

    def test_cancel_admit_event_cancels(self) -> None:
        """ADT A11 (cancel admit) → status cancelled (IG MSH[Encounter], Event[EncounterStatus])."""
        enc = _one(_convert(_message("PV1|1|I", event="A11")), "Encounter")
        assert enc["status"] == "cancelled"

    def test_unknown_class_keeps_the_v2_code(self) -> None:
        """An unmapped PV1-2 keeps its v2-0004 coding; a missing one is v3-NullFlavor UNK."""
        enc = _one(_convert(_message("PV1|1|Z")), "Encounter")
        assert enc["class"] == {"system": "http://terminology.hl7.org/CodeSystem/v2-0004", "code": "Z"}
        enc = _one(_convert(_message("PV1|1", event="A08")), "Encounter")
        assert enc["class"]["code"] == "UNK"
        assert enc["status"] == "unknown"  # no PV1-2 and A08 maps to unknown

    def test_event_gives_the_status_when_the_class_cannot(self) -> None:
        """Without PV1-2 the trigger event's status applies (A01 → in-progress)."""
        enc = _one(_convert(_message("PV1|1", event="A01")), "Encounter")
        assert enc["status"] == "in-progress"

    def test_subject_is_the_patient(self) -> None:
        """Encounter.subject references the Patient of the PID before the PV1."""
        bundle = _convert(_message("PV1|1|O"))
        enc = _one(bundle, "Encounter")
        assert _by_url(bundle, enc["subject"]["reference"])["resourceType"] == "Patient"

    def test_conditional_update_on_visit_number(self) -> None:
        """A visit number with a system makes the entry a conditional update."""
        bundle = _convert(_message(_segment("PV1", {2: "O", 19: "V1^^^&1.2.3&ISO^VN"})))  # PV1-19
        entry = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter")
        assert entry["request"] == {"method": "PUT", "url": "Encounter?identifier=urn:oid:1.2.3|V1"}

    def test_invalid_admit_time_is_reported_unmapped(self) -> None:
        """A PV1-44 that is not a date is left out and reported as an unmapped field."""
        pv1 = _segment("PV1", {2: "O", 44: "notadate"})  # PV1-44 invalid
        result = convert_message(_message(pv1), MappingOptions())
        enc = next(e["resource"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == "Encounter")
        assert "period" not in enc
        assert ("PV1", "44") in result.unmapped

    def test_set_id_is_not_reported(self) -> None:
        """PV1-1 (set id) carries no data: it is not reported as unmapped."""
        result = convert_message(_message("PV1|1|O"), MappingOptions())
        assert ("PV1", "1") not in result.unmapped


class TestPv2ToEncounter:
    PV2 = _segment(
        "PV2",
        {
            1: "^^^HOSP",  # PV2-1 → location planned
            3: "^Chest pain",  # PV2-3 → reasonCode
            8: "20240105",  # PV2-8 → plannedStartDate extension
            9: "20240106",  # PV2-9 → plannedEndDate extension
            11: "4",  # PV2-11 → length (days)
            12: "Observation visit",  # PV2-12 → text.div
            13: "777^REFSRC^RITA",  # PV2-13 → participant REF
            22: "Y",  # PV2-22 → meta.security
            25: "2",  # PV2-25 → priority (EncounterPriority)
            38: "A",  # PV2-38 → encounter-modeOfArrival extension
        },
    )

    def test_pv2_enriches_the_encounter(self) -> None:
        """PV2 fields land on the Encounter of the PV1 before it."""
        bundle = _convert(_message("PV1|1|I", self.PV2))
        enc = _one(bundle, "Encounter")
        assert enc["location"][0]["status"] == "planned"
        assert enc["reasonCode"][0]["coding"][0]["display"] == "Chest pain"
        assert enc["length"] == {"value": 4, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}
        assert "Observation visit" in enc["text"]["div"]
        assert enc["participant"][-1]["type"][0]["coding"][0]["code"] == "REF"
        assert enc["priority"]["coding"][0]["code"] == "UR"
        urls = {e["url"].rsplit("/", 1)[-1] for e in enc["extension"]}
        assert {"extension-Encounter.plannedStartDate", "extension-Encounter.plannedEndDate"} <= urls
        assert "encounter-modeOfArrival" in urls

    def test_visit_description_is_escaped(self) -> None:
        """PV2-12 text becomes XHTML with markup escaped (never injected)."""
        bundle = _convert(_message("PV1|1|I", _segment("PV2", {12: "<b>x</b> & y"})))  # PV2-12
        div = _one(bundle, "Encounter")["text"]["div"]
        assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in div

    def test_protection_indicator_outside_table_0136_is_reported(self) -> None:
        """PV2-22 that is neither Y nor N gives no security label and is reported unmapped."""
        result = convert_message(_message("PV1|1|I", _segment("PV2", {22: "SEC"})), MappingOptions())  # PV2-22
        assert "meta" not in _one(result.bundle, "Encounter")
        assert ("PV2", "22") in result.unmapped

    def test_pv2_without_pv1_is_reported(self) -> None:
        """A PV2 with no Encounter before it maps nothing and reports its fields."""
        result = convert_message(_message("PV2|||^Chest pain"), MappingOptions())
        assert not [e for e in result.bundle["entry"] if e["resource"]["resourceType"] == "Encounter"]
        assert ("PV2", "3") in result.unmapped


class TestEncounterR5:
    def test_r5_shape(self) -> None:
        """R5 output moves class, period, hospitalization, participant.individual and reasons."""
        bundle = _convert(_message(FULL_PV1, "PV2|||^Chest pain"), "R5")
        enc = _one(bundle, "Encounter")
        assert enc["class"][0]["coding"][0]["code"] == "IMP"
        assert enc["actualPeriod"]["start"] == "2024-01-01T08:00:00+01:00"
        assert enc["admission"]["preAdmissionIdentifier"]["value"] == "PRE7"
        assert enc["dietPreference"][0]["coding"][0]["code"] == "VEG"
        assert "individual" not in enc["participant"][0]
        assert enc["reason"][0]["value"][0]["concept"]["coding"][0]["display"] == "Chest pain"
        locations = _all(bundle, "Location")
        assert all("form" in loc and "physicalType" not in loc for loc in locations if "form" in loc)

    @pytest.mark.parametrize("event,expected", [("A03", "completed"), ("A11", "cancelled")])
    def test_r5_status_codes(self, event: str, expected: str) -> None:
        """R4 finished becomes R5 completed; cancelled stays."""
        enc = _one(_convert(_message("PV1|1|I", event=event), "R5"), "Encounter")
        assert enc["status"] == expected
