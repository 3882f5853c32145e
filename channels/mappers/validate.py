"""Validate a Bundle with fhir.resources (R4B: fhir.resources.R4B, R5: fhir.resources top level).

Public API::

    validate_bundle(bundle: dict, fhir_version: "R4B" | "R5") -> None   # raises MappingError

The error names the resource type and the element path (``Patient.birthDate``) and the
pydantic error type, never the offending value (PHI). fhir.resources checks structure
and datatypes (unknown elements, wrong types, missing required elements), not codes.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from pydantic import ValidationError

from engine.types import MappingError

FhirVersion = Literal["R4B", "R5"]


def _bundle_model(fhir_version: FhirVersion) -> Any:
    # Imported lazily: the models take ~1 s to import and most channels never validate.
    module = "fhir.resources.bundle" if fhir_version == "R5" else "fhir.resources.R4B.bundle"
    return importlib.import_module(module).Bundle


def _element_path(bundle: dict[str, Any], loc: tuple[int | str, ...]) -> tuple[str, str]:
    """(resource type, dotted element path) for a pydantic error location."""
    parts = list(loc)
    if len(parts) >= 3 and parts[0] == "entry" and isinstance(parts[1], int) and parts[2] == "resource":
        index = parts[1]
        entries = bundle.get("entry", [])
        rtype = "Resource"
        if 0 <= index < len(entries) and isinstance(entries[index], dict):
            resource = entries[index].get("resource")
            if isinstance(resource, dict):
                rtype = str(resource.get("resourceType", "Resource"))
        rest = [str(p) for p in parts[3:] if not isinstance(p, int) and str(p) != rtype]
        return rtype, ".".join([rtype, *rest])
    return "Bundle", ".".join(["Bundle", *(str(p) for p in parts if not isinstance(p, int))])


def validate_bundle(bundle: dict[str, Any], fhir_version: FhirVersion = "R4B") -> None:
    """Raise MappingError when `bundle` is not a valid FHIR Bundle of this version."""
    model = _bundle_model(fhir_version)
    try:
        model.model_validate(bundle)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        first = errors[0] if errors else {"loc": (), "type": "invalid"}
        _, path = _element_path(bundle, tuple(first["loc"]))
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise MappingError(f"invalid {fhir_version} output at {path}: {first['type']}{more}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        # fhir.resources raises plain errors for a few shapes (e.g. an unknown resourceType).
        raise MappingError(f"invalid {fhir_version} output: {type(exc).__name__}") from None
