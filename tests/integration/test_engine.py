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
from tests.support.wait import apoll

# NK1 with no PID before it: the mapping refuses it (MappingError naming NK1).
POISON = "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|{cid}|P|2.5.1\rEVN|A01\rNK1|1|DOE^JOHN\r"

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
    async def whole_lines() -> list[bytes] | None:
        # Only whole lines: the sink may be half-way through a write right now.
        complete = path.read_bytes().split(b"\n")[:-1] if path.exists() else []
        return complete if len(complete) >= count else None

    lines = await apoll(whole_lines, timeout=timeout, what=f"{count} lines in {path.name}")
    return [json.loads(line) for line in lines]


async def wait_for_status(engine: Engine, status: Status, count: int, timeout: float = 10.0) -> None:
    async def enough() -> bool:
        return len(await engine.store.query(MessageQuery(statuses=frozenset({status})))) >= count

    await apoll(enough, timeout=timeout, what=f"{count} message(s) in status {status}")


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
        # The channel is FIFO: had the resend been processed, its line would precede AFTER's.
        await wait_lines(tmp_path / "out.ndjson", 2)
        lines = (tmp_path / "out.ndjson").read_bytes().split(b"\n")[:-1]
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
        poison = POISON.format(cid="P1").encode()
        assert "AA" == msa(await exchange("127.0.0.1", port, poison))[0]
        await exchange("127.0.0.1", port, adt_a01("GOOD").encode())
        await wait_lines(tmp_path / "out.ndjson", 1)
        rows = await engine.store.query(MessageQuery(channel="adt", statuses=frozenset({Status.DEAD})))
        assert 1 == len(rows)
        assert rows[0].last_error
        assert "NK1" in rows[0].last_error

    async def test_after_processing_mapping_failure_answers_ae(self, make_engine) -> None:
        """With ack: after_processing a mapping failure is answered AE with an ERR segment."""
        engine = await make_engine(ack="after_processing")
        poison = POISON.format(cid="P2").encode()
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
            await wait_for_status(engine, Status.DEAD, 1)
            from prometheus_client import generate_latest

            exposition = generate_latest(metrics.REGISTRY).decode()
        finally:
            structlog.reset_defaults()
        logs = stream.getvalue()
        assert logs, "logging must have produced output for this test to mean anything"
        for canary in ("ZZCANARYFAMILY", "ZZCANARYMRN"):
            assert canary not in logs
            assert canary not in exposition


class TestInputVariants:
    @pytest.mark.parametrize(
        ("name", "payload"),
        [
            ("LF terminators", adt_a01("V-LF", terminator="\n").encode()),
            ("CRLF terminators", adt_a01("V-CRLF", terminator="\r\n").encode()),
            ("UTF-8 BOM", b"\xef\xbb\xbf" + adt_a01("V-BOM", family="ŽIŽEK").encode()),
        ],
    )
    async def test_variant_is_acked_stored_exactly_and_mapped(
        self, make_engine, tmp_path: Path, name: str, payload: bytes
    ) -> None:
        """Each input variant gets AA, is stored byte for byte, and maps to a Patient."""
        engine = await make_engine()
        ack = await exchange("127.0.0.1", port_of(engine), payload)
        assert "AA" == msa(ack)[0], name
        db = sqlite3.connect(tmp_path / "store.db")
        (raw,) = db.execute("SELECT raw FROM messages").fetchone()
        db.close()
        assert payload == raw
        (bundle,) = await wait_lines(tmp_path / "out.ndjson", 1)
        patients = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]  # type: ignore[index]
        assert patients and patients[0]["name"][0]["family"] in {"DOE", "ŽIŽEK"}

    async def test_abuse_on_one_connection_never_stops_another(self, make_engine) -> None:
        """Garbage, an oversized frame and an unfinished frame on other connections; a
        well-behaved sender keeps getting AAs throughout."""
        engine = await make_engine(extra="    limits:\n      max_frame_bytes: 4096\n      frame_timeout_s: 1\n")
        port = port_of(engine)
        _r_bad, w_bad = await asyncio.open_connection("127.0.0.1", port)
        w_bad.write(b"garbage before" + frame(b"X" * 10000) + b"\x0bMSH|^~\\&|unfinished")
        await w_bad.drain()
        r_slow, w_slow = await asyncio.open_connection("127.0.0.1", port)
        w_slow.write(b"\x0bMSH|^~\\&|A|B")
        await w_slow.drain()
        for i in range(5):
            ack = await exchange("127.0.0.1", port, adt_a01(f"OK{i}").encode())
            assert ["AA", f"OK{i}"] == msa(ack)[:2]
        # The unfinished frame hits the 1 s frame deadline: the server closes that connection.
        assert b"" == await asyncio.wait_for(r_slow.read(), timeout=5)
        w_bad.close()
        w_slow.close()


