"""PV1/PV2 → Encounter, with its Locations, Practitioners and EpisodeOfCare.

HL7 v2-to-FHIR IG maps ``PV1[Encounter]``, ``PV2[Encounter]``, ``MSH[Encounter]`` (MSH-9 →
status) and the datatype maps ``PL[Location]``, ``DLD[Location-Discharge]``,
``XCN[Practitioner]``, ``NM[Quantity-LengthOfStay]``. One Encounter per PV1; PV2 enriches
the Encounter of the PV1 before it. Later segments of the visit (DG1, OBX, ORC …) find it
in ``ctx.current["Encounter"]``.

Choices where the IG is open (each also noted at its row):
- Encounter.status: PV1-45 valued → finished (IG row PV1-45); else a terminal trigger event
  (A03 finished, A11 cancelled, IG MSH[Encounter] via Event[EncounterStatus]); else PV1-2
  through PatientClass[EncounterStatus] (IG row PV1-2); else the event map; else unknown.
- Encounter.class (1..1 in R4): PV1-2 through PatientClass[EncounterClass]; an unmapped
  code keeps its v2-0004 coding; no PV1-2 → v3-NullFlavor UNK.
- PL.5 (location status) is kept on the most granular Location when it is a FHIR
  Location.status code; the IG's PL map has no row for it.
- PV1-43 (prior temporary location) → a location "completed" with the temporary
  classification (the IG maps it only to Basic-EncounterHistory, which we do not produce;
  CDC ReportStream and Microsoft map it this way). PV1-39 is not mapped (no IG row).
- PV2-23 (clinic organization name) → serviceProvider (no IG row; its meaning is exactly
  the organization providing the encounter).
- PV1-53/54 → an EpisodeOfCare (status "active", patient = the PID's Patient) only when a
  Patient exists, since R4 EpisodeOfCare.patient is required.

Helpers other segment maps use (clinical.py, orders.py):
``practitioner_reference(rep, seg, ctx, kind)`` and ``pl_to_location(rep, seg, ctx, kind)``.
"""

from __future__ import annotations

import html
from itertools import pairwise
from typing import Any

from channels.mappers import datatypes as dt
from channels.mappers.bundle import register_r5_adapter
from channels.mappers.messages import MappingContext, segment_mapper
from channels.mappers.v2 import Repetition, Segment
from channels.mappers.vocab import v2_table_system

SD = "http://hl7.org/fhir/StructureDefinition/"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
V2_0203 = v2_table_system("0203")
LOCATION_PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
UCUM = "http://unitsofmeasure.org"
_R5_PLANNED = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter."

# Official displays of the v3 ActCode encounter classes the PatientClass map produces
# (the IG concept map gives codes only).
_CLASS_DISPLAY = {
    "AMB": "ambulatory",
    "EMER": "emergency",
    "FLD": "field",
    "HH": "home health",
    "IMP": "inpatient encounter",
    "ACUTE": "inpatient acute",
    "NONAC": "inpatient non-acute",
    "OBSENC": "observation encounter",
    "PRENC": "pre-admission",
    "SS": "short stay",
    "VR": "virtual",
}

# IG PV1[Encounter] rows PV1-7/8/9/17/52 (and PV2-13): field → participant type. The IG
# puts "attender" in coding.display for ATND and in type.text for the others.
_PARTICIPANTS: tuple[tuple[int, str, str, bool], ...] = (
    (7, "ATND", "attender", True),
    (8, "REF", "referrer", False),
    (9, "CON", "consultant", False),
    (17, "ADM", "admitter", False),
    (52, "PART", "Participation", False),
)

_TERMINAL_EVENT_STATUS = frozenset({"finished", "cancelled"})
LOCATION_STATUS = frozenset({"active", "suspended", "inactive"})

# IG PL[Location]: PL components from most to least granular, with their physical type.
# PL.1 (point of care) has no resolved code in the IG ("extension??-poc"); "wa" (ward)
# is the closest location-physical-type concept.
_PL_LEVELS: tuple[tuple[int, str, str], ...] = (
    (3, "bd", "bed"),
    (2, "ro", "room"),
    (8, "lvl", "level"),
    (1, "wa", "point-of-care"),
    (7, "bu", "building"),
    (4, "si", "facility"),
)


# ---------------------------------------------------------------- shared helpers


