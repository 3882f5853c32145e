"""Load a config file into an `EngineConfig`, reporting every problem as file:line:col.

Order of work (phases 1 and 2 of `hl7engine validate`; phase 3 is in validate.py):
1. YAML with positions and `${ENV}` interpolation (yamlpos.py).
2. Includes: each glob in the top-level `include:` is relative to the including file;
   each match holds one channel mapping or a list of them. Positions keep pointing
   into the included file.
3. Literal secrets under secret-named keys are refused, whatever the plugin's type.
4. Plugins: each pipeline/sink item's `type` must be registered; the rest is validated
   against that plugin's model.
5. Topology: unique channel names, non-overlapping listen addresses, unique sink names.
6. Everything else against the pydantic models.
All findings are collected, de-duplicated and sorted; none stops the others.

Relative data paths (store, TLS files, sink files typed `OutputFile`/`InputFile`)
resolve against the working directory (or `base_dir`), not the config file's folder:
`hl7engine run` from the repo root with config/engine.yaml writes data/ and out/ there.
"""

from __future__ import annotations

import difflib
import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from engine.config.models import (
    CTX_BASE_DIR,
    CTX_TOPOLOGY_CHECKED,
    INLINE_SECRET,
    AdminConfig,
    EngineConfig,
    HostPort,
    check_name,
    default_sink_names,
    is_secret_key,
    plugin_type,
)
from engine.config.yamlpos import (
    Finding,
    Interpolated,
    PathKey,
    Position,
    Positions,
    load_yaml,
)
from engine.registry import Registry, default_registry
from engine.types import ConfigError

#: Pydantic inserts these into error locations for union members and wrapped validators.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "tuple"})


@dataclass(slots=True)
class LoadResult:
    """Outcome of loading: the config when there are no errors, and every finding."""

    source: str  # the top-level file as shown in findings
    config: EngineConfig | None
    findings: list[Finding]
    positions: Positions

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]


