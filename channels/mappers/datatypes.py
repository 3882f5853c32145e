"""HL7 v2 datatype maps of the HL7 v2-to-FHIR IG (mappings/datatypes/*.csv) as functions.

Every function takes already-split input (a ``v2.Repetition`` or leaf strings) and
returns a plain JSON-ready dict (a FHIR element), or None when there is nothing to map.
No fhir.resources objects here: validation is done once per Bundle (validate.py).

Public API (``s`` is the channel's ``options.Settings``)::

    # dates (TS / DTM / DT)
    dtm_to_datetime(text, s) -> FhirDateTime | None      # .value, .original (set when precision was reduced)
    ts_to_datetime(rep_or_text, s) -> FhirDateTime | None  # TS.1 (TS.2 degree of precision is ignored)
    dtm_to_instant(text, s) -> str | None                # needs seconds and a known zone
    dt_to_date(text) -> str | None                       # YYYY, YYYY-MM, YYYY-MM-DD (a time part is cut)
    put_datetime(target, element, text, s) -> bool      # sets target[element] (+ "_element" originalText)
    dr_to_period(rep, s) -> dict | None
    # identifiers
    hd_of(rep, component=None) -> HD                     # HD at a field or at a component (subcomponents)
    hd_to_system(hd, s) -> str | None;  hd_to_uri(hd) -> str | None
    hd_to_identifiers(hd) -> list[dict];  hd_to_organization(hd) -> dict | None
    cx_to_identifier(rep, s) -> dict | None
    ei_to_identifier(rep, s, start=1) -> dict | None     # EI at components start..start+3 (EIP uses 1 / 2)
    dln_to_identifier(rep, s) -> dict | None
    cwe_to_identifier(rep, s) -> list[dict]
    # names, addresses, telecom
    xpn_to_human_name(rep, s) -> dict | None;  xpn_called_by(rep) -> dict | None;  xpn_to_string(rep) -> str
    xad_to_address(rep, s) -> dict | None
    xtn_to_contact_point(rep, s, default_use=None) -> dict | None
    # codes
    cwe_to_codeable_concept(rep, s, concept_map=None, table=None) -> dict | None   # CE / CNE / CWE
    cwe_to_coding(rep, s, concept_map=None, table=None) -> dict | None
    code_of(rep_or_text, s, concept_map) -> str | None   # CWE[code] / ID[code] / IS[code] via a concept map
    id_to_boolean(text) -> bool | None                   # table 0136 Y/N
    # people and organisations
    xcn_to_practitioner(rep, s) -> dict | None           # a Practitioner resource (no id)
    xcn_to_related_person_fields(rep, s) -> dict         # identifier/name of XCN[RelatedPerson]
    xon_to_organization(rep, s) -> dict | None           # an Organization resource (no id)
    # values
    nm_to_number(text) -> int | float | None;  sn_to_value(rep) -> tuple[str, dict] | None
    cq_to_quantity(rep, s) -> dict | None;  st_value(rep) -> str

Choices the IG leaves open (documented here, tested in tests/unit/test_mappers_datatypes.py):
- Time zones: FHIR requires an offset on a dateTime with a time. A v2 time with an
  offset keeps it. Without one, the channel's ``timezone`` option (IANA zone, DST-aware)
  supplies it; when unset we never guess: the value drops to date precision and the v2
  text is kept on the element as the ``originalText`` extension
  (``"_birthDate": {"extension": [{"url": ".../originalText", "valueString": "19880517180606"}]}``).
  Minute/hour precision is padded with ":00" seconds (FHIR needs seconds once a time is given).
- Identifier system (IG CX.4 "determine whether organization or system"): the channel's
  ``identifier_systems`` (by HD.1, then HD.2) wins; else HD.2 by HD.3 (ISO → urn:oid:,
  UUID → urn:uuid:, URI/URL → as is); else a namespace-only HD.1 becomes
  ``urn:id:<HD.1>`` with ``assigner.display`` = HD.1 (a stable system keeps conditional
  updates exact, the LinuxForHealth convention); else ``identifier_systems[""]``.
- Unknown CWE coding-system names (CWE.3) become ``urn:id:<name>`` too; known ones use
  channels/vocab/CodingSystems.json (table 0396) or ``HL7nnnn`` → terminology.hl7.org.
- XTN with a number and no XTN.3: ``system = phone`` (XTN.1 is by definition a telephone
  number; the IG's XTN.3 rows would give data-absent-reason); XTN.4 without XTN.3:
  ``email`` (IG); neither: data-absent-reason (IG).
- Coded fields with a concept map: the IG's FHIR coding comes first, the original v2
  coding is kept after it when it differs (nothing is lost).
- CX.6 (assigning facility): the IG's extension URL is unresolved ("extension??"), so CX.6
  is not mapped. NM values become JSON numbers (trailing zeros are not kept).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from channels.mappers.options import Settings
from channels.mappers.v2 import Repetition
from channels.mappers.vocab import v2_table_system

SD = "http://hl7.org/fhir/StructureDefinition/"
ORIGINAL_TEXT = SD + "originalText"
DATA_ABSENT_REASON = SD + "data-absent-reason"
V2_0203 = v2_table_system("0203")

_DTM = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?)?)?)?)?"
    r"([+-]\d{4})?$"
)


# ---------------------------------------------------------------- dates


@dataclass(frozen=True, slots=True)
class FhirDateTime:
    """A FHIR dateTime and, when precision had to be reduced, the v2 text it came from."""

    value: str
    original: str | None = None

    def primitive_extension(self) -> dict[str, Any] | None:
        """The ``_element`` JSON for this value (originalText), or None."""
        if self.original is None:
            return None
        return {"extension": [{"url": ORIGINAL_TEXT, "valueString": self.original}]}


# A parsed v2 DTM: (FHIR date text "2024" / "2024-05" / "2024-05-02", time text "09:30:00.12"
# or None without hour, offset text "-05:00" or None, the naive datetime it denotes).
_Dtm = tuple[str, str | None, str | None, datetime]


def _parse_dtm(text: str) -> _Dtm | None:
    """Split a stripped v2 DTM (HL7 v2.5 2.A.22: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ])
    into its FHIR texts; None if invalid (no such day or time, offset beyond ±14:59)."""
    match = _DTM.match(text)
    if not match:
        return None
    y, mo, d, h, mi, sec, frac, off = match.groups()
    if not text.isascii():  # \d also matches other scripts' digits: write them as ASCII
        y, mo, d, h, mi, sec = (None if g is None else f"{int(g):0{len(g)}d}" for g in (y, mo, d, h, mi, sec))
    assert y is not None  # the pattern requires the year
    # Missing parts take their minimum, and so do month / day 00 (kept as written in the
    # text); a leap second (:60) counts as :59. datetime() checks the rest (31 April ...).
    month, day = int(mo) if mo else 0, int(d) if d else 0
    hour, minute, second = int(h) if h else 0, int(mi) if mi else 0, int(sec) if sec else 0
    try:
        naive = datetime(int(y), month or 1, day or 1, hour, minute, min(second, 59))
    except ValueError:
        return None
    if off is not None and (int(off[1:3]) > 14 or int(off[3:5]) > 59):
        return None
    date = y if mo is None else f"{y}-{mo}" if d is None else f"{y}-{mo}-{d}"
    time = None
    if h is not None:
        time = f"{h}:{mi or '00'}:{sec or '00'}.{frac}" if frac else f"{h}:{mi or '00'}:{sec or '00'}"
    offset = None if off is None else f"{off[:3]}:{off[3:]}"
    return date, time, offset, naive


def _zone_offset(naive: datetime, zone: ZoneInfo) -> str:
    """The offset ("-05:00") of `zone` at that local time (DST-aware)."""
    delta = naive.replace(tzinfo=zone).utcoffset() or timedelta(0)
    minutes = int(delta.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


# Within one message the same DTM text comes back often (MSH-7 and EVN-2, the OBX-14 of
# every result of a panel): its FhirDateTime (immutable) is kept here by (text, zone).
# convert_message empties it at the start of each message, so no message's values outlive
# that message here; the size bound covers a very long message.
_DTM_MEMO: dict[tuple[str, ZoneInfo | None], FhirDateTime | None] = {}
_DTM_MEMO_SIZE = 256


def forget_message_dates() -> None:
    """Empty the per-message DTM memo (convert_message calls it before each message)."""
    _DTM_MEMO.clear()


def dtm_to_datetime(text: str, s: Settings | None = None) -> FhirDateTime | None:
    """IG DTM[dateTime] row DTM.1 → $value: v2 DTM → FHIR dateTime, precision kept.

    None when `text` is empty or not a valid DTM. See the module docstring for the
    time-zone rule (no guessed zone, ever).
    """
    if not text:
        return None
    zone = s.timezone if s is not None else None
    key = (text, zone)
    if key in _DTM_MEMO:
        return _DTM_MEMO[key]
    result = _dtm_to_datetime(text.strip(), zone)
    if len(_DTM_MEMO) >= _DTM_MEMO_SIZE:
        _DTM_MEMO.clear()
    _DTM_MEMO[key] = result
    return result


def _dtm_to_datetime(stripped: str, zone: ZoneInfo | None) -> FhirDateTime | None:
    parsed = _parse_dtm(stripped)
    if parsed is None:
        return None
    date, time, offset, naive = parsed
    if time is None:
        return FhirDateTime(date)
    if offset is None:
        if zone is None:
            return FhirDateTime(date, original=stripped)
        offset = _zone_offset(naive, zone)
    return FhirDateTime(f"{date}T{time}{offset}")


def ts_to_datetime(value: Repetition | str, s: Settings | None = None) -> FhirDateTime | None:
    """IG TS[dateTime] row TS.1 → $value (DTM[DateTime]); TS.2 (degree of precision) is ignored."""
    text = value if isinstance(value, str) else value.component(1)
    return dtm_to_datetime(text, s)


def dtm_to_instant(text: str, s: Settings | None = None) -> str | None:
    """A FHIR instant (needs a full time and a zone); None when the v2 value cannot give one."""
    result = dtm_to_datetime(text, s)
    if result is None or result.original is not None or "T" not in result.value:
        return None
    return result.value


def dt_to_date(text: str) -> str | None:
    """IG DT → date: YYYY[MM[DD]]; a TS/DTM's time part is cut (PID-7 → birthDate)."""
    if not text:
        return None
    parsed = _parse_dtm(text.strip())
    return None if parsed is None else parsed[0]