def practitioner_reference(rep: Repetition, seg: Segment, ctx: MappingContext, kind: str) -> dict[str, Any] | None:
    """IG XCN[Practitioner]: add the Practitioner of one XCN repetition; its Reference.

    `kind` makes the entry's role unique within the segment (e.g. "Practitioner-7-1").
    None when the XCN holds neither an id nor a name.
    """
    practitioner = dt.xcn_to_practitioner(rep, ctx.settings)
    if practitioner is None:
        return None
    url = ctx.add(practitioner, seg, kind)
    return ctx.bundle.reference(url)


def pl_to_location(rep: Repetition, seg: Segment, ctx: MappingContext, kind: str) -> str | None:
    """IG PL[Location]: one Location per valued PL level, most granular first, each
    ``partOf`` the next; returns the most granular one's fullUrl (None when PL is empty).

    PL.1/2/3/4/7/8 (HD) → Location.identifier (HD[Identifier]), mode "instance" and
    physicalType (bd, ro, lvl, wa, bu, si); PL.9 → description and PL.10 (EI) →
    identifier[2] of the most granular Location; PL.5 → its status when a FHIR code;
    PL.11 (HD[Organization]) → identifier.assigner of every level, PL.10's when EI.2-4 is empty.
    """
    levels = [(comp, code) for comp, code, _ in _PL_LEVELS if rep.component(comp) or rep.component(comp, 2)]
    if not levels:
        return _unleveled_location(rep, seg, ctx, kind)
    # PL.11 → identifier.assigner of every level (and PL.10's default assigner)
    authority = dt.hd_to_organization(dt.hd_of(rep, 11))
    assigner = ctx.bundle.reference(ctx.add(authority, seg, f"{kind}-Organization-11")) if authority else None
    urls: list[str] = []
    for position, (comp, code) in enumerate(levels):
        location: dict[str, Any] = {
            "resourceType": "Location",
            "identifier": dt.hd_to_identifiers(dt.hd_of(rep, comp)),  # IG HD[Identifier]
            "mode": "instance",
            "physicalType": {"coding": [{"system": LOCATION_PHYSICAL_TYPE, "code": code}]},
        }
        if position == 0:
            status = rep.component(5).lower()
            if status in LOCATION_STATUS:
                location["status"] = status
            description = rep.component(9)
            if description:
                location["description"] = description
            if assigner is None:
                entity = _ei_organization(seg, rep, 10, ctx, f"{kind}-Organization-10")
            else:  # IG PL.10 "IF PL.11 VALUED" → EI[Identifier-DefaultAssigner]: EI.1 only
                value = component_as_repetition(seg, rep, 10).component(1)
                entity = {"value": value} if value else None
            if entity is not None:
                location["identifier"].append(entity)
        if assigner is not None:
            for ident in location["identifier"]:
                ident.setdefault("assigner", dict(assigner))
        urls.append(ctx.add(location, seg, f"{kind}-{code}"))
    for child, parent in pairwise(urls):
        resource = ctx.bundle.resource(child)
        if resource is not None and child != parent:
            resource.setdefault("partOf", ctx.bundle.reference(parent))
    return urls[0]


def _unleveled_location(rep: Repetition, seg: Segment, ctx: MappingContext, kind: str) -> str | None:
    """A PL naming no level (PL.1-4, 7, 8) but describing the place (IG PL.9 → description,
    PL.10 → identifier, PL.5 → status): one Location holding what is there, so the
    description is not lost. None when PL holds none of these."""
    location: dict[str, Any] = {"resourceType": "Location", "mode": "instance"}
    description = rep.component(9)
    if description:
        location["description"] = description
    status = rep.component(5).lower()
    if status in LOCATION_STATUS:
        location["status"] = status
    entity = _ei_organization(seg, rep, 10, ctx, f"{kind}-Organization-10")
    if entity is not None:
        location["identifier"] = [entity]
    if len(location) == 2:
        return None
    return ctx.add(location, seg, f"{kind}-described")


def component_as_repetition(seg: Segment, rep: Repetition, component: int) -> Repetition:
    """A composite held in one component (its parts are subcomponents, e.g. DLD.1 CWE, PL.10 EI)
    as a Repetition of its own, so the datatype maps read its parts as components."""
    delims = seg.delims
    raw = rep.component_raw(component)
    if delims.subcomponent and delims.component:
        raw = raw.replace(delims.subcomponent, delims.component)
    return Repetition(raw, delims)


