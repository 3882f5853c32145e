"""AL1 → AllergyIntolerance, DG1 → Condition (+ Encounter.diagnosis), PR1 → Procedure.

HL7 v2-to-FHIR IG maps ``AL1[AllergyIntolerance]``, ``DG1[Condition]``, ``DG1[Encounter]``
and ``PR1[Procedure]``. Each segment gives one resource about the Patient of the PID
before it (a MappingError names the segment when there is none: the subject is
required). DG1 and PR1 also point at the Encounter of the PV1 before them, when any.

Choices where the IG is open:
- AllergyIntolerance.reaction needs a manifestation (R4 1..*): AL1-4's reaction.severity is
  set only when AL1-5 gives a manifestation; the criticality row maps AL1-4 regardless.
- Condition: category "encounter-diagnosis" (condition-category) is added: DG1 is by
  definition a diagnosis of the visit. DG1-21 "D" (delete) → verificationStatus
  entered-in-error (IG DG1-21 row); other action codes leave it empty. The IG's DG1-19
  extension URL (`www.hl7.org/fhir/extension-condition-asserteddate`) is a typo of the
  core extension `condition-assertedDate`, which we use.
- Procedure.status is required and PR1 carries none (IG row "PR1 → status" has no
  value): "unknown". PR1-16 (procedure code modifier) is not mapped (the IG row
  concatenates codes into a non-existent element).
- R5: Condition.clinicalStatus is required and v2 gives none → a data-absent-reason
  extension; asserter → participant (function author); Procedure performed[x] →
  occurrence[x]; AllergyIntolerance.type becomes a CodeableConcept and
  reaction.manifestation a CodeableReference.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from channels.mappers import datatypes as dt
from channels.mappers.bundle import register_r5_adapter
from channels.mappers.messages import MappingContext, segment_mapper
from channels.mappers.segments.encounter import pl_to_location, practitioner_reference
from channels.mappers.v2 import Segment

SD = "http://hl7.org/fhir/StructureDefinition/"
ALTERNATE_CODES = SD + "alternate-codes"
SNOMED = "http://snomed.info/sct"
DATA_ABSENT_REASON = SD + "data-absent-reason"


def _subject(seg: Segment, ctx: MappingContext) -> dict[str, Any]:
    return ctx.bundle.reference(ctx.require_patient(seg))


def _encounter(ctx: MappingContext) -> dict[str, Any] | None:
    url = ctx.current.get("Encounter")
    return ctx.bundle.reference(url) if url else None


def _set_datetime(target: dict[str, Any], element: str, seg: Segment, number: int, ctx: MappingContext) -> None:
    text = seg.value(number)
    if text and not dt.put_datetime(target, element, text, ctx.settings):
        ctx.reject(seg, number)


def _alternate(concept: dict[str, Any] | None) -> dict[str, Any] | None:
    """`_element` JSON holding the original v2 code (IG rows "extension alternate-codes")."""
    if concept is None:
        return None
    return {"extension": [{"url": ALTERNATE_CODES, "valueCodeableConcept": concept}]}


# ---------------------------------------------------------------- AL1


@segment_mapper("AL1", summary="AL1 → AllergyIntolerance (IG AL1[AllergyIntolerance])")
def al1_to_allergy_intolerance(seg: Segment, ctx: MappingContext) -> None:
    """IG AL1[AllergyIntolerance]: one AllergyIntolerance per AL1, patient = the PID's Patient."""
    s = ctx.settings
    seg.mark_used(1)  # AL1-1 Set ID: the segment's position, no FHIR meaning
    allergy: dict[str, Any] = {
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": {  # IG AL1 row: clinicalStatus "active"
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                    "code": "active",
                }
            ]
        },
    }
    allergen_type = seg.rep(2)
    if allergen_type:  # IG AL1-2 → category (+ alternate-codes) and type
        category = dt.code_of(allergen_type, s, "AllergenType[AllergyIntoleranceCategory]")
        original = dt.cwe_to_codeable_concept(
            allergen_type, s, "AllergenType[AllergyIntoleranceOriginalCategory]", "0127"
        )
        if category:
            allergy["category"] = [category]
            alternate = _alternate(original)
            if alternate:
                allergy["_category"] = [alternate]
        kind = dt.code_of(allergen_type, s, "AllergyType")
        if kind:
            allergy["type"] = kind
        if not (category or kind):
            ctx.reject(seg, 2)
    if seg.field(3):  # IG AL1-3 → code
        code = dt.cwe_to_codeable_concept(seg.rep(3), s)
        if code is not None:
            allergy["code"] = code
    manifestations = [{"text": r.text()} for r in seg.field(5) if r.text()]  # IG AL1-5
    severity_rep = seg.rep(4)
    if severity_rep:  # IG AL1-4 → criticality (+ alternate-codes), reaction.severity
        criticality = dt.code_of(severity_rep, s, "AllergySeverity[AllergyIntolerance.criticality]")
        original = dt.cwe_to_codeable_concept(
            severity_rep, s, "AllergySeverity[AllergyIntolerance.criticality-original]", "0128"
        )
        if criticality:
            allergy["criticality"] = criticality
            alternate = _alternate(original)
            if alternate:
                allergy["_criticality"] = alternate
        severity = dt.code_of(severity_rep, s, "AllergySeverity[AllergyIntolerance.reaction.severity]")
        if manifestations:
            reaction: dict[str, Any] = {"manifestation": manifestations}
            if severity:
                reaction["severity"] = severity
            allergy["reaction"] = [reaction]
        if not (criticality or (severity and manifestations)):
            ctx.reject(seg, 4)
    if manifestations and "reaction" not in allergy:
        allergy["reaction"] = [{"manifestation": manifestations}]
    _set_datetime(allergy, "onsetDateTime", seg, 6, ctx)  # IG AL1-6 (DT) → onsetDateTime
    allergy["patient"] = _subject(seg, ctx)
    encounter = _encounter(ctx)
    if encounter is not None:
        allergy["encounter"] = encounter
    ctx.add(allergy, seg, "AllergyIntolerance")


