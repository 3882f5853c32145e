"""Orders and results: ORC/OBR → ServiceRequest and DiagnosticReport, OBX → Observation,
NTE → annotations, SPM → Specimen, RXA/RXR → Immunization (VXU), SCH/AIS/AIG/AIL/AIP →
Appointment (SIU).

HL7 v2-to-FHIR IG maps ``ORC[ServiceRequest]``, ``ORC[DiagnosticReport]``,
``ORC[Immunization]``, ``OBR[ServiceRequest]``, ``OBR[DiagnosticReport]``,
``OBX[Observation]``, ``OBX[Observation-Component]``, ``NTE[Observation]``,
``NTE[ServiceRequest]``, ``SPM[Specimen]``, ``RXA[Immunization]``, ``RXR[Immunization]``,
``SCH[Appointment]``, ``AIS/AIG/AIL/AIP[Appointment]``; message maps ORU_R01, ORM_O01,
OML_O21, VXU_V04, SIU_S12.

Groups follow message order (messages.py): an ORC opens an order; the OBR after it
enriches that order's ServiceRequest (else the OBR opens one); in result messages (ORU,
OUL) the OBR also gives a DiagnosticReport based on it; each OBX becomes an Observation
that the DiagnosticReport lists as a result (in orders, the ServiceRequest's
supportingInfo); NTE annotates the Observation or ServiceRequest it follows; SPM's
Specimen is linked from the report, the order and the group's Observations. In VXU an
ORC belongs to the RXA after it (IG ORC[Immunization]) and gives no ServiceRequest.

Choices where the IG is open (each also noted at its row):
- Required elements v2 may leave empty get the FHIR "unknown" codes: ServiceRequest.status
  (ORC-5, else ORC-1 via OrderControlCode, else unknown), DiagnosticReport.status (OBR-25)
  and Observation.status (OBX-11); DiagnosticReport.code / Observation.code without OBR-4
  / OBX-3 carry a data-absent-reason extension.
- ORC-9 → authoredOn whatever ORC-1 is (the IG's "IF ORC-1 IS NW" leaves other order
  controls without any target for the transaction time).
- ORC-12 / ORC-21: a Practitioner, an Organization, or both joined in a PractitionerRole
  (IG requester(PractitionerRole.practitioner / .organization)).
- OBX-5 repeating: text types (ST, TX, FT) are joined with newlines into one valueString
  (a repeated TX is one multi-line text); other types become components (IG
  OBX[Observation-Component]).
- OBX-6 units: UCUM system only when OBX-6.3 names it ("UCUM"); other systems as coded.
- OBX-7 is kept as referenceRange.text (IG) and, when it reads "low-high", "<high" or
  ">low", also as low/high quantities in OBX-6's units.
- OBX-11 "N" (not asked) → dataAbsentReason not-asked (IG row); status unknown.
- ED values: IG OBX-5 ED row → the R5 backport extension valueAttachment (R4B) / the
  native valueAttachment (R5); Hex and plain-text data are re-encoded as base64.
- NTE-3 repeats: one Annotation per repetition (each with NTE-5/NTE-6). NTE after PID or
  other segments we do not annotate is not mapped (its fields are reported).
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timedelta
from typing import Any

from channels.mappers import datatypes as dt
from channels.mappers.bundle import register_r5_adapter
from channels.mappers.messages import MappingContext, segment_mapper
from channels.mappers.segments.encounter import (
    LOCATION_STATUS,
    component_as_repetition,
    pl_to_location,
    practitioner_reference,
)
from channels.mappers.v2 import Repetition, Segment
from channels.mappers.vocab import v2_table_system

SD = "http://hl7.org/fhir/StructureDefinition/"
DATA_ABSENT_REASON = SD + "data-absent-reason"
V2_0203 = v2_table_system("0203")
UCUM = "http://unitsofmeasure.org"
# The URL exactly as the IG's OBX-5 ED row gives it.
VALUE_ATTACHMENT = "https://hl7.org/fhir/5.0/StructureDefinition/extension-Observation.valueAttachment"
_RESULT_MESSAGES = frozenset({"ORU", "OUL"})
_TEXT_TYPES = frozenset({"ST", "TX", "FT"})
_CODED_TYPES = frozenset({"CWE", "CE", "CNE", "CF"})

_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$")  # v2 TM
_NUMERIC_RANGE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)\s*$")  # OBX-7 "low-high"
_NUMERIC_BOUND = re.compile(r"^\s*([<>])=?\s*(\d+(?:\.\d+)?)\s*$")  # OBX-7 "<high" / ">low"

_ORC = "orders.orc"  # ctx.extra: the ORC segment waiting for its OBR/RXA
_GROUP_OBSERVATIONS = "orders.observations"  # ctx.extra: Observation urls of the current OBR group
_OBR_SPECIMEN = "orders.obr_specimen"  # ctx.extra: the Specimen of the current OBR (result messages)
_SPM_SPECIMEN = "orders.spm_specimen"  # ctx.extra: the Specimen of the SPM the next OBX describes


# ---------------------------------------------------------------- small helpers


def _absent_concept() -> dict[str, Any]:
    return {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]}


def _typed_identifier(ident: dict[str, Any], code: str) -> dict[str, Any]:
    ident["type"] = {"coding": [{"system": V2_0203, "code": code}]}
    return ident


def _ei(seg: Segment, number: int, ctx: MappingContext, type_code: str | None = None) -> dict[str, Any] | None:
    """IG EI[Identifier-Extension] of SEG-number's first repetition, typed (PLAC, FILL ...)."""
    if not seg.field(number):
        return None
    ident = dt.ei_to_identifier(seg.rep(number), ctx.settings)
    if ident is not None and type_code:
        _typed_identifier(ident, type_code)
    return ident