def _ei_organization(
    seg: Segment, rep: Repetition, component: int, ctx: MappingContext, kind: str
) -> dict[str, Any] | None:
    """IG EI[Identifier-Organization]: EI.1 → value; EI.2-4 → assigner (an Organization
    identified by that HD)."""
    ei = component_as_repetition(seg, rep, component)
    value = ei.component(1)
    if not value:
        return None
    ident: dict[str, Any] = {"value": value}
    organization = dt.hd_to_organization(dt.HD(ei.component(2), ei.component(3), ei.component(4)))
    if organization is not None:
        ident["assigner"] = ctx.bundle.reference(ctx.add(organization, seg, kind))
    return ident


def _codeable(
    rep: Repetition, ctx: MappingContext, concept_map: str | None, table: str | None
) -> dict[str, Any] | None:
    return dt.cwe_to_codeable_concept(rep, ctx.settings, concept_map, table)


def _participant(reference: dict[str, Any], code: str, label: str, label_in_display: bool) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": V3_PARTICIPATION, "code": code}
    kind: dict[str, Any] = {"coding": [coding]}
    if label_in_display:
        coding["display"] = label
    else:
        kind["text"] = label
    return {"type": [kind], "individual": reference}


# ---------------------------------------------------------------- PV1


def _encounter_class(seg: Segment, ctx: MappingContext) -> dict[str, Any]:
    """IG PV1-2 → class (CWE[Coding], PatientClass[EncounterClass])."""
    code = seg.value(2)
    if not code:
        return {
            "system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor",
            "code": "UNK",
            "display": "unknown",
        }
    concept = ctx.settings.vocab.lookup("PatientClass[EncounterClass]", code)
    if concept is None or not concept.code:
        return {"system": v2_table_system("0004"), "code": code}
    coding: dict[str, Any] = {"system": concept.system or v2_table_system("0004"), "code": concept.code}
    display = concept.display or (_CLASS_DISPLAY.get(concept.code, "") if concept.system == V3_ACT_CODE else "")
    if display:
        coding["display"] = display
    return coding


def _encounter_status(seg: Segment, ctx: MappingContext) -> str:
    """Status by the precedence in the module docstring."""
    if seg.field(45):
        return "finished"  # IG row PV1-45 "IF PV1-45 VALUED → status finished"
    vocab = ctx.settings.vocab
    by_event = vocab.lookup("Event[EncounterStatus]", ctx.event)
    if by_event is not None and by_event.code in _TERMINAL_EVENT_STATUS:
        return by_event.code
    by_class = vocab.lookup("PatientClass[EncounterStatus]", seg.value(2)) if seg.value(2) else None
    if by_class is not None and by_class.code:
        return by_class.code
    if by_event is not None and by_event.code:
        return by_event.code
    return "unknown"


def _visit_identifier(rep: Repetition, ctx: MappingContext) -> dict[str, Any] | None:
    """IG PV1-19 → identifier[1] (CX[Identifier]) with type VN "visit number"."""
    ident = dt.cx_to_identifier(rep, ctx.settings)
    if ident is None:
        return None
    ident["type"] = {"coding": [{"system": V2_0203, "code": "VN"}], "text": "visit number"}
    return ident


def _add_locations(seg: Segment, ctx: MappingContext, enc: dict[str, Any]) -> None:
    planned = seg.value(2) == "P"
    rows: tuple[tuple[int, str, str], ...] = (
        (3, "assigned", "planned" if planned else "active"),  # IG PV1-3
        (6, "prior", "completed"),  # IG PV1-6
        (11, "temporary", "active"),  # IG PV1-11
        (42, "pending", "reserved"),  # IG PV1-42
        # PV1-43 (prior temporary location): no PV1[Encounter] row; mapped like PV1-11 with
        # status completed (as CDC ReportStream and Microsoft do) rather than dropped.
        (43, "temporary", "completed"),
    )
    locations: list[dict[str, Any]] = []
    for number, label, status in rows:
        for index, rep in enumerate(seg.field(number), start=1):
            url = pl_to_location(rep, seg, ctx, f"Location-{number}-{index}")
            if url is None:
                continue
            item: dict[str, Any] = {"location": ctx.bundle.reference(url), "status": status}
            if label == "temporary":
                # IG PV1-11 row: subject-locationClassification = temporary.
                item["extension"] = [
                    {
                        "url": SD + "subject-locationClassification",
                        "valueCodeableConcept": {
                            "coding": [
                                {
                                    "system": "http://hl7.org/fhir/ValueSet/subject-location",
                                    "code": "temporary",
                                }
                            ]
                        },
                    }
                ]
            if label == "assigned" and index == 1:
                _bed_status(seg, ctx, url)
            locations.append(item)
    if locations:
        enc.setdefault("location", []).extend(locations)


