"""The whole engine delivering to a real FHIR server: SEKMET (PyPI `sekmet-fhir`) on loopback.

MLLP in -> store -> v2_to_fhir -> `fhir` sink -> SEKMET, then read back over FHIR search.
Covers issue #4: read-back by identifier and beneficiary, idempotent resend and replay,
SMART Backend Services auth, and a server outage with the backlog draining afterwards.
SEKMET runs in its own virtualenv (tests/support/sekmet.py); without it these tests
skip, and fail instead when HL7ENGINE_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from channels.mappers.convert import convert_message
from channels.mappers.options import MappingOptions
from engine.app import Engine
from engine.config.loader import load_config
from engine.obs.metrics import REGISTRY
from engine.types import MessageQuery, Status, StoredMessage
from tests.support.messages import adt_a01
from tests.support.mllp import frame, msa, read_frame
from tests.support.sekmet import (
    SekmetServer,
    SekmetUnavailableError,
    SmartClient,
    ensure_installed,
    services_required,
)

SETTLE_S = 90.0  # upper bound for a few dozen messages to be delivered on a loaded 2-core machine


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sekmet_exe() -> Path:
    try:
        return ensure_installed()
    except SekmetUnavailableError as exc:
        if services_required():
            pytest.fail(f"SEKMET unavailable and HL7ENGINE_REQUIRE_SERVICES=1: {exc}")
        pytest.skip(f"SEKMET unavailable: {exc}")


@pytest.fixture
def make_sekmet(sekmet_exe: Path, tmp_path: Path) -> Iterator[Callable[..., SekmetServer]]:
    servers: list[SekmetServer] = []

    def make(name: str = "sekmet", **kwargs: Any) -> SekmetServer:
        server = SekmetServer(sekmet_exe, tmp_path / name, **kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Engine]]]:
    engines: list[Engine] = []

    async def make(channel: str, sink_yaml: str) -> Engine:
        path = tmp_path / f"{channel}.yaml"
        path.write_text(engine_yaml(tmp_path, channel, sink_yaml), encoding="utf-8")
        engine = Engine(load_config(path))
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.stop(10)


def engine_yaml(tmp: Path, channel: str, sink_yaml: str) -> str:
    # Per-patient order (PID-3) lets the sink pipeline independent patients; fast retries keep
    # the outage test short; max_attempts is high so nothing is dead-lettered while SEKMET is down.
    return f"""store:
  path: {tmp / (channel + '.db')}
admin:
  listen: 127.0.0.1:0
channels:
  - name: {channel}
    listen: 127.0.0.1:0
    ordering: {{key: PID-3}}
    retry: {{initial_s: 0.2, max_s: 1.0, jitter: 0, max_attempts: 1000}}
    pipeline:
      - type: v2_to_fhir
        fhir_version: R4B
    sinks:
      - type: fhir
        name: sekmet
        max_in_flight: 4
{sink_yaml}"""


def fhir_sink(server: SekmetServer, extra: str = "") -> str:
    return f"        base_url: {server.base_url}\n{extra}"


# ---------------------------------------------------------------- helpers


def patient_messages(tag: str, count: int) -> list[str]:
    """Our own ADT A01/A04 (with IN1) for `count` distinct patients; MRNs unique to this test."""
    return [
        adt_a01(f"{tag}-{i}", mrn=f"{tag}M{i}", family=f"FAM{i}", given="ALEX",
                message_type="ADT^A01^ADT_A01" if i % 2 == 0 else "ADT^A04^ADT_A01")
        for i in range(count)
    ]


async def send_all(engine: Engine, channel: str, messages: list[str]) -> list[bytes]:
    """Send over one MLLP connection, each message after the previous one's ACK (as senders do)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", engine.channels[channel].server.port)
    acks = []
    try:
        for text in messages:
            writer.write(frame(text.encode("utf-8")))
            await writer.drain()
            acks.append(await read_frame(reader))
    finally:
        writer.close()
    return acks


async def messages_of(engine: Engine, channel: str) -> list[StoredMessage]:
    rows: list[StoredMessage] = []
    after = 0
    while True:
        page = await engine.store.query(MessageQuery(channel=channel, after_id=after, limit=1000))
        rows += page
        if len(page) < 1000:
            return rows
        after = page[-1].id


async def wait_settled(engine: Engine, channel: str, expected: int, timeout: float = SETTLE_S) -> list[StoredMessage]:
    """Wait until `expected` messages are stored and none is unfinished; return them."""
    deadline = time.monotonic() + timeout
    while True:
        stats = await engine.store.stats(channel)
        if stats.pending == 0:
            rows = await messages_of(engine, channel)
            if len(rows) >= expected:
                return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"{channel}: {stats.pending} message(s) still unfinished after {timeout:.0f} s")
        await asyncio.sleep(0.05)


