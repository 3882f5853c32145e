"""The `hl7engine` command as users run it: a real subprocess, real files, real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.engine_proc import REPO, EngineProcess, free_port, write_config
from tests.support.messages import adt_a01
from tests.support.wait import poll

EX_CONFIG = 78


def hl7engine(*args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=REPO, input=stdin.decode() if stdin else None,
        capture_output=True, text=True, timeout=timeout, check=False,
    )


class TestValidate:
    def test_shipped_config_is_valid(self) -> None:
        """`hl7engine validate` accepts the shipped config and exits 0."""
        result = hl7engine("validate", "-c", "config/engine.yaml")
        assert 0 == result.returncode, result.stderr + result.stdout

    def test_misspelt_key_is_reported_with_position_and_exit_78(self, tmp_path: Path) -> None:
        """A misspelt key gives file:line:col, the dotted path, a suggestion and exit 78."""
        config = write_config(tmp_path, mllp_port=free_port(), admin_port=free_port())
        config.write_text(config.read_text().replace("    pipeline:", "    piepline:"))
        result = hl7engine("validate", "-c", str(config))
        assert EX_CONFIG == result.returncode
        out = result.stdout + result.stderr
        assert f"{config}:9:5: channels[0].piepline:" in out
        assert "did you mean 'pipeline'" in out

    def test_run_refuses_a_bad_config_with_78(self, tmp_path: Path) -> None:
        """`run` with an invalid config exits 78 before binding anything."""
        config = tmp_path / "engine.yaml"
        config.write_text("store:\n  path: x.db\nchannels: []\nbogus: 1\n")
        result = hl7engine("run", "-c", str(config))
        assert EX_CONFIG == result.returncode
        assert f"{config}:4:1: bogus:" in result.stderr


class TestConvert:
    def test_prints_one_bundle_per_message(self, tmp_path: Path) -> None:
        """Two messages back to back give two Bundle lines on stdout."""
        source = tmp_path / "two.hl7"
        source.write_text(adt_a01("A") + adt_a01("B", family="ROE"))
        result = hl7engine("convert", "-c", "config/engine.yaml", "--channel", "adt", str(source))
        assert 0 == result.returncode, result.stderr
        bundles = [json.loads(line) for line in result.stdout.splitlines()]
        assert ["Bundle", "Bundle"] == [b["resourceType"] for b in bundles]
        families = [e["resource"]["name"][0]["family"] for b in bundles for e in b["entry"]
                    if e["resource"]["resourceType"] == "Patient" and e["resource"].get("name")]
        assert {"DOE", "ROE"} <= set(families)

    def test_reads_stdin(self) -> None:
        """`-` reads the message from standard input."""
        result = hl7engine("convert", "--channel", "adt", "-", stdin=adt_a01("S").encode())
        assert 0 == result.returncode, result.stderr
        assert "Bundle" == json.loads(result.stdout)["resourceType"]

    def test_unconvertible_message_fails_in_one_line_without_traceback(self, tmp_path: Path) -> None:
        """A message that cannot be converted: exit 1, a one-line reason, no traceback, no PHI."""
        source = tmp_path / "bad.hl7"
        source.write_text("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X1|P|2.5.1\rNK1|1|ZZSECRETNAME\r")
        result = hl7engine("convert", "--channel", "adt", str(source))
        assert 1 == result.returncode
        assert "Traceback" not in result.stderr
        assert 1 == len(result.stderr.strip().splitlines())
        assert "ZZSECRETNAME" not in result.stderr

    def test_unknown_channel_is_named(self) -> None:
        """An unknown channel name is an error listing the channels there are."""
        result = hl7engine("convert", "--channel", "nope", "-", stdin=adt_a01().encode())
        assert 1 == result.returncode
        assert "adt" in result.stderr


class TestChannelSamples:
    def test_shipped_channel_samples_pass(self) -> None:
        """`hl7engine test adt` runs the sample channel's expected outputs and passes."""
        result = hl7engine("test", "adt")
        assert 0 == result.returncode, result.stdout + result.stderr
        assert " 0 failed" in result.stdout


@pytest.fixture
def running_engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    mllp_port, admin_port = free_port(), free_port()
    config = write_config(tmp_path, mllp_port=mllp_port, admin_port=admin_port,
                          extra_channel_yaml="    accept:\n      message_types: [ADT^*]\n")
    engine = EngineProcess(config, admin_port, tmp_path / "engine.log")
    engine.start()
    engine.wait_ready()
    yield config, mllp_port
    engine.kill()


