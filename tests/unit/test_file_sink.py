"""The NDJSON file sink: one line per Bundle, idempotent across crashes, no torn lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.sinks.file import FileSink
from engine.types import Exchange, PermanentError, Status, StoredMessage, TransientError


def exchange(message_id: int, bundle: dict[str, object] | None = None) -> Exchange:
    message = StoredMessage(
        id=message_id, channel="adt", raw=b"MSH|", received_at=0.0, status=Status.PROCESSING, attempts=1,
        sender="", control_id="", message_type="ADT^A01", charset="utf-8",
    )
    if bundle is None:
        # As the runner makes it: Bundle.id set last, naming the stored message.
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"id": "x"}}],
                  "id": f"adt-{message_id}"}
    return Exchange(message=message, text="", output=bundle)


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_bytes().split(b"\n")[:-1]]


class TestFileSink:
    async def test_restart_learns_ids_across_many_chunks(self, tmp_path: Path) -> None:
        """Ids are recognised after a restart even when lines are long and span read chunks."""
        path = tmp_path / "a.ndjson"
        sink = FileSink("file", path)
        await sink.start()
        big = [exchange(i, {"resourceType": "Bundle", "entry": [{"resource": {"text": "x" * 70_000}}],
                            "id": f"adt-{i}"}) for i in range(1, 30)]
        await sink.deliver_many(big)
        await sink.close()
        again = FileSink("file", path)
        await again.start()
        await again.deliver_many([exchange(5), exchange(29), exchange(30)])
        await again.close()
        assert [f"adt-{i}" for i in range(1, 31)] == [x["id"] for x in lines(path)]

    async def test_one_line_per_bundle_in_order(self, tmp_path: Path) -> None:
        """A batch becomes one line per Bundle, in the batch's order."""
        sink = FileSink("file", tmp_path / "out" / "a.ndjson")
        await sink.start()
        results = await sink.deliver_many([exchange(1), exchange(2), exchange(3)])
        await sink.close()
        assert [None, None, None] == results
        assert ["adt-1", "adt-2", "adt-3"] == [x["id"] for x in lines(tmp_path / "out" / "a.ndjson")]

    async def test_redelivery_after_restart_is_skipped(self, tmp_path: Path) -> None:
        """A message delivered before a crash is recognised by Bundle.id and not written again."""
        path = tmp_path / "a.ndjson"
        sink = FileSink("file", path)
        await sink.start()
        await sink.deliver_many([exchange(1), exchange(2)])
        await sink.close()
        again = FileSink("file", path)
        await again.start()
        results = await again.deliver_many([exchange(2), exchange(3)])
        await again.close()
        assert [None, None] == results
        assert ["adt-1", "adt-2", "adt-3"] == [x["id"] for x in lines(path)]

    async def test_torn_last_line_is_cut_on_start(self, tmp_path: Path) -> None:
        """A half-written line (crash mid-write) is removed, then written whole on redelivery."""
        path = tmp_path / "a.ndjson"
        sink = FileSink("file", path)
        await sink.start()
        await sink.deliver_many([exchange(1)])
        await sink.close()
        with path.open("ab") as handle:
            handle.write(b'{"resourceType":"Bundle","id":"adt-2","ent')
        again = FileSink("file", path)
        await again.start()
        await again.deliver_many([exchange(2)])
        await again.close()
        assert ["adt-1", "adt-2"] == [x["id"] for x in lines(path)]

    async def test_missing_output_is_permanent(self, tmp_path: Path) -> None:
        """An exchange without FHIR output is a permanent failure; the others are written."""
        sink = FileSink("file", tmp_path / "a.ndjson")
        await sink.start()
        empty = exchange(1)
        empty.output = None
        results = await sink.deliver_many([empty, exchange(2)])
        await sink.close()
        assert isinstance(results[0], PermanentError)
        assert results[1] is None

    async def test_failed_write_leaves_no_partial_batch(self, tmp_path: Path) -> None:
        """When the disk refuses a write, the file is cut back so the retry writes the batch whole."""
        path = tmp_path / "a.ndjson"
        sink = FileSink("file", path)
        await sink.start()
        await sink.deliver_many([exchange(1)])
        size = path.stat().st_size
        fd = sink._fd
        assert fd is not None
        real_fsync = os.fsync
        calls = {"n": 0}

        def failing_fsync(target: int) -> None:
            if target == fd and calls["n"] == 0:
                calls["n"] += 1
                raise OSError(28, "No space left on device")  # ENOSPC at the flush
            real_fsync(target)

        os.fsync = failing_fsync  # type: ignore[assignment]
        try:
            results = await sink.deliver_many([exchange(2), exchange(3)])
        finally:
            os.fsync = real_fsync
        assert all(isinstance(r, TransientError) for r in results)
        assert size == path.stat().st_size
        assert [None, None] == await sink.deliver_many([exchange(2), exchange(3)])
        await sink.close()
        assert ["adt-1", "adt-2", "adt-3"] == [x["id"] for x in lines(path)]
