"""The output: one FHIR transaction Bundle per message, idempotent on replay.

Public API::

    BundleBuilder(identity: str, fhir_version: "R4B" | "R5")
    builder.full_url(role) -> str                      # deterministic "urn:uuid:..." for a role
    builder.add(resource, role, match=None) -> str     # adds an entry; returns its fullUrl
    builder.reference(full_url, display=None) -> dict  # {"reference": full_url}
    builder.resource(full_url) -> dict | None          # the resource dict (to enrich it later)
    builder.bundle_fields: dict                        # Bundle.identifier / timestamp (set by the MSH map)
    builder.build() -> dict                            # the Bundle (R5 adaptations applied here)
    register_r5_adapter(resource_type, fn)             # R4→R5 element changes, all in this module

Rules (DESIGN.md §3, issue 3 "Output"):
- ``fullUrl`` = ``urn:uuid:`` + uuid5(namespace, identity + "|" + role): the same message
  gives the same Bundle. `identity` is chosen by the caller (convert.py: a hash of the
  message text); `role` names the resource's origin, e.g. ``"PID-1/Patient"``.
- ``request`` makes replays and resends harmless:
  * an identifier with system and value → conditional update
    ``PUT Type?identifier=<system>|<value>`` (values URL-encoded);
  * identifiers with a value but no system → conditional create
    ``POST`` + ``ifNoneExist: identifier=<value>`` (never overwrite a resource we cannot
    identify exactly; set ``identifier_systems`` to get updates);
  * no identifier → the entry gets ``identifier {system: urn:ietf:rfc:3986, value: its
    fullUrl}`` and ``POST`` + ``ifNoneExist`` on it (a replay matches, a new message does not);
  * types without an ``identifier`` element (MessageHeader, Provenance) → ``PUT Type/<uuid>``
    with that id (needs a server that accepts client-assigned ids).
  Identifiers of type SS/DL/SB (SSN, driver's licence) and ``use: old`` are never used for
  matching: request URLs end up in server access logs.
- Two additions with the same type and conditional URL within one message are merged
  into the first entry (a transaction may not hold two entries for one conditional URL).
- R4B is the internal shape. ``build()`` turns it into R5 for ``fhir_version="R5"``
  through the adapters below: the one place where version differences live.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import quote

FhirVersion = Literal["R4B", "R5"]
_NAMESPACE = uuid.UUID("5b0b7a2e-8e36-4d8e-9a0f-6f1c3d6a1e27")  # hl7engine's own namespace
URI_SYSTEM = "urn:ietf:rfc:3986"
_NO_IDENTIFIER_TYPES = frozenset({"MessageHeader", "Provenance", "Bundle", "Parameters", "Binary"})
_SENSITIVE_IDENTIFIER_TYPES = frozenset({"SS", "DL", "SB"})  # SSN, driver's licence, social beneficiary

Adapter = Callable[[dict[str, Any]], None]
_R5_ADAPTERS: dict[str, list[Adapter]] = {}


def register_r5_adapter(resource_type: str, adapter: Adapter) -> None:
    """Add a function that turns an R4B-shaped resource of this type into R5, in place."""
    _R5_ADAPTERS.setdefault(resource_type, []).append(adapter)


def _type_code(identifier: dict[str, Any]) -> str:
    for coding in identifier.get("type", {}).get("coding", []):
        code = coding.get("code")
        if isinstance(code, str):
            return code
    return ""


def _match_identifier(resource: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The identifier to match on and whether it has a system (SSN / licence never: URLs get logged)."""
    usable = [
        i
        for i in resource.get("identifier", [])
        if isinstance(i, dict)
        and i.get("value")
        and _type_code(i) not in _SENSITIVE_IDENTIFIER_TYPES
        and i.get("use") != "old"
    ]
    for ident in usable:
        if ident.get("system"):
            return ident, True
    return (usable[0], False) if usable else (None, False)


def _identity_query(resource: dict[str, Any], match: dict[str, Any] | None) -> tuple[str | None, bool]:
    """The `identifier=` search of a resource's conditional request, and whether it has a system."""
    if match is None:
        ident, has_system = _match_identifier(resource)
    else:
        ident = match if match.get("value") else None
        has_system = bool(ident and ident.get("system"))
    if ident is None:
        return None, False
    if has_system:
        return f"identifier={quote(ident['system'], safe=':/')}|{quote(ident['value'], safe='')}", True
    return f"identifier={quote(ident['value'], safe='')}", False


