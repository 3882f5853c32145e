"""`type: fhir` — POST each message's transaction Bundle to a FHIR server.

FHIR R4B/R5 http.html "transaction": one POST of the Bundle to the server's base URL;
the server applies every entry or none. Our Bundles are idempotent by construction
(channels/mappers: conditional create with `ifNoneExist`, conditional update by
identifier, PUT to ids derived from the message), so sending one twice changes nothing
on the server. That is what makes at-least-once delivery safe, and what makes a
failure after the request left us (a read timeout, a dropped connection) safe to retry:
such failures are `TransientError(ambiguous=True)`.

Outcomes (classify_response):
- 2xx: delivered, unless an entry of the transaction-response carries an error status
  (a non-conformant server reporting a partial failure): then classified by that status.
- 408, 425, 429, 5xx, connection errors, timeouts: transient; Retry-After (seconds or an
  HTTP-date, RFC 9110 §10.2.3) is passed to the runner as the earliest retry.
- 409 Conflict and 423 Locked: transient too: a concurrent write (e.g. two transactions
  conditionally creating the same Organization) lost a race; a retry re-evaluates.
- 401: the credentials are refreshed and the request sent once more; a second 401 is
  transient (the credentials are wrong, not the message).
- any other 4xx: permanent (dead letter), with a summary of the OperationOutcome made of
  issue severity, code and expression paths only: `diagnostics` may quote PHI.

Concurrency: exchanges with different ordering keys (exchange.message.ordering_key,
e.g. per patient when the channel sets `ordering.key: PID-3`) are delivered
concurrently, at most `max_in_flight` at a time; exchanges with the same key go one
after another in the order given. After a transient failure for key K, later exchanges
of K are NOT_ATTEMPTED and other keys go on; when the failure concerns the server as a
whole (unreachable, 429/502/503/504, timeout, credentials refused) no new request starts
for any key, and the next batch waits a short, growing pause before probing again, so a
server that is down for hours costs one request per pause, not a storm. With no
ordering key (the channel's single order) or `max_in_flight: 1` delivery is strictly one
at a time, exactly as `OneByOneSink` does.

This module is the config, the classification of answers and the factory; the sink is
in engine/sinks/fhir_http_client.py, imported only when a fhir sink is built.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.config.models import InputFile
from engine.registry import BuildContext, Registry
from engine.sinks.auth import AuthField, NoAuthConfig, check_http_url
from engine.types import EngineError, PermanentError, TransientError

if TYPE_CHECKING:
    from engine.sinks.fhir_http_client import FhirSink

FHIR_JSON = "application/fhir+json"
#: Statuses after which the same request may succeed later (RFC 9110 §15; FHIR http.html).
_TRANSIENT_STATUSES = frozenset({408, 409, 423, 425, 429})
#: Statuses that say the server as a whole cannot take requests now.
_UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})
#: FHIR IssueSeverity and IssueType codes (R4B/R5 valuesets issue-severity, issue-type):
#: a fixed vocabulary, safe to repeat in an error text. Anything else is shown as "?".
_SEVERITIES = frozenset({"fatal", "error", "warning", "information", "success"})
_ISSUE_CODES = frozenset({
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
    "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
    "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension",
    "too-costly", "business-rule", "conflict", "limited-filter", "transient", "lock-error",
    "no-store", "exception", "timeout", "incomplete", "throttled", "informational", "success",
})
#: A FHIRPath made only of element names and indexes (`Patient.name[0].given`); anything
#: richer (`where(value='...')`) could quote data and is left out of error texts.
_SAFE_EXPRESSION = re.compile(r"[A-Za-z][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+|\[[0-9]+\])*")
_MAX_ISSUES = 5
_MAX_EXPRESSION_LEN = 160


class ServerUnavailableError(TransientError):
    """The server as a whole cannot take requests now (down, overloaded, timing out).

    A TransientError for the runner; for this sink it also means: start nothing new.
    """


class CredentialsRejectedError(ServerUnavailableError):
    """The server answered 401 even to fresh credentials: a configuration problem, not the message's."""


# ---------------------------------------------------------------- config


