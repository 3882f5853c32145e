"""What a broker message carries: the FHIR output of one stored message, as JSON.

Shared by the NATS and Kafka sinks. Two shapes, chosen per sink:

- `bundle`: one broker message per stored message, the whole transaction Bundle as
  the runner serialised it (`Bundle.id` = `<channel>-<message id>`, engine/pipeline/workers.py);
- `resources`: one broker message per Bundle entry, the resource alone (the entry's
  `request` is dropped: its conditional URL may quote an identifier, and a consumer of
  single resources has no transaction to run).

Every broker message gets a deterministic id, `<channel>:<message id>` for a Bundle and
`<channel>:<message id>:<entry index>` for a resource, so a redelivery (the runner
hands a message again after a crash or a retry) carries the same id: JetStream
deduplicates on it (`Nats-Msg-Id`), Kafka consumers deduplicate on the header. Channel
names cannot hold ':' (engine/config/models.py), so ids of two channels never meet.

Headers carry only what the engine chose or the store keeps as non-PHI: the channel,
the ids above, the message type (MSH-9, reduced to safe characters) and the FHIR
resource type. Never identifiers, names or control ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from engine.jsonbytes import compact_json
from engine.types import Exchange, PermanentError

PayloadMode = Literal["bundle", "resources"]

#: Header names, shared by every broker sink so consumers see one vocabulary.
HEADER_CHANNEL = "Hl7-Channel"
HEADER_MESSAGE_ID = "Hl7-Message-Id"
HEADER_MESSAGE_TYPE = "Hl7-Message-Type"
HEADER_RESOURCE_TYPE = "Fhir-Resource-Type"
HEADER_RESOURCE_COUNT = "Fhir-Resource-Count"
HEADER_CONTENT_TYPE = "Content-Type"
FHIR_JSON = "application/fhir+json"

_NO_OUTPUT = "no FHIR output to publish (no mapping stage in the pipeline?)"
_UNSAFE = re.compile(r"[^A-Za-z0-9_^-]")
_MAX_TYPE_LENGTH = 40


def message_id(exchange: Exchange, suffix: str = "") -> str:
    """The deterministic id of one broker message: `<channel>:<message id><suffix>`."""
    return f"{exchange.message.channel}:{exchange.message.id}{suffix}"


def safe_message_type(exchange: Exchange) -> str:
    """MSH-9 as stored, reduced to letters, digits, '^', '_' and '-' (header-safe, bounded)."""
    return _UNSAFE.sub("_", exchange.message.message_type)[:_MAX_TYPE_LENGTH] or "unknown"


def bundle_of(exchange: Exchange) -> dict[str, Any]:
    """The exchange's FHIR Bundle; PermanentError when no mapping stage produced one."""
    bundle = exchange.output
    if bundle is None:
        raise PermanentError(_NO_OUTPUT)
    return bundle


@dataclass(frozen=True, slots=True)
class BrokerMessage:
    """One message for a broker: its id suffix, JSON body and FHIR resource type."""

    suffix: str
    body: bytes
    resource_type: str


def broker_messages(exchange: Exchange, mode: PayloadMode) -> list[BrokerMessage]:
    """The broker messages for one exchange, in Bundle entry order.

    `bundle`: one message, suffix "". `resources`: one message per entry that has a
    resource, suffix `:<entry index>` (the index in the Bundle, so ids stay stable even
    when an entry without a resource is skipped). A Bundle without entries gives none.
    """
    if mode == "bundle":
        body = exchange.output_json()  # serialised once where the stages ran; Bundle.id already set
        if body is None:
            raise PermanentError(_NO_OUTPUT)
        return [BrokerMessage("", body, "Bundle")]
    bundle = bundle_of(exchange)
    items: list[BrokerMessage] = []
    for index, entry in enumerate(bundle.get("entry") or ()):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            kind = resource.get("resourceType")
            safe_kind = _UNSAFE.sub("_", kind)[:_MAX_TYPE_LENGTH] if isinstance(kind, str) else "unknown"
            items.append(BrokerMessage(f":{index}", _json(resource), safe_kind))
    return items


def payloads(exchange: Exchange, mode: PayloadMode) -> list[tuple[str, bytes]]:
    """(id suffix, JSON bytes) per broker message: `broker_messages` without the types."""
    return [(m.suffix, m.body) for m in broker_messages(exchange, mode)]


def headers(exchange: Exchange, message: BrokerMessage, *, count: int) -> dict[str, str]:
    """Headers for one broker message (`count` = messages for this exchange): ids and
    types only (module docstring), never PHI."""
    return {
        HEADER_CHANNEL: exchange.message.channel,
        HEADER_MESSAGE_ID: message_id(exchange, message.suffix),
        HEADER_MESSAGE_TYPE: safe_message_type(exchange),
        HEADER_RESOURCE_TYPE: message.resource_type,
        HEADER_RESOURCE_COUNT: str(count),
        HEADER_CONTENT_TYPE: FHIR_JSON,
    }


def _json(document: dict[str, Any]) -> bytes:
    return compact_json(document)
