"""PID → Patient (+ Account, + mother RelatedPerson), PD1 → Patient, NK1 → RelatedPerson and
Patient.contact, MRG → Patient.link (A40 merge).

IG rows: PID[Patient] (every row), PID[Account], CX[RelatedPerson-Mother], PD1[Patient],
NK1[RelatedPerson], NK1[Patient], MRG[Account] (HL7 v2 ch. 3.4.2 PID, 3.4.10 PD1, 3.4.5 NK1,
3.4.9 MRG).

Choices where the IG leaves room:
- PID-10 race / PID-22 ethnicity → US Core extensions (us-core-race / us-core-ethnicity):
  CDC race & ethnicity codes (CWE.3 CDCREC, HL70005, HL70189 or empty with a CDC-shaped code)
  of the OMB categories → ``ombCategory``, other CDC codes → ``detailed``, every text →
  ``text`` (required). Table 0189 H/N/U map to 2135-2 / 2186-5 / UNK.
- PID-7 with a time but no zone (and no channel ``timezone``): birthDate keeps the date and
  carries the v2 text as ``originalText`` instead of a patient-birthTime with a guessed zone.
- PID-15 (primary language) → communication.language with ``preferred: true``: the IG row's
  comment allows it "if you know that the value in PID-15 is the preferred patient
  language", and v2 defines PID-15 as the patient's primary language.
- PID-19 SSN: system http://hl7.org/fhir/sid/us-ssn (the IG's URI without its trailing dot),
  type SS.
- PID-27, PID-31, PID-32 have no FHIR target in the IG (reported as unmapped fields).
- PID-33/34 → a Provenance for the Patient when PID-34 is valued (see _pid_provenance).
- MRG (A40/A34/A35/A47 family; the IG maps only MRG[Account]): a Patient for the
  merged-away record (identifiers MRG-1, MRG-2, MRG-4 with use old, matched on the first of
  them; name MRG-7; active false; link replaced-by → surviving Patient) and the surviving
  Patient gets link replaces → it, the old identifiers (searchable by them) and active true.
  MRG-3 → Account (IG MRG[Account], status unknown). MRG-5/MRG-6 (visit numbers) are left
  to the encounter maps.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from channels.mappers.datatypes import (
    SD,
    code_of,
    cwe_to_codeable_concept,
    cx_to_identifier,
    dln_to_identifier,
    dt_to_date,
    dtm_to_datetime,
    dtm_to_instant,
    hd_of,
    hd_to_organization,
    id_to_boolean,
    nm_to_number,
    put_datetime,
    xad_to_address,
    xcn_to_practitioner,
    xon_to_organization,
    xpn_called_by,
    xpn_to_human_name,
    xpn_to_string,
    xtn_to_contact_point,
)
from channels.mappers.messages import MappingContext, segment_mapper
from channels.mappers.options import Settings
from channels.mappers.v2 import Repetition, Segment
from channels.mappers.vocab import v2_table_system
from engine.types import MappingError

US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
CDCREC = "urn:oid:2.16.840.1.113883.6.238"
NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
US_SSN = "http://hl7.org/fhir/sid/us-ssn"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
OMB_RACE = {
    "1002-5": "American Indian or Alaska Native",
    "2028-9": "Asian",
    "2054-5": "Black or African American",
    "2076-8": "Native Hawaiian or Other Pacific Islander",
    "2106-3": "White",
}
OMB_ETHNICITY = {"2135-2": "Hispanic or Latino", "2186-5": "Not Hispanic or Latino"}
_ETHNICITY_0189 = {"H": "2135-2", "N": "2186-5"}
_NULL_CODES = {"UNK": "Unknown", "ASKU": "Asked but no answer", "U": "Unknown"}
_CDC_CODE = re.compile(r"^\d{4}-\d$")
_CDC_SYSTEMS = {"CDCREC", "HL70005", "HL70189", "2.16.840.1.113883.6.238", CDCREC}
_ORGANIZATION_CONTACTS = {"EMR", "E", "F", "I", "S"}  # IG NK1 condition on NK1-3.1
# Events whose MRG names a prior patient (HL7 v2 ch. 3.3.34-3.3.40): MRG-1 is required there.
_PATIENT_MERGE_EVENTS = frozenset({"A30", "A34", "A36", "A39", "A40", "A46", "A47"})


# ---------------------------------------------------------------- shared pieces


def _clone(node: Any) -> Any:
    """Copy of a JSON-shaped value (cheaper than copy.deepcopy: no memo, no reduce protocol)."""
    if type(node) is dict:
        return {k: _clone(v) for k, v in node.items()}
    if type(node) is list:
        return [_clone(v) for v in node]
    return node


def ssn_identifier(value: str) -> dict[str, Any]:
    """IG PID-19 / NK1-37: SSN → identifier (type SS, system us-ssn)."""
    return {
        "type": {"coding": [{"system": v2_table_system("0203"), "code": "SS"}]},
        "system": US_SSN,
        "value": value,
    }


_FHIR_GENDERS = frozenset({"male", "female", "other", "unknown"})


def _gender(value: Repetition | str, s: Settings) -> str | None:
    """IG CWE[code] via AdministrativeSex (table 0001); a FHIR code sent as is (``female``) is kept."""
    code = value if isinstance(value, str) else (value.component(1) or value.component(4))
    found = code_of(code, s, "AdministrativeSex") or code_of(code.upper(), s, "AdministrativeSex")
    if found is None and code.lower() in _FHIR_GENDERS:
        return code.lower()
    return found


def _names(seg: Segment, number: int, s: Settings) -> list[dict[str, Any]]:
    names: list[dict[str, Any]] = []
    for rep in seg.field(number):
        name = xpn_to_human_name(rep, s)
        if name is not None:
            names.append(name)
        called = xpn_called_by(rep)
        if called is not None:
            names.append(called)
    return names


# Plain loops in these per-field helpers: they run for most fields of PID, NK1, MRG, and a
# generator inside a comprehension costs two frames per call.


def _telecom(seg: Segment, number: int, s: Settings, default_use: str | None = None) -> list[dict[str, Any]]:
    points = []
    for rep in seg.field(number):
        point = xtn_to_contact_point(rep, s, default_use)
        if point is not None:
            points.append(point)
    return points


def _each_repetition(
    seg: Segment, number: int, s: Settings,
    datatype_map: Callable[[Repetition, Settings], dict[str, Any] | None],
) -> list[dict[str, Any]]:
    """`datatype_map` over every repetition of field `number`, the ones it maps."""
    return [element for rep in seg.field(number) if (element := datatype_map(rep, s)) is not None]


def _addresses(seg: Segment, number: int, s: Settings) -> list[dict[str, Any]]:
    return _each_repetition(seg, number, s, xad_to_address)


def _identifiers(seg: Segment, number: int, s: Settings) -> list[dict[str, Any]]:
    return _each_repetition(seg, number, s, cx_to_identifier)


# ---------------------------------------------------------------- race and ethnicity


def _cdc_coding(rep: Repetition, omb: dict[str, str]) -> tuple[str, dict[str, Any]] | None:
    """("ombCategory" | "detailed", Coding) for a CDC race/ethnicity code, else None."""
    for code_i, text_i, sys_i in ((1, 2, 3), (4, 5, 6)):
        code, system = rep.component(code_i), rep.component(sys_i).upper()
        if not code:
            continue
        if code in _NULL_CODES and system in ("", "NULLFL", "HL70005", "HL70189", "CDCREC"):
            null_code = "UNK" if code == "U" else code
            return "ombCategory", {"system": NULL_FLAVOR, "code": null_code, "display": _NULL_CODES[code]}
        if system in _CDC_SYSTEMS or (not system and _CDC_CODE.match(code)):
            if not _CDC_CODE.match(code):
                continue
            coding = {"system": CDCREC, "code": code}
            display = omb.get(code) or rep.component(text_i)
            if display:
                coding["display"] = display
            return ("ombCategory" if code in omb else "detailed"), coding
    return None


def _race_or_ethnicity(reps: list[Repetition], url: str, omb: dict[str, str]) -> dict[str, Any] | None:
    """US Core race / ethnicity extension from every repetition of PID-10 / PID-22."""
    parts: list[dict[str, Any]] = []
    texts: list[str] = []
    for rep in reps:
        found = _cdc_coding(rep, omb)
        if found is not None:
            kind, coding = found
            parts.append({"url": kind, "valueCoding": coding})
        text = rep.component(9) or rep.component(2) or (found[1].get("display", "") if found else "")
        text = text or rep.component(1)
        if text and text not in texts:
            texts.append(text)
    if not parts and not texts:
        return None
    parts.append({"url": "text", "valueString": ", ".join(texts) or "unknown"})
    return {"url": url, "extension": parts}


def _ethnicity_reps(seg: Segment) -> list[Repetition]:
    """PID-22 repetitions with table 0189 H/N rewritten to their CDC codes."""
    out = []
    for rep in seg.field(22):
        code, system = rep.component(1), rep.component(3).upper()
        if code in _ETHNICITY_0189 and system in ("", "HL70189"):
            cdc = _ETHNICITY_0189[code]
            text = rep.component(2) or OMB_ETHNICITY[cdc]
            delims = seg.delims
            out.append(Repetition(delims.component.join([cdc, text, "CDCREC"]), delims))
        else:
            out.append(rep)
    return out


# ---------------------------------------------------------------- PID


def _codeable_extension(url: str, sub_url: str, concept: dict[str, Any]) -> dict[str, Any]:
    return {"url": url, "extension": [{"url": sub_url, "valueCodeableConcept": concept}]}


@segment_mapper("PID", summary="PID → Patient, Account, mother RelatedPerson (IG PID[Patient], PID[Account])")
def pid_to_patient(pid: Segment, ctx: MappingContext) -> None:
    """IG PID[Patient] rows PID-1..PID-40, PID[Account] row PID-18, CX[RelatedPerson-Mother] PID-21."""
    s = ctx.settings
    patient: dict[str, Any] = {"resourceType": "Patient"}
    extensions: list[dict[str, Any]] = []
    pid.mark_used(1)  # PID-1 set id: segment order, no data
    # PID-2, PID-3, PID-4 → identifier (CX[Identifier]); PID-19 → SSN; PID-20 → DLN
    identifiers = _identifiers(pid, 2, s) + _identifiers(pid, 3, s) + _identifiers(pid, 4, s)
    ssn = pid.value(19)
    if ssn:
        identifiers.append(ssn_identifier(ssn))
    for rep in pid.field(20):
        dln = dln_to_identifier(rep, s)
        if dln is not None:
            identifiers.append(dln)
    if identifiers:
        patient["identifier"] = identifiers
    # PID-5 → name[1]; PID-9 (alias) → name[2] (XPN[HumanName])
    names = _names(pid, 5, s) + _names(pid, 9, s)
    if names:
        patient["name"] = names
    # PID-6 → patient-mothersMaidenName (XPN[string])
    maiden = xpn_to_string(pid.rep(6))
    if maiden:
        extensions.append({"url": SD + "patient-mothersMaidenName", "valueString": maiden})
    # PID-7 → birthDate; length > 8 → birthDate patient-birthTime extension
    birth = pid.value(7)
    if birth:
        birth_date = dt_to_date(birth)
        if birth_date is None:
            ctx.reject(pid, 7)
        else:
            patient["birthDate"] = birth_date
            if len(birth.strip()) > 8:
                birth_time = dtm_to_datetime(birth, s)
                if birth_time is not None and birth_time.original is None and "T" in birth_time.value:
                    patient["_birthDate"] = {
                        "extension": [{"url": SD + "patient-birthTime", "valueDateTime": birth_time.value}]
                    }
                elif birth_time is not None and birth_time.original is not None:
                    patient["_birthDate"] = birth_time.primitive_extension()
    # PID-8 → gender (AdministrativeSex)
    if pid.field(8):
        gender = _gender(pid.rep(8), s)
        if gender is None:
            ctx.reject(pid, 8)
        else:
            patient["gender"] = gender
    # PID-10 → US Core race; PID-22 → US Core ethnicity
    race = _race_or_ethnicity(pid.field(10), US_CORE_RACE, OMB_RACE)
    if race is not None:
        extensions.append(race)
    ethnicity = _race_or_ethnicity(_ethnicity_reps(pid), US_CORE_ETHNICITY, OMB_ETHNICITY)
    if ethnicity is not None:
        extensions.append(ethnicity)
    # PID-11 → address (XAD); PID-12 → address.district (IG conditions)
    addresses = _addresses(pid, 11, s)
    county = pid.value(12)
    if county:
        first_county = pid.rep(11).component(9) if pid.field(11) else ""
        if len(addresses) == 1 and not first_county:
            addresses[0]["district"] = county
        elif not addresses or first_county != county or len(addresses) > 1:
            addresses.append({"district": county})
    if addresses:
        patient["address"] = addresses
    # PID-13 → telecom (home unless XTN.2); PID-14 → telecom (work); PID-40 → telecom
    telecom = _telecom(pid, 13, s, "home") + _telecom(pid, 14, s, "work") + _telecom(pid, 40, s)
    if telecom:
        patient["telecom"] = telecom
    # PID-15 → communication.language (CWE[CodeableConcept]); preferred: see the module docstring
    languages = [cwe_to_codeable_concept(rep, s, "PrimaryLanguage", "0296") for rep in pid.field(15)]
    communication: list[dict[str, Any]] = [{"language": lang} for lang in languages if lang is not None]
    if communication:
        communication[0]["preferred"] = True  # PID-15 is 0..1: a repetition beyond it is not "primary"
        patient["communication"] = communication
    # PID-16 → maritalStatus (MaritalStatus, table 0002)
    if pid.field(16):
        marital = cwe_to_codeable_concept(pid.rep(16), s, "MaritalStatus", "0002")
        if marital is not None:
            patient["maritalStatus"] = marital
    # PID-17 → patient-religion (Religion, table 0006)
    if pid.field(17):
        religion = cwe_to_codeable_concept(pid.rep(17), s, "Religion", "0006")
        if religion is not None:
            extensions.append({"url": SD + "patient-religion", "valueCodeableConcept": religion})
    # PID-23 → patient-birthPlace (valueAddress.text)
    birth_place = pid.text(23)
    if birth_place:
        extensions.append({"url": SD + "patient-birthPlace", "valueAddress": {"text": birth_place}})
    # PID-24 → multipleBirthBoolean (if PID-25 empty); PID-25 → multipleBirthInteger
    order = nm_to_number(pid.value(25)) if pid.value(25) else None
    if isinstance(order, int):
        patient["multipleBirthInteger"] = order
        pid.mark_used(24)
    else:
        if pid.value(25):
            ctx.reject(pid, 25)
        multiple = id_to_boolean(pid.value(24)) if pid.value(24) else None
        if multiple is not None:
            patient["multipleBirthBoolean"] = multiple
        elif pid.value(24):
            ctx.reject(pid, 24)
    # PID-26 → patient-citizenship; PID-28 → patient-nationality; PID-39 → patient-citizenship (tribal)
    citizenship, nationality = SD + "patient-citizenship", SD + "patient-nationality"
    for number, url in ((26, citizenship), (28, nationality), (39, citizenship)):
        for rep in pid.field(number):
            concept = cwe_to_codeable_concept(rep, s)
            if concept is not None:
                extensions.append(_codeable_extension(url, "code", concept))
    # PID-29 → deceasedDateTime; PID-30 → deceasedBoolean (if PID-29 empty)
    death = pid.value(29)
    if death and put_datetime(patient, "deceasedDateTime", death, s):
        pid.mark_used(30)
    else:
        if death:
            ctx.reject(pid, 29)
        deceased = id_to_boolean(pid.value(30)) if pid.value(30) else None
        if deceased is not None:
            patient["deceasedBoolean"] = deceased
        elif pid.value(30):
            ctx.reject(pid, 30)
    # PID-35 species, PID-36 breed → patient-animal
    animal = []
    if pid.field(35):
        species = cwe_to_codeable_concept(pid.rep(35), s)
        if species is not None:
            animal.append({"url": "species", "valueCodeableConcept": species})
    if pid.field(36):
        breed = cwe_to_codeable_concept(pid.rep(36), s)
        if breed is not None:
            animal.append({"url": "breed", "valueCodeableConcept": breed})
    if animal:
        extensions.append({"url": SD + "patient-animal", "extension": animal})
    if extensions:
        patient["extension"] = extensions
    patient_url = ctx.add(patient, pid, "Patient")
    ctx.current["Patient"] = patient_url
    ctx.current.pop("Account", None)
    ctx.current.pop("Coverage", None)
    _pid_provenance(pid, ctx, patient_url)
    # PID-18 → Account (IG PID[Account])
    if pid.field(18):
        account_ids = _identifiers(pid, 18, s)
        if account_ids:
            account = {
                "resourceType": "Account",
                "identifier": account_ids,
                "status": "active",
                "subject": [ctx.bundle.reference(patient_url)],
            }
            ctx.current["Account"] = ctx.add(account, pid, "Account")
    # PID-21 → RelatedPerson (mother) (IG CX[RelatedPerson-Mother])
    mother_ids = _identifiers(pid, 21, s)
    if mother_ids:
        mother = {
            "resourceType": "RelatedPerson",
            "identifier": mother_ids,
            "patient": ctx.bundle.reference(patient_url),
            "relationship": [{"coding": [{"system": ROLE_CODE, "code": "MTH", "display": "mother"}]}],
        }
        ctx.add(mother, pid, "RelatedPerson-mother")


def _pid_provenance(pid: Segment, ctx: MappingContext, patient_url: str) -> None:
    """IG PID[Provenance-Patient] (message maps: "IF PID-33 AND PID-34 VALUED", and the IG note
    "one may drop PID-33 from the condition"): emitted when PID-34 (last update facility)
    is valued. PID-33 → occurredDateTime; PID-34 → agent.who (HD[Organization], type
    performer); activity v3-DataOperation UPDATE. ``recorded`` is the IG's "time of
    transformation", which would make a replay differ: MSH-7 (else PID-33) stands in, and
    without a zone for either the Provenance cannot be valid and is not emitted."""
    s = ctx.settings
    facility = hd_to_organization(hd_of(pid.rep(34))) if pid.field(34) else None
    if facility is None:
        return  # PID-33 alone stays unmapped (reported): not read here
    last_update = pid.value(33)
    recorded = dtm_to_instant(ctx.message.msh.value(7), s) or dtm_to_instant(last_update, s)
    if recorded is None:
        ctx.reject(pid, 34)
        return
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [ctx.bundle.reference(patient_url)],
        "recorded": recorded,
        "activity": {"coding": [{"system": DATA_OPERATION, "code": "UPDATE"}]},
        "agent": [
            {
                "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "performer"}]},
                "who": ctx.bundle.reference(ctx.add(facility, pid, "Organization-last-update")),
            }
        ],
    }
    if last_update and not put_datetime(provenance, "occurredDateTime", last_update, s):
        ctx.reject(pid, 33)
    ctx.add(provenance, pid, "Provenance-patient")


# ---------------------------------------------------------------- PD1


@segment_mapper("PD1", summary="PD1 → Patient (IG PD1[Patient])")
def pd1_to_patient(pd1: Segment, ctx: MappingContext) -> None:
    """IG PD1[Patient]: PD1-3 → generalPractitioner (Organization), PD1-4 → generalPractitioner
    (Practitioner), PD1-6 → patient-disability, PD1-14 → patient-congregation."""
    s = ctx.settings
    patient_url = ctx.require_patient(pd1)
    patient = ctx.bundle.resource(patient_url)
    if patient is None:  # merged into an earlier entry: enrich that one
        raise MappingError("patient entry missing", segment="PD1")
    practitioners = []
    for index, rep in enumerate(pd1.field(3), start=1):
        org = xon_to_organization(rep, s)
        if org is not None:
            practitioners.append(ctx.bundle.reference(ctx.add(org, pd1, f"Organization-{index}")))
    for index, rep in enumerate(pd1.field(4), start=1):
        doctor = xcn_to_practitioner(rep, s)
        if doctor is not None:
            practitioners.append(ctx.bundle.reference(ctx.add(doctor, pd1, f"Practitioner-{index}")))
    if practitioners:
        patient.setdefault("generalPractitioner", []).extend(practitioners)
    extensions = patient.setdefault("extension", [])
    for rep in pd1.field(6):
        concept = cwe_to_codeable_concept(rep, s)
        if concept is not None:
            extensions.append({"url": SD + "patient-disability", "valueCodeableConcept": concept})
    for rep in pd1.field(14):
        place = rep.component(1) or rep.component(10)  # IG XON[string]
        if place:
            extensions.append({"url": SD + "patient-congregation", "valueString": place})
    if not extensions:
        del patient["extension"]


# ---------------------------------------------------------------- NK1


def _nk1_elements(nk1: Segment, s: Settings) -> dict[str, Any]:
    """The elements NK1[RelatedPerson] and NK1[Patient] (contact) share."""
    out: dict[str, Any] = {}
    names = _names(nk1, 2, s)
    relationship = []
    if nk1.field(3):
        rel = cwe_to_codeable_concept(nk1.rep(3), s, "Relationship", "0063")
        if rel is not None:
            relationship.append(rel)
    if nk1.field(7):
        role = cwe_to_codeable_concept(nk1.rep(7), s, "ContactRole", "0131")
        if role is not None:
            relationship.append(role)
    if names:
        out["name"] = names
    if relationship:
        out["relationship"] = relationship
    addresses = _addresses(nk1, 4, s)
    if addresses:
        out["address"] = addresses
    telecom = _telecom(nk1, 5, s) + _telecom(nk1, 6, s, "work") + _telecom(nk1, 40, s) + _telecom(nk1, 41, s)
    if telecom:
        out["telecom"] = telecom
    period: dict[str, Any] = {}
    for number, key in ((8, "start"), (9, "end")):  # DT in v2.5, DTM in v2.6+: precision kept
        put_datetime(period, key, nk1.value(number), s)
    if period:
        out["period"] = period
    if nk1.field(15):
        gender = _gender(nk1.rep(15), s)
        if gender is not None:
            out["gender"] = gender
    return out


@segment_mapper("NK1", summary="NK1 → RelatedPerson, Patient.contact (IG NK1[RelatedPerson], NK1[Patient])")
def nk1_to_related_person(nk1: Segment, ctx: MappingContext) -> None:
    """IG NK1[RelatedPerson] rows NK1-2..NK1-41 and NK1[Patient] (Patient.contact)."""
    s = ctx.settings
    patient_url = ctx.require_patient(nk1)
    nk1.mark_used(1)
    shared = _nk1_elements(nk1, s)
    relationship_code = nk1.value(3)
    if nk1.field(15) and "gender" not in shared:
        ctx.reject(nk1, 15)
    for number in (8, 9):
        if nk1.value(number) and dtm_to_datetime(nk1.value(number), s) is None:
            ctx.reject(nk1, number)
    # NK1[Patient]: Patient.contact (organisation contacts only go here)
    patient = ctx.bundle.resource(patient_url)
    contact: dict[str, Any] = {}
    if "relationship" in shared:
        contact["relationship"] = _clone(shared["relationship"])
    if shared.get("name"):
        contact["name"] = _clone(shared["name"][0])
    for key in ("telecom", "gender", "period"):
        if key in shared:
            contact[key] = _clone(shared[key])
    if shared.get("address"):
        contact["address"] = _clone(shared["address"][0])
    if nk1.field(13):
        org = xon_to_organization(nk1.rep(13), s)
        if org is not None:
            # NK1-30/31/32 → contact person of the organisation (IG NK1[Patient])
            org_contact: dict[str, Any] = {}
            person = _names(nk1, 30, s)
            if person:
                org_contact["name"] = person[0]
            phones = _telecom(nk1, 31, s)
            if phones:
                org_contact["telecom"] = phones
            places = _addresses(nk1, 32, s)
            if places:
                org_contact["address"] = places[0]
            if org_contact:
                org["contact"] = [org_contact]
            contact["organization"] = ctx.bundle.reference(ctx.add(org, nk1, "Organization"))
    if contact and patient is not None:
        patient.setdefault("contact", []).append(contact)
    if relationship_code in _ORGANIZATION_CONTACTS:
        return
    # NK1[RelatedPerson]
    related: dict[str, Any] = {"resourceType": "RelatedPerson", "patient": ctx.bundle.reference(patient_url)}
    identifiers = _identifiers(nk1, 12, s) + _identifiers(nk1, 33, s)
    ssn = nk1.value(37)
    if ssn:
        identifiers.append(ssn_identifier(ssn))
    if identifiers:
        related["identifier"] = identifiers
    related.update(shared)
    related["name"] = shared.get("name", []) + _names(nk1, 30, s)
    if not related["name"]:
        del related["name"]
    addresses = shared.get("address", []) + _addresses(nk1, 32, s)
    if addresses:
        related["address"] = addresses
    phones = _telecom(nk1, 31, s)
    if phones:
        related["telecom"] = shared.get("telecom", []) + phones
    birth = nk1.value(16)
    if birth:
        date = dt_to_date(birth)
        if date is None:
            ctx.reject(nk1, 16)
        else:
            related["birthDate"] = date
    languages = [cwe_to_codeable_concept(rep, s, "PrimaryLanguage", "0296") for rep in nk1.field(20)]
    communication = [{"language": lang} for lang in languages if lang is not None]
    if communication:
        related["communication"] = communication
    ctx.add(related, nk1, "RelatedPerson")


# ---------------------------------------------------------------- MRG


@segment_mapper("MRG", summary="MRG → merged Patient + Patient.link, Account (IG MRG[Account])")
def mrg_to_patient_link(mrg: Segment, ctx: MappingContext) -> None:
    """A40 merge: MRG-1/-2/-4 → the prior Patient's identifiers (use old), MRG-7 → its name,
    active false; links replaces / replaced-by between it and the surviving Patient (PID),
    which also gets the prior identifiers (use old) and active true; MRG-3 → Account."""
    s = ctx.settings
    survivor_url = ctx.require_patient(mrg)
    identifiers = _identifiers(mrg, 1, s) + _identifiers(mrg, 2, s) + _identifiers(mrg, 4, s)
    if not identifiers and ctx.event in _PATIENT_MERGE_EVENTS:
        raise MappingError("prior patient identifier missing", segment="MRG", field="1")
    if identifiers:  # A06/A07 etc. carry only prior account/visit numbers
        # The prior record is matched on its identifier as it stands on the server; in the
        # Bundle its identifiers become "old" (no longer valid, still searchable).
        match = next((dict(i) for i in identifiers if i.get("system")), dict(identifiers[0]))
        old = [{**i, "use": "old"} for i in identifiers]
        prior: dict[str, Any] = {"resourceType": "Patient", "identifier": old, "active": False}
        names = _names(mrg, 7, s)
        if names:
            prior["name"] = names
        prior["link"] = [{"other": ctx.bundle.reference(survivor_url), "type": "replaced-by"}]
        prior_url = ctx.add(prior, mrg, "Patient-prior", match=match)
        survivor = ctx.bundle.resource(survivor_url)
        if survivor is not None and prior_url != survivor_url:
            survivor.setdefault("link", []).append({"other": ctx.bundle.reference(prior_url), "type": "replaces"})
            survivor["active"] = True
            known = survivor.setdefault("identifier", [])
            known.extend(_clone(i) for i in old if i not in known)
    accounts = _identifiers(mrg, 3, s)
    if accounts:
        account = {
            "resourceType": "Account",
            "identifier": accounts,
            "status": "unknown",
            "subject": [ctx.bundle.reference(survivor_url)],
        }
        ctx.add(account, mrg, "Account")
