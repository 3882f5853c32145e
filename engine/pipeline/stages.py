"""Built-in stages: `v2_to_fhir` (the HL7 v2-to-FHIR mapping) and `filter`.

Stages compile their YAML parameters once in the factory and run a cheap closure per
message (structlog's processor habit).
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from channels.mappers.options import MappingOptions
from engine.registry import BuildContext, Registry
from engine.types import Exchange

if TYPE_CHECKING:
    from channels.mappers.convert import ConversionResult


class V2ToFhirConfig(MappingOptions):
    """The standard HL7 v2-to-FHIR mapping (HL7 v2-to-FHIR IG), producing a transaction Bundle."""

    type: Literal["v2_to_fhir"]


@functools.cache
def _mapping() -> Callable[[str, MappingOptions], ConversionResult]:
    """The mapping function, imported on first use rather than with this module.

    The mapping code costs the process that loads it ~13 MB and ~0.2 s of CPU. Every
    engine process registers this stage (its config model validates channels), but with
    a worker pool only the workers run it, and they import it at start (workers.warm_up).
    Run inline (`workers: 0`, or `ack: after_processing`), the first message pays the
    import instead. Cached: an import statement per message would cost ~1-2 µs.
    """
    from channels.mappers.convert import convert_message

    return convert_message


class V2ToFhirStage:
    def __init__(self, channel: str, options: MappingOptions) -> None:
        self.name = "v2_to_fhir"
        self._channel = channel
        self._options = options

    def process(self, exchange: Exchange) -> Exchange:
        result = _mapping()(exchange.text, self._options)
        exchange.output = result.bundle
        # Counted by the runner (hl7engine_fields_unmapped_total): stages may run in workers.
        exchange.properties["unmapped"] = result.unmapped
        return exchange


class FieldCondition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(description="A field path such as MSH-11 or PID-3.4.")
    in_: list[str] = Field(alias="in", description="Accepted values (exact match).")


class FilterConfig(BaseModel):
    """Drops messages that do not match. A dropped message ends as `filtered`, not an error."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["filter"]
    message_types: list[str] | None = Field(
        default=None, description="Patterns on MSH-9.1^MSH-9.2, e.g. ADT^A0*; default all."
    )
    where: list[FieldCondition] = Field(default_factory=list, description="All must hold.")


class FilterStage:
    def __init__(self, config: FilterConfig) -> None:
        self.name = "filter"
        self._patterns = [p.upper() for p in config.message_types or []]
        self._conditions = [(c.field, frozenset(c.in_)) for c in config.where]

    def process(self, exchange: Exchange) -> Exchange | None:
        from engine.hl7.fields import field_value

        if self._patterns:
            code = field_value(exchange.text, "MSH-9.1") or ""
            event = field_value(exchange.text, "MSH-9.2") or ""
            kind = f"{code}^{event}".upper()
            if not any(fnmatch.fnmatchcase(kind, p) for p in self._patterns):
                return None
        for path, accepted in self._conditions:
            if (field_value(exchange.text, path) or "") not in accepted:
                return None
        return exchange


def _build_v2_to_fhir(config: BaseModel, ctx: BuildContext) -> V2ToFhirStage:
    assert isinstance(config, V2ToFhirConfig)
    options = MappingOptions.model_validate(config.model_dump(exclude={"type"}))
    return V2ToFhirStage(ctx.channel, options)


def _build_filter(config: BaseModel, ctx: BuildContext) -> FilterStage:
    assert isinstance(config, FilterConfig)
    return FilterStage(config)


def register(registry: Registry) -> None:
    registry.add_stage(
        "v2_to_fhir", V2ToFhirConfig, "Map HL7 v2 to a FHIR transaction Bundle (HL7 v2-to-FHIR IG).",
        _build_v2_to_fhir,
    )
    registry.add_stage("filter", FilterConfig, "Pass only messages matching types and field values.",
                       _build_filter)