def put_datetime(target: dict[str, Any], element: str, text: str, s: Settings | None) -> bool:
    """Set ``target[element]`` from a v2 DTM (plus ``_element`` originalText when needed).

    Returns False when the text is not a valid DTM (nothing is set). On an Extension's
    ``valueDateTime`` the originalText is not added: fhir.resources rejects ``_value[x]``
    inside extensions, so such a value keeps date precision only (set ``timezone``).
    """
    result = dtm_to_datetime(text, s)
    if result is None:
        return False
    target[element] = result.value
    ext = result.primitive_extension()
    if ext is not None and not (element.startswith("value") and "url" in target):
        target["_" + element] = ext
    return True


def dr_to_period(rep: Repetition, s: Settings | None = None, start: int = 1) -> dict[str, Any] | None:
    """IG DR[Period]: DR.1 → start, DR.2 → end (DTM[DateTime]); components from `start`."""
    period: dict[str, Any] = {}
    put_datetime(period, "start", rep.component(start), s)
    put_datetime(period, "end", rep.component(start + 1), s)
    return period or None


def _period_from(rep: Repetition, s: Settings | None, start: int, end: int) -> dict[str, Any]:
    return _period_of(rep.component(start), rep.component(end), s)


def _period_of(start: str, end: str, s: Settings | None) -> dict[str, Any]:
    """A Period from two DTM texts ({} when neither is a valid DTM)."""
    period: dict[str, Any] = {}
    if start:
        put_datetime(period, "start", start, s)
    if end:
        put_datetime(period, "end", end, s)
    return period