def display_path(path: Path) -> str:
    """How a file is named in findings: relative to the working directory when inside it."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def load_config(
    path: Path | str,
    registry: Registry | None = None,
    *,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> EngineConfig:
    """Load and validate a config file; raise ConfigError with every finding when invalid.

    `registry` defaults to `engine.registry.default_registry()`; `env` to os.environ;
    `base_dir` (where relative data paths point) to the working directory.
    """
    result = load(path, registry, env=env, base_dir=base_dir)
    if result.config is None:
        raise ConfigError([str(f) for f in result.errors])
    return result.config


def parse_config(
    data: Mapping[str, Any],
    registry: Registry | None = None,
    *,
    base_dir: Path | None = None,
    source: str = "<config>",
) -> EngineConfig:
    """Validate a config given as Python data (tests, embedding). No includes, no ${ENV}."""
    positions = Positions(Position(source, 1, 1))
    result = _validate(dict(data), registry, positions, findings=[], base_dir=base_dir, source=source)
    if result.config is None:
        raise ConfigError([str(f) for f in result.errors])
    return result.config


def load(
    path: Path | str,
    registry: Registry | None = None,
    *,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> LoadResult:
    """Phases 1 and 2 without raising: the config (None when invalid) and all findings."""
    path = Path(path)
    source = display_path(path)
    doc, findings = load_yaml(path, source, env)
    if doc is None:
        return LoadResult(source, None, findings, Positions(Position(source, 1, 1)))
    positions = doc.positions
    data = {} if doc.value is None else doc.value
    if not isinstance(data, dict):
        findings.append(positions.finding((), "expected a mapping (store, admin, channels ...)"))
        return LoadResult(source, None, findings, positions)
    data = dict(data)
    if isinstance(data.get("channels"), list):
        here = Path(os.path.abspath(path)).parent
        data["channels"] = [_with_samples_dir(ch, here, default=False) for ch in data["channels"]]
    findings += _expand_includes(data, path, positions, env)
    return _validate(data, registry, positions, findings=findings, base_dir=base_dir, source=source)


def _validate(
    data: dict[str, Any],
    registry: Registry | None,
    positions: Positions,
    *,
    findings: list[Finding],
    base_dir: Path | None,
    source: str,
) -> LoadResult:
    checker = _Checker(registry if registry is not None else default_registry(), positions, base_dir)
    checker.findings += findings
    config = checker.check(data)
    unique = sorted(set(checker.findings), key=Finding.sort_key)
    if any(f.severity == "error" for f in unique):
        config = None
    return LoadResult(source, config, unique, positions)


# ---------------------------------------------------------------- includes


def _expand_includes(
    data: dict[str, Any], path: Path, positions: Positions, env: Mapping[str, str] | None
) -> list[Finding]:
    """Append the channels of every included file to `data['channels']`."""
    patterns = data.get("include")
    channels = data.get("channels")
    if channels is None:
        channels = []
    if not isinstance(patterns, list) or not isinstance(channels, list):
        return []  # wrong types: the models report them
    findings: list[Finding] = []
    here = Path(os.path.abspath(path)).parent
    seen = {Path(os.path.abspath(path))}
    for k, pattern in enumerate(patterns):
        where: PathKey = ("include", k)
        if not isinstance(pattern, str):
            continue
        magic = glob.has_magic(pattern)
        matches = sorted(glob.glob(pattern, root_dir=here, recursive=True))
        if not matches:
            message = "no file matches this pattern" if magic else "file not found"
            findings.append(positions.finding(where, message))
            continue
        for match in matches:
            file = Path(os.path.normpath(here / match))
            if file in seen or (magic and file.is_dir()):
                continue
            seen.add(file)
            findings += _include_file(file, channels, positions, env)
    data["channels"] = channels
    return findings


def _include_file(
    file: Path, channels: list[Any], positions: Positions, env: Mapping[str, str] | None
) -> list[Finding]:
    source = display_path(file)
    doc, findings = load_yaml(file, source, env)
    if doc is None:
        return findings
    value = doc.value
    items: list[tuple[PathKey, Any]]
    if isinstance(value, dict):
        items = [((), value)]
    elif isinstance(value, list):
        items = [((n,), item) for n, item in enumerate(value)]
    elif value is None:
        return [*findings, Finding(Position(source, 1, 1), "(file)", "empty channel file")]
    else:
        return [*findings, doc.positions.finding((), "expected a channel mapping or a list of channels")]
    for local, channel in items:
        index = len(channels)
        channels.append(_with_samples_dir(channel, file.parent, default=True))
        positions.update(doc.positions.rebased(local, ("channels", index)))
    return findings


def _with_samples_dir(channel: Any, here: Path, *, default: bool) -> Any:
    """Resolve `samples_dir` against the channel file's folder (samples ship with the channel).

    An included channel file without one gets `samples/` beside it, when that exists.
    """
    if not isinstance(channel, dict):
        return channel
    given = channel.get("samples_dir")
    if isinstance(given, str) and given.strip():
        return {**channel, "samples_dir": str(here / Path(given).expanduser())}
    if given is None and default and (here / "samples").is_dir():
        return {**channel, "samples_dir": str(here / "samples")}
    return channel


# ---------------------------------------------------------------- checks on the merged data


class _Invalid(BaseModel):
    """Stands in for a plugin item that failed, so the rest of the channel is still checked."""

    type: str = "<invalid>"


class _Checker:
    """Runs the checks on merged (top-level + included) data, collecting findings."""

    def __init__(self, registry: Registry, positions: Positions, base_dir: Path | None) -> None:
        self.registry = registry
        self.positions = positions
        self.findings: list[Finding] = []
        self.context: dict[str, Any] = {
            CTX_BASE_DIR: (base_dir or Path.cwd()).absolute(),
            CTX_TOPOLOGY_CHECKED: True,  # names and addresses are checked here, with positions
        }

    def error(self, path: PathKey, message: str) -> None:
        self.findings.append(self.positions.finding(path, message))

    def check(self, data: dict[str, Any]) -> EngineConfig | None:
        self.inline_secrets(data, ())
        channels = data.get("channels")
        if isinstance(channels, list):
            data["channels"] = [
                self.channel_plugins(ch, i) if isinstance(ch, dict) else ch for i, ch in enumerate(channels)
            ]
        self.topology(data)
        try:
            return EngineConfig.model_validate(data, context=self.context)
        except ValidationError as exc:
            self.findings += pydantic_findings(exc, EngineConfig, (), self.positions)
            return None

    # ------------------------------------------------------------ secrets

    def inline_secrets(self, value: Any, path: PathKey) -> None:
        """Literal values under secret-named keys (password, token, *_secret ...)."""
        if isinstance(value, dict):
            for key, child in value.items():
                literal = isinstance(child, str | int | float) and not isinstance(child, bool | Interpolated)
                if is_secret_key(key) and literal:
                    self.error((*path, key), INLINE_SECRET)
                self.inline_secrets(child, (*path, key))
        elif isinstance(value, list):
            for i, child in enumerate(value):
                self.inline_secrets(child, (*path, i))

    # ------------------------------------------------------------ plugins

    def channel_plugins(self, channel: dict[str, Any], i: int) -> dict[str, Any]:
        """The channel with its pipeline and sink items replaced by validated plugin models."""
        channel = dict(channel)
        for section in ("pipeline", "sinks"):
            items = channel.get(section)
            if not isinstance(items, list):
                continue
            prefix: PathKey = ("channels", i, section)
            channel[section] = [self.plugin(item, section, (*prefix, j)) for j, item in enumerate(items)]
            if section == "sinks":
                self.sink_names(items, channel[section], prefix)
        return channel

    def plugin(self, item: Any, section: str, path: PathKey) -> BaseModel:
        """Two steps: `type` must be registered, then the item must fit that plugin's model."""
        kind = "stage" if section == "pipeline" else "sink"
        known = self.registry.stage_names() if kind == "stage" else self.registry.sink_names()
        if not isinstance(item, dict) or item.get("type") is None:
            what = "required key 'type' missing" if isinstance(item, dict) else "expected a mapping"
            self.error(path, f"{what} (one of: {', '.join(known) or 'none registered'})")
            return _Invalid()
        name = item["type"]
        if not isinstance(name, str):
            self.error((*path, "type"), "expected a string")
            return _Invalid()
        plugin = self.registry.stage(name) if kind == "stage" else self.registry.sink(name)
        if plugin is None:
            hint = difflib.get_close_matches(name, known, n=1)
            more = f"did you mean {hint[0]!r}?" if hint else f"known: {', '.join(known) or 'none'}"
            self.error((*path, "type"), f"unknown {kind} type {name!r} ({more})")
            return _Invalid()
        model = plugin.config_model
        data = item if "type" in model.model_fields else {k: v for k, v in item.items() if k != "type"}
        try:
            return model.model_validate(data, context=self.context)
        except ValidationError as exc:
            self.findings += pydantic_findings(exc, model, path, self.positions)
            return _Invalid()

    def sink_names(self, raw: list[Any], validated: list[BaseModel], prefix: PathKey) -> None:
        """Sink names are metric labels and the store's sinks_done keys: identifier-safe and unique."""
        types = [_raw_type(item) or plugin_type(model) for item, model in zip(raw, validated, strict=True)]
        explicit = [_explicit_name(item) for item in raw]
        names = default_sink_names(types, explicit)
        for j, name in enumerate(names):
            if types[j] == _Invalid.model_fields["type"].default:
                continue  # already reported: not a mapping
            where: PathKey = (*prefix, j, "name") if explicit[j] else (*prefix, j)
            problem = check_name(name, "sink name")
            if problem:
                self.error(where, problem)
            first = names.index(name)
            if first != j:
                self.error(where, f"sink name {name!r} is already used by sinks[{first}]; give each a 'name'")
            elif not explicit[j] and types.count(types[j]) > 1:
                message = (
                    f"named {name!r} by its position; give it an explicit 'name' so reordering sinks "
                    "cannot change which deliveries count as done"
                )
                self.findings.append(self.positions.finding(where, message, severity="warning"))

    # ------------------------------------------------------------ topology

    def topology(self, data: dict[str, Any]) -> None:
        """At least one channel; unique channel names; no two listeners (admin too) on one address."""
        channels = data.get("channels")
        if channels is None:
            channels = []
        if not isinstance(channels, list):
            return
        if not channels:
            self.error(("channels",), "no channels: define 'channels:' or 'include:' channel files")
            return
        first_by_name: dict[str, int] = {}
        for i, ch in enumerate(channels):
            name = ch.get("name") if isinstance(ch, dict) else None
            if not isinstance(name, str):
                continue
            if name in first_by_name:
                first = self.positions.of(("channels", first_by_name[name], "name"))
                self.error(("channels", i, "name"), f"duplicate channel name {name!r} (first at {first})")
            else:
                first_by_name[name] = i
        self.listen_addresses(data, channels)

    def listen_addresses(self, data: dict[str, Any], channels: list[Any]) -> None:
        admin = data.get("admin")
        admin_listen = admin.get("listen") if isinstance(admin, dict) else None
        taken: list[tuple[HostPort, str]] = []
        admin_address = AdminConfig().listen if admin_listen is None else _parse_address(admin_listen)
        if admin_address is not None:
            taken.append((admin_address, "admin.listen"))
        for i, ch in enumerate(channels):
            if not isinstance(ch, dict) or ch.get("enabled") is False:
                continue  # a disabled channel binds nothing
            address = _parse_address(ch.get("listen"))
            if address is None:
                continue
            clash = next((owner for other, owner in taken if other.overlaps(address)), None)
            if clash:
                self.error(("channels", i, "listen"), f"address {address} is also used by {clash}")
            owner = f"channel {ch['name']!r}" if isinstance(ch.get("name"), str) else f"channels[{i}]"
            taken.append((address, f"{owner} ({self.positions.of(('channels', i, 'listen'))})"))


