"""IN1 → Coverage (+ payor Organization, policy holder, subscriber), IN2 → Coverage/subscriber,
GT1 → Account.guarantor.

IG rows: IN1[Coverage] (every row). The IG has no IN2 or GT1 map; our choices are below
(HL7 v2 ch. 6.5.6 IN1, 6.5.7 IN2, 6.5.5 GT1).

IN1, beyond the IG's rows (IN1-2, -4, -5, -10, -11, -12, -13, -15, -16, -17, -49):
- Coverage.status = active (required; IN1 has no status), beneficiary = the PID's Patient.
- IN1-3 (insurance company id, CX) → payor Organization.identifier; IN1-6 (contact person,
  XPN) and IN1-7 (phone, XTN) → payor Organization.contact.
- IN1-8 group number → class {type group, value}; IN1-9 group name (XON) → that class's
  name (or its own group class when IN1-8 is empty).
- IN1-35 company plan code → class {type plan, value}.
- IN1-22 coordination-of-benefits priority → order (a positive integer); else IN1-1.
- Coverage.identifier in this order: IN1-2 (XV), IN1-46 (use old), then IN2-61 (MB), IN2-8
  (MA), IN2-6 (MC) when an IN2 follows, then IN1-36 as MB (member number) and as SN
  (subscriber number). IN1-36 is also subscriberId. Coverage entries match on IN1-36
  (conditional update/create), not on IN1-2: the plan id is shared by every member.
- IN1-46 prior insurance plan id → identifier with use "old".
- Subscriber (IG IN1-16/IN1-17): IN1-17 = SEL (self) → the Patient; otherwise, when
  IN1-16 has a name or IN1-17 names a related person, a RelatedPerson with name IN1-16,
  relationship IN1-17 (table 0063), birthDate IN1-18, address IN1-19, gender IN1-43,
  identifier IN1-49.
IN2 (enriches the Coverage of the IN1 before it):
- IN2-1 insured's employee id (CX) and IN2-2 insured's SSN → subscriber RelatedPerson
  identifiers (the Patient's when the subscriber is the patient).
- IN2-6 Medicare number → Coverage.identifier type MC; IN2-8 Medicaid number → type MA;
  IN2-61 patient member number → type MB (order above).
- IN2-63 insured's telephone → subscriber telecom; IN2-72 patient's relationship to the
  insured (table 0344) → Coverage.relationship when IN1-17 is empty, and the subscriber
  when IN1 named none (01 → the Patient, a related person → a RelatedPerson).
- The patient's member number (IN2-61, else IN1-36 when the patient is the subscriber)
  → Patient.identifier type MB.
GT1 (guarantor): a RelatedPerson (or the Patient when GT1-11 is SEL, or an Organization
from GT1-21 when GT1-3 is empty) with identifier GT1-2, name GT1-3, address GT1-5,
telecom GT1-6 (home) / GT1-7 (work), birthDate GT1-8, gender GT1-9, relationship GT1-11;
it becomes Account.guarantor.party of the PID-18 Account (an Account is created when the
message has none). GT1-13/GT1-14 → guarantor.period.
"""

from __future__ import annotations

from typing import Any

from channels.mappers.datatypes import (
    SD,
    cwe_to_codeable_concept,
    cwe_to_identifier,
    cx_to_identifier,
    dt_to_date,
    nm_to_number,
    xad_to_address,
    xon_to_organization,
    xpn_to_human_name,
    xtn_to_contact_point,
)
from channels.mappers.messages import MappingContext, segment_mapper
from channels.mappers.options import Settings
from channels.mappers.segments.patient import ssn_identifier
from channels.mappers.v2 import Segment
from channels.mappers.vocab import v2_table_system

COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"
# The IG row's URL (IN1-10, IN1-49); the R5 cross-version extension of Coverage.subscriberId.
SUBSCRIBER_ID_EXT = "http://hl7.org/fhir/5.0/StructureDefinition/extension-subscriberId"
_SELF = {"SEL", "ONESELF", "SELF", "01", "18"}  # 0063 SEL; X12 individual relationship 18/01 seen in feeds
# Table 0063 relationships that name a person related to the patient (not EMR employer,
# OWN/TRA/MGR, NON/UNK/OTH): such a subscriber is a RelatedPerson even without IN1-16.
_PERSON_0063 = frozenset(
    [
        "SPO",
        "DOM",
        "CHD",
        "GCH",
        "NCH",
        "SCH",
        "FCH",
        "DEP",
        "WRD",
        "PAR",
        "MTH",
        "FTH",
        "CGV",
        "GRD",
        "GRP",
        "EXF",
        "SIB",
        "BRO",
        "SIS",
        "FND",
        "OAD",
        "EME",
        "ASC",
        "EMC",
    ]
)
# Table 0344 (IN2-72 patient's relationship to insured): 01 = the patient is the insured;
# these name a related person (not 09 unknown, 11/12 organ/cadaver donor).
_SELF_0344 = "01"
_PERSON_0344 = frozenset(["02", "03", "04", "05", "06", "07", "08", "10", "13", "14", "15", "16", "17", "18", "19"])


