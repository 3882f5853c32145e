"""Smoke tests of the benchmark: load generator, baselines, messages and the result file."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hl7
import pytest
import yaml

from bench.__main__ import main as bench_main
from bench.convert_bench import bundle_entries, load_converter, measure
from bench.engine_proc import EngineProcess, ServerProcess
from bench.loadgen import parse_ack, percentile_ms, run_load
from bench.messages import (
    ADT_A01_WITH_IN1,
    ORU_R01_20_OBX,
    ControlIds,
    MessageSource,
    Template,
    builtin_templates,
    corpus_dir,
    corpus_templates,
    split_messages,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ack_only_server() -> Iterator[ServerProcess]:
    with ServerProcess("bench.baseline_server", "--loop", "asyncio") as server:
        yield server


@pytest.fixture(scope="module")
def rejecting_server() -> Iterator[ServerProcess]:
    with ServerProcess("bench.baseline_server", "--loop", "asyncio", "--ack-code", "AR") as server:
        yield server


class TestMessages:
    def test_adt_is_about_860_bytes_with_in1(self) -> None:
        """The built-in ADT^A01 is the ~860-byte registration with one IN1 that issue #6 asks for."""
        message = hl7.parse(ADT_A01_WITH_IN1)
        assert 820 <= len(ADT_A01_WITH_IN1) <= 900
        assert str(message.segment("MSH")[9]) == "ADT^A01^ADT_A01"
        assert len(message.segments("IN1")) == 1

    def test_default_load_is_a_population_of_patients(self) -> None:
        """Every built-in template is a different patient at the same hospital: caches see a real feed."""
        templates = builtin_templates(200)
        parsed = [hl7.parse(t.render(b"X").decode("ascii")) for t in templates]
        assert 200 == len({str(m.segment("PID")[3]) for m in parsed})
        assert 200 == len({str(m.segment("IN1")[36]) for m in parsed})
        assert len({str(m.segment("PID")[5]) for m in parsed}) > 100
        assert {str(m.segment("PV1")[7]) for m in parsed} == {"1174^Okafor^Chidi^^^Dr.^MD"}
        assert all(820 <= t.size - 16 + len("BENCH0000000001") <= 900 for t in templates)
        assert templates[0].render(b"BENCH0000000001").decode("ascii") == ADT_A01_WITH_IN1

    def test_oru_has_twenty_obx(self) -> None:
        """The built-in ORU^R01 carries 20 OBX segments numbered 1..20."""
        observations = hl7.parse(ORU_R01_20_OBX).segments("OBX")
        assert [str(n) for n in range(1, 21)] == [str(obx[1]) for obx in observations]

    def test_render_replaces_only_msh10(self) -> None:
        """A rendered message differs from its template only in MSH-10."""
        template = builtin_templates()[0]
        rendered = hl7.parse(template.render(b"CTRL42").decode("ascii"))
        original = hl7.parse(ADT_A01_WITH_IN1)
        assert str(rendered.segment("MSH")[10]) == "CTRL42"
        assert str(original.segment("MSH")[11:]) == str(rendered.segment("MSH")[11:])
        assert str(original.segment("PID")) == str(rendered.segment("PID"))

    def test_control_ids_are_unique_and_fit_st20(self) -> None:
        """Control ids never repeat within a source and fit MSH-10's 20 characters."""
        ids = ControlIds()
        seen = {ids.next() for _ in range(1000)}
        assert len(seen) == 1000
        assert all(len(i) <= 20 for i in seen)

    def test_template_rejects_short_header(self) -> None:
        """A header with fewer than 10 fields cannot carry a control id."""
        with pytest.raises(ValueError, match="fewer than 10"):
            Template.from_bytes("short", b"MSH|^~\\&|A|B\rPID|1\r")

    def test_messages_asking_for_no_accept_ack_are_recognised(self) -> None:
        """MSH-15 NE or ER means no ACK will come back; empty, AL and SU mean one will."""
        header = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|C1|P|2.5|||"
        expected = {b"NE": False, b"ER": False, b"AL": True, b"SU": True, b"": True}
        actual = {
            code: Template.from_bytes("t", header + code + b"|NE\rPID|1\r").expects_commit_ack for code in expected
        }
        assert actual == expected

    def test_split_messages_normalises_batches_and_terminators(self) -> None:
        """Batch envelopes are dropped, LF/CRLF become CR and a BOM is removed."""
        raw = b"\xef\xbb\xbfFHS|^~\\&\nBHS|^~\\&\r\nMSH|^~\\&|A\nPID|1\nMSH|^~\\&|B\r\nBTS|2\nFTS|1\n"
        assert split_messages(raw) == [b"MSH|^~\\&|A\rPID|1\r", b"MSH|^~\\&|B\r"]

    def test_corpus_messages_render(self) -> None:
        """Every corpus message chosen for the mix re-parses with its new control id."""
        root = corpus_dir(REPO_ROOT)
        if not root.is_dir():
            if os.environ.get("HL7ENGINE_REQUIRE_SERVICES") == "1":
                pytest.fail(f"corpus missing at {root}")
            pytest.skip(f"corpus not present at {root}")
        templates = corpus_templates(root, limit=50)
        assert len(templates) == 50
        assert all(template.expects_commit_ack for template in templates)
        for template in templates:
            rendered = template.render(b"CORPUS1")
            separator = rendered[3:4]
            assert rendered.split(b"\r", 1)[0].split(separator)[9] == b"CORPUS1"