def _raw_type(item: Any) -> str | None:
    value = item.get("type") if isinstance(item, dict) else None
    return value if isinstance(value, str) else None


def _explicit_name(item: Any) -> str | None:
    name = item.get("name") if isinstance(item, dict) else None
    return name if isinstance(name, str) and name else None


def _parse_address(value: Any) -> HostPort | None:
    if not isinstance(value, str):
        return None
    try:
        return HostPort.parse(value)
    except ValueError:
        return None  # the models report the format


# ---------------------------------------------------------------- pydantic errors -> findings


def pydantic_findings(
    exc: ValidationError, model: type[BaseModel], prefix: PathKey, positions: Positions
) -> list[Finding]:
    """One finding per pydantic error; never includes the input value."""
    findings: list[Finding] = []
    errors = exc.errors(include_url=False, include_input=False)
    locs = [tuple(p for p in err["loc"] if not _is_type_tag(p)) for err in errors]
    for err, loc in zip(errors, locs, strict=True):
        kind = err["type"]
        if kind == "too_short" and any(len(o) > len(loc) and o[: len(loc)] == loc for o in locs):
            continue  # pydantic drops failed items before counting: the item's own error says it all
        message = _message(kind, err["msg"], model, loc, err.get("ctx") or {})
        findings.append(positions.finding((*prefix, *loc), message, key=kind == "extra_forbidden"))
    return findings


