"""JSON Schema for config/engine.yaml and channel files, generated from the models.

Editors (e.g. VS Code's YAML extension via `# yaml-language-server: $schema=...`) use
it for completion and inline errors. Stage and sink items become a discriminated union
by `type` over the plugins of the registry given, so the schema always matches what
the loader accepts. Regenerate after adding or changing a plugin:

    python -m engine.config.schema            # writes config/schema/*.json
    python -m engine.config.schema --check    # exit 1 when the files are stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union, cast

from pydantic import BaseModel, Field, TypeAdapter, create_model

from engine.config.models import ChannelConfig, EngineConfig
from engine.registry import Plugin, Registry, default_registry

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ENGINE_SCHEMA = "engine.schema.json"
CHANNEL_SCHEMA = "channel.schema.json"
#: Where the committed schemas live, relative to the repository root.
SCHEMA_DIR = Path("config") / "schema"

#: `tuple` for item types only known at run time (mypy cannot check these subscripts).
_Tuple = cast(Any, tuple)


def _tagged(plugin: Plugin[Any]) -> type[BaseModel]:
    """The plugin's model with `type` pinned to its registered name (the union's tag)."""
    tag = cast(Any, Literal)[plugin.name]
    model: type[BaseModel] = create_model(
        plugin.config_model.__name__,
        __base__=plugin.config_model,
        __module__=plugin.config_model.__module__,
        __doc__=plugin.config_model.__doc__ or plugin.summary,
        type=(tag, ...),
    )
    return model


def _union(plugins: list[Plugin[Any]]) -> Any:
    if not plugins:
        return dict[str, Any]
    members = tuple(_tagged(p) for p in plugins)
    if len(members) == 1:
        return members[0]
    return Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007 - built at run time


def schema_models(registry: Registry) -> tuple[type[BaseModel], type[BaseModel]]:
    """(engine model, channel model) whose pipeline/sinks are unions of the registry's plugins."""
    stages: list[Plugin[Any]] = [p for p in map(registry.stage, registry.stage_names()) if p is not None]
    sinks: list[Plugin[Any]] = [p for p in map(registry.sink, registry.sink_names()) if p is not None]
    channel: type[BaseModel] = create_model(
        "ChannelConfig",
        __base__=ChannelConfig,
        __module__=ChannelConfig.__module__,
        __doc__=ChannelConfig.__doc__,
        pipeline=(_Tuple[_union(stages), ...], ()),
        sinks=(_Tuple[_union(sinks), ...], Field(min_length=1)),
    )
    engine: type[BaseModel] = create_model(
        "EngineConfig",
        __base__=EngineConfig,
        __module__=EngineConfig.__module__,
        __doc__=EngineConfig.__doc__,
        channels=(_Tuple[channel, ...], ()),
    )
    return engine, channel


def build_schemas(registry: Registry) -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for the engine file and for an included channel file."""
    engine, channel = schema_models(registry)
    engine_schema = engine.model_json_schema(mode="validation")
    channel_schema = TypeAdapter(channel | list[channel]).json_schema(mode="validation")  # type: ignore[valid-type,arg-type]
    return {
        ENGINE_SCHEMA: {
            "$schema": SCHEMA_DIALECT,
            "title": "hl7engine configuration (config/engine.yaml)",
            **engine_schema,
        },
        CHANNEL_SCHEMA: {
            "$schema": SCHEMA_DIALECT,
            "title": "hl7engine channel file (one channel or a list of channels)",
            **channel_schema,
        },
    }


def render_schemas(registry: Registry) -> dict[str, str]:
    """File name -> file text, stable byte for byte for the same models."""
    schemas = build_schemas(registry)
    return {name: json.dumps(schema, indent=2, sort_keys=True) + "\n" for name, schema in schemas.items()}


def write_schemas(registry: Registry, directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas(registry).items():
        target = directory / name
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


def stale_schemas(registry: Registry, directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of the schema files that are missing or differ from what the models generate."""
    stale = []
    for name, text in render_schemas(registry).items():
        target = directory / name
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    registry = default_registry()
    if "--check" in args:
        stale = stale_schemas(registry)
        for name in stale:
            print(f"{SCHEMA_DIR / name}: out of date; run python -m engine.config.schema", file=sys.stderr)
        return 1 if stale else 0
    for path in write_schemas(registry):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