class TestParseAck:
    def test_reads_msa_with_the_acks_own_separator(self) -> None:
        """MSA-1 and MSA-2 are read with the separator declared in the ACK's MSH."""
        assert parse_ack(b"MSH#^~\\&#A#B####ACK#Z#P#2.5\rMSA#AA#X1\r") == (b"AA", b"X1")

    def test_ignores_msa_inside_header(self) -> None:
        """An ACK whose own MSH-10 ends in "MSA" is not misread."""
        assert parse_ack(b"MSH|^~\\&|A|B||||ACK|ZZMSA|P|2.5\rMSA|AA|X1\r") == (b"AA", b"X1")

    def test_no_msa_is_none(self) -> None:
        """A frame without an MSA segment is not an ACK."""
        assert parse_ack(b"MSH|^~\\&|A|B||||ACK|Z|P|2.5\r") is None

    def test_percentile_nearest_rank(self) -> None:
        """p50 and p99 of 1..100 ms are 50 and 99 ms."""
        samples = [n * 1_000_000 for n in range(1, 101)]
        assert (percentile_ms(samples, 0.5), percentile_ms(samples, 0.99)) == (50.0, 99.0)


class TestLoadGenerator:
    async def test_counts_every_ack_from_the_baseline(self, ack_only_server: ServerProcess) -> None:
        """200 messages over 4 connections are all sent, accepted and matched to their MSH-10."""
        result = await run_load(
            ack_only_server.host,
            ack_only_server.port,
            target="ack_only",
            connections=4,
            source=MessageSource(builtin_templates()),
            max_messages=200,
            max_duration_s=20,
        )
        assert (
            result.sent,
            result.accepted,
            result.rejected,
            result.mismatched,
            result.errors,
        ) == (200, 200, 0, 0, 0)
        assert result.ack_codes == {"AA": 200}
        assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms
        assert result.msgs_per_s > 0

    async def test_counts_rejections(self, rejecting_server: ServerProcess) -> None:
        """AR answers are counted as rejected, never as accepted throughput."""
        result = await run_load(
            rejecting_server.host,
            rejecting_server.port,
            target="ack_only",
            connections=2,
            source=MessageSource(builtin_templates()),
            max_messages=50,
            max_duration_s=20,
        )
        assert (result.accepted, result.rejected, result.msgs_per_s) == (0, 50, 0.0)

    async def test_stops_at_the_duration(self, ack_only_server: ServerProcess) -> None:
        """With an unreachable message budget the run ends near its duration."""
        result = await run_load(
            ack_only_server.host,
            ack_only_server.port,
            target="ack_only",
            connections=1,
            source=MessageSource(builtin_templates()),
            max_messages=10**9,
            max_duration_s=0.3,
        )
        assert 0.25 <= result.elapsed_s < 2.0
        assert result.sent == result.accepted

    async def test_detects_a_wrong_control_id(self, wrong_id_server: tuple[str, int]) -> None:
        """An ACK whose MSA-2 is not the MSH-10 sent counts as mismatched."""
        host, port = wrong_id_server
        result = await run_load(
            host,
            port,
            target="wrong",
            connections=1,
            source=MessageSource(builtin_templates()),
            max_messages=5,
            max_duration_s=10,
        )
        assert (result.accepted, result.mismatched) == (0, 5)

    async def test_counts_a_silent_server_as_timeouts(self, silent_server: tuple[str, int]) -> None:
        """A server that never answers costs one ack_timeout error per connection, then the run ends."""
        host, port = silent_server
        result = await run_load(
            host,
            port,
            target="silent",
            connections=2,
            source=MessageSource(builtin_templates()),
            max_messages=10,
            max_duration_s=5,
            ack_timeout_s=0.3,
        )
        assert (result.accepted, result.errors, result.error_kinds) == (0, 2, {"ack_timeout": 2})


