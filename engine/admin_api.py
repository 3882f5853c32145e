"""The operator API's pure parts: bearer-token roles, query parsing, JSON views of messages.

Kept apart from the HTTP server (engine/admin.py) so each rule is testable without a
socket. Nothing here returns message content: views carry metadata only, and error texts
name parameters, never their values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from engine.obs.redact import REDACTED, key_is_sensitive, looks_like_hl7
from engine.types import MessageQuery, Status, StoredMessage

Permission = Literal["view", "operate", "read_content"]

#: viewer: lists and counts; operator: + replay, release, reload; phi-reader: + content.
ROLE_PERMISSIONS: Mapping[str, frozenset[Permission]] = {
    "viewer": frozenset({"view"}),
    "operator": frozenset({"view", "operate"}),
    "phi-reader": frozenset({"view", "read_content"}),
}
ALL_PERMISSIONS: frozenset[Permission] = frozenset({"view", "operate", "read_content"})

DEFAULT_PAGE = 100
MAX_PAGE = 1000


class AuthError(Exception):
    """Request refused: 401 (no or unknown token) or 403 (role lacks the permission)."""

    def __init__(self, status: Literal[401, 403], reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class BadRequest(ValueError):
    """A parameter is malformed. The message names the parameter, not its value."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: for permission checks and the audit log (never the token itself)."""

    roles: tuple[str, ...]
    token_id: str  # first 12 hex of sha256(token); "" when the API is open
    permissions: frozenset[Permission]

    @property
    def role(self) -> str:
        return "+".join(self.roles) if self.roles else "anonymous"


ANONYMOUS = Principal(roles=(), token_id="", permissions=ALL_PERMISSIONS)


def parse_roles(value: str) -> tuple[str, ...]:
    """ "operator" or "operator,phi-reader" -> ("operator", "phi-reader"); unknown roles raise."""
    roles = tuple(part.strip() for part in value.replace("+", ",").split(",") if part.strip())
    unknown = [role for role in roles if role not in ROLE_PERMISSIONS]
    if not roles or unknown:
        raise ValueError(f"admin token role must be one or more of {', '.join(ROLE_PERMISSIONS)}")
    return roles