# ---------------------------------------------------------------- HD and identifiers


class HD(NamedTuple):
    """Hierarchic designator: HD.1 namespace id, HD.2 universal id, HD.3 universal id type."""

    namespace: str
    universal_id: str
    id_type: str

    def __bool__(self) -> bool:
        return bool(self.namespace or self.universal_id)


def hd_of(rep: Repetition, component: int | None = None) -> HD:
    """The HD of a whole field (components 1-3) or of one component (subcomponents 1-3)."""
    hd = rep.numbered(3) if component is None else rep.numbered_subcomponents(component, 3)
    return HD(hd[1], hd[2], hd[3])


def _universal_uri(universal_id: str, id_type: str) -> str | None:
    kind = id_type.upper()
    if not universal_id:
        return None
    if kind == "ISO":
        return universal_id if universal_id.startswith("urn:oid:") else f"urn:oid:{universal_id}"
    if kind == "UUID":
        return universal_id if universal_id.startswith("urn:uuid:") else f"urn:uuid:{universal_id}"
    if kind in ("URI", "URL") or universal_id.startswith(("http://", "https://", "urn:")):
        return universal_id
    return None


def hd_to_uri(hd: HD) -> str | None:
    """IG HD[uri]: HD.1 if valued, else HD.2 as urn:oid:/urn:uuid: by HD.3, else HD.2."""
    if hd.namespace:
        return hd.namespace
    if hd.universal_id:
        return _universal_uri(hd.universal_id, hd.id_type) or hd.universal_id
    return None


def hd_to_system(hd: HD, s: Settings | None) -> str | None:
    """Identifier system for an assigning authority (rule in the module docstring)."""
    systems = s.identifier_systems if s is not None else {}
    if not hd:
        return systems.get("") or None
    for key in (hd.namespace, hd.universal_id):
        if key and key in systems:
            return systems[key]
    uri = _universal_uri(hd.universal_id, hd.id_type)
    if uri:
        return uri
    if hd.namespace:
        if hd.namespace.startswith(("http://", "https://", "urn:")):
            return hd.namespace
        return "urn:id:" + _urn_safe(hd.namespace)
    return None


def _urn_safe(text: str) -> str:
    """Whitespace runs → "_", ends trimmed (what re.sub(r"\\s+", "_", text.strip()) gives)."""
    return "_".join(text.split())


def as_code(text: str) -> str:
    """A FHIR ``code``: no leading/trailing whitespace and single inner spaces."""
    return " ".join(text.split())


def hd_to_identifiers(hd: HD) -> list[dict[str, Any]]:
    """IG HD[Organization]/HD[Device] identifiers: HD.1 → [1].value; HD.2/HD.3 → [2] (type v2-0301)."""
    out: list[dict[str, Any]] = []
    if hd.namespace:
        out.append({"value": hd.namespace})
    if hd.universal_id:
        ident: dict[str, Any] = {"value": hd.universal_id}
        if hd.id_type:
            ident["type"] = {"coding": [{"system": v2_table_system("0301"), "code": as_code(hd.id_type)}]}
        if hd.id_type.upper() in ("ISO", "UUID"):
            ident["system"] = "urn:ietf:rfc:3986"  # IG HD[Organization] row HD.3; value stays HD.2
        out.append(ident)
    return out