def _order_match(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The identifier an order's ServiceRequest / DiagnosticReport is matched on: its filler
    order number (ORC-3 / OBR-3, typed FILL) when it has one with a system, else the default.

    One requisition's OBRs often share the placer number (ORC-2 / OBR-2) while each OBR has
    its own filler number (v2 chapter 4.5.1.3: "the order number associated with the filling
    application"); matching on the placer number would merge distinct orders into one.
    """
    for ident in resource.get("identifier", []):
        codings = ident.get("type", {}).get("coding", [{}]) if isinstance(ident, dict) else [{}]
        if codings[0].get("code") == "FILL" and ident.get("system") and ident.get("value"):
            return dict(ident)
    return None


def _add_order(ctx: MappingContext, resource: dict[str, Any], seg: Segment, kind: str) -> str:
    """Add an OBR's ServiceRequest / DiagnosticReport, matched on `_order_match`.

    In result messages (IG ORU_R01: ServiceRequest[n] per ORDER_OBSERVATION) an earlier order
    holding the same identifier but another OBR-4 code (a requisition's panels sharing one
    placer number, no filler numbers) is another order: see `_add_apart`. An order message
    (ORM_O01 ORDER) holds one OBR per ORC; a second one is out of structure and merges.
    """
    match = _order_match(resource)
    if ctx.message_code in _RESULT_MESSAGES:
        return _add_apart(ctx, resource, seg, kind, match)
    return ctx.add(resource, seg, kind, match)


def _add_apart(ctx: MappingContext, resource: dict[str, Any], seg: Segment, kind: str, match: Any) -> str:
    """ctx.add, except that a resource whose identifier an earlier entry of another `code`
    holds gets its own identity (its deterministic fullUrl) instead of being merged into that
    entry, which would drop its code and value silently (two OBX with one OBX-21, two OBR
    with one placer number)."""
    existing = ctx.bundle.resource(ctx.bundle.existing(resource, match) or "")
    if existing is not None and "code" in existing and "code" in resource and existing["code"] != resource["code"]:
        match = {}
    return ctx.add(resource, seg, kind, match)


def _add_identifier(resource: dict[str, Any], ident: dict[str, Any] | None) -> None:
    if ident is not None and ident not in resource.setdefault("identifier", []):
        resource["identifier"].append(ident)


def _put_dt(target: dict[str, Any], element: str, seg: Segment, number: int, ctx: MappingContext) -> bool:
    text = seg.value(number)
    if not text:
        return False
    if dt.put_datetime(target, element, text, ctx.settings):
        return True
    ctx.reject(seg, number)
    return False


def _concept(
    seg: Segment, number: int, ctx: MappingContext, concept_map: str | None = None, table: str | None = None
) -> dict[str, Any] | None:
    if not seg.field(number):
        return None
    return dt.cwe_to_codeable_concept(seg.rep(number), ctx.settings, concept_map, table)


def _concepts(
    seg: Segment, number: int, ctx: MappingContext, concept_map: str | None = None, table: str | None = None
) -> list[dict[str, Any]]:
    concepts = []
    for rep in seg.field(number):
        concept = dt.cwe_to_codeable_concept(rep, ctx.settings, concept_map, table)
        if concept:
            concepts.append(concept)
    return concepts


def _patient_ref(ctx: MappingContext) -> dict[str, Any] | None:
    return ctx.bundle.reference(ctx.patient) if ctx.patient else None


def _encounter_ref(ctx: MappingContext) -> dict[str, Any] | None:
    url = ctx.current.get("Encounter")
    return ctx.bundle.reference(url) if url else None


def _resource(ctx: MappingContext, kind: str) -> dict[str, Any] | None:
    url = ctx.current.get(kind)
    return ctx.bundle.resource(url) if url else None


def _append_ref(resource: dict[str, Any] | None, element: str, url: str, ctx: MappingContext) -> None:
    if resource is None:
        return
    refs = resource.setdefault(element, [])
    ref = ctx.bundle.reference(url)
    if ref not in refs:
        refs.append(ref)


def _addresses(seg: Segment, number: int, ctx: MappingContext) -> list[dict[str, Any]]:
    """Every repetition of an XAD field as FHIR Addresses (IG XAD[Address])."""
    found = (dt.xad_to_address(rep, ctx.settings) for rep in seg.field(number))
    return [address for address in found if address is not None]


def _contact_points(seg: Segment, number: int, ctx: MappingContext) -> list[dict[str, Any]]:
    """Every repetition of an XTN field as FHIR ContactPoints (IG XTN[ContactPoint])."""
    found = (dt.xtn_to_contact_point(rep, ctx.settings) for rep in seg.field(number))
    return [point for point in found if point is not None]


def _orc_requester(orc: Segment, ctx: MappingContext) -> dict[str, Any] | None:
    """IG ORC-12 / ORC-21..24 → ServiceRequest.requester: the ordering provider (XCN, with
    ORC-24 as Practitioner.address), the ordering facility (XON, with ORC-22 as address and
    ORC-23 as telecom) or both joined by a PractitionerRole. ORC-22..24 without the resource
    they describe stay unmapped (an Organization needs a name or an identifier, org-1)."""
    practitioner = None
    if orc.field(12):
        doctor = dt.xcn_to_practitioner(orc.rep(12), ctx.settings)
        if doctor is not None:
            if addresses := _addresses(orc, 24, ctx):
                doctor["address"] = addresses
            practitioner = ctx.bundle.reference(ctx.add(doctor, orc, "Practitioner-12"))
    organization = None
    if orc.field(21):
        org = dt.xon_to_organization(orc.rep(21), ctx.settings)
        if org is not None:
            if addresses := _addresses(orc, 22, ctx):
                org["address"] = addresses
            if telecom := _contact_points(orc, 23, ctx):
                org["telecom"] = telecom
            organization = ctx.bundle.reference(ctx.add(org, orc, "Organization-21"))
    if practitioner and organization:
        role = {"resourceType": "PractitionerRole", "practitioner": practitioner, "organization": organization}
        return ctx.bundle.reference(ctx.add(role, orc, "PractitionerRole-12"))
    return practitioner or organization


def _referenced_type(reference: Any, ctx: MappingContext) -> str | None:
    """The resourceType of the Bundle entry a Reference points at (None when there is none)."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    resource = ctx.bundle.resource(reference["reference"])
    return str(resource.get("resourceType")) if resource is not None else None


# ---------------------------------------------------------------- ORC


def _order_status(orc: Segment | None, ctx: MappingContext) -> str:
    """IG ORC-5 (OrderStatus), else ORC-1 (OrderControlCode[ServiceRequest.status]), else unknown."""
    if orc is None:
        return "unknown"
    vocab = ctx.settings.vocab
    for number, concept_map in ((5, "OrderStatus"), (1, "OrderControlCode[ServiceRequest.status]")):
        code = orc.value(number)
        concept = vocab.lookup(concept_map, code) if code else None
        if concept is not None and concept.code:
            return concept.code
    return "unknown"


def _version(ctx: MappingContext) -> tuple[int, ...]:
    """MSH-12 as numbers ("2.5.1" → (2, 5, 1)); (0,) when unreadable."""
    parts = ctx.message.msh.value(12).split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else (0,)


def _placer_group(orc: Segment, ctx: MappingContext) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """ORC-4 placer group number as (PGN identifier, FGN identifier).

    Before v2.7 ORC-4 is an EI (IG row "ORC-4 EI → requisition PGN"; with ORC-4.2 valued the
    same value is the FGN identifier, IG row "IF ORC-4.2 VALUED"); from v2.7 it is an EIP
    (EIP.1 → PGN, EIP.2 → FGN).
    """
    rep = orc.rep(4)
    if _version(ctx) >= (2, 7):
        placer, filler = _eip_identifiers(rep, ctx)
        return placer, filler
    ident = dt.ei_to_identifier(rep, ctx.settings)
    if ident is None:
        return None, None
    filler_group = None
    if rep.component(2):
        filler_group = _typed_identifier({"value": ident["value"]}, "FGN")
    return _typed_identifier(ident, "PGN"), filler_group


def _apply_orc(orc: Segment, ctx: MappingContext, request: dict[str, Any]) -> None:
    """IG ORC[ServiceRequest] rows onto a ServiceRequest."""
    s = ctx.settings
    _add_identifier(request, _ei(orc, 2, ctx, "PLAC"))  # IG ORC-2
    _add_identifier(request, _ei(orc, 3, ctx, "FILL"))  # IG ORC-3
    if orc.field(4):  # IG ORC-4 → requisition (PGN); the filler group → identifier FGN
        placer_group, filler_group = _placer_group(orc, ctx)
        if placer_group is not None:
            request["requisition"] = placer_group
        if filler_group is not None and not orc.field(38):
            _add_identifier(request, filler_group)
    for rep in orc.field(33):  # IG ORC-33 → identifier PLAC (CX)
        alternate = dt.cx_to_identifier(rep, s)
        if alternate is not None:
            _add_identifier(request, _typed_identifier(alternate, "PLAC"))
    _add_identifier(request, _ei(orc, 38, ctx, "FGN"))  # IG ORC-38
    _put_dt(request, "authoredOn", orc, 9, ctx)  # IG ORC-9
    requester = _orc_requester(orc, ctx)  # IG ORC-12 / ORC-21..24
    if requester is not None:
        request["requester"] = requester
    if orc.field(14):  # IG ORC-14 → order callback phone extension
        phone = dt.xtn_to_contact_point(orc.rep(14), s)
        if phone is not None:
            request.setdefault("extension", []).append(
                {"url": SD + "servicerequest-order-callback-phone-number", "valueContactPoint": phone}
            )
    if orc.field(16) and not orc.value(5):  # IG ORC-16 → request-statusReason
        reason = _concept(orc, 16, ctx)
        if reason is not None:
            request.setdefault("extension", []).append(
                {"url": SD + "request-statusReason", "valueCodeableConcept": reason}
            )
    location_code = _concepts(orc, 29, ctx, "OrderType", "0482")  # IG ORC-29
    if location_code:
        request["locationCode"] = location_code
    for number in (1, 5):
        orc.mark_used(number)  # read through _order_status


def _new_service_request(seg: Segment, ctx: MappingContext, orc: Segment | None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": _order_status(orc, ctx),
        "intent": "order",  # IG ORC-1 / OBR row: intent "order"
    }
    request["subject"] = ctx.bundle.reference(ctx.require_patient(seg))
    encounter = _encounter_ref(ctx)
    if encounter is not None:
        request["encounter"] = encounter
    return request


@segment_mapper("ORC", summary="ORC → ServiceRequest / Immunization order data (IG ORC[ServiceRequest])")
def orc_to_service_request(seg: Segment, ctx: MappingContext) -> None:
    """IG ORC[ServiceRequest]: an order; in VXU the ORC waits for its RXA (ORC[Immunization])."""
    ctx.extra[_ORC] = seg
    ctx.extra[_GROUP_OBSERVATIONS] = []
    ctx.extra.pop(_SPM_SPECIMEN, None)
    ctx.current.pop("DiagnosticReport", None)
    ctx.current.pop("Observation", None)
    ctx.current.pop("ServiceRequest", None)
    ctx.current["orders.last"] = "ORC"
    if ctx.message_code == "VXU":
        return  # RXA reads this ORC (IG VXU_V04: ORC → Immunization)
    if ctx.patient is None:
        return  # ServiceRequest.subject is required: no PID, no order (ORC fields reported unmapped)
    request = _new_service_request(seg, ctx, seg)
    _apply_orc(seg, ctx, request)
    ctx.current["ServiceRequest"] = ctx.add(request, seg, "ServiceRequest", _order_match(request))


# ---------------------------------------------------------------- OBR


def _apply_obr(obr: Segment, ctx: MappingContext, request: dict[str, Any], orc: Segment | None) -> None:
    """IG OBR[ServiceRequest] rows onto a ServiceRequest."""
    s = ctx.settings
    if not (orc and orc.field(2)):
        _add_identifier(request, _ei(obr, 2, ctx, "PLAC"))  # IG OBR-2 IF ORC-2 NOT VALUED
    if not (orc and orc.field(3)):
        _add_identifier(request, _ei(obr, 3, ctx, "FILL"))  # IG OBR-3 IF ORC-3 NOT VALUED
    for rep in obr.field(53):  # IG OBR-53 → identifier PLAC (CX)
        ident = dt.cx_to_identifier(rep, s)
        if ident is not None:
            _add_identifier(request, _typed_identifier(ident, "PLAC"))
    code = _concept(obr, 4, ctx)  # IG OBR-4
    if code is not None:
        request["code"] = code
    priority = dt.code_of(obr.rep(5), s, "ExtendedPriorityCodes") if obr.field(5) else None
    if priority:  # IG OBR-5
        request["priority"] = priority
    elif obr.field(5):
        ctx.reject(obr, 5)
    _put_dt(request, "occurrenceDateTime", obr, 6, ctx)  # IG OBR-6
    if obr.value(11) == "G":  # IG OBR-11
        request["intent"] = "reflex-order"
    elif obr.value(11):
        obr.mark_used(11)  # A (add-on) has no FHIR intent code: stays "order"
    current = request.get("requester")
    current_type = _referenced_type(current, ctx)
    if (current is None or current_type == "Organization") and obr.field(16):  # IG OBR-16 IF ORC-12 NOT VALUED
        requester = practitioner_reference(obr.rep(16), obr, ctx, "Practitioner-16")
        if requester is not None and current is not None:
            # ORC-21 gave requester(PractitionerRole.organization): OBR-16 stands in for ORC-12
            # as that role's practitioner (IG ORC-12 row)
            role = {"resourceType": "PractitionerRole", "practitioner": requester, "organization": current}
            request["requester"] = ctx.bundle.reference(ctx.add(role, obr, "PractitionerRole-16"))
        elif requester is not None:
            request["requester"] = requester
    if obr.field(17):  # IG OBR-17 → callback phone
        phone = dt.xtn_to_contact_point(obr.rep(17), s)
        if phone is not None:
            request.setdefault("extension", []).append(
                {"url": SD + "servicerequest-order-callback-phone-number", "valueContactPoint": phone}
            )
    if obr.field(29):  # IG OBR-29 → basedOn (parent order, by identifier)
        parent = dt.ei_to_identifier(obr.rep(29), s)
        if parent is not None:
            request.setdefault("basedOn", []).append(
                {"type": "ServiceRequest", "identifier": _typed_identifier(parent, "PLAC")}
            )
    reasons = _concepts(obr, 31, ctx)  # IG OBR-31
    if reasons:
        request.setdefault("reasonCode", []).extend(reasons)
    details = _concepts(obr, 46, ctx) + _concepts(obr, 47, ctx)  # IG OBR-46 / OBR-47
    if details:
        request.setdefault("orderDetail", []).extend(details)


def _cnn_practitioner(rep: Repetition, seg: Segment, ctx: MappingContext, kind: str) -> dict[str, Any] | None:
    """IG NDL[PractitionerRole] / CNN[Practitioner]: NDL.1 (a CNN in subcomponents) → Practitioner."""
    parts = [*rep.subcomponents(1), *([""] * 11)]
    practitioner: dict[str, Any] = {"resourceType": "Practitioner"}
    if parts[0]:
        ident: dict[str, Any] = {}
        system = dt.hd_to_system(dt.HD(parts[8], parts[9], parts[10]), ctx.settings)
        if system:
            ident["system"] = system
        ident["value"] = parts[0]
        practitioner["identifier"] = [ident]
    name: dict[str, Any] = {}
    if parts[1]:
        name["family"] = parts[1]
    given = [g for g in (parts[2], parts[3]) if g]
    if given:
        name["given"] = given
    if parts[5]:
        name["prefix"] = [parts[5]]
    suffix = [x for x in (parts[4], parts[6]) if x]  # IG CNN.5 → suffix[1], CNN.7 degree → suffix[2]
    if suffix:
        name["suffix"] = suffix
    if name:
        practitioner["name"] = [name]
    if len(practitioner) == 1:
        return None
    return ctx.bundle.reference(ctx.add(practitioner, seg, kind))


def _ndl_role(seg: Segment, number: int, ctx: MappingContext, index: int = 1) -> dict[str, Any] | None:
    """IG NDL[PractitionerRole] of repetition `index` of field `number`: NDL.1 → practitioner
    (CNN[Practitioner]), NDL.2/NDL.3 → period; NDL.4-11 → location (_ndl_locations)."""
    rep = seg.rep(number, index)
    suffix = f"{number}" if index == 1 else f"{number}-{index}"
    practitioner = _cnn_practitioner(rep, seg, ctx, f"Practitioner-{suffix}")
    if practitioner is None:
        return None
    role: dict[str, Any] = {"resourceType": "PractitionerRole", "practitioner": practitioner}
    period: dict[str, Any] = {}
    for component, element in ((2, "start"), (3, "end")):
        if rep.component(component):
            dt.put_datetime(period, element, rep.component(component), ctx.settings)
    if period:
        role["period"] = period
    locations = _ndl_locations(rep, seg, ctx, f"Location-{suffix}")
    if locations:
        role["location"] = [ctx.bundle.reference(url) for url in locations]
    return ctx.bundle.reference(ctx.add(role, seg, f"PractitionerRole-{suffix}"))


def _ndl_locations(rep: Repetition, seg: Segment, ctx: MappingContext, kind: str) -> list[str]:
    """IG NDL[PractitionerRole] NDL.4-11 → location[1..6]: point of care, room, bed, facility,
    status, type, building and floor are PL.1-8 in the same order, so they are read as a PL
    (IG PL[Location]: one Location per level, each partOf the next); every level is listed.
    NDL.8 (location status) goes on every valued level: the IG's NDL.8 rows give it to
    location[n] "IF PL.n VALUED", where PL[Location] puts PL.5 on the most granular only."""
    delims = seg.delims
    pl = Repetition(delims.component.join(rep.component_raw(c) for c in range(4, 12)), delims)
    url = pl_to_location(pl, seg, ctx, kind)
    status = pl.component(5).lower()
    urls: list[str] = []
    while url is not None and url not in urls:
        urls.append(url)
        resource = ctx.bundle.resource(url)
        if resource is not None and status in LOCATION_STATUS:
            resource.setdefault("status", status)
        parent = resource.get("partOf", {}).get("reference") if resource is not None else None
        url = parent if isinstance(parent, str) else None
    return urls


def _diagnostic_report(obr: Segment, ctx: MappingContext, orc: Segment | None, request_url: str | None) -> str:
    """IG OBR[DiagnosticReport] + ORC[DiagnosticReport]."""
    s = ctx.settings
    report: dict[str, Any] = {"resourceType": "DiagnosticReport"}
    source = orc if orc is not None else None
    for seg, number, code in ((source, 2, "PLAC"), (source, 3, "FILL"), (obr, 2, "PLAC"), (obr, 3, "FILL")):
        if seg is not None:
            _add_identifier(report, _ei(seg, number, ctx, code))
    if source is not None and source.field(4):  # IG ORC[DiagnosticReport] ORC-4 (EIP)
        for ident in _placer_group(source, ctx):
            _add_identifier(report, ident)
    if source is not None and source.field(16):  # IG ORC[DiagnosticReport] ORC-16 → event-statusReason
        reason = _concept(source, 16, ctx)
        if reason is not None:
            report["extension"] = [{"url": SD + "event-statusReason", "valueCodeableConcept": reason}]
    if request_url is not None:
        report["basedOn"] = [ctx.bundle.reference(request_url)]
    status_code = obr.value(25)
    concept = s.vocab.lookup("ResultStatus[Non-Queries]", status_code) if status_code else None
    report["status"] = concept.code if concept is not None and concept.code else "unknown"  # IG OBR-25
    if status_code and (concept is None or not concept.code):
        ctx.reject(obr, 25)
    category = _concept(obr, 24, ctx, "DiagnosticServiceSectionID", "0074")  # IG OBR-24
    if category is not None:
        report["category"] = [category]
    report["code"] = _concept(obr, 4, ctx) or _absent_concept()  # IG OBR-4
    patient = _patient_ref(ctx)
    if patient is not None:
        report["subject"] = patient
    encounter = _encounter_ref(ctx)
    if encounter is not None:
        report["encounter"] = encounter
    if obr.value(8):  # IG OBR-7 / OBR-8
        period: dict[str, Any] = {}
        _put_dt(period, "start", obr, 7, ctx)
        _put_dt(period, "end", obr, 8, ctx)
        if period:
            report["effectivePeriod"] = period
    else:
        _put_dt(report, "effectiveDateTime", obr, 7, ctx)
    if obr.value(22):  # IG OBR-22 → issued (an instant needs seconds and a zone)
        issued = dt.dtm_to_instant(obr.value(22), s)
        if issued is not None:
            report["issued"] = issued
        else:
            ctx.reject(obr, 22)
    interpreter = _ndl_role(obr, 32, ctx) if obr.field(32) else None
    if interpreter is not None:  # IG OBR-32 → resultsInterpreter(PractitionerRole)
        report["resultsInterpreter"] = [interpreter]
    # IG OBR-34 / OBR-35 → performer (NDL[PractitionerRole]) with its function, every repetition
    for number, function in ((34, "SPRF"), (35, "TRANS")):
        for index in range(1, len(obr.all_repetitions(number)) + 1):
            actor = _ndl_role(obr, number, ctx, index)
            if actor is not None:
                actor_with_function = {
                    **actor,
                    "extension": [
                        {
                            "url": SD + "event-performerFunction",
                            "valueCodeableConcept": {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                        "code": function,
                                    }
                                ]
                            },
                        }
                    ],
                }
                report.setdefault("performer", []).append(actor_with_function)
    return _add_order(ctx, report, obr, "DiagnosticReport")