def token_id(token: str) -> str:
    """A stable, non-secret fingerprint of a token for audit lines."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


class TokenAuth:
    """Bearer tokens mapped to roles. With no tokens the API is open (keep it on loopback)."""

    def __init__(self, tokens: Mapping[str, str] | None) -> None:
        self._principals: list[tuple[bytes, Principal]] = []
        for token, role_value in (tokens or {}).items():
            if not token:
                raise ValueError("admin tokens must not be empty")
            roles = parse_roles(role_value)
            permissions = frozenset().union(*(ROLE_PERMISSIONS[r] for r in roles))
            self._principals.append(
                (token.encode("utf-8"), Principal(roles, token_id(token), permissions))
            )

    @property
    def enabled(self) -> bool:
        return bool(self._principals)

    def authorize(self, authorization: str | None, needed: Permission) -> Principal:
        """The caller for an `Authorization` header value, or AuthError (401/403)."""
        if not self._principals:
            return ANONYMOUS
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise AuthError(401, "missing_token")
        given = presented.strip().encode("utf-8")
        found: Principal | None = None
        # Compare against every token, without stopping early, in constant time each.
        for secret, principal in self._principals:
            if hmac.compare_digest(given, secret):
                found = principal
        if found is None:
            raise AuthError(401, "invalid_token")
        if needed not in found.permissions:
            raise AuthError(403, "forbidden")
        return found


# ---------------------------------------------------------------- parameters


def parse_listen(listen: str) -> tuple[str, int]:
    """ "127.0.0.1:8081", "[::1]:8081", "localhost:0" -> (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError("admin.listen must be host:port")
    return host.strip("[]") or "127.0.0.1", int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_time(name: str, value: str | None) -> float | None:
    """Epoch seconds, or ISO 8601 (naive means UTC) -> epoch seconds."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be epoch seconds or an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def parse_int(name: str, value: str | None, default: int, *, minimum: int = 0,
              maximum: int | None = None) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if number < minimum or (maximum is not None and number > maximum):
        raise BadRequest(f"{name} must be between {minimum} and {maximum}")
    return number


def parse_statuses(values: Sequence[str]) -> frozenset[Status] | None:
    """status=dead,retry or status=dead&status=retry; None when absent."""
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not names:
        return None
    try:
        return frozenset(Status(name) for name in names)
    except ValueError:
        raise BadRequest(f"status must be among {', '.join(s.value for s in Status)}") from None


def parse_bool(name: str, value: str | None) -> bool:
    if value is None or value == "":
        return False
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"{name} must be true or false")


def message_query(params: Mapping[str, str], statuses: Sequence[str]) -> MessageQuery:
    """GET /api/messages parameters -> MessageQuery (keyset paging on id)."""
    return MessageQuery(
        channel=params.get("channel") or None,
        statuses=parse_statuses(statuses),
        since=parse_time("since", params.get("since")),
        until=parse_time("until", params.get("until")),
        control_id=params.get("control_id") or None,
        after_id=parse_int("after_id", params.get("after_id"), 0),
        limit=parse_int("limit", params.get("limit"), DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE),
    )


@dataclass(frozen=True, slots=True)
class BulkReplay:
    """POST /api/messages/replay: explicit ids, or a filter (dead messages by default)."""

    ids: tuple[int, ...] | None
    query: MessageQuery | None
    limit: int


def bulk_replay_request(body: Any, max_bulk: int) -> BulkReplay:
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    limit = body.get("limit", max_bulk)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= max_bulk:
        raise BadRequest(f"limit must be an integer between 1 and {max_bulk}")
    if "ids" in body:
        ids = body["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise BadRequest("ids must be a list of integers")
        if len(ids) > max_bulk:
            raise BadRequest(f"ids may name at most {max_bulk} messages")
        if set(body) - {"ids", "limit"}:
            raise BadRequest("give either ids or filters, not both")
        return BulkReplay(ids=tuple(dict.fromkeys(ids)), query=None, limit=limit)
    filters = {"channel", "status", "since", "until"}
    unknown = set(body) - filters - {"limit"}
    if unknown:
        raise BadRequest("unknown body keys; use ids, or channel/status/since/until/limit")
    if not set(body) & filters:
        raise BadRequest("give ids or at least one filter (channel, status, since, until)")
    channel = body.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise BadRequest("channel must be a string")
    status = body.get("status", Status.DEAD.value)
    status_values = status if isinstance(status, list) else [status]
    if not all(isinstance(s, str) for s in status_values):
        raise BadRequest("status must be a string or a list of strings")
    query = MessageQuery(
        channel=channel or None,
        statuses=parse_statuses(status_values),
        since=parse_time("since", _time_text(body.get("since"))),
        until=parse_time("until", _time_text(body.get("until"))),
    )
    return BulkReplay(ids=None, query=query, limit=limit)


def _time_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(float(value))
    raise BadRequest("since/until must be epoch seconds or an ISO 8601 string")


# ---------------------------------------------------------------- views


def iso_time(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def safe_text(text: str | None) -> str | None:
    """Error texts are PHI-free by contract; still drop any that look like HL7 content."""
    if text is None:
        return None
    return REDACTED if looks_like_hl7(text) else text


def message_summary(message: StoredMessage) -> dict[str, Any]:
    """The list view: metadata only, never content."""
    return {
        "id": message.id,
        "channel": message.channel,
        "status": message.status.value,
        "attempts": message.attempts,
        "received_at": iso_time(message.received_at),
        "message_type": message.message_type,
        "last_error": safe_text(message.last_error),
        "collision": message.collision,
    }


def message_detail(message: StoredMessage) -> dict[str, Any]:
    """The single-message view: the summary plus routing metadata (MSH-3/4, MSH-10), no content."""
    return {
        **message_summary(message),
        "control_id": message.control_id,
        "sender": message.sender,
        "charset": message.charset,
        "size_bytes": len(message.raw),
        "next_attempt_at": iso_time(message.next_attempt_at),
        "updated_at": iso_time(message.updated_at) if message.updated_at else None,
        "sinks_done": sorted(message.sinks_done),
        "channel_version": message.channel_version,
    }


def metadata_only(item: Mapping[str, Any]) -> dict[str, Any]:
    """Strip anything content-like from a backend-supplied record (quarantine entries)."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        if key_is_sensitive(key) or isinstance(value, bytes | bytearray | memoryview):
            continue
        out[key] = safe_text(value) if isinstance(value, str) else value
    return out
