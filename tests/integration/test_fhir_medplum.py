"""The engine delivering to a second, independently validating FHIR server: Medplum's router.

tests/support/medplum/server.mjs runs @medplum/fhir-router 4.5.2 over its in-memory
repository and validates each resource against the official R4 StructureDefinitions
first. Medplum refuses a transaction that has conditional entries (ifNoneExist or a
conditional PUT) and more than 8 entries ("requires strict isolation"), as Medplum's
server does; our full ADT Bundles exceed that, so they are dead-lettered with the
server's reason, and the round trip is checked with small ADT messages.
Skips without Node.js >= 20.19/npm; fails instead when HL7ENGINE_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from channels.mappers.convert import convert_message
from channels.mappers.options import MappingOptions
from engine.app import Engine
from engine.config.loader import load_config
from engine.types import Status
from tests.integration.test_fhir_sekmet import (
    engine_yaml,
    messages_of,
    patient_identifier,
    replay_done,
    resource_types,
    send_all,
    wait_settled,
)
from tests.support.medplum import MedplumServer, MedplumUnavailableError, ensure_installed
from tests.support.messages import adt_a01
from tests.support.sekmet import services_required

#: Medplum 4.5.2 (fhir-router): most entries in a transaction that needs serializable isolation.
MEDPLUM_STRICT_TRANSACTION_LIMIT = 8


@pytest.fixture(scope="module")
def medplum_install() -> tuple[str, Path]:
    try:
        return ensure_installed()
    except MedplumUnavailableError as exc:
        if services_required():
            pytest.fail(f"Medplum test server unavailable and HL7ENGINE_REQUIRE_SERVICES=1: {exc}")
        pytest.skip(f"Medplum test server unavailable: {exc}")


@pytest.fixture
def medplum(medplum_install: tuple[str, Path], tmp_path: Path) -> Iterator[MedplumServer]:
    node, directory = medplum_install
    server = MedplumServer(node, directory, tmp_path / "medplum.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Engine]]]:
    engines: list[Engine] = []

    async def make(channel: str, server: MedplumServer) -> Engine:
        path = tmp_path / f"{channel}.yaml"
        path.write_text(engine_yaml(tmp_path, channel, f"        base_url: {server.base_url}\n"), encoding="utf-8")
        engine = Engine(load_config(path))
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.stop(10)


def registration(tag: str, i: int) -> str:
    """An ADT A04 with MSH, EVN and PID only (PV1 and IN1 dropped): a Bundle small enough for Medplum."""
    full = adt_a01(f"{tag}-{i}", mrn=f"{tag}R{i}", family=f"REG{i}", message_type="ADT^A04^ADT_A01")
    return "".join(segment + "\r" for segment in full.split("\r") if segment[:3] in ("MSH", "EVN", "PID"))


class TestMedplumRoundTrip:
    async def test_registrations_are_stored_read_back_and_replayed_idempotently(self, medplum, make_engine) -> None:
        """Small ADT Bundles pass Medplum's validation and transaction; a replay changes no count."""
        tag = secrets.token_hex(3).upper()
        messages = [registration(tag, i) for i in range(4)]
        for text in messages:  # precondition: within Medplum's strict-transaction limit
            assert len(convert_message(text, MappingOptions()).bundle["entry"]) <= MEDPLUM_STRICT_TRANSACTION_LIMIT
        channel = "fhir-medplum"
        engine = await make_engine(channel, medplum)
        await send_all(engine, channel, messages)
        rows = await wait_settled(engine, channel, len(messages))
        assert {Status.DONE} == {m.status for m in rows}, [m.last_error for m in rows]
        for text in messages:
            system, value = patient_identifier(text)
            assert 1 == medplum.count("Patient", identifier=f"{system}|{value}")

        types = resource_types(messages)
        before = {t: medplum.count(t) for t in sorted(types)}
        await replay_done(engine, channel)
        await wait_settled(engine, channel, len(messages))
        assert before == {t: medplum.count(t) for t in sorted(types)}

    async def test_oversized_conditional_transaction_is_dead_lettered_with_the_reason(self, medplum,
                                                                                      make_engine) -> None:
        """A full ADT A01 Bundle exceeds Medplum's strict-transaction limit: a permanent 400, not retried forever."""
        tag = secrets.token_hex(3).upper()
        text = adt_a01(f"{tag}-full", mrn=f"{tag}F")
        assert len(convert_message(text, MappingOptions()).bundle["entry"]) > MEDPLUM_STRICT_TRANSACTION_LIMIT
        channel = "fhir-medplum-big"
        engine = await make_engine(channel, medplum)
        await send_all(engine, channel, [text])
        (row,) = await wait_settled(engine, channel, 1)
        assert Status.DEAD == row.status
        assert "PermanentError: FHIR server refused the Bundle, HTTP 400: error/invalid" == row.last_error
        assert 1 == len(await messages_of(engine, channel))


class TestStructureDefinitions:
    @pytest.mark.parametrize("event", ["ADT^A01^ADT_A01", "ADT^A04^ADT_A01"])
    def test_our_adt_bundles_pass_medplum_validation(self, medplum, event: str) -> None:
        """Every resource mapped from an ADT with PV1 and IN1 is valid against the R4 StructureDefinitions."""
        bundle = convert_message(adt_a01("V1", message_type=event), MappingOptions()).bundle
        assert [] == medplum.validate(bundle)
