"""The status page: its rate window, dead-letter lookup, JSON API with roles, and the page in headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from engine.admin import AdminServer
from engine.obs import metrics
from engine.status_page import RateWindow, StatusPage, last_dead_letters
from engine.store.sqlite import SQLiteStore
from engine.types import Inbound, MessageQuery, Store, StoredMessage
from tests.support.engine_proc import EngineProcess, free_port
from tests.support.messages import adt_a01
from tests.support.mllp import exchange, msa

CANARY = "ZZSTATUSCANARY"
TOKENS = {"view-token": "viewer", "op-token": "operator", "phi-token": "phi-reader"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def inbound(index: int, channel: str) -> Inbound:
    raw = adt_a01(f"ST{index:05d}", family=CANARY).encode()
    return Inbound(channel=channel, raw=raw, received_at=1_760_000_000.0 + index, sender="EPICADT|GENHOSP",
                   control_id=f"ST{index:05d}", content_hash=hashlib.sha256(raw).hexdigest(),
                   message_type="ADT^A01^ADT_A01", charset="utf-8", ack=b"MSA|AA")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "status.db")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def ingest(store: Store, count: int, channel: str) -> list[int]:
    return [r.message_id for r in await store.ingest([inbound(i, channel) for i in range(count)])]


class CountingStore:
    """Wraps a store to count `query` calls (the dead-letter search must stay logarithmic)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.queries = 0

    async def query(self, q: MessageQuery) -> list[StoredMessage]:
        self.queries += 1
        return await self.inner.query(q)


class TestRateWindow:
    def test_unknown_until_two_readings_a_second_apart(self) -> None:
        """The first reading gives no rate: there is nothing to compare it with."""
        clock = FakeClock()
        window = RateWindow(clock=clock)
        assert ({"adt": None}, None) == window.update({"adt": 5.0})
        clock.now += 0.5
        assert ({"adt": None}, None) == window.update({"adt": 6.0})

    def test_per_minute_from_the_oldest_reading_in_the_window(self) -> None:
        """15 messages in 30 s is 30 per minute."""
        clock = FakeClock()
        window = RateWindow(clock=clock)
        window.update({"adt": 100.0})
        clock.now += 30
        assert ({"adt": 30.0}, 30.0) == window.update({"adt": 115.0})

    def test_readings_older_than_the_window_are_forgotten(self) -> None:
        """After a quiet minute the rate is 0, not the average since the first reading."""
        clock = FakeClock()
        window = RateWindow(window_s=60, clock=clock)
        window.update({"adt": 0.0})
        clock.now += 30
        window.update({"adt": 600.0})
        clock.now += 40
        window.update({"adt": 600.0})
        clock.now += 25
        rates, span = window.update({"adt": 600.0})
        assert ({"adt": 0.0}, 25.0) == (rates, span)

    def test_a_counter_reset_counts_from_zero(self) -> None:
        """A counter lower than before (engine restarted) counts its value as new messages."""
        clock = FakeClock()
        window = RateWindow(clock=clock)
        window.update({"adt": 500.0})
        clock.now += 60
        assert {"adt": 3.0} == window.update({"adt": 3.0})[0]


class TestLastDeadLetters:
    async def test_returns_the_highest_dead_ids_of_the_channel(self, store: SQLiteStore) -> None:
        """Out of 300 messages with 40 scattered dead letters, the 5 newest of this channel come back."""
        ids = await ingest(store, 300, "adt")
        other = await ingest(store, 3, "lab")
        dead = ids[3:300:7][:40]
        for message_id in [*dead, *other]:
            await store.dead_letter(message_id, "stage v2_to_fhir: PID-5: cannot map")
        found = await last_dead_letters(store, "adt", 5)
        assert sorted(dead)[-5:] == [m.id for m in found]

    async def test_fewer_than_asked_returns_them_all(self, store: SQLiteStore) -> None:
        """Two dead letters, five asked: both, oldest first."""
        ids = await ingest(store, 10, "adt")
        for message_id in (ids[2], ids[8]):
            await store.dead_letter(message_id, "retries exhausted")
        assert [ids[2], ids[8]] == [m.id for m in await last_dead_letters(store, "adt", 5)]

    async def test_search_is_logarithmic_in_the_id_range(self, store: SQLiteStore) -> None:
        """With 2,000 messages and 600 dead letters the search takes a few dozen queries, not a scan."""
        ids = await ingest(store, 2000, "adt")
        for message_id in ids[::3][:600]:
            await store.dead_letter(message_id, "retries exhausted")
        counting = CountingStore(store)
        found = await last_dead_letters(counting, "adt", 5)  # type: ignore[arg-type]  # query() is all it uses
        assert ids[::3][:600][-5:] == [m.id for m in found]
        assert counting.queries <= 2 * (max(ids).bit_length() + 2)