# ---------------------------------------------------------------- DG1


@segment_mapper("DG1", summary="DG1 → Condition and Encounter.diagnosis (IG DG1[Condition], DG1[Encounter])")
def dg1_to_condition(seg: Segment, ctx: MappingContext) -> None:
    """IG DG1[Condition] (+ DG1[Encounter]: the Encounter's diagnosis points at it)."""
    s = ctx.settings
    seg.mark_used(1)  # DG1-1 Set ID
    condition: dict[str, Any] = {
        "resourceType": "Condition",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "encounter-diagnosis",
                        "display": "Encounter Diagnosis",
                    }
                ]
            }
        ],
    }
    identifier = dt.ei_to_identifier(seg.rep(20), s) if seg.field(20) else None  # IG DG1-20
    if identifier is not None:
        condition["identifier"] = [identifier]
    code = dt.cwe_to_codeable_concept(seg.rep(3), s) if seg.field(3) else None  # IG DG1-3
    description = seg.text(4)  # IG DG1-4 → code.text
    if description:
        code = code or {}
        code.setdefault("text", description)
    if code:
        condition["code"] = code
    if seg.value(21).upper() == "D":  # IG DG1-21
        condition["verificationStatus"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": "entered-in-error",
                }
            ]
        }
    elif seg.value(21):
        seg.mark_used(21)  # A (add) / U (update): the conditional write already expresses it
    condition["subject"] = _subject(seg, ctx)
    encounter = _encounter(ctx)
    if encounter is not None:
        condition["encounter"] = encounter
    _set_datetime(condition, "onsetDateTime", seg, 5, ctx)  # IG DG1-5
    extensions: list[dict[str, Any]] = []
    asserted = seg.value(19)  # IG DG1-19 → recordedDate + condition-assertedDate
    if asserted:
        when = dt.dtm_to_datetime(asserted, s)
        if when is not None:
            # An extension's value cannot carry the originalText primitive extension (FHIR JSON
            # has no `_valueDateTime` inside Extension); recordedDate keeps it.
            extensions.append({"url": SD + "condition-assertedDate", "valueDateTime": when.value})
            dt.put_datetime(condition, "recordedDate", asserted, s)
        else:
            ctx.reject(seg, 19)
    due_to = dt.ei_to_identifier(seg.rep(22), s) if seg.field(22) else None  # IG DG1-22
    if due_to is not None:
        extensions.append({"url": SD + "condition-dueTo", "valueReference": {"identifier": due_to}})
    if extensions:
        condition["extension"] = extensions
    if seg.field(16):  # IG DG1-16 → asserter (Practitioner)
        asserter = practitioner_reference(seg.rep(16), seg, ctx, "Practitioner-16")
        if asserter is not None:
            condition["asserter"] = asserter
    url = ctx.add(condition, seg, "Condition")
    _add_encounter_diagnosis(seg, ctx, url)


