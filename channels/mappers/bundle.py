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

import hashlib
import re
import uuid
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import quote

FhirVersion = Literal["R4B", "R5"]
_NAMESPACE = uuid.UUID("5b0b7a2e-8e36-4d8e-9a0f-6f1c3d6a1e27")  # hl7engine's own namespace
URI_SYSTEM = "urn:ietf:rfc:3986"
_NO_IDENTIFIER_TYPES = frozenset({"MessageHeader", "Provenance", "Bundle", "Parameters", "Binary"})
_SENSITIVE_IDENTIFIER_TYPES = frozenset({"SS", "DL", "SB"})  # SSN, driver's licence, social beneficiary
# Text made only of what urllib's quote never escapes (RFC 3986 unreserved characters plus
# the `safe` ones) comes back unchanged from it: checking that first skips quote's
# encode/bytes round trip for the common identifier system and value.
_QUOTE_NOTHING = {
    "": re.compile(r"[A-Za-z0-9_.~-]*"),
    ":/": re.compile(r"[A-Za-z0-9_.~:/-]*"),
}
_QUOTED_URI_SYSTEM = quote(URI_SYSTEM, safe=":/")

Adapter = Callable[[dict[str, Any]], None]
_R5_ADAPTERS: dict[str, list[Adapter]] = {}


def register_r5_adapter(resource_type: str, adapter: Adapter) -> None:
    """Add a function that turns an R4B-shaped resource of this type into R5, in place."""
    _R5_ADAPTERS.setdefault(resource_type, []).append(adapter)


_NO_TYPE: dict[str, Any] = {}  # read-only default: an identifier without a type


def _type_code(identifier: dict[str, Any]) -> str:
    for coding in identifier.get("type", _NO_TYPE).get("coding", ()):
        code = coding.get("code")
        if isinstance(code, str):
            return code
    return ""


def _match_identifier(resource: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The identifier to match on and whether it has a system (SSN / licence never: URLs get logged).

    The first usable identifier with a system, else the first usable one.
    """
    first_usable = None
    for ident in resource.get("identifier", ()):
        if (
            not isinstance(ident, dict)
            or not ident.get("value")
            or ("type" in ident and _type_code(ident) in _SENSITIVE_IDENTIFIER_TYPES)
            or ident.get("use") == "old"
        ):
            continue
        if ident.get("system"):
            return ident, True
        if first_usable is None:
            first_usable = ident
    return first_usable, False


def _quote(text: str, safe: str) -> str:
    """``urllib.parse.quote(text, safe=safe)`` (`safe` one of _QUOTE_NOTHING's keys), without
    its cost for text it would leave unchanged."""
    if (text.isascii() and text.isalnum()) or _QUOTE_NOTHING[safe].fullmatch(text):
        return text
    return quote(text, safe=safe)


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
        return f"identifier={_quote(ident['system'], ':/')}|{_quote(ident['value'], '')}", True
    return f"identifier={_quote(ident['value'], '')}", False


class BundleBuilder:
    """Collects the resources of one message; not shared between messages."""

    def __init__(self, identity: str, fhir_version: FhirVersion = "R4B") -> None:
        self.identity = identity
        self.fhir_version = fhir_version
        # uuid5 hashes namespace + name; every name of this message starts with the same
        # "<identity>|", so that prefix is hashed once and each role continues a copy.
        self._name_hash = hashlib.sha1(_NAMESPACE.bytes + f"{identity}|".encode(), usedforsecurity=False)
        self._entries: list[dict[str, Any]] = []
        self._by_url: dict[str, dict[str, Any]] = {}
        self._by_condition: dict[str, str] = {}
        self.bundle_fields: dict[str, Any] = {}  # Bundle.identifier / Bundle.timestamp (IG MSH[Bundle])

    def full_url(self, role: str) -> str:
        """Deterministic fullUrl for `role` within this message: uuid5(_NAMESPACE, identity|role)."""
        digest = self._name_hash.copy()
        digest.update(role.encode())
        return "urn:uuid:" + _uuid5_text(digest.hexdigest())

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
        if query is not None:
            condition = f"{rtype}?{query}"
            if has_system:
                return {"method": "PUT", "url": condition}, condition
            return {"method": "POST", "url": rtype, "ifNoneExist": query}, condition
        resource.setdefault("identifier", []).append({"system": URI_SYSTEM, "value": full_url})
        # quote(full_url, safe=""): "urn:uuid:" + hex digits and dashes, so only ":" is escaped.
        query = f"identifier={_QUOTED_URI_SYSTEM}|{full_url.replace(':', '%3A')}"
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


# RFC 4122 variant: the top two bits of the clock-sequence byte are 10, so its first hex
# digit d becomes 8 + (d & 3).
_VARIANT_DIGIT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _uuid5_text(sha1_hex: str) -> str:
    """The text of the version-5 UUID made from a SHA-1 hex digest (RFC 4122 4.3; as uuid.uuid5)."""
    h = sha1_hex
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT_DIGIT[h[16]]}{h[17:20]}-{h[20:32]}"


def _prune(node: dict[str, Any]) -> bool:
    """Remove empty values (None, "", [], {}) in place; True when `node` itself ends up empty.

    It runs over every element of every Bundle and almost never finds anything, so the
    walk only looks (on exact types, no allocation); the first empty value hands the
    node to `_prune_entries`, which removes (pruning twice changes nothing).
    """
    for value in node.values():
        kind = type(value)
        if kind is str:
            if value:
                continue
        elif kind is dict:
            if value and not _prune(value):
                continue
        elif kind is list:
            if value and not _prune_list(value):
                continue
        elif value is not None:
            continue
        return _prune_entries(node)
    return not node


def _prune_entries(node: dict[str, Any]) -> bool:
    drop = [key for key, value in node.items() if _is_empty(value)]
    for key in drop:
        del node[key]
    return not node


def _prune_list(items: list[Any]) -> bool:
    """`_prune` for a list: empty items are removed in place; True when none is left."""
    for item in items:
        kind = type(item)
        if kind is dict:
            if item and not _prune(item):
                continue
        elif kind is str:
            if item:
                continue
        elif kind is list:
            if item and not _prune_list(item):
                continue
        elif item is not None:
            continue
        items[:] = [item for item in items if not _is_empty(item)]
        return not items
    return not items


def _is_empty(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return not value
    if kind is dict:
        return _prune(value)
    if kind is list:
        return _prune_list(value)
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