@dataclass
class Backend:
    store: Store
    channels: list[str] = field(default_factory=lambda: ["st-adt"])

    def is_ready(self) -> tuple[bool, dict[str, str]]:
        return True, {"store": "ok"}

    def channel_summaries(self) -> list[dict[str, Any]]:
        return [{"name": name, "state": "running", "listen": "127.0.0.1:2575"} for name in self.channels]


@pytest.fixture
async def admin(store: SQLiteStore) -> AsyncIterator[httpx.AsyncClient]:
    """An admin server with tokens over a store holding 4 messages on st-adt, 2 of them dead."""
    ids = await ingest(store, 4, "st-adt")
    for message_id in ids[:2]:
        await store.dead_letter(message_id, "stage v2_to_fhir: PID-5: cannot map")
    server = AdminServer("127.0.0.1:0", Backend(store), tokens=TOKENS)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            yield client
    finally:
        await server.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestStatusApi:
    async def test_needs_a_token(self, admin: httpx.AsyncClient) -> None:
        """/api/status without a token is 401 when tokens are configured."""
        assert 401 == (await admin.get("/api/status")).status_code

    async def test_viewer_sees_counts_only(self, admin: httpx.AsyncClient) -> None:
        """A viewer gets queue and dead-letter counts but no dead-letter list."""
        body = (await admin.get("/api/status", headers=bearer("view-token"))).json()
        channel = body["channels"][0]
        assert ("counts", "st-adt") == (body["detail"], channel["name"])
        assert {"pending": 2, "dead": 2} == {k: channel["queue"][k] for k in ("pending", "dead")}
        assert "dead_letters" not in channel

    async def test_operator_sees_the_last_dead_letters_without_content(self, admin: httpx.AsyncClient) -> None:
        """An operator gets id, times, attempts and reason of each dead letter; never names or control ids."""
        response = await admin.get("/api/status", headers=bearer("op-token"))
        rows = response.json()["channels"][0]["dead_letters"]
        assert [{"id", "received_at", "dead_at", "attempts", "reason"}] * 2 == [set(r) for r in rows]
        assert ["stage v2_to_fhir: PID-5: cannot map"] * 2 == [r["reason"] for r in rows]
        assert rows[0]["id"] > rows[1]["id"], "newest first"
        assert CANARY not in response.text and "ST0000" not in response.text

    async def test_counts_come_from_the_engine_metrics(self, admin: httpx.AsyncClient) -> None:
        """Received, ACK codes and error counters are the registry's values for the channel."""
        before = (await admin.get("/api/status", headers=bearer("view-token"))).json()["channels"][0]
        metrics.MESSAGES_RECEIVED.labels("st-adt").inc(3)
        metrics.ACKS.labels("st-adt", "AA").inc(2)
        metrics.ACKS.labels("st-adt", "AR").inc(1)
        metrics.DELIVERIES.labels("st-adt", "file", "transient").inc(4)
        after = (await admin.get("/api/status", headers=bearer("view-token"))).json()["channels"][0]
        assert 3 == after["received_total"] - before["received_total"]
        assert 2 == after["acks"]["AA"] - before["acks"].get("AA", 0)
        assert 1 == after["errors"]["negative_acks"] - before["errors"]["negative_acks"]
        assert 4 == after["errors"]["delivery_failures"] - before["errors"]["delivery_failures"]

    async def test_page_and_assets_need_no_token_and_forbid_foreign_sources(self, admin: httpx.AsyncClient) -> None:
        """/status and its script and stylesheet load without a token, under a same-origin-only CSP."""
        page = await admin.get("/status")
        assert 200 == page.status_code
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "http" not in page.text.replace('http-equiv', ''), "no external URL in the page"
        for asset, kind in (("status.js", "text/javascript"), ("status.css", "text/css")):
            response = await admin.get(f"/status/{asset}")
            assert (200, kind) == (response.status_code, response.headers["content-type"].split(";")[0])

    async def test_unknown_asset_is_404(self, admin: httpx.AsyncClient) -> None:
        """Only the page's own files are served from /status/."""
        assert 404 == (await admin.get("/status/..%2fadmin.py")).status_code
        assert 404 == (await admin.get("/status/other.js")).status_code