@segment_mapper(
    "OBR", summary="OBR → ServiceRequest and DiagnosticReport (IG OBR[ServiceRequest], OBR[DiagnosticReport])"
)
def obr_to_service_request(seg: Segment, ctx: MappingContext) -> None:
    """IG OBR[ServiceRequest] (+ OBR[DiagnosticReport] in result messages)."""
    seg.mark_used(1)  # OBR-1 Set ID
    orc = ctx.extra.get(_ORC)
    pending = ctx.current.get("orders.last") == "ORC" and ctx.current.get("ServiceRequest")
    orc_segment = orc if pending and isinstance(orc, Segment) else None
    request_url: str | None = None
    if pending:
        request_url = ctx.current["ServiceRequest"]
        request = ctx.bundle.resource(request_url)
        assert request is not None  # added by the ORC mapper of this group
        _apply_obr(seg, ctx, request, orc_segment)
    elif ctx.patient is not None:
        request = _new_service_request(seg, ctx, None)
        _apply_obr(seg, ctx, request, None)
        request_url = _add_order(ctx, request, seg, "ServiceRequest")
        ctx.current["ServiceRequest"] = request_url
    else:
        # No PID: a ServiceRequest cannot exist (subject is required); a report still can.
        ctx.current.pop("ServiceRequest", None)
    ctx.current["orders.last"] = "OBR"
    ctx.extra[_GROUP_OBSERVATIONS] = []
    ctx.extra.pop(_SPM_SPECIMEN, None)
    ctx.current.pop("Observation", None)
    ctx.extra.pop(_OBR_SPECIMEN, None)
    ctx.current.pop("DiagnosticReport", None)
    if ctx.message_code in _RESULT_MESSAGES:
        report_url = _diagnostic_report(seg, ctx, orc_segment, request_url)
        ctx.current["DiagnosticReport"] = report_url
        specimen_url = _obr_specimen(seg, ctx)
        ctx.extra[_OBR_SPECIMEN] = specimen_url
        _append_ref(ctx.bundle.resource(report_url), "specimen", specimen_url, ctx)
    elif ctx.message_code == "OML" and request_url is not None:  # IG OML_O21: OBR → Specimen[each]
        specimen_url = _obr_specimen(seg, ctx)
        ctx.extra[_OBR_SPECIMEN] = specimen_url
        _append_ref(ctx.bundle.resource(request_url), "specimen", specimen_url, ctx)


