"""The `fhir` sink and its auth strategies, against a scripted FHIR server on a real loopback socket."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import unquote_plus

import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError
from structlog.testing import capture_logs

from engine.sinks.auth import (
    AuthUnavailableError,
    ClientCredentialsAuthConfig,
    JwtAssertionAuthConfig,
    TokenAuth,
    jwk_thumbprint,
    public_jwk,
)
from engine.sinks.fhir_http import (
    CredentialsRejectedError,
    FhirSinkConfig,
    ServerUnavailableError,
    classify_response,
    parse_retry_after,
    summarize_outcome,
)
from engine.sinks.fhir_http_client import FhirSink, _ProbePause
from engine.types import (
    NOT_ATTEMPTED,
    ConfigError,
    Exchange,
    PermanentError,
    Status,
    StoredMessage,
    TransientError,
)

PHI = "DOE^JANE 1980-01-01"  # fake PHI: must never show in an error text or a log line
JSON = {"Content-Type": "application/fhir+json"}
OK_RESPONSE = {"resourceType": "Bundle", "type": "transaction-response",
               "entry": [{"response": {"status": "201 Created"}}]}


def outcome(*issues: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


def exchange(n: int, key: str = "", output: dict[str, Any] | None = None) -> Exchange:
    message = StoredMessage(
        id=n, channel="adt", raw=b"MSH|...", received_at=time.time(), status=Status.PROCESSING,
        attempts=1, sender="APP|FAC", control_id=f"C{n}", message_type="ADT^A01", charset="utf-8",
        ordering_key=key,
    )
    bundle = output if output is not None else {
        "resourceType": "Bundle", "type": "transaction", "identifier": {"value": f"C{n}"}, "entry": [],
    }
    return Exchange(message=message, text="", output=bundle)


def sink_config(base_url: str, **extra: Any) -> FhirSinkConfig:
    return FhirSinkConfig.model_validate({"type": "fhir", "base_url": base_url, **extra})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeFhir:
    """A scripted FHIR server: POST [base] answers from a queue (default 200), records what it got."""

    def __init__(self) -> None:
        self.script: list[Handler | tuple[int, dict[str, str], Any]] = []
        self.received: list[dict[str, Any]] = []
        self.auth_headers: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.token_requests: list[dict[str, Any]] = []
        self.token_script: list[tuple[int, Any]] = []
        self.tokens_issued = 0
        self.valid_tokens: set[str] | None = None  # None: any Authorization accepted
        self.metadata: tuple[int, Any] = (200, {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"})
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth/token"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/fhir", self._transaction)
        app.router.add_get("/fhir/metadata", self._metadata)
        app.router.add_post("/auth/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metadata(self, request: web.Request) -> web.Response:
        status, body = self.metadata
        return web.json_response(body, status=status)

    async def _transaction(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.json()
            authorization = request.headers.get("Authorization", "")
            self.auth_headers.append(authorization)
            if self.valid_tokens is not None and authorization.removeprefix("Bearer ") not in self.valid_tokens:
                return web.json_response(outcome({"severity": "error", "code": "login"}), status=401)
            self.received.append({"body": body, "headers": dict(request.headers)})
            step = self.script.pop(0) if self.script else (200, {}, OK_RESPONSE)
            if callable(step):
                return await step(request)
            status, headers, payload = step
            return web.json_response(payload, status=status, headers=headers)
        finally:
            self.in_flight -= 1

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items()}
        self.token_requests.append({"form": form, "authorization": request.headers.get("Authorization", "")})
        if self.token_script:
            status, body = self.token_script.pop(0)
            return web.json_response(body, status=status)
        self.tokens_issued += 1
        token = f"token-{self.tokens_issued}"
        if self.valid_tokens is not None:
            self.valid_tokens.add(token)
        return web.json_response({"access_token": token, "token_type": "bearer", "expires_in": 3600})


@pytest.fixture
async def fake() -> AsyncIterator[FakeFhir]:
    server = FakeFhir()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def make_sink() -> AsyncIterator[Callable[..., Awaitable[FhirSink]]]:
    sinks: list[FhirSink] = []

    async def make(config: FhirSinkConfig) -> FhirSink:
        sink = FhirSink("fhir", config)
        await sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.close()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- classification


class TestClassifyResponse:
    def test_created_transaction_is_delivered(self) -> None:
        """A 200 transaction-response whose entries all succeeded means delivered."""
        assert None is classify_response(200, httpx.Headers(JSON), json.dumps(OK_RESPONSE).encode())

    def test_failed_entry_inside_a_2xx_is_classified_by_its_status(self) -> None:
        """A 2xx carrying a 4xx entry (a partial failure) is a permanent error naming the entry."""
        body = {"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "201 Created"}},
            {"response": {"status": "422 Unprocessable Entity",
                          "outcome": outcome({"severity": "error", "code": "invalid", "diagnostics": PHI})}},
        ]}
        error = classify_response(200, httpx.Headers(JSON), json.dumps(body).encode())
        assert isinstance(error, PermanentError)
        assert "transaction entry 422: error/invalid" in str(error)

    def test_503_is_server_unavailable_with_retry_after_seconds(self) -> None:
        """503 with Retry-After seconds is a server-wide transient failure carrying the hint."""
        error = classify_response(503, httpx.Headers({"Retry-After": "7"}), b"")
        assert isinstance(error, ServerUnavailableError)
        assert 7.0 == error.retry_after

    def test_429_honours_an_http_date(self) -> None:
        """429 with an HTTP-date Retry-After becomes the number of seconds until then."""
        now = time.time()
        when = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=120), usegmt=True)
        error = classify_response(429, httpx.Headers({"Retry-After": when}), b"", now=now)
        assert isinstance(error, ServerUnavailableError)
        assert error.retry_after is not None and 119 <= error.retry_after <= 121

    @pytest.mark.parametrize("status", [408, 409, 423, 500])
    def test_retryable_statuses_are_transient(self, status: int) -> None:
        """Timeouts, write conflicts and internal errors are retried, without halting other patients."""
        error = classify_response(status, httpx.Headers(), b"")
        assert isinstance(error, TransientError)
        assert not isinstance(error, ServerUnavailableError)

    @pytest.mark.parametrize("status", [400, 403, 404, 412, 422])
    def test_other_client_errors_are_permanent(self, status: int) -> None:
        """Any other 4xx will fail the same way again: dead letter."""
        assert isinstance(classify_response(status, httpx.Headers(), b""), PermanentError)

    def test_permanent_error_summarises_the_outcome_without_diagnostics(self) -> None:
        """The error names severity, code and paths from the OperationOutcome, never its diagnostics."""
        body = outcome(
            {"severity": "error", "code": "structure", "diagnostics": f"bad value {PHI}",
             "expression": ["Patient.birthDate"]},
            {"severity": "error", "code": "value", "details": {"text": PHI},
             "expression": ["Patient.name.where(family='DOE')"]},
        )
        error = classify_response(422, httpx.Headers(JSON), json.dumps(body).encode())
        assert "FHIR server refused the Bundle, HTTP 422: error/structure@Patient.birthDate; error/value" == str(error)

    def test_redirect_means_a_wrong_base_url(self) -> None:
        """A 3xx to a POST is not followed: the server as a whole is misaddressed."""
        assert isinstance(classify_response(301, httpx.Headers(), b""), ServerUnavailableError)


class TestParseRetryAfter:
    @pytest.mark.parametrize(("value", "expected"), [("30", 30.0), ("0", 0.0), (None, None), ("soon", None),
                                                     ("-5", None)])
    def test_delay_seconds(self, value: str | None, expected: float | None) -> None:
        """delay-seconds parse as a number; anything unreadable is no hint."""
        assert expected == parse_retry_after(value)

    def test_date_in_the_past_is_zero(self) -> None:
        """A date already passed means retry now."""
        assert 0.0 == parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")


class TestSummarizeOutcome:
    def test_unknown_codes_and_extra_issues(self) -> None:
        """Codes outside the FHIR value sets show as '?', and issues past five are counted, not listed."""
        issues = [{"severity": "error", "code": PHI}] + [{"severity": "warning", "code": "value"}] * 6
        assert "error/?; warning/value; warning/value; warning/value; warning/value; +2 more" == \
            summarize_outcome(outcome(*issues))

    def test_not_an_outcome(self) -> None:
        """A body that is not an OperationOutcome gives an empty summary."""
        assert "" == summarize_outcome({"resourceType": "Patient", "name": PHI})


# ---------------------------------------------------------------- config


class TestFhirSinkConfig:
    def test_defaults(self) -> None:
        """A minimal sink is R4B, no auth, pipelined 8 wide on 8 pooled connections, health-checked."""
        config = sink_config("http://127.0.0.1:8090/fhir/")
        assert ("R4B", "none", 8, 8, True) == (config.fhir_version, config.auth.type, config.max_in_flight,
                                                config.max_connections, config.health_check)

    def test_auth_none_shorthand(self) -> None:
        """`auth: none` is accepted as the string it reads as."""
        assert "none" == sink_config("https://fhir.example.org/r4", auth="none").auth.type

    def test_plain_http_to_another_host_is_refused(self) -> None:
        """PHI must not travel in clear text unless the operator says so explicitly."""
        with pytest.raises(ValidationError, match="plain http"):
            sink_config("http://fhir.example.org/r4")
        assert sink_config("http://fhir.example.org/r4", allow_plain_http=True).allow_plain_http

    def test_inline_secret_is_refused(self) -> None:
        """A bearer token written inline is a config error."""
        with pytest.raises(ValidationError, match="inline secret"):
            sink_config("https://fhir.example.org/r4", auth={"type": "bearer", "token": "abc"})

    def test_in_flight_bounded_by_connections(self) -> None:
        """More requests in flight than pooled connections would only queue in the pool."""
        with pytest.raises(ValidationError, match="max_in_flight"):
            sink_config("https://fhir.example.org/r4", max_in_flight=9, max_connections=8)

    def test_assertion_lifetime_capped_at_five_minutes(self) -> None:
        """SMART Backend Services: exp at most five minutes ahead."""
        with pytest.raises(ValidationError):
            JwtAssertionAuthConfig.model_validate({
                "type": "jwt_assertion", "token_url": "https://a.example.org/t", "client_id": "c",
                "private_key": {"env": "K"}, "assertion_lifetime_s": 301})


# ---------------------------------------------------------------- delivery


class TestFhirSinkDelivery:
    async def test_posts_the_bundle_as_fhir_json(self, fake: FakeFhir, make_sink) -> None:
        """The Bundle is POSTed to the base URL as application/fhir+json, unchanged."""
        sink = await make_sink(sink_config(fake.base_url))
        ex = exchange(1)
        assert [None] == await sink.deliver_many([ex])
        (got,) = fake.received
        assert ex.output == got["body"]
        assert "application/fhir+json" == got["headers"]["Content-Type"]

    async def test_permanent_failure_does_not_stop_the_same_key(self, fake: FakeFhir, make_sink) -> None:
        """A refused Bundle is dead-lettered and the next message of the same patient still goes."""
        fake.script = [(400, {}, outcome({"severity": "error", "code": "invalid"}))]
        sink = await make_sink(sink_config(fake.base_url))
        results = await sink.deliver_many([exchange(1, "k"), exchange(2, "k")])
        assert isinstance(results[0], PermanentError)
        assert None is results[1]

    async def test_transient_failure_holds_back_its_key_only(self, fake: FakeFhir, make_sink) -> None:
        """After a 500 for patient A, A's later message is NOT_ATTEMPTED while patient B is delivered."""
        fake.script = [(500, {}, {})]
        sink = await make_sink(sink_config(fake.base_url, max_in_flight=1))
        results = await sink.deliver_many([exchange(1, "A"), exchange(2, "A"), exchange(3, "B")])
        assert isinstance(results[0], TransientError)
        assert [NOT_ATTEMPTED, None] == results[1:]
        assert ["C1", "C3"] == [r["body"]["identifier"]["value"] for r in fake.received]

    async def test_unavailable_server_halts_every_key(self, fake: FakeFhir, make_sink) -> None:
        """A 503 stops new requests for all patients: the rest are NOT_ATTEMPTED, not hammered."""
        fake.script = [(503, {"Retry-After": "1"}, {})]
        sink = await make_sink(sink_config(fake.base_url, max_in_flight=1))
        results = await sink.deliver_many([exchange(1, "A"), exchange(2, "B"), exchange(3, "C")])
        assert isinstance(results[0], ServerUnavailableError)
        assert [NOT_ATTEMPTED, NOT_ATTEMPTED] == results[1:]
        assert 1 == len(fake.received)
        assert not sink.healthy

    async def test_independent_keys_are_in_flight_together(self, fake: FakeFhir, make_sink) -> None:
        """Four patients' messages are sent concurrently: the server sees all four before answering any."""
        all_arrived = asyncio.Event()
        arrived = 0

        async def hold(request: web.Request) -> web.Response:
            nonlocal arrived
            arrived += 1
            if arrived == 4:
                all_arrived.set()
            # Bounded: a sink sending one at a time gets a 500 here after 5 s instead of hanging.
            await asyncio.wait_for(all_arrived.wait(), timeout=5)
            return web.json_response(OK_RESPONSE)

        fake.script = [hold] * 4
        sink = await make_sink(sink_config(fake.base_url, max_in_flight=4, max_connections=4))
        results = await sink.deliver_many([exchange(i, f"P{i}") for i in range(4)])
        assert [None] * 4 == results
        assert 4 == fake.max_in_flight

    async def test_same_key_is_sent_one_at_a_time_in_order(self, fake: FakeFhir, make_sink) -> None:
        """Messages of one patient never overlap and arrive in the order given."""
        sink = await make_sink(sink_config(fake.base_url, max_in_flight=8))
        batch = [exchange(i, "same") for i in range(6)]
        assert [None] * 6 == await sink.deliver_many(batch)
        assert 1 == fake.max_in_flight
        assert [f"C{i}" for i in range(6)] == [r["body"]["identifier"]["value"] for r in fake.received]

    async def test_in_flight_bound_is_respected(self, fake: FakeFhir, make_sink) -> None:
        """With 20 patients and max_in_flight 3, never more than 3 requests are open."""
        sink = await make_sink(sink_config(fake.base_url, max_in_flight=3, max_connections=3))
        assert [None] * 20 == await sink.deliver_many([exchange(i, f"P{i}") for i in range(20)])
        assert fake.max_in_flight <= 3
        assert 20 == len(fake.received)

    async def test_missing_output_is_permanent(self, fake: FakeFhir, make_sink) -> None:
        """An exchange without a Bundle (no mapping stage) cannot ever be sent."""
        sink = await make_sink(sink_config(fake.base_url))
        ex = exchange(1)
        ex.output = None
        (result,) = await sink.deliver_many([ex])
        assert isinstance(result, PermanentError)

    async def test_connection_refused_is_unavailable_not_ambiguous(self, make_sink) -> None:
        """Nothing was sent when the connection is refused, so the failure is not ambiguous."""
        sink = await make_sink(sink_config(f"http://127.0.0.1:{closed_port()}/fhir", health_check=False))
        (result,) = await sink.deliver_many([exchange(1)])
        assert isinstance(result, ServerUnavailableError)
        assert not result.ambiguous

    async def test_timeout_after_sending_is_ambiguous(self, fake: FakeFhir, make_sink) -> None:
        """A read timeout may follow a commit on the server: transient and flagged ambiguous."""
        release = asyncio.Event()

        async def stall(request: web.Request) -> web.Response:
            await release.wait()
            return web.json_response(OK_RESPONSE)

        fake.script = [stall]
        sink = await make_sink(sink_config(fake.base_url, timeouts={"read_s": 0.2}))
        try:
            (result,) = await sink.deliver_many([exchange(1)])
        finally:
            release.set()
        assert isinstance(result, ServerUnavailableError)
        assert result.ambiguous

    async def test_no_phi_in_errors_or_logs(self, fake: FakeFhir, make_sink) -> None:
        """A refusal whose diagnostics echo patient data leaves no trace of it in the error or the logs."""
        fake.script = [(422, {}, outcome({"severity": "error", "code": "invalid", "diagnostics": PHI}))]
        with capture_logs() as logs:
            sink = await make_sink(sink_config(fake.base_url))
            (result,) = await sink.deliver_many([exchange(1, output={"resourceType": "Bundle", "name": PHI})])
        assert isinstance(result, PermanentError)
        assert PHI not in str(result)
        assert PHI not in repr(logs)


