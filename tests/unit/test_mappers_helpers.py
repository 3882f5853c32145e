"""Helpers shared by the test_mappers_* modules (plus tests of the subset comparator itself)."""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from channels.mappers.convert import ConversionResult, convert_message
from channels.mappers.escape import DEFAULT_DELIMITERS
from channels.mappers.options import MappingOptions, Settings, compile_options
from channels.mappers.v2 import Repetition
from channels.mappers.validate import validate_bundle

MSH_A01 = "MSH|^~\\&|SENDAPP|SENDFAC|RCVAPP|RCVFAC|20240101120000-0500||ADT^A01^ADT_A01|CTRL1|P|2.5.1"
IGNORED_KEYS = frozenset({"id", "fullUrl", "reference", "timestamp", "recorded", "lastUpdated"})


def segment(seg_id: str, fields: dict[int, str]) -> str:
    """A segment line with the given fields (field number → raw text) and empty fields between."""
    last = max(fields, default=0)
    return "|".join([seg_id, *(fields.get(n, "") for n in range(1, last + 1))])


def by_name(bundle: dict[str, Any], resource_type: str, name: str) -> dict[str, Any]:
    found = [r for r in resources(bundle, resource_type) if r.get("name") == name]
    assert len(found) == 1, f"{len(found)} {resource_type} named so"
    return found[0]


def settings(**options: Any) -> Settings:
    return compile_options(MappingOptions(**options))


def rep(text: str) -> Repetition:
    """One repetition written with the default delimiters."""
    return Repetition(text, DEFAULT_DELIMITERS)


@cache
def _model(version: str, resource_type: str) -> Any:
    package = "fhir.resources.R4B" if version == "R4B" else "fhir.resources"
    module = importlib.import_module(f"{package}.{resource_type.lower()}")
    return getattr(module, resource_type)


def validate_resource(resource: dict[str, Any], version: str) -> None:
    """Validate one resource dict with the fhir.resources model of its type (raises on error)."""
    _model(version, resource["resourceType"]).model_validate(resource)


def convert_both(text: str, **options: Any) -> dict[str, ConversionResult]:
    """Convert with R4B and R5 and validate both Bundles with fhir.resources."""
    results = {}
    for version in ("R4B", "R5"):
        result = convert_message(text, MappingOptions(fhir_version=version, **options))
        validate_bundle(result.bundle, version)  # type: ignore[arg-type]
        results[version] = result
    return results


def resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def one(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    found = resources(bundle, resource_type)
    assert len(found) == 1, f"{len(found)} {resource_type} resources"
    return found[0]


def subset_mismatches(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Paths of `expected` not found in `actual` (lists: each expected item matches some actual item)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [path or "."]
        out: list[str] = []
        for key, value in expected.items():
            if key in IGNORED_KEYS:
                continue
            if key not in actual:
                out.append(f"{path}.{key}")
            else:
                out.extend(subset_mismatches(value, actual[key], f"{path}.{key}"))
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [path]
        out = []
        for index, item in enumerate(expected):
            if not any(not subset_mismatches(item, candidate) for candidate in actual):
                out.append(f"{path}[{index}]")
        return out
    return [] if expected == actual else [path]


def bundle_mismatches(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Bundle-level keys must match; each expected entry (resource and request) must be a
    subset of some actual entry whose resource has the same type."""
    out = subset_mismatches({k: v for k, v in expected.items() if k != "entry"}, actual)
    for index, entry in enumerate(expected.get("entry", [])):
        rtype = entry.get("resource", {}).get("resourceType")
        candidates = [e for e in actual.get("entry", []) if e["resource"].get("resourceType") == rtype]
        if not any(not subset_mismatches(entry, c) for c in candidates):
            best = min((subset_mismatches(entry, c) for c in candidates), key=len, default=["(none)"])
            out.append(f"entry[{index}] {rtype}: {best}")
    return out


class TestSubsetMismatches:
    def test_subset_passes_and_missing_value_fails(self) -> None:
        """Extra actual content is fine; a missing or different expected value is reported with its path."""
        actual = {"a": 1, "b": [{"x": 1, "y": 2}, {"x": 3}], "id": "z"}
        assert subset_mismatches({"b": [{"x": 3}], "id": "other"}, actual) == []
        assert subset_mismatches({"b": [{"x": 4}]}, actual) == [".b[0]"]
        assert subset_mismatches({"c": 1}, actual) == [".c"]