def _obr_specimen(obr: Segment, ctx: MappingContext) -> str:
    """IG OBR[Specimen] (ORU_R01: "the OBR specimen data yields one Specimen resource that all
    Observations generated for the OBR reference")."""
    s = ctx.settings
    specimen: dict[str, Any] = {"resourceType": "Specimen"}
    accession = dt.ei_to_identifier(obr.rep(2), s) if obr.field(2) else None  # IG OBR-2
    if accession is not None:
        specimen["accessionIdentifier"] = accession
    patient = _patient_ref(ctx)
    if patient is not None:
        specimen["subject"] = patient
    _put_dt(specimen, "receivedTime", obr, 14, ctx)  # IG OBR-14
    collection: dict[str, Any] = {}
    if obr.value(8):  # IG OBR-7 / OBR-8
        period: dict[str, Any] = {}
        dt.put_datetime(period, "start", obr.value(7), s)
        dt.put_datetime(period, "end", obr.value(8), s)
        if period:
            collection["collectedPeriod"] = period
    elif obr.value(7):
        dt.put_datetime(collection, "collectedDateTime", obr.value(7), s)
    if obr.field(9):  # IG OBR-9 → collection.quantity (CQ)
        quantity = dt.cq_to_quantity(obr.rep(9), s)
        if quantity is not None:
            collection["quantity"] = quantity
    if obr.field(10):  # IG OBR-10 → collection.collector
        collector = practitioner_reference(obr.rep(10), obr, ctx, "Practitioner-10")
        if collector is not None:
            collection["collector"] = collector
    notes: list[dict[str, Any]] = []
    if obr.field(15):
        _specimen_source(obr, ctx, specimen, collection, notes)
    if collection:
        specimen["collection"] = collection
    # IG OBR-39 (collector's comment) → note; CWE[Annotation]: the text is the whole field
    # "including delimiters", so nothing of a comment split into components is lost
    notes += [{"text": rep.text()} for rep in obr.field(39) if rep.text()]
    if notes:
        specimen["note"] = notes
    return ctx.add(specimen, obr, "Specimen")


def _specimen_source(
    obr: Segment, ctx: MappingContext, specimen: dict[str, Any], collection: dict[str, Any], notes: list[dict[str, Any]]
) -> None:
    """IG OBR[Specimen] row OBR-15 (SPS, v2.5; withdrawn in v2.7) → SPS[Specimen-Source]:
    SPS.1 → type, SPS.2 → container.additiveCodeableConcept, SPS.3 → note, SPS.4 →
    collection.bodySite, SPS.6 → condition. SPS.5 and SPS.7 have no IG target. Each coded
    component is a CWE held in subcomponents."""
    rep = obr.rep(15)

    def concept(component: int, concept_map: str, table: str) -> dict[str, Any] | None:
        if not rep.component_raw(component):
            return None
        coded = component_as_repetition(obr, rep, component)
        return dt.cwe_to_codeable_concept(coded, ctx.settings, concept_map, table)

    kind = concept(1, "SpecimenType", "0487")
    if kind is not None:
        specimen["type"] = kind
    additive = concept(2, "AdditivePreservative", "0371")
    if additive is not None:
        specimen["container"] = [{"additiveCodeableConcept": additive}]
    if rep.component(3):
        notes.append({"text": rep.component(3)})
    site = concept(4, "BodySite", "0163")
    if site is not None:
        collection["bodySite"] = site
    condition = concept(6, "SpecimenCondition", "0493")
    if condition is not None:
        specimen["condition"] = [condition]


# ---------------------------------------------------------------- OBX


def _unit_quantity(units: Repetition | None, ctx: MappingContext) -> dict[str, Any]:
    """IG CWE[Quantity] (OBX-6): code = CWE.1 and system = CWE.3 when both valued; unit = CWE.2 or CWE.1."""
    if units is None or not units:
        return {}
    _, code, text, system_name = units.numbered(3)
    out: dict[str, Any] = {}
    unit = text or code
    if unit:
        out["unit"] = unit
    if code and system_name:
        system = ctx.settings.vocab.coding_system(system_name) or "urn:id:" + system_name.replace(" ", "_")
        out["system"] = system
        out["code"] = code
    return out


def _quantity(value: int | float, units: Repetition | None, ctx: MappingContext) -> dict[str, Any]:
    return {"value": value, **_unit_quantity(units, ctx)}


def _time_value(text: str) -> str | None:
    """v2 TM (HH[MM[SS[.S]]][+/-ZZZZ]) → FHIR time HH:MM:SS (the offset cannot be kept)."""
    match = _TM.match(text.strip())
    if not match or int(match.group(1)) > 23:
        return None
    minutes, seconds = match.group(2) or "00", match.group(3) or "00"
    if int(minutes) > 59 or int(seconds) > 59:
        return None
    return f"{match.group(1)}:{minutes}:{seconds}{match.group(4) or ''}"


def _attachment(rep: Repetition) -> dict[str, Any] | None:
    """IG ED[Attachment]: ED.3 → contentType; ED.5 (ED.4 Base64 / Hex / A) → data (base64)."""
    encoding = rep.component(4).lower()
    data = rep.component(5)
    if not data:
        return None
    if encoding in ("base64", "b64"):
        encoded = re.sub(r"\s+", "", data)
        try:
            base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return None
    elif encoding == "hex":
        try:
            encoded = base64.b64encode(bytes.fromhex(data)).decode("ascii")
        except ValueError:
            return None
    else:
        encoded = base64.b64encode(data.encode("utf-8")).decode("ascii")
    attachment: dict[str, Any] = {}
    subtype = rep.component(3)
    if subtype:
        attachment["contentType"] = subtype
    attachment["data"] = encoded
    return attachment


def _value(value_type: str, rep: Repetition, units: Repetition | None, ctx: MappingContext) -> tuple[str, Any] | None:
    """IG OBX-5 rows by OBX-2: (FHIR value[x] element name, value), None when unusable."""
    s = ctx.settings
    if value_type == "NM":
        number = dt.nm_to_number(rep.component(1))
        return ("valueQuantity", _quantity(number, units, ctx)) if number is not None else None
    if value_type in _TEXT_TYPES:
        text = rep.text()
        return ("valueString", text) if text else None
    if value_type in _CODED_TYPES:
        concept = dt.cwe_to_codeable_concept(rep, s)
        return ("valueCodeableConcept", concept) if concept else None
    if value_type in ("IS", "ID"):
        code = rep.component(1)
        return ("valueCodeableConcept", {"coding": [{"code": code}]}) if code else None
    if value_type in ("DT", "DTM", "TS"):
        result = dt.dtm_to_datetime(rep.component(1), s)
        return ("valueDateTime", result) if result is not None else None
    if value_type == "TM":
        time = _time_value(rep.component(1))
        return ("valueTime", time) if time else None
    if value_type == "DR":
        period = dt.dr_to_period(rep, s)
        return ("valuePeriod", period) if period else None
    if value_type == "NR":
        low, high = dt.nm_to_number(rep.component(1)), dt.nm_to_number(rep.component(2))
        rng: dict[str, Any] = {}
        if low is not None:
            rng["low"] = _quantity(low, units, ctx)
        if high is not None:
            rng["high"] = _quantity(high, units, ctx)
        return ("valueRange", rng) if rng else None
    if value_type == "SN":
        return _sn_value(rep, units, ctx)
    if value_type == "VR":
        text = "-".join(x for x in (rep.component(1), rep.component(2)) if x)
        return ("valueString", text) if text else None
    if value_type in ("ED", "RP"):
        attachment = (
            _attachment(rep) if value_type == "ED" else ({"url": rep.component(1)} if rep.component(1) else None)
        )
        return ("valueAttachment", attachment) if attachment else None
    # IG OBX-5 fallback row: the components joined by spaces.
    text = " ".join(c for c in rep.components() if c)
    return ("valueString", text) if text else None