class TestHealthCheck:
    async def test_healthy_server_reports_its_version(self, fake: FakeFhir, make_sink) -> None:
        """start() reads the CapabilityStatement and remembers the server's FHIR version."""
        sink = await make_sink(sink_config(fake.base_url))
        assert (True, "4.0.1") == (sink.healthy, sink.server_fhir_version)

    async def test_unreachable_server_does_not_fail_start(self, make_sink) -> None:
        """A server that is down at start is logged and marked unhealthy; start() returns."""
        with capture_logs() as logs:
            sink = await make_sink(sink_config(f"http://127.0.0.1:{closed_port()}/fhir"))
        assert not sink.healthy
        assert "fhir_sink_unhealthy" in [entry["event"] for entry in logs]

    async def test_not_a_capability_statement_is_unhealthy(self, fake: FakeFhir, make_sink) -> None:
        """A 200 that is not a CapabilityStatement (a wrong base URL) is unhealthy."""
        fake.metadata = (200, {"hello": "world"})
        sink = await make_sink(sink_config(fake.base_url))
        assert not sink.healthy

    async def test_major_version_mismatch_is_a_warning(self, fake: FakeFhir, make_sink) -> None:
        """An R5 sink pointed at an R4 server says so in the log."""
        with capture_logs() as logs:
            await make_sink(sink_config(fake.base_url, fhir_version="R5"))
        assert "fhir_version_mismatch" in [entry["event"] for entry in logs]