def _bed_status(seg: Segment, ctx: MappingContext, location_url: str) -> None:
    """IG PV1-40 → the most granular Location's operationalStatus, if PV1-3.2 or .3 is valued."""
    status = seg.rep(40)
    if not status:
        return
    if not (seg.rep(3).component(2) or seg.rep(3).component(3)):
        ctx.reject(seg, 40)
        return
    coding = dt.cwe_to_coding(status, ctx.settings, "BedStatus", "0116")
    location = ctx.bundle.resource(location_url)
    if coding is not None and location is not None:
        location["operationalStatus"] = coding


def _add_participants(seg: Segment, ctx: MappingContext, enc: dict[str, Any]) -> None:
    for number, code, label, in_display in _PARTICIPANTS:
        for index, rep in enumerate(seg.field(number), start=1):
            ref = practitioner_reference(rep, seg, ctx, f"Practitioner-{number}-{index}")
            if ref is not None:
                enc.setdefault("participant", []).append(_participant(ref, code, label, in_display))


def _hospitalization(seg: Segment, ctx: MappingContext) -> dict[str, Any]:
    s = ctx.settings
    hosp: dict[str, Any] = {}
    pre = dt.cx_to_identifier(seg.rep(5), s) if seg.field(5) else None  # IG PV1-5
    if pre is not None:
        hosp["preAdmissionIdentifier"] = pre
    singles = (
        (14, "admitSource", None, "0023"),  # IG PV1-14 (table 0023 has no concept map)
        (13, "reAdmission", "ReadmissionIndicator", "0092"),  # IG PV1-13
        (36, "dischargeDisposition", "DischargeDisposition", "0112"),  # IG PV1-36
    )
    for number, element, concept_map, table in singles:
        if seg.field(number):
            concept = _codeable(seg.rep(number), ctx, concept_map, table)
            if concept is not None:
                hosp[element] = concept
    lists = (
        (15, "specialArrangement", "AmbulatoryStatus", "0009"),  # IG PV1-15
        (16, "specialCourtesy", "VIPIndicator", "0099"),  # IG PV1-16
        (38, "dietPreference", "DietType", "0114"),  # IG PV1-38
    )
    for number, element, concept_map, table in lists:
        concepts = [c for c in (_codeable(r, ctx, concept_map, table) for r in seg.field(number)) if c]
        if concepts:
            hosp[element] = concepts
    destination = _discharge_location(seg, ctx)
    if destination is not None:
        hosp["destination"] = destination
    return hosp


def _discharge_location(seg: Segment, ctx: MappingContext) -> dict[str, Any] | None:
    """IG PV1-37 (DLD[Location-Discharge]): a new Location whose type is DLD.1."""
    rep = seg.rep(37)
    if not rep:
        return None
    location_type = _codeable(component_as_repetition(seg, rep, 1), ctx, "DischargedToLocation", "0113")
    if location_type is None:
        ctx.reject(seg, 37)
        return None
    location = {"resourceType": "Location", "mode": "instance", "type": [location_type]}
    return ctx.bundle.reference(ctx.add(location, seg, "Location-37"))


def _episode_of_care(seg: Segment, ctx: MappingContext) -> dict[str, Any] | None:
    """IG PV1-53/PV1-54 → episodeOfCare (EpisodeOfCare: description extension, identifiers)."""
    description = seg.value(53)
    identifiers = [i for i in (dt.cx_to_identifier(r, ctx.settings) for r in seg.field(54)) if i]
    if not (description or identifiers):
        return None
    if ctx.patient is None:
        ctx.reject(seg, 53)
        ctx.reject(seg, 54)
        return None
    episode: dict[str, Any] = {
        "resourceType": "EpisodeOfCare",
        "status": "active",
        "patient": ctx.bundle.reference(ctx.patient),
    }
    if description:
        episode["extension"] = [{"url": SD + "resource-instance-description", "valueString": description}]
    if identifiers:
        episode["identifier"] = identifiers
    return ctx.bundle.reference(ctx.add(episode, seg, "EpisodeOfCare"))


