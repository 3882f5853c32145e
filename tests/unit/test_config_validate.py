"""`hl7engine validate`: phases, environment checks and exit codes (engine/config/validate.py)."""

from __future__ import annotations

import io
import re
import socket
from pathlib import Path

import pytest

from engine.config.validate import EX_CONFIG, main_validate, validate_config
from tests.unit.test_config_fixtures import DESIGN_EXAMPLE, FINDING_RE, make_registry, write


def messages(report_findings: tuple[object, ...]) -> list[str]:
    """Findings without their file:line:col prefix."""
    return [re.sub(r"^.*?:\d+:\d+: ", "", str(f)) for f in report_findings]


class TestValidateConfig:
    def test_valid_config_has_no_findings(self, tmp_path: Path) -> None:
        """DESIGN's example in a writable directory passes every phase."""
        f = write(tmp_path / "e.yaml", DESIGN_EXAMPLE)
        report = validate_config(f, make_registry(), env={}, base_dir=tmp_path)
        assert report.ok
        assert report.findings == ()
        assert report.config is not None
        assert report.summary() == f"{f}: valid (1 channel: adt; 0 warning(s))"

    def test_unwritable_outputs_are_reported_at_their_keys(self, tmp_path: Path) -> None:
        """A store under a plain file, or a sink path that is a directory, fails phase 3."""
        (tmp_path / "blocker").write_text("")
        (tmp_path / "outdir").mkdir()
        text = DESIGN_EXAMPLE.replace("data/hl7engine.db", "blocker/db/hl7engine.db").replace(
            "out/adt.ndjson", "outdir"
        )
        report = validate_config(
            write(tmp_path / "e.yaml", text), make_registry(), env={}, base_dir=tmp_path
        )
        assert not report.ok
        assert report.config is None
        assert messages(report.findings) == [
            f"store.path: cannot create {tmp_path}/blocker/db/hl7engine.db: "
            f"{tmp_path}/blocker is not a directory",
            f"channels[0].sinks[0].path: {tmp_path}/outdir is a directory, not a file",
        ]

    def test_missing_output_directories_are_fine(self, tmp_path: Path) -> None:
        """Directories that do not exist yet can be created by the store and sinks."""
        text = DESIGN_EXAMPLE.replace("data/hl7engine.db", "a/b/c/hl7engine.db")
        report = validate_config(
            write(tmp_path / "e.yaml", text), make_registry(), env={}, base_dir=tmp_path
        )
        assert report.ok

    def test_missing_tls_files_and_unset_secret_env(self, tmp_path: Path) -> None:
        """InputFile fields must exist; {env: NAME} secrets must be set."""
        text = DESIGN_EXAMPLE.replace(
            "    ack: on_commit",
            "    ack: on_commit\n"
            "    tls: {cert: tls/server.crt, key: tls/server.key, key_password: {env: KEY_PW}}",
        )
        report = validate_config(
            write(tmp_path / "e.yaml", text), make_registry(), env={}, base_dir=tmp_path
        )
        assert messages(report.findings) == [
            f"channels[0].tls.cert: file not found: {tmp_path}/tls/server.crt",
            f"channels[0].tls.key: file not found: {tmp_path}/tls/server.key",
            "channels[0].tls.key_password: environment variable KEY_PW is not set",
        ]
        for finding in report.findings:
            assert re.match(FINDING_RE, str(finding))

    def test_environment_phase_can_be_skipped(self, tmp_path: Path) -> None:
        """check_environment=False runs only phases 1 and 2."""
        text = DESIGN_EXAMPLE.replace("    ack: on_commit", "    tls: {cert: nope.crt, key: nope.key}")
        report = validate_config(
            write(tmp_path / "e.yaml", text), make_registry(), False, env={}, base_dir=tmp_path
        )
        assert report.ok

    def test_ports_are_checked_only_when_asked(self, tmp_path: Path) -> None:
        """A listen address already bound is an error with check_ports, silent without."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            f = write(tmp_path / "e.yaml", DESIGN_EXAMPLE.replace("127.0.0.1:2575", f"127.0.0.1:{port}"))
            assert validate_config(f, make_registry(), env={}, base_dir=tmp_path).ok
            report = validate_config(f, make_registry(), env={}, base_dir=tmp_path, check_ports=True)
        assert [m.split(": cannot bind")[0] for m in messages(report.findings)] == ["channels[0].listen"]

    def test_exposed_listeners_are_warnings(self, tmp_path: Path) -> None:
        """Plaintext MLLP on all interfaces without allow, and admin off loopback without a token, warn."""
        text = DESIGN_EXAMPLE.replace("127.0.0.1:2575", "0.0.0.0:0").replace(
            "127.0.0.1:8081", "0.0.0.0:0"
        )
        report = validate_config(
            write(tmp_path / "e.yaml", text), make_registry(), env={}, base_dir=tmp_path
        )
        assert report.ok
        assert [f.path for f in report.warnings] == ["admin.listen", "channels[0].listen"]


class TestMainValidate:
    def test_invalid_config_prints_findings_and_returns_ex_config(self, tmp_path: Path) -> None:
        """Exit 78 (EX_CONFIG) with every finding and a summary line."""
        f = write(tmp_path / "e.yaml", DESIGN_EXAMPLE.replace("type: v2_to_fhir", "type: v2_tofhir"))
        out = io.StringIO()
        assert main_validate(f, make_registry(), out=out) == EX_CONFIG
        assert out.getvalue().splitlines() == [
            f"{f}:10:15: channels[0].pipeline[0].type: "
            "unknown stage type 'v2_tofhir' (did you mean 'v2_to_fhir'?)",
            f"{f}: invalid (1 error(s), 0 warning(s))",
        ]

    def test_valid_config_prints_one_line_and_returns_zero(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Exit 0 with a one-line summary."""
        monkeypatch.chdir(tmp_path)
        write(tmp_path / "e.yaml", DESIGN_EXAMPLE)
        out = io.StringIO()
        assert main_validate(Path("e.yaml"), make_registry(), out=out) == 0
        assert out.getvalue() == "e.yaml: valid (1 channel: adt; 0 warning(s))\n"