def gauge(name: str, channel: str) -> float:
    value = REGISTRY.get_sample_value(name, {"channel": channel})
    return 0.0 if value is None else value


def patient_identifier(message: str) -> tuple[str, str]:
    """(system, value) of the PID-3 identifier as our mapping writes it (read from its own Bundle)."""
    bundle = convert_message(message, MappingOptions()).bundle
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            identifier = resource["identifier"][0]
            return identifier.get("system", ""), identifier["value"]
    raise AssertionError("no Patient in the Bundle")


def is_acked_adt(text: str) -> bool:
    """An ADT message with MSH-10 valued (else refused) that asks for a commit ACK on success
    (MSH-15 empty or AL; ER/NE get none, so a sender waiting for one would wait forever)."""
    if not text.startswith("MSH") or len(text) < 8:
        return False
    fields = text.replace("\n", "\r").split("\r", 1)[0].split(text[3]) + [""] * 16
    return fields[8].startswith("ADT") and bool(fields[9].strip()) and fields[14] in ("", "AL")


def resource_types(messages: list[str]) -> set[str]:
    types: set[str] = set()
    for text in messages:
        try:
            bundle = convert_message(text, MappingOptions()).bundle
        except Exception:  # corpus messages that do not convert are not sent anyway
            continue
        types |= {entry["resource"]["resourceType"] for entry in bundle["entry"]}
    return types


def counts(server: SekmetServer, types: set[str]) -> dict[str, int]:
    return {t: server.count(t) for t in sorted(types)}


async def replay_done(engine: Engine, channel: str) -> int:
    """Requeue every done message (an operator replay) and wake the runner."""
    done = [m.id for m in await messages_of(engine, channel) if m.status is Status.DONE]
    requeued = await engine.store.requeue(done)
    engine.channels[channel].runner.wake()
    return requeued


# ---------------------------------------------------------------- tests


class TestDeliveryToSekmet:
    async def test_patients_and_coverage_read_back_and_resends_change_nothing(self, make_sekmet, make_engine) -> None:
        """Messages land as Patient + Coverage; an exact resend and a full replay leave every count unchanged."""
        server = make_sekmet()
        channel = "fhir-sekmet"
        engine = await make_engine(channel, fhir_sink(server))
        tag = secrets.token_hex(3).upper()
        messages = patient_messages(tag, 8)

        acks = await send_all(engine, channel, messages)
        assert ["AA"] * 8 == [msa(a)[0] for a in acks]
        rows = await wait_settled(engine, channel, 8)
        assert {Status.DONE} == {m.status for m in rows}, [m.last_error for m in rows]

        for text in messages:  # PID-3 -> Patient.identifier; IN1 -> Coverage.beneficiary
            system, value = patient_identifier(text)
            found = server.search("Patient", identifier=f"{system}|{value}")
            assert 1 == found["total"]
            patient_id = found["entry"][0]["resource"]["id"]
            assert 1 <= server.count("Coverage", beneficiary=f"Patient/{patient_id}")

        types = resource_types(messages)
        before = counts(server, types)
        versions_before = server.search("Patient", identifier="|".join(patient_identifier(messages[0])))

        # An exact resend is recognised by the store: the very same ACK, nothing processed twice.
        assert acks == await send_all(engine, channel, messages)
        assert 8 == len(await messages_of(engine, channel))

        # A replay delivers every Bundle again: conditional creates/updates make it a no-op in counts.
        assert 8 == await replay_done(engine, channel)
        rows = await wait_settled(engine, channel, 8)
        assert {Status.DONE} == {m.status for m in rows}
        assert before == counts(server, types)
        versions_after = server.search("Patient", identifier="|".join(patient_identifier(messages[0])))
        # The replay really reached the server: the conditional update wrote a new version.
        assert int(versions_after["entry"][0]["resource"]["meta"]["versionId"]) > int(
            versions_before["entry"][0]["resource"]["meta"]["versionId"])


