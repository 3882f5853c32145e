"""Two engine processes on one PostgreSQL database, one of them SIGKILLed mid-run (issue #4).

What it proves (DESIGN.md §5.1-2, §5.5 across instances):
- every message an instance answered AA reaches a sink at least once (the union of the
  two instances' file sinks), including messages the killed instance had stored and
  leased: its restart takes back its own leases, the survivor takes expired ones;
- a resend of a message through the other instance is deduplicated (stored once);
- per-patient order holds in delivery. Order across two files cannot be read from the
  files alone, so the proof has two halves: (1) inside each file, a patient's messages
  first appear in sequence order; (2) across instances, a database trigger
  (tests/support/pg.py ORDER_AUDIT_SQL) witnesses every lease and records any message
  leased while an earlier message of its patient was unfinished and not in the same
  lease. With no such lease, a message is only ever written after every earlier message
  of its patient was written and marked done (the runner marks done after its sinks
  return), so the first delivery of each message follows the patient's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from tests.support.engine_proc import EngineProcess, free_port
from tests.support.messages import adt_a01
from tests.support.mllp import frame, msa, read_frame
from tests.support.pg import install_order_audit, order_violations, require_server, scratch_database

pytestmark = pytest.mark.slow

SENDERS = 4
MESSAGES_PER_SENDER = 200
PATIENTS_PER_SENDER = 10  # 20 messages per patient, in sequence
KILL_AFTER_ACKS = 300  # of 800: mid-run
LEASE_TIMEOUT_S = 3.0
DEADLINE_S = 180.0


def control_id(sender: int, n: int) -> str:
    """S<sender>P<patient>Q<sequence>: the patient's n-th message carries sequence n // patients."""
    return f"S{sender}P{n % PATIENTS_PER_SENDER:02d}Q{n // PATIENTS_PER_SENDER:03d}"


def patient_and_seq(cid: str) -> tuple[str, int]:
    patient, seq = cid.split("Q")
    return patient, int(seq)


def message(sender: int, n: int) -> bytes:
    cid = control_id(sender, n)
    patient, _ = patient_and_seq(cid)
    return adt_a01(cid, mrn=f"MRN{patient}").encode()  # PID-3 is the ordering key


def write_engine_config(directory: Path, *, url: str, name: str, mllp_port: int, admin_port: int) -> Path:
    config = directory / f"engine-{name}.yaml"
    config.write_text(
        f"""store:
  url: {url}
  lease_timeout_s: {LEASE_TIMEOUT_S}
  instance_id: engine-{name}
  pool_max: 4
admin:
  listen: 127.0.0.1:{admin_port}
channels:
  - name: adt
    listen: 127.0.0.1:{mllp_port}
    ack: on_commit
    ordering: {{key: PID-3}}
    pipeline:
      - type: v2_to_fhir
        fhir_version: R4B
    sinks:
      - type: file
        path: {directory / f'out-{name}.ndjson'}
""",
        encoding="utf-8",
    )
    return config


@dataclass
class Instance:
    name: str
    mllp_port: int
    process: EngineProcess
    out: Path


@dataclass
class Progress:
    """AAs counted over all senders; `reached` is set once `target` of them arrived."""

    target: int
    count: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)

    def ack(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()


@dataclass
class Sender:
    """Sends its messages in order, each to the next instance in turn, waiting for its AA.

    When an instance does not answer (killed, restarting) the same message goes to the
    other one, as behind a load balancer, so a patient's sequence stays causal.
    """

    number: int
    ports: tuple[int, int]
    progress: Progress
    acked: list[str] = field(default_factory=list)
    _streams: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=dict)

    async def _send(self, port: int, payload: bytes) -> bytes | None:
        try:
            if port not in self._streams:
                self._streams[port] = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            reader, writer = self._streams[port]
            writer.write(frame(payload))
            await writer.drain()
            return await read_frame(reader, timeout=10.0)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            stream = self._streams.pop(port, None)
            if stream is not None:
                stream[1].close()
            return None

    async def run(self, stop_at: float) -> None:
        for n in range(MESSAGES_PER_SENDER):
            cid, payload = control_id(self.number, n), message(self.number, n)
            target = n % 2
            while time.monotonic() < stop_at:
                ack = await self._send(self.ports[target], payload)
                if ack is not None and msa(ack)[:2] == ["AA", cid]:
                    self.acked.append(cid)
                    self.progress.ack()
                    break
                target = 1 - target  # that instance is down: the load balancer tries the other
                if ack is None:
                    await asyncio.sleep(0.02)  # both may be down for a moment; bounded by stop_at
            else:
                return
        for _, writer in self._streams.values():
            writer.close()