class TestProbePause:
    def test_pause_grows_and_resets(self) -> None:
        """Consecutive failures lengthen the pause (capped); a success clears it."""
        pause = _ProbePause()
        pause.failed(None)
        first = pause.remaining()
        pause.failed(None)
        pause.failed(None)
        assert 0 < first < pause.remaining() <= 5.0
        pause.succeeded()
        assert 0.0 == pause.remaining()


# ---------------------------------------------------------------- auth


def rsa_pem() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return key, pem


class TestBearerAndBasic:
    async def test_bearer_token_from_env(self, fake: FakeFhir, make_sink, monkeypatch) -> None:
        """A bearer token is read by reference and sent as Authorization: Bearer."""
        monkeypatch.setenv("T_FHIR_TOKEN", "s3cret")
        sink = await make_sink(sink_config(fake.base_url, auth={"type": "bearer", "token": {"env": "T_FHIR_TOKEN"}}))
        await sink.deliver_many([exchange(1)])
        assert ["Bearer s3cret"] == fake.auth_headers

    async def test_basic_credentials(self, fake: FakeFhir, make_sink, monkeypatch) -> None:
        """Basic auth sends base64(username:password)."""
        monkeypatch.setenv("T_FHIR_PW", "pw")
        sink = await make_sink(sink_config(fake.base_url, auth={"type": "basic", "username": "eng",
                                                                "password": {"env": "T_FHIR_PW"}}))
        await sink.deliver_many([exchange(1)])
        assert [f"Basic {base64.b64encode(b'eng:pw').decode()}"] == fake.auth_headers

    async def test_missing_secret_fails_deliveries_transiently(self, fake: FakeFhir, make_sink) -> None:
        """An unset secret does not stop start(); deliveries fail transiently naming no value."""
        sink = await make_sink(sink_config(fake.base_url, auth={"type": "bearer", "token": {"env": "T_UNSET_X"}}))
        (result,) = await sink.deliver_many([exchange(1)])
        assert isinstance(result, AuthUnavailableError)