@segment_mapper("PV1", summary="PV1 → Encounter (IG PV1[Encounter])")
def pv1_to_encounter(seg: Segment, ctx: MappingContext) -> None:
    """IG PV1[Encounter]: one Encounter per PV1, subject = the PID's Patient."""
    s = ctx.settings
    seg.mark_used(1)  # PV1-1 Set ID: the segment's position, no FHIR meaning
    enc: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": _encounter_status(seg, ctx),  # IG PV1-2 / PV1-45 / MSH-9
        "class": _encounter_class(seg, ctx),  # IG PV1-2
    }
    identifiers = [i for i in (_visit_identifier(r, ctx) for r in seg.field(19)) if i]  # IG PV1-19
    identifiers += [i for i in (dt.cx_to_identifier(r, s) for r in seg.field(50)) if i]  # IG PV1-50
    if identifiers:
        enc["identifier"] = identifiers
    types = [c for c in (_codeable(r, ctx, "AdmissionType", "0007") for r in seg.field(4)) if c]
    if types:
        enc["type"] = types  # IG PV1-4
    if seg.field(10):
        service = _codeable(seg.rep(10), ctx, "HospitalService", "0069")  # IG PV1-10
        if service is not None:
            enc["serviceType"] = service
    if ctx.patient is not None:
        enc["subject"] = ctx.bundle.reference(ctx.patient)
    _add_participants(seg, ctx, enc)  # IG PV1-7/8/9/17/52
    period: dict[str, Any] = {}
    for number, element in ((44, "start"), (45, "end")):  # IG PV1-44 / PV1-45
        text = seg.value(number)
        if text and not dt.put_datetime(period, element, text, s):
            ctx.reject(seg, number)
    if period:
        enc["period"] = period
    hospitalization = _hospitalization(seg, ctx)
    if hospitalization:
        enc["hospitalization"] = hospitalization
    _add_locations(seg, ctx, enc)  # IG PV1-3/6/11/42 (+ PV1-40)
    episode = _episode_of_care(seg, ctx)
    if episode is not None:
        enc["episodeOfCare"] = [episode]
    url = ctx.add(enc, seg, "Encounter")
    ctx.current["Encounter"] = url


# ---------------------------------------------------------------- PV2


def _narrative(text: str) -> dict[str, str]:
    body = html.escape(text).replace("\n", "<br/>")
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'}


@segment_mapper("PV2", summary="PV2 → Encounter (IG PV2[Encounter])")
def pv2_to_encounter(seg: Segment, ctx: MappingContext) -> None:
    """IG PV2[Encounter]: enrich the Encounter of the PV1 before this PV2 (none: not mapped)."""
    url = ctx.current.get("Encounter")
    enc = ctx.bundle.resource(url) if url else None
    if enc is None:
        return  # no PV1: every PV2 field is reported unmapped
    s = ctx.settings
    for index, rep in enumerate(seg.field(1), start=1):  # IG PV2-1 prior pending location
        loc = pl_to_location(rep, seg, ctx, f"Location-1-{index}")
        if loc is not None:
            enc.setdefault("location", []).append({"location": ctx.bundle.reference(loc), "status": "planned"})
    reasons = [c for c in (_codeable(r, ctx, None, None) for r in seg.field(3)) if c]
    if reasons:
        enc.setdefault("reasonCode", []).extend(reasons)  # IG PV2-3
    extensions: list[dict[str, Any]] = []
    for number, url_name in ((8, "plannedStartDate"), (9, "plannedEndDate")):  # IG PV2-8 / PV2-9
        text = seg.value(number)
        if not text:
            continue
        when = dt.dtm_to_datetime(text, s)
        if when is not None:  # (an Extension cannot hold `_valueDateTime`: no originalText here)
            extensions.append({"url": _R5_PLANNED + url_name, "valueDateTime": when.value})
        else:
            ctx.reject(seg, number)
    length = dt.nm_to_number(seg.value(11)) if seg.value(11) else None
    if length is not None:  # IG PV2-11, NM[Quantity-LengthOfStay]
        enc["length"] = {"value": length, "unit": "days", "system": UCUM, "code": "d"}
    elif seg.value(11):
        ctx.reject(seg, 11)
    description = seg.text(12)
    if description:  # IG PV2-12 → text.div
        enc["text"] = _narrative(description)
    for index, rep in enumerate(seg.field(13), start=1):  # IG PV2-13 referral source
        ref = practitioner_reference(rep, seg, ctx, f"Practitioner-13-{index}")
        if ref is not None:
            enc.setdefault("participant", []).append(_participant(ref, "REF", "referrer", False))
    protection = dt.id_to_boolean(seg.value(22)) if seg.value(22) else None
    if protection is not None:  # IG PV2-22 → meta.security (YesNoIndicator)
        concept = s.vocab.lookup("YesNoIndicator", seg.value(22))
        coding = (
            {"system": concept.system, "code": concept.code}
            if concept is not None and concept.code
            else {"system": v2_table_system("0136"), "code": seg.value(22).upper()}
        )
        enc.setdefault("meta", {}).setdefault("security", []).append(coding)
    elif seg.value(22):  # not a table 0136 value (Y/N): no security label to claim
        ctx.reject(seg, 22)
    if seg.field(23) and "serviceProvider" not in enc:
        # PV2-23 (clinic organization name, XON) has no IG row; the clinic that provides the
        # visit is what Encounter.serviceProvider means, so it is mapped there.
        clinic = dt.xon_to_organization(seg.rep(23), s)
        if clinic is not None:
            enc["serviceProvider"] = ctx.bundle.reference(ctx.add(clinic, seg, "Organization-23"))
    if seg.field(25):  # IG PV2-25 → priority
        priority = _codeable(seg.rep(25), ctx, "EncounterPriority", "0217")
        if priority is not None:
            enc["priority"] = priority
    if seg.field(38):  # IG PV2-38 → encounter-modeOfArrival extension
        arrival = dt.cwe_to_coding(seg.rep(38), s, "ModeOfArrivalCode", "0430")
        if arrival is not None:
            extensions.append({"url": SD + "encounter-modeOfArrival", "valueCoding": arrival})
    if extensions:
        enc.setdefault("extension", []).extend(extensions)


