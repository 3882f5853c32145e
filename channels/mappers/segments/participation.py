"""PRT (Participation Information, HL7 v2 ch. 7.4.4) in an observation group → Device and
PractitionerRole.

IG message maps ORU_R01 / OML_O21 row "OBSERVATION.PRT" (Observation Participation):
- "IF PRT-10 VALUED" → PRT[Device], ``Observation.device`` = that Device;
- "IF PRT-5 VALUED" → PRT[PractitionerRole] (PRT-4 → code, PRT-5 → practitioner via
  XCN[Practitioner]), ``Observation.performer`` = that PractitionerRole.

IG PRT[Device] rows: PRT-10 → udiCarrier when it "represents a HRF or AIDC", else
identifier (EI[Identifier-Extension]); PRT-16 → udiCarrier (EI[Device-udiCarrier]: EI.1 →
deviceIdentifier); PRT-17 → manufactureDate; PRT-18 → expirationDate; PRT-19 → lotNumber;
PRT-20 → serialNumber; PRT-21 (EI) → distinctIdentifier (EI.1); PRT-22 (CNE) → type.

Our choices, where the IG leaves one open:
- A UDI human-readable form is recognised by its issuing agency's lead characters: GS1
  "(01)", HIBCC "+", ICCBBA "=" (FDA UDI rule, 21 CFR 830.20); anything else is an
  identifier.
- R4 Observation.device is 0..1: the first device (OBX-18 or the first PRT) is referenced;
  later PRT Devices are still made (their identity stays in the Bundle).
- PRT anywhere else (patient, visit, order) is not mapped yet: its fields are reported.
- R5: udiCarrier.issuer is 1..1 and v2 gives no issuer URI, so an R5 udiCarrier without
  issuer becomes an identifier; distinctIdentifier → biologicalSourceEvent; type is a list.
"""

from __future__ import annotations

from typing import Any

from channels.mappers import datatypes as dt
from channels.mappers.bundle import register_r5_adapter
from channels.mappers.messages import MappingContext, segment_mapper
from channels.mappers.segments.encounter import practitioner_reference
from channels.mappers.v2 import Repetition, Segment

_UDI_PREFIXES = ("(01)", "+", "=")
_SKIPPED = frozenset({"PRT", "NTE"})  # segments between an OBX and its PRT (same group)


def is_udi_form(text: str) -> bool:
    """True when `text` is a UDI in a human-readable form (GS1, HIBCC or ICCBBA lead characters)."""
    return text.startswith(_UDI_PREFIXES)


def _udi_carrier(rep: Repetition) -> dict[str, Any] | None:
    """IG EI[Device-udiCarrier]: EI.1 → deviceIdentifier."""
    value = rep.component(1)
    return {"deviceIdentifier": value} if value else None


def _device(prt: Segment, ctx: MappingContext) -> dict[str, Any] | None:
    """IG PRT[Device]; None when neither PRT-10 nor PRT-16 identifies a device."""
    device: dict[str, Any] = {"resourceType": "Device"}
    carriers: list[dict[str, Any]] = []
    for rep in prt.field(10):  # IG PRT-10: udiCarrier if HRF/AIDC, else identifier
        if is_udi_form(rep.component(1)):
            carrier = _udi_carrier(rep)
            if carrier is not None:
                carriers.append(carrier)
            continue
        ident = dt.ei_to_identifier(rep, ctx.settings)
        if ident is not None:
            device.setdefault("identifier", []).append(ident)
    if prt.field(16):  # IG PRT-16 → udiCarrier
        carrier = _udi_carrier(prt.rep(16))
        if carrier is not None:
            carriers.append(carrier)
    if carriers:
        device["udiCarrier"] = carriers
    if "identifier" not in device and not carriers:
        return None
    for number, element in ((17, "manufactureDate"), (18, "expirationDate")):  # IG PRT-17 / PRT-18
        text = prt.value(number)
        if text and not dt.put_datetime(device, element, text, ctx.settings):
            ctx.reject(prt, number)
    for number, element in ((19, "lotNumber"), (20, "serialNumber"), (21, "distinctIdentifier")):
        text = prt.value(number)  # IG PRT-19 / PRT-20 (ST), PRT-21 (EI.1)
        if text:
            device[element] = text
    if prt.field(22):  # IG PRT-22 (CNE[CodeableConcept]) → type
        concept = dt.cwe_to_codeable_concept(prt.rep(22), ctx.settings)
        if concept is not None:
            device["type"] = concept
    return device


def _observation_group(prt: Segment, ctx: MappingContext) -> dict[str, Any] | None:
    """The Observation of the OBX this PRT follows (NTE/PRT between them), else None."""
    for position in range(prt.position - 1, -1, -1):
        found = ctx.message.segment_list[position].id
        if found in _SKIPPED:
            continue
        if found != "OBX":
            return None
        url = ctx.current.get("Observation")
        return ctx.bundle.resource(url) if url else None
    return None


@segment_mapper("PRT", summary="PRT → Device, PractitionerRole (IG PRT[Device], PRT[PractitionerRole])")
def prt_to_participants(prt: Segment, ctx: MappingContext) -> None:
    """IG OBSERVATION.PRT rows: PRT-10 valued → Device; PRT-5 valued → PractitionerRole."""
    observation = _observation_group(prt, ctx)
    if observation is None:
        return  # PRT outside an observation group: its fields are reported unmapped
    prt.mark_used(1, 2)  # PRT-1 instance id, PRT-2 action code (A/U: the relation is active)
    if prt.field(10):
        device = _device(prt, ctx)
        if device is not None:
            url = ctx.add(device, prt, "Device")
            observation.setdefault("device", ctx.bundle.reference(url))
    if prt.field(5):
        _practitioner_role(prt, ctx, observation)


def _practitioner_role(prt: Segment, ctx: MappingContext, observation: dict[str, Any]) -> None:
    """IG PRT[PractitionerRole]: PRT-4 → code, PRT-5 → practitioner; Observation.performer."""
    for index, rep in enumerate(prt.field(5), start=1):
        practitioner = practitioner_reference(rep, prt, ctx, f"Practitioner-5-{index}")
        if practitioner is None:
            continue
        role: dict[str, Any] = {"resourceType": "PractitionerRole", "practitioner": practitioner}
        if prt.field(4):
            code = dt.cwe_to_codeable_concept(prt.rep(4), ctx.settings)
            if code is not None:
                role["code"] = [code]
        url = ctx.add(role, prt, f"PractitionerRole-5-{index}")
        performer = ctx.bundle.reference(url)
        performers = observation.setdefault("performer", [])
        if performer not in performers:
            performers.append(performer)


def _device_r5(res: dict[str, Any]) -> None:
    """R5 Device: udiCarrier needs an issuer (1..1): without one it is an identifier;
    distinctIdentifier → biologicalSourceEvent; type 0..* (R4: 0..1)."""
    carriers = res.pop("udiCarrier", None)
    if carriers:
        kept = [c for c in carriers if "issuer" in c]
        for carrier in carriers:
            if "issuer" not in carrier:
                res.setdefault("identifier", []).append({"value": carrier["deviceIdentifier"]})
        if kept:
            res["udiCarrier"] = kept
    distinct = res.pop("distinctIdentifier", None)
    if distinct:
        res["biologicalSourceEvent"] = {"value": distinct}
    kind = res.get("type")
    if isinstance(kind, dict):
        res["type"] = [kind]


register_r5_adapter("Device", _device_r5)
