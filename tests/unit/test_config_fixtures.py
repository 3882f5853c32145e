"""Shared helpers for the config tests: a registry with small stand-in plugins.

The stand-ins mirror the shapes of the built-in `v2_to_fhir` stage and `file` sink
(DESIGN.md §3) plus a `fhir` sink with a secret, so the config tests do not depend on
the real plugins' evolving options.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from engine.config.models import OutputFile, SecretRef
from engine.registry import BuildContext, Registry

#: DESIGN.md §3, byte for byte: this config must keep working exactly as written.
DESIGN_EXAMPLE = """\
store:
  path: data/hl7engine.db          # SQLite, the embedded default; or `url: postgresql://user@host/db`
admin:
  listen: 127.0.0.1:8081           # /livez /readyz /metrics and the operator API
channels:                          # inline, or `include: [channels/*/channel.yaml]`
  - name: adt
    listen: 127.0.0.1:2575         # MLLP; add `tls:` for TLS/mTLS
    ack: on_commit                 # on_commit | after_processing
    pipeline:
      - type: v2_to_fhir           # the standard HL7 v2-to-FHIR mapping
        fhir_version: R4B          # R4B | R5
    sinks:
      - type: file
        path: out/adt.ndjson       # one Bundle per line
"""

#: `file:line:col: dotted.path: message`, the one format every finding has.
FINDING_RE = r"^[^:\n]+:\d+:\d+: [^:\s]+: .+$"


class StubV2ToFhirConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["v2_to_fhir"]
    fhir_version: Literal["R4B", "R5"] = "R4B"


class StubFileSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["file"]
    path: OutputFile
    name: str | None = None
    fsync: bool = True


class StubFhirSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["fhir"]
    base_url: str
    token: SecretRef | None = None
    client_secret: str | None = None  # typed carelessly as str: the loader must still refuse a literal
    name: str | None = None


def _never_built(config: BaseModel, ctx: BuildContext) -> Any:
    raise AssertionError("config tests never build plugins")


def make_registry() -> Registry:
    """A fresh registry holding only the stand-in plugins."""
    registry = Registry()
    registry.add_stage("v2_to_fhir", StubV2ToFhirConfig, "stand-in mapping", _never_built)
    registry.add_sink("file", StubFileSinkConfig, "stand-in file sink", _never_built)
    registry.add_sink("fhir", StubFhirSinkConfig, "stand-in FHIR sink", _never_built)
    return registry


def write(path: Path, text: str) -> Path:
    """Write dedented YAML, creating directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
