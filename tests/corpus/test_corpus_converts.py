"""Issue 3, done-means 2: every corpus message converts, and every Bundle is valid FHIR.

A message either becomes a Bundle that validates under fhir.resources (R4B models for R4B
output, R5 models for R5 output) or raises MappingError naming a segment; any other
exception is a bug.
"""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.bundle import Bundle as BundleR5
from fhir.resources.R4B.bundle import Bundle as BundleR4B
from pydantic import ValidationError

from tests.corpus import harness

pytestmark = pytest.mark.corpus


def _unexpected_errors(conversions: dict[str, harness.Converted]) -> list[str]:
    return sorted(
        f"{key}: {c.error_type}"
        for key, c in conversions.items()
        if c.error_type is not None and c.error_type != "MappingError"
    )


def _invalid_bundles(conversions: dict[str, harness.Converted], model: Any) -> list[str]:
    failures: list[str] = []
    for key, converted in sorted(conversions.items()):
        if converted.bundle is None:
            continue
        try:
            model.model_validate(converted.bundle)
        except ValidationError as exc:
            # Only the locations: validation messages may quote input values.
            where = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})[:3]
            failures.append(f"{key}: {where}")
    return failures


class TestCorpusConverts:
    def test_corpus_is_complete(self, corpus_run: harness.CorpusRun) -> None:
        """The harness found every message INDEX.csv lists (a broken split would hide failures)."""
        assert len(corpus_run.messages) >= 950

    def test_only_mapping_errors_in_r4b(self, corpus_run: harness.CorpusRun) -> None:
        """Converting to R4B raises nothing but MappingError."""
        assert _unexpected_errors(corpus_run.r4b) == []

    def test_only_mapping_errors_in_r5(self, r5_conversions: dict[str, harness.Converted]) -> None:
        """Converting to R5 raises nothing but MappingError."""
        assert _unexpected_errors(r5_conversions) == []

    def test_no_mapper_crashes(
        self, corpus_run: harness.CorpusRun, r5_conversions: dict[str, harness.Converted]
    ) -> None:
        """convert.py wraps a crashing mapper as MappingError("unexpected ..."): there must be none."""
        crashed = sorted(
            key
            for conversions in (corpus_run.r4b, r5_conversions)
            for key, c in conversions.items()
            if c.error and c.error.split(": ", 1)[-1].startswith("unexpected")
        )
        assert crashed == []

    def test_mapping_errors_name_a_segment(self, corpus_run: harness.CorpusRun) -> None:
        """A message we refuse says which segment made it unconvertible."""
        unnamed = sorted(
            key for key, c in corpus_run.r4b.items() if c.error_type == "MappingError" and not c.error_segment
        )
        assert unnamed == []

    def test_most_messages_convert(self, corpus_run: harness.CorpusRun) -> None:
        """Refusing is the exception: nearly every real-world message yields a Bundle."""
        converted = sum(1 for c in corpus_run.r4b.values() if c.bundle is not None)
        assert converted >= 0.97 * len(corpus_run.r4b)

    def test_r4b_bundles_validate(self, corpus_run: harness.CorpusRun) -> None:
        """Every R4B Bundle validates under the fhir.resources R4B models."""
        assert _invalid_bundles(corpus_run.r4b, BundleR4B) == []

    def test_r5_bundles_validate(self, r5_conversions: dict[str, harness.Converted]) -> None:
        """Every R5 Bundle validates under the fhir.resources R5 models."""
        assert _invalid_bundles(r5_conversions, BundleR5) == []

    def test_bundles_are_transactions(self, corpus_run: harness.CorpusRun) -> None:
        """Every Bundle is a transaction whose entries carry a request (conditional writes)."""
        wrong = [
            key
            for key, c in corpus_run.r4b.items()
            if c.bundle is not None
            and (c.bundle.get("type") != "transaction" or any("request" not in e for e in c.bundle["entry"]))
        ]
        assert wrong == []