def hd_to_organization(hd: HD) -> dict[str, Any] | None:
    """IG HD[Organization]: an Organization identified by the HD (name = HD.1)."""
    if not hd:
        return None
    org: dict[str, Any] = {"resourceType": "Organization", "identifier": hd_to_identifiers(hd)}
    if hd.namespace:
        org["name"] = hd.namespace
    return org


def _check_digit_extensions(check_digit: str, scheme: str) -> list[dict[str, Any]]:
    """IG CX.2/CX.3 (XCN.11/12, XON.4/5) → identifier-checkDigit / namingsystem-checkDigit."""
    ext = []
    if check_digit:
        ext.append({"url": SD + "identifier-checkDigit", "valueString": check_digit})
    if scheme:
        ext.append({"url": SD + "namingsystem-checkDigit", "valueString": scheme})
    return ext


def _identifier_type(code: str, s: Settings | None) -> dict[str, Any]:
    code = as_code(code)
    coding: dict[str, Any] = {"system": V2_0203, "code": code}
    concept = s.vocab.lookup("IdentifierType", code) if s is not None else None
    if concept is not None:
        coding = {"system": concept.system or V2_0203, "code": concept.code}
        if concept.display:
            coding["display"] = concept.display
    return {"coding": [coding]}


def _assign(identifier: dict[str, Any], hd: HD, s: Settings | None) -> None:
    system = hd_to_system(hd, s)
    if system:
        identifier["system"] = system
    if (
        hd.namespace
        and not _universal_uri(hd.universal_id, hd.id_type)
        and (s is None or hd.namespace not in s.identifier_systems)
    ):
        identifier["assigner"] = {"display": hd.namespace}
    elif not hd.namespace and hd.universal_id and not hd.id_type and "system" not in identifier:
        # IG HD[Organization] HD.2 → Organization.identifier.value: without HD.1 or HD.3 the
        # universal id names the authority only as the assigner's identifier (nothing lost).
        identifier["assigner"] = {"identifier": {"value": hd.universal_id}}


def cx_to_identifier(rep: Repetition, s: Settings | None = None) -> dict[str, Any] | None:
    """IG CX[Identifier]: CX.1 → value; CX.2/CX.3 → check-digit extensions; CX.4 → system
    (or assigner); CX.5 → type (v2-0203); CX.7/CX.8 → period. None when CX.1 is empty."""
    cx = rep.numbered(8)  # cx[n] is CX.n
    value = cx[1]
    if not value:
        return None
    ident: dict[str, Any] = {}
    ext = _check_digit_extensions(cx[2], cx[3])
    if ext:
        ident["extension"] = ext
    if cx[5]:
        ident["type"] = _identifier_type(cx[5], s)
    _assign(ident, hd_of(rep, 4), s)
    ident["value"] = value
    period: dict[str, Any] = {}
    start = dt_to_date(cx[7])
    end = dt_to_date(cx[8])
    if start:
        period["start"] = start
    if end:
        period["end"] = end
    if period:
        ident["period"] = period
    return ident


def ei_to_identifier(rep: Repetition, s: Settings | None = None, start: int = 1) -> dict[str, Any] | None:
    """IG EI[Identifier-System]: EI.1 → value; EI.2/EI.3/EI.4 (an HD) → system.

    `start` is the component of EI.1 (EIP.1 = components 1-4 of a field holding EI).
    """
    ei = rep.numbered(start + 3)  # ei[start] is EI.1, ei[start + 1..3] the HD
    value = ei[start]
    if not value:
        return None
    ident: dict[str, Any] = {}
    hd = HD(ei[start + 1], ei[start + 2], ei[start + 3])
    _assign(ident, hd, s)
    ident["value"] = value
    return ident


def dln_to_identifier(rep: Repetition, s: Settings | None = None) -> dict[str, Any] | None:
    """IG DLN[Identifier]: DLN.1 → value (type DL, v2-0203); DLN.2 (issuing state) → system;
    DLN.3 → period.end."""
    value = rep.component(1)
    if not value:
        return None
    ident: dict[str, Any] = {"type": _identifier_type("DL", s)}
    state = rep.component(2)
    if state:
        ident["system"] = (s.identifier_systems.get(state) if s else None) or "urn:id:" + _urn_safe(state)
    ident["value"] = value
    end = dt_to_date(rep.component(3))
    if end:
        ident["period"] = {"end": end}
    return ident


def cwe_to_identifier(rep: Repetition, s: Settings | None = None) -> list[dict[str, Any]]:
    """IG CWE[Identifier]: (CWE.1, CWE.3), (CWE.4, CWE.6), (CWE.10, CWE.12) → value, system."""
    out: list[dict[str, Any]] = []
    for code_i, sys_i in ((1, 3), (4, 6), (10, 12)):
        value = rep.component(code_i)
        if not value:
            continue
        ident: dict[str, Any] = {}
        system = _coding_system(rep.component(sys_i), s)
        if system:
            ident["system"] = system
        ident["value"] = value
        out.append(ident)
    return out


# ---------------------------------------------------------------- names, addresses, telecom


@dataclass(frozen=True, slots=True)
class _NameLayout:
    """Where a person name's parts sit: XPN and XCN hold the same parts at other positions."""

    family: int
    given: tuple[int, int]
    prefix: int
    suffixes: tuple[int, ...]
    use: int
    period_start_end: tuple[int, int]
    period_dr: int
    assembly_order: int


