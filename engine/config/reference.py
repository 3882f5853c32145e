"""docs/configuration.md, generated from the config models and the registered plugins.

`python -m engine.config.reference` rewrites it; a test keeps it in sync, so the
reference can never drift from what `hl7engine validate` accepts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from engine.config.schema import ENGINE_SCHEMA, build_schemas
from engine.registry import Registry, default_registry

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

_INTRO = """# Configuration reference

Generated from the config models by `python -m engine.config.reference`; do not edit by hand.
Every key below is checked by `hl7engine validate` (unknown keys are errors). Values may use
`${ENV_VAR}` or `${ENV_VAR:-default}`. Secrets (`SecretRef`) are given only by reference:
`{env: NAME}` or `{file: /run/secrets/name}`. The JSON Schema for editors is in `config/schema/`.

Sections are listed from the top of `engine.yaml` down; a channel (inline under `channels:`
or in an included file) is a `ChannelConfig`; each `pipeline:` entry is a stage and each
`sinks:` entry a sink, chosen by its `type`.
"""


def _type_of(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        name = str(prop["$ref"]).rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    for key in ("anyOf", "oneOf"):
        if key in prop:
            parts = [_type_of(p) for p in prop[key] if p.get("type") != "null"]
            return " \\| ".join(dict.fromkeys(parts)) + (" \\| null" if any(p.get("type") == "null"
                                                                            for p in prop[key]) else "")
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type_of(prop.get('items', {}))}"
    if kind == "object" and "additionalProperties" in prop and isinstance(prop["additionalProperties"], dict):
        return f"map of {_type_of(prop['additionalProperties'])}"
    return str(kind)


def _default(prop: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" in prop:
        return f"`{json.dumps(prop['default'])}`"
    return ""


def _table(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"## {name}", ""]
    if schema.get("description"):
        lines += [" ".join(str(schema["description"]).split()), ""]
    props: dict[str, Any] = schema.get("properties", {})
    if not props:
        return [*lines, "(no keys)", ""]
    required = set(schema.get("required", ()))
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, prop in props.items():
        doc = " ".join(str(prop.get("description", "")).split()).replace("|", "\\|")
        lines.append(f"| `{key}` | {_type_of(prop)} | {_default(prop, key in required)} | {doc} |")
    return [*lines, ""]


def render_reference(registry: Registry) -> str:
    schemas = build_schemas(registry)
    engine = schemas[ENGINE_SCHEMA]
    defs: dict[str, Any] = engine.get("$defs", {})
    out = [_INTRO, *_table("EngineConfig (engine.yaml, top level)", engine)]
    for name in sorted(defs):
        out += _table(name, defs[name])
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render_reference(default_registry())
    if "--check" in args:
        current = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
        return 0 if current == text else 1
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(text, encoding="utf-8")
    print(DOC_PATH)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
