"""The engine process imports only what its config uses (issue #6: memory and start-up).

Sink client libraries and the mapping code cost tens of MB per process. Registering a
plugin and validating a config must not load them; building a sink that needs one must.
Each test runs a fresh interpreter, because this one has long since imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 120.0

#: Loaded only by a config that uses them: sink clients, and the mapping (stage workers).
CLIENT_LIBRARIES = ("aiokafka", "nats", "httpx", "jwt")
MAPPING = "channels.mappers.convert"

#: The benchmark's engine (bench/engine_proc.py): SQLite, admin API, one channel with
#: v2_to_fhir and a file sink, stage workers as configured by default.
BENCH_LIKE = """\
store:
  path: {dir}/store.db
admin:
  listen: 127.0.0.1:0
channels:
  - name: bench
    listen: 127.0.0.1:0
    ack: on_commit
    pipeline:
      - type: v2_to_fhir
        fhir_version: R4B
    sinks:
      - type: file
        path: {dir}/out.ndjson
"""

#: Every sink with a client library; nothing listens on these ports (nothing connects).
BROKER_SINKS = """\
store:
  path: {dir}/store.db
channels:
  - name: brokers
    listen: 127.0.0.1:0
    pipeline:
      - type: v2_to_fhir
    sinks:
      - type: kafka
        bootstrap_servers: 127.0.0.1:9
        topic: fhir
      - type: nats
        servers: [nats://127.0.0.1:9]
      - type: fhir
        base_url: http://127.0.0.1:9/fhir
"""

# Each child reads the config path (argv[1]) and writes a JSON result to argv[2]: its
# stdout is not ours to parse (an unconfigured structlog prints there).
START_IDLE_ENGINE = """
import asyncio, json, sys
from pathlib import Path
from engine.app import Engine
from engine.config.loader import load_config

async def main():
    engine = Engine(load_config(Path(sys.argv[1])))
    await engine.start()
    try:
        return {"ready": engine.is_ready()[0], "modules": sorted(sys.modules)}
    finally:
        await engine.stop(deadline_s=10.0)

Path(sys.argv[2]).write_text(json.dumps(asyncio.run(main())))
"""

BUILD_SINKS = """
import json, sys
from pathlib import Path
from engine.app import build_sinks
from engine.config.loader import load_config
from engine.registry import BuildContext, default_registry

config = load_config(Path(sys.argv[1]))
validated = sorted(sys.modules)
channel = config.channels[0]
sinks = build_sinks(channel, default_registry(), BuildContext(channel.name, config.base_dir))
Path(sys.argv[2]).write_text(json.dumps({
    "validated": validated,
    "built": sorted(sys.modules),
    "sinks": sorted(f"{type(s).__module__}.{type(s).__qualname__}" for s in sinks),
}))
"""

RUN_STAGE = """
import json, sys, time
from pathlib import Path
from engine.app import build_stages
from engine.config.loader import load_config
from engine.registry import BuildContext, default_registry
from engine.types import Exchange, Status, StoredMessage
from tests.support.messages import adt_a01

config = load_config(Path(sys.argv[1]))
channel = config.channels[0]
stages = build_stages(channel, default_registry(), BuildContext(channel.name, config.base_dir))
built = sorted(sys.modules)
text = adt_a01()
message = StoredMessage(
    id=1, channel=channel.name, raw=text.encode(), received_at=time.time(), status=Status.PROCESSING,
    attempts=1, sender="", control_id="MSG00001", message_type="ADT^A01^ADT_A01", charset="utf-8",
)
exchange = Exchange(message, text=text)
for stage in stages:
    exchange = stage.process(exchange)
Path(sys.argv[2]).write_text(json.dumps({
    "built": built,
    "processed": sorted(sys.modules),
    "resource_types": [e["resource"]["resourceType"] for e in exchange.output["entry"]],
}))
"""


def run_child(code: str, config: str, tmp_path: Path) -> dict[str, Any]:
    """Run `code` in a fresh interpreter on `config` (formatted with {dir}); its JSON result."""
    config_path = tmp_path / "engine.yaml"
    config_path.write_text(config.format(dir=tmp_path), encoding="utf-8")
    result_path = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", code, str(config_path), str(result_path)],
        cwd=REPO, env=env, capture_output=True, timeout=CHILD_TIMEOUT_S, check=False,
    )
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")[-3000:]
    result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    return result


def loaded(modules: list[str], names: tuple[str, ...]) -> list[str]:
    """Which of `names` (top-level packages or exact modules) appear in `modules`."""
    present = set(modules)
    return [name for name in names if name in present]


@pytest.fixture(scope="module")
def idle_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What a started bench-like engine process has loaded (one child for the module)."""
    return run_child(START_IDLE_ENGINE, BENCH_LIKE, tmp_path_factory.mktemp("idle"))


@pytest.fixture(scope="module")
def broker_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What validating, then building, kafka, nats and fhir sinks loads (one child for the module)."""
    return run_child(BUILD_SINKS, BROKER_SINKS, tmp_path_factory.mktemp("brokers"))


class TestIdleEngine:
    def test_engine_started(self, idle_run: dict[str, Any]) -> None:
        """The child engine reached ready, so what it loaded is what serving needs."""
        assert idle_run["ready"] is True

    def test_bench_config_loads_no_sink_client_nor_mapping(self, idle_run: dict[str, Any]) -> None:
        """An engine with a file sink and stage workers has no sink client library or mapping code loaded."""
        assert [] == loaded(idle_run["modules"], (*CLIENT_LIBRARIES, MAPPING))

    def test_no_encryption_configured_no_cryptography(self, idle_run: dict[str, Any]) -> None:
        """`cryptography` (~6 MB) is for `encryption:` at rest; a store without it never loads it."""
        assert [] == loaded(idle_run["modules"], ("cryptography",))

    def test_admin_server_does_not_need_httpx(self, idle_run: dict[str, Any]) -> None:
        """The admin API serves with aiohttp: it is loaded, httpx is not."""
        assert ["aiohttp"] == loaded(idle_run["modules"], ("aiohttp", "httpx"))


class TestSinkClients:
    def test_validating_a_config_loads_no_client(self, broker_run: dict[str, Any]) -> None:
        """Validating kafka, nats and fhir sink configs needs only their config models."""
        assert [] == loaded(broker_run["validated"], CLIENT_LIBRARIES)

    @pytest.mark.parametrize("library", ["aiokafka", "nats", "httpx"])
    def test_building_the_sink_loads_its_client(self, broker_run: dict[str, Any], library: str) -> None:
        """Building each sink (without connecting) loads its client library."""
        assert [library] == loaded(broker_run["built"], (library,))

    def test_built_sinks_are_the_client_implementations(self, broker_run: dict[str, Any]) -> None:
        """The factories hand back the sink classes of the *_client modules."""
        assert [
            "engine.sinks.fhir_http_client.FhirSink",
            "engine.sinks.kafka_client.KafkaSink",
            "engine.sinks.nats_client.NatsSink",
        ] == broker_run["sinks"]

    def test_fhir_sink_without_jwt_assertion_never_loads_pyjwt(self, broker_run: dict[str, Any]) -> None:
        """PyJWT is for `auth: jwt_assertion` only; a fhir sink without it does not load it."""
        assert [] == loaded(broker_run["built"], ("jwt",))


class TestMappingStage:
    def test_stage_loads_the_mapping_on_its_first_message(self, tmp_path: Path) -> None:
        """Building v2_to_fhir leaves the mapping unloaded; the first message loads it and maps."""
        result = run_child(RUN_STAGE, BENCH_LIKE, tmp_path)
        assert [] == loaded(result["built"], (MAPPING,))
        assert [MAPPING] == loaded(result["processed"], (MAPPING,))
        assert "Patient" in result["resource_types"]