_XPN_LAYOUT = _NameLayout(family=1, given=(2, 3), prefix=5, suffixes=(4, 6, 14), use=7,
                          period_start_end=(12, 13), period_dr=10, assembly_order=11)
_XCN_LAYOUT = _NameLayout(family=2, given=(3, 4), prefix=6, suffixes=(5, 7, 21), use=10,
                          period_start_end=(19, 20), period_dr=17, assembly_order=18)
_NAME_COMPONENTS = 21  # the highest component either layout reads (XCN.21)


def _human_name(rep: Repetition, s: Settings | None, layout: _NameLayout) -> dict[str, Any] | None:
    name: dict[str, Any] = {}
    parts = rep.numbered(_NAME_COMPONENTS)  # parts[n] is component n (XPN.n or XCN.n)
    fn_to_family(rep, layout.family, name)
    given = [parts[n] for n in layout.given if parts[n]]
    if given:
        name["given"] = given
    prefix = parts[layout.prefix]
    if prefix:
        name["prefix"] = [prefix]
    suffix = [parts[n] for n in layout.suffixes if parts[n]]
    if suffix:
        name["suffix"] = suffix
    if not name:
        return None
    use_code = parts[layout.use]
    if use_code and s is not None:
        concept = s.vocab.lookup("NameType", use_code)
        if concept is not None and concept.code:
            name["use"] = concept.code
    start, end = layout.period_start_end
    period = _period_of(parts[start], parts[end], s) or dr_to_period_component(rep, layout.period_dr, s)
    if period:
        name["period"] = period
    _assembly_order(parts[layout.assembly_order], s, name)
    return name


def xpn_to_human_name(rep: Repetition, s: Settings | None = None) -> dict[str, Any] | None:
    """IG XPN[HumanName]: XPN.1 (FN.1) → family; XPN.2/XPN.3 → given; XPN.4/XPN.6/XPN.14 → suffix;
    XPN.5 → prefix; XPN.7 → use (NameType); XPN.10 or XPN.12/XPN.13 → period;
    XPN.11 → assembly-order extension. FN.2-FN.5 → family extensions."""
    return _human_name(rep, s, _XPN_LAYOUT)


_FN_PARTS = (
    (2, SD + "humanname-own-prefix"),
    (3, SD + "humanname-own-name"),
    (4, SD + "humanname-partner-prefix"),
    (5, SD + "humanname-partner-name"),
)


def fn_to_family(rep: Repetition, component: int, name: dict[str, Any]) -> None:
    """IG FN[HumanName]: FN.1 → family; FN.2 own prefix, FN.3 own name, FN.4 partner prefix,
    FN.5 partner name → the humanname-* extensions on ``_family`` (FN held in `component`)."""
    fn = rep.numbered_subcomponents(component, 5)  # fn[n] is FN.n
    family = fn[1]
    if not family:
        return
    name["family"] = family
    parts = [{"url": url, "valueString": fn[sub]} for sub, url in _FN_PARTS if fn[sub]]
    if parts:
        name["_family"] = {"extension": parts}


def _assembly_order(code: str, s: Settings | None, name: dict[str, Any]) -> None:
    """IG XPN.11 / XCN.18 → humanname-assembly-order (NameAssemblyOrder). The IG cell names
    ``name.family.extension`` with an R4 page URL; the extension's context is HumanName, so
    it goes on ``name.extension`` with its canonical URL."""
    if not code or s is None:
        return
    concept = s.vocab.lookup("NameAssemblyOrder", code)
    if concept is not None and concept.code:
        name.setdefault("extension", []).append({"url": SD + "humanname-assembly-order", "valueCode": concept.code})


def dr_to_period_component(rep: Repetition, component: int, s: Settings | None) -> dict[str, Any] | None:
    """A DR held in one component (start & end as subcomponents), e.g. XPN.10, XAD.12."""
    dr = rep.numbered_subcomponents(component, 2)
    return _period_of(dr[1], dr[2], s) or None


def xpn_called_by(rep: Repetition) -> dict[str, Any] | None:
    """IG XPN[HumanName] row XPN.15 → a second HumanName {given, use: nickname}."""
    called = rep.component(15)
    return {"use": "nickname", "given": [called]} if called else None


def xpn_to_string(rep: Repetition) -> str:
    """IG XPN[string]: the name as one string (family, given, further given), e.g. mother's maiden name."""
    if rep.component(11) == "F":  # IG NameAssemblyOrder F: prefix given family
        parts = [rep.component(5), rep.component(2), rep.component(3), rep.component(1, 1), rep.component(4)]
    else:
        parts = [rep.component(1, 1), rep.component(2), rep.component(3), rep.component(4)]
    return " ".join(p for p in parts if p)


