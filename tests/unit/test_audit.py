"""The audit trail: append-only, hash-chained, and any edit is found with its line."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from engine.obs.audit import AuditTrail, verify


def _append_many(path: str, who: str, count: int) -> None:
    trail = AuditTrail(Path(path))
    for i in range(count):
        trail.append({"event": "message_content_viewed", "actor": who, "message_id": i})


class TestAuditTrail:
    def test_entries_chain_and_verify(self, tmp_path: Path) -> None:
        """Appended entries are numbered, chained to their predecessor and verify."""
        trail = AuditTrail(tmp_path / "audit.log")
        first = trail.append({"event": "message_content_viewed", "message_id": 1})
        second = trail.append({"event": "messages_replayed", "count": 3})
        assert (0, 1) == (first["seq"], second["seq"])
        assert first["hash"] == second["prev"]
        result = verify(tmp_path / "audit.log")
        assert result.ok and 2 == result.entries

    def test_an_edited_line_is_reported(self, tmp_path: Path) -> None:
        """Changing one field of one entry breaks verification at that line."""
        path = tmp_path / "audit.log"
        trail = AuditTrail(path)
        for i in range(5):
            trail.append({"event": "message_content_viewed", "message_id": i})
        lines = path.read_text().splitlines()
        entry = json.loads(lines[2])
        entry["message_id"] = 99
        lines[2] = json.dumps(entry)
        path.write_text("\n".join(lines) + "\n")
        result = verify(path)
        assert (False, 3) == (result.ok, result.line)
        assert "hash" in result.reason

    def test_a_removed_line_is_reported(self, tmp_path: Path) -> None:
        """Deleting an entry breaks the sequence at the line after the gap."""
        path = tmp_path / "audit.log"
        trail = AuditTrail(path)
        for i in range(4):
            trail.append({"event": "e", "n": i})
        lines = path.read_text().splitlines()
        del lines[1]
        path.write_text("\n".join(lines) + "\n")
        assert 2 == verify(path).line

    def test_two_processes_append_to_one_chain(self, tmp_path: Path) -> None:
        """The engine and a CLI command writing at once still produce one valid chain."""
        path = tmp_path / "audit.log"
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_append_many, args=(str(path), who, 25)) for who in ("a", "b")]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        result = verify(path)
        assert result.ok and 50 == result.entries
