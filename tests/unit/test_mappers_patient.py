"""PID → Patient/Account/RelatedPerson, PD1, NK1, MRG (channels/mappers/segments/patient.py)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.types import MappingError
from tests.unit.test_mappers_helpers import MSH_A01, by_name, convert_both, one, resources, segment

SD = "http://hl7.org/fhir/StructureDefinition/"
EVN = "EVN|A01|20240101120000-0500"

PID_ALL = segment(
    "PID",
    {
        1: "1",
        2: "OLD1^^^OLDSYS",
        3: "MRN1^^^HOSP^MR~ALT9^^^CLINIC^PI",
        4: "ALT4^^^X",
        5: "DOE^JANE^Q^JR^DR^^L~DOE^J^^^^^N",
        6: "SMITH^MARY",
        7: "19800215083000-0500",
        8: "F",
        10: "2106-3^White^CDCREC~2028-9^Asian^CDCREC",
        11: "1 ELM ST^^BOSTON^MA^02101^USA^H~PO BOX 9^^BOSTON^MA^02102^^M",
        12: "SUFFOLK",
        13: "^PRN^PH^^1^617^5551234~^NET^Internet^jane@example.org",
        14: "^WPN^PH^^^617^5559999",
        15: "eng^English^ISO639",
        16: "M",
        17: "CHR^Christian^HL70006",
        18: "ACCT77^^^HOSP",
        19: "123-45-6789",
        20: "D1234567^MA^20300101",
        21: "MOM1^^^HOSP",
        22: "2135-2^Hispanic or Latino^CDCREC",
        23: "BOSTON GENERAL",
        24: "Y",
        25: "2",
        26: "USA^United States^ISO3166",
        30: "N",
    },
)


def _patient(pid: str, extra: str = "", **options: Any) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    results = convert_both("\r".join([MSH_A01, EVN, pid, *([extra] if extra else [])]) + "\r", **options)
    r4 = results["R4B"]
    return r4.bundle, r4.unmapped


class TestPidToPatient:
    def test_every_ig_row(self) -> None:
        """Each valued PID field lands in the Patient element its IG row names (and validates in R4B and R5)."""
        bundle, unmapped = _patient(PID_ALL)
        patient = one(bundle, "Patient")
        identifiers = patient["identifier"]
        # PID-2 → identifier[1], PID-3 → identifier[2..], PID-4 → identifier (CX[Identifier])
        assert [i["value"] for i in identifiers[:4]] == ["OLD1", "MRN1", "ALT9", "ALT4"]
        assert identifiers[1]["system"] == "urn:id:HOSP"  # PID-3.4
        assert identifiers[1]["type"]["coding"][0]["code"] == "MR"  # PID-3.5
        # PID-19 → SSN identifier; PID-20 → driver's licence identifier
        ssn = next(i for i in identifiers if i.get("system") == "http://hl7.org/fhir/sid/us-ssn")
        assert ssn["value"] == "123-45-6789" and ssn["type"]["coding"][0]["code"] == "SS"
        dln = next(i for i in identifiers if i.get("value") == "D1234567")
        assert dln["type"]["coding"][0]["code"] == "DL" and dln["period"] == {"end": "2030-01-01"}
        # PID-5 → name[1] (use official), second repetition use nickname (XPN.7 N)
        assert patient["name"][0] == {
            "family": "DOE",
            "given": ["JANE", "Q"],
            "prefix": ["DR"],
            "suffix": ["JR"],
            "use": "official",
        }
        assert patient["name"][1]["use"] == "nickname"
        extensions = {e["url"]: e for e in patient["extension"]}
        # PID-6 → patient-mothersMaidenName
        assert extensions[SD + "patient-mothersMaidenName"]["valueString"] == "SMITH MARY"
        # PID-7 → birthDate + patient-birthTime
        assert patient["birthDate"] == "1980-02-15"
        assert patient["_birthDate"]["extension"][0] == {
            "url": SD + "patient-birthTime",
            "valueDateTime": "1980-02-15T08:30:00-05:00",
        }
        # PID-8 → gender
        assert patient["gender"] == "female"
        # PID-10 → US Core race (two ombCategory codings and text)
        race = extensions["http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"]["extension"]
        assert [p["valueCoding"]["code"] for p in race if p["url"] == "ombCategory"] == ["2106-3", "2028-9"]
        assert race[-1] == {"url": "text", "valueString": "White, Asian"}
        # PID-22 → US Core ethnicity
        ethnicity = extensions["http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"]["extension"]
        assert ethnicity[0]["valueCoding"]["code"] == "2135-2"
        # PID-11 → address (H → use home, M → type postal); PID-12 → district of the single... second address
        assert patient["address"][0]["use"] == "home" and patient["address"][0]["city"] == "BOSTON"
        assert patient["address"][1]["type"] == "postal"
        assert {"district": "SUFFOLK"} in patient["address"]
        # PID-13 → telecom (home phone, email); PID-14 → telecom (work)
        assert patient["telecom"][0]["value"] == "+1 617 5551234" and patient["telecom"][0]["use"] == "home"
        assert patient["telecom"][1] == {"system": "email", "value": "jane@example.org"}
        assert patient["telecom"][2]["use"] == "work"
        # PID-15 → communication.language
        assert patient["communication"][0]["language"]["coding"][0]["code"] == "eng"
        assert patient["communication"][0]["preferred"] is True  # PID-15 is the primary language
        # PID-16 → maritalStatus (v3 code first)
        assert patient["maritalStatus"]["coding"][0]["code"] == "M"
        # PID-17 → patient-religion
        religion = extensions[SD + "patient-religion"]["valueCodeableConcept"]["coding"]
        assert [c["code"] for c in religion] == ["1013", "CHR"]  # v3 ReligiousAffiliation first, v2 kept
        # PID-23 → patient-birthPlace
        assert extensions[SD + "patient-birthPlace"]["valueAddress"] == {"text": "BOSTON GENERAL"}
        # PID-24/PID-25 → multipleBirthInteger (PID-25 wins)
        assert patient["multipleBirthInteger"] == 2
        # PID-26 → patient-citizenship
        assert extensions[SD + "patient-citizenship"]["extension"][0]["url"] == "code"
        # PID-30 → deceasedBoolean (PID-29 empty)
        assert patient["deceasedBoolean"] is False
        # PID-18 → Account.identifier, subject → the Patient
        account = one(bundle, "Account")
        assert account["identifier"][0]["value"] == "ACCT77" and account["status"] == "active"
        patient_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is patient)
        assert account["subject"] == [{"reference": patient_url}]
        # PID-21 → RelatedPerson (mother)
        mother = one(bundle, "RelatedPerson")
        assert mother["identifier"][0]["value"] == "MOM1"
        assert mother["relationship"][0]["coding"][0]["code"] == "MTH"
        assert mother["patient"] == {"reference": patient_url}
        # nothing valued in PID is left unreported
        assert [f for s, f in unmapped if s == "PID"] == []

    def test_death_date_and_birth_time_without_zone(self) -> None:
        """PID-29 → deceasedDateTime; a zone-less birth time keeps the date plus originalText."""
        bundle, _ = _patient(segment("PID", {1: "1", 3: "M1", 5: "DOE^JOHN", 7: "19700101123000", 29: "20240102"}))
        patient = one(bundle, "Patient")
        assert patient["deceasedDateTime"] == "2024-01-02"  # PID-29
        assert patient["birthDate"] == "1970-01-01"  # PID-7
        assert patient["_birthDate"]["extension"][0]["valueString"] == "19700101123000"

    def test_last_update_facility_gives_a_patient_provenance(self) -> None:
        """IG PID[Provenance-Patient]: PID-34 → agent (performer Organization), PID-33 → occurred, activity UPDATE."""
        pid = segment("PID", {1: "1", 3: "M1", 5: "DOE^JANE", 33: "20240102030405-0500", 34: "UPD FAC^1.2.3^ISO"})
        bundle, unmapped = _patient(pid)
        patient = one(bundle, "Patient")
        urls = {id(e["resource"]): e["fullUrl"] for e in bundle["entry"]}
        provenances = [p for p in resources(bundle, "Provenance") if p["target"] == [{"reference": urls[id(patient)]}]]
        assert len(provenances) == 1
        provenance = provenances[0]
        assert provenance["activity"]["coding"] == [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "UPDATE"}
        ]
        assert provenance["occurredDateTime"] == "2024-01-02T03:04:05-05:00"  # PID-33
        assert provenance["recorded"] == "2024-01-01T12:00:00-05:00"  # MSH-7 stands in for the transformation time
        agent = provenance["agent"][0]
        assert agent["type"]["coding"][0]["code"] == "performer"
        assert agent["who"] == {"reference": urls[id(by_name(bundle, "Organization", "UPD FAC"))]}  # PID-34
        assert ("PID", "33") not in unmapped and ("PID", "34") not in unmapped

    def test_last_update_time_alone_is_reported(self) -> None:
        """PID-33 without PID-34 makes no Provenance (IG condition) and is reported unmapped."""
        bundle, unmapped = _patient(segment("PID", {1: "1", 3: "M1", 33: "20240102030405-0500"}))
        patient_provenance = [p for p in resources(bundle, "Provenance") if p.get("activity", {}).get("coding")]
        assert all(c.get("code") != "UPDATE" for p in patient_provenance for c in p["activity"]["coding"])
        assert ("PID", "33") in unmapped

    def test_invalid_values_are_reported_not_invented(self) -> None:
        """An invalid PID-7 or PID-8 is left out of the Patient and reported as an unmapped field."""
        bundle, unmapped = _patient("PID|1||M1||DOE^JOHN||19701340|Q")
        patient = one(bundle, "Patient")
        assert "birthDate" not in patient and "gender" not in patient
        assert ("PID", "7") in unmapped and ("PID", "8") in unmapped

    def test_gender_code_table_override(self) -> None:
        """A channel's table 0001 override maps a local code."""
        bundle, _ = _patient("PID|1||M1||DOE^JOHN|||X", code_tables={"0001": {"X": "other"}})
        assert one(bundle, "Patient")["gender"] == "other"

    def test_identifier_system_option(self) -> None:
        """identifier_systems turns PID-3's assigning authority into the configured system and a conditional update."""
        results = convert_both(
            MSH_A01 + "\rPID|1||M1^^^HOSP||DOE^JOHN\r", identifier_systems={"HOSP": "https://hosp.example/mrn"}
        )
        entry = next(e for e in results["R4B"].bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        assert entry["resource"]["identifier"][0]["system"] == "https://hosp.example/mrn"
        assert entry["request"] == {"method": "PUT", "url": "Patient?identifier=https://hosp.example/mrn|M1"}


class TestPd1ToPatient:
    def test_every_ig_row(self) -> None:
        """PD1-3/-4 → generalPractitioner, PD1-6 → patient-disability, PD1-14 → patient-congregation."""
        pd1 = "PD1|||FAMILY CLINIC^^55|1234^WELBY^MARCUS^^^DR||DIS^Disabled^L||||||||ST MARY"
        bundle, unmapped = _patient("PID|1||M1||DOE^JOHN", pd1)
        patient = one(bundle, "Patient")
        assert len(patient["generalPractitioner"]) == 2
        assert by_name(bundle, "Organization", "FAMILY CLINIC")["identifier"][0]["value"] == "55"  # PD1-3
        assert one(bundle, "Practitioner")["name"][0]["family"] == "WELBY"  # PD1-4
        urls = {e["url"] for e in patient["extension"]}
        assert {SD + "patient-disability", SD + "patient-congregation"} <= urls  # PD1-6, PD1-14
        assert [f for s, f in unmapped if s == "PD1"] == []


class TestNk1ToRelatedPerson:
    def test_every_ig_row(self) -> None:
        """NK1-2..-16, -20, -33, -37 land in the RelatedPerson; the same person in Patient.contact."""
        nk1 = segment(
            "NK1",
            {
                1: "1",
                2: "DOE^JOHN^A",
                3: "SPO^Spouse^HL70063",
                4: "2 OAK ST^^BOSTON^MA^02101",
                5: "^PRN^PH^^^617^5550000",
                6: "^WPN^PH^^^617^5551111",
                7: "C^Emergency Contact^HL70131",
                8: "20200101",
                9: "20301231",
                12: "NK12^^^HOSP",
                15: "M",
                16: "19790101",
                20: "eng^English^ISO639",
                37: "999-88-7777",
            },
        )
        bundle, unmapped = _patient("PID|1||M1||DOE^JANE", nk1)
        person = one(bundle, "RelatedPerson")
        assert person["name"][0]["family"] == "DOE"  # NK1-2 → name
        assert person["relationship"][0]["coding"][0]["code"] == "SPS"  # NK1-3 → relationship (v3 SPS)
        assert person["relationship"][1]["coding"][0]["code"] == "C"  # NK1-7 → relationship[2]
        assert person["address"][0]["city"] == "BOSTON"  # NK1-4 → address
        assert person["telecom"][1]["use"] == "work"  # NK1-6 → telecom (work)
        assert person["period"] == {"start": "2020-01-01", "end": "2030-12-31"}  # NK1-8/9 → period
        assert person["identifier"][0]["value"] == "NK12"  # NK1-12 → identifier
        assert person["identifier"][1]["system"] == "http://hl7.org/fhir/sid/us-ssn"  # NK1-37
        assert person["gender"] == "male"  # NK1-15 → gender
        assert person["birthDate"] == "1979-01-01"  # NK1-16 → birthDate
        assert person["communication"][0]["language"]["coding"][0]["code"] == "eng"  # NK1-20
        contact = one(bundle, "Patient")["contact"][0]  # NK1[Patient] → Patient.contact
        assert contact["name"]["family"] == "DOE" and contact["relationship"][0]["coding"][0]["code"] == "SPS"
        assert [f for s, f in unmapped if s == "NK1"] == []

    def test_organisation_contact_only_in_patient_contact(self) -> None:
        """An employer NK1 (NK1-3 EMR) gives a Patient.contact with its organization, no RelatedPerson."""
        nk1 = "NK1|1||EMR^Employer^HL70063||||||||||ACME CORP"
        bundle, _ = _patient("PID|1||M1||DOE^JANE", nk1)
        assert resources(bundle, "RelatedPerson") == []
        contact = one(bundle, "Patient")["contact"][0]
        assert "organization" in contact and by_name(bundle, "Organization", "ACME CORP")  # NK1-13

    def test_nk1_before_pid_is_a_mapping_error(self) -> None:
        """NK1 needs the Patient of a PID before it: MappingError naming NK1."""
        with pytest.raises(MappingError) as info:
            convert_both(MSH_A01.replace("ADT^A01^ADT_A01", "ZZZ^Z01") + "\rNK1|1|DOE^JOHN\r")
        assert info.value.segment == "NK1"


class TestMrgToPatientLink:
    def test_a40_merge(self) -> None:
        """A40: MRG-1 → prior Patient (inactive, replaced-by), survivor links replaces; MRG-3 → Account."""
        msh = MSH_A01.replace("ADT^A01^ADT_A01", "ADT^A40^ADT_A39")
        mrg = segment("MRG", {1: "OLD1^^^HOSP", 3: "OLDACCT", 7: "DOE^JAYNE"})
        results = convert_both(msh + "\rEVN|A40\rPID|1||NEW1^^^HOSP||DOE^JANE\r" + mrg + "\r")
        bundle = results["R4B"].bundle
        survivor, prior = resources(bundle, "Patient")
        urls = {id(e["resource"]): e["fullUrl"] for e in bundle["entry"]}
        assert prior["identifier"][0]["value"] == "OLD1" and prior["active"] is False  # MRG-1
        assert prior["name"][0]["family"] == "DOE"  # MRG-7
        assert prior["link"] == [{"other": {"reference": urls[id(survivor)]}, "type": "replaced-by"}]
        assert survivor["link"] == [{"other": {"reference": urls[id(prior)]}, "type": "replaces"}]
        assert one(bundle, "Account")["identifier"][0]["value"] == "OLDACCT"  # MRG-3 → Account

    def test_a40_old_identifiers_and_conditional_match(self) -> None:
        """The prior identifiers are use old on both Patients; the prior entry still matches on MRG-1."""
        msh = MSH_A01.replace("ADT^A01^ADT_A01", "ADT^A40^ADT_A39")
        results = convert_both(msh + "\rPID|1||NEW1^^^HOSP\rMRG|OLD1^^^HOSP")
        bundle = results["R4B"].bundle
        survivor, prior = resources(bundle, "Patient")
        old = {"system": "urn:id:HOSP", "assigner": {"display": "HOSP"}, "value": "OLD1", "use": "old"}
        assert prior["identifier"] == [old]
        assert survivor["active"] is True and old in survivor["identifier"]
        prior_entry = next(e for e in bundle["entry"] if e["resource"] is prior)
        assert prior_entry["request"] == {"method": "PUT", "url": "Patient?identifier=urn:id:HOSP|OLD1"}

    def test_a40_without_mrg_is_reported(self) -> None:
        """A40 without MRG maps its PID and reports (MRG, "missing")."""
        msh = MSH_A01.replace("ADT^A01^ADT_A01", "ADT^A40^ADT_A39")
        result = convert_both(msh + "\rPID|1||NEW1\r")["R4B"]
        assert len(resources(result.bundle, "Patient")) == 1
        assert ("MRG", "missing") in result.unmapped

    def test_a40_mrg_without_prior_identifier_is_a_mapping_error(self) -> None:
        """An A40 MRG whose MRG-1, -2 and -4 are empty cannot express the merge: MappingError naming MRG-1."""
        msh = MSH_A01.replace("ADT^A01^ADT_A01", "ADT^A40^ADT_A39")
        with pytest.raises(MappingError) as info:
            convert_both(msh + "\rPID|1||NEW1\rMRG|||ACCT")
        assert (info.value.segment, info.value.field) == ("MRG", "1")
