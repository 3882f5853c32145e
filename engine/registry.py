"""Plugin registry: a name maps to a typed config model, a one-line summary and a factory.

The registry is an object, not a module-level dict, so tests can clone it and add
plugins without touching the process-wide default.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel

from engine.types import Sink, Stage

PluginKind = Literal["stage", "sink"]
T = TypeVar("T", Stage, Sink)


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a factory may know about where it is built."""

    channel: str
    config_dir: Path  # relative paths in plugin config resolve against this


@dataclass(frozen=True, slots=True)
class Plugin(Generic[T]):
    name: str
    kind: PluginKind
    config_model: type[BaseModel]
    summary: str
    factory: Callable[[BaseModel, BuildContext], T]


class Registry:
    def __init__(self) -> None:
        self._stages: dict[str, Plugin[Stage]] = {}
        self._sinks: dict[str, Plugin[Sink]] = {}

    def add_stage(
        self,
        name: str,
        config_model: type[BaseModel],
        summary: str,
        factory: Callable[[BaseModel, BuildContext], Stage],
    ) -> None:
        if name in self._stages:
            raise ValueError(f"stage {name!r} is already registered")
        self._stages[name] = Plugin(name, "stage", config_model, summary, factory)

    def add_sink(
        self,
        name: str,
        config_model: type[BaseModel],
        summary: str,
        factory: Callable[[BaseModel, BuildContext], Sink],
    ) -> None:
        if name in self._sinks:
            raise ValueError(f"sink {name!r} is already registered")
        self._sinks[name] = Plugin(name, "sink", config_model, summary, factory)

    def stage(self, name: str) -> Plugin[Stage] | None:
        return self._stages.get(name)

    def sink(self, name: str) -> Plugin[Sink] | None:
        return self._sinks.get(name)

    def stage_names(self) -> list[str]:
        return sorted(self._stages)

    def sink_names(self) -> list[str]:
        return sorted(self._sinks)

    def clone(self) -> Registry:
        other = Registry()
        other._stages = copy.copy(self._stages)
        other._sinks = copy.copy(self._sinks)
        return other


_default: Registry | None = None
_stages_only: Registry | None = None


def default_registry() -> Registry:
    """The registry with every built-in stage and sink (imported lazily to avoid cycles)."""
    global _default  # noqa: PLW0603 - built once, then only read
    if _default is None:
        from engine.plugins import register_builtins

        reg = Registry()
        register_builtins(reg)
        _default = reg
    return _default


def stage_registry() -> Registry:
    """Only the built-in stages: what a stage worker process loads (sinks and their
    client libraries would cost each worker tens of MB for nothing)."""
    global _stages_only  # noqa: PLW0603 - built once, then only read
    if _stages_only is None:
        from engine.plugins import register_stages

        reg = Registry()
        register_stages(reg)
        _stages_only = reg
    return _stages_only