def _add_encounter_diagnosis(seg: Segment, ctx: MappingContext, condition_url: str) -> None:
    """IG DG1[Encounter]: Encounter.diagnosis {condition, use (DG1-6), rank (DG1-15)}."""
    encounter_url = ctx.current.get("Encounter")
    encounter = ctx.bundle.resource(encounter_url) if encounter_url else None
    if encounter is None:
        return  # DG1 outside a visit: DG1-6 / DG1-15 stay unmapped
    diagnosis: dict[str, Any] = {"condition": ctx.bundle.reference(condition_url)}
    if seg.field(6):
        use = dt.cwe_to_codeable_concept(seg.rep(6), ctx.settings, "DiagnosisType", "0052")
        if use is not None:
            diagnosis["use"] = use
    rank = dt.nm_to_number(seg.value(15)) if seg.value(15) else None
    if isinstance(rank, int) and rank > 0:
        diagnosis["rank"] = rank
    elif seg.value(15):
        ctx.reject(seg, 15)
    encounter.setdefault("diagnosis", []).append(diagnosis)


# ---------------------------------------------------------------- PR1

# IG PR1-8 / PR1-11 / PR1-12 → performer with function (SNOMED CT).
_PERFORMERS: tuple[tuple[int, str, str], ...] = (
    (8, "88189002", "Anesthesiologist"),
    (11, "304292004", "Surgeon"),
    (12, "", ""),
)


def _end_after_minutes(start: str, minutes: int | float) -> str | None:
    """Procedure.performedPeriod.end = start + PR1-7 minutes (IG PR1-7 row), same offset."""
    try:
        parsed = datetime.fromisoformat(start)
    except ValueError:
        return None
    if parsed.tzinfo is None or "T" not in start:
        return None
    end = parsed + timedelta(minutes=minutes)
    return end.isoformat()


@segment_mapper("PR1", summary="PR1 → Procedure (IG PR1[Procedure])")
def pr1_to_procedure(seg: Segment, ctx: MappingContext) -> None:
    """IG PR1[Procedure]: one Procedure per PR1, subject = the PID's Patient."""
    s = ctx.settings
    seg.mark_used(1)  # PR1-1 Set ID
    procedure: dict[str, Any] = {"resourceType": "Procedure", "status": "unknown"}
    identifier = dt.ei_to_identifier(seg.rep(19), s) if seg.field(19) else None  # IG PR1-19
    if identifier is not None:
        procedure["identifier"] = [identifier]
    code = dt.cwe_to_codeable_concept(seg.rep(3), s) if seg.field(3) else None  # IG PR1-3
    description = seg.text(4)  # IG PR1-4 → code.text (IF PR1-3.9 NOT VALUED)
    if description and not (code and code.get("text")):
        code = code or {}
        code["text"] = description
    if code:
        procedure["code"] = code
    procedure["subject"] = _subject(seg, ctx)
    encounter = _encounter(ctx)
    if encounter is not None:
        procedure["encounter"] = encounter
    _performed(seg, ctx, procedure)  # IG PR1-5 / PR1-7
    if seg.field(6):  # IG PR1-6 → category
        category = dt.cwe_to_codeable_concept(seg.rep(6), s, None, "0230")
        if category is not None:
            procedure["category"] = category
    for number, code_value, display in _PERFORMERS:
        for index, rep in enumerate(seg.field(number), start=1):
            actor = practitioner_reference(rep, seg, ctx, f"Practitioner-{number}-{index}")
            if actor is None:
                continue
            performer: dict[str, Any] = {"actor": actor}
            if code_value:
                performer["function"] = {"coding": [{"system": SNOMED, "code": code_value, "display": display}]}
            procedure.setdefault("performer", []).append(performer)
    reasons = [c for c in (dt.cwe_to_codeable_concept(r, s) for r in seg.field(15)) if c]
    if reasons:
        procedure["reasonCode"] = reasons  # IG PR1-15
    if seg.field(23):  # IG PR1-23 → location
        location = pl_to_location(seg.rep(23), seg, ctx, "Location-23")
        if location is not None:
            procedure["location"] = ctx.bundle.reference(location)
    part_of = dt.ei_to_identifier(seg.rep(25), s) if seg.field(25) else None  # IG PR1-25
    if part_of is not None:
        procedure["partOf"] = [{"identifier": part_of}]
    ctx.add(procedure, seg, "Procedure")


