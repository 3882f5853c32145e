"""MSH → MessageHeader (+ Bundle identifier/timestamp, + source Provenance) and EVN → Provenance.

IG rows: MSH[MessageHeader], MSH[Bundle], MSH[Provenance-Source], EVN[Provenance],
MSH[Provenance-Operator] (HL7 v2 ch. 2.14.9 MSH, ch. 3.4.1 EVN).

Choices where the IG leaves room:
- The output is a transaction Bundle, not a FHIR message: MessageHeader is one of its
  entries (PUT by its deterministic id), MSH-10 becomes ``Bundle.identifier`` and MSH-7
  ``Bundle.timestamp`` (only when MSH-7 gives a zone or the channel sets ``timezone``).
- MSH[Provenance-Source] is emitted when it can be valid: ``recorded`` (an instant) from
  MSH-7 and an agent from MSH-4/MSH-22. Its targets are every resource of the Bundle.
  The v2 text itself is not embedded (entity DocumentReference): it is PHI kept by the
  engine's store. MSH[Provenance-Transformation] is not emitted: its ``recorded`` is the
  transformation time, which would make the same message give different Bundles.
- EVN → Provenance targets the MessageHeader; ``recorded`` is EVN-2, else MSH-7.
- MSH-18 (character set) counts as mapped: the custody path decoded the text with it.
"""

from __future__ import annotations

from typing import Any

from channels.mappers.datatypes import (
    DATA_ABSENT_REASON,
    HD,
    as_code,
    cwe_to_codeable_concept,
    dtm_to_instant,
    hd_of,
    hd_to_organization,
    hd_to_system,
    put_datetime,
    xcn_to_practitioner,
    xon_to_organization,
)
from channels.mappers.messages import MappingContext, segment_mapper
from channels.mappers.segments.software import PROVENANCE_SOURCE
from channels.mappers.v2 import Segment
from channels.mappers.vocab import v2_table_system
from engine.types import MappingError

PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
_URN_PREFIX = {"ISO": "urn:oid:", "UUID": "urn:uuid:", "DNS": "urn:dns:", "URI": "urn:uri:"}


def _absent() -> dict[str, Any]:
    return {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]}


def hd_to_endpoint(hd: HD) -> str | None:
    """IG HD[MessageHeader.source-endpoint] / [destination-endpoint]: HD.2 with a URN prefix by HD.3."""
    if not hd.universal_id:
        return None
    kind = hd.id_type.upper()
    if hd.universal_id.startswith(("http://", "https://", "urn:", "mllp://")) or kind == "URL":
        return hd.universal_id  # already absolute: a second scheme would not make it more so
    prefix = _URN_PREFIX.get(kind)
    return prefix + hd.universal_id if prefix else None


def _source(msh: Segment) -> dict[str, Any]:
    """IG MSH-3 → source.name (HD.1) and source.endpoint (HD.2 by HD.3); MSH-24 → source.endpoint."""
    app = hd_of(msh.rep(3))
    source: dict[str, Any] = {}
    if app.namespace:
        source["name"] = app.namespace
    if app.universal_id and app.id_type and app.id_type.upper() not in _URN_PREFIX:
        # IG HD[MessageHeader.source-endpoint] HD.2 row for other HD.3 types (CLIA, …): no
        # endpoint; name = HD.1+" - "+HD.3+":"+HD.2
        source["name"] = f"{app.namespace} - {app.id_type}:{app.universal_id}"
    network = hd_of(msh.rep(24))
    endpoint = hd_to_endpoint(network) or network.namespace or hd_to_endpoint(app)
    if endpoint:
        source["endpoint"] = endpoint
    else:
        source["_endpoint"] = _absent()  # R4 source.endpoint is 1..1 (IG: data-absent-reason)
    return source


def _destinations(msh: Segment) -> list[dict[str, Any]]:
    """IG MSH-5 and MSH-25 rows, each through HD[MessageHeader.destination-endpoint] (HD.1 →
    name, HD.2 by HD.3 → endpoint). Both rows target destination[1] and would give it two
    names when both fields are valued; one destination per distinct HD keeps both (the
    receiving application and the receiving network), as CDC ReportStream does."""
    destinations: list[dict[str, Any]] = []
    seen: set[str] = set()
    for field in (5, 25):
        raw = msh.raw(field)
        if not raw or raw in seen:
            continue
        seen.add(raw)
        hd = hd_of(msh.rep(field))
        destination: dict[str, Any] = {}
        if hd.namespace:
            destination["name"] = hd.namespace
        endpoint = hd_to_endpoint(hd)
        if endpoint:
            destination["endpoint"] = endpoint
        else:
            destination["_endpoint"] = _absent()  # R4 destination.endpoint is 1..1
        destinations.append(destination)
    return destinations


