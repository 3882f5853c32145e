"""The admin HTTP server: health, metrics and the operator API, on its own port.

Runs inside the engine's event loop (aiohttp AppRunner + TCPSite: no signal handling of
its own; the engine owns signals). Endpoints:

    GET  /livez                         200 while the event loop answers
    GET  /readyz                        200 ready, 503 with the failing checks
    GET  /metrics                       Prometheus exposition of engine.obs.metrics.REGISTRY
    GET  /api/channels                  viewer
    GET  /api/messages?channel=&status=&since=&until=&control_id=&after_id=&limit=   viewer
    GET  /api/messages/{id}             viewer; ?content=true needs phi-reader (masked
                                        unless &unmask=true), and is written to the audit log
    POST /api/messages/{id}/replay      operator
    POST /api/messages/replay           operator; {"ids": [...]} or filters, bounded
    POST /api/messages/{id}/release     operator
    GET  /api/quarantine                viewer; metadata only
    POST /api/reload                    operator (when the backend can reload)
    GET  /status, /api/status           the status page (engine/status_page.py); JSON: viewer

Health and metrics need no token (probes and Prometheus carry none; they hold no PHI).
DESIGN.md §5.7: content views, replays and releases go to the `hl7engine.audit` log.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.admin_api import (
    MAX_PAGE,
    AuthError,
    BadRequest,
    BulkReplay,
    Permission,
    Principal,
    TokenAuth,
    bulk_replay_request,
    is_loopback,
    iso_time,
    message_detail,
    message_query,
    message_summary,
    metadata_only,
    parse_bool,
    parse_int,
    parse_listen,
)
from engine.obs.logging import audit_logger
from engine.obs.metrics import REGISTRY
from engine.obs.redact import mask_message
from engine.status_page import StatusPage
from engine.types import ConfigError, Store, StoredMessage, StoreUnavailableError

log = structlog.get_logger("hl7engine.admin")

_MAX_BODY_BYTES = 64 * 1024
_SHUTDOWN_TIMEOUT_S = 5.0
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ApiHandler = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


class ListenAddress(Protocol):
    """A parsed `host:port` (engine.config.models.HostPort fits)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class AdminBackend(Protocol):
    """What the admin server needs from the engine (engine.app.Engine provides it).

    Optional extras, found by name when present:
    - `async reload() -> None` (raise ConfigError when the new config is invalid);
    - `async quarantined(channel: str | None, after_id: int, limit: int) -> Sequence[...]`,
      on the backend or on its store: records with id, channel, reason, received_at, peer.
    """

    @property
    def store(self) -> Store: ...

    def is_ready(self) -> tuple[bool, dict[str, str]]:
        """(ready, {check name: short PHI-free detail})."""
        ...

    def channel_summaries(self) -> list[dict[str, Any]]:
        """One dict per channel with at least `name`; listen, state and counters as known."""
        ...


# ---------------------------------------------------------------- server


