"""Subset comparison of FHIR JSON, for channel samples and the conformance harness.

The rule (the one CDC ReportStream's comparator and `hl7engine test` use): every element of
the *expected* document must be present, with the same value, in the *actual* one; extra
actual content is allowed. Lists match in any order: each expected item must match a
*distinct* actual item, itself by subset. Keys whose values are generated (ids, fullUrls,
references, timestamps) are not compared.

Public API:
- `subset_diff(expected, actual, *, ignore_keys=DEFAULT_IGNORE_KEYS) -> list[str]`:
  human-readable differences with JSON paths; an empty list means "matches".
- `count_matched(expected, actual, *, ignore_keys=...) -> tuple[int, int]`: how many of the
  expected leaf values are matched (for conformance figures), and how many there are.
- `SubsetComparator(ignore_keys)`: the same checks (`matches`, `diff`, `score`, `leaves`)
  with one memo, for callers that compare the same documents several ways.
- `run_channel_samples(channel_dir, convert) -> list[SampleResult]`: run every
  `samples/*.hl7` of a channel through `convert` and compare with `*.expected.json`.

Differences name paths and, for the expected side, values: the expected files are written
by the channel's authors (test data, not a patient feed). Actual values are never quoted,
so a diff printed in a CI log cannot leak what a converter produced from real input.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.types import EngineError

#: Keys whose values are generated per run or per server; compared by neither function.
DEFAULT_IGNORE_KEYS: frozenset[str] = frozenset({"id", "fullUrl", "reference", "lastUpdated", "timestamp", "recorded"})

# A mismatch report lists at most this many differences per expected list item, so one
# missing resource does not bury the rest of the report.
_MAX_DIFFS_PER_ITEM = 20


def subset_diff(expected: Any, actual: Any, *, ignore_keys: frozenset[str] = DEFAULT_IGNORE_KEYS) -> list[str]:
    """Return every way `expected` is not a subset of `actual` (empty list: it is)."""
    return SubsetComparator(ignore_keys).diff(expected, actual, "$")


def count_matched(expected: Any, actual: Any, *, ignore_keys: frozenset[str] = DEFAULT_IGNORE_KEYS) -> tuple[int, int]:
    """Return (matched, total) leaf values of `expected` found in `actual`.

    A leaf is a scalar (string, number, boolean, null) reached through keys that are not
    ignored. List items are paired one-to-one with actual items, best-scoring pairs first.
    """
    comparator = SubsetComparator(ignore_keys)
    return comparator.score(expected, actual), comparator.leaves(expected)


def _is_ignored(key: str, ignore_keys: frozenset[str]) -> bool:
    # FHIR JSON carries a primitive's id/extensions under "_name"; ignoring "reference"
    # also ignores "_reference".
    return key in ignore_keys or (key.startswith("_") and key[1:] in ignore_keys)


def _kind(item: Any) -> str | None:
    """The resource type a list item stands for, so entries of other types are skipped fast."""
    if isinstance(item, Mapping):
        kind = item.get("resourceType")
        if isinstance(kind, str):
            return kind
        resource = item.get("resource")
        if isinstance(resource, Mapping):
            inner = resource.get("resourceType")
            return inner if isinstance(inner, str) else None
    return None


def _scalar_equal(expected: Any, actual: Any) -> bool:
    # JSON has one number type: 1 and 1.0 are the same value; booleans are not numbers.
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return float(expected) == float(actual)
    return type(expected) is type(actual) and bool(expected == actual)


def _describe(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


class SubsetComparator:
    """Recursive subset checks with memoised results.

    One instance may serve several comparisons of the same documents (the conformance
    harness scores, diffs and counts one pair with one instance); the memo is keyed by
    object identity, so the documents must not change while it is in use.
    """

    def __init__(self, ignore_keys: frozenset[str]) -> None:
        self._ignore = ignore_keys
        # Keyed by object ids: both documents outlive the comparator, so ids stay unique.
        self._match_memo: dict[tuple[int, int], bool] = {}
        self._score_memo: dict[tuple[int, int], int] = {}

    # ------------------------------------------------------------ boolean match

    def matches(self, expected: Any, actual: Any) -> bool:
        if not isinstance(expected, Mapping | list):
            return _scalar_equal(expected, actual)
        key = (id(expected), id(actual))
        known = self._match_memo.get(key)
        if known is None:
            known = self._match_uncached(expected, actual)
            self._match_memo[key] = known
        return known

    def _match_uncached(self, expected: Any, actual: Any) -> bool:
        if isinstance(expected, Mapping):
            if not isinstance(actual, Mapping):
                return False
            for key, value in expected.items():
                if _is_ignored(key, self._ignore):
                    continue
                if key not in actual or not self.matches(value, actual[key]):
                    return False
            return True
        if isinstance(expected, list):
            if not isinstance(actual, list):
                return False
            return self._assign(expected, actual) is not None
        return _scalar_equal(expected, actual)

    def _candidates(self, expected: Sequence[Any], actual: Sequence[Any]) -> list[list[int]]:
        result: list[list[int]] = []
        for item in expected:
            kind = _kind(item)
            result.append(
                [
                    j
                    for j, other in enumerate(actual)
                    if (kind is None or _kind(other) == kind) and self.matches(item, other)
                ]
            )
        return result

    def _assign(self, expected: Sequence[Any], actual: Sequence[Any]) -> list[int] | None:
        """Pair each expected item with a distinct matching actual item (bipartite matching)."""
        candidates = self._candidates(expected, actual)
        owner: dict[int, int] = {}  # actual index -> expected index

        def augment(i: int, seen: set[int]) -> bool:
            for j in candidates[i]:
                if j in seen:
                    continue
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
            return False

        # Most constrained items first keeps the augmenting search short.
        for i in sorted(range(len(expected)), key=lambda k: len(candidates[k])):
            if not augment(i, set()):
                return None
        pairing = [0] * len(expected)
        for j, i in owner.items():
            pairing[i] = j
        return pairing

    # ------------------------------------------------------------ differences

    def diff(self, expected: Any, actual: Any, path: str = "$") -> list[str]:
        """Differences of `expected` from `actual`, each with its JSON path (empty: subset)."""
        if isinstance(expected, Mapping):
            if not isinstance(actual, Mapping):
                return [f"{path}: expected an object, found {type(actual).__name__}"]
            out: list[str] = []
            for key, value in expected.items():
                if _is_ignored(key, self._ignore):
                    continue
                child = f"{path}.{key}"
                if key not in actual:
                    out.append(f"{child}: missing (expected {_describe(value)})")
                else:
                    out.extend(self.diff(value, actual[key], child))
            return out
        if isinstance(expected, list):
            if not isinstance(actual, list):
                return [f"{path}: expected a list, found {type(actual).__name__}"]
            return self._diff_list(expected, actual, path)
        if _scalar_equal(expected, actual):
            return []
        return [f"{path}: expected {_describe(expected)}, found a different value"]

    def _diff_list(self, expected: Sequence[Any], actual: Sequence[Any], path: str) -> list[str]:
        if self._assign(expected, actual) is not None:
            return []
        # Report the items that cannot be paired, each against its closest actual item.
        candidates = self._candidates(expected, actual)
        out: list[str] = []
        used: set[int] = set()
        for i, item in enumerate(expected):
            free = [j for j in candidates[i] if j not in used]
            if free:
                used.add(free[0])
                continue
            label = f"{path}[{i}]"
            kind = _kind(item)
            pool = [j for j in range(len(actual)) if j not in used and (kind is None or _kind(actual[j]) == kind)]
            if not pool:
                what = f"no {kind} in the actual list" if kind else "no actual item left to match"
                out.append(f"{label}: {what} (expected {_describe(item)})")
                continue
            best = max(pool, key=lambda j: self.score(item, actual[j]))
            inner = self.diff(item, actual[best], label)
            if not inner:
                # It matches an item already paired with another expected item.
                inner = [f"{label}: matches only an actual item already used by another expected item"]
            out.extend(inner[:_MAX_DIFFS_PER_ITEM])
        return out

    # ------------------------------------------------------------ counting

    def leaves(self, expected: Any) -> int:
        """Scalars of `expected` reached through compared keys."""
        if isinstance(expected, Mapping):
            return sum(self.leaves(value) for key, value in expected.items() if not _is_ignored(key, self._ignore))
        if isinstance(expected, list):
            return sum(self.leaves(item) for item in expected)
        return 1

    def score(self, expected: Any, actual: Any) -> int:
        """Leaves of `expected` matched in `actual` (list items paired one-to-one, best first)."""
        if not isinstance(expected, Mapping | list):
            return 1 if _scalar_equal(expected, actual) else 0
        key = (id(expected), id(actual))
        known = self._score_memo.get(key)
        if known is None:
            known = self._score_uncached(expected, actual)
            self._score_memo[key] = known
        return known

    def _score_uncached(self, expected: Any, actual: Any) -> int:
        if isinstance(expected, Mapping):
            if not isinstance(actual, Mapping):
                return 0
            return sum(
                self.score(value, actual[key])
                for key, value in expected.items()
                if not _is_ignored(key, self._ignore) and key in actual
            )
        if isinstance(expected, list):
            if not isinstance(actual, list):
                return 0
            return self._score_list(expected, actual)
        return 1 if _scalar_equal(expected, actual) else 0

    def _score_list(self, expected: Sequence[Any], actual: Sequence[Any]) -> int:
        scored: list[tuple[int, int, int]] = []  # (-score, expected index, actual index)
        for i, item in enumerate(expected):
            kind = _kind(item)
            for j, other in enumerate(actual):
                if kind is not None and _kind(other) != kind:
                    continue
                points = self.score(item, other)
                if points:
                    scored.append((-points, i, j))
        scored.sort()
        taken_e: set[int] = set()
        taken_a: set[int] = set()
        total = 0
        for neg, i, j in scored:
            if i in taken_e or j in taken_a:
                continue
            taken_e.add(i)
            taken_a.add(j)
            total -= neg
        return total


# ------------------------------------------------------------------ channel samples


@dataclass(frozen=True, slots=True)
class SampleResult:
    """The outcome of one channel sample: `samples/NAME.hl7` against `NAME.expected.json`."""

    name: str
    message_path: Path
    expected_path: Path | None  # None: the sample only has to convert
    differences: list[str] = field(default_factory=list)
    error: str | None = None  # why conversion (or reading the expectation) failed

    @property
    def passed(self) -> bool:
        return self.error is None and not self.differences


def _expected_path_for(message_path: Path) -> Path:
    return message_path.with_name(message_path.name.removesuffix(".hl7") + ".expected.json")


def _describe_error(exc: Exception) -> str:
    # EngineError texts are PHI-free by contract (they name segments and fields);
    # any other exception text may quote input, so only its type is reported.
    if isinstance(exc, EngineError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


def sample_messages(channel_dir: Path) -> list[Path]:
    """The channel's sample messages, sorted by name (`channel_dir/samples/*.hl7`)."""
    return sorted((channel_dir / "samples").glob("*.hl7"))


