"""The whole engine in-process on real sockets: custody, ACK rules (DESIGN.md §4), delivery."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import structlog

from engine.app import Engine
from engine.config.loader import load_config
from engine.obs import metrics
from engine.types import MessageQuery, Status
from tests.support.messages import adt_a01
from tests.support.mllp import err_code, exchange, frame, msa, read_frame

PIPELINE = "      - type: v2_to_fhir\n        fhir_version: R4B\n"


def config_text(tmp: Path, *, channel: str = "adt", extra: str = "", pipeline: str = PIPELINE,
                ack: str = "on_commit") -> str:
    return f"""store:
  path: {tmp / 'store.db'}
admin:
  listen: 127.0.0.1:0
channels:
  - name: {channel}
    listen: 127.0.0.1:0
    ack: {ack}
{extra}    pipeline:
{pipeline}    sinks:
      - type: file
        path: {tmp / 'out.ndjson'}
"""


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    started: list[Engine] = []

    async def make(**kwargs: str) -> Engine:
        path = tmp_path / "engine.yaml"
        path.write_text(config_text(tmp_path, **kwargs), encoding="utf-8")
        engine = Engine(load_config(path))
        await engine.start()
        started.append(engine)
        return engine

    yield make
    for engine in started:
        await engine.stop(5)


def port_of(engine: Engine, channel: str = "adt") -> int:
    return engine.channels[channel].server.port


async def wait_lines(path: Path, count: int, timeout: float = 15.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(line) for line in path.read_bytes().splitlines()]
            if len(lines) >= count:
                return lines
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} lines in {path.name}")


class TestCustody:
    async def test_stored_message_is_acked_and_delivered(self, make_engine, tmp_path: Path) -> None:
        """A valid ADT gets AA echoing MSH-10, and its Bundle lands in the file sink."""
        engine = await make_engine()
        ack = await exchange("127.0.0.1", port_of(engine), adt_a01("C1").encode())
        assert ["AA", "C1"] == msa(ack)[:2]
        (bundle,) = await wait_lines(tmp_path / "out.ndjson", 1)
        assert "Bundle" == bundle["resourceType"]
        types = {e["resource"]["resourceType"] for e in bundle["entry"]}  # type: ignore[index]
        assert "Patient" in types

    async def test_exact_resend_replays_the_stored_ack(self, make_engine, tmp_path: Path) -> None:
        """An exact resend gets the very same ACK bytes and is not delivered twice."""
        engine = await make_engine()
        payload = adt_a01("DUP1").encode()
        first = await exchange("127.0.0.1", port_of(engine), payload)
        second = await exchange("127.0.0.1", port_of(engine), payload)
        assert first == second
        await exchange("127.0.0.1", port_of(engine), adt_a01("AFTER").encode())
        lines = await wait_lines(tmp_path / "out.ndjson", 2)
        await asyncio.sleep(0.3)
        lines = [json.loads(x) for x in (tmp_path / "out.ndjson").read_bytes().splitlines()]
        assert 2 == len(lines)

    async def test_same_control_id_other_content_is_a_flagged_new_message(self, make_engine, tmp_path: Path) -> None:
        """Reusing a control id with other content is accepted as new and flagged."""
        engine = await make_engine()
        port = port_of(engine)
        await exchange("127.0.0.1", port, adt_a01("SAME", family="ONE").encode())
        ack = await exchange("127.0.0.1", port, adt_a01("SAME", family="TWO").encode())
        assert "AA" == msa(ack)[0]
        db = sqlite3.connect(tmp_path / "store.db")
        flags = [row[0] for row in db.execute("SELECT collision FROM messages ORDER BY id")]
        db.close()
        assert [0, 1] == flags

    async def test_no_msh_gets_ar_with_err(self, make_engine) -> None:
        """A frame without an MSH is rejected with AR and an ERR segment (code 100)."""
        engine = await make_engine()
        ack = await exchange("127.0.0.1", port_of(engine), b"PID|1||X\r")
        assert "AR" == msa(ack)[0]
        assert "100" == err_code(ack)

    async def test_unaccepted_message_type_gets_ar_200(self, make_engine) -> None:
        """A message type outside the channel's accept list is rejected with ERR-3 200."""
        engine = await make_engine(extra="    accept:\n      message_types: [ADT^*]\n")
        ack = await exchange("127.0.0.1", port_of(engine),
                             adt_a01("T1", message_type="ORU^R01^ORU_R01").encode())
        assert ["AR", "T1"] == msa(ack)[:2]
        assert "200" == err_code(ack)

    async def test_enhanced_mode_answers_ca(self, make_engine) -> None:
        """MSH-15 = AL switches to enhanced mode: the commit ACK is CA."""
        engine = await make_engine()
        ack = await exchange("127.0.0.1", port_of(engine), adt_a01("E1", accept_ack="AL", app_ack="NE").encode())
        assert ["CA", "E1"] == msa(ack)[:2]

    async def test_latin1_message_is_stored_byte_exact(self, make_engine, tmp_path: Path) -> None:
        """MSH-18 8859/1 with real Latin-1 bytes: AA, raw bytes kept, name decoded right."""
        engine = await make_engine()
        payload = adt_a01("L1", family="MÜLLER", given="JOSÉ", charset="8859/1").encode("latin-1")
        ack = await exchange("127.0.0.1", port_of(engine), payload)
        assert "AA" == msa(ack)[0]
        db = sqlite3.connect(tmp_path / "store.db")
        (raw,) = db.execute("SELECT raw FROM messages").fetchone()
        db.close()
        assert payload == raw
        (bundle,) = await wait_lines(tmp_path / "out.ndjson", 1)
        assert "MÜLLER" in json.dumps(bundle, ensure_ascii=False)

    async def test_several_frames_in_one_write_are_acked_in_order(self, make_engine) -> None:
        """Three frames in one TCP write get three ACKs, in order."""
        engine = await make_engine()
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(engine))
        writer.write(b"".join(frame(adt_a01(f"B{i}").encode()) for i in range(3)))
        await writer.drain()
        acks = [await read_frame(reader) for _ in range(3)]
        writer.close()
        assert ["B0", "B1", "B2"] == [msa(a)[1] for a in acks]