def xad_to_address(rep: Repetition, s: Settings | None = None) -> dict[str, Any] | None:
    """IG XAD[Address]: XAD.1 (SAD.1-3) and XAD.2, XAD.19 → line; XAD.3 city; XAD.4 state;
    XAD.5 postalCode; XAD.6 country; XAD.7 → use/type (AddressType) or iso21090-AD-use (HV);
    XAD.9 → district; XAD.10 → censusTract extension; XAD.12 / XAD.13-14 → period."""
    address: dict[str, Any] = {}
    xad = rep.numbered(19)  # xad[n] is XAD.n
    sad = rep.numbered_subcomponents(1, 3)  # sad[n] is SAD.n (XAD.1.n)
    # Blanks around a line are padding, not data (v2 2.A.74 ST is left justified; FHIR string
    # whitespace "SHOULD be removed"): servers matching addresses compare trimmed text.
    lines = [x.strip() for x in (sad[1], sad[2], sad[3], xad[2], xad[19]) if x and not x.isspace()]
    ext: list[dict[str, Any]] = []
    kind = xad[7]
    if kind == "HV":  # IG XAD.7 row: the code itself (PostalAddressUse HV, vacation home)
        ext.append({"url": SD + "iso21090-AD-use", "valueCode": "HV"})
    tract = xad[10]
    if tract:
        ext.append({"url": SD + "iso21090-ADXP-censusTract", "valueString": tract})
    if ext:
        address["extension"] = ext
    if kind and s is not None:
        if kind in ("M", "SH"):
            concept = s.vocab.lookup("AddressType[Type]", kind)
            if concept is not None and concept.code:
                address["type"] = concept.code
        else:
            concept = s.vocab.lookup("AddressType[Use]", kind)
            if concept is not None and concept.code:
                address["use"] = concept.code
    if lines:
        address["line"] = lines
    for comp, element in ((3, "city"), (9, "district"), (4, "state"), (5, "postalCode"), (6, "country")):
        text = xad[comp].strip()
        if text:
            address[element] = text
    period = _period_of(xad[13], xad[14], s) or dr_to_period_component(rep, 12, s)
    if period:
        address["period"] = period
    if not (set(address) - {"use", "type", "extension"}) and not tract:
        return None
    return address


_EMAIL_EQUIPMENT = ("Internet", "X.400")


def xtn_to_contact_point(
    rep: Repetition, s: Settings | None = None, default_use: str | None = None
) -> dict[str, Any] | None:
    """IG XTN[ContactPoint]: XTN.1 / XTN.4 / XTN.12 / XTN.5-8 → value (by the IG's conditions);
    XTN.2 → use (TelecommunicationUseCode); XTN.3 → system (TelecommunicationEquipmentType);
    XTN.5-XTN.8 → contactpoint-country/-area/-local/-extension extensions;
    XTN.13/XTN.14 → period; XTN.18 → rank. `default_use` is the segment row's use when XTN.2
    is empty (PID-13 → home, PID-14 → work)."""
    xtn = rep.numbered(18)  # xtn[n] is XTN.n
    equipment = xtn[3]
    email = xtn[4]
    country, area, local, extension = xtn[5], xtn[6], xtn[7], xtn[8]
    unformatted = xtn[12]
    is_email = equipment in _EMAIL_EQUIPMENT
    point: dict[str, Any] = {}
    ext: list[dict[str, Any]] = []
    if country:
        ext.append({"url": SD + "contactpoint-country", "valueString": country})
    if area:
        ext.append({"url": SD + "contactpoint-area", "valueString": area})
    if local and not is_email:
        ext.append({"url": SD + "contactpoint-local", "valueString": local})
    if extension:
        ext.append({"url": SD + "contactpoint-extension", "valueString": extension})
    if ext:
        point["extension"] = ext
    # value, in the IG's order of precedence
    value = ""
    if is_email or (not equipment and email and not xtn[1]):
        value = email
    elif unformatted:
        value = unformatted
    elif local:
        value = " ".join(x for x in (("+" + country) if country else "", area, local) if x)
        if extension:
            value += " X" + extension
    else:
        value = xtn[1]
    # system
    use_from_equipment = None
    if equipment:
        concept = s.vocab.lookup("TelecommunicationEquipmentType", equipment) if s is not None else None
        if concept is not None and concept.code:
            if concept.system.endswith("contact-point-use"):  # CP → system phone, use mobile
                point["system"] = "phone"
                use_from_equipment = concept.code
            else:
                point["system"] = concept.code
        else:
            point["system"] = "other"
    elif email and not xtn[1]:
        point["system"] = "email"
    elif value:
        point["system"] = "phone"  # XTN.1 is the "Telephone Number" component (see the module docstring)
    else:
        point["_system"] = {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]}
    if value:
        point["value"] = value
    use_code = xtn[2]
    use = None
    if use_code and s is not None:
        concept = s.vocab.lookup("TelecommunicationUseCode", use_code)
        use = concept.code if concept is not None and concept.code else None
    if use is None:
        use = use_from_equipment or (default_use if not use_code else None)
    if use:
        point["use"] = use
    rank = xtn[18]
    if rank.isdigit() and int(rank) > 0:
        point["rank"] = int(rank)
    period = _period_of(xtn[13], xtn[14], s)
    if period:
        point["period"] = period
    if "value" not in point and not ext:
        return None
    return point


# ---------------------------------------------------------------- codes


def _coding_system(name: str, s: Settings | None) -> str | None:
    if not name:
        return None
    known = s.vocab.coding_system(name) if s is not None else None
    return known or "urn:id:" + _urn_safe(name)