def _organization_from_hd(ctx: MappingContext, seg: Segment, field: int, kind: str) -> str | None:
    hd = hd_of(seg.rep(field))
    org = hd_to_organization(hd)
    return ctx.add(org, seg, kind) if org is not None else None


def _sender(msh: Segment, ctx: MappingContext) -> str | None:
    """IG MSH[MessageHeader] rows MSH-4 → sender (HD[Organization]) and MSH-17 →
    sender(Organization.address.country). Without MSH-4 there is no sender: an Organization
    holding only a country breaks FHIR org-1 ("SHALL at least have a name or an
    identifier"), which validating servers reject, so MSH-17 alone is reported unmapped."""
    org = hd_to_organization(hd_of(msh.rep(4)))
    country = msh.value(17)
    if org is None:
        if country:
            ctx.reject(msh, 17)
        return None
    if country:
        org["address"] = [{"country": country}]
    return ctx.add(org, msh, "Organization-sender")


@segment_mapper("MSH", summary="MSH → MessageHeader, Bundle identifier/timestamp, Provenance (IG MSH[*])")
def msh_to_message_header(msh: Segment, ctx: MappingContext) -> None:
    """IG MSH[MessageHeader] rows MSH-3..MSH-25, MSH[Bundle] rows MSH-7 and MSH-10."""
    s = ctx.settings
    header: dict[str, Any] = {"resourceType": "MessageHeader"}
    code, event = msh.value(9, 1), msh.value(9, 2)
    if not code:
        raise MappingError("message type missing", segment="MSH", field="9")
    # MSH-9 → eventCoding (IG MSG[MessageHeader]: MSG.2 → code, system v2-0003)
    if event:
        # IG MSG[Coding]: MSG.2 → code (v2-0003), display = MSG.1^MSG.2^MSG.3
        coding: dict[str, Any] = {"system": v2_table_system("0003"), "code": as_code(event)}
    else:
        coding = {"system": v2_table_system("0076"), "code": as_code(code)}
    # IG MSG[Coding] row MSG: display = MSG.1^MSG.2^MSG.3 whether or not MSG.2 is valued
    coding["display"] = "^".join(msh.rep(9).components())
    header["eventCoding"] = coding
    msh.value(9, 3)  # MSH-9.3 message structure: read by ctx.structure
    # MSH-11 → meta.tag (IG PT[Meta]: PT.1 → v2-0103, PT.2 → v2-0207)
    tags = []
    processing = msh.rep(11)
    for component, table in ((1, "0103"), (2, "0207")):
        tag_code = as_code(processing.component(component))
        if tag_code:
            tags.append({"system": v2_table_system(table), "code": tag_code})
    if tags:
        header["meta"] = {"tag": tags}
    # MSH-8 (security, ST) → meta.security (IG row MSH-8: a Coding holding the text as its code)
    security = as_code(msh.value(8))
    if security:
        header.setdefault("meta", {})["security"] = [{"code": security}]
    # MSH-19 → language (CWE[code]: CWE.1, else CWE.4)
    language = as_code(msh.value(19, 1) or msh.value(19, 4))
    if language:
        header["language"] = language
    # MSH-22 → responsible (XON[Organization]); added before MSH-23 so that, when both name
    # one organization (same identifier, one conditional entry), the field order decides its name
    responsible = None
    if msh.field(22):
        responsible_org = xon_to_organization(msh.rep(22), s)
        if responsible_org is not None:
            responsible = ctx.add(responsible_org, msh, "Organization-responsible")
            header["responsible"] = ctx.bundle.reference(responsible)
    # MSH-5 / MSH-25 → destination; MSH-23 (else MSH-6) → receiver of each destination (the
    # facility receives the message whichever address it arrives at)
    header_destinations = _destinations(msh)
    receiver = None
    if msh.field(23):
        receiver_org = xon_to_organization(msh.rep(23), s)
        if receiver_org is not None:
            receiver = ctx.add(receiver_org, msh, "Organization-receiving-responsible")
    if receiver is None:
        receiver = _organization_from_hd(ctx, msh, 6, "Organization-receiver")
    if receiver is not None:
        if not header_destinations:
            header_destinations.append({"_endpoint": _absent()})  # R4 endpoint is 1..1
        for destination in header_destinations:
            destination["receiver"] = ctx.bundle.reference(receiver)
    if header_destinations:
        header["destination"] = header_destinations
    sender = _sender(msh, ctx)
    if sender is not None:
        header["sender"] = ctx.bundle.reference(sender)
    header["source"] = _source(msh)
    msh.mark_used(18)  # applied by the custody path's decoder
    header_url = ctx.add(header, msh, "MessageHeader")
    ctx.current["MessageHeader"] = header_url
    # IG MSH[Bundle]: MSH-10 → Bundle.identifier, MSH-7 → Bundle.timestamp
    control_id = msh.value(10)
    if control_id:
        ident: dict[str, Any] = {"value": control_id}
        system = hd_to_system(hd_of(msh.rep(3)), s) if msh.field(3) else None
        if system:
            ident["system"] = system
        ctx.bundle.bundle_fields["identifier"] = ident
    sent_at = dtm_to_instant(msh.value(7), s)
    if sent_at:
        ctx.bundle.bundle_fields["timestamp"] = sent_at
    elif msh.value(7):
        ctx.reject(msh, 7)  # no zone: nothing we can put in an instant
    # IG MSH[Provenance-Source] (message maps: "if there is a source in MSH-4"): agent[1] is
    # the MSH-4 organisation unless MSH-22 is valued (agent[2]); R4 needs recorded and an agent.
    author = responsible or sender
    if sent_at and author is not None:
        provenance: dict[str, Any] = {
            "resourceType": "Provenance",
            "target": [],
            "recorded": sent_at,
            "activity": {"coding": [{"display": "message - " + "^".join(msh.rep(9).components())}]},
            "agent": [
                {
                    "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
                    "who": ctx.bundle.reference(author),
                }
            ],
            "entity": [{"role": "source", "what": ctx.bundle.reference(header_url)}],
        }
        put_datetime(provenance, "occurredDateTime", msh.value(7), s)
        provenance_url = ctx.add(provenance, msh, "Provenance-source")
        ctx.extra[PROVENANCE_SOURCE] = provenance_url  # SFT adds its Device as an entity (software.py)

        def fill_targets() -> None:
            targets = [ctx.bundle.reference(e) for e in ctx.bundle.full_urls() if e != provenance_url]
            provenance["target"] = targets

        ctx.after(fill_targets)


