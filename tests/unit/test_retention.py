"""Retention: each channel's finished messages are pruned by its own setting, nothing else."""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.app import prune_finished
from engine.config.loader import load_config
from engine.store.sqlite import SQLiteStore
from engine.types import Inbound, MessageQuery, Status

DAY = 86400.0


def inbound(channel: str, cid: str, at: float) -> Inbound:
    raw = f"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|{cid}|P|2.5.1\r".encode()
    return Inbound(channel=channel, raw=raw, received_at=at, sender="A|B", control_id=cid,
                   content_hash=hashlib.sha256(raw).hexdigest(), message_type="ADT^A01", charset="utf-8",
                   ack=b"ACK")


class TestRetention:
    async def test_channel_override_and_default(self, tmp_path: Path) -> None:
        """A channel with done_days 1 loses 2-day-old done rows; the default (30) keeps them;
        dead and unfinished rows are never pruned."""
        config_path = tmp_path / "engine.yaml"
        config_path.write_text(f"""store:
  path: {tmp_path / 's.db'}
channels:
  - name: short
    listen: 127.0.0.1:0
    retention: {{done_days: 1}}
    sinks: [{{type: file, path: {tmp_path / 'a.ndjson'}}}]
  - name: normal
    listen: 127.0.0.1:0
    sinks: [{{type: file, path: {tmp_path / 'b.ndjson'}}}]
""")
        config = load_config(config_path)
        clock = [1_000_000.0]
        store = SQLiteStore(tmp_path / "s.db", clock=lambda: clock[0])
        await store.open()
        try:
            results = await store.ingest([inbound("short", "S1", clock[0]), inbound("short", "S2", clock[0]),
                                          inbound("short", "S3", clock[0]), inbound("normal", "N1", clock[0])])
            s1, s2, _s3, n1 = (r.message_id for r in results)
            await store.lease("short", 10, clock[0])
            await store.lease("normal", 10, clock[0])
            await store.complete(s1)
            await store.dead_letter(s2, "HTTP 400")
            await store.complete(n1)
            clock[0] += 2 * DAY
            removed = await prune_finished(store, config, clock[0])
            remaining = {m.control_id: m.status for m in await store.query(MessageQuery(limit=100))}
        finally:
            await store.close()
        assert 1 == removed
        assert {"S2": Status.DEAD, "S3": Status.PROCESSING, "N1": Status.DONE} == remaining
