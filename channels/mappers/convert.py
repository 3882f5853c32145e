"""Convert one HL7 v2 message to a FHIR transaction Bundle.

Public API::

    convert_message(text: str, options: MappingOptions | Settings) -> ConversionResult
    ConversionResult(bundle: dict[str, Any], unmapped: list[tuple[str, str]])

``unmapped`` is the field accounting (issue 3): (segment id, field number) for every field
present in a mapped segment that no mapper read (or that a mapper rejected as invalid),
and (segment id, "*") for every segment that has no mapper or is excluded by the
channel's ``segments`` option; (segment id, "missing") for a segment the message map
requires that the message lacks (an ADT without PID). Never values. Duplicates are
reported once, in message order. The caller (the ``v2_to_fhir`` stage) counts them in
``hl7engine_fields_unmapped_total{channel,segment,field}``.

A missing required segment does not refuse the message: the segments that are there are
mapped (an ADT^A01 without PID still gives its MessageHeader and Encounter, whose subject
is optional) and the gap is reported. A segment that needs what is missing (NK1, IN1, PD1
need the PID's Patient) raises MappingError naming itself.

Errors: any input that cannot be converted raises engine.types.MappingError (naming the
segment and field, never a value). An unexpected exception inside a mapper is a bug: it
is re-raised as MappingError("unexpected <ExceptionType> ...") so the runner dead-letters
the message with a reason that names the segment but not the data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import channels.mappers.segments  # noqa: F401  (registers every segment map)
from channels.mappers.bundle import BundleBuilder
from channels.mappers.datatypes import forget_message_dates
from channels.mappers.messages import MappingContext, mapper_for, message_map
from channels.mappers.options import MappingOptions, Settings, compile_options
from channels.mappers.v2 import V2Message, parse_message
from channels.mappers.validate import validate_bundle
from engine.types import MappingError

MISSING = "missing"  # the "field" reported for a required segment the message lacks


@dataclass(frozen=True, slots=True)
class ConversionResult:
    bundle: dict[str, Any]
    unmapped: list[tuple[str, str]]


def _identity(message: V2Message) -> str:
    """Hash of the segments (terminator-independent): same message, same fullUrls.

    The hashed text is every segment's fields joined by the field separator, each segment
    followed by CR, hashed in one piece.
    """
    text = "".join([seg.delims.field.join(seg.fields_as_received()) + "\r" for seg in message.segment_list])
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _missing_required(message: V2Message) -> list[str]:
    """Segments the message map requires (PID in ADT, MRG in A40) that the message lacks."""
    msh = message.msh
    mm = message_map(msh.value(9, 1), msh.value(9, 2), msh.value(9, 3))
    if mm is None:
        return []
    return [seg_id for seg_id in mm.required if message.first(seg_id) is None]


def convert_message(text: str, options: MappingOptions | Settings) -> ConversionResult:
    """Map one message (see the module docstring for the result and the errors)."""
    settings = options if isinstance(options, Settings) else compile_options(options)
    forget_message_dates()
    message = parse_message(text)
    if len(message.segments("MSH")) > 1:
        raise MappingError("several messages in one text; split them first", segment="MSH")
    missing = _missing_required(message)
    builder = BundleBuilder(_identity(message), settings.fhir_version)
    ctx = MappingContext(message, settings, builder)
    mapped_positions: list[int] = []
    unmapped: list[tuple[str, str]] = [(seg_id, MISSING) for seg_id in missing]
    selected = settings.segments
    for seg in message.segment_list:
        mapper = mapper_for(seg.id)
        if mapper is None or (selected is not None and seg.id not in selected):
            unmapped.append((seg.id, "*"))
            continue
        try:
            mapper(seg, ctx)
        except MappingError:
            raise
        except Exception as exc:  # a mapper bug must still surface as MappingError, without data
            raise MappingError(f"unexpected {type(exc).__name__} while mapping", segment=seg.id) from None
        mapped_positions.append(seg.position)
    try:
        ctx.finish()
    except MappingError:
        raise
    except Exception as exc:
        raise MappingError(f"unexpected {type(exc).__name__} while finishing the Bundle") from None
    for position in mapped_positions:
        seg = message.segment_list[position]
        for number in seg.unused_fields():
            unmapped.append((seg.id, str(number)))
    for position, number in sorted(ctx.rejected):
        unmapped.append((message.segment_list[position].id, str(number)))
    bundle = builder.build()
    if settings.validate:
        validate_bundle(bundle, settings.fhir_version, settings.validator)
    return ConversionResult(bundle, list(dict.fromkeys(unmapped)))