def _codings(cwe: list[str], s: Settings | None, table: str | None) -> list[dict[str, Any]]:
    """The codings of a CWE given as ``rep.numbered(13)`` (``cwe[n]`` is CWE.n)."""
    codings: list[dict[str, Any]] = []
    for code_i, text_i, sys_i, ver_i in ((1, 2, 3, 7), (4, 5, 6, 8), (10, 11, 12, 13)):
        code = cwe[code_i]
        display = cwe[text_i]
        if not code and not display:
            continue
        coding: dict[str, Any] = {}
        system_name = cwe[sys_i]
        system = _coding_system(system_name, s)
        if system is None and table and code_i == 1:
            system = v2_table_system(table)
        if system:
            coding["system"] = system
        version = cwe[ver_i]
        if version:
            coding["version"] = version
        code = as_code(code)
        if code:
            coding["code"] = code
        if display:
            coding["display"] = display
        codings.append(coding)
    return codings


def _translated(code: str, s: Settings | None, concept_map: str | None) -> dict[str, Any] | None:
    if not code or s is None or not concept_map:
        return None
    concept = s.vocab.lookup(concept_map, code)
    if concept is None or not concept.code:
        return None
    coding: dict[str, Any] = {}
    if concept.system:
        coding["system"] = concept.system
    coding["code"] = concept.code
    if concept.display:
        coding["display"] = concept.display
    return coding


def cwe_to_codeable_concept(
    rep: Repetition, s: Settings | None = None, concept_map: str | None = None, table: str | None = None
) -> dict[str, Any] | None:
    """IG CWE[CodeableConcept] (also CE, CNE): (CWE.1, .2, .3, .7) → coding[1];
    (CWE.4, .5, .6, .8) → coding[2]; (CWE.10, .11, .12, .13) → coding[3]; CWE.9 → text.

    `concept_map` (an IG concept map name, e.g. "MaritalStatus") translates CWE.1 when its
    coding system is empty or the v2 table; `table` ("0002") is CWE.3's default for CWE.1.
    """
    cwe = rep.numbered(13)
    codings = _codings(cwe, s, table)
    first_system = cwe[3]
    local_table = not first_system or (table is not None and first_system.upper() in (f"HL7{table}", f"HL7-{table}"))
    translated = _translated(cwe[1], s, concept_map) if local_table else None
    if translated is not None:
        same = codings and (codings[0].get("system"), codings[0].get("code")) == (
            translated.get("system"),
            translated["code"],
        )
        if same:
            codings[0] = translated
        else:
            codings.insert(0, translated)
    concept: dict[str, Any] = {}
    if codings:
        concept["coding"] = codings
    text = cwe[9]
    if text:
        concept["text"] = text
    return concept or None


def cwe_to_coding(
    rep: Repetition, s: Settings | None = None, concept_map: str | None = None, table: str | None = None
) -> dict[str, Any] | None:
    """IG CWE[Coding]: the first coding of cwe_to_codeable_concept."""
    concept = cwe_to_codeable_concept(rep, s, concept_map, table)
    if concept and concept.get("coding"):
        first: dict[str, Any] = concept["coding"][0]
        return first
    return None


def code_of(value: Repetition | str, s: Settings | None, concept_map: str) -> str | None:
    """IG CWE[code] / ID[code] / IS[code]: CWE.1 (else CWE.4) through `concept_map`; None if unmapped."""
    code = value if isinstance(value, str) else (value.component(1) or value.component(4))
    if not code or s is None:
        return None
    concept = s.vocab.lookup(concept_map, code)
    return concept.code if concept is not None and concept.code else None


def id_to_boolean(text: str) -> bool | None:
    """IG ID[boolean] via YesNoIndicator (table 0136): Y → true, N → false, else None."""
    upper = text.strip().upper()
    if upper == "Y":
        return True
    if upper == "N":
        return False
    return None


# ---------------------------------------------------------------- people and organisations


def _xcn_name(rep: Repetition, s: Settings | None) -> dict[str, Any] | None:
    """XCN.2 (FN[HumanName]), .3/.4 given, .6 prefix, .5/.7/.21 suffix, .10 use, .17-.20 period, .18 order.

    XCN.7 (degree) joins the suffixes as XPN.6 does in every other person name (IG
    XPN[HumanName] row XPN.6); XCN[Practitioner] also codes it as qualification.
    """
    return _human_name(rep, s, _XCN_LAYOUT)


def _xcn_identifier(rep: Repetition, s: Settings | None) -> dict[str, Any] | None:
    xcn = rep.numbered(13)  # xcn[n] is XCN.n
    value = xcn[1]
    if not value:
        return None
    ident: dict[str, Any] = {}
    ext = _check_digit_extensions(xcn[11], xcn[12])
    if ext:
        ident["extension"] = ext
    if xcn[13]:
        ident["type"] = _identifier_type(xcn[13], s)
    _assign(ident, hd_of(rep, 9), s)
    ident["value"] = value
    return ident


