"""The subset comparator used by the harness and by `hl7engine test` (channels/testing.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from channels.testing import count_matched, format_results, run_channel_samples, subset_diff
from engine.types import MappingError


class TestSubsetDiff:
    def test_equal_documents_match(self) -> None:
        """A document is a subset of itself."""
        doc = {"resourceType": "Patient", "name": [{"family": "Doe", "given": ["J"]}]}
        assert subset_diff(doc, doc) == []

    def test_extra_actual_content_is_allowed(self) -> None:
        """Keys only the actual document has are not differences."""
        assert subset_diff({"a": 1}, {"a": 1, "b": 2}) == []

    def test_missing_key_is_reported_with_its_path(self) -> None:
        """A key absent from the actual document is named by its JSON path."""
        assert subset_diff({"name": [{"family": "Doe"}]}, {"name": [{"given": ["J"]}]}) == [
            '$.name[0].family: missing (expected "Doe")'
        ]

    def test_different_value_does_not_quote_the_actual_value(self) -> None:
        """A wrong value names the path and the expected value only (the actual may be PHI)."""
        diffs = subset_diff({"gender": "male"}, {"gender": "SECRET"})
        assert diffs == ['$.gender: expected "male", found a different value']
        assert "SECRET" not in diffs[0]

    def test_lists_match_in_any_order(self) -> None:
        """List items pair up regardless of position."""
        assert subset_diff([{"v": 1}, {"v": 2}], [{"v": 2, "x": 0}, {"v": 1}]) == []

    def test_each_expected_item_needs_a_distinct_actual_item(self) -> None:
        """Two equal expected items cannot both match one actual item."""
        assert subset_diff([{"v": 1}, {"v": 1}], [{"v": 1}, {"v": 2}])

    def test_matching_needs_backtracking(self) -> None:
        """A greedy pairing would fail here; the bipartite matching finds the valid one."""
        expected = [{"a": 1}, {"a": 1, "b": 2}]
        actual = [{"a": 1, "b": 2}, {"a": 1}]
        assert subset_diff(expected, actual) == []

    def test_ignored_keys_are_not_compared(self) -> None:
        """ids, fullUrls, references and timestamps never cause a difference."""
        expected = {"id": "1", "fullUrl": "x", "subject": {"reference": "Patient/1"}, "_id": {"x": 1}}
        assert subset_diff(expected, {"subject": {"reference": "urn:uuid:9"}}) == []

    def test_numbers_compare_by_value_and_booleans_are_not_numbers(self) -> None:
        """1 equals 1.0, but True does not equal 1."""
        assert subset_diff({"n": 1}, {"n": 1.0}) == []
        assert subset_diff({"n": True}, {"n": 1})

    def test_missing_resource_type_is_reported(self) -> None:
        """An expected entry whose resource type is absent says so."""
        expected = {"entry": [{"resource": {"resourceType": "Coverage", "status": "active"}}]}
        actual = {"entry": [{"resource": {"resourceType": "Patient"}}]}
        diffs = subset_diff(expected, actual)
        assert len(diffs) == 1
        assert diffs[0].startswith("$.entry[0]: no Coverage in the actual list")

    def test_unmatched_item_is_diffed_against_the_closest_actual_item(self) -> None:
        """The report points at the one differing field of the nearest candidate."""
        expected = {"entry": [{"resource": {"resourceType": "Patient", "gender": "male", "active": True}}]}
        actual = {"entry": [{"resource": {"resourceType": "Patient", "gender": "female", "active": True}}]}
        assert subset_diff(expected, actual) == ['$.entry[0].resource.gender: expected "male", found a different value']

    def test_custom_ignore_keys(self) -> None:
        """Callers choose which keys are generated."""
        assert subset_diff({"a": 1, "b": 2}, {"a": 1}, ignore_keys=frozenset({"b"})) == []


class TestCountMatched:
    def test_counts_leaves(self) -> None:
        """Every scalar reached through a compared key is one leaf."""
        expected = {"id": "x", "name": [{"family": "Doe", "given": ["A", "B"]}], "active": True}
        assert count_matched(expected, expected) == (4, 4)

    def test_partial_match(self) -> None:
        """Only the leaves found in the actual document count as matched."""
        expected = {"name": [{"family": "Doe", "given": ["A", "B"]}], "gender": "male"}
        actual = {"name": [{"family": "Doe", "given": ["B"]}], "gender": "female"}
        assert count_matched(expected, actual) == (2, 4)

    def test_list_items_are_paired_one_to_one(self) -> None:
        """One actual item cannot be credited to two expected items."""
        assert count_matched([{"v": 1}, {"v": 1}], [{"v": 1}]) == (1, 2)

    def test_entries_of_other_resource_types_are_not_credited(self) -> None:
        """An Organization's fields never count towards an expected Patient."""
        expected = [{"resourceType": "Patient", "name": [{"text": "X"}]}]
        actual = [{"resourceType": "Organization", "name": [{"text": "X"}]}]
        assert count_matched(expected, actual) == (0, 2)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


class TestRunChannelSamples:
    def test_passing_failing_and_unexpected_samples(self, tmp_path: Path) -> None:
        """Each sample is converted and compared with its own expectation."""
        samples = tmp_path / "samples"
        _write(samples / "a.hl7", "MSH|A")
        _write(samples / "a.expected.json", json.dumps({"resourceType": "Bundle", "type": "transaction"}))
        _write(samples / "b.hl7", "MSH|B")
        _write(samples / "b.expected.json", json.dumps({"resourceType": "Bundle", "type": "batch"}))
        _write(samples / "c.hl7", "MSH|C")

        def convert(text: str) -> dict[str, Any]:
            return {"resourceType": "Bundle", "type": "transaction", "id": text}

        results = run_channel_samples(tmp_path, convert)
        assert [r.name for r in results] == ["a", "b", "c"]
        assert [r.passed for r in results] == [True, False, True]
        assert results[1].differences == ['$.type: expected "batch", found a different value']
        assert results[2].expected_path is None
        report = format_results(results)
        assert "PASS a" in report
        assert "FAIL b" in report

    def test_conversion_errors_are_results_without_input_text(self, tmp_path: Path) -> None:
        """A converter failure is reported; only EngineError texts (PHI-free) are quoted."""
        _write(tmp_path / "samples" / "m.hl7", "MSH|MAPPING")
        _write(tmp_path / "samples" / "n.hl7", "MSH|SECRET")

        def convert(text: str) -> dict[str, Any]:
            if text.endswith("MAPPING"):
                raise MappingError("required field missing", segment="PID", field="3")
            raise ValueError(text)

        results = run_channel_samples(tmp_path, convert)
        assert results[0].error == "MappingError: PID-3: required field missing"
        assert results[1].error == "ValueError"
        assert not any(r.passed for r in results)

    def test_bom_is_dropped(self, tmp_path: Path) -> None:
        """A UTF-8 BOM at the start of a sample never reaches the converter."""
        (tmp_path / "samples").mkdir()
        (tmp_path / "samples" / "bom.hl7").write_bytes(b"\xef\xbb\xbfMSH|x")
        seen: list[str] = []

        def convert(text: str) -> dict[str, Any]:
            seen.append(text)
            return {}

        assert run_channel_samples(tmp_path, convert)[0].passed
        assert seen == ["MSH|x"]
