"""Two engine processes on one PostgreSQL database, one of them SIGKILLed mid-run (issue #4).

What it proves (DESIGN.md §5.1-2, §5.5 across instances):
- every message an instance answered AA reaches a sink at least once (the union of the
  two instances' file sinks), including the messages the killed instance was working on:
  it is killed while it holds leases, and the survivor takes them over once they expire
  (before the killed instance restarts); only those may be delivered twice;
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
import signal
import time
from collections import Counter
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


async def start_instance(directory: Path, url: str, name: str) -> Instance:
    """Start one engine on free ports and wait until it is ready.

    A port found free can be taken by another process before the engine binds it (other
    test runs share the machine): then the engine exits, and it is tried again on new
    ports (at most three times).
    """
    for attempt in range(3):
        mllp_port, admin_port = free_port(), free_port()
        config = write_engine_config(directory, url=url, name=name, mllp_port=mllp_port, admin_port=admin_port)
        process = EngineProcess(config, admin_port, directory / f"engine-{name}.log")
        process.start()
        try:
            await asyncio.to_thread(process.wait_ready, 60)
        except RuntimeError:  # exited before ready
            if attempt == 2:
                raise
            continue
        return Instance(name, mllp_port, process, directory / f"out-{name}.ndjson")
    raise AssertionError("unreachable")


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


def delivery_lines(path: Path) -> list[str]:
    """Control ids (Bundle.identifier = MSH-10) of a sink file's lines, in file order."""
    if not path.exists():
        return []
    # Whole lines only: the sink may be half-way through a write right now.
    return [json.loads(line)["identifier"]["value"] for line in path.read_bytes().split(b"\n")[:-1]]


def first_deliveries(path: Path) -> list[str]:
    """Control ids in the order they first appear in a sink file."""
    return list(dict.fromkeys(delivery_lines(path)))


async def leases_of(conn: asyncpg.Connection, instance_id: str) -> dict[int, str]:
    rows = await conn.fetch(
        "SELECT id, control_id FROM messages WHERE status = 'processing' AND leased_by = $1", instance_id
    )
    return {r[0]: r[1] for r in rows}


async def kill_while_holding_leases(process: EngineProcess, url: str, *, instance_id: str) -> dict[int, str]:
    """SIGKILL `process` at a moment it holds leases; returns them (id -> control id).

    A batch is in flight for milliseconds, so: poll until the instance holds leases,
    freeze it (SIGSTOP), let statements already sent settle, check it still holds
    them (else thaw and try again), SIGKILL.
    """
    assert process.proc is not None
    conn = await asyncpg.connect(url, timeout=10)
    try:
        deadline = time.monotonic() + 30
        for _ in range(20_000):  # bounded: at these rates leases show up within a second
            if time.monotonic() > deadline:
                break
            if await leases_of(conn, instance_id):
                process.proc.send_signal(signal.SIGSTOP)
                # A frozen process sends nothing new, but a COMMIT it sent just before
                # the stop may still be landing at the server: let it land before
                # reading, or a message completed by this instance counts as held.
                await asyncio.sleep(0.05)  # loopback: bytes already sent arrive well within this
                held = await leases_of(conn, instance_id)
                if held:
                    process.kill()
                    return held
                process.proc.send_signal(signal.SIGCONT)
        raise AssertionError(f"{instance_id} never held a lease to be killed with")
    finally:
        await conn.close()


async def attempts_of(url: str, ids: dict[int, str]) -> dict[int, tuple[str, int]]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch("SELECT id, status, attempts FROM messages WHERE id = ANY($1::bigint[])", list(ids))
    finally:
        await conn.close()
    return {r[0]: (r[1], r[2]) for r in rows}


async def taken_over(url: str, held: dict[int, str], timeout: float) -> bool:
    """True once none of `held` is still processing under the dead instance's lease."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = await conn.fetch(
                "SELECT count(*) FROM messages WHERE id = ANY($1::bigint[]) AND status = 'processing'"
                " AND leased_by = 'engine-a'", list(held),
            )
            if rows[0][0] == 0:
                return True
            await asyncio.sleep(0.1)
        return False
    finally:
        await conn.close()


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
        instances: list[Instance] = []
        stop_at = time.monotonic() + DEADLINE_S
        try:
            instances.append(await start_instance(tmp_path, database, "a"))  # a creates the schema
            await install_order_audit(database)
            instances.append(await start_instance(tmp_path, database, "b"))
            a, b = instances

            progress = Progress(KILL_AFTER_ACKS)
            senders = [Sender(i, (a.mllp_port, b.mllp_port), progress) for i in range(SENDERS)]
            traffic = asyncio.gather(*(s.run(stop_at) for s in senders))
            await asyncio.wait_for(progress.reached.wait(), timeout=DEADLINE_S / 2)
            # SIGKILL mid-run while a holds leases: its in-flight messages and unACKed
            # frames die with it. b must take those messages over once the leases expire.
            held = await kill_while_holding_leases(a.process, database, instance_id="engine-a")
            killed_at = progress.count
            assert await taken_over(database, held, timeout=LEASE_TIMEOUT_S * 10), "b never took a's leases over"
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
            stored = await stored_per_control_id(database)
            assert {1} == set(stored.values())
            # b leased a's in-flight messages again (a second attempt) and finished them.
            assert {"done"} == {status for status, _ in (await attempts_of(database, held)).values()}
            assert min(n for _, n in (await attempts_of(database, held)).values()) >= 2
            # At least once, and more than once only for what a held when it died.
            lines = Counter(cid for instance in instances for cid in delivery_lines(instance.out))
            repeated = {cid for cid, count in lines.items() if count > 1}
            assert repeated <= set(held.values()), "only messages in flight at the kill may be delivered twice"

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