def xcn_to_practitioner(rep: Repetition, s: Settings | None = None) -> dict[str, Any] | None:
    """IG XCN[Practitioner]: XCN.1/.9/.11-.13 → identifier; XCN.2-6, .10, .17-.21 → name
    (XCN.2 through FN[HumanName], XCN.18 → assembly order); XCN.7 → qualification.code
    (DegreeLicenseCertificate) and name.suffix. None when XCN has no id and no name."""
    ident = _xcn_identifier(rep, s)
    name = _xcn_name(rep, s)
    if ident is None and name is None:
        return None
    practitioner: dict[str, Any] = {"resourceType": "Practitioner"}
    if ident is not None:
        practitioner["identifier"] = [ident]
    if name is not None:
        practitioner["name"] = [name]
    degree = rep.component(7)
    if degree:
        translated = _translated(degree, s, "DegreeLicenseCertificate")
        coding = translated or {"system": v2_table_system("0360"), "code": degree}
        practitioner["qualification"] = [{"code": {"coding": [coding]}}]
    return practitioner


def xcn_to_related_person_fields(rep: Repetition, s: Settings | None = None) -> dict[str, Any]:
    """IG XCN[RelatedPerson]: identifier and name elements (degree XCN.7 → name.suffix)."""
    out: dict[str, Any] = {}
    ident = _xcn_identifier(rep, s)
    if ident is not None:
        out["identifier"] = [ident]
    name = _xcn_name(rep, s)
    if name is not None:
        out["name"] = [name]
    return out


def xon_to_organization(rep: Repetition, s: Settings | None = None) -> dict[str, Any] | None:
    """IG XON[Organization]: XON.1 → name; XON.10 (else XON.3) → identifier.value;
    XON.4/XON.5 → check-digit extensions; XON.6 → system/assigner; XON.7 → identifier.type."""
    org: dict[str, Any] = {"resourceType": "Organization"}
    xon = rep.numbered(10)  # xon[n] is XON.n
    value = xon[10] or xon[3]
    if value:
        ident: dict[str, Any] = {}
        ext = _check_digit_extensions(xon[4], xon[5])
        if ext:
            ident["extension"] = ext
        if xon[7]:
            ident["type"] = _identifier_type(xon[7], s)
        _assign(ident, hd_of(rep, 6), s)
        ident["value"] = value
        org["identifier"] = [ident]
    name = xon[1]
    if name:
        org["name"] = name
    return org if len(org) > 1 else None


# ---------------------------------------------------------------- values

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def nm_to_number(text: str) -> int | float | None:
    """IG NM → decimal: the number, or None when the text is not an HL7 NM."""
    text = text.strip()
    if not _NUMBER.match(text):
        return None
    if "." not in text:
        return int(text)
    return float(text)


def sn_to_value(rep: Repetition) -> tuple[str, dict[str, Any]] | None:
    """IG SN[Quantity] / SN[Range] / SN[Ratio]: ("Quantity"|"Range"|"Ratio", element).

    SN.1 comparator, SN.2 num1, SN.3 separator ("-" → Range, ":" or "/" → Ratio), SN.4 num2.
    """
    comparator, sep = rep.component(1), rep.component(3)
    num1, num2 = nm_to_number(rep.component(2)), nm_to_number(rep.component(4))
    original = " ".join(x for x in (comparator, rep.component(2), sep, rep.component(4)) if x)
    ext = [{"url": ORIGINAL_TEXT, "valueString": original}]
    if sep == "-" and (num1 is not None or num2 is not None):
        rng: dict[str, Any] = {"extension": ext}
        if num1 is not None:
            rng["low"] = {"value": num1}
        if num2 is not None:
            rng["high"] = {"value": num2}
        return "Range", rng
    if sep in (":", "/") and num1 is not None and num2 is not None:
        numerator: dict[str, Any] = {"value": num1}
        if comparator and comparator != "=":
            numerator["comparator"] = comparator
        return "Ratio", {"extension": ext, "numerator": numerator, "denominator": {"value": num2}}
    if num1 is None:
        return None
    quantity: dict[str, Any] = {"value": num1}
    if comparator and comparator in ("<", "<=", ">", ">="):
        quantity["comparator"] = comparator
    if sep or rep.component(4):
        quantity["extension"] = ext
    return "Quantity", quantity


def cq_to_quantity(rep: Repetition, s: Settings | None = None) -> dict[str, Any] | None:
    """IG CQ[Quantity]: CQ.1 → value; CQ.2 (CWE, subcomponents) → unit through CWE[string]
    (CWE.9 original text, else CWE.2, else CWE.1), and code/system when CWE.1 and CWE.3 are valued."""
    number = nm_to_number(rep.component(1))
    if number is None:
        return None
    quantity: dict[str, Any] = {"value": number}
    unit_code, unit_text, unit_system = rep.component(2, 1), rep.component(2, 2), rep.component(2, 3)
    original = rep.component(2, 9)
    if unit_code or unit_text or original:
        quantity["unit"] = original or unit_text or unit_code
        system = _coding_system(unit_system, s) if unit_system else None
        if unit_code and system:
            quantity["system"] = system
            quantity["code"] = unit_code
    return quantity


def st_value(rep: Repetition) -> str:
    """IG ST / TX / FT → string: the whole repetition decoded (\\.br\\ → newline)."""
    return rep.text()
