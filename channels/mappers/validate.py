"""Validate an output Bundle against the fhir.resources models (R4B: fhir.resources.R4B, R5: top level).

Public API::

    validate_bundle(bundle: dict, fhir_version: "R4B" | "R5", validator: "compiled" | "fhir.resources") -> None
        # raises MappingError

Two validators, chosen per channel (``MappingOptions.validator``):

- ``compiled`` (default, ~0.3 ms per ADT Bundle): channels.mappers.fhirshape, a plan
  compiled from the same fhir.resources model classes and checked by one walk of the
  dict. It checks what fhir.resources checks: unknown elements, list versus single,
  required elements (a required primitive may be replaced by a ``_field`` extension),
  primitive formats (fhir_core's own regexes and rules, through pydantic), nulls and
  empty values where fhir_core rejects them, one ``value[x]`` per choice, and the
  ``resourceType`` of contained resources. Its few known differences (a JSON string
  where an object belongs, which fhir.resources parses) are listed in fhirshape's
  docstring and pinned by tests.
- ``fhir.resources`` (~5 ms per ADT Bundle): ``Bundle.model_validate`` itself, the reference.

Neither checks codes against value sets, reference targets or FHIRPath invariants.

The error names the resource type and the element path (``Patient.birthDate``) and the
error type, never the offending value (PHI).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ValidationError

from engine.types import MappingError

FhirVersion = Literal["R4B", "R5"]
OutputValidator = Literal["compiled", "fhir.resources"]

Loc = tuple[int | str, ...]


def _bundle_model(fhir_version: FhirVersion) -> Any:
    # Imported lazily (fhir_core and the models take ~1 s): most channels never validate.
    from channels.mappers.fhirshape import bundle_model

    return bundle_model(fhir_version)


def _element_path(bundle: dict[str, Any], loc: Loc, fhir_version: FhirVersion) -> str:
    """Dotted element path (``Patient.name.given``) for an error location inside the Bundle."""
    from channels.mappers.fhirshape import is_resource_type

    parts = list(loc)
    if len(parts) >= 3 and parts[0] == "entry" and isinstance(parts[1], int) and parts[2] == "resource":
        index = parts[1]
        entries = bundle.get("entry", [])
        rtype = "Resource"
        if isinstance(entries, list) and 0 <= index < len(entries) and isinstance(entries[index], dict):
            resource = entries[index].get("resource")
            declared = resource.get("resourceType") if isinstance(resource, dict) else None
            # Only a type the models know: an arbitrary string from the input could be data.
            if isinstance(declared, str) and is_resource_type(declared, fhir_version):
                rtype = declared
        rest = [str(p) for p in parts[3:] if not isinstance(p, int) and str(p) != rtype]
        return ".".join([rtype, *rest])
    return ".".join(["Bundle", *(str(p) for p in parts if not isinstance(p, int))])


def _invalid(bundle: dict[str, Any], fhir_version: FhirVersion, loc: Loc, error_type: str, count: int) -> MappingError:
    more = f" (+{count - 1} more)" if count > 1 else ""
    path = _element_path(bundle, loc, fhir_version)
    return MappingError(f"invalid {fhir_version} output at {path}: {error_type}{more}")


def validate_bundle(
    bundle: dict[str, Any], fhir_version: FhirVersion = "R4B", validator: OutputValidator = "compiled"
) -> None:
    """Raise MappingError when `bundle` is not a valid FHIR Bundle of this version."""
    if validator == "compiled":
        _validate_compiled(bundle, fhir_version)
    else:
        _validate_with_models(bundle, fhir_version)


def _validate_compiled(bundle: dict[str, Any], fhir_version: FhirVersion) -> None:
    from channels.mappers.fhirshape import bundle_shape_errors

    errors = bundle_shape_errors(bundle, fhir_version)
    if errors:
        raise _invalid(bundle, fhir_version, errors[0].loc, errors[0].type, len(errors))


def _validate_with_models(bundle: dict[str, Any], fhir_version: FhirVersion) -> None:
    model = _bundle_model(fhir_version)
    try:
        model.model_validate(bundle)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        loc, error_type = (tuple(errors[0]["loc"]), str(errors[0]["type"])) if errors else ((), "invalid")
        raise _invalid(bundle, fhir_version, loc, error_type, len(errors)) from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        # fhir.resources raises plain errors for a few shapes (e.g. an unknown resourceType).
        raise MappingError(f"invalid {fhir_version} output: {type(exc).__name__}") from None