class TestClientCredentials:
    def config(self, fake: FakeFhir, **extra: Any) -> dict[str, Any]:
        return {"type": "client_credentials", "token_url": fake.token_url, "client_id": "engine id",
                "client_secret": {"env": "T_CC_SECRET"}, "scope": "system/*.cruds", **extra}

    async def test_token_is_fetched_once_and_reused(self, fake: FakeFhir, make_sink, monkeypatch) -> None:
        """Client id and secret go in a Basic header (form-encoded first); the token serves many requests."""
        monkeypatch.setenv("T_CC_SECRET", "a:b c")
        fake.valid_tokens = set()
        sink = await make_sink(sink_config(fake.base_url, auth=self.config(fake)))
        assert [None, None, None] == await sink.deliver_many([exchange(1), exchange(2), exchange(3)])
        (request,) = fake.token_requests
        assert {"grant_type": "client_credentials", "scope": "system/*.cruds"} == request["form"]
        user, _, secret = base64.b64decode(request["authorization"].removeprefix("Basic ")).decode().partition(":")
        assert ("engine id", "a:b c") == (unquote_plus(user), unquote_plus(secret))
        assert ["Bearer token-1"] * 3 == fake.auth_headers

    async def test_client_secret_post(self, fake: FakeFhir, make_sink, monkeypatch) -> None:
        """client_secret_post sends the credentials as form fields instead."""
        monkeypatch.setenv("T_CC_SECRET", "sec")
        auth = self.config(fake, client_auth_method="client_secret_post")
        sink = await make_sink(sink_config(fake.base_url, auth=auth))
        await sink.deliver_many([exchange(1)])
        form = fake.token_requests[0]["form"]
        assert ("engine id", "sec", "") == (form["client_id"], form["client_secret"],
                                            fake.token_requests[0]["authorization"])

    async def test_401_refreshes_the_token_and_retries_once(self, fake: FakeFhir, make_sink, monkeypatch) -> None:
        """A token the server no longer accepts is replaced and the request sent again."""
        monkeypatch.setenv("T_CC_SECRET", "sec")
        fake.valid_tokens = set()
        sink = await make_sink(sink_config(fake.base_url, auth=self.config(fake)))
        await sink.deliver_many([exchange(1)])
        fake.valid_tokens.clear()  # the server revoked token-1
        assert [None] == await sink.deliver_many([exchange(2)])
        assert ["Bearer token-1", "Bearer token-1", "Bearer token-2"] == fake.auth_headers
        assert 2 == len(fake.token_requests)

    async def test_second_401_is_transient(self, fake: FakeFhir, make_sink, monkeypatch) -> None:
        """Fresh credentials refused too: a credentials problem, retried later, never dead-lettered at once."""
        monkeypatch.setenv("T_CC_SECRET", "sec")
        fake.valid_tokens = set()
        refused = {"access_token": "refused", "token_type": "Bearer", "expires_in": 60}
        fake.token_script = [(200, refused), (200, refused)]
        sink = await make_sink(sink_config(fake.base_url, auth=self.config(fake)))
        (result,) = await sink.deliver_many([exchange(1)])
        assert isinstance(result, CredentialsRejectedError)
        assert 2 == len(fake.token_requests)

    async def test_token_endpoint_refusal_names_only_the_oauth_code(self, fake: FakeFhir, make_sink,
                                                                    monkeypatch) -> None:
        """invalid_client is reported by its RFC 6749 code, without the server's description."""
        monkeypatch.setenv("T_CC_SECRET", "sec")
        fake.token_script = [(401, {"error": "invalid_client", "error_description": f"client {PHI}"})]
        sink = await make_sink(sink_config(fake.base_url, auth=self.config(fake)))
        (result,) = await sink.deliver_many([exchange(1)])
        assert isinstance(result, AuthUnavailableError)
        assert "token endpoint refused: HTTP 401 (invalid_client)" == str(result)

    async def test_refreshes_before_expiry(self, fake: FakeFhir, monkeypatch) -> None:
        """A token is replaced once the clock passes expiry minus the margin, not after it lapses."""
        monkeypatch.setenv("T_CC_SECRET", "sec")
        now = [1000.0]
        auth = TokenAuth(ClientCredentialsAuthConfig.model_validate(self.config(fake, refresh_margin_s=60)),
                         clock=lambda: now[0])
        async with httpx.AsyncClient() as client:
            first = await auth.headers(client)
            now[0] += 3600 - 61
            assert first == await auth.headers(client)
            now[0] += 2
            assert first != await auth.headers(client)
        assert 2 == auth.fetches


