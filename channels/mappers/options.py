"""Channel-level mapping options (YAML → pydantic) and their compiled, per-channel form.

Public API::

    class MappingOptions(pydantic.BaseModel, extra="forbid")   # the lead's v2_to_fhir config subclasses it
    compile_options(options: MappingOptions) -> Settings      # once per channel, cached by value

``Settings`` is what mappers read on the hot path (no pydantic access per message):
``fhir_version``, ``vocab`` (vocab.Vocabulary), ``identifier_systems``, ``segments``
(frozenset or None), ``validate``, ``timezone`` (zoneinfo.ZoneInfo or None), ``validator``
("compiled" or "fhir.resources", see validate.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from channels.mappers.validate import OutputValidator
from channels.mappers.vocab import Vocabulary, load_vocabulary

FhirVersion = Literal["R4B", "R5"]


class MappingOptions(BaseModel):
    """Options of the standard HL7 v2-to-FHIR mapping; every key optional."""

    # `validate` is the YAML key; the attribute is `validate_output` because a field named
    # `validate` would shadow BaseModel.validate.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    fhir_version: FhirVersion = "R4B"
    identifier_systems: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Assigning authority (HD.1 namespace or HD.2 universal id) → identifier system URI. "
            'The key "" gives the system of identifiers that carry no assigning authority.'
        ),
    )
    code_tables: dict[str, str | dict[str, str | dict[str, str]]] = Field(
        default_factory=dict,
        description="v2 table number or concept map name → file in channels/vocab/ or {v2 code: target}.",
    )
    segments: list[str] | None = Field(
        default=None, description="Segment ids to map; None maps every supported segment."
    )
    validate_output: bool = Field(
        default=True,
        alias="validate",
        description=(
            "Validate every Bundle against the fhir.resources models before it leaves the mapper; "
            "an invalid Bundle dead-letters the message (see `validator`). On by default: the "
            "compiled validator costs ~0.3 ms per ADT message, less than a FHIR server's rejection."
        ),
    )
    validator: OutputValidator = Field(
        default="compiled",
        description=(
            'How `validate` checks a Bundle. "compiled": a plan derived from the fhir.resources models, '
            "one walk of the JSON (~0.3 ms per ADT Bundle; same rules, see channels/mappers/fhirshape.py "
            'for its few documented differences). "fhir.resources": Bundle.model_validate itself '
            "(~5 ms per ADT Bundle). Neither checks codes against value sets."
        ),
    )
    timezone: str | None = Field(
        default=None,
        description=(
            "IANA zone (e.g. America/Chicago) of the sender, applied to v2 times that carry no "
            "offset. Unset: such times keep date precision plus the original text (never a guessed zone)."
        ),
    )

    # Compiled form, filled by compile_options on first use (per instance, so per channel).
    _settings: Settings | None = PrivateAttr(default=None)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError("unknown IANA time zone") from None
        return value

    @field_validator("segments")
    @classmethod
    def _segment_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for seg in value:
                if len(seg) != 3 or not seg.isalnum() or not seg.isupper():
                    raise ValueError("segment ids are three upper-case letters or digits, e.g. PID")
        return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Compiled MappingOptions for one channel."""

    fhir_version: FhirVersion
    vocab: Vocabulary
    identifier_systems: dict[str, str]
    segments: frozenset[str] | None
    validate: bool
    timezone: ZoneInfo | None
    validator: OutputValidator = "compiled"


_compiled: dict[str, Settings] = {}


def compile_options(options: MappingOptions) -> Settings:
    """Settings for these options (loads and merges code tables once; cached on the instance
    and by value, so passing the same MappingOptions per message costs one attribute read)."""
    cached = options._settings
    if cached is not None:
        return cached
    key = options.model_dump_json(by_alias=True)
    found = _compiled.get(key)
    if found is None:
        found = Settings(
            fhir_version=options.fhir_version,
            vocab=load_vocabulary(options.code_tables),
            identifier_systems=dict(options.identifier_systems),
            segments=frozenset(options.segments) if options.segments is not None else None,
            validate=options.validate_output,
            timezone=ZoneInfo(options.timezone) if options.timezone else None,
            validator=options.validator,
        )
        if len(_compiled) < 256:  # bounded: options come from config, not from messages
            _compiled[key] = found
    options._settings = found
    return found
