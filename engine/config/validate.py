"""`hl7engine validate`: check a config in phases, as Vector's `validate` does.

1. Fields and types, 2. topology and references: both done by the loader, which
   collects every finding with its file:line:col.
3. Environment (when the config is otherwise valid): the store and every `OutputFile`
   can be written (their directory exists and is writable, or can be created), every
   `InputFile` (TLS files, secret files) can be read, every `{env: NAME}` secret is
   set, and, only when asked, every listen address can be bound right now.

Exposure warnings (not errors): a plaintext MLLP listener reachable from other hosts
with no `allow` list, an admin API off loopback without a token.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from engine.config.loader import load
from engine.config.models import EngineConfig, HostPort, PathRole, SecretRef
from engine.config.yamlpos import Finding, PathKey, Positions
from engine.registry import Registry

#: sysexits.h EX_CONFIG: the exit code of `hl7engine validate` for an invalid config.
EX_CONFIG = 78


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """Every finding of every phase that ran; `config` is set when there are no errors."""

    source: str
    findings: tuple[Finding, ...]
    config: EngineConfig | None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line: `config/engine.yaml: valid (1 channel: adt; 0 warnings)`."""
        warnings = len(self.warnings)
        if self.config is None or not self.ok:
            return f"{self.source}: invalid ({len(self.errors)} error(s), {warnings} warning(s))"
        names = ", ".join(ch.name for ch in self.config.channels)
        count = len(self.config.channels)
        plural = "" if count == 1 else "s"
        return f"{self.source}: valid ({count} channel{plural}: {names}; {warnings} warning(s))"


def validate_config(
    path: Path | str,
    registry: Registry | None = None,
    check_environment: bool = True,
    *,
    check_ports: bool = False,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> ValidationReport:
    """Run every phase; phase 3 only when phases 1-2 found no error and `check_environment`."""
    env = os.environ if env is None else env
    result = load(path, registry, env=env, base_dir=base_dir)
    findings = list(result.findings)
    config = result.config
    if config is not None:
        findings += exposure_warnings(config, result.positions)
        if check_environment:
            findings += environment_findings(config, result.positions, env=env, check_ports=check_ports)
    ordered = tuple(sorted(set(findings), key=Finding.sort_key))
    ok = not any(f.severity == "error" for f in ordered)
    return ValidationReport(result.source, ordered, config if ok else None)


def main_validate(
    path: Path,
    registry: Registry | None = None,
    *,
    check_ports: bool = False,
    out: TextIO | None = None,
) -> int:
    """Print every finding and a one-line summary; return 0, or EX_CONFIG (78) when invalid."""
    stream = out if out is not None else sys.stdout
    report = validate_config(path, registry, check_ports=check_ports)
    for finding in report.findings:
        print(finding, file=stream)
    print(report.summary(), file=stream)
    return 0 if report.ok else EX_CONFIG


# ---------------------------------------------------------------- phase 3: environment


def environment_findings(
    config: EngineConfig,
    positions: Positions,
    *,
    env: Mapping[str, str] | None = None,
    check_ports: bool = False,
) -> list[Finding]:
    """Files writable/readable, secrets resolvable, and (optionally) ports bindable."""
    env = os.environ if env is None else env
    findings: list[Finding] = []
    for path, role, value in _marked_values(config, ()):
        problem: str | None
        if isinstance(value, SecretRef):
            missing = value.env is not None and value.env not in env
            problem = f"environment variable {value.env} is not set" if missing else None
        elif role is PathRole.OUTPUT:
            problem = _output_problem(value)
        else:
            problem = _input_problem(value)
        if problem:
            findings.append(positions.finding(path, problem))
    if check_ports:
        for path, address in _listen_addresses(config):
            problem = _bind_problem(address)
            if problem:
                findings.append(positions.finding(path, problem))
    return findings


def _marked_values(
    value: Any, path: PathKey, role: PathRole | None = None
) -> Iterator[tuple[PathKey, Any, Any]]:
    """(path, role, value) for every marked Path and every SecretRef anywhere in the config."""
    if isinstance(value, SecretRef):
        yield path, None, value
    if isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            yield from _marked_values(getattr(value, name), (*path, info.alias or name), _role(info))
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield from _marked_values(item, (*path, i), role)
    elif isinstance(value, Path) and role is not None:
        yield path, role, value


def _role(info: FieldInfo) -> PathRole | None:
    for meta in info.metadata:
        if isinstance(meta, PathRole):
            return meta
    return _role_in(info.annotation)


def _role_in(annotation: Any) -> PathRole | None:
    """Find the PathRole marker inside `InputFile | None`, `tuple[OutputFile, ...]` and the like."""
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, PathRole):
            return meta
    for arg in get_args(annotation):
        found = _role_in(arg)
        if found is not None:
            return found
    return None


def _output_problem(path: Path) -> str | None:
    """Can the engine create or append to `path`? Missing directories may be created."""
    if path.exists():
        if path.is_dir():
            return f"{path} is a directory, not a file"
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {path}: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: directory {parent} is not writable"
    return None


def _input_problem(path: Path) -> str | None:
    if not path.exists():
        return f"file not found: {path}"
    if path.is_dir():
        return f"{path} is a directory, not a file"
    return None if os.access(path, os.R_OK) else f"{path} is not readable"


def _listen_addresses(config: EngineConfig) -> Iterator[tuple[PathKey, HostPort]]:
    yield ("admin", "listen"), config.admin.listen
    for i, channel in enumerate(config.channels):
        if channel.enabled:
            yield ("channels", i, "listen"), channel.listen


def _bind_problem(address: HostPort) -> str | None:
    """Try to bind as the server will (SO_REUSEADDR); port 0 always succeeds."""
    if address.port == 0:
        return None
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return f"cannot resolve host {address.host}"
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            return f"cannot bind {address}: {exc.strerror or type(exc).__name__}"
    return None


# ---------------------------------------------------------------- exposure warnings


def exposure_warnings(config: EngineConfig, positions: Positions) -> list[Finding]:
    """Listeners that would expose PHI or the operator API beyond this host."""
    findings: list[Finding] = []
    for i, channel in enumerate(config.channels):
        exposed = channel.enabled and not channel.listen.is_loopback
        if exposed and channel.tls is None and channel.allow is None:
            findings.append(
                positions.finding(
                    ("channels", i, "listen"),
                    "plaintext MLLP open to any host: add 'tls:' or an 'allow:' list of sender networks",
                    severity="warning",
                )
            )
    if not config.admin.listen.is_loopback and not config.admin.tokens:
        message = "admin API reachable from other hosts without 'tokens'"
        findings.append(positions.finding(("admin", "listen"), message, severity="warning"))
    return findings