class TestWork:
    async def test_poison_message_is_dead_lettered_and_the_rest_flow(self, make_engine, tmp_path: Path) -> None:
        """A message that cannot be mapped is dead-lettered with a reason; the next one is delivered."""
        engine = await make_engine()
        port = port_of(engine)
        poison = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|P1|P|2.5.1\rEVN|A01\r"
        assert "AA" == msa(await exchange("127.0.0.1", port, poison))[0]
        await exchange("127.0.0.1", port, adt_a01("GOOD").encode())
        await wait_lines(tmp_path / "out.ndjson", 1)
        rows = await engine.store.query(MessageQuery(channel="adt", statuses=frozenset({Status.DEAD})))
        assert 1 == len(rows)
        assert rows[0].last_error
        assert "PID" in rows[0].last_error

    async def test_after_processing_mapping_failure_answers_ae(self, make_engine) -> None:
        """With ack: after_processing a mapping failure is answered AE with an ERR segment."""
        engine = await make_engine(ack="after_processing")
        poison = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|P2|P|2.5.1\rEVN|A01\r"
        ack = await exchange("127.0.0.1", port_of(engine), poison)
        assert ["AE", "P2"] == msa(ack)[:2]
        assert "207" == err_code(ack)


class TestNoPhi:
    async def test_canary_names_never_reach_logs_or_metrics(self, make_engine, tmp_path: Path) -> None:
        """Patient names and MRNs appear in no log line and no metric, even on failures."""
        from engine.obs.logging import configure_logging

        stream = io.StringIO()
        configure_logging(level="debug", fmt="json", stream=stream, cache_loggers=False)
        try:
            engine = await make_engine()
            port = port_of(engine)
            await exchange("127.0.0.1", port, adt_a01("PHI1", family="ZZCANARYFAMILY", mrn="ZZCANARYMRN").encode())
            bad = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|PHI2|P|2.5.1\rNK1|1|ZZCANARYFAMILY\r"
            await exchange("127.0.0.1", port, bad)
            await exchange("127.0.0.1", port, b"PID|1||ZZCANARYMRN^^^X||ZZCANARYFAMILY\r")
            await wait_lines(tmp_path / "out.ndjson", 1)
            await asyncio.sleep(0.2)
            from prometheus_client import generate_latest

            exposition = generate_latest(metrics.REGISTRY).decode()
        finally:
            structlog.reset_defaults()
        logs = stream.getvalue()
        assert logs, "logging must have produced output for this test to mean anything"
        for canary in ("ZZCANARYFAMILY", "ZZCANARYMRN"):
            assert canary not in logs
            assert canary not in exposition