class TestStatusPageServing:
    async def test_trailing_slash_redirects_to_the_page(self, admin: httpx.AsyncClient) -> None:
        """/status/ redirects to /status so the page's relative links resolve."""
        response = await admin.get("/status/")
        assert (302, "../status") == (response.status_code, response.headers["location"])

    def test_static_files_are_packaged(self) -> None:
        """pyproject's package-data ships the page's files (pip install . and the Docker image need them)."""
        import tomllib

        repo = Path(__file__).resolve().parents[2]
        patterns = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
            "package-data"]["*"]
        static = sorted(p.name for p in (repo / "engine" / "static").iterdir())
        assert [] == [name for name in static if not any(Path(name).match(pattern) for pattern in patterns)]

    async def test_missing_static_files_answer_503(self, store: SQLiteStore, tmp_path: Path) -> None:
        """An install without the static files answers 503 instead of failing the admin server."""
        page = StatusPage(Backend(store), static_dir=tmp_path / "absent")
        with pytest.raises(web.HTTPServiceUnavailable):
            await page.page(None)  # type: ignore[arg-type]  # the handler does not read the request


# ---------------------------------------------------------------- headless Chromium


def need_chromium() -> str:
    path = shutil.which("chromium")
    if path is not None:
        return path
    reason = "chromium not installed (Debian package `chromium`: apt-get install -y chromium)"
    if os.environ.get("HL7ENGINE_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page, a tiny CDP client)."""

    def __init__(self, session: aiohttp.ClientSession, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._session = session
        self._socket = socket
        self._next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        call_id = self._next_id
        await self._socket.send_json({"id": call_id, "method": method, "params": params})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            message = await self._socket.receive(timeout=20)
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"DevTools connection ended: {message.type}")
            reply = json.loads(message.data)
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                result = reply.get("result", {})
                assert isinstance(result, dict)
                return result
        raise AssertionError(f"{method}: no reply within 20 s")

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, expected: Any, timeout: float = 20.0) -> None:
        """Poll a page expression until it equals `expected` (bounded in time and count)."""
        deadline = time.monotonic() + timeout
        value: Any = None
        for _ in range(int(timeout / 0.1) + 1):
            value = await self.evaluate(expression)
            if value == expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert expected == value, f"page never showed {expected!r} for {expression}"


@contextlib.asynccontextmanager
async def chromium(binary: str, profile: Path) -> AsyncIterator[Browser]:
    args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0", "--window-size=1280,900", "about:blank"]
    process = _launch(args)
    try:
        port = await _devtools_port(profile / "DevToolsActivePort", process)
        async with aiohttp.ClientSession() as session:
            page_url = await _page_socket(session, port)
            async with session.ws_connect(page_url, max_msg_size=64 * 1024 * 1024) as socket:
                yield Browser(session, socket)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def _launch(args: list[str]) -> subprocess.Popen[bytes]:
    # Its own process group, so the browser's helper processes are ended with it.
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


