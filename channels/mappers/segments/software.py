"""SFT → Device (+ MessageHeader.source.software/version) (HL7 v2 ch. 2.14.12 SFT).

IG rows: SFT[Device] through the message maps (ORU_R01, OML_O21 …: "SFT → Provenance[1]
.entity.what(Device)", role "source" when the software is the original source system,
"derivation" otherwise), and SFT[MessageHeader] (SFT-2 → source.version, SFT-3 →
source.software) for the first SFT, whose software sent the message.

Our choices, where the IG leaves one open:
- entity.role is "source": MSH-3's application is the message's source and the SFT segments
  describe the software that built it; nothing in the message says it relayed another's.
- SFT-1 with XON.10 valued: the IG row waits for R6 (Device.manufacturer as a Reference),
  so no manufacturer; XON.1 alone → manufacturer (XON[string]).
- SFT-6 (install date) → version.extension installDate (R4B, the IG's cross-version
  extension in its http form) / version.installDate (R5).
"""

from __future__ import annotations

from typing import Any

from channels.mappers.bundle import register_r5_adapter
from channels.mappers.datatypes import put_datetime
from channels.mappers.messages import MappingContext, segment_mapper
from channels.mappers.v2 import Segment

PROVENANCE_SOURCE = "Provenance-source"  # ctx.extra key: the MSH[Provenance-Source] fullUrl (header.py)
_INSTALL_DATE = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Device.version.installDate"


def _device(sft: Segment, ctx: MappingContext) -> dict[str, Any] | None:
    """IG SFT[Device]; None when the segment names no software (SFT-1..5 empty)."""
    device: dict[str, Any] = {"resourceType": "Device"}
    vendor = sft.rep(1)
    if vendor.component(10):  # IG SFT-1 with XON.10: a Reference once R6 has one; reported unmapped
        ctx.reject(sft, 1)
    elif vendor.component(1):  # IG SFT-1 (XON[string])
        device["manufacturer"] = vendor.component(1)
    if sft.value(3):  # IG SFT-3 → deviceName (type manufacturer-name)
        device["deviceName"] = [{"name": sft.value(3), "type": "manufacturer-name"}]
    if sft.value(4):  # IG SFT-4 → modelNumber
        device["modelNumber"] = sft.value(4)
    version: dict[str, Any] = {}
    if sft.value(2):  # IG SFT-2 → version.value
        version["value"] = sft.value(2)
    installed: dict[str, Any] = {}
    if sft.value(6) and put_datetime(installed, "valueDateTime", sft.value(6), ctx.settings):
        if version:  # R4 Device.version.value is 1..1: an install date alone has nowhere to go
            # only the value: an extension's value cannot carry the original-text extension
            version["extension"] = [{"url": _INSTALL_DATE, "valueDateTime": installed["valueDateTime"]}]
    elif sft.value(6):
        ctx.reject(sft, 6)
    if version:
        device["version"] = [version]
    if sft.value(5):  # IG SFT-5 → note.text
        device["note"] = [{"text": sft.value(5)}]
    return device if len(device) > 1 else None


@segment_mapper("SFT", summary="SFT → Device, MessageHeader.source (IG SFT[Device], SFT[MessageHeader])")
def sft_to_device(sft: Segment, ctx: MappingContext) -> None:
    """IG SFT[Device] (+ Provenance-source entity) and, for the first SFT, SFT[MessageHeader]."""
    header_url = ctx.current.get("MessageHeader")
    header = ctx.bundle.resource(header_url) if header_url else None
    if header is not None:
        source = header.setdefault("source", {})
        if sft.value(3) and "software" not in source:  # IG SFT[MessageHeader] SFT-3
            source["software"] = sft.value(3)
            if sft.value(2):  # IG SFT[MessageHeader] SFT-2
                source["version"] = sft.value(2)
    device = _device(sft, ctx)
    if device is None:
        return
    device_url = ctx.add(device, sft, "Device")
    provenance_url = ctx.extra.get(PROVENANCE_SOURCE)
    provenance = ctx.bundle.resource(provenance_url) if isinstance(provenance_url, str) else None
    if provenance is not None:
        provenance.setdefault("entity", []).append({"role": "source", "what": ctx.bundle.reference(device_url)})


def _device_r5(res: dict[str, Any]) -> None:
    """R5 Device: deviceName → name (value, type; "manufacturer-name" has no R5 code, the
    closest is registered-name); version installDate is an element."""
    names = res.pop("deviceName", None)
    if names:
        res["name"] = [{"value": n["name"], "type": "registered-name"} for n in names]
    for version in res.get("version", []):
        for ext in version.pop("extension", []):
            if ext.get("url") == _INSTALL_DATE:
                version["installDate"] = ext["valueDateTime"]


register_r5_adapter("Device", _device_r5)