@segment_mapper("EVN", summary="EVN → Provenance (IG EVN[Provenance], MSH[Provenance-Operator])")
def evn_to_provenance(evn: Segment, ctx: MappingContext) -> None:
    """IG EVN[Provenance]: EVN-2 → recorded; EVN-4 → reason (EventReason); EVN-5 → agent.who
    (XCN[Practitioner]); EVN-6 → occurredDateTime; EVN-7 → location (HD[Location]).
    EVN-1 (event type, deprecated) duplicates MSH-9.2 and counts as mapped."""
    s = ctx.settings
    msh = ctx.message.msh
    evn.mark_used(1)
    recorded = dtm_to_instant(evn.value(2), s)
    if recorded is None and evn.value(2):
        ctx.reject(evn, 2)
    recorded = recorded or dtm_to_instant(msh.value(7), s)
    provenance: dict[str, Any] = {"resourceType": "Provenance"}
    header = ctx.current.get("MessageHeader")
    if header is not None:
        provenance["target"] = [ctx.bundle.reference(header)]
    trigger = msh.value(9, 2) or evn.value(1)
    provenance["activity"] = {"coding": [{"display": f"event - {msh.value(9, 1)}^{trigger}"}]}
    # EVN-4 → reason (U → data-absent-reason)
    reason = evn.rep(4)
    if reason:
        if reason.component(1) == "U":
            provenance["reason"] = [{"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]}]
        else:
            concept = cwe_to_codeable_concept(reason, s, "EventReason", "0062")
            if concept is not None:
                provenance["reason"] = [concept]
    # EVN-6 → occurredDateTime
    if evn.value(6) and not put_datetime(provenance, "occurredDateTime", evn.value(6), s):
        ctx.reject(evn, 6)
    # EVN-7 → location (HD[Location]: HD.1 → name)
    facility = hd_of(evn.rep(7))
    if facility:
        location: dict[str, Any] = {
            "resourceType": "Location",
            "name": facility.namespace or facility.universal_id,
        }
        if facility.universal_id:
            location["identifier"] = [{"value": facility.universal_id}]
        provenance["location"] = ctx.bundle.reference(ctx.add(location, evn, "Location"))
    # EVN-5 → agent.who (Practitioner); else MSH-22 / MSH-4 organisation (IG MSH[Provenance-Operator])
    agent_who = None
    operator = evn.rep(5)
    if operator:
        practitioner = xcn_to_practitioner(operator, s)
        if practitioner is not None:
            agent_who = ctx.add(practitioner, evn, "Practitioner-operator")
    if agent_who is None:  # IG ADT_A01 EVN row: "IF EVN-5 NOT VALUED AND (MSH-22 OR MSH-4 VALUED)"
        agent_who = ctx.url_of(msh, "Organization-responsible") or ctx.url_of(msh, "Organization-sender")
    if agent_who is not None:
        provenance["agent"] = [
            {
                "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
                "who": ctx.bundle.reference(agent_who),
            }
        ]
    if recorded is None or "agent" not in provenance or "target" not in provenance:
        return  # R4 Provenance needs recorded, agent and target: not derivable here
    provenance["recorded"] = recorded
    ctx.add(provenance, evn, "Provenance")