def _sn_value(rep: Repetition, units: Repetition | None, ctx: MappingContext) -> tuple[str, Any] | None:
    """IG OBX-5 SN rows: <> or + → valueString; - → valueRange; : or / → valueRatio; else valueQuantity."""
    comparator, separator = rep.component(1), rep.component(3)
    if comparator == "<>" or separator == "+":
        text = " ".join(c for c in (comparator, rep.component(2), separator, rep.component(4)) if c)
        unit_text = units.component(2) or units.component(1) if units else ""
        return ("valueString", f"{text} {unit_text}".strip()) if text else None
    found = dt.sn_to_value(rep)
    if found is None:
        return None
    kind, element = found
    unit = _unit_quantity(units, ctx)
    if kind == "Range":
        for end in ("low", "high"):
            if end in element:
                element[end].update(unit)
    elif kind == "Quantity":
        element.update(unit)
    else:
        element["numerator"].update(unit)
        element["denominator"].update(unit)
    return f"value{kind}", element


def _reference_range(text: str, units: Repetition | None, ctx: MappingContext) -> dict[str, Any]:
    """IG OBX-7 → referenceRange.text; plus low/high when the text is a plain numeric range."""
    out: dict[str, Any] = {}
    unit = _unit_quantity(units, ctx)
    match = _NUMERIC_RANGE.match(text)
    if match:
        low, high = dt.nm_to_number(match.group(1)), dt.nm_to_number(match.group(2))
        if low is not None and high is not None:
            out["low"] = {"value": low, **unit}
            out["high"] = {"value": high, **unit}
    else:
        bound = _NUMERIC_BOUND.match(text)
        number = dt.nm_to_number(bound.group(2)) if bound else None
        if bound and number is not None:
            out["high" if bound.group(1) == "<" else "low"] = {"value": number, **unit}
    out["text"] = text
    return out


def _set_value(observation: dict[str, Any], value_type: str, seg: Segment, ctx: MappingContext) -> None:
    reps = seg.field(5)
    units = seg.rep(6) if seg.field(6) else None
    if not reps:
        return
    if value_type in _TEXT_TYPES and len(reps) > 1:
        text = "\n".join(r.text() for r in reps)
        observation["valueString"] = text
        return
    values = [_value(value_type, rep, units, ctx) for rep in reps]
    usable = [v for v in values if v is not None]
    if len(usable) < len(values):
        ctx.reject(seg, 5)
    if not usable:
        return
    if len(reps) > 1 and value_type != "NA":  # IG OBX[Observation-Component]
        for element, value in usable:
            component: dict[str, Any] = {"code": observation["code"]}
            _put_value(component, element, value)
            observation.setdefault("component", []).append(component)
        return
    element, value = usable[0]
    _put_value(observation, element, value)


def _put_value(target: dict[str, Any], element: str, value: Any) -> None:
    if element == "valueAttachment":
        target.setdefault("extension", []).append({"url": VALUE_ATTACHMENT, "valueAttachment": value})
    elif isinstance(value, dt.FhirDateTime):
        target[element] = value.value
        ext = value.primitive_extension()
        if ext is not None:
            target["_" + element] = ext
    else:
        target[element] = value


def _has_value(observation: dict[str, Any]) -> bool:
    """True when OBX-5 gave the Observation a value[x] or components."""
    if "component" in observation:
        return True
    for element in observation:  # noqa: SIM110 (a loop, not any(genexpr): this runs for every OBX)
        if element.startswith("value"):
            return True
    return False


def _has_attachment(observation: dict[str, Any]) -> bool:
    return any(e.get("url") == VALUE_ATTACHMENT for e in observation.get("extension", []))


def _observation_status(seg: Segment, ctx: MappingContext, observation: dict[str, Any]) -> None:
    """IG OBX-11 (ObservationResultStatusCodesInterpretation); N → dataAbsentReason; X → alternate code."""
    code = seg.value(11)
    concept = ctx.settings.vocab.lookup("ObservationResultStatusCodesInterpretation", code) if code else None
    observation["status"] = concept.code if concept is not None and concept.code else "unknown"
    if code == "N":
        observation["dataAbsentReason"] = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "not-asked"}]
        }
    elif code == "X":
        observation["status"] = "cancelled"
        observation["dataAbsentReason"] = {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "cannot-be-obtained"}
            ]
        }
        observation["_status"] = {
            "extension": [
                {
                    "url": SD + "alternate-codes",
                    "valueCodeableConcept": {"coding": [{"system": v2_table_system("0085"), "code": "X"}]},
                }
            ]
        }
    elif code and (concept is None or not concept.code):
        ctx.reject(seg, 11)


def _performers(seg: Segment, ctx: MappingContext, observation: dict[str, Any]) -> None:
    """IG OBX-16 (responsible observer), OBX-23/24 (performing organization), OBX-25 (medical director)."""
    s = ctx.settings
    if seg.field(15):  # IG OBX-15 producer's id → performer Organization (CWE[Organization])
        producer = seg.rep(15)
        organization_15: dict[str, Any] = {"resourceType": "Organization"}
        identifiers = dt.cwe_to_identifier(producer, s)
        if identifiers:
            organization_15["identifier"] = identifiers
        if producer.component(2):
            organization_15["name"] = producer.component(2)
        if len(organization_15) > 1:
            observation.setdefault("performer", []).append(
                ctx.bundle.reference(ctx.add(organization_15, seg, "Organization-15"))
            )
    for index, rep in enumerate(seg.field(16), start=1):  # IG OBX-16 → PractitionerRole responsibleObserver
        ref = practitioner_reference(rep, seg, ctx, f"Practitioner-16-{index}")
        if ref is not None:
            role_16 = {
                "resourceType": "PractitionerRole",
                "practitioner": ref,
                "code": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/practitioner-role",
                                "code": "responsibleObserver",
                            }
                        ]
                    }
                ],
            }
            observation.setdefault("performer", []).append(
                ctx.bundle.reference(ctx.add(role_16, seg, f"PractitionerRole-16-{index}"))
            )
    organization = dt.xon_to_organization(seg.rep(23), s) if seg.field(23) else None
    if organization is not None:
        address = dt.xad_to_address(seg.rep(24), s) if seg.field(24) else None
        if address is not None:
            organization["address"] = [address]
        org_ref = ctx.bundle.reference(ctx.add(organization, seg, "Organization-23"))
        director = practitioner_reference(seg.rep(25), seg, ctx, "Practitioner-25") if seg.field(25) else None
        if director is not None:
            role = {
                "resourceType": "PractitionerRole",
                "practitioner": director,
                "organization": org_ref,
                "code": [{"coding": [{"system": v2_table_system("0912"), "code": "MDIR"}]}],
            }
            observation.setdefault("performer", []).append(
                ctx.bundle.reference(ctx.add(role, seg, "PractitionerRole-25"))
            )
        else:
            observation.setdefault("performer", []).append(org_ref)