class TestSendAndMessages:
    def test_send_prints_acks_and_exit_code_follows_them(self, running_engine, tmp_path: Path) -> None:
        """`send` prints each ACK; exit 0 when all are AA, 1 when one is AR."""
        _config, port = running_engine
        good = tmp_path / "good.hl7"
        good.write_text(adt_a01("G1") + adt_a01("G2"))
        result = hl7engine("send", f"127.0.0.1:{port}", str(good))
        assert 0 == result.returncode, result.stderr
        assert 2 == result.stdout.count("MSA|AA|")
        refused = tmp_path / "oru.hl7"
        refused.write_text(adt_a01("R1", message_type="ORU^R01^ORU_R01"))
        result = hl7engine("send", f"127.0.0.1:{port}", str(refused))
        assert 1 == result.returncode
        assert "MSA|AR|R1" in result.stdout

    def test_dead_letter_show_masked_replay_and_release(self, running_engine, tmp_path: Path) -> None:
        """A dead letter is listed, shown masked, replayed and released from the CLI."""
        config, port = running_engine
        poison = tmp_path / "poison.hl7"
        poison.write_text("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|P1|P|2.5.1\rNK1|1|ZZSECRETNAME\r")
        assert 0 == hl7engine("send", f"127.0.0.1:{port}", str(poison)).returncode

        def dead_listing() -> str | None:
            listing = hl7engine("messages", "list", "-c", str(config), "--status", "dead").stdout
            return listing if len(listing.splitlines()) > 1 else None

        listing = poll(dead_listing, what="the dead letter")
        rows = [line.split() for line in listing.splitlines()[1:] if line.strip()]
        assert 1 == len(rows)
        message_id = rows[0][0]
        shown = hl7engine("messages", "show", message_id, "-c", str(config))
        assert 0 == shown.returncode
        assert "ZZSECRETNAME" not in shown.stdout
        assert "NK1|***|***" in shown.stdout
        replayed = hl7engine("messages", "replay", message_id, "-c", str(config))
        assert "requeued 1 message(s)" in replayed.stdout
        # It fails again (the message itself is bad) and is dead once more; then release it.
        poll(dead_listing, what="the replayed message to be dead again")
        released = hl7engine("messages", "release", message_id, "-c", str(config))
        assert "released 1 message(s)" in released.stdout
        listing = hl7engine("messages", "list", "-c", str(config), "--status", "released").stdout
        assert message_id in listing
        # Every view, replay and release is in the hash-chained audit trail beside the store.
        trail = [json.loads(x) for x in (config.parent / "audit.log").read_text().splitlines()]
        assert ["message_viewed", "messages_replayed", "messages_released"] == [e["event"] for e in trail]
        assert "ZZSECRETNAME" not in (config.parent / "audit.log").read_text()
        verified = hl7engine("audit", "verify", "-c", str(config))
        assert 0 == verified.returncode and "3 entries chained" in verified.stdout
        lines = (config.parent / "audit.log").read_text().splitlines()
        lines[1] = lines[1].replace('"count": 1', '"count": 7')
        (config.parent / "audit.log").write_text("\n".join(lines) + "\n")
        broken = hl7engine("audit", "verify", "-c", str(config))
        assert 1 == broken.returncode and "audit.log:2:" in broken.stderr

    def test_replay_dry_run_diff_against_another_channel_version(self, running_engine, tmp_path: Path) -> None:
        """--dry-run --diff shows what another channel version would change, sending nothing."""
        config, port = running_engine
        message = tmp_path / "m.hl7"
        message.write_text(adt_a01("D1", mrn="MRN777"))
        assert 0 == hl7engine("send", f"127.0.0.1:{port}", str(message)).returncode
        def done_listing() -> str | None:
            listing = hl7engine("messages", "list", "-c", str(config), "--status", "done").stdout
            return listing if len(listing.splitlines()) > 1 else None

        listing = poll(done_listing, what="the message to be delivered")
        message_id = listing.splitlines()[1].split()[0]
        sink_before = (tmp_path / "out.ndjson").read_bytes()
        candidate = tmp_path / "candidate.yaml"
        candidate.write_text(config.read_text().replace(
            "fhir_version: R4B", "fhir_version: R4B\n        identifier_systems: {GENHOSP: 'urn:oid:1.2.3.4'}"))
        same = hl7engine("messages", "replay", message_id, "-c", str(config), "--status", "done",
                         "--dry-run", "--diff")
        assert f"message {message_id}: no change" in same.stdout
        changed = hl7engine("messages", "replay", message_id, "-c", str(config), "--dry-run", "--diff",
                            "--with", str(candidate))
        assert 0 == changed.returncode, changed.stderr
        assert f"message {message_id}: output changes" in changed.stdout
        assert "+" in changed.stdout and "urn:oid:1.2.3.4" in changed.stdout
        assert "1 output(s) would change" in changed.stdout
        # Nothing was requeued or sent.
        assert sink_before == (tmp_path / "out.ndjson").read_bytes()
        listing = hl7engine("messages", "list", "-c", str(config), "--status", "done").stdout
        assert message_id in listing
