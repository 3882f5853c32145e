"""The `type: fhir` sink itself: pooled httpx connections (behaviour: engine/sinks/fhir_http.py).

Kept apart from the config model so that registering the sink, and validating a config
that does not use it, never loads httpx: only `engine.sinks.fhir_http._build` imports
this module, when a channel has a fhir sink.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import structlog

from engine.sinks.auth import Auth, AuthUnavailableError, build_auth
from engine.sinks.fhir_http import (
    FHIR_JSON,
    CredentialsRejectedError,
    FhirSinkConfig,
    ServerUnavailableError,
    classify_response,
    json_body,
)
from engine.types import NOT_ATTEMPTED, ConfigError, DeliveryResult, Exchange, PermanentError, TransientError

log = structlog.get_logger("hl7engine.sink.fhir")

#: Pause before probing a server that was found unavailable: doubles from the first
#: value up to the cap, reset by the next success.
_PROBE_PAUSE_FIRST_S = 0.25
_PROBE_PAUSE_CAP_S = 5.0


class _ProbePause:
    """How long to wait before the next request to a server found unavailable."""

    def __init__(self) -> None:
        self._failures = 0
        self._until = 0.0

    def failed(self, retry_after: float | None) -> None:
        self._failures += 1
        pause = min(_PROBE_PAUSE_CAP_S, _PROBE_PAUSE_FIRST_S * 2 ** (self._failures - 1))
        if retry_after is not None:
            pause = max(pause, min(retry_after, _PROBE_PAUSE_CAP_S))
        self._until = time.monotonic() + pause

    def succeeded(self) -> None:
        self._failures = 0
        self._until = 0.0

    def remaining(self) -> float:
        return max(0.0, self._until - time.monotonic())


class FhirSink:
    """Delivers transaction Bundles over pooled HTTP/1.1 keep-alive connections."""

    def __init__(self, name: str, config: FhirSinkConfig, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self._config = config
        self._url = config.base_url.rstrip("/")
        self._auth: Auth = build_auth(config.auth)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._pause = _ProbePause()
        #: False after a health check failed or the server was found unavailable; True after a success.
        self.healthy = False
        #: fhirVersion of the server's CapabilityStatement, once the health check read it.
        self.server_fhir_version: str | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the connection pool and check the server; never raises.

        A server that is down at start must not stop the engine from taking custody of
        messages: the failure is logged, `healthy` stays False, and deliveries are
        retried by the runner as usual. Unreadable secrets are logged the same way
        (naming the reference) and make deliveries fail transiently until fixed.
        """
        self._client = self._new_client()
        try:
            self._auth.prepare()
        except ConfigError as exc:
            log.error("fhir_sink_misconfigured", sink=self.name, findings=exc.findings)
        if self._config.health_check:
            await self.check_health()
        else:
            self.healthy = True

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _new_client(self) -> httpx.AsyncClient:
        config = self._config
        timeouts = config.timeouts
        verify: ssl.SSLContext | bool = config.verify_tls
        if config.verify_tls and config.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(Path(config.ca_file)))
        return httpx.AsyncClient(
            http1=True,
            http2=False,
            verify=verify,
            transport=self._transport,
            follow_redirects=False,
            timeout=httpx.Timeout(connect=timeouts.connect_s, read=timeouts.read_s,
                                  write=timeouts.write_s, pool=timeouts.pool_s),
            # Idle connections are dropped before common server idle timeouts (uvicorn and
            # Node 5 s): reusing one the server is closing fails as an ambiguous error.
            limits=httpx.Limits(max_connections=config.max_connections,
                                max_keepalive_connections=config.max_connections, keepalive_expiry=4.0),
        )

    async def check_health(self) -> bool:
        """GET [base]/metadata (FHIR http.html "capabilities"): is this a FHIR server we can talk to?

        Sent without credentials first (the CapabilityStatement is usually public), then
        with them when the server asks (401/403).
        """
        client = self._require_client()
        url = f"{self._url}/metadata"
        try:
            response = await client.get(url, headers={"Accept": FHIR_JSON})
            if response.status_code in (401, 403):
                response = await client.get(url, headers={"Accept": FHIR_JSON, **await self._auth.headers(client)})
        except (httpx.TransportError, AuthUnavailableError) as exc:
            return self._unhealthy(f"metadata request failed: {exc.__class__.__name__}")
        if response.status_code != 200:
            return self._unhealthy(f"metadata answered HTTP {response.status_code}")
        document = json_body(response.headers, response.content)
        if not isinstance(document, dict) or document.get("resourceType") != "CapabilityStatement":
            return self._unhealthy("metadata is not a CapabilityStatement")
        version = document.get("fhirVersion")
        self.server_fhir_version = version if isinstance(version, str) else None
        self._note_version(self.server_fhir_version)
        self.healthy = True
        log.info("fhir_sink_healthy", sink=self.name, server_fhir_version=self.server_fhir_version)
        return True

    def _unhealthy(self, reason: str) -> bool:
        self.healthy = False
        log.warning("fhir_sink_unhealthy", sink=self.name, reason=reason,
                    note="starting anyway; deliveries are retried until the server answers")
        return False

    def _note_version(self, server_version: str | None) -> None:
        """R4B content is sent to R4 (4.0.x) servers routinely; only another major version is a warning."""
        expected_major = "5" if self._config.fhir_version == "R5" else "4"
        if server_version and server_version.split(".", 1)[0] != expected_major:
            log.warning("fhir_version_mismatch", sink=self.name, configured=self._config.fhir_version,
                        server_fhir_version=server_version)

    def _require_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._new_client()
        return self._client

    # ------------------------------------------------------------ delivery

    async def deliver_many(self, exchanges: Sequence[Exchange]) -> list[DeliveryResult]:
        results: list[DeliveryResult] = [NOT_ATTEMPTED] * len(exchanges)
        if not exchanges:
            return results
        pause = self._pause.remaining()
        if pause > 0:
            # The server was unavailable a moment ago: probe it after a short pause rather
            # than spin through the backlog (the runner leases again at once).
            await asyncio.sleep(pause)
        lanes: dict[str, list[int]] = {}
        for index, exchange in enumerate(exchanges):
            lanes.setdefault(exchange.message.ordering_key, []).append(index)
        halted = asyncio.Event()  # set when the server as a whole failed: start nothing new
        slots = asyncio.Semaphore(self._config.max_in_flight)

        async def run_lane(indexes: list[int]) -> None:
            for index in indexes:
                if halted.is_set():
                    return
                async with slots:
                    if halted.is_set():
                        return
                    result = await self._attempt(exchanges[index])
                results[index] = result
                if isinstance(result, TransientError):
                    if isinstance(result, ServerUnavailableError | AuthUnavailableError):
                        halted.set()
                    return  # later exchanges of this key stay NOT_ATTEMPTED

        if len(lanes) == 1:
            await run_lane(next(iter(lanes.values())))
        else:
            await asyncio.gather(*(run_lane(indexes) for indexes in lanes.values()))
        return results

    async def _attempt(self, exchange: Exchange) -> DeliveryResult:
        try:
            await self.deliver(exchange)
        except (PermanentError, TransientError) as exc:
            if isinstance(exc, ServerUnavailableError | AuthUnavailableError):
                self._pause.failed(exc.retry_after)
                if self.healthy:
                    self.healthy = False
                    log.warning("fhir_sink_unavailable", sink=self.name, reason=str(exc))
            return exc
        except Exception as exc:  # a bug here must not take the other lanes down with it
            log.error("fhir_sink_error", sink=self.name, error_type=exc.__class__.__name__)
            return ServerUnavailableError(f"unexpected {exc.__class__.__name__} in the FHIR sink")
        self._pause.succeeded()
        if not self.healthy:
            self.healthy = True
            log.info("fhir_sink_available", sink=self.name)
        return None

    async def deliver(self, exchange: Exchange) -> None:
        """POST one exchange's Bundle; raise TransientError or PermanentError as classified."""
        body = exchange.output_json()  # serialised once, where the stages ran
        if body is None:
            raise PermanentError("no FHIR output to send (no v2_to_fhir stage in the pipeline?)")
        response = await self._post(body)
        if response.status_code == 401:
            if not self._auth.refreshable:
                raise CredentialsRejectedError("FHIR server requires credentials (HTTP 401); auth is 'none'")
            self._auth.invalidate()
            response = await self._post(body)
            if response.status_code == 401:
                raise CredentialsRejectedError("FHIR server refused fresh credentials (HTTP 401)")
        error = classify_response(response.status_code, response.headers, response.content)
        if error is not None:
            raise error

    async def _post(self, body: bytes) -> httpx.Response:
        """One POST. Failures before the request left are plain transient errors; failures
        after it may have reached the server are ambiguous, and safe to retry only because
        the Bundle is idempotent (conditional creates/updates, PUTs to derived ids)."""
        client = self._require_client()
        headers = {
            "Content-Type": FHIR_JSON,
            "Accept": FHIR_JSON,
            # We read only the entries' statuses; servers that honour it skip echoing resources.
            "Prefer": "return=minimal",
            **await self._auth.headers(client),
        }
        try:
            return await client.post(self._url, content=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ServerUnavailableError(f"FHIR server unreachable: {exc.__class__.__name__}") from None
        except httpx.TransportError as exc:
            # ReadTimeout, WriteTimeout, RemoteProtocolError, ReadError ...: sent, outcome unknown.
            raise ServerUnavailableError(
                f"FHIR request failed after sending: {exc.__class__.__name__}", ambiguous=True
            ) from None