class BundleBuilder:
    """Collects the resources of one message; not shared between messages."""

    def __init__(self, identity: str, fhir_version: FhirVersion = "R4B") -> None:
        self.identity = identity
        self.fhir_version = fhir_version
        self._entries: list[dict[str, Any]] = []
        self._by_url: dict[str, dict[str, Any]] = {}
        self._by_condition: dict[str, str] = {}
        self.bundle_fields: dict[str, Any] = {}  # Bundle.identifier / Bundle.timestamp (IG MSH[Bundle])

    def full_url(self, role: str) -> str:
        """Deterministic fullUrl for `role` within this message."""
        return "urn:uuid:" + str(uuid.uuid5(_NAMESPACE, f"{self.identity}|{role}"))

    def reference(self, full_url: str, display: str | None = None) -> dict[str, Any]:
        ref: dict[str, Any] = {"reference": full_url}
        if display:
            ref["display"] = display
        return ref

    def resource(self, full_url: str) -> dict[str, Any] | None:
        entry = self._by_url.get(full_url)
        return entry["resource"] if entry is not None else None

    def resources(self, resource_type: str | None = None) -> list[dict[str, Any]]:
        return [
            e["resource"]
            for e in self._entries
            if resource_type is None or e["resource"].get("resourceType") == resource_type
        ]

    def full_urls(self) -> list[str]:
        return [e["fullUrl"] for e in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, resource: dict[str, Any], role: str, match: dict[str, Any] | None = None) -> str:
        """Add `resource` (a dict with resourceType) under `role`; returns its fullUrl.

        `match` overrides which identifier the conditional request uses: an identifier of
        the resource, or ``{}`` for "no business identifier" (the fullUrl identity is used).
        When an entry with the same conditional URL exists, the new resource's elements
        are merged into it (first value wins) and that entry's fullUrl is returned.
        """
        rtype = resource["resourceType"]
        full_url = self.full_url(role)
        if full_url in self._by_url:
            raise ValueError(f"role {role!r} already added")  # a mapper bug, not bad input
        request, condition = self._request(resource, rtype, full_url, match)
        if condition is not None:
            existing = self._by_condition.get(condition)
            if existing is not None:
                _merge_into(self._by_url[existing]["resource"], resource)
                return existing
            self._by_condition[condition] = full_url
        entry = {"fullUrl": full_url, "resource": resource, "request": request}
        self._entries.append(entry)
        self._by_url[full_url] = entry
        return full_url

    def existing(self, resource: dict[str, Any], match: dict[str, Any] | None = None) -> str | None:
        """fullUrl of the entry `add(resource, ..., match)` would merge into, or None."""
        rtype = resource["resourceType"]
        if rtype in _NO_IDENTIFIER_TYPES:
            return None
        query, _ = _identity_query(resource, match)
        return None if query is None else self._by_condition.get(f"{rtype}?{query}")

    def _request(
        self, resource: dict[str, Any], rtype: str, full_url: str, match: dict[str, Any] | None
    ) -> tuple[dict[str, str], str | None]:
        if rtype in _NO_IDENTIFIER_TYPES:
            resource_id = full_url.rsplit(":", 1)[1]
            resource["id"] = resource_id
            return {"method": "PUT", "url": f"{rtype}/{resource_id}"}, None
        query, has_system = _identity_query(resource, match)
        if query is not None and has_system:
            return {"method": "PUT", "url": f"{rtype}?{query}"}, f"{rtype}?{query}"
        if query is not None:
            return {"method": "POST", "url": rtype, "ifNoneExist": query}, f"{rtype}?{query}"
        resource.setdefault("identifier", []).append({"system": URI_SYSTEM, "value": full_url})
        query = f"identifier={quote(URI_SYSTEM, safe=':/')}|{quote(full_url, safe='')}"
        return {"method": "POST", "url": rtype, "ifNoneExist": query}, None

    def build(self) -> dict[str, Any]:
        """The transaction Bundle; resources are adapted to R5 when asked.

        Empty strings, lists and objects are pruned first: FHIR forbids them, and a
        mapper that forgot a guard must not turn a valid message into an invalid Bundle.
        """
        for entry in self._entries:
            _prune(entry["resource"])
        if self.fhir_version == "R5":
            for entry in self._entries:
                resource = entry["resource"]
                for adapter in _R5_ADAPTERS.get(resource["resourceType"], ()):
                    adapter(resource)
        return {"resourceType": "Bundle", **self.bundle_fields, "type": "transaction", "entry": self._entries}