@segment_mapper("OBX", summary="OBX → Observation (IG OBX[Observation], OBX[Observation-Component])")
def obx_to_observation(seg: Segment, ctx: MappingContext) -> None:
    """IG OBX[Observation]: one Observation per OBX, linked to its report, order or immunization."""
    seg.mark_used(1)  # OBX-1 Set ID
    value_type = seg.value(2).upper()
    observation: dict[str, Any] = {"resourceType": "Observation"}
    _add_identifier(observation, _ei(seg, 21, ctx, "FILL"))  # IG OBX-21
    _observation_status(seg, ctx, observation)  # IG OBX-11
    category = seg.value(29)
    if category:  # IG OBX-29 → category (v2 table 0936)
        observation["category"] = [{"coding": [{"system": v2_table_system("0936"), "code": category}]}]
    observation["code"] = _concept(seg, 3, ctx) or _absent_concept()  # IG OBX-3
    request_url = ctx.current.get("ServiceRequest")
    if request_url and ctx.current.get("orders.last") in ("OBR", "ORC", "OBX", "NTE"):
        observation["basedOn"] = [ctx.bundle.reference(request_url)]
    immunization = ctx.current.get("Immunization")
    if immunization and ctx.message_code == "VXU":
        observation["partOf"] = [ctx.bundle.reference(immunization)]
    patient = _patient_ref(ctx)
    if patient is not None:
        observation["subject"] = patient
    encounter = _encounter_ref(ctx)
    if encounter is not None:
        observation["encounter"] = encounter
    _put_dt(observation, "effectiveDateTime", seg, 14, ctx)  # IG OBX-14
    specimen = ctx.extra.get(_OBR_SPECIMEN)
    if isinstance(specimen, str) and ctx.current.get("DiagnosticReport"):
        observation["specimen"] = ctx.bundle.reference(specimen)  # IG OBR[Specimen]
    about_specimen = ctx.extra.get(_SPM_SPECIMEN)
    if isinstance(about_specimen, str):
        # IG ORU_R01 row 4.2.7.2.1 (SPECIMEN_OBSERVATION.OBX): focus = the SPM's Specimen[n].
        observation["focus"] = [ctx.bundle.reference(about_specimen)]
    if value_type or seg.field(5):
        _set_value(observation, value_type, seg, ctx)  # IG OBX-5 (by OBX-2) + OBX-6
    has_value = _has_value(observation)
    if not has_value and "dataAbsentReason" not in observation and not _has_attachment(observation):
        # No result in OBX-5 and no reason in OBX-11: say so rather than leave it implicit.
        observation["dataAbsentReason"] = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown"}]
        }
    seg.mark_used(2, 6)
    reference = seg.text(7)
    if reference:  # IG OBX-7
        observation["referenceRange"] = [_reference_range(reference, seg.rep(6) if seg.field(6) else None, ctx)]
    interpretations = _concepts(seg, 8, ctx, "InterpretationCodes", "0078")  # IG OBX-8
    if interpretations:
        observation["interpretation"] = interpretations
    nature = _concept(seg, 10, ctx, "NatureOfAbnormalTesting", "0080")  # IG OBX-10
    if nature is not None:
        observation.setdefault("extension", []).append(
            {"url": SD + "observation-nature-of-abnormal-test", "valueCodeableConcept": nature}
        )
    _performers(seg, ctx, observation)  # IG OBX-16 / OBX-23-25
    if seg.field(18):  # IG OBX-18 → device (Device.identifier, EI); R4 holds one device
        device_id = dt.ei_to_identifier(seg.rep(18), ctx.settings)
        if device_id is not None:
            device = {"resourceType": "Device", "identifier": [device_id]}
            observation["device"] = ctx.bundle.reference(ctx.add(device, seg, "Device-18"))
    method = _concept(seg, 17, ctx)  # IG OBX-17
    if method is not None:
        observation["method"] = method
    body_site = _concept(seg, 20, ctx)  # IG OBX-20
    if body_site is not None:
        observation["bodySite"] = body_site
    url = _add_apart(ctx, observation, seg, "Observation", None)
    ctx.current["Observation"] = url
    ctx.current["orders.last"] = "OBX"
    ctx.extra.setdefault(_GROUP_OBSERVATIONS, []).append(url)
    report = _resource(ctx, "DiagnosticReport")
    if report is not None:
        _append_ref(report, "result", url, ctx)
    elif request_url and "basedOn" in observation and ctx.message_code not in _RESULT_MESSAGES:
        _append_ref(ctx.bundle.resource(request_url), "supportingInfo", url, ctx)


# ---------------------------------------------------------------- NTE


@segment_mapper("NTE", summary="NTE → Annotation (IG NTE[Observation], NTE[ServiceRequest])")
def nte_to_annotation(seg: Segment, ctx: MappingContext) -> None:
    """IG NTE[Observation] / NTE[ServiceRequest]: note on the Observation or order it follows."""
    previous = _previous_segment_id(seg, ctx)
    if previous == "OBX":
        target = _resource(ctx, "Observation")
    elif previous in ("OBR", "ORC"):
        target = _resource(ctx, "ServiceRequest")
    else:
        target = None
    if target is None:
        return  # nothing to annotate: NTE fields are reported unmapped
    seg.mark_used(1, 2)  # NTE-1 Set ID, NTE-2 source of comment (no Annotation element)
    texts = [r.text() for r in seg.field(3) if r.text()]  # IG NTE-3 (FT): one Annotation per repetition
    if not texts:
        return
    author = None
    if seg.field(5):  # IG NTE-5 → authorReference
        author = practitioner_reference(seg.rep(5), seg, ctx, "Practitioner-5")
    time: dict[str, Any] = {}
    _put_dt(time, "time", seg, 6, ctx)  # IG NTE-6
    for text in texts:
        note: dict[str, Any] = {"text": text}
        if author is not None:
            note["authorReference"] = author
        note.update(time)
        target.setdefault("note", []).append(note)


def _previous_segment_id(seg: Segment, ctx: MappingContext) -> str:
    for position in range(seg.position - 1, -1, -1):
        found = ctx.message.segment_list[position].id
        if found != "NTE":
            return found
    return ""


# ---------------------------------------------------------------- SPM


def _eip_identifiers(
    rep: Repetition, ctx: MappingContext, codes: tuple[str, str] = ("PGN", "FGN")
) -> list[dict[str, Any] | None]:
    """IG EIP[Identifier-PlacerAssignedIdentifier] / EIP[Identifier-FillerAssignedIdentifier]:
    EIP.1 / EIP.2 (each an EI in subcomponents) → identifiers typed PGN / FGN (v2-0203);
    [placer, filler], None where absent."""
    out: list[dict[str, Any] | None] = []
    for component, code in zip((1, 2), codes, strict=True):
        parts = [*rep.subcomponents(component), "", "", ""]
        if not parts[0]:
            out.append(None)
            continue
        ident: dict[str, Any] = {"type": {"coding": [{"system": V2_0203, "code": code}]}}
        system = dt.hd_to_system(dt.HD(parts[1], parts[2], parts[3]), ctx.settings)
        if system:
            ident["system"] = system
        ident["value"] = parts[0]
        out.append(ident)
    return out


@segment_mapper("SPM", summary="SPM → Specimen (IG SPM[Specimen])")
def spm_to_specimen(seg: Segment, ctx: MappingContext) -> None:
    """IG SPM[Specimen]: linked from the group's DiagnosticReport, ServiceRequest and Observations."""
    s = ctx.settings
    seg.mark_used(1)
    specimen: dict[str, Any] = {"resourceType": "Specimen"}
    identifiers = [i for i in _eip_identifiers(seg.rep(2), ctx) if i] if seg.field(2) else []  # IG SPM-2
    for rep in seg.field(31):  # IG SPM-31
        ident = dt.cx_to_identifier(rep, s)
        if ident is not None:
            identifiers.append(ident)
    shipment = _ei(seg, 32, ctx, "SHIP")  # IG SPM-32 → identifier[3] typed SHIP (v2-0203)
    if shipment is not None:
        identifiers.append(shipment)
    if identifiers:
        specimen["identifier"] = identifiers
    if seg.field(30):  # IG SPM-30 → accessionIdentifier
        accession = dt.cx_to_identifier(seg.rep(30), s)
        if accession is not None:
            specimen["accessionIdentifier"] = accession
    status = dt.code_of(seg.rep(20), s, "YesNoIndicator[AvailabilityStatus]") if seg.field(20) else None
    if status:  # IG SPM-20
        specimen["status"] = status
    kind = _concept(seg, 4, ctx, "SpecimenType", "0487")  # IG SPM-4
    if kind is not None:
        specimen["type"] = kind
    patient = _patient_ref(ctx)
    if patient is not None:
        specimen["subject"] = patient
    _put_dt(specimen, "receivedTime", seg, 18, ctx)  # IG SPM-18
    collection: dict[str, Any] = {}
    if seg.field(17):  # IG SPM-17 → collectedPeriod / collectedDateTime
        rep = seg.rep(17)
        if rep.component(2):
            period = dt.dr_to_period(rep, s)
            if period:
                collection["collectedPeriod"] = period
        else:
            dt.put_datetime(collection, "collectedDateTime", rep.component(1), s)
    for number, element, concept_map, table in (
        (7, "method", "SpecimenCollectionMethod", "0488"),  # IG SPM-7
        (8, "bodySite", "SpecimenSourceSite", None),  # IG SPM-8
    ):
        concept = _concept(seg, number, ctx, concept_map, table)
        if concept is not None:
            collection[element] = concept
    if seg.field(12):  # IG SPM-12 → collection.quantity (CQ)
        quantity = dt.cq_to_quantity(seg.rep(12), s)
        if quantity is not None:
            collection["quantity"] = quantity
    if collection:
        specimen["collection"] = collection
    conditions = _concepts(seg, 24, ctx, "SpecimenCondition", "0493")  # IG SPM-24
    if conditions:
        specimen["condition"] = conditions
    container: dict[str, Any] = {}
    container_type = _concept(seg, 27, ctx, "ContainerType", None)  # IG SPM-27
    if container_type is not None:
        container["type"] = container_type
    additive = _concept(seg, 6, ctx, "AdditivePreservative", "0371")  # IG SPM-6
    if additive is not None:
        container["additiveCodeableConcept"] = additive
    if container:
        specimen["container"] = [container]
    notes = [{"text": r.text()} for r in seg.field(14) if r.text()]
    if notes:  # IG SPM-14 (one Annotation per repetition)
        specimen["note"] = notes
    parents = []
    for index, rep in enumerate(seg.field(3), start=1):  # IG SPM-3 → parent (a Specimen by identifier)
        parent_ids = [i for i in _eip_identifiers(rep, ctx) if i]
        if parent_ids:
            parent: dict[str, Any] = {"resourceType": "Specimen", "identifier": parent_ids}
            if patient is not None:
                parent["subject"] = patient
            parents.append(ctx.bundle.reference(ctx.add(parent, seg, f"Specimen-3-{index}")))
    if parents:
        specimen["parent"] = parents
    url = ctx.add(specimen, seg, "Specimen")
    ctx.current["Specimen"] = url
    ctx.extra[_SPM_SPECIMEN] = url
    _append_ref(_resource(ctx, "DiagnosticReport"), "specimen", url, ctx)
    _append_ref(_resource(ctx, "ServiceRequest"), "specimen", url, ctx)
    obr_specimen = ctx.extra.get(_OBR_SPECIMEN)
    obr_reference = ctx.bundle.reference(obr_specimen) if isinstance(obr_specimen, str) else None
    for observation_url in ctx.extra.get(_GROUP_OBSERVATIONS, []):
        observation = ctx.bundle.resource(observation_url)
        # An SPM describes the specimen better than the OBR's: it replaces that link.
        if observation is not None and observation.get("specimen") in (None, obr_reference):
            observation["specimen"] = ctx.bundle.reference(url)


