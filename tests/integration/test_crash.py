"""kill -9 at random moments loses no acknowledged message (DESIGN.md §5, invariants 1 and 2)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.engine_proc import EngineProcess, free_port, write_config
from tests.support.messages import adt_a01
from tests.support.mllp import frame, msa, read_frame

pytestmark = pytest.mark.slow

KILLS = 20
SENDERS = 4
MESSAGES_PER_SENDER = 150
OVERALL_DEADLINE_S = 240.0


class Sender:
    """Sends its numbered messages in order, resending each until it gets an AA, as a
    real EHR interface does. Records what was acknowledged and what was sent but not."""

    def __init__(self, port: int, sender_no: int) -> None:
        self.port = port
        self.sender_no = sender_no
        self.acked: set[str] = set()
        self.unacked_sends: set[str] = set()  # sent at least once without getting an ACK

    def control_id(self, n: int) -> str:
        return f"S{self.sender_no}N{n:05d}"

    async def run(self, stop_at: float) -> None:
        n = 0
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while n < MESSAGES_PER_SENDER and time.monotonic() < stop_at:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.02)  # engine is restarting; reconnect as senders do
                    continue
            assert reader is not None
            cid = self.control_id(n)
            payload = adt_a01(cid, mrn=f"MRN{self.sender_no}{n:05d}").encode()
            try:
                writer.write(frame(payload))
                await writer.drain()
                ack = await read_frame(reader, timeout=5.0)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                self.unacked_sends.add(cid)
                writer.close()
                writer = None
                continue
            fields = msa(ack)
            assert fields[1] == cid, "MSA-2 must echo MSH-10"
            if fields[0] == "AA":
                self.acked.add(cid)
                n += 1
            else:
                self.unacked_sends.add(cid)
        if writer is not None:
            writer.close()


def sink_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    # Only whole lines: the sink may be half-way through a write right now.
    return [json.loads(line)["id"] for line in path.read_bytes().split(b"\n")[:-1]]


async def test_sigkill_loses_no_acknowledged_message(tmp_path: Path) -> None:
    """Every AA'd message survives 20 SIGKILLs and reaches the file sink exactly once."""
    mllp_port, admin_port = free_port(), free_port()
    config = write_config(tmp_path, mllp_port=mllp_port, admin_port=admin_port, channel="crash")
    engine = EngineProcess(config, admin_port, tmp_path / "engine.log")
    rng = random.Random(20261125)
    stop_at = time.monotonic() + OVERALL_DEADLINE_S
    senders = [Sender(mllp_port, i) for i in range(SENDERS)]

    engine.start()
    await asyncio.to_thread(engine.wait_ready)
    traffic = asyncio.gather(*(s.run(stop_at) for s in senders))
    kills = 0
    try:
        while kills < KILLS and time.monotonic() < stop_at:
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            engine.kill()
            kills += 1
            engine.start()
            await asyncio.to_thread(engine.wait_ready)
        await asyncio.wait_for(traffic, timeout=max(1.0, stop_at - time.monotonic()))
    finally:
        if not traffic.done():
            traffic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await traffic

    acked = set().union(*(s.acked for s in senders))
    assert kills == KILLS
    assert len(acked) == SENDERS * MESSAGES_PER_SENDER, "senders must finish within the deadline"

    # Every acknowledged message is in the store, with its bytes exactly as sent.
    db = sqlite3.connect(tmp_path / "store.db")
    rows = db.execute("SELECT id, control_id, raw FROM messages WHERE channel = 'crash'").fetchall()
    by_control: dict[str, list[tuple[int, bytes]]] = {}
    for message_id, control_id, raw in rows:
        by_control.setdefault(control_id, []).append((message_id, raw))
    missing = acked - by_control.keys()
    assert not missing, f"{len(missing)} acknowledged messages are not in the store"
    for cid in acked:
        sender_no, n = int(cid[1]), int(cid.split("N")[1])
        expected = adt_a01(cid, mrn=f"MRN{sender_no}{n:05d}").encode()
        assert any(raw == expected for _, raw in by_control[cid])
        # Resends of a stored message are deduplicated, so each control id is stored once.
        assert len(by_control[cid]) == 1

    # Once drained, every stored message is in the sink; duplicates only for unacked sends.
    deadline = time.monotonic() + 60
    expected_ids = {f"crash-{mid}" for mid, _, _ in rows}
    while time.monotonic() < deadline:
        present = set(sink_ids(tmp_path / "out.ndjson"))
        if expected_ids <= present:
            break
        await asyncio.sleep(0.2)
    ids = sink_ids(tmp_path / "out.ndjson")
    assert expected_ids <= set(ids), f"{len(expected_ids - set(ids))} stored messages never reached the sink"
    duplicated = {i for i in ids if ids.count(i) > 1}
    id_to_control = {f"crash-{mid}": cid for mid, cid, _ in rows}
    unacked = set().union(*(s.unacked_sends for s in senders))
    assert {id_to_control[i] for i in duplicated} <= unacked
    db.close()
    assert engine.terminate() == 0
