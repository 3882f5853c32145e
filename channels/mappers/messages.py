"""Message-level maps: which segment maps apply, and the per-message mapping context.

HL7 v2-to-FHIR IG ``mappings/messages/*.csv`` (ADT_A01, ADT_A02, ADT_A05, ADT_A06, ADT_A09,
ADT_A11, ADT_A17, ORU_R01, ...). Segments are mapped in message order by a registry
keyed by segment id; groups (PATIENT, NEXT_OF_KIN, INSURANCE, ORDER/OBSERVATION) follow
from that order: a segment attaches to the latest resource of its group parent
(``ctx.current``), so IN2 enriches the Coverage of the IN1 before it, NK1 points at the
Patient of the PID before it, and an ADT_A17 with two PID groups maps both.

HOW TO ADD A SEGMENT MAP (mapping-2: PV1, PV2, AL1, DG1, PR1, ORC, OBR, OBX, NTE, SPM, RXA, SCH)

1. Create ``channels/mappers/segments/<topic>.py`` (e.g. ``encounter.py``). Every module
   in that package is imported by ``segments/__init__.py`` automatically; no core edit.
2. Write one function per segment map and register it::

       from channels.mappers.messages import MappingContext, segment_mapper
       from channels.mappers.v2 import Segment

       @segment_mapper("PV1", summary="PV1 → Encounter (IG PV1[Encounter])")
       def pv1_to_encounter(seg: Segment, ctx: MappingContext) -> None:
           enc = {"resourceType": "Encounter", "status": ..., "class": ...}
           patient = ctx.require_patient(seg)              # MappingError when no PID came before
           enc["subject"] = ctx.bundle.reference(patient)
           url = ctx.add(enc, seg, "Encounter")            # role "PV1-1/Encounter"
           ctx.current["Encounter"] = url                  # what later OBX/DG1 attach to

   Read fields with ``seg.field(n)`` / ``seg.rep(n)`` / ``seg.value(n, c)``: each read marks
   the field mapped for field accounting. A field you read but cannot map (invalid
   value) → ``ctx.reject(seg, n)`` so it is reported as unmapped.
3. Use datatypes.py for every datatype and ``ctx.settings.vocab`` for code tables; add
   R5 differences of your resource types with ``bundle.register_r5_adapter`` (better: ask
   the owner of bundle.py to put them there, so they stay in one place).
4. Event-specific behaviour reads ``ctx.event`` (MSH-9.2, e.g. "A11" → Encounter status
   cancelled via the "Event[EncounterStatus]" concept map).

Public API::

    segment_mapper(segment_id, summary="") -> decorator
    registered_segments() -> frozenset[str];  mapper_for(segment_id) -> SegmentMapper | None
    MappingContext(message, settings, bundle)   .event .message_code .structure .current
        .add(resource, seg, kind) -> fullUrl     .role(seg, kind) -> str   .url_of(seg, kind)
        .require_patient(seg) -> fullUrl        .patient -> fullUrl | None
        .reject(seg, field)                      .after(callback)  (run after all segments)
    MESSAGE_MAPS: dict[str, MessageMap];  message_map(code, event, structure) -> MessageMap | None
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from channels.mappers.bundle import BundleBuilder
from channels.mappers.options import Settings
from channels.mappers.v2 import Segment, V2Message
from engine.types import MappingError

SegmentMapper = Callable[[Segment, "MappingContext"], None]
F = TypeVar("F", bound=SegmentMapper)


@dataclass(frozen=True, slots=True)
class Registration:
    segment_id: str
    mapper: SegmentMapper
    summary: str


_REGISTRY: dict[str, Registration] = {}


def segment_mapper(segment_id: str, summary: str = "") -> Callable[[F], F]:
    """Register the decorated function as THE map for `segment_id` (one per segment id)."""

    def register(fn: F) -> F:
        existing = _REGISTRY.get(segment_id)
        if existing is not None and existing.mapper is not fn:
            raise ValueError(f"segment {segment_id} already has a mapper: {existing.summary}")
        first_doc_line = (fn.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[segment_id] = Registration(segment_id, fn, summary or first_doc_line)
        return fn

    return register


def registered_segments() -> frozenset[str]:
    return frozenset(_REGISTRY)


def mapper_for(segment_id: str) -> SegmentMapper | None:
    found = _REGISTRY.get(segment_id)
    return found.mapper if found is not None else None


def registrations() -> list[Registration]:
    return sorted(_REGISTRY.values(), key=lambda r: r.segment_id)


# ---------------------------------------------------------------- message maps


@dataclass(frozen=True, slots=True)
class MessageMap:
    """What a message type needs (IG messages/*.csv): its structure and required segments.

    A required segment the message lacks is reported by convert_message as
    (segment, "missing") in the field accounting; the message is still mapped.
    """

    structure: str
    required: tuple[str, ...] = ()
    note: str = ""


_ADT_A01 = MessageMap("ADT_A01", ("PID",), "IG ADT_A01: PID PD1 NK1 PV1 PV2 OBX AL1 DG1 PR1 GT1 IN1-3")
_ADT_A05 = MessageMap("ADT_A05", ("PID",), "IG ADT_A05: as ADT_A01 (pre-admit, register, update person)")
_ADT_A06 = MessageMap("ADT_A06", ("PID",), "IG ADT_A06: as ADT_A01 with MRG (change outpatient/inpatient)")
_ADT_A09 = MessageMap("ADT_A09", ("PID",), "IG ADT_A09: MSH, EVN, PID, PD1, PV1, PV2, OBX, DG1")

MESSAGE_MAPS: dict[str, MessageMap] = {
    "ADT^A01": _ADT_A01,
    "ADT^A02": MessageMap("ADT_A02", ("PID",), "IG ADT_A02: transfer"),
    "ADT^A03": MessageMap("ADT_A03", ("PID",), "IG ADT_A01 shape; Encounter finished"),
    "ADT^A04": _ADT_A01,
    "ADT^A05": _ADT_A05,
    "ADT^A06": _ADT_A06,
    "ADT^A07": _ADT_A06,
    "ADT^A08": _ADT_A01,
    "ADT^A11": _ADT_A09,
    "ADT^A13": _ADT_A01,
    "ADT^A14": _ADT_A05,
    "ADT^A17": MessageMap("ADT_A17", ("PID",), "IG ADT_A17: two PID groups (swap patients)"),
    "ADT^A28": _ADT_A05,
    "ADT^A31": _ADT_A05,
    "ADT^A40": MessageMap("ADT_A39", ("PID", "MRG"), "merge patient: PID survives, MRG → Patient.link"),
    "ORU^R01": MessageMap("ORU_R01", (), "IG ORU_R01"),
    "ORM^O01": MessageMap("ORM_O01", (), "IG ORM_O01"),
    "OML^O21": MessageMap("OML_O21", (), "IG OML_O21"),
    "VXU^V04": MessageMap("VXU_V04", ("PID",), "IG VXU_V04"),
    "SIU^S12": MessageMap("SIU_S12", (), "IG SIU_S12"),
}


def message_map(code: str, event: str, structure: str = "") -> MessageMap | None:
    """The map for MSH-9 (code^event^structure); None for types the IG does not list
    (they still map every segment that has a mapper)."""
    return MESSAGE_MAPS.get(f"{code}^{event}")


# ---------------------------------------------------------------- per-message context


@dataclass(slots=True)
class MappingContext:
    """State of one message's conversion. Mappers read the message and add to `bundle`."""

    message: V2Message
    settings: Settings
    bundle: BundleBuilder
    current: dict[str, str] = field(default_factory=dict)  # group parent kind → fullUrl
    rejected: set[tuple[int, int]] = field(default_factory=set)  # (segment position, field)
    _callbacks: list[Callable[[], None]] = field(default_factory=list)
    _occurrence: dict[int, int] = field(default_factory=dict)  # position → n-th of its id
    _urls: dict[str, str] = field(default_factory=dict)  # role → fullUrl (after merging)
    extra: dict[str, Any] = field(default_factory=dict)  # free slot for cooperating mappers
    # MSH-9.1 / MSH-9.2, read once: mappers ask for them per segment.
    _message_code: str | None = None
    _event: str | None = None

    def __post_init__(self) -> None:
        counts: dict[str, int] = {}
        for seg in self.message.segment_list:
            counts[seg.id] = counts.get(seg.id, 0) + 1
            self._occurrence[seg.position] = counts[seg.id]

    @property
    def message_code(self) -> str:
        """MSH-9.1 (ADT, ORU ...)."""
        code = self._message_code
        if code is None:
            code = self._message_code = self.message.msh.value(9, 1)
        return code

    @property
    def event(self) -> str:
        """MSH-9.2 (A01, R01 ...)."""
        event = self._event
        if event is None:
            event = self._event = self.message.msh.value(9, 2)
        return event

    @property
    def structure(self) -> str:
        """MSH-9.3 (ADT_A01 ...), else the IG message map's structure, else ""."""
        found = self.message.msh.value(9, 3)
        if found:
            return found
        mm = message_map(self.message_code, self.event)
        return mm.structure if mm else ""

    @property
    def patient(self) -> str | None:
        """fullUrl of the Patient of the latest PID (None before any PID)."""
        return self.current.get("Patient")

    def role(self, seg: Segment, kind: str) -> str:
        """A stable role name: ``"<SEG>-<n>/<kind>"`` (n-th segment with that id, 1-based)."""
        return f"{seg.id}-{self._occurrence.get(seg.position, 0)}/{kind}"

    def add(
        self, resource: dict[str, Any], seg: Segment, kind: str | None = None, match: dict[str, Any] | None = None
    ) -> str:
        """Add `resource` to the Bundle under this segment's role; returns its fullUrl.

        When an equal conditional entry exists already (same type and business
        identifier), the resource is merged into it and that entry's fullUrl is returned.
        `match` picks the identifier to match on (see BundleBuilder.add).
        """
        role = self.role(seg, kind or str(resource["resourceType"]))
        url = self.bundle.add(resource, role, match)
        self._urls[role] = url
        return url

    def url_of(self, seg: Segment, kind: str) -> str | None:
        """fullUrl added earlier for `seg` under `kind` (None if that role was never added)."""
        return self._urls.get(self.role(seg, kind))

    def require_patient(self, seg: Segment) -> str:
        """The current Patient's fullUrl, or MappingError naming `seg` when no PID came first."""
        patient = self.patient
        if patient is None:
            raise MappingError("needs a PID segment before it", segment=seg.id)
        return patient

    def reject(self, seg: Segment, number: int) -> None:
        """Report field `number` of `seg` as present but not mapped (e.g. an invalid date)."""
        self.rejected.add((seg.position, number))

    def after(self, callback: Callable[[], None]) -> None:
        """Run `callback` once every segment is mapped (e.g. to fill MessageHeader.focus)."""
        self._callbacks.append(callback)

    def finish(self) -> None:
        for callback in self._callbacks:
            callback()
        self._callbacks.clear()
