"""YAML with positions: plain Python values plus where each value and key came from.

PyYAML's `compose` gives a node tree whose nodes carry `start_mark` (0-based line and
column). We build ordinary dicts, lists and scalars from it and keep a map from each
value's path (`("channels", 0, "pipeline")`) to its 1-based file:line:col, so every
later finding can point at the exact spot an operator has to edit.

`${NAME}` / `${NAME:-default}` references in string scalars are replaced from the
environment here, because only here is the scalar's position known. Strings that held
a reference come back as `Interpolated`, which remembers the text as written so a
secret field can tell a reference from a literal.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

PathKey = tuple[str | int, ...]

_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: Aliases can make a small file expand enormously; a config never needs this many nodes.
MAX_NODES = 100_000


# ---------------------------------------------------------------- positions and findings


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in a config file; line and column are 1-based, as editors count."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def format_path(path: PathKey) -> str:
    """`("channels", 0, "sinks", 1, "path")` -> `channels[0].sinks[1].path`; `()` -> `(root)`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(root)"


Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem in a config, printed as `file:line:col: dotted.path: message`.

    Messages name keys and config values, never message content (there is none here)
    and never secret values.
    """

    position: Position
    path: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.position}: {self.path}: {prefix}{self.message}"

    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.position.file, self.position.line, self.position.col, self.path, self.message)


@dataclass(slots=True)
class Positions:
    """Where each value (and each mapping key) of a loaded document starts."""

    default: Position
    values: dict[PathKey, Position] = field(default_factory=dict)
    keys: dict[PathKey, Position] = field(default_factory=dict)

    def of(self, path: PathKey, *, key: bool = False) -> Position:
        """Position of `path` (its key when `key`), else of its nearest ancestor present."""
        if key and path in self.keys:
            return self.keys[path]
        for end in range(len(path), -1, -1):
            found = self.values.get(path[:end])
            if found is not None:
                return found
        return self.default

    def rebased(self, old: PathKey, new: PathKey) -> Positions:
        """The entries under `old`, moved under `new` (an included file's channel into `channels[i]`)."""
        moved = Positions(self.default)
        n = len(old)
        for src, dst in ((self.values, moved.values), (self.keys, moved.keys)):
            for path, pos in src.items():
                if path[:n] == old:
                    dst[new + path[n:]] = pos
        return moved

    def update(self, other: Positions) -> None:
        self.values.update(other.values)
        self.keys.update(other.keys)

    def finding(
        self, path: PathKey, message: str, *, key: bool = False, severity: Severity = "error"
    ) -> Finding:
        return Finding(self.of(path, key=key), format_path(path), message, severity)


# ---------------------------------------------------------------- ${ENV} interpolation


class Interpolated(str):
    """A string built from `${...}` references; `template` is the scalar as written."""

    template: str
    refs: tuple[str, ...]

    def __new__(cls, value: str, template: str, refs: tuple[str, ...]) -> Interpolated:
        obj = super().__new__(cls, value)
        obj.template = template
        obj.refs = refs
        return obj


class InterpolationError(ValueError):
    """A bad or unresolvable reference; `offset` is where it starts in the scalar."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Replace `${NAME}` and `${NAME:-default}`; `$${` writes a literal `${`.

    As in a POSIX shell, `:-` uses the default when NAME is unset or empty; a plain
    `${NAME}` that is unset is an error (an empty value is allowed). Defaults cannot
    contain `}` and references do not nest.
    """
    if "$" not in text:
        return text
    out: list[str] = []
    refs: list[str] = []
    i = 0
    while i < len(text):
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        if text.startswith("$${", j):
            out.append("${")
            i = j + 3
            continue
        if not text.startswith("${", j):
            out.append("$")
            i = j + 1
            continue
        end = text.find("}", j + 2)
        if end < 0:
            raise InterpolationError(j, "unterminated '${' (write '$${' for a literal '${')")
        name, has_default, default = text[j + 2 : end].partition(":-")
        if not _ENV_NAME.fullmatch(name):
            # The body is not echoed: it may be a mistyped secret.
            raise InterpolationError(j, "invalid reference (expected ${NAME} or ${NAME:-default})")
        value = env.get(name)
        if has_default and not value:
            value = default
        elif value is None:
            raise InterpolationError(j, f"environment variable {name} is not set")
        out.append(value)
        refs.append(name)
        i = end + 1
    result = "".join(out)
    return Interpolated(result, text, tuple(refs)) if refs else result


# ---------------------------------------------------------------- node tree -> values


@dataclass(slots=True)
class Document:
    """A loaded YAML file: its value (None for an empty file) and its positions."""

    value: Any
    positions: Positions


class _Builder:
    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.positions = Positions(Position(file, 1, 1))
        self.findings: list[Finding] = []
        self._constructor = yaml.SafeLoader("")  # only its scalar constructors are used
        self._active: set[int] = set()  # nodes being built: a repeat means a recursive alias
        self._count = 0

    def pos(self, node: Node, extra_col: int = 0) -> Position:
        return Position(self.file, node.start_mark.line + 1, node.start_mark.column + 1 + extra_col)

    def problem(self, node: Node, path: PathKey, message: str, extra_col: int = 0) -> None:
        self.findings.append(Finding(self.pos(node, extra_col), format_path(path), message))

    def build(self, node: Node, path: PathKey) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            raise _TooLargeError
        self.positions.values[path] = self.pos(node)
        if id(node) in self._active:
            self.problem(node, path, "recursive alias")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ_TAG:
                    self.problem(node, path, f"YAML tag {node.tag} is not supported")
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            assert isinstance(node, ScalarNode)
            return self._scalar(node, path)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: MappingNode, path: PathKey) -> dict[str, Any]:
        if node.tag != _MAP_TAG:
            self.problem(node, path, f"YAML tag {node.tag} is not supported")
        own = {id(key_node) for key_node, _ in node.value if key_node.tag != _MERGE_TAG}
        try:
            self._constructor.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        except yaml.MarkedYAMLError as exc:
            self.problem(node, path, exc.problem or "invalid merge key")
            return {}
        out: dict[str, Any] = {}
        written: set[str] = set()  # keys written in this mapping itself, not merged in
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.problem(key_node, path, "mapping keys must be plain strings")
                continue
            # Keys are taken as written: YAML 1.1 would turn `on:` or `yes:` into True.
            key = str(key_node.value)
            child = (*path, key)
            is_own = id(key_node) in own
            if key in written and is_own:
                first = self.positions.keys[child].line
                self.problem(key_node, child, f"duplicate key (first at line {first})")
                continue
            if is_own:
                written.add(key)
            # Merged pairs come first; a later pair (own or from a later merge) overrides.
            self.positions.keys[child] = self.pos(key_node)
            out[key] = self.build(value_node, child)
        return out

    def _scalar(self, node: ScalarNode, path: PathKey) -> Any:
        if node.tag != _STR_TAG:
            try:
                return self._constructor.construct_object(node)
            except yaml.MarkedYAMLError as exc:
                self.problem(node, path, exc.problem or f"cannot read a {node.tag} value")
                return None
        text = str(node.value)
        try:
            return interpolate(text, self.env)
        except InterpolationError as exc:
            self.problem(node, path, exc.message, self._column_offset(node, exc.offset))
            return Interpolated(text, text, ())  # still a reference: no second finding downstream

    @staticmethod
    def _column_offset(node: ScalarNode, offset: int) -> int:
        """Point inside a one-line scalar at the bad reference; else at the scalar."""
        if node.start_mark.line != node.end_mark.line:
            return 0
        if node.style is None:
            return offset
        if node.style in ("'", '"'):
            return offset + 1  # past the opening quote (exact unless escapes precede it)
        return 0