def first_deliveries(path: Path) -> list[str]:
    """Control ids (Bundle.identifier = MSH-10) in the order they first appear in a sink file."""
    seen: dict[str, None] = {}
    if path.exists():
        for line in path.read_bytes().split(b"\n")[:-1]:  # whole lines only
            seen.setdefault(json.loads(line)["identifier"]["value"], None)
    return list(seen)


async def unfinished(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        count = await conn.fetchval(
            "SELECT COUNT(*) FROM messages WHERE status IN ('received', 'processing', 'retry')"
        )
        return int(count)
    finally:
        await conn.close()


async def stored_per_control_id(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch("SELECT control_id, COUNT(*) FROM messages GROUP BY control_id")
    finally:
        await conn.close()
    return {r[0]: int(r[1]) for r in rows}


@pytest.fixture
def database() -> Iterator[str]:
    """A database of this test's own (the engines use its default schema)."""
    with scratch_database(require_server()) as url:
        yield url


class TestTwoEnginesOnePostgres:
    async def test_sigkill_of_one_instance_loses_nothing_and_keeps_patient_order(
        self, tmp_path: Path, database: str
    ) -> None:
        """4 senders x 200 messages over two instances, one SIGKILLed and restarted: all AA'd delivered, in order."""
        instances = []
        for name in ("a", "b"):
            mllp_port, admin_port = free_port(), free_port()
            config = write_engine_config(tmp_path, url=database, name=name, mllp_port=mllp_port,
                                         admin_port=admin_port)
            process = EngineProcess(config, admin_port, tmp_path / f"engine-{name}.log")
            instances.append(Instance(name, mllp_port, process, tmp_path / f"out-{name}.ndjson"))
        a, b = instances
        stop_at = time.monotonic() + DEADLINE_S
        try:
            a.process.start()
            await asyncio.to_thread(a.process.wait_ready, 60)  # a creates the schema
            await install_order_audit(database)
            b.process.start()
            await asyncio.to_thread(b.process.wait_ready, 60)

            progress = Progress(KILL_AFTER_ACKS)
            senders = [Sender(i, (a.mllp_port, b.mllp_port), progress) for i in range(SENDERS)]
            traffic = asyncio.gather(*(s.run(stop_at) for s in senders))
            await asyncio.wait_for(progress.reached.wait(), timeout=DEADLINE_S / 2)
            a.process.kill()  # SIGKILL mid-run: in-flight leases and unACKed frames die with it
            killed_at = progress.count
            a.process.start()
            await asyncio.to_thread(a.process.wait_ready, 60)
            await asyncio.wait_for(traffic, timeout=max(1.0, stop_at - time.monotonic()))

            acked = [cid for s in senders for cid in s.acked]
            assert SENDERS * MESSAGES_PER_SENDER == len(acked), "senders must finish within the deadline"
            assert killed_at < len(acked), "the kill must happen mid-run"

            # Drained: nothing unfinished in the store and every AA'd message in a sink file.
            while time.monotonic() < stop_at:
                delivered = set(first_deliveries(a.out)) | set(first_deliveries(b.out))
                if set(acked) <= delivered and await unfinished(database) == 0:
                    break
                await asyncio.sleep(0.2)
            delivered = set(first_deliveries(a.out)) | set(first_deliveries(b.out))
            missing = set(acked) - delivered
            assert not missing, f"{len(missing)} AA'd messages never reached a sink"
            assert 0 == await unfinished(database)

            # Resends through the other instance were deduplicated: one row per control id.
            assert {1} == set((await stored_per_control_id(database)).values())

            # Order, half 1: within each instance's file, each patient's messages first
            # appear in sequence order.
            for instance in instances:
                last: dict[str, int] = {}
                for cid in first_deliveries(instance.out):
                    patient, seq = patient_and_seq(cid)
                    assert seq > last.get(patient, -1), f"{instance.name}: {cid} delivered after a later one"
                    last[patient] = seq
            # Order, half 2: no lease by either instance ever overtook an unfinished
            # earlier message of the same patient.
            assert [] == await order_violations(database)
            # Both instances did real work.
            assert first_deliveries(a.out) and first_deliveries(b.out)
        finally:
            for instance in instances:
                with contextlib.suppress(Exception):
                    if instance.process.proc is not None and instance.process.proc.poll() is None:
                        instance.process.terminate(timeout=30)
                instance.process.kill()