# ---------------------------------------------------------------- RXA / RXR (VXU)


@segment_mapper("RXA", summary="RXA → Immunization (IG RXA[Immunization], ORC[Immunization])")
def rxa_to_immunization(seg: Segment, ctx: MappingContext) -> None:
    """IG RXA[Immunization] with the ORC before it (ORC[Immunization])."""
    s = ctx.settings
    seg.mark_used(1, 2)  # RXA-1/2 give-sub-id counter and administration sub-id counter
    immunization: dict[str, Any] = {"resourceType": "Immunization"}
    orc = ctx.extra.get(_ORC)
    if isinstance(orc, Segment) and ctx.current.get("orders.last") == "ORC":
        _add_identifier(immunization, _ei(orc, 2, ctx, "PLAC"))  # IG ORC-2
        _add_identifier(immunization, _ei(orc, 3, ctx, "FILL"))  # IG ORC-3
        _put_dt(immunization, "recorded", orc, 9, ctx)  # IG ORC-9
        for index, rep in enumerate(orc.field(12), start=1):  # IG ORC-12 → performer (OP)
            actor = practitioner_reference(rep, orc, ctx, f"Practitioner-12-{index}")
            if actor is not None:
                immunization.setdefault("performer", []).append(
                    {
                        "function": {"coding": [{"system": v2_table_system("0443"), "code": "OP"}]},
                        "actor": actor,
                    }
                )
    action = seg.value(21).upper()
    if action == "D":  # IG RXA-21
        immunization["status"] = "entered-in-error"
    else:
        completion = seg.value(20)
        status = dt.code_of(completion, s, "CompletionStatus") if completion else None
        immunization["status"] = status or "completed"  # IG RXA-20 (not valued → completed)
        if completion and not status:
            ctx.reject(seg, 20)
        seg.mark_used(21)
    immunization["vaccineCode"] = _concept(seg, 5, ctx) or _absent_concept()  # IG RXA-5
    immunization["patient"] = ctx.bundle.reference(ctx.require_patient(seg))
    encounter = _encounter_ref(ctx)
    if encounter is not None:
        immunization["encounter"] = encounter
    if not _put_dt(immunization, "occurrenceDateTime", seg, 3, ctx):  # IG RXA-3
        immunization["occurrenceString"] = "unknown"  # occurrence[x] is required
    if action == "A" and "recorded" not in immunization:
        _put_dt(immunization, "recorded", seg, 22, ctx)  # IG RXA-22 IF RXA-21 = A
    dose = dt.nm_to_number(seg.value(6)) if seg.value(6) else None
    if dose is not None and seg.value(6) != "999":  # IG RXA-6/7 (999 = unknown dose, CDC IG)
        immunization["doseQuantity"] = _quantity(dose, seg.rep(7) if seg.field(7) else None, ctx)
    seg.mark_used(6, 7)
    for index, rep in enumerate(seg.field(10), start=1):  # IG RXA-10 → performer (AP)
        actor = practitioner_reference(rep, seg, ctx, f"Practitioner-10-{index}")
        if actor is not None:
            immunization.setdefault("performer", []).append(
                {"function": {"coding": [{"system": v2_table_system("0443"), "code": "AP"}]}, "actor": actor}
            )
    lot = seg.value(15)
    if lot:  # IG RXA-15
        immunization["lotNumber"] = lot
    expiration = dt.dt_to_date(seg.value(16)) if seg.value(16) else None
    if expiration and len(expiration) == 10:  # IG RXA-16 (a FHIR date needs the day here)
        immunization["expirationDate"] = expiration
    elif seg.value(16):
        ctx.reject(seg, 16)
    if seg.field(17):  # IG RXA-17 → manufacturer (CWE[Organization])
        manufacturer = seg.rep(17)
        org: dict[str, Any] = {"resourceType": "Organization"}
        identifiers = dt.cwe_to_identifier(manufacturer, s)
        if identifiers:
            org["identifier"] = identifiers
        if manufacturer.component(2):
            org["name"] = manufacturer.component(2)
        if len(org) > 1:
            immunization["manufacturer"] = ctx.bundle.reference(ctx.add(org, seg, "Organization-17"))
    status_reason = _concept(seg, 18, ctx)  # IG RXA-18
    if status_reason is not None:
        immunization["statusReason"] = status_reason
    reasons = _concepts(seg, 19, ctx)  # IG RXA-19
    if reasons:
        immunization["reasonCode"] = reasons
    if seg.field(27):  # IG RXA-27 / RXA-28 → location
        location_url = pl_to_location(seg.rep(27), seg, ctx, "Location-27")
        if location_url is not None:
            address = dt.xad_to_address(seg.rep(28), s) if seg.field(28) else None
            location = ctx.bundle.resource(location_url)
            if address is not None and location is not None:
                location["address"] = address
            immunization["location"] = ctx.bundle.reference(location_url)
    ctx.current["Immunization"] = ctx.add(immunization, seg, "Immunization")
    ctx.current["orders.last"] = "RXA"


@segment_mapper("RXR", summary="RXR → Immunization route and site (IG RXR[Immunization])")
def rxr_to_immunization(seg: Segment, ctx: MappingContext) -> None:
    """IG RXR[Immunization]: RXR-1 → route, RXR-2 → site of the Immunization before it."""
    immunization = _resource(ctx, "Immunization") if ctx.current.get("orders.last") == "RXA" else None
    if immunization is None:
        return
    route = _concept(seg, 1, ctx, "RouteOfAdministration", "0162")
    if route is not None:
        immunization["route"] = route
    site = _concept(seg, 2, ctx, "BodyParts", "0163")
    if site is not None:
        immunization["site"] = site


# ---------------------------------------------------------------- SCH / AIS / AIG / AIL / AIP (SIU)


@segment_mapper("SCH", summary="SCH → Appointment (IG SCH[Appointment])")
def sch_to_appointment(seg: Segment, ctx: MappingContext) -> None:
    """IG SCH[Appointment]: one Appointment; the patient of the PID after it joins as participant."""
    s = ctx.settings
    appointment: dict[str, Any] = {"resourceType": "Appointment"}
    _add_identifier(appointment, _ei(seg, 1, ctx, "PLAC"))  # IG SCH-1 placer appointment id
    _add_identifier(appointment, _ei(seg, 2, ctx, "FILL"))  # IG SCH-2 filler appointment id
    status = dt.code_of(seg.rep(25), s, "FillerStatusCodes[Appointment]") if seg.field(25) else None
    appointment["status"] = status or "proposed"  # IG SCH-25 (required; proposed when unknown)
    if seg.field(25) and not status:
        ctx.reject(seg, 25)
    for number in (7, 8):  # IG SCH-7 reason (HL70276) / appointment type (HL70277); SCH-8 type
        rep = seg.rep(number)
        if not rep:
            continue
        system = rep.component(3).upper()
        if number == 7 and system != "HL70277":
            concept = dt.cwe_to_codeable_concept(rep, s, "AppointmentReasonCodes", "0276")
            if concept is not None:
                appointment.setdefault("reasonCode", []).append(concept)
        elif "appointmentType" not in appointment:
            concept = dt.cwe_to_codeable_concept(rep, s, "AppointmentTypeCodes", "0277")
            if concept is not None:
                appointment["appointmentType"] = concept
    duration = dt.nm_to_number(seg.value(9)) if seg.value(9) else None
    if isinstance(duration, int) and duration > 0:  # IG SCH-9
        appointment["minutesDuration"] = duration
    elif seg.value(9):
        ctx.reject(seg, 9)
    seg.mark_used(10)  # SCH-10 duration units: SCH-9 is read as minutes (the default)
    timing = seg.rep(11) if seg.field(11) else None  # TQ.4 / TQ.5 start and end (instants)
    for component, element in ((4, "start"), (5, "end")):
        text = timing.component(component) if timing is not None else ""
        instant = dt.dtm_to_instant(text, s) if text else None
        if instant is not None:
            appointment[element] = instant
        elif text:
            ctx.reject(seg, 11)  # an instant needs a time and a known zone
    for number, code, system in (
        (12, "PLC", "http://terminology.hl7.org/CodeSystem/participant-type"),  # placer contact
        (16, "FLC", "http://terminology.hl7.org/CodeSystem/participant-type"),  # filler contact
        (20, "enterer", "http://terminology.hl7.org/CodeSystem/provenance-participant-type"),
    ):
        for index, rep in enumerate(seg.field(number), start=1):
            actor = practitioner_reference(rep, seg, ctx, f"Practitioner-{number}-{index}")
            if actor is not None:
                appointment.setdefault("participant", []).append(
                    {
                        "type": [{"coding": [{"system": system, "code": code}]}],
                        "actor": actor,
                        "status": "accepted",
                    }
                )
    for number in (26, 27):  # IG SCH-26 / SCH-27 → basedOn (by identifier)
        ident = _ei(seg, number, ctx, "PLAC" if number == 26 else "FILL")
        if ident is not None:
            appointment.setdefault("basedOn", []).append({"type": "ServiceRequest", "identifier": ident})
    if ctx.patient is not None:
        appointment.setdefault("participant", []).append(_patient_participant(ctx.patient, ctx))
    url = ctx.add(appointment, seg, "Appointment")
    ctx.current["Appointment"] = url
    ctx.after(lambda: _finish_appointment(url, ctx))