class _TooLargeError(Exception):
    pass


def load_yaml(
    path: Path, display: str, env: Mapping[str, str] | None = None
) -> tuple[Document | None, list[Finding]]:
    """Read one YAML file. Returns (document, findings); document is None when unreadable.

    `display` is how the file is named in findings (usually relative to the working
    directory). Findings here are syntax errors, duplicate keys and bad references.
    """
    env = os.environ if env is None else env
    start = Position(display, 1, 1)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [Finding(start, "(file)", "file not found")]
    except IsADirectoryError:
        return None, [Finding(start, "(file)", "is a directory, not a YAML file")]
    except UnicodeDecodeError:
        return None, [Finding(start, "(file)", "not valid UTF-8")]
    except OSError as exc:
        return None, [Finding(start, "(file)", f"cannot read: {exc.strerror or type(exc).__name__}")]
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Position(display, mark.line + 1, mark.column + 1) if mark else start
        message = exc.problem or "invalid YAML"
        if exc.context:
            message = f"{message} ({exc.context})"
        return None, [Finding(where, "(yaml)", message)]
    except yaml.YAMLError as exc:
        return None, [Finding(start, "(yaml)", f"invalid YAML ({type(exc).__name__})")]
    builder = _Builder(display, env)
    if root is None:
        return Document(None, builder.positions), []
    try:
        value = builder.build(root, ())
    except _TooLargeError:
        return None, [Finding(start, "(yaml)", f"document expands to more than {MAX_NODES} nodes")]
    return Document(value, builder.positions), builder.findings