class FhirTimeouts(BaseModel):
    """httpx timeouts, in seconds (connect, each read, each write, wait for a pooled connection)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    connect_s: float = Field(default=5.0, gt=0)
    read_s: float = Field(default=30.0, gt=0)
    """Longest wait for the next bytes of the response; a large transaction may take a while."""
    write_s: float = Field(default=30.0, gt=0)
    pool_s: float = Field(default=30.0, gt=0)


class FhirSinkConfig(BaseModel):
    """POST each message's transaction Bundle to a FHIR server (R4B or R5)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    type: Literal["fhir"]
    base_url: str
    """FHIR base URL, e.g. https://fhir.example.org/r4 (the Bundle is POSTed to it)."""
    name: str | None = None
    """Sink name for metrics and the store; default 'fhir'."""
    fhir_version: Literal["R4B", "R5"] = "R4B"
    """FHIR version of the endpoint; checked against the CapabilityStatement at start."""
    auth: AuthField = Field(default_factory=NoAuthConfig)
    """none | {type: bearer, token} | {type: basic, username, password} |
    {type: client_credentials, token_url, client_id, client_secret, scope} |
    {type: jwt_assertion, token_url, client_id, private_key, key_id, alg, scope} (SMART Backend Services)."""
    timeouts: FhirTimeouts = Field(default_factory=FhirTimeouts)
    max_connections: int = Field(default=8, ge=1, le=256)
    """Pooled keep-alive HTTP/1.1 connections to the server."""
    max_in_flight: int = Field(default=8, ge=1, le=256)
    """Requests in flight at once, for exchanges with different ordering keys; 1 = one at a time."""
    health_check: bool = True
    """GET {base_url}/metadata at start; a failure is logged and the sink starts anyway."""
    payload: Literal["bundle"] = "bundle"
    """What is sent: the transaction Bundle."""
    verify_tls: bool = True
    """Verify the server's certificate (turn off only against a test server)."""
    ca_file: InputFile | None = None
    """CA bundle (PEM) to verify the server against, instead of the system's."""
    allow_plain_http: bool = False
    """Allow an http:// base_url to a non-loopback host (PHI travels unencrypted)."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        check_http_url(self.base_url, allow_plain_http=self.allow_plain_http, what="base_url")
        if self.max_in_flight > self.max_connections:
            raise ValueError("max_in_flight cannot exceed max_connections")
        return self


# ---------------------------------------------------------------- classification


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 §10.2.3): delay-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # RFC 9110 dates are GMT; a zone-less date is not one of them
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def summarize_outcome(outcome: Any) -> str:
    """`error/structure@Patient.birthDate; error/required` from an OperationOutcome.

    Only severity, code and expression paths: `diagnostics` and `details.text` are
    free text and may echo the data that was refused.
    """
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    issues = outcome.get("issue")
    if not isinstance(issues, list):
        return ""
    parts: list[str] = []
    for issue in issues[:_MAX_ISSUES]:
        if not isinstance(issue, dict):
            continue
        severity = issue.get("severity")
        code = issue.get("code")
        text = f"{severity if severity in _SEVERITIES else '?'}/{code if code in _ISSUE_CODES else '?'}"
        paths = [p for p in issue.get("expression") or () if _is_safe_expression(p)][:2]
        if paths:
            text += "@" + ",".join(paths)
        parts.append(text)
    if len(issues) > _MAX_ISSUES:
        parts.append(f"+{len(issues) - _MAX_ISSUES} more")
    return "; ".join(parts)


def _is_safe_expression(path: Any) -> bool:
    return isinstance(path, str) and len(path) <= _MAX_EXPRESSION_LEN and bool(_SAFE_EXPRESSION.fullmatch(path))


def json_body(headers: Mapping[str, str], body: bytes) -> Any:
    """The parsed JSON of a response body, or None when it is empty, not JSON or unreadable."""
    if not body or "json" not in headers.get("content-type", "json").lower():
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _entry_failure(document: Any) -> tuple[int, Any] | None:
    """The worst failing entry of a transaction-response: (status, outcome), else None."""
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        return None
    worst: tuple[int, Any] | None = None
    for entry in document.get("entry") or ():
        response = entry.get("response") if isinstance(entry, dict) else None
        status_text = response.get("status") if isinstance(response, dict) else None
        if not isinstance(status_text, str):
            continue
        code = status_text.strip().split(" ", 1)[0]
        if not code.isdigit() or int(code) < 400:
            continue
        if worst is None or int(code) > worst[0]:
            assert isinstance(response, dict)
            worst = (int(code), response.get("outcome"))
    return worst


def classify_response(status: int, headers: Mapping[str, str], body: bytes,
                      now: float | None = None) -> EngineError | None:
    """None when the server took the Bundle; otherwise the error the runner should see.

    `headers` must look names up case-insensitively (httpx.Headers does).
    """
    document = json_body(headers, body)
    where = "HTTP"
    outcome: Any = document
    if 200 <= status < 300:
        failure = _entry_failure(document)
        if failure is None:
            return None
        status, outcome = failure
        where = "transaction entry"
    summary = summarize_outcome(outcome)
    detail = f"{where} {status}" + (f": {summary}" if summary else "")
    retry_after = parse_retry_after(headers.get("retry-after"), now)
    if status in _UNAVAILABLE_STATUSES:
        return ServerUnavailableError(f"FHIR server unavailable, {detail}", retry_after=retry_after)
    if status in _TRANSIENT_STATUSES or status >= 500:
        return TransientError(f"FHIR server, {detail}", retry_after=retry_after)
    if 400 <= status < 500:
        return PermanentError(f"FHIR server refused the Bundle, {detail}")
    # 1xx/3xx to a POST: the base URL is wrong (redirects are not followed with a body).
    return ServerUnavailableError(f"FHIR server answered {detail} (check base_url)")


def _build(config: BaseModel, ctx: BuildContext) -> FhirSink:
    assert isinstance(config, FhirSinkConfig)
    from engine.sinks.fhir_http_client import FhirSink  # httpx only for a config that uses it

    return FhirSink(config.name or "fhir", config)


def register(registry: Registry) -> None:
    registry.add_sink("fhir", FhirSinkConfig,
                      "POST each message's transaction Bundle to a FHIR server (R4B/R5), with OAuth2/SMART auth.",
                      _build)