class TestJwtAssertion:
    async def test_assertion_follows_smart_backend_services(self, fake: FakeFhir, make_sink, tmp_path) -> None:
        """Each token request carries a fresh RS384 assertion: iss=sub=client_id, aud=token URL, exp ≤ 5 min."""
        key, pem = rsa_pem()
        (tmp_path / "key.pem").write_text(pem)
        auth = {"type": "jwt_assertion", "token_url": fake.token_url, "client_id": "hl7engine",
                "private_key": {"file": str(tmp_path / "key.pem")}, "scope": "system/*.cruds"}
        sink = await make_sink(sink_config(fake.base_url, auth=auth))
        await sink.deliver_many([exchange(1)])
        sink._auth.invalidate()  # force a second token request
        await sink.deliver_many([exchange(2)])
        claims = []
        for request in fake.token_requests:
            form = request["form"]
            assert "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" == form["client_assertion_type"]
            assertion = form["client_assertion"]
            header = jwt.get_unverified_header(assertion)
            assert ("RS384", "JWT", jwk_thumbprint(public_jwk(key))) == (header["alg"], header["typ"], header["kid"])
            claims.append(jwt.decode(assertion, key.public_key(), algorithms=["RS384"], audience=fake.token_url))
        for c in claims:
            assert ("hl7engine", "hl7engine") == (c["iss"], c["sub"])
            assert 0 < c["exp"] - time.time() <= 300
        assert claims[0]["jti"] != claims[1]["jti"]

    async def test_es384_with_explicit_key_id(self, fake: FakeFhir, make_sink, monkeypatch) -> None:
        """ES384 with a P-384 key from an environment variable, and the configured kid."""
        key = ec.generate_private_key(ec.SECP384R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        monkeypatch.setenv("T_JWT_KEY", pem)
        auth = {"type": "jwt_assertion", "token_url": fake.token_url, "client_id": "c", "alg": "ES384",
                "key_id": "k-1", "private_key": {"env": "T_JWT_KEY"}}
        sink = await make_sink(sink_config(fake.base_url, auth=auth))
        assert [None] == await sink.deliver_many([exchange(1)])
        assertion = fake.token_requests[0]["form"]["client_assertion"]
        assert "k-1" == jwt.get_unverified_header(assertion)["kid"]
        jwt.decode(assertion, key.public_key(), algorithms=["ES384"], audience=fake.token_url)

    def test_key_not_matching_alg_is_a_config_error(self, monkeypatch) -> None:
        """An RSA key configured for ES384 is refused when the sink prepares, naming the rule."""
        monkeypatch.setenv("T_JWT_KEY", rsa_pem()[1])
        config = JwtAssertionAuthConfig.model_validate({
            "type": "jwt_assertion", "token_url": "https://a.example.org/t", "client_id": "c", "alg": "ES384",
            "private_key": {"env": "T_JWT_KEY"}})
        with pytest.raises(ConfigError, match="ES384 needs an EC P-384 key"):
            TokenAuth(config).prepare()
