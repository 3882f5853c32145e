"""compact_json (orjson) writes what the standard library would: differential tests."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.mappers.convert import convert_message
from channels.mappers.options import MappingOptions
from engine.jsonbytes import compact_json
from engine.types import MappingError
from tests.corpus import harness


def stdlib(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# What mappers put in a Bundle: text of any kind (no lone surrogates: decoded messages
# hold none), integers, booleans, nested objects and arrays.
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), _text)
_documents = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)),
    max_leaves=30,
)


class TestCompactJson:
    @settings(max_examples=400, deadline=None)
    @given(_documents)
    def test_same_bytes_as_the_standard_library(self, document: Any) -> None:
        """Any text, integer and nesting: byte for byte what json.dumps writes."""
        assert stdlib(document) == compact_json(document)

    @given(st.integers(min_value=2**64, max_value=10**40) | st.integers(max_value=-(2**63) - 1, min_value=-(10**40)))
    def test_integers_beyond_64_bits_fall_back_to_the_same_json(self, big: int) -> None:
        """An NM of 20+ digits: orjson refuses it, the fallback writes it exactly."""
        document = {"valueQuantity": {"value": big}, "note": "é"}
        assert stdlib(document) == compact_json(document)

    @given(st.floats(allow_nan=False, allow_infinity=False))
    def test_floats_keep_their_value(self, value: float) -> None:
        """Floats may be spelled differently (1e-07 / 1e-7) but read back identical."""
        read = json.loads(compact_json({"value": value}))["value"]
        assert read == value and math.copysign(1, read) == math.copysign(1, value)

    def test_one_line_no_raw_newline(self) -> None:
        """NDJSON needs one line per document: newlines inside strings are escaped."""
        assert b"\n" not in compact_json({"text": "line one\nline two\r\u2028"})


@pytest.fixture(scope="module")
def corpus_bundles() -> list[dict[str, Any]]:
    corpus = harness.locate_corpus()
    if corpus is None:
        if harness.services_required():
            pytest.fail("the corpus is required (HL7ENGINE_REQUIRE_SERVICES=1) but missing")
        pytest.skip("third-party corpus not found beside the repository")
    bundles = []
    for version in ("R4B", "R5"):
        options = MappingOptions(fhir_version=version, validate_output=False)  # type: ignore[arg-type]
        for message in harness.load_messages(corpus):
            try:
                bundles.append(convert_message(message.text, options).bundle)
            except MappingError:
                continue
    return bundles


class TestCorpusOutputs:
    def test_every_corpus_bundle_serialises_as_before(self, corpus_bundles: list[dict[str, Any]]) -> None:
        """Every Bundle the mapper makes from the corpus, R4B and R5: identical bytes."""
        assert len(corpus_bundles) > 200
        different = [i for i, bundle in enumerate(corpus_bundles) if stdlib(bundle) != compact_json(bundle)]
        assert [] == different
