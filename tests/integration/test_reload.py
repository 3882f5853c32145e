"""Hot reload: changed channels swap under open connections; a bad config changes nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from engine.app import Engine
from engine.config.loader import load_config
from engine.types import ConfigError
from tests.support.engine_proc import EngineProcess, free_port, write_config
from tests.support.messages import adt_a01
from tests.support.mllp import exchange, frame, msa, read_frame


def channel_yaml(tmp: Path, name: str, *, fhir_version: str = "R4B", port: int = 0) -> str:
    return f"""  - name: {name}
    listen: 127.0.0.1:{port}
    pipeline:
      - type: v2_to_fhir
        fhir_version: {fhir_version}
    sinks:
      - type: file
        path: {tmp / (name + '.ndjson')}
"""


def write(tmp: Path, channels: str) -> Path:
    path = tmp / "engine.yaml"
    path.write_text(f"store:\n  path: {tmp / 'store.db'}\nadmin:\n  listen: 127.0.0.1:0\nworkers: 0\n"
                    f"channels:\n{channels}", encoding="utf-8")
    return path


def versions(tmp: Path) -> list[str]:
    db = sqlite3.connect(tmp / "store.db")
    try:
        return [row[0] for row in db.execute("SELECT channel_version FROM messages ORDER BY id")]
    finally:
        db.close()


@pytest.fixture
async def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = write(tmp_path, channel_yaml(tmp_path, "adt"))
    running = Engine(load_config(path), config_path=path)
    await running.start()
    yield running
    await running.stop(5)


class TestReload:
    async def test_changed_channel_swaps_without_dropping_the_connection(self, engine: Engine, tmp_path: Path) -> None:
        """A pipeline change applies to the next message on an already open connection."""
        port = engine.channels["adt"].server.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(frame(adt_a01("R1").encode()))
        assert "AA" == msa(await read_frame(reader))[0]
        write(tmp_path, channel_yaml(tmp_path, "adt", fhir_version="R5"))
        changes = await engine.reload()
        assert ["adt"] == changes["changed"]
        writer.write(frame(adt_a01("R2").encode()))
        assert ["AA", "R2"] == msa(await read_frame(reader))[:2]
        writer.close()
        first, second = versions(tmp_path)
        assert first != second, "each stored message records the channel version it arrived under"
        assert engine.channels["adt"].config.version == second

    async def test_added_and_removed_channels(self, engine: Engine, tmp_path: Path) -> None:
        """A new channel starts listening; a removed one stops; others are untouched."""
        old_server = engine.channels["adt"].server
        write(tmp_path, channel_yaml(tmp_path, "adt") + channel_yaml(tmp_path, "lab"))
        changes = await engine.reload()
        assert ["lab"] == changes["added"] and ["adt"] == changes["unchanged"]
        assert engine.channels["adt"].server is old_server
        lab_port = engine.channels["lab"].server.port
        assert "AA" == msa(await exchange("127.0.0.1", lab_port, adt_a01("L1").encode()))[0]
        write(tmp_path, channel_yaml(tmp_path, "adt"))
        changes = await engine.reload()
        assert ["lab"] == changes["removed"]
        with pytest.raises(OSError):
            await exchange("127.0.0.1", lab_port, adt_a01("L2").encode(), timeout=2)

    async def test_invalid_config_is_refused_whole(self, engine: Engine, tmp_path: Path) -> None:
        """A config that fails validation raises with file:line:col and the engine keeps going."""
        before = engine.channels["adt"].config.version
        path = write(tmp_path, channel_yaml(tmp_path, "adt").replace("pipeline:", "pipelin:"))
        with pytest.raises(ConfigError) as info:
            await engine.reload()
        assert any(f.startswith(f"{path}:") and "did you mean 'pipeline'" in f for f in info.value.findings)
        assert before == engine.channels["adt"].config.version
        port = engine.channels["adt"].server.port
        assert "AA" == msa(await exchange("127.0.0.1", port, adt_a01("K1").encode()))[0]

    async def test_reload_through_the_admin_api(self, engine: Engine, tmp_path: Path) -> None:
        """POST /api/reload applies the file; the channel list shows the new version."""
        assert engine.admin is not None
        write(tmp_path, channel_yaml(tmp_path, "adt", fhir_version="R5"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{engine.admin.port}") as client:
            response = await client.post("/api/reload")
            assert 200 == response.status_code
            channels = (await client.get("/api/channels")).json()["channels"]
        assert "R5" == channels[0]["config"]["pipeline"][0]["fhir_version"]


class TestSighupAndDiff:
    def test_sighup_reloads_and_validate_diff_shows_the_change(self, tmp_path: Path) -> None:
        """`validate --diff` names the changed keys; SIGHUP then applies them in the running engine."""
        import subprocess
        import sys

        from tests.support.engine_proc import REPO

        mllp_port, admin_port = free_port(), free_port()
        config = write_config(tmp_path, mllp_port=mllp_port, admin_port=admin_port)
        engine = EngineProcess(config, admin_port, tmp_path / "engine.log")
        engine.start()
        try:
            engine.wait_ready()
            config.write_text(config.read_text().replace("fhir_version: R4B", "fhir_version: R5"))
            diff = subprocess.run([sys.executable, "-m", "engine", "validate", "-c", str(config), "--diff"],
                                  cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
            assert 0 == diff.returncode, diff.stdout + diff.stderr
            assert "~ adt: pipeline (connections kept)" in diff.stdout
            assert engine.proc is not None
            engine.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                channels = httpx.get(f"http://127.0.0.1:{admin_port}/api/channels").json()["channels"]
                if channels[0]["config"]["pipeline"][0]["fhir_version"] == "R5":
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("SIGHUP did not reload the config")
            events = [json.loads(x)["event"] for x in (tmp_path / "engine.log").read_text().splitlines()
                      if x.startswith("{")]
            assert "config_reloaded" in events
        finally:
            assert 0 == engine.terminate()