def _patient_participant(patient_url: str, ctx: MappingContext) -> dict[str, Any]:
    return {"actor": ctx.bundle.reference(patient_url), "status": "accepted"}


def _finish_appointment(url: str, ctx: MappingContext) -> None:
    """SIU: the PID comes after SCH; every Patient of the message takes part. R4 needs ≥1 participant."""
    appointment = ctx.bundle.resource(url)
    if appointment is None:
        return
    participants = appointment.setdefault("participant", [])
    patient = ctx.patient
    if patient is not None:
        entry = _patient_participant(patient, ctx)
        if entry not in participants:
            participants.append(entry)
    if not participants:
        participants.append({"status": "needs-action", "type": [{"text": "unknown"}]})


def _resource_participant(
    seg: Segment,
    ctx: MappingContext,
    actor: dict[str, Any] | None,
    kind: dict[str, Any] | None,
    start_field: int,
    duration_field: int,
) -> None:
    """Common rows of AIS/AIG/AIL/AIP: participant actor/type and period (start, + duration minutes)."""
    appointment = _resource(ctx, "Appointment")
    if appointment is None:
        return
    seg.mark_used(1)
    participant: dict[str, Any] = {"status": "accepted"}
    if kind is not None:
        participant["type"] = [kind]
    if actor is not None:
        participant["actor"] = actor
    period: dict[str, Any] = {}
    if _put_dt(period, "start", seg, start_field, ctx):
        minutes = dt.nm_to_number(seg.value(duration_field)) if seg.value(duration_field) else None
        end = _plus_minutes(period["start"], minutes) if minutes is not None else None
        if end is not None:
            period["end"] = end
        elif seg.value(duration_field):
            ctx.reject(seg, duration_field)
        seg.mark_used(duration_field + 1)  # duration units: read as minutes
    if period:
        participant["period"] = period
    if actor is None and kind is None:
        return
    appointment.setdefault("participant", []).append(participant)


def _plus_minutes(start: str, minutes: int | float) -> str | None:
    try:
        parsed = datetime.fromisoformat(start)
    except ValueError:
        return None
    if parsed.tzinfo is None or "T" not in start:
        return None
    return (parsed + timedelta(minutes=minutes)).isoformat()


@segment_mapper("AIS", summary="AIS → Appointment.serviceType (IG AIS[Appointment])")
def ais_to_appointment(seg: Segment, ctx: MappingContext) -> None:
    """IG AIS[Appointment]: AIS-3 → serviceType; AIS-4/AIS-7 → a participant period."""
    appointment = _resource(ctx, "Appointment")
    if appointment is None:
        return
    service = _concept(seg, 3, ctx)
    if service is not None:
        appointment.setdefault("serviceType", []).append(service)
    start = seg.value(4)
    if start and not appointment.get("start"):
        instant = dt.dtm_to_instant(start, ctx.settings)
        if instant is not None:
            appointment["start"] = instant
        else:
            ctx.reject(seg, 4)
    seg.mark_used(1, 10)


@segment_mapper("AIG", summary="AIG → Appointment.participant (IG AIG[Appointment])")
def aig_to_appointment(seg: Segment, ctx: MappingContext) -> None:
    """IG AIG[Appointment]: AIG-3 (resource id) → participant actor by identifier; AIG-4 → type."""
    identifiers = dt.cwe_to_identifier(seg.rep(3), ctx.settings) if seg.field(3) else []
    actor = {"identifier": identifiers[0]} if identifiers else None
    _resource_participant(seg, ctx, actor, _concept(seg, 4, ctx), 8, 11)


@segment_mapper("AIL", summary="AIL → Appointment.participant Location (IG AIL[Appointment])")
def ail_to_appointment(seg: Segment, ctx: MappingContext) -> None:
    """IG AIL[Appointment]: AIL-3 (PL) → participant actor Location."""
    if _resource(ctx, "Appointment") is None:
        return
    location = pl_to_location(seg.rep(3), seg, ctx, "Location-3") if seg.field(3) else None
    actor = ctx.bundle.reference(location) if location else None
    _resource_participant(seg, ctx, actor, None, 6, 9)


@segment_mapper("AIP", summary="AIP → Appointment.participant Practitioner (IG AIP[Appointment])")
def aip_to_appointment(seg: Segment, ctx: MappingContext) -> None:
    """IG AIP[Appointment]: AIP-3 (XCN) → participant actor Practitioner; AIP-4 → type."""
    if _resource(ctx, "Appointment") is None:
        return
    actor = practitioner_reference(seg.rep(3), seg, ctx, "Practitioner-3") if seg.field(3) else None
    _resource_participant(seg, ctx, actor, _concept(seg, 4, ctx), 6, 9)


# ---------------------------------------------------------------- R4B → R5


def _service_request_r5(res: dict[str, Any]) -> None:
    """R5 ServiceRequest: code, reason, location, supportingInfo become CodeableReferences.

    R5 orderDetail is a parameter structure with no place for a bare code: OBR-46/47 are
    dropped from R5 output (kept in R4B).
    """
    code = res.pop("code", None)
    if isinstance(code, dict):
        res["code"] = {"concept": code}
    reasons = res.pop("reasonCode", None)
    if reasons:
        res["reason"] = [{"concept": c} for c in reasons]
    locations = res.pop("locationCode", None)
    if locations:
        res["location"] = [{"concept": c} for c in locations]
    res.pop("orderDetail", None)
    supporting = res.pop("supportingInfo", None)
    if supporting:
        res["supportingInfo"] = [{"reference": r} for r in supporting]


def _observation_r5(res: dict[str, Any]) -> None:
    """R5 Observation: the valueAttachment backport extension becomes the native valueAttachment."""
    kept = []
    for ext in res.get("extension", []):
        if ext.get("url") == VALUE_ATTACHMENT and not any(k.startswith("value") for k in res):
            res["valueAttachment"] = ext["valueAttachment"]
        else:
            kept.append(ext)
    if "extension" in res:
        if kept:
            res["extension"] = kept
        else:
            del res["extension"]


def _immunization_r5(res: dict[str, Any]) -> None:
    """R5 Immunization: no `recorded` (ORC-9 / RXA-22 dropped); reasonCode → reason;
    manufacturer → CodeableReference."""
    res.pop("recorded", None)
    res.pop("_recorded", None)
    reasons = res.pop("reasonCode", None)
    if reasons:
        res["reason"] = [{"concept": c} for c in reasons]
    manufacturer = res.pop("manufacturer", None)
    if isinstance(manufacturer, dict):
        res["manufacturer"] = {"reference": manufacturer}


def _appointment_r5(res: dict[str, Any]) -> None:
    """R5 Appointment: reasonCode → reason; serviceType → CodeableReference list."""
    reasons = res.pop("reasonCode", None)
    if reasons:
        res["reason"] = [{"concept": c} for c in reasons]
    services = res.pop("serviceType", None)
    if services:
        res["serviceType"] = [{"concept": c} for c in services]


def _specimen_r5(res: dict[str, Any]) -> None:
    """R5 Specimen: a container is a Device reference (type and additive live on the Device):
    SPM-6 / SPM-27 are dropped from R5 output (kept in R4B); collection.bodySite is a
    CodeableReference."""
    res.pop("container", None)
    collection = res.get("collection")
    if isinstance(collection, dict) and isinstance(collection.get("bodySite"), dict):
        collection["bodySite"] = {"concept": collection["bodySite"]}


register_r5_adapter("ServiceRequest", _service_request_r5)
register_r5_adapter("Observation", _observation_r5)
register_r5_adapter("Immunization", _immunization_r5)
register_r5_adapter("Appointment", _appointment_r5)
register_r5_adapter("Specimen", _specimen_r5)
