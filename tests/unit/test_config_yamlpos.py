"""YAML with positions and ${ENV} interpolation (engine/config/yamlpos.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.yamlpos import (
    Finding,
    Interpolated,
    InterpolationError,
    Position,
    format_path,
    interpolate,
    load_yaml,
)
from tests.unit.test_config_fixtures import write


class TestInterpolate:
    def test_text_without_references_is_returned_unchanged(self) -> None:
        """A string with no ${...} comes back as the same plain string."""
        result = interpolate("out/adt.ndjson", {})
        assert result == "out/adt.ndjson"
        assert not isinstance(result, Interpolated)

    def test_reference_is_replaced_and_remembers_its_template(self) -> None:
        """${NAME} is replaced from the env and the result keeps the text as written."""
        result = interpolate("${HOST}:2575", {"HOST": "10.0.0.5"})
        assert result == "10.0.0.5:2575"
        assert isinstance(result, Interpolated)
        assert result.template == "${HOST}:2575"
        assert result.refs == ("HOST",)

    def test_default_used_when_unset_or_empty(self) -> None:
        """${NAME:-default} falls back like a POSIX shell: unset or empty."""
        assert interpolate("${PORT:-2575}", {}) == "2575"
        assert interpolate("${PORT:-2575}", {"PORT": ""}) == "2575"
        assert interpolate("${PORT:-2575}", {"PORT": "3000"}) == "3000"

    def test_unset_without_default_is_an_error_at_its_offset(self) -> None:
        """An unset ${NAME} raises, naming the variable and where it starts."""
        with pytest.raises(InterpolationError) as caught:
            interpolate("host-${MISSING}", {})
        assert caught.value.offset == 5
        assert "MISSING is not set" in caught.value.message

    def test_empty_value_without_default_is_allowed(self) -> None:
        """A set but empty variable is a value, not an error."""
        assert interpolate("x${EMPTY}y", {"EMPTY": ""}) == "xy"

    def test_double_dollar_writes_a_literal_reference(self) -> None:
        """$${ escapes, and a lone $ is left alone."""
        assert interpolate("cost $5 $${NOT_A_REF}", {}) == "cost $5 ${NOT_A_REF}"

    def test_malformed_references_are_errors_without_echoing_the_body(self) -> None:
        """Unterminated and invalid references fail; the message does not repeat the text."""
        with pytest.raises(InterpolationError, match="unterminated"):
            interpolate("${OPEN", {})
        with pytest.raises(InterpolationError) as caught:
            interpolate("${s3cr3t value}", {})
        assert "s3cr3t" not in caught.value.message


class TestFormatPath:
    def test_keys_and_indexes(self) -> None:
        """Keys join with dots, indexes go in brackets, the empty path is (root)."""
        assert format_path(("channels", 0, "sinks", 1, "path")) == "channels[0].sinks[1].path"
        assert format_path(()) == "(root)"


class TestLoadYaml:
    def test_positions_of_values_and_keys_are_one_based(self, tmp_path: Path) -> None:
        """Each value and key maps to its 1-based line and column."""
        f = write(tmp_path / "c.yaml", "store:\n  path: x.db\nchannels:\n  - name: adt\n")
        doc, findings = load_yaml(f, "c.yaml", {})
        assert findings == []
        assert doc is not None
        assert doc.value == {"store": {"path": "x.db"}, "channels": [{"name": "adt"}]}
        assert doc.positions.of(("store", "path")) == Position("c.yaml", 2, 9)
        assert doc.positions.of(("store", "path"), key=True) == Position("c.yaml", 2, 3)
        assert doc.positions.of(("channels", 0, "name")) == Position("c.yaml", 4, 11)
        assert doc.positions.of(("channels", 0, "nope")) == Position("c.yaml", 4, 5)

    def test_syntax_error_has_its_position(self, tmp_path: Path) -> None:
        """A YAML syntax error is one finding at the problem's line and column."""
        f = write(tmp_path / "c.yaml", "store:\n  path: [unclosed\nadmin: {}\n")
        doc, findings = load_yaml(f, "c.yaml", {})
        assert doc is None
        assert len(findings) == 1
        assert findings[0].position.line == 3
        assert findings[0].path == "(yaml)"

    def test_duplicate_key_is_reported_where_repeated(self, tmp_path: Path) -> None:
        """PyYAML would keep the last silently; we report the second occurrence."""
        f = write(tmp_path / "c.yaml", "name: a\nlisten: x\nname: b\n")
        _, findings = load_yaml(f, "c.yaml", {})
        assert [str(x) for x in findings] == ["c.yaml:3:1: name: duplicate key (first at line 1)"]

    def test_merge_keys_are_resolved_and_may_be_overridden(self, tmp_path: Path) -> None:
        """`<<: *anchor` merges; an explicit key overrides a merged one without a finding."""
        text = "base: &b {ack: on_commit, listen: a}\nch:\n  <<: *b\n  listen: b\n"
        doc, findings = load_yaml(write(tmp_path / "c.yaml", text), "c.yaml", {})
        assert findings == []
        assert doc is not None
        assert doc.value["ch"] == {"ack": "on_commit", "listen": "b"}

    def test_keys_stay_strings(self, tmp_path: Path) -> None:
        """YAML 1.1 would read `on:` as True; config keys are taken as written."""
        doc, _ = load_yaml(write(tmp_path / "c.yaml", "on: 1\n"), "c.yaml", {})
        assert doc is not None
        assert doc.value == {"on": 1}

    def test_interpolation_error_points_at_the_reference(self, tmp_path: Path) -> None:
        """An unset variable is reported at file:line:col of its `${`."""
        f = write(tmp_path / "c.yaml", "admin:\n  listen: 127.0.0.1:${ADMIN_PORT}\n")
        _, findings = load_yaml(f, "c.yaml", {})
        assert [str(x) for x in findings] == [
            "c.yaml:2:21: admin.listen: environment variable ADMIN_PORT is not set"
        ]

    def test_only_string_scalars_are_interpolated(self, tmp_path: Path) -> None:
        """Numbers and booleans keep their YAML types; strings get env values."""
        f = write(tmp_path / "c.yaml", "a: 12\nb: true\nc: ${X}\n")
        doc, _ = load_yaml(f, "c.yaml", {"X": "7"})
        assert doc is not None
        assert doc.value == {"a": 12, "b": True, "c": "7"}

    def test_missing_and_empty_files(self, tmp_path: Path) -> None:
        """A missing file is one finding; an empty file is a document holding None."""
        doc, findings = load_yaml(tmp_path / "absent.yaml", "absent.yaml", {})
        assert doc is None
        assert findings == [Finding(Position("absent.yaml", 1, 1), "(file)", "file not found")]
        doc, findings = load_yaml(write(tmp_path / "e.yaml", ""), "e.yaml", {})
        assert doc is not None
        assert doc.value is None
        assert findings == []

    def test_recursive_alias_is_reported_not_followed(self, tmp_path: Path) -> None:
        """A self-referencing alias cannot loop forever."""
        f = write(tmp_path / "c.yaml", "a: &x [1, *x]\n")
        _, findings = load_yaml(f, "c.yaml", {})
        assert any("recursive alias" in x.message for x in findings)