@pytest.fixture
async def wrong_id_server() -> AsyncIterator[tuple[str, int]]:
    """An in-process MLLP server that answers AA with a fixed, wrong MSA-2."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\x1c\r")
                writer.write(b"\x0bMSH|^~\\&|T|T||||ACK|1|P|2.5\rMSA|AA|NOTYOURS\r\x1c\r")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield "127.0.0.1", server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def silent_server() -> AsyncIterator[tuple[str, int]]:
    """An in-process server that accepts connections and never answers."""
    writers: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield "127.0.0.1", server.sockets[0].getsockname()[1]
    server.close()
    for writer in writers:
        writer.close()


class TestBenchCommand:
    def test_baselines_write_a_comparable_result(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """One invocation drives both baselines at each C and writes the documented JSON keys."""
        out = tmp_path / "result.json"
        argv = ["--targets", "ack-only,python-hl7", "--connections", "1,2", "--messages", "100"]
        assert bench_main([*argv, "--duration", "10", "--no-uvloop", "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        assert {"schema", "started_at", "command", "machine", "settings", "targets", "wall_s"} <= set(result)
        assert {"nproc", "python", "uvloop"} <= set(result["machine"])
        assert list(result["targets"]) == ["ack_only", "python_hl7"]
        for section in result["targets"].values():
            assert section["status"] == "ok"
            assert [run["connections"] for run in section["runs"]] == [1, 2]
            for run in section["runs"]:
                expected_keys = {"msgs_per_s", "p50_ms", "p99_ms", "max_ms", "ratio_vs_ack_only", "errors"}
                assert expected_keys <= set(run)
                assert (run["sent"], run["accepted"], run["errors"]) == (100, 100, 0)
        assert [run["ratio_vs_ack_only"] for run in result["targets"]["ack_only"]["runs"]] == [1.0, 1.0]
        table = capsys.readouterr().out
        assert "python-hl7" in table and "vs ack-only" in table

    def test_compare_prints_deltas(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--compare shows msgs/s old and new with the relative change per target and C."""
        run = {"connections": 8, "msgs_per_s": 1000.0, "p99_ms": 1.0}
        faster = {**run, "msgs_per_s": 1500.0}
        old, new = tmp_path / "old.json", tmp_path / "new.json"
        old.write_text(json.dumps({"targets": {"ack_only": {"runs": [run]}}}))
        new.write_text(json.dumps({"targets": {"ack_only": {"runs": [faster]}}}))
        assert bench_main(["--compare", str(old), str(new)]) == 0
        assert "+50.0%" in capsys.readouterr().out


FAKE_ENGINE = r"""
import asyncio, signal, sys, yaml

config = yaml.safe_load(open(sys.argv[sys.argv.index("-c") + 1]))
channel = config["channels"][0]
sink = open(channel["sinks"][0]["path"], "ab")


def address(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


class Mllp(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, bytearray()

    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\x1c\r")) >= 0:
            header = bytes(self.buffer[1:end]).split(b"\r", 1)[0].split(b"|")
            del self.buffer[: end + 2]
            sink.write(b'{"resourceType":"Bundle"}\n')
            sink.flush()
            self.transport.write(b"\x0bMSH|^~\\&|F|F||||ACK|1|P|2.5\rMSA|AA|" + header[9] + b"\r\x1c\r")


async def readyz(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    await writer.drain()
    writer.close()


async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.get_running_loop().create_server(Mllp, *address(channel["listen"]))
    await asyncio.start_server(readyz, *address(config["admin"]["listen"]))
    await stop.wait()


asyncio.run(main())
"""