# ---------------------------------------------------------------- R4B → R5

_R5_STATUS = {
    "planned": "planned",
    "arrived": "in-progress",
    "triaged": "in-progress",
    "in-progress": "in-progress",
    "onleave": "on-hold",
    "finished": "completed",
    "cancelled": "cancelled",
    "entered-in-error": "entered-in-error",
    "unknown": "unknown",
}


def _encounter_r5(res: dict[str, Any]) -> None:
    """R5 Encounter: class → [CodeableConcept]; status codes; period → actualPeriod;
    hospitalization → admission (diet/special* move up); participant.individual → actor;
    reasonCode → reason.value; serviceType → [CodeableReference]; diagnosis condition/use
    lists (rank dropped); location.physicalType → form; planned dates native."""
    status = res.get("status")
    if isinstance(status, str):
        res["status"] = _R5_STATUS.get(status, "unknown")
    cls = res.pop("class", None)
    if isinstance(cls, dict):
        res["class"] = [{"coding": [cls]}]
    if "period" in res:
        res["actualPeriod"] = res.pop("period")
    hosp = res.pop("hospitalization", None)
    if isinstance(hosp, dict):
        for key in ("dietPreference", "specialArrangement", "specialCourtesy"):
            if key in hosp:
                res[key] = hosp.pop(key)
        if hosp:
            res["admission"] = hosp
    for participant in res.get("participant", []):
        if "individual" in participant:
            participant["actor"] = participant.pop("individual")
    reasons = res.pop("reasonCode", None)
    if reasons:
        res["reason"] = [{"value": [{"concept": concept}]} for concept in reasons]
    service = res.pop("serviceType", None)
    if isinstance(service, dict):
        res["serviceType"] = [{"concept": service}]
    for diagnosis in res.get("diagnosis", []):
        condition = diagnosis.pop("condition", None)
        if isinstance(condition, dict):
            diagnosis["condition"] = [{"reference": condition}]
        use = diagnosis.pop("use", None)
        if isinstance(use, dict):
            diagnosis["use"] = [use]
        diagnosis.pop("rank", None)
    for location in res.get("location", []):
        if "physicalType" in location:
            location["form"] = location.pop("physicalType")
    kept = []
    for ext in res.get("extension", []):
        url = str(ext.get("url", ""))
        if url.startswith(_R5_PLANNED) and "valueDateTime" in ext:
            res[url[len(_R5_PLANNED) :]] = ext["valueDateTime"]
        else:
            kept.append(ext)
    if "extension" in res:
        if kept:
            res["extension"] = kept
        else:
            del res["extension"]


def _location_r5(res: dict[str, Any]) -> None:
    """R5 Location: physicalType → form."""
    if "physicalType" in res:
        res["form"] = res.pop("physicalType")


register_r5_adapter("Encounter", _encounter_r5)
register_r5_adapter("Location", _location_r5)