def _is_type_tag(part: str | int) -> bool:
    return isinstance(part, str) and ("[" in part or part in _TYPE_TAGS)


def _message(kind: str, msg: str, model: type[BaseModel], loc: PathKey, ctx: dict[str, Any]) -> str:
    if kind == "missing":
        return "required key missing"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length', 1)} item(s)"
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        fields = list(_fields_by_key(owner)) if owner else []
        hint = difflib.get_close_matches(str(loc[-1]), fields, n=1, cutoff=0.6) if loc else []
        return f"unknown key (did you mean {hint[0]!r}?)" if hint else "unknown key"
    if kind in ("dict_type", "model_type", "model_attributes_type", "dataclass_type"):
        return "expected a mapping"
    if kind in ("tuple_type", "list_type"):
        return "expected a list"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def _model_at(model: type[BaseModel], loc: PathKey) -> type[BaseModel] | None:
    """The model class that validates the mapping at `loc` below `model` (for did-you-mean)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = _fields_by_key(current).get(part)
        current = _find_model(field.annotation) if field else None
    return current


def _fields_by_key(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """Fields under the key a config file uses for them (the alias, when there is one)."""
    return {info.alias or name: info for name, info in model.model_fields.items()}


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _find_model(arg)
        if found is not None:
            return found
    return None
