"""The built-in status page, served by the admin server (engine/admin.py).

    GET /status            the page: self-contained HTML + JS + CSS (no CDN; CSP 'self')
    GET /status/{asset}    status.js, status.css
    GET /api/status        viewer; the JSON the page polls every 2 s

Per channel: messages per minute, received and ACK counts by code (HL7 v2 ch. 2 MSA-1),
queue depth and oldest pending, error counters, dead-letter count and, for operators and
PHI readers, the last dead letters as id, time and reason. Viewers see counts only.
Nothing here returns message content: reasons are PHI-free by contract and still pass
through `safe_text`, and no control id, sender or field value is shown.

Counters come from the engine's Prometheus registry (the same numbers /metrics shows);
queue numbers come live from the store. Messages per minute is computed from successive
readings of hl7engine_messages_received_total taken when the page polls, so it needs no
background task and costs nothing when nobody is looking.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client.metrics import MetricWrapperBase

from engine.admin_api import Permission, Principal, iso_time, safe_text
from engine.obs import metrics
from engine.types import MessageQuery, Status, Store, StoredMessage, StoreUnavailableError

log = structlog.get_logger("hl7engine.status")

STATIC_DIR = Path(__file__).parent / "static"
_ASSETS: Mapping[str, str] = {
    "status.html": "text/html; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
}
# The page loads nothing from elsewhere and runs no inline script (DESIGN.md §5.7: the
# admin surface must not leak data to third parties).
_SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

#: MSA-1 codes that mean the message was not accepted as sent (HL7 v2 ch. 2.9).
NEGATIVE_ACK_CODES = frozenset({"AE", "AR", "CE", "CR"})
LAST_DEAD_LETTERS = 5
_DEAD_ONLY = frozenset({Status.DEAD})
_DEAD_CACHE_S = 10.0

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ApiHandler = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]
Guard = Callable[[Permission, _ApiHandler], _Handler]


class StatusBackend(Protocol):
    """What the status page reads from the engine (the admin server's backend fits)."""

    @property
    def store(self) -> Store: ...

    def is_ready(self) -> tuple[bool, dict[str, str]]: ...

    def channel_summaries(self) -> list[dict[str, Any]]: ...


# ---------------------------------------------------------------- messages per minute


class RateWindow:
    """Per-channel rate of a counter, from readings taken whenever someone asks.

    Keeps at most one reading per `spacing_s` for `window_s` seconds; the rate is the
    difference between now and the oldest kept reading. `None` until two readings are at
    least `spacing_s` apart (the first poll after start or after a long pause).
    """

    def __init__(self, window_s: float = 60.0, spacing_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._spacing_s = spacing_s
        self._clock = clock
        self._readings: deque[tuple[float, dict[str, float]]] = deque()

    def update(self, totals: Mapping[str, float]) -> tuple[dict[str, float | None], float | None]:
        """Record `totals` and return ({channel: per minute or None}, seconds the rate spans)."""
        now = self._clock()
        while self._readings and now - self._readings[0][0] > self._window_s:
            self._readings.popleft()
        span: float | None = None
        rates: dict[str, float | None] = dict.fromkeys(totals)
        if self._readings and now - self._readings[0][0] >= self._spacing_s:
            then, base = self._readings[0]
            span = now - then
            for channel, total in totals.items():
                # A counter only goes down when the process restarted: count from zero.
                delta = total - base.get(channel, 0.0)
                rates[channel] = (total if delta < 0 else delta) * 60.0 / span
        if not self._readings or now - self._readings[-1][0] >= self._spacing_s:
            self._readings.append((now, dict(totals)))
        return rates, span


# ---------------------------------------------------------------- counters


def _counter_values(metric: MetricWrapperBase) -> Iterable[tuple[Mapping[str, str], float]]:
    """(labels, value) of every child of a counter or gauge in this process's registry."""
    for family in metric.collect():
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith("_total"):
                continue
            yield sample.labels, sample.value


@dataclass(slots=True)
class ChannelCounters:
    """Counters of one channel since the engine started (the numbers /metrics shows)."""

    received: float = 0.0
    acks: dict[str, float] | None = None
    connections_open: float = 0.0
    connections_refused: float = 0.0
    frames_rejected: float = 0.0
    quarantined: float = 0.0
    delivery_failures: float = 0.0
    retries: float = 0.0
    dead_lettered: float = 0.0

    def ack_counts(self) -> dict[str, int]:
        """{code: count} for codes sent at least once (release 2 codes are mostly zero)."""
        return {code: int(n) for code, n in sorted((self.acks or {}).items()) if n}


def read_counters() -> dict[str, ChannelCounters]:
    """One pass over the engine's registry, grouped by channel."""
    out: dict[str, ChannelCounters] = {}

    def of(labels: Mapping[str, str]) -> ChannelCounters:
        return out.setdefault(labels.get("channel", ""), ChannelCounters())

    for labels, value in _counter_values(metrics.MESSAGES_RECEIVED):
        of(labels).received += value
    for labels, value in _counter_values(metrics.ACKS):
        counters = of(labels)
        counters.acks = counters.acks or {}
        counters.acks[labels["code"]] = counters.acks.get(labels["code"], 0.0) + value
    for labels, value in _counter_values(metrics.CONNECTIONS_OPEN):
        of(labels).connections_open += value
    for labels, value in _counter_values(metrics.CONNECTIONS):
        if labels.get("outcome") != "accepted":
            of(labels).connections_refused += value
    for labels, value in _counter_values(metrics.FRAMES_REJECTED):
        of(labels).frames_rejected += value
    for labels, value in _counter_values(metrics.QUARANTINED):
        of(labels).quarantined += value
    for labels, value in _counter_values(metrics.DELIVERIES):
        if labels.get("outcome") in ("transient", "permanent"):
            of(labels).delivery_failures += value
    for labels, value in _counter_values(metrics.PROCESSED):
        if labels.get("outcome") == "retry":
            of(labels).retries += value
        elif labels.get("outcome") == "dead":
            of(labels).dead_lettered += value
    return out


def store_error_total() -> int:
    return int(sum(value for _, value in _counter_values(metrics.STORE_ERRORS)))


# ---------------------------------------------------------------- dead letters


async def last_dead_letters(store: Store, channel: str, count: int) -> list[StoredMessage]:
    """The `count` dead letters with the highest ids (the most recently received).

    The Store protocol pages by ascending id only, so this searches for the largest
    `after_id` whose page is still full: about 2·log2(max id) small indexed queries of
    `count` rows each, however long the dead-letter list is.
    """

    async def page(after_id: int) -> list[StoredMessage]:
        return await store.query(MessageQuery(channel=channel, statuses=_DEAD_ONLY, after_id=after_id,
                                              limit=count))

    best = await page(0)
    if len(best) < count or count <= 0:
        return best
    # Invariant: page(low) is full (it is `best`) and page(high) is not.
    low, high = 0, best[-1].id
    while True:
        rows = await page(high)
        if len(rows) < count:
            break
        low, best = high, rows
        high = rows[-1].id * 2
    while high - low > 1:
        middle = (low + high) // 2
        rows = await page(middle)
        if len(rows) == count:
            low, best = middle, rows
        else:
            high = middle
    return best


def dead_letter_view(message: StoredMessage) -> dict[str, Any]:
    """Id, times and reason: what an operator needs to find it with `hl7engine messages`."""
    return {
        "id": message.id,
        "received_at": iso_time(message.received_at),
        "dead_at": iso_time(message.updated_at) if message.updated_at else None,
        "attempts": message.attempts,
        "reason": safe_text(message.last_error),
    }


@dataclass(slots=True)
class _DeadCache:
    dead: int
    at: float
    rows: list[dict[str, Any]]


# ---------------------------------------------------------------- the page


class StatusPage:
    """Handlers for /status and /api/status. One instance per admin app (it keeps the rate window)."""

    def __init__(self, backend: StatusBackend, *, static_dir: Path = STATIC_DIR,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._backend = backend
        self._static_dir = static_dir
        self._clock = clock
        self._rates = RateWindow(clock=clock)
        self._dead: dict[str, _DeadCache] = {}

    def routes(self, guard: Guard) -> list[web.RouteDef]:
        """Routes to add to the admin app; `guard` checks the bearer token (viewer or better)."""
        return [
            web.get("/status", self.page),
            # The page's links are relative to /status; /status/ would resolve them one level too deep.
            web.get("/status/", self.redirect),
            web.get("/status/{asset}", self.asset),
            web.get("/api/status", guard("view", self.api)),
        ]

    async def page(self, request: web.Request) -> web.Response:
        return self._file("status.html")

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("../status")

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["asset"]
        if name not in _ASSETS or name == "status.html":
            raise web.HTTPNotFound(reason="Not Found")
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        try:
            body = (self._static_dir / name).read_bytes()
        except OSError:
            log.error("status_asset_missing", asset=name)
            raise web.HTTPServiceUnavailable(reason="status page not installed") from None
        return web.Response(body=body, headers={"Content-Type": _ASSETS[name], **_SECURITY_HEADERS})

    async def api(self, request: web.Request, principal: Principal) -> web.Response:
        body = await self.snapshot(full_detail=bool(principal.permissions & {"operate", "read_content"}))
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def snapshot(self, *, full_detail: bool) -> dict[str, Any]:
        """The JSON the page renders. `full_detail` adds the last dead letters per channel."""
        ready, checks = self._backend.is_ready()
        summaries = [s for s in self._backend.channel_summaries() if isinstance(s.get("name"), str)]
        counters = read_counters()
        rates, span = self._rates.update(
            {s["name"]: counters.get(s["name"], ChannelCounters()).received for s in summaries})
        channels = []
        for summary in summaries:
            name = summary["name"]
            found = counters.get(name, ChannelCounters())
            queue = await self._queue(name)
            item: dict[str, Any] = {
                "name": name,
                "state": str(summary.get("state", "unknown")),
                "messages_per_minute": _round(rates.get(name)),
                "received_total": int(found.received),
                "acks": found.ack_counts(),
                "connections_open": int(found.connections_open),
                "queue": queue,
                "errors": {
                    "negative_acks": sum(n for code, n in found.ack_counts().items()
                                         if code in NEGATIVE_ACK_CODES),
                    "frames_rejected": int(found.frames_rejected),
                    "quarantined": int(found.quarantined),
                    "connections_refused": int(found.connections_refused),
                    "delivery_failures": int(found.delivery_failures),
                    "retries": int(found.retries),
                    "dead_lettered": int(found.dead_lettered),
                },
            }
            if full_detail and queue is not None:
                item["dead_letters"] = await self._dead_letters(name, int(queue["dead"]))
            channels.append(item)
        return {
            "generated_at": iso_time(time.time()),
            "ready": ready,
            "checks": checks,
            "detail": "full" if full_detail else "counts",
            "rate_window_s": _round(span),
            "store_errors": store_error_total(),
            "channels": channels,
        }

    async def _queue(self, channel: str) -> dict[str, Any] | None:
        try:
            stats = await self._backend.store.stats(channel)
        except StoreUnavailableError:
            return None
        age = None if stats.oldest_pending_at is None else max(0.0, time.time() - stats.oldest_pending_at)
        return {"pending": stats.pending, "oldest_pending_age_s": _round(age), "dead": stats.dead}

    async def _dead_letters(self, channel: str, dead: int) -> list[dict[str, Any]]:
        """Cached while the dead count is unchanged (for up to 10 s): polling stays cheap."""
        now = self._clock()
        cached = self._dead.get(channel)
        if cached is not None and cached.dead == dead and now - cached.at < _DEAD_CACHE_S:
            return cached.rows
        rows: list[dict[str, Any]] = []
        if dead:
            try:
                found = await last_dead_letters(self._backend.store, channel, LAST_DEAD_LETTERS)
            except StoreUnavailableError:
                return cached.rows if cached is not None else []
            rows = [dead_letter_view(m) for m in reversed(found)]
        self._dead[channel] = _DeadCache(dead, now, rows)
        return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