class TestShutdown:
    async def test_sigterm_drains_and_exits_zero(self, tmp_path: Path) -> None:
        """SIGTERM: the engine stops accepting, finishes, logs the stop and exits 0."""
        from tests.support.engine_proc import EngineProcess, free_port, write_config

        mllp_port, admin_port = free_port(), free_port()
        engine = EngineProcess(write_config(tmp_path, mllp_port=mllp_port, admin_port=admin_port),
                               admin_port, tmp_path / "engine.log")
        engine.start()
        try:
            await asyncio.to_thread(engine.wait_ready)
            ack = await exchange("127.0.0.1", mllp_port, adt_a01("T1").encode())
            assert "AA" == msa(ack)[0]
            assert 0 == await asyncio.to_thread(engine.terminate)
        finally:
            engine.kill()
        events = [json.loads(line)["event"] for line in (tmp_path / "engine.log").read_text().splitlines()
                  if line.startswith("{")]
        assert "engine_stopping" in events and "engine_stopped" in events
        assert events.index("engine_stopping") < events.index("engine_stopped")


class TestMllpRelease2:
    async def test_commit_block_after_the_durable_write(self, make_engine, tmp_path: Path) -> None:
        """mllp_release: 2 answers a stored message with the commit acknowledgement block."""
        engine = await make_engine(extra="    mllp_release: 2\n")
        reply = await exchange("127.0.0.1", port_of(engine), adt_a01("R2").encode())
        assert b"\x06" == reply
        db = sqlite3.connect(tmp_path / "store.db")
        (count,) = db.execute("SELECT count(*) FROM messages").fetchone()
        db.close()
        assert 1 == count

    async def test_unreadable_message_gets_a_negative_commit_block(self, make_engine) -> None:
        """A frame with no MSH is answered with the negative commit block (NAK)."""
        engine = await make_engine(extra="    mllp_release: 2\n")
        assert b"\x15" == await exchange("127.0.0.1", port_of(engine), b"PID|1||X\r")


class TestBrokenHeaders:
    @pytest.mark.parametrize(
        ("payload", "code"),
        [
            (b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01||P|2.5.1\rPID|1||X\r", "101"),  # empty MSH-10
            (b"MSH|^~\\&|A|B|C|D|20260101||||P|2.5.1\rPID|1||X\r", "101"),  # empty MSH-9
            (b"MSH|^~\\\\&|A|B|C|D|20260101||ADT^A01|X9|P|2.5.1\r", "102"),  # doubled MSH-2
        ],
    )
    async def test_unreadable_header_gets_ar_and_the_connection_stays(
        self, make_engine, payload: bytes, code: str
    ) -> None:
        """A header missing required fields is answered AR with its ERR code; the connection goes on."""
        engine = await make_engine()
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(engine))
        writer.write(frame(payload))
        ack = await read_frame(reader)
        assert "AR" == msa(ack)[0]
        assert code == err_code(ack)
        writer.write(frame(adt_a01("NEXT").encode()))
        assert ["AA", "NEXT"] == msa(await read_frame(reader))[:2]
        writer.close()


class TestWorkerProcesses:
    async def test_sigkill_leaves_no_orphan_workers(self, tmp_path: Path) -> None:
        """Stage worker processes exit on their own when the engine is SIGKILLed."""
        from tests.support.engine_proc import EngineProcess, free_port, write_config

        mllp_port, admin_port = free_port(), free_port()
        engine = EngineProcess(write_config(tmp_path, mllp_port=mllp_port, admin_port=admin_port),
                               admin_port, tmp_path / "engine.log")
        engine.start()
        try:
            await asyncio.to_thread(engine.wait_ready)
            assert engine.proc is not None
            children = child_pids(engine.proc.pid)
            assert children, "the engine runs its stages in worker processes"
        finally:
            engine.kill()
        deadline = time.monotonic() + 15
        # Polling another process's exit (no event to wait on), with a deadline.
        while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() for c in children):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        alive = [c for c in children if Path(f"/proc/{c}").exists()
                 and "worker_main" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")]
        assert [] == alive


def child_pids(pid: int) -> set[int]:
    return {int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()}


class TestAcceptance:
    @pytest.mark.parametrize(
        ("message_type", "processing", "version", "code"),
        [
            ("ADT^A01^ADT_A01", "P", "2.5.1", "AA"),
            ("ORU^R01^ORU_R01", "P", "2.5", "AA"),  # `ORU` alone accepts every ORU event
            ("ADT^A04^ADT_A01", "P", "2.5.1", "201"),  # message code known, event not accepted
            ("SIU^S12^SIU_S12", "P", "2.5.1", "200"),
            ("ADT^A01^ADT_A01", "T", "2.5.1", "202"),
            ("ADT^A01^ADT_A01", "P", "2.3", "203"),
        ],
    )
    async def test_accept_rules_answer_per_table_0357(
        self, make_engine, message_type: str, processing: str, version: str, code: str
    ) -> None:
        """Message type, processing id and version rules refuse with ERR-3 200/201/202/203."""
        engine = await make_engine(extra="    accept:\n      message_types: [ADT^A01, ORU]\n"
                                         "      processing_ids: [P]\n      versions: ['2.5', '2.5.*']\n")
        text = adt_a01("ACC1", message_type=message_type).replace("|ACC1|P|2.5.1|", f"|ACC1|{processing}|{version}|")
        ack = await exchange("127.0.0.1", port_of(engine), text.encode())
        if code == "AA":
            assert "AA" == msa(ack)[0]
        else:
            assert ["AR", "ACC1"] == msa(ack)[:2]
            assert code == err_code(ack)