def _performed(seg: Segment, ctx: MappingContext, procedure: dict[str, Any]) -> None:
    start_text = seg.value(5)
    if not start_text:
        return
    holder: dict[str, Any] = {}
    if not dt.put_datetime(holder, "value", start_text, ctx.settings):
        ctx.reject(seg, 5)
        return
    minutes = dt.nm_to_number(seg.value(7)) if seg.value(7) else None
    end = _end_after_minutes(holder["value"], minutes) if minutes is not None else None
    if end is not None:
        period: dict[str, Any] = {"start": holder["value"], "end": end}
        procedure["performedPeriod"] = period
        return
    if seg.value(7):
        ctx.reject(seg, 7)  # a duration without a full start time cannot give an end
    procedure["performedDateTime"] = holder["value"]
    if "_value" in holder:
        procedure["_performedDateTime"] = holder["_value"]


# ---------------------------------------------------------------- R4B → R5


def _allergy_r5(res: dict[str, Any]) -> None:
    """R5 AllergyIntolerance: type → CodeableConcept; reaction.manifestation → CodeableReference."""
    kind = res.get("type")
    if isinstance(kind, str):
        res["type"] = {"coding": [{"system": "http://hl7.org/fhir/allergy-intolerance-type", "code": kind}]}
    for reaction in res.get("reaction", []):
        reaction["manifestation"] = [{"concept": m} for m in reaction.get("manifestation", [])]


def _condition_r5(res: dict[str, Any]) -> None:
    """R5 Condition: clinicalStatus required (data-absent-reason when unknown); asserter → participant."""
    if "clinicalStatus" not in res:
        res["clinicalStatus"] = {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]}
    asserter = res.pop("asserter", None)
    if isinstance(asserter, dict):
        res.setdefault("participant", []).append(
            {
                "function": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "author",
                        }
                    ]
                },
                "actor": asserter,
            }
        )


def _procedure_r5(res: dict[str, Any]) -> None:
    """R5 Procedure: performed[x] → occurrence[x]; reasonCode → reason (CodeableReference);
    category → a list."""
    for suffix in ("DateTime", "Period", "String"):
        if f"performed{suffix}" in res:
            res[f"occurrence{suffix}"] = res.pop(f"performed{suffix}")
        if f"_performed{suffix}" in res:
            res[f"_occurrence{suffix}"] = res.pop(f"_performed{suffix}")
    reasons = res.pop("reasonCode", None)
    if reasons:
        res["reason"] = [{"concept": concept} for concept in reasons]
    category = res.get("category")
    if isinstance(category, dict):
        res["category"] = [category]


register_r5_adapter("AllergyIntolerance", _allergy_r5)
register_r5_adapter("Condition", _condition_r5)
register_r5_adapter("Procedure", _procedure_r5)
