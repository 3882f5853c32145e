"""The generated JSON Schemas (engine/config/schema.py) and the committed copies in config/schema/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config.schema import (
    CHANNEL_SCHEMA,
    ENGINE_SCHEMA,
    build_schemas,
    render_schemas,
    stale_schemas,
)
from engine.registry import Registry, default_registry
from tests.unit.test_config_fixtures import DESIGN_EXAMPLE, make_registry, repo_root


def default_registry_or_skip() -> Registry:
    try:
        return default_registry()
    except ImportError as exc:
        raise AssertionError(f"built-in plugins must import: {exc}") from exc


def validator(schema: dict[str, Any]) -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema checks the generated schema")
    return jsonschema.Draft202012Validator(schema)


class TestSchema:
    def test_committed_schemas_match_the_models(self) -> None:
        """config/schema/*.json are what the models generate (regenerate: python -m engine.config.schema)."""
        registry = default_registry_or_skip()
        assert stale_schemas(registry, repo_root() / "config" / "schema") == []

    def test_generation_is_deterministic(self) -> None:
        """Two renders give identical text, so the committed files diff cleanly."""
        assert render_schemas(make_registry()) == render_schemas(make_registry())

    def test_schema_is_valid_and_accepts_the_design_example(self) -> None:
        """The engine schema is valid JSON Schema 2020-12 and accepts DESIGN.md's config."""
        schema = build_schemas(make_registry())[ENGINE_SCHEMA]
        check = validator(schema)
        check.check_schema(schema)
        assert list(check.iter_errors(yaml.safe_load(DESIGN_EXAMPLE))) == []

    def test_plugins_are_a_union_by_type(self) -> None:
        """Unknown plugin types and unknown plugin keys fail schema validation too."""
        check = validator(build_schemas(make_registry())[ENGINE_SCHEMA])
        for bad in (
            DESIGN_EXAMPLE.replace("type: v2_to_fhir", "type: v2_tofhir"),
            DESIGN_EXAMPLE.replace("fhir_version: R4B", "fhir_versio: R4B"),
            DESIGN_EXAMPLE.replace("ack: on_commit", "ack: later"),
        ):
            assert list(check.iter_errors(yaml.safe_load(bad))), bad

    def test_channel_schema_accepts_the_shipped_channel(self) -> None:
        """channels/adt/channel.yaml fits the channel-file schema, as one mapping or in a list."""
        check = validator(build_schemas(make_registry())[CHANNEL_SCHEMA])
        channel = yaml.safe_load((repo_root() / "channels" / "adt" / "channel.yaml").read_text())
        assert list(check.iter_errors(channel)) == []
        assert list(check.iter_errors([channel, channel])) == []
        assert list(check.iter_errors({**channel, "piepline": []}))

    def test_committed_files_are_json(self) -> None:
        """The committed schema files parse and name their dialect."""
        for name in (ENGINE_SCHEMA, CHANNEL_SCHEMA):
            data = json.loads((repo_root() / "config" / "schema" / name).read_text())
            assert data["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def test_stale_files_are_detected(self, tmp_path: Path) -> None:
        """A missing or edited schema file is reported as stale."""
        for name, text in render_schemas(make_registry()).items():
            (tmp_path / name).write_text(text)
        assert stale_schemas(make_registry(), tmp_path) == []
        (tmp_path / ENGINE_SCHEMA).write_text("{}\n")
        (tmp_path / CHANNEL_SCHEMA).unlink()
        assert stale_schemas(make_registry(), tmp_path) == [ENGINE_SCHEMA, CHANNEL_SCHEMA]