def _typed_identifier(code: str, value: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": v2_table_system("0203"), "code": code}]}, "value": value}


def _type_of(identifier: dict[str, Any]) -> str:
    codings = identifier.get("type", {}).get("coding", [{}])
    return str(codings[0].get("code", "")) if codings else ""


def _is_self(code: str) -> bool:
    return code.upper() in _SELF


def _subscriber_person(in1: Segment, ctx: MappingContext, patient_url: str) -> dict[str, Any] | None:
    """IG IN1-16 "IF IN1-17 IS NOT 'patient'" → subscriber RelatedPerson with IN1-16..19,
    IN1-43, IN1-49: made when IN1-16 has a name, or when IN1-17 names a person related to the
    patient (an employer, "unknown" or "other" relationship without a name makes none)."""
    s = ctx.settings
    names = [n for n in (xpn_to_human_name(rep, s) for rep in in1.field(16)) if n is not None]
    if not names and in1.value(17).upper() not in _PERSON_0063:
        return None
    person: dict[str, Any] = {"resourceType": "RelatedPerson", "patient": ctx.bundle.reference(patient_url)}
    identifiers = [i for i in (cx_to_identifier(rep, s) for rep in in1.field(49)) if i is not None]
    if identifiers:
        person["identifier"] = identifiers
    if names:
        person["name"] = names
    if in1.field(17):
        relationship = cwe_to_codeable_concept(in1.rep(17), s, "Relationship", "0063")
        if relationship is not None:
            person["relationship"] = [relationship]
    if in1.field(43):
        gender = _gender_code(in1.rep(43).component(1), s)
        if gender:
            person["gender"] = gender
        else:
            ctx.reject(in1, 43)
    birth = in1.value(18)
    if birth:
        date = dt_to_date(birth)
        if date is None:
            ctx.reject(in1, 18)
        else:
            person["birthDate"] = date
    addresses = [a for a in (xad_to_address(rep, s) for rep in in1.field(19)) if a is not None]
    if addresses:
        person["address"] = addresses
    return person


def _gender_code(code: str, s: Settings) -> str | None:
    concept = s.vocab.lookup("AdministrativeSex", code)
    return concept.code if concept is not None and concept.code else None


def _payor(in1: Segment, ctx: MappingContext) -> str | None:
    """IG IN1-4 → payor Organization (XON), IN1-5 → its address; IN1-3 → identifier; IN1-6/-7 → contact."""
    s = ctx.settings
    org: dict[str, Any] = {"resourceType": "Organization"}
    identifiers = [i for i in (cx_to_identifier(rep, s) for rep in in1.field(3)) if i is not None]
    named = xon_to_organization(in1.rep(4), s) if in1.field(4) else None
    if named is not None:
        identifiers.extend(named.get("identifier", []))
        if "name" in named:
            org["name"] = named["name"]
    if identifiers:
        org["identifier"] = identifiers
    addresses = [a for a in (xad_to_address(rep, s) for rep in in1.field(5)) if a is not None]
    if addresses:
        org["address"] = addresses
    contact: dict[str, Any] = {}
    if in1.field(6):
        name = xpn_to_human_name(in1.rep(6), s)
        if name is not None:
            contact["name"] = name
    phones = [p for p in (xtn_to_contact_point(rep, s, "work") for rep in in1.field(7)) if p is not None]
    if phones:
        contact["telecom"] = phones
    if contact:
        org["contact"] = [contact]
    if "name" not in org and "identifier" not in org:
        # FHIR org-1: a name or an identifier; an address or contact alone makes no payor
        for number in (5, 6, 7):
            if in1.field(number):
                ctx.reject(in1, number)
        return None
    return ctx.add(org, in1, "Organization-payor")


def _policy_holder(in1: Segment, ctx: MappingContext) -> tuple[str | None, list[dict[str, Any]]]:
    """IG IN1-10 (CX) and IN1-11 (XON) → policyHolder Organization; CX.5 = SN → subscriberId extension."""
    s = ctx.settings
    subscriber_ids: list[dict[str, Any]] = []
    identifiers = []
    for rep in in1.field(10):
        ident = cx_to_identifier(rep, s)
        if ident is None:
            continue
        identifiers.append(ident)
        if rep.component(5) == "SN":
            subscriber_ids.append(dict(ident))
    org: dict[str, Any] = {"resourceType": "Organization"}
    if identifiers:
        org["identifier"] = identifiers
    if in1.field(11):
        named = xon_to_organization(in1.rep(11), s)
        if named is not None:
            if "name" in named:
                org["name"] = named["name"]
            org.setdefault("identifier", []).extend(named.get("identifier", []))
            if not org["identifier"]:
                del org["identifier"]
    if len(org) == 1:
        return None, subscriber_ids
    return ctx.add(org, in1, "Organization-policyholder"), subscriber_ids


@segment_mapper("IN1", summary="IN1 → Coverage, payor Organization, subscriber (IG IN1[Coverage])")
def in1_to_coverage(in1: Segment, ctx: MappingContext) -> None:
    """IG IN1[Coverage] rows IN1-2..IN1-49, plus the rows documented in the module docstring."""
    s = ctx.settings
    patient_url = ctx.require_patient(in1)
    in1.mark_used(1)  # set id: group order
    coverage: dict[str, Any] = {"resourceType": "Coverage", "status": "active"}
    extensions: list[dict[str, Any]] = []
    identifiers: list[dict[str, Any]] = []
    # IN1-2 plan id → identifier (CWE[Identifier]), typed XV (health plan identifier)
    for rep in in1.field(2):
        for ident in cwe_to_identifier(rep, s):
            ident["type"] = {"coding": [{"system": v2_table_system("0203"), "code": "XV"}]}
            identifiers.append(ident)
    # IN1-46 prior insurance plan id → identifier (use old)
    prior = in1.value(46)
    if prior:
        identifiers.append({"use": "old", "value": prior})
    # IN1-36 policy number → identifiers MB (member number, until IN2-61 gives the patient's
    # own) and SN (subscriber number), subscriberId; conditional matching uses it
    policy = in1.value(36)
    match: dict[str, Any] = {}  # never the plan id (IN1-2): every member of the plan shares it
    if policy:
        match = _typed_identifier("MB", policy)
        identifiers.append(match)
        identifiers.append(_typed_identifier("SN", policy))
        coverage["subscriberId"] = policy
    # IN1-15 plan type → type (CWE; IG voc PlanId has no codes: kept as v2 table 0086)
    if in1.field(15):
        plan_type = cwe_to_codeable_concept(in1.rep(15), s, "PlanId", "0086")
        if plan_type is not None:
            coverage["type"] = plan_type
    # IN1-10/IN1-11 → policyHolder; IN1-10 CX.5 SN and IN1-49 → subscriberId extension
    holder, subscriber_ids = _policy_holder(in1, ctx)
    if holder is not None:
        coverage["policyHolder"] = ctx.bundle.reference(holder)
    # IN1-16/IN1-17 → subscriber; IN1-17 → relationship
    relationship_code = in1.value(17)
    if in1.field(17):
        relationship = cwe_to_codeable_concept(in1.rep(17), s, "Relationship", "0063")
        if relationship is not None:
            coverage["relationship"] = relationship
    if _is_self(relationship_code):
        coverage["subscriber"] = ctx.bundle.reference(patient_url)
        in1.mark_used(16, 18, 19, 43)  # the patient's own name/birth/address/sex: PID carries them
        subscriber_ids.extend(i for i in (cx_to_identifier(rep, s) for rep in in1.field(49)) if i is not None)
        _member_number_of_patient(ctx, patient_url, in1.value(36))
    else:
        person = _subscriber_person(in1, ctx, patient_url)
        if person is not None:
            subscriber_ids.extend(dict(i) for i in person.get("identifier", []))  # before add() adds its own
            coverage["subscriber"] = ctx.bundle.reference(ctx.add(person, in1, "RelatedPerson-subscriber"))
    for ident in subscriber_ids:
        extensions.append({"url": SUBSCRIBER_ID_EXT, "valueIdentifier": ident})
    coverage["beneficiary"] = ctx.bundle.reference(patient_url)
    # IN1-12 / IN1-13 → period
    period: dict[str, Any] = {}
    for number, key in ((12, "start"), (13, "end")):
        text = in1.value(number)
        if text:
            date = dt_to_date(text)
            if date is None:
                ctx.reject(in1, number)
            else:
                period[key] = date
    if period:
        coverage["period"] = period
    # IN1-3..IN1-7 → payor
    payor = _payor(in1, ctx)
    if payor is not None:
        coverage["payor"] = [ctx.bundle.reference(payor)]
    # IN1-8 group number, IN1-9 group name, IN1-35 plan code → class
    classes = []
    group_number = in1.value(8)
    group_name = in1.rep(9).component(1) if in1.field(9) else ""
    if group_number or group_name:
        group: dict[str, Any] = {
            "type": {"coding": [{"system": COVERAGE_CLASS, "code": "group"}]},
            "value": group_number or group_name,
        }
        if group_name:
            group["name"] = group_name
        classes.append(group)
    plan_code = in1.value(35)
    if plan_code:
        classes.append({"type": {"coding": [{"system": COVERAGE_CLASS, "code": "plan"}]}, "value": plan_code})
    if classes:
        coverage["class"] = classes
    # IN1-22 coordination of benefits priority → order; else IN1-1 (the IN1 groups are sent
    # in priority order, and IN1-1 numbers them)
    priority = nm_to_number(in1.value(22)) if in1.value(22) else None
    if in1.value(22) and not (isinstance(priority, int) and priority > 0):
        ctx.reject(in1, 22)
        priority = None
    if priority is None and in1.value(1).isdigit() and int(in1.value(1)) > 0:
        priority = int(in1.value(1))
    if isinstance(priority, int) and priority > 0:
        coverage["order"] = priority
    if identifiers:
        coverage["identifier"] = identifiers
    if extensions:
        coverage["extension"] = extensions
    # Payor is required in R4 (1..*): without IN1-3/-4/-5 it is marked absent, not invented.
    if "payor" not in coverage:
        coverage["payor"] = [{"extension": [{"url": SD + "data-absent-reason", "valueCode": "unknown"}]}]
    ctx.current["Coverage"] = ctx.add(coverage, in1, "Coverage", match=match)


def _member_number_of_patient(ctx: MappingContext, patient_url: str, value: str) -> None:
    """The patient's member number (IN2-61, else IN1-36 when the patient is the subscriber)
    → Patient.identifier type MB, as payer-facing profiles (CARIN BB) carry it."""
    patient = ctx.bundle.resource(patient_url)
    if not value or patient is None:
        return
    identifiers = patient.setdefault("identifier", [])
    member = next((i for i in identifiers if _type_of(i) == "MB"), None)
    if member is None:
        identifiers.append(_typed_identifier("MB", value))
    else:
        member["value"] = value


def _subscriber_resource(ctx: MappingContext, coverage: dict[str, Any]) -> dict[str, Any] | None:
    ref = coverage.get("subscriber", {}).get("reference")
    return ctx.bundle.resource(ref) if isinstance(ref, str) else None


@segment_mapper("IN2", summary="IN2 → Coverage identifiers, subscriber details (IG silent; see module)")
def in2_to_coverage(in2: Segment, ctx: MappingContext) -> None:
    """IN2 choices in the module docstring (IN2-1, -2, -6, -8, -61, -63, -72)."""
    s = ctx.settings
    coverage_url = ctx.current.get("Coverage")
    coverage = ctx.bundle.resource(coverage_url) if coverage_url else None
    if coverage is None:
        return  # an IN2 outside an insurance group: every field is reported unmapped
    subscriber = _subscriber_resource(ctx, coverage)
    person_ids = [i for i in (cx_to_identifier(rep, s) for rep in in2.field(1)) if i is not None]
    ssn = in2.value(2)
    if ssn:
        person_ids.append(ssn_identifier(ssn.replace("-", "")))
    if subscriber is not None and person_ids:
        subscriber.setdefault("identifier", []).extend(person_ids)
    elif person_ids:  # the subscriber is not a resource of this message
        for number in (1, 2):
            if in2.field(number):
                ctx.reject(in2, number)
    ids = coverage.setdefault("identifier", [])
    # IN2-61 patient member number (MB), IN2-8 Medicaid (MA) and IN2-6 Medicare (MC) numbers
    # go before the identifiers IN1-36 gave (MB, SN): the patient's own number comes first.
    at = next((n for n, i in enumerate(ids) if _type_of(i) in ("MB", "SN")), len(ids))
    member = in2.value(61)
    for value, code in ((member, "MB"), (in2.value(8), "MA"), (in2.value(6), "MC")):
        if value and _typed_identifier(code, value) not in ids:
            ids.insert(at, _typed_identifier(code, value))
            at += 1
    if not ids:
        del coverage["identifier"]
    phones = [p for p in (xtn_to_contact_point(rep, s) for rep in in2.field(63)) if p is not None]
    if phones and subscriber is not None:
        subscriber.setdefault("telecom", []).extend(phones)
    elif phones:
        ctx.reject(in2, 63)
    _in2_subscriber(in2, ctx, coverage, subscriber, member)


def _in2_subscriber(
    in2: Segment, ctx: MappingContext, coverage: dict[str, Any], subscriber: dict[str, Any] | None, member: str
) -> None:
    """IN2-72 (table 0344) when IN1-17 is empty: Coverage.relationship, and the subscriber the
    IN1 could not name (01 → the Patient; a related person → a RelatedPerson with that
    relationship). IN2-61 → the Patient's member number when the patient is the subscriber."""
    patient_url = ctx.patient
    patient_is_subscriber = patient_url is not None and coverage.get("subscriber", {}).get("reference") == patient_url
    code = in2.value(72).upper()
    if in2.field(72) and "relationship" not in coverage:
        # Table 0344 is numeric; feeds that send a table 0063 code (SPO) get the IG's map.
        known_0063 = ctx.settings.vocab.lookup("Relationship", code) is not None
        relationship = (
            cwe_to_codeable_concept(in2.rep(72), ctx.settings, "Relationship", "0063")
            if known_0063
            else cwe_to_codeable_concept(in2.rep(72), ctx.settings, None, "0344")
        )
        if relationship is not None:
            coverage["relationship"] = relationship
            if subscriber is not None and subscriber.get("resourceType") == "RelatedPerson":
                subscriber.setdefault("relationship", []).append(relationship)
            elif "subscriber" not in coverage and patient_url is not None:
                if code in (_SELF_0344, "SEL"):
                    coverage["subscriber"] = ctx.bundle.reference(patient_url)
                    patient_is_subscriber = True
                elif code in _PERSON_0344 or code in _PERSON_0063:
                    person = {
                        "resourceType": "RelatedPerson",
                        "patient": ctx.bundle.reference(patient_url),
                        "relationship": [relationship],
                    }
                    coverage["subscriber"] = ctx.bundle.reference(ctx.add(person, in2, "RelatedPerson-subscriber"))
    if patient_is_subscriber and patient_url is not None:
        policy = next((i["value"] for i in coverage.get("identifier", []) if _type_of(i) == "SN"), "")
        _member_number_of_patient(ctx, patient_url, member or policy)


@segment_mapper("GT1", summary="GT1 → Account.guarantor (IG silent; see insurance.py)")
def gt1_to_guarantor(gt1: Segment, ctx: MappingContext) -> None:
    """GT1 choices in the module docstring (GT1-2, -3, -5..-9, -11, -13, -14, -21)."""
    s = ctx.settings
    patient_url = ctx.require_patient(gt1)
    gt1.mark_used(1)
    relationship_code = gt1.value(11)
    party: str | None = None
    if _is_self(relationship_code):
        party = patient_url
        gt1.mark_used(3, 5, 6, 7, 8, 9)
    else:
        names = [n for n in (xpn_to_human_name(rep, s) for rep in gt1.field(3)) if n is not None]
        if names:
            person: dict[str, Any] = {
                "resourceType": "RelatedPerson",
                "patient": ctx.bundle.reference(patient_url),
            }
            identifiers = [i for i in (cx_to_identifier(rep, s) for rep in gt1.field(2)) if i is not None]
            if identifiers:
                person["identifier"] = identifiers
            person["name"] = names
            if gt1.field(11):
                relationship = cwe_to_codeable_concept(gt1.rep(11), s, "Relationship", "0063")
                if relationship is not None:
                    person["relationship"] = [relationship]
            home = (xtn_to_contact_point(r, s, "home") for r in gt1.field(6))
            work = (xtn_to_contact_point(r, s, "work") for r in gt1.field(7))
            telecom = [p for p in (*home, *work) if p is not None]
            if telecom:
                person["telecom"] = telecom
            addresses = [a for a in (xad_to_address(rep, s) for rep in gt1.field(5)) if a is not None]
            if addresses:
                person["address"] = addresses
            if gt1.value(8):
                birth = dt_to_date(gt1.value(8))
                if birth:
                    person["birthDate"] = birth
                else:
                    ctx.reject(gt1, 8)
            if gt1.field(9):
                gender = _gender_code(gt1.rep(9).component(1), s)
                if gender:
                    person["gender"] = gender
                else:
                    ctx.reject(gt1, 9)
            party = ctx.add(person, gt1, "RelatedPerson-guarantor")
        elif gt1.field(21):
            org = xon_to_organization(gt1.rep(21), s)
            if org is not None:
                party = ctx.add(org, gt1, "Organization-guarantor")
    if party is None:
        return
    guarantor: dict[str, Any] = {"party": ctx.bundle.reference(party)}
    period: dict[str, Any] = {}
    for number, key in ((13, "start"), (14, "end")):
        text = gt1.value(number)
        if text:
            date = dt_to_date(text)
            if date:
                period[key] = date
            else:
                ctx.reject(gt1, number)
    if period:
        guarantor["period"] = period
    account_url = ctx.current.get("Account")
    account = ctx.bundle.resource(account_url) if account_url else None
    if account is None:
        account = {
            "resourceType": "Account",
            "status": "active",
            "subject": [ctx.bundle.reference(patient_url)],
        }
        ctx.current["Account"] = ctx.add(account, gt1, "Account")
    account.setdefault("guarantor", []).append(guarantor)