class AdminServer:
    """The admin HTTP server. `start()` binds (port 0 allowed, then see `port`); `close()` stops."""

    def __init__(
        self,
        listen: str | ListenAddress,
        backend: AdminBackend,
        tokens: Mapping[str, str] | None = None,
        *,
        max_bulk: int = MAX_PAGE,
    ) -> None:
        if isinstance(listen, str):
            self._host, self._requested_port = parse_listen(listen)
        else:
            self._host, self._requested_port = listen.host, listen.port
        self._backend = backend
        self._auth = TokenAuth(tokens)
        self._max_bulk = max_bulk
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._audit = audit_logger()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0). Only valid after `start()`."""
        if self._port is None:
            raise RuntimeError("admin server is not started")
        return self._port

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._access_log],
                              client_max_size=_MAX_BODY_BYTES)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/channels", self._guard("view", self._channels))
        app.router.add_get("/api/messages", self._guard("view", self._list_messages))
        app.router.add_post("/api/messages/replay", self._guard("operate", self._replay_many))
        app.router.add_get("/api/messages/{id:\\d+}", self._guard("view", self._get_message))
        app.router.add_post("/api/messages/{id:\\d+}/replay", self._guard("operate", self._replay_one))
        app.router.add_post("/api/messages/{id:\\d+}/release", self._guard("operate", self._release_one))
        app.router.add_get("/api/quarantine", self._guard("view", self._quarantine))
        app.router.add_post("/api/reload", self._guard("operate", self._reload))
        app.router.add_routes(StatusPage(self._backend).routes(self._guard))  # /status, /api/status
        return app

    async def start(self) -> None:
        if not self._auth.enabled and not is_loopback(self._host):
            log.warning("admin_api_open", reason="no admin tokens configured on a non-loopback address")
        runner = web.AppRunner(self.build_app(), handle_signals=False, access_log=None,
                               shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._requested_port, backlog=128)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop listening and finish in-flight requests (bounded by a short timeout)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ------------------------------------------------------------ middleware

    def _guard(self, needed: Permission, handler: _ApiHandler) -> _Handler:
        """Check the bearer token for `needed`, then call the handler with the caller."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            principal = self._auth.authorize(request.headers.get("Authorization"), needed)
            return await handler(request, principal)

        return guarded

    @web.middleware
    async def _errors(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except AuthError as exc:
            headers = {"WWW-Authenticate": 'Bearer realm="hl7engine"'} if exc.status == 401 else {}
            return web.json_response({"error": exc.reason}, status=exc.status, headers=headers)
        except BadRequest as exc:
            return web.json_response({"error": "bad_request", "detail": str(exc)}, status=400)
        except StoreUnavailableError:
            return web.json_response({"error": "store_unavailable"}, status=503)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items()
                       if k.lower() not in ("content-type", "content-length")}
            word = (exc.reason or "error").lower().replace(" ", "_")
            return web.json_response({"error": word}, status=exc.status, headers=headers)
        except Exception:
            log.exception("admin_request_failed", route=_route(request))
            return web.json_response({"error": "internal"}, status=500)

    @web.middleware
    async def _access_log(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        # aiohttp's own access log prints the query string; ours names the route only.
        started = time.perf_counter()
        response = await handler(request)
        log.debug("admin_request", method=request.method, route=_route(request), status=response.status,
                  duration_s=round(time.perf_counter() - started, 6))
        return response

    # ------------------------------------------------------------ health and metrics

    async def _livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, checks = self._backend.is_ready()
        body = {"status": "ready" if ready else "not_ready", "checks": checks}
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ------------------------------------------------------------ operator API

    async def _channels(self, request: web.Request, principal: Principal) -> web.Response:
        channels = []
        for summary in self._backend.channel_summaries():
            item = dict(summary)
            if "queue" not in item and isinstance(item.get("name"), str):
                item["queue"] = await self._queue_stats(item["name"])
            channels.append(item)
        return web.json_response({"channels": channels})

    async def _queue_stats(self, channel: str) -> dict[str, Any] | None:
        try:
            stats = await self._backend.store.stats(channel)
        except StoreUnavailableError:
            return None
        age = None if stats.oldest_pending_at is None else max(0.0, time.time() - stats.oldest_pending_at)
        return {"pending": stats.pending, "dead": stats.dead,
                "oldest_pending_at": iso_time(stats.oldest_pending_at), "oldest_pending_age_s": age}

    async def _list_messages(self, request: web.Request, principal: Principal) -> web.Response:
        query = message_query(request.query, request.query.getall("status", []))
        rows = await self._backend.store.query(query)
        next_after = rows[-1].id if len(rows) >= query.limit and rows else None
        return web.json_response({"messages": [message_summary(m) for m in rows],
                                  "next_after_id": next_after})

    async def _get_message(self, request: web.Request, principal: Principal) -> web.Response:
        message = await self._message_or_404(request)
        body = message_detail(message)
        if parse_bool("content", request.query.get("content")):
            principal = self._auth.authorize(request.headers.get("Authorization"), "read_content")
            unmask = parse_bool("unmask", request.query.get("unmask"))
            self._audit.info("message_content_viewed", action="view_content", message_id=message.id,
                             channel=message.channel, unmasked=unmask, **_who(request, principal))
            text = message.text()
            body["content"] = text if unmask else mask_message(text)
            body["masked"] = not unmask
        return web.json_response(body)

    async def _replay_one(self, request: web.Request, principal: Principal) -> web.Response:
        message = await self._message_or_404(request)
        count = await self._backend.store.requeue([message.id])
        self._audit.info("message_replayed", action="replay", message_id=message.id, channel=message.channel,
                         requeued=count, **_who(request, principal))
        if count == 0:
            return web.json_response({"error": "not_replayable", "status": message.status.value}, status=409)
        return web.json_response({"id": message.id, "requeued": count})

    async def _release_one(self, request: web.Request, principal: Principal) -> web.Response:
        message = await self._message_or_404(request)
        count = await self._backend.store.release([message.id])
        self._audit.info("message_released", action="release", message_id=message.id, channel=message.channel,
                         released=count, **_who(request, principal))
        if count == 0:
            return web.json_response({"error": "not_releasable", "status": message.status.value}, status=409)
        return web.json_response({"id": message.id, "released": count})

    async def _replay_many(self, request: web.Request, principal: Principal) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("body must be JSON") from None
        plan = bulk_replay_request(body, self._max_bulk)
        ids, more = await self._select(plan)
        count = await self._backend.store.requeue(ids) if ids else 0
        self._audit.info("messages_replayed", action="replay_bulk", matched=len(ids), requeued=count,
                         channel=plan.query.channel if plan.query else None, **_who(request, principal))
        return web.json_response({"matched": len(ids), "requeued": count, "more": more})

    async def _select(self, plan: BulkReplay) -> tuple[list[int], bool]:
        """Ids named by a bulk request, at most `plan.limit`; `more` when the filter matched more."""
        if plan.ids is not None:
            return list(plan.ids[: plan.limit]), len(plan.ids) > plan.limit
        assert plan.query is not None
        ids: list[int] = []
        after_id = 0
        while len(ids) <= plan.limit:
            wanted = min(MAX_PAGE, plan.limit + 1 - len(ids))
            page = dataclasses.replace(plan.query, after_id=after_id, limit=wanted)
            rows = await self._backend.store.query(page)
            ids.extend(m.id for m in rows)
            if len(rows) < page.limit:
                break
            after_id = rows[-1].id
        return ids[: plan.limit], len(ids) > plan.limit

    async def _quarantine(self, request: web.Request, principal: Principal) -> web.Response:
        reader = _quarantine_reader(self._backend)
        if reader is None:
            return web.json_response({"error": "not_supported"}, status=501)
        channel = request.query.get("channel") or None
        after_id = parse_int("after_id", request.query.get("after_id"), 0)
        limit = parse_int("limit", request.query.get("limit"), 100, minimum=1, maximum=MAX_PAGE)
        rows = await reader(channel, after_id, limit)
        items = [_quarantine_view(row) for row in rows]
        next_after = items[-1].get("id") if len(items) >= limit and items else None
        return web.json_response({"frames": items, "next_after_id": next_after})

    async def _reload(self, request: web.Request, principal: Principal) -> web.Response:
        reload = getattr(self._backend, "reload", None)
        if reload is None:
            return web.json_response({"error": "not_supported"}, status=501)
        try:
            await reload()
        except ConfigError as exc:
            return web.json_response({"error": "invalid_config", "findings": exc.findings}, status=422)
        self._audit.info("config_reloaded", action="reload", **_who(request, principal))
        return web.json_response({"status": "reloaded"})

    async def _message_or_404(self, request: web.Request) -> StoredMessage:
        message = await self._backend.store.get(int(request.match_info["id"]))
        if message is None:
            raise web.HTTPNotFound(reason="Not Found")
        return message


# ---------------------------------------------------------------- helpers

_QuarantineReader = Callable[[str | None, int, int], Awaitable[Sequence[Any]]]


def _quarantine_reader(backend: AdminBackend) -> _QuarantineReader | None:
    for owner in (backend, backend.store):
        reader = getattr(owner, "quarantined", None)
        if callable(reader):
            return reader  # type: ignore[no-any-return]  # duck-typed optional capability
    return None


def _quarantine_view(row: Any) -> dict[str, Any]:
    """A quarantine record as metadata: size instead of bytes, ISO time, no content."""
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        record = {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
    elif isinstance(row, Mapping):
        record = dict(row)
    else:
        return {}
    raw = record.get("raw")
    if isinstance(raw, bytes | bytearray):
        record["size_bytes"] = len(raw)
    if isinstance(record.get("received_at"), int | float):
        record["received_at"] = iso_time(float(record["received_at"]))
    return metadata_only(record)


def _who(request: web.Request, principal: Principal) -> dict[str, Any]:
    """Audit fields naming the caller: role, token fingerprint and peer address."""
    return {"role": principal.role, "token_id": principal.token_id or None, "peer": request.remote}


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"