class TestSmartBackendServices:
    async def test_delivery_through_jwt_client_assertion(self, make_sekmet, make_engine, tmp_path: Path) -> None:
        """With SMART Backend Services on, anonymous writes are refused and the engine's signed-JWT login works."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private = tmp_path / "engine-key.pem"
        private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        public = tmp_path / "engine-key.pub.pem"
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
        reader_token = secrets.token_urlsafe(16)
        server = make_sekmet("smart", smart_clients=[SmartClient("hl7engine", public)],
                             static_tokens=[reader_token])
        async with httpx.AsyncClient() as client:
            anonymous = await client.post(server.base_url, json={"resourceType": "Bundle", "type": "transaction"})
        assert 401 == anonymous.status_code

        channel = "fhir-smart"
        auth = f"""        auth:
          type: jwt_assertion
          token_url: {server.token_url}
          client_id: hl7engine
          private_key: {{file: {private}}}
          alg: RS384
          scope: system/*.cruds
"""
        engine = await make_engine(channel, fhir_sink(server, auth))
        tag = secrets.token_hex(3).upper()
        messages = patient_messages(tag, 3)
        await send_all(engine, channel, messages)
        rows = await wait_settled(engine, channel, 3)
        assert {Status.DONE} == {m.status for m in rows}, [m.last_error for m in rows]
        system, value = patient_identifier(messages[2])
        assert 1 == server.count("Patient", identifier=f"{system}|{value}")


class TestOutage:
    async def test_backlog_survives_a_stopped_server_and_drains(self, make_sekmet, make_engine) -> None:
        """SEKMET stopped mid-run: messages are ACKed and queue up, nothing is lost, the backlog drains later."""
        server = make_sekmet("outage")
        channel = "fhir-outage"
        engine = await make_engine(channel, fhir_sink(server))
        tag = secrets.token_hex(3).upper()
        messages = patient_messages(tag, 24)

        await send_all(engine, channel, messages[:4])
        await wait_settled(engine, channel, 4)

        await asyncio.to_thread(server.stop)
        acks = await send_all(engine, channel, messages[4:])
        assert ["AA"] * 20 == [msa(a)[0] for a in acks]  # custody does not depend on the sink
        deadline = time.monotonic() + 30
        while gauge("hl7engine_queue_depth", channel) < 20 or gauge("hl7engine_queue_oldest_age_seconds", channel) <= 0:
            assert time.monotonic() < deadline, "queue depth gauge never showed the backlog"
            await asyncio.sleep(0.1)
        retried = [m for m in await messages_of(engine, channel) if m.status is Status.RETRY]
        assert retried, "deliveries to a stopped server must be scheduled for retry"
        assert not engine.channels[channel].sinks[0].healthy  # type: ignore[attr-defined]

        await asyncio.to_thread(server.start)
        rows = await wait_settled(engine, channel, 24)
        assert {Status.DONE} == {m.status for m in rows}, [m.last_error for m in rows]
        deadline = time.monotonic() + 30
        while gauge("hl7engine_queue_depth", channel) > 0:
            assert time.monotonic() < deadline, "queue depth gauge never fell back to 0"
            await asyncio.sleep(0.1)
        assert 0 == gauge("hl7engine_queue_oldest_age_seconds", channel)
        for text in messages:
            system, value = patient_identifier(text)
            assert 1 == server.count("Patient", identifier=f"{system}|{value}")


class TestCorpus:
    SUBSET = 40  # messages; enough variety (segments, charsets, sources) while keeping the test short

    async def test_corpus_subset_is_delivered_and_replay_is_idempotent(self, make_sekmet, make_engine) -> None:
        """Third-party ADT messages that convert are delivered (or refused permanently); a replay changes no count."""
        from tests.corpus import harness

        corpus = harness.locate_corpus()
        if corpus is None:
            if services_required():
                pytest.fail("third-party corpus not found, and HL7ENGINE_REQUIRE_SERVICES=1")
            pytest.skip("third-party corpus not found (../shared/corpus or $HL7ENGINE_CORPUS)")
        subset = []
        for message in sorted(harness.load_messages(corpus), key=lambda m: m.key):
            if not is_acked_adt(message.text):
                continue
            try:
                convert_message(message.text, MappingOptions())
            except Exception:
                continue
            subset.append(message.text)
            if len(subset) == self.SUBSET:
                break

        server = make_sekmet("corpus")
        channel = "fhir-corpus"
        engine = await make_engine(channel, fhir_sink(server))
        acks = await send_all(engine, channel, subset)
        accepted = sum(msa(a)[0] == "AA" for a in acks)
        rows = await wait_settled(engine, channel, accepted)
        done = [m for m in rows if m.status is Status.DONE]
        dead = [m for m in rows if m.status is Status.DEAD]
        assert len(done) + len(dead) == len(rows)
        # Refusals are the server's verdict on our mapping (see the report), never a transport failure.
        for m in dead:
            assert m.last_error and m.last_error.startswith("PermanentError: FHIR server refused"), m.last_error
        assert len(done) >= len(rows) * 0.8, [m.last_error for m in dead]

        types = resource_types(subset)
        before = counts(server, types)
        await replay_done(engine, channel)
        await wait_settled(engine, channel, accepted)
        assert before == counts(server, types)