def _prune(node: dict[str, Any]) -> bool:
    """Remove empty values (None, "", [], {}) in place; True when `node` itself ends up empty.

    Hand-unrolled on exact types: it runs over every element of every Bundle.
    """
    drop = [key for key, value in node.items() if _is_empty(value)]
    for key in drop:
        del node[key]
    return not node


def _is_empty(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return not value
    if kind is dict:
        return _prune(value)
    if kind is list:
        kept = [item for item in value if not _is_empty(item)]
        if len(kept) != len(value):
            value[:] = kept
        return not kept
    return value is None


def _merge_into(target: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge a second description of the same resource: lists gain new items, scalars keep the first."""
    for key, value in extra.items():
        if key not in target:
            target[key] = value
        elif isinstance(target[key], list) and isinstance(value, list):
            for item in value:
                if item not in target[key]:
                    target[key].append(item)


# ---------------------------------------------------------------- R4B → R5, in one place


def _coverage_r5(res: dict[str, Any]) -> None:
    """R5 Coverage: payor → insurer (first Organization) + paymentBy; kind required;
    subscriberId string → Identifier list; class.value string → Identifier."""
    payors = res.pop("payor", [])
    if payors:
        res["insurer"] = payors[0]
        res["paymentBy"] = [{"party": p} for p in payors]
    res.setdefault("kind", "insurance")
    sub = res.pop("subscriberId", None)
    if isinstance(sub, str):
        res["subscriberId"] = [{"value": sub}]
    for cls in res.get("class", []):
        if isinstance(cls.get("value"), str):
            cls["value"] = {"value": cls["value"]}


def _organization_r5(res: dict[str, Any]) -> None:
    """R5 Organization: address and telecom moved into contact (ExtendedContactDetail)."""
    for contact in res.get("contact", []):
        if isinstance(contact.get("name"), dict):  # R4 contact.name 0..1 → R5 0..*
            contact["name"] = [contact["name"]]
    addresses = res.pop("address", [])
    telecom = res.pop("telecom", [])
    if not (addresses or telecom):
        return
    contacts = res.setdefault("contact", [])
    first: dict[str, Any] = {}
    if telecom:
        first["telecom"] = telecom
    if addresses:
        first["address"] = addresses[0]
    contacts.append(first)
    contacts.extend({"address": extra} for extra in addresses[1:])


def _message_header_r5(res: dict[str, Any]) -> None:
    """R5 MessageHeader: source/destination endpoint (url) → endpointUrl."""
    source = res.get("source")
    if isinstance(source, dict):
        _rename_endpoint(source)
    for dest in res.get("destination", []):
        _rename_endpoint(dest)


def _rename_endpoint(part: dict[str, Any]) -> None:
    if "endpoint" in part:
        part["endpointUrl"] = part.pop("endpoint")
    if "_endpoint" in part:
        part["_endpointUrl"] = part.pop("_endpoint")


def _provenance_r5(res: dict[str, Any]) -> None:
    """R5 Provenance: reason (PurposeOfUse) → authorization (CodeableReference);
    entity.role 'derivation' no longer exists (→ 'source')."""
    reasons = res.pop("reason", [])
    if reasons:
        res["authorization"] = [
            {"concept": r} if ("coding" in r or "text" in r) else {"extension": r.get("extension", [])} for r in reasons
        ]
    for entity in res.get("entity", []):
        if entity.get("role") == "derivation":
            entity["role"] = "source"


def _account_r5(res: dict[str, Any]) -> None:
    """R5 Account: coverage, guarantor, subject unchanged; status stays required."""
    res.setdefault("status", "active")


register_r5_adapter("Coverage", _coverage_r5)
register_r5_adapter("Organization", _organization_r5)
register_r5_adapter("MessageHeader", _message_header_r5)
register_r5_adapter("Provenance", _provenance_r5)
register_r5_adapter("Account", _account_r5)