class TestEngineSection:
    def test_drives_an_engine_command_end_to_end(self, tmp_path: Path) -> None:
        """With a stand-in engine the section has ACK runs, a complete e2e phase, RSS and a clean stop."""
        script = tmp_path / "fake_engine.py"
        script.write_text(FAKE_ENGINE)
        out = tmp_path / "result.json"
        argv = ["--targets", "engine", "--connections", "1,2", "--messages", "100", "--duration", "10"]
        argv += ["--e2e-messages", "300", "--drain-timeout", "10", "--no-uvloop", "--out", str(out)]
        assert bench_main([*argv, "--engine-command", f"{sys.executable} {script}"]) == 0
        engine = json.loads(out.read_text())["targets"]["engine"]
        assert engine["status"] == "ok"
        assert [(r["connections"], r["accepted"]) for r in engine["runs"]] == [(1, 100), (2, 100)]
        e2e = engine["end_to_end"]
        assert (e2e["connections"], e2e["accepted"], e2e["delivered"], e2e["complete"]) == (2, 300, 300, True)
        assert e2e["delivered_per_s"] > 0
        assert engine["peak_rss_mb"] > 1
        assert engine["stop"]["clean"] is True

    def test_reports_an_engine_that_does_not_start(self, tmp_path: Path) -> None:
        """An engine that exits before /readyz answers makes the section unavailable with its exit code."""
        out = tmp_path / "result.json"
        command = f"{sys.executable} -c 'import sys; sys.exit(3)'"
        argv = ["--targets", "engine", "--engine-command", command, "--out", str(out)]
        assert bench_main([*argv, "--quick", "--no-uvloop"]) == 0
        engine = json.loads(out.read_text())["targets"]["engine"]
        assert engine["status"] == "unavailable"
        assert "exited with code 3" in engine["reason"]
        assert engine["runs"] == []


class TestEngineProcess:
    def test_config_has_the_design_shape(self, tmp_path: Path) -> None:
        """The engine config is the DESIGN §3 example with temporary paths and free ports."""
        engine = EngineProcess(tmp_path)
        config = yaml.safe_load(engine.write_config().read_text())
        channel = config["channels"][0]
        assert {"store", "admin", "channels"} == set(config)
        assert f"127.0.0.1:{engine.admin_port}" == config["admin"]["listen"]
        assert f"127.0.0.1:{engine.mllp_port}" == channel["listen"]
        assert channel["ack"] == "on_commit"
        assert channel["pipeline"] == [{"type": "v2_to_fhir", "fhir_version": "R4B"}]
        assert channel["sinks"] == [{"type": "file", "path": str(engine.sink_path)}]
        assert "limits" not in channel

    def test_raises_the_per_peer_bound_to_the_load(self, tmp_path: Path) -> None:
        """All benchmark senders are one peer, so the channel admits C connections from it."""
        engine = EngineProcess(tmp_path, connections_per_peer=64)
        channel = yaml.safe_load(engine.write_config().read_text())["channels"][0]
        assert channel["limits"] == {"max_connections_per_peer": 64, "max_connections": 256}

    def test_counts_only_complete_sink_lines(self, tmp_path: Path) -> None:
        """A Bundle line still being written is not counted until its newline arrives."""
        engine = EngineProcess(tmp_path)
        assert engine.delivered() == 0
        engine.sink_path.write_bytes(b'{"a":1}\n{"b":2}\n{"c"')
        assert engine.delivered() == 2
        with engine.sink_path.open("ab") as sink:
            sink.write(b":3}\n")
        assert engine.delivered() == 3


class TestConvertBench:
    def test_measure_is_bounded_by_count(self) -> None:
        """A case stops at its message budget and reports the Bundle's entry count."""
        calls: list[bool] = []

        def converter(text: str, validate: bool) -> object:
            calls.append(validate)
            return {"resourceType": "Bundle", "entry": [{}, {}]}

        result = measure(converter, "adt", ADT_A01_WITH_IN1, True, "R4B", max_s=30.0, max_n=30)
        assert (result.iterations, result.bundle_entries) == (30, 2)
        assert all(calls) and len(calls) > 30  # warm-up calls come on top of the measured ones
        assert result.msgs_per_cpu_s > 0

    def test_builtin_messages_convert(self) -> None:
        """Both benchmark messages convert to non-empty Bundles, with and without validation."""
        converter = load_converter("R4B")
        for text in (ADT_A01_WITH_IN1, ORU_R01_20_OBX):
            for validate in (False, True):
                entries = bundle_entries(converter(text, validate))
                assert entries is not None and entries > 1