def run_channel_samples(
    channel_dir: Path,
    convert: Callable[[str], dict[str, Any]],
    *,
    ignore_keys: frozenset[str] = DEFAULT_IGNORE_KEYS,
) -> list[SampleResult]:
    """Convert every sample of a channel and subset-compare it with its expectation.

    A sample without an `.expected.json` passes when it converts. Files are read as UTF-8
    (a BOM is dropped); `convert` gets the message text and returns the Bundle.
    """
    return [_run_sample(path, convert, ignore_keys) for path in sample_messages(channel_dir)]


def _run_sample(
    message_path: Path, convert: Callable[[str], dict[str, Any]], ignore_keys: frozenset[str]
) -> SampleResult:
    name = message_path.name.removesuffix(".hl7")
    candidate = _expected_path_for(message_path)
    expected_path = candidate if candidate.exists() else None
    try:
        text = message_path.read_text(encoding="utf-8-sig")
        expected = json.loads(expected_path.read_text(encoding="utf-8")) if expected_path else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return SampleResult(name, message_path, expected_path, error=f"cannot read: {type(exc).__name__}")
    try:
        actual = convert(text)
    except Exception as exc:  # a failing sample is a result, not a crash
        return SampleResult(name, message_path, expected_path, error=_describe_error(exc))
    differences = subset_diff(expected, actual, ignore_keys=ignore_keys) if expected is not None else []
    return SampleResult(name, message_path, expected_path, differences=differences)


def format_results(results: Iterable[SampleResult]) -> str:
    """A plain-text report: one line per sample, then its differences indented."""
    lines: list[str] = []
    for result in results:
        lines.append(f"{'PASS' if result.passed else 'FAIL'} {result.name}")
        if result.error:
            lines.append(f"    error: {result.error}")
        lines.extend(f"    {difference}" for difference in result.differences)
    return "\n".join(lines)
