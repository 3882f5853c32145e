"""The admin HTTP server on a real socket: health, metrics, operator API, masking, audit, roles."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from engine.admin import AdminServer
from engine.admin_api import TokenAuth, token_id
from engine.obs import metrics
from engine.obs.health import Readiness
from engine.store.base import REQUEUEABLE
from engine.store.sqlite import SQLiteStore
from engine.types import (
    UNFINISHED,
    Inbound,
    IngestResult,
    MessageQuery,
    QuarantinedFrame,
    QueueStats,
    Status,
    Store,
    StoredMessage,
)
from tests.support.messages import adt_a01

CANARY = "ZZCANARYNAME"
T0 = 1_760_000_000.0  # received_at of the first message; one second apart after that
TOKENS = {"view-token": "viewer", "op-token": "operator", "phi-token": "phi-reader"}


class FakeStore:
    """An in-memory stand-in for the Store protocol: only what the admin API and setup use."""

    def __init__(self) -> None:
        self.messages: dict[int, StoredMessage] = {}
        self.frames: list[QuarantinedFrame] = []

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ingest(self, items: Sequence[Inbound]) -> list[IngestResult]:
        results = []
        for item in items:
            message_id = len(self.messages) + 1
            self.messages[message_id] = StoredMessage(
                id=message_id, channel=item.channel, raw=item.raw, received_at=item.received_at,
                status=Status.RECEIVED, attempts=0, sender=item.sender, control_id=item.control_id,
                message_type=item.message_type, charset=item.charset)
            results.append(IngestResult(message_id, "stored", item.ack))
        return results

    async def dead_letter(self, message_id: int, reason: str) -> None:
        self.messages[message_id].status = Status.DEAD
        self.messages[message_id].last_error = reason

    async def get(self, message_id: int) -> StoredMessage | None:
        found = self.messages.get(message_id)
        return None if found is None else replace(found)

    async def query(self, q: MessageQuery) -> list[StoredMessage]:
        rows = [
            m for m in sorted(self.messages.values(), key=lambda m: m.id)
            if m.id > q.after_id
            and (q.channel is None or m.channel == q.channel)
            and (q.statuses is None or m.status in q.statuses)
            and (q.since is None or m.received_at >= q.since)
            and (q.until is None or m.received_at < q.until)
            and (q.control_id is None or m.control_id == q.control_id)
        ]
        return [replace(m) for m in rows[: min(q.limit, 1000)]]

    async def requeue(self, message_ids: Sequence[int]) -> int:
        hits = [self.messages[i] for i in message_ids if i in self.messages
                and self.messages[i].status in REQUEUEABLE]
        for message in hits:
            message.status, message.attempts, message.last_error = Status.RECEIVED, 0, None
        return len(hits)

    async def release(self, message_ids: Sequence[int]) -> int:
        hits = [self.messages[i] for i in message_ids if i in self.messages
                and self.messages[i].status is Status.DEAD]
        for message in hits:
            message.status = Status.RELEASED
        return len(hits)

    async def stats(self, channel: str) -> QueueStats:
        mine = [m for m in self.messages.values() if m.channel == channel]
        pending = [m for m in mine if m.status in UNFINISHED]
        return QueueStats(pending=len(pending), dead=sum(m.status is Status.DEAD for m in mine),
                          oldest_pending_at=min((m.received_at for m in pending), default=None))

    async def quarantine(self, channel: str, raw: bytes, reason: str, received_at: float,
                         peer: str = "") -> int:
        self.frames.append(QuarantinedFrame(len(self.frames) + 1, channel, raw, reason, received_at, peer))
        return len(self.frames)

    async def quarantined(self, channel: str | None = None, after_id: int = 0,
                          limit: int = 100) -> list[QuarantinedFrame]:
        rows = [f for f in self.frames if f.id > after_id and (channel is None or f.channel == channel)]
        return rows[:limit]


def sqlite_store(tmp: Path) -> Store:
    return SQLiteStore(tmp / "admin.db")


def fake_store(tmp: Path) -> Store:
    return FakeStore()  # type: ignore[return-value]  # implements only what these tests use


@dataclass
class FakeBackend:
    """The engine as the admin server sees it: a store, readiness checks, channel summaries."""

    store: Store
    ready: bool = True
    checks: dict[str, str] = field(default_factory=lambda: {"store": "ok", "channel:adt": "running"})
    reloads: int = 0

    def is_ready(self) -> tuple[bool, dict[str, str]]:
        return self.ready, dict(self.checks)

    def channel_summaries(self) -> list[dict[str, Any]]:
        return [{"name": "adt", "listen": "127.0.0.1:2575", "state": "running"},
                {"name": "lab", "listen": "127.0.0.1:2576", "state": "running"}]

    async def reload(self) -> None:
        self.reloads += 1


def inbound(index: int, channel: str) -> Inbound:
    raw = adt_a01(f"CTRL{index:04d}", family=CANARY).encode()
    return Inbound(channel=channel, raw=raw, received_at=T0 + index, sender="EPICADT|GENHOSP",
                   control_id=f"CTRL{index:04d}", content_hash=hashlib.sha256(raw).hexdigest(),
                   message_type="ADT^A01^ADT_A01", charset="utf-8", ack=b"MSA|AA")


async def populate(store: Store) -> list[int]:
    """Ten messages: 0-5 on adt, 6-9 on lab; ids at positions 1, 3, 7 dead-lettered."""
    results = await store.ingest([inbound(i, "adt" if i < 6 else "lab") for i in range(10)])
    ids = [r.message_id for r in results]
    for position in (1, 3, 7):
        await store.dead_letter(ids[position], "stage v2_to_fhir: PID-5: cannot map")
    await store.quarantine("adt", f"garbage {CANARY}".encode(), "no_msh", T0, "127.0.0.1")  # type: ignore[attr-defined]
    return ids


@dataclass
class Admin:
    client: httpx.AsyncClient
    server: AdminServer
    backend: FakeBackend
    ids: list[int]

    async def get(self, path: str, token: str | None = "phi-token", **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params, headers=auth(token))

    async def post(self, path: str, token: str | None = "op-token", **kwargs: Any) -> httpx.Response:
        return await self.client.post(path, headers=auth(token), **kwargs)


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


StoreFactory = Callable[[Path], Store]


@pytest.fixture(params=[fake_store, sqlite_store], ids=["fake", "sqlite"])
async def admin(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Admin]:
    store: Store = request.param(tmp_path)
    await store.open()
    ids = await populate(store)
    backend = FakeBackend(store)
    server = AdminServer("127.0.0.1:0", backend, tokens=TOKENS, max_bulk=3)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            yield Admin(client, server, backend, ids)
    finally:
        await server.close()
        await store.close()


@pytest.fixture
async def open_admin(tmp_path: Path) -> AsyncIterator[Admin]:
    """An admin server without tokens (open API on loopback) over a FakeStore."""
    store = FakeStore()
    ids = await populate(store)  # type: ignore[arg-type]
    backend = FakeBackend(store)  # type: ignore[arg-type]
    server = AdminServer("127.0.0.1:0", backend)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            yield Admin(client, server, backend, ids)
    finally:
        await server.close()


class TestHealth:
    async def test_livez(self, admin: Admin) -> None:
        """/livez answers 200 ok without a token."""
        response = await admin.get("/livez", token=None)
        assert (response.status_code, response.json()) == (200, {"status": "ok"})

    async def test_readyz_ready(self, admin: Admin) -> None:
        """/readyz is 200 with its checks when the backend is ready."""
        response = await admin.get("/readyz", token=None)
        assert response.status_code == 200
        assert response.json() == {"status": "ready", "checks": {"store": "ok", "channel:adt": "running"}}

    async def test_readyz_not_ready_names_check(self, admin: Admin) -> None:
        """/readyz is 503 and names the failing check when not ready."""
        admin.backend.ready = False
        admin.backend.checks["channel:adt"] = "draining"
        response = await admin.get("/readyz", token=None)
        assert response.status_code == 503
        assert response.json()["checks"]["channel:adt"] == "draining"


class TestReadiness:
    async def test_readiness_checks_drive_readyz_and_gauge(self, admin: Admin) -> None:
        """Readiness flags decide /readyz and the hl7engine_ready gauge together."""
        readiness = Readiness("store", "listener:adt")
        admin.backend.is_ready = readiness.status  # type: ignore[method-assign]
        readiness.mark("store", True)
        response = await admin.get("/readyz", token=None)
        assert response.status_code == 503
        assert response.json()["checks"] == {"listener:adt": "starting", "store": "ok"}
        assert metrics.REGISTRY.get_sample_value("hl7engine_ready") == 0
        readiness.mark("listener:adt", True, "bound")
        assert (await admin.get("/readyz", token=None)).status_code == 200
        assert metrics.REGISTRY.get_sample_value("hl7engine_ready") == 1
        readiness.mark("listener:adt", False, "draining")
        assert (await admin.get("/readyz", token=None)).status_code == 503


class TestMetrics:
    async def test_exposition_parses(self, admin: Admin) -> None:
        """/metrics is Prometheus text that parses and holds hl7engine_ metrics."""
        metrics.ACKS.labels("adt", "AA").inc()
        response = await admin.get("/metrics", token=None)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        names = {family.name for family in text_string_to_metric_families(response.text)}
        assert {"hl7engine_acks", "hl7engine_ready", "hl7engine_ack_latency_seconds"} <= names


class TestLifecycle:
    async def test_port_zero_binds_and_close_releases(self, tmp_path: Path) -> None:
        """Port 0 gives a real bound port; after close() nothing listens there."""
        server = AdminServer("127.0.0.1:0", FakeBackend(fake_store(tmp_path)))
        with pytest.raises(RuntimeError):
            _ = server.port
        await server.start()
        port = server.port
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        await server.close()
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass

    async def test_parsed_address_accepted(self, tmp_path: Path) -> None:
        """A parsed host/port object (config's HostPort) works as the listen address."""

        @dataclass(frozen=True)
        class Address:
            host: str
            port: int

        server = AdminServer(Address("127.0.0.1", 0), FakeBackend(fake_store(tmp_path)))
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
                assert (await client.get("/livez")).status_code == 200
        finally:
            await server.close()

    def test_bad_role_rejected(self) -> None:
        """A token mapped to an unknown role is a configuration error."""
        with pytest.raises(ValueError, match="role"):
            TokenAuth({"t": "admin"})


class TestChannels:
    async def test_channels_with_queue_stats(self, admin: Admin) -> None:
        """Each channel carries its queue counts from the store."""
        response = await admin.get("/api/channels", token="view-token")
        channels = {c["name"]: c for c in response.json()["channels"]}
        assert channels["adt"]["queue"]["pending"] == 4 and channels["adt"]["queue"]["dead"] == 2
        assert channels["lab"]["queue"]["pending"] == 3 and channels["lab"]["queue"]["dead"] == 1
        assert channels["adt"]["state"] == "running"


class TestMessageList:
    async def test_list_has_metadata_only(self, admin: Admin) -> None:
        """Listings carry metadata and never the message content."""
        response = await admin.get("/api/messages", token="view-token")
        assert response.status_code == 200
        first = response.json()["messages"][0]
        assert set(first) == {"id", "channel", "status", "attempts", "received_at", "message_type",
                              "last_error", "collision"}
        assert CANARY not in response.text and "PID|" not in response.text

    async def test_paging_visits_every_message_once(self, admin: Admin) -> None:
        """Following next_after_id with limit=4 returns all ten ids, in order, once."""
        seen: list[int] = []
        after: int | None = 0
        for _ in range(10):
            page = (await admin.get("/api/messages", token="view-token", limit=4, after_id=after)).json()
            seen.extend(m["id"] for m in page["messages"])
            after = page["next_after_id"]
            if after is None:
                break
        assert seen == admin.ids

    async def test_filters(self, admin: Admin) -> None:
        """channel, status, since/until and control_id narrow the list."""
        ids = admin.ids

        async def listed(**params: Any) -> list[int]:
            response = await admin.get("/api/messages", token="view-token", **params)
            return [m["id"] for m in response.json()["messages"]]

        assert await listed(channel="lab") == ids[6:]
        assert await listed(status="dead") == [ids[1], ids[3], ids[7]]
        assert await listed(channel="adt", status="dead,received") == ids[:6]
        assert await listed(since=T0 + 2, until=T0 + 4) == ids[2:4]
        assert await listed(since="2025-10-09T08:53:22+00:00") == ids[2:]
        assert await listed(control_id="CTRL0005") == [ids[5]]

    async def test_bad_parameter_named(self, admin: Admin) -> None:
        """A malformed parameter gives 400 naming the parameter."""
        response = await admin.get("/api/messages", token="view-token", limit="lots")
        assert response.status_code == 400
        assert "limit" in response.json()["detail"]
        response = await admin.get("/api/messages", token="view-token", status="lost")
        assert response.status_code == 400


class TestMessageDetail:
    async def test_metadata_without_content(self, admin: Admin) -> None:
        """Without ?content=true the detail view has no content and writes no audit line."""
        with capture_logs() as captured:
            response = await admin.get(f"/api/messages/{admin.ids[0]}", token="view-token")
        body = response.json()
        assert body["control_id"] == "CTRL0000" and "content" not in body
        assert CANARY not in response.text
        assert not [e for e in captured if e["event"] == "message_content_viewed"]

    async def test_missing_message_404(self, admin: Admin) -> None:
        """An unknown id is 404 with a JSON body."""
        response = await admin.get("/api/messages/99999", token="view-token")
        assert (response.status_code, response.json()) == (404, {"error": "not_found"})

    async def test_content_masked_and_audited(self, admin: Admin) -> None:
        """?content=true shows MSH and structure, masks values, and writes an audit line."""
        with capture_logs() as captured:
            response = await admin.get(f"/api/messages/{admin.ids[0]}", content="true")
        body = response.json()
        assert body["masked"] is True
        segments = body["content"].split("\r")
        assert segments[0].startswith("MSH|^~\\&|EPICADT|GENHOSP|")
        assert segments[2].startswith("PID|***||***||***|")
        assert CANARY not in response.text
        (audit,) = [e for e in captured if e["event"] == "message_content_viewed"]
        assert {"message_id": admin.ids[0], "channel": "adt", "unmasked": False, "role": "phi-reader",
                "token_id": token_id("phi-token"), "peer": "127.0.0.1"}.items() <= audit.items()

    async def test_unmask_shows_content_and_is_audited(self, admin: Admin) -> None:
        """&unmask=true returns the original text, and the audit line says unmasked."""
        with capture_logs() as captured:
            response = await admin.get(f"/api/messages/{admin.ids[0]}", content="true", unmask="true")
        assert CANARY in response.json()["content"]
        (audit,) = [e for e in captured if e["event"] == "message_content_viewed"]
        assert audit["unmasked"] is True

    async def test_last_error_shown(self, admin: Admin) -> None:
        """A dead message shows its PHI-free reason."""
        response = await admin.get(f"/api/messages/{admin.ids[1]}", token="view-token")
        assert response.json()["status"] == "dead"
        assert response.json()["last_error"] == "stage v2_to_fhir: PID-5: cannot map"


class TestReplayRelease:
    async def test_replay_dead_message(self, admin: Admin) -> None:
        """Replaying a dead message puts it back to received, and it is audited."""
        with capture_logs() as captured:
            response = await admin.post(f"/api/messages/{admin.ids[1]}/replay")
        assert (response.status_code, response.json()["requeued"]) == (200, 1)
        assert (await admin.backend.store.get(admin.ids[1])).status is Status.RECEIVED  # type: ignore[union-attr]
        assert [e["action"] for e in captured if e.get("action")] == ["replay"]

    async def test_replay_unfinished_conflicts(self, admin: Admin) -> None:
        """A message still waiting to be worked on cannot be replayed: 409 with its status."""
        response = await admin.post(f"/api/messages/{admin.ids[0]}/replay")
        assert response.status_code == 409
        assert response.json() == {"error": "not_replayable", "status": "received"}

    async def test_release_dead_message(self, admin: Admin) -> None:
        """Releasing a dead message marks it released; releasing again conflicts."""
        response = await admin.post(f"/api/messages/{admin.ids[3]}/release")
        assert response.status_code == 200
        assert (await admin.backend.store.get(admin.ids[3])).status is Status.RELEASED  # type: ignore[union-attr]
        again = await admin.post(f"/api/messages/{admin.ids[3]}/release")
        assert again.status_code == 409

    async def test_bulk_replay_by_ids(self, admin: Admin) -> None:
        """Bulk replay by ids requeues the replayable ones and counts them."""
        response = await admin.post("/api/messages/replay", json={"ids": [admin.ids[1], admin.ids[0]]})
        assert response.json() == {"matched": 2, "requeued": 1, "more": False}

    async def test_bulk_replay_by_filter(self, admin: Admin) -> None:
        """Bulk replay by channel and status requeues exactly the matching dead messages."""
        response = await admin.post("/api/messages/replay", json={"channel": "adt", "status": "dead"})
        assert response.json() == {"matched": 2, "requeued": 2, "more": False}
        dead = await admin.backend.store.query(MessageQuery(statuses=frozenset({Status.DEAD})))
        assert [m.id for m in dead] == [admin.ids[7]]

    async def test_bulk_replay_bounded(self, admin: Admin) -> None:
        """A filter matching more than max_bulk (3) replays 3 and reports more."""
        response = await admin.post("/api/messages/replay", json={"status": ["received", "dead"]})
        assert response.json() == {"matched": 3, "requeued": 1, "more": True}
        too_many = await admin.post("/api/messages/replay", json={"ids": admin.ids[:4]})
        assert too_many.status_code == 400

    async def test_bulk_replay_needs_a_selection(self, admin: Admin) -> None:
        """An empty body would replay everything: it is refused."""
        response = await admin.post("/api/messages/replay", json={})
        assert response.status_code == 400
        response = await admin.post("/api/messages/replay", content=b"not json")
        assert response.status_code == 400


class TestQuarantine:
    async def test_metadata_only(self, admin: Admin) -> None:
        """Quarantined frames are listed by reason and size; their bytes are never shown."""
        response = await admin.get("/api/quarantine", token="view-token")
        (frame,) = response.json()["frames"]
        assert {"channel": "adt", "reason": "no_msh", "size_bytes": len(f"garbage {CANARY}")}.items() \
            <= frame.items()
        assert "raw" not in frame and CANARY not in response.text

    async def test_unsupported_backend(self, tmp_path: Path) -> None:
        """Without a quarantine reader the endpoint says 501 rather than an empty list."""

        class Bare:
            async def stats(self, channel: str) -> QueueStats:
                return QueueStats(0, None, 0)

        server = AdminServer("127.0.0.1:0", FakeBackend(Bare()))  # type: ignore[arg-type]
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
                response = await client.get("/api/quarantine")
            assert response.status_code == 501
        finally:
            await server.close()


class TestAuth:
    async def test_missing_token_401(self, admin: Admin) -> None:
        """No token: 401 with a Bearer challenge."""
        response = await admin.get("/api/messages", token=None)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")

    async def test_wrong_token_401(self, admin: Admin) -> None:
        """An unknown token: 401."""
        assert (await admin.get("/api/messages", token="guess")).status_code == 401

    async def test_viewer_cannot_operate_or_read_content(self, admin: Admin) -> None:
        """A viewer lists but gets 403 on replay, release, reload and content."""
        assert (await admin.get("/api/messages", token="view-token")).status_code == 200
        dead = admin.ids[1]
        assert (await admin.post(f"/api/messages/{dead}/replay", token="view-token")).status_code == 403
        assert (await admin.post(f"/api/messages/{dead}/release", token="view-token")).status_code == 403
        assert (await admin.post("/api/reload", token="view-token")).status_code == 403
        content = await admin.get(f"/api/messages/{admin.ids[0]}", token="view-token", content="true")
        assert content.status_code == 403 and CANARY not in content.text

    async def test_operator_cannot_read_content(self, admin: Admin) -> None:
        """An operator replays and reloads but may not see content."""
        assert (await admin.post("/api/reload", token="op-token")).status_code == 200
        assert admin.backend.reloads == 1
        content = await admin.get(f"/api/messages/{admin.ids[0]}", token="op-token", content="true")
        assert content.status_code == 403

    async def test_phi_reader_cannot_operate(self, admin: Admin) -> None:
        """A phi-reader reads content but cannot replay."""
        response = await admin.post(f"/api/messages/{admin.ids[1]}/replay", token="phi-token")
        assert response.status_code == 403

    async def test_open_api_without_tokens(self, open_admin: Admin) -> None:
        """With no tokens configured every call is allowed, and content views are still audited."""
        with capture_logs() as captured:
            response = await open_admin.get(f"/api/messages/{open_admin.ids[0]}", token=None, content="true")
        assert response.status_code == 200
        (audit,) = [e for e in captured if e["event"] == "message_content_viewed"]
        assert audit["role"] == "anonymous"
        replay = await open_admin.post(f"/api/messages/{open_admin.ids[1]}/replay", token=None)
        assert replay.status_code == 200