async def _devtools_port(path: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "chromium exited at start"
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int(path.read_text().splitlines()[0])
        await asyncio.sleep(0.05)
    raise AssertionError("chromium did not open its DevTools port within 30 s")


async def _page_socket(session: aiohttp.ClientSession, port: int) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets: Sequence[dict[str, Any]] = await response.json()
        pages = [t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"]
        if pages:
            return str(pages[0])
        await asyncio.sleep(0.05)
    raise AssertionError("chromium has no page target")


@dataclass
class LiveEngine:
    process: EngineProcess
    mllp_port: int
    admin_port: int

    async def send(self, payload: bytes) -> str:
        return msa(await exchange("127.0.0.1", self.mllp_port, payload))[0]


def two_channel_config(directory: Path, adt_port: int, gate_port: int, admin_port: int) -> Path:
    """adt forwards every message over MLLP to gate, which accepts ADT^A01 only.

    So an ADT^A04 sent to adt is answered AR by gate, and adt dead-letters it (the MLLP
    sink's default on_ar: dead): a real dead letter that does not depend on the mappers.
    """
    config = directory / "engine.yaml"
    config.write_text(f"""store:
  path: {directory / 'store.db'}
admin:
  listen: 127.0.0.1:{admin_port}
channels:
  - name: adt
    listen: 127.0.0.1:{adt_port}
    pipeline:
      - type: v2_to_fhir
    sinks:
      - type: file
        path: {directory / 'adt.ndjson'}
      - type: mllp
        target: 127.0.0.1:{gate_port}
        timeout_s: 5
  - name: gate
    listen: 127.0.0.1:{gate_port}
    accept:
      message_types: [ADT^A01]
    pipeline:
      - type: v2_to_fhir
    sinks:
      - type: file
        path: {directory / 'gate.ndjson'}
""", encoding="utf-8")
    return config


@pytest.fixture
def live_engine(tmp_path: Path) -> Iterator[LiveEngine]:
    adt_port, gate_port, admin_port = free_port(), free_port(), free_port()
    config = two_channel_config(tmp_path, adt_port, gate_port, admin_port)
    process = EngineProcess(config, admin_port, tmp_path / "engine.log")
    process.start()
    try:
        process.wait_ready()
        yield LiveEngine(process, adt_port, admin_port)
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.terminate(timeout=30)


def field_value(channel: str, selector: str) -> str:
    return f"document.querySelector('[data-channel=\"{channel}\"] {selector}')?.dataset.value ?? null"


class TestStatusPageInBrowser:
    async def test_shows_the_channel_after_traffic_and_updates(self, live_engine: LiveEngine, tmp_path: Path) -> None:
        """Chromium renders the adt card with its counts, then new traffic, an AR and a dead letter without a reload."""
        browser_binary = need_chromium()
        assert ["AA"] * 3 == [await live_engine.send(adt_a01(f"PAGE{i}").encode()) for i in range(3)]
        async with chromium(browser_binary, tmp_path / "profile") as browser:
            await browser.call("Page.enable")
            await browser.call("Page.navigate", url=f"http://127.0.0.1:{live_engine.admin_port}/status")
            await browser.wait_for(field_value("adt", '[data-field="received_total"]'), "3")
            await browser.wait_for(field_value("adt", '[data-ack="AA"]'), "3")
            assert "running" == await browser.evaluate(
                "document.querySelector('[data-channel=\"adt\"] .badge').textContent")
            assert "ready" == await browser.evaluate("document.getElementById('engine-state').textContent")

            assert ["AA", "AA", "AA"] == [await live_engine.send(adt_a01(f"MORE{i}").encode()) for i in range(2)] + [
                await live_engine.send(adt_a01("REJECTED", message_type="ADT^A04^ADT_A01").encode())]
            await browser.wait_for(field_value("adt", '[data-field="received_total"]'), "6")
            await browser.wait_for(field_value("adt", '[data-field="dead"]'), "1")
            await browser.wait_for("document.querySelectorAll('[data-channel=\"adt\"] [data-dead-id]').length", 1)
            await browser.wait_for(field_value("gate", '[data-ack="AR"]'), "1")
            rate = await browser.evaluate(field_value("adt", '[data-field="messages_per_minute"]'))
            assert float(rate) > 0, "messages per minute is shown once two polls have passed"
            assert await browser.evaluate("document.getElementById('banner').hidden") is True
            text = await browser.evaluate("document.body.innerText")
            assert "DOE" not in text and "MRN12345" not in text, "no patient data on the page"

            shot = await browser.call("Page.captureScreenshot", format="png")
        image = base64.b64decode(shot["data"])
        assert image.startswith(b"\x89PNG")
        (tmp_path / "status.png").write_bytes(image)
        if os.environ.get("HL7ENGINE_SCREENSHOT_DIR"):
            Path(os.environ["HL7ENGINE_SCREENSHOT_DIR"], "status.png").write_bytes(image)
