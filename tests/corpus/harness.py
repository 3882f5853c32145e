"""Run the third-party corpus (../shared/corpus) through our converter and score the output.

Three sources carry expected FHIR output (see the corpus README and INDEX.csv):

- cdc-prime-reportstream: `.hl7` → `.fhir` Bundle pairs, most isolating one IG row. Scored
  with their own rule, a subset match (channels.testing), after removing what is
  ReportStream's own rather than the IG's (see `normalise_cdc_expected`).
- microsoft-FHIR-Converter: message → Bundle pairs (pairs.csv) in Microsoft's conventions;
  scored per resource type and field, pairing resources by identifier.
- linuxforhealth-hl7v2-fhir-converter: Java field assertions per message (sidecar .json),
  evaluated by tests/corpus/lfh.py.

Everything here is pure data processing, so report.py and the tests share it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from channels.mappers.convert import convert_message
from channels.mappers.options import MappingOptions
from channels.mappers.v2 import split_messages
from channels.testing import DEFAULT_IGNORE_KEYS, SubsetComparator
from engine.types import MappingError
from tests.corpus import ig_alignment, lfh

CORPUS_ENV = "HL7ENGINE_CORPUS"
REQUIRE_ENV = "HL7ENGINE_REQUIRE_SERVICES"

CDC = "cdc-prime-reportstream"
MICROSOFT = "microsoft-FHIR-Converter"
LFH = "linuxforhealth-hl7v2-fhir-converter"

REPO_ROOT = Path(__file__).resolve().parents[2]


def locate_corpus() -> Path | None:
    """The corpus directory: $HL7ENGINE_CORPUS, else ../shared/corpus beside the repo."""
    configured = os.environ.get(CORPUS_ENV)
    candidate = Path(configured) if configured else REPO_ROOT.parent / "shared" / "corpus"
    return candidate if (candidate / "INDEX.csv").is_file() else None


def services_required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


# --------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class CorpusMessage:
    """One message of the corpus with where its expected output lives."""

    source: str
    file: str  # relative to the corpus root
    msg_no: int  # 1-based position inside the file
    text: str
    expected_kind: str  # "fhir", "java-assertions", "hl7", "parse-tree", ""
    expected: str  # the expected output's path relative to the corpus root, "" when none

    @property
    def key(self) -> str:
        return f"{self.file}#{self.msg_no}"

    @property
    def group(self) -> str:
        """The test folder (CDC) or test class (LinuxForHealth) the message belongs to."""
        parts = Path(self.file).parts
        if self.source == LFH and len(parts) > 1 and parts[0] == "extracted":
            return parts[1]
        return "/".join(parts[-3:-1])


def load_messages(corpus: Path) -> list[CorpusMessage]:
    """Every message listed in INDEX.csv, split out of its file."""
    with (corpus / "INDEX.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    texts: dict[str, list[str]] = {}
    messages: list[CorpusMessage] = []
    for row in rows:
        rel = row["file"]
        if rel not in texts:
            raw = (corpus / rel).read_bytes()
            texts[rel] = split_messages(raw.decode(row.get("file_encoding") or "utf-8", errors="replace"))
        msg_no = int(row["msg_no"] or 1)
        parts = texts[rel]
        if not 0 < msg_no <= len(parts):
            continue
        messages.append(
            CorpusMessage(
                source=row["source"],
                file=rel,
                msg_no=msg_no,
                text=parts[msg_no - 1],
                expected_kind=row["expected_kind"],
                expected=_expected_path(row["expected"]),
            )
        )
    return messages


def _expected_path(cell: str) -> str:
    """INDEX.csv's `expected`: `;`-separated paths, some with a `(note)` after them.

    The first JSON-ish one is the expectation (ReportStream also lists enriched variants
    and non-FHIR CSV outputs, which we do not score).
    """
    for part in cell.split(";"):
        path = part.split(" (", 1)[0].strip()
        if path.endswith((".fhir", ".json")):
            return path
    return ""


@dataclass(slots=True)
class Converted:
    """What our converter made of one message."""

    bundle: dict[str, Any] | None
    error_type: str | None = None  # the exception's class name
    error: str | None = None  # MappingError text (PHI-free by contract)
    error_segment: str | None = None  # the segment a MappingError names
    unmapped: list[tuple[str, str]] = field(default_factory=list)


def convert_all(messages: Iterable[CorpusMessage], fhir_version: str) -> dict[str, Converted]:
    """Convert each message once; exceptions are recorded, never raised."""
    options = MappingOptions(fhir_version=fhir_version)  # type: ignore[arg-type]
    results: dict[str, Converted] = {}
    for message in messages:
        try:
            result = convert_message(message.text, options)
        except MappingError as exc:
            results[message.key] = Converted(None, "MappingError", str(exc), exc.segment)
        except Exception as exc:  # recorded: the test asserts there are none
            results[message.key] = Converted(None, type(exc).__name__, None)
        else:
            results[message.key] = Converted(result.bundle, unmapped=list(result.unmapped))
    return results


# --------------------------------------------------------------------- CDC

_RS_PREFIX = "https://reportstream.cdc.gov/"
# ReportStream also keeps raw v2 components in extensions named after the field ("SN.1").
_RS_FIELD_URL = re.compile(r"^[A-Z][A-Z0-9]{1,2}\.\d+$")
_RS_ASSEMBLER = "CDC PRIME - Atlanta"


def _is_rs_extension(url: str) -> bool:
    return url.startswith(_RS_PREFIX) or bool(_RS_FIELD_URL.match(url))


def _strip_rs(node: Any) -> Any:
    """Drop ReportStream extensions (they carry raw v2 components, not IG mappings)."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("extension", "modifierExtension") and isinstance(value, list):
                kept = [
                    _strip_rs(ext)
                    for ext in value
                    if not (isinstance(ext, Mapping) and _is_rs_extension(str(ext.get("url", ""))))
                ]
                kept = [ext for ext in kept if ext not in ({}, None)]
                if kept:
                    out[key] = kept
                continue
            cleaned = _strip_rs(value)
            if cleaned in ({}, []) and value not in ({}, []):
                continue  # emptied by the removal above
            out[key] = cleaned
        # An object left holding only its url (all its sub-extensions were ReportStream's) is gone too.
        if set(out) == {"url"} and set(node) != {"url"}:
            return {}
        return out
    if isinstance(node, list):
        items = [_strip_rs(item) for item in node]
        return [item for item in items if item != {}]
    return node


def _is_rs_only(resource: Mapping[str, Any]) -> bool:
    """Resources that describe ReportStream itself rather than the message."""
    kind = resource.get("resourceType")
    if kind == "Provenance":
        codings = resource.get("activity", {}).get("coding", [])
        return any(c.get("code") == "v2-FHIR transformation" for c in codings)
    if kind == "Organization":
        return any(i.get("value") == _RS_ASSEMBLER for i in resource.get("identifier", []))
    return False


def normalise_cdc_expected(bundle: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a ReportStream Bundle the IG defines: its resources, minus RS extras.

    Bundle.type (message vs our transaction), Bundle.identifier (RS's system) and the
    Provenance/Organization describing ReportStream as the converter are not compared;
    see tests/corpus/deliberate_differences.md.
    """
    entries = []
    for entry in bundle.get("entry", []):
        resource = entry.get("resource")
        if not isinstance(resource, Mapping) or _is_rs_only(resource):
            continue
        cleaned = _drop_empty(_strip_rs(resource))
        entries.append({"resource": cleaned})
    return {"entry": entries}


def _drop_empty(node: Any) -> Any:
    """Empty objects and lists (`"name": {}`) are invalid FHIR JSON and carry no value: gone;
    so is `meta.lastUpdated` (generated, never compared) with the `meta` it leaves empty."""
    if isinstance(node, Mapping):
        kept = {k: _drop_empty(v) for k, v in node.items() if k != "lastUpdated"}
        return {k: v for k, v in kept.items() if v not in ({}, [])}
    if isinstance(node, list):
        items = [_drop_empty(item) for item in node]
        return [item for item in items if item not in ({}, [])]
    return node


def resources_only(bundle: Mapping[str, Any]) -> dict[str, Any]:
    return {"entry": [{"resource": e["resource"]} for e in bundle.get("entry", []) if "resource" in e]}


#: The resource types a ReportStream test folder isolates (its IG row's target). A pair
#: "passes on focus" when the expected resources of these types are a subset of ours,
#: whatever the header/provenance resources around them look like. Folders not listed
#: isolate a datatype: their focus is every type but MessageHeader and Provenance.
CDC_FOCUS: dict[str, frozenset[str]] = {
    "catchall/pid": frozenset({"Patient"}),
    "catchall/pd1": frozenset({"Patient"}),
    "catchall/nk1": frozenset({"RelatedPerson"}),
    "catchall/in1": frozenset({"Coverage"}),
    "catchall/msh": frozenset({"MessageHeader"}),
    "catchall/msg": frozenset({"MessageHeader"}),
    "msh/hd": frozenset({"MessageHeader"}),
    "catchall/pv1pv2": frozenset({"Encounter"}),
    "catchall/obx": frozenset({"Observation"}),
    "catchall/orcobr": frozenset({"ServiceRequest", "DiagnosticReport"}),
    "catchall/spm": frozenset({"Specimen"}),
    "catchall/nte": frozenset({"Observation", "ServiceRequest"}),
    "catchall/pl": frozenset({"Location"}),
    "catchall/dld": frozenset({"Location"}),
}
_NOT_FOCUS = frozenset({"MessageHeader", "Provenance"})


@dataclass(slots=True)
class PairScore:
    key: str
    group: str
    matched: int
    total: int
    passed: bool
    differences: list[str] = field(default_factory=list)
    error: str | None = None
    focus_passed: bool = False  # the folder's own resource types match (CDC_FOCUS)
    ig_passed: bool = False  # passes once the documented differences are in the IG's form
    ig_rules: list[str] = field(default_factory=list)  # the ig_alignment rules that applied
    ig_differences: list[str] = field(default_factory=list)


def _only_types(bundle: Mapping[str, Any], types: frozenset[str] | None) -> dict[str, Any]:
    def wanted(kind: str) -> bool:
        return kind in types if types is not None else kind not in _NOT_FOCUS

    return {"entry": [e for e in bundle.get("entry", []) if wanted(e["resource"].get("resourceType", ""))]}


def score_cdc(message: CorpusMessage, converted: Converted, corpus: Path) -> PairScore:
    expected = normalise_cdc_expected(json.loads((corpus / message.expected).read_text(encoding="utf-8")))
    comparator = SubsetComparator(DEFAULT_IGNORE_KEYS)
    total = comparator.leaves(expected)
    if converted.bundle is None:
        return PairScore(message.key, message.group, 0, total, False, error=converted.error_type)
    actual = resources_only(converted.bundle)
    matched = comparator.score(expected, actual)
    differences = [] if comparator.matches(expected, actual) else comparator.diff(expected, actual)
    focus = CDC_FOCUS.get(message.group)
    focus_passed = comparator.matches(_only_types(expected, focus), _only_types(actual, focus))
    aligned, rules = ig_alignment.align_cdc(expected, message.text)
    ig_differences = [] if comparator.matches(aligned, actual) else comparator.diff(aligned, actual)
    return PairScore(
        message.key,
        message.group,
        matched,
        total,
        not differences,
        differences,
        None,
        focus_passed,
        not ig_differences,
        rules,
        ig_differences,
    )


# --------------------------------------------------------------------- Microsoft

#: Microsoft's own additions (converter identity), not part of the v2 message.
MS_SKIPPED_TYPES = frozenset({"Provenance", "Device"})


def _strip_identifier_systems(node: Any) -> Any:
    """Microsoft's identifier systems are its own conventions: compare values, not systems."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "identifier":
                items = value if isinstance(value, list) else [value]
                stripped = [
                    {k: _strip_identifier_systems(v) for k, v in i.items() if k != "system"}
                    if isinstance(i, Mapping)
                    else i
                    for i in items
                ]
                out[key] = stripped if isinstance(value, list) else stripped[0]
            else:
                out[key] = _strip_identifier_systems(value)
        return out
    if isinstance(node, list):
        return [_strip_identifier_systems(item) for item in node]
    return node


def _identifier_values(resource: Mapping[str, Any]) -> set[str]:
    values = resource.get("identifier", [])
    items = values if isinstance(values, list) else [values]
    return {str(i.get("value")) for i in items if isinstance(i, Mapping) and i.get("value")}


def score_microsoft(
    expected_bundle: Mapping[str, Any], actual_bundle: Mapping[str, Any] | None
) -> dict[str, list[int]]:
    """Per resource type: [matched, total, expected resources, paired resources]."""
    by_type_expected: dict[str, list[dict[str, Any]]] = {}
    for entry in expected_bundle.get("entry", []):
        resource = entry.get("resource", {})
        kind = resource.get("resourceType")
        if kind and kind not in MS_SKIPPED_TYPES:
            by_type_expected.setdefault(kind, []).append(_strip_identifier_systems(resource))
    by_type_actual: dict[str, list[dict[str, Any]]] = {}
    for entry in (actual_bundle or {}).get("entry", []):
        resource = entry.get("resource", {})
        by_type_actual.setdefault(resource.get("resourceType", ""), []).append(resource)
    scores: dict[str, list[int]] = {}
    comparator = SubsetComparator(DEFAULT_IGNORE_KEYS)
    for kind, expected_resources in by_type_expected.items():
        actual_resources = by_type_actual.get(kind, [])
        candidates: list[tuple[int, int, int, int]] = []  # (-shared ids, -matched, i, j)
        totals = [comparator.leaves(r) for r in expected_resources]
        actual_ids = [_identifier_values(act) for act in actual_resources]
        for i, exp in enumerate(expected_resources):
            ids = _identifier_values(exp)
            for j, act in enumerate(actual_resources):
                candidates.append((-len(ids & actual_ids[j]), -comparator.score(exp, act), i, j))
        candidates.sort()
        used_e: set[int] = set()
        used_a: set[int] = set()
        matched_total = 0
        for _, neg_matched, i, j in candidates:
            if i in used_e or j in used_a:
                continue
            used_e.add(i)
            used_a.add(j)
            matched_total -= neg_matched
        scores[kind] = [matched_total, sum(totals), len(expected_resources), len(used_e)]
    return scores


# --------------------------------------------------------------------- LinuxForHealth


@dataclass(slots=True)
class AssertionResult:
    group: str  # test class
    segment: str
    status: lfh.Status
    stmt: str
    message: str


def score_lfh(
    message: CorpusMessage,
    converted: Converted,
    corpus: Path,
    siblings: Mapping[str, tuple[CorpusMessage, Converted]] | None = None,
) -> list[AssertionResult]:
    """Evaluate a sidecar's assertions. `siblings` are the other messages of the same test
    method by their Java variable name: a statement about one of them (lfh.message_of_assertion)
    is evaluated against that message's Bundle."""
    sidecar = json.loads((corpus / message.expected).read_text(encoding="utf-8"))
    names = list(siblings or {})
    statements = [assertion["stmt"] for assertion in sidecar.get("assertions", [])]
    parameters = sidecar.get("parameterized") or {}
    several_values = any(len(p.get("all_values", [])) > 1 for p in parameters.values())
    branches = lfh.branch_dependent(statements) if several_values else set()
    results: list[AssertionResult] = []
    for number, stmt in enumerate(statements):
        segment = lfh.assertion_segment(stmt)
        if number in branches:
            results.append(AssertionResult(message.group, segment, "unsupported", stmt, message.key))
            continue
        target_message, target = message, converted
        index = lfh.message_of_assertion(stmt, names) if len(names) > 1 else None
        if siblings is not None and index is not None:
            target_message, target = siblings[names[index]]
        outcome = lfh.Outcome("fail", "not converted") if target.bundle is None else lfh.evaluate(stmt, target.bundle)
        results.append(AssertionResult(message.group, segment, outcome.status, stmt, target_message.key))
    return results


def lfh_siblings(
    messages: Iterable[CorpusMessage], converted: Mapping[str, Converted], corpus: Path
) -> dict[str, dict[str, tuple[CorpusMessage, Converted]]]:
    """Each LinuxForHealth message's test-method siblings: message key → {Java variable: message}."""
    methods: dict[str, dict[str, tuple[CorpusMessage, Converted]]] = {}
    method_of: dict[str, str] = {}
    for message in messages:
        # Messages of a method that carry no statements of their own still have a sidecar.
        sidecar_path = corpus / (message.expected or str(Path(message.file).with_suffix(".json")))
        if message.source != LFH or not sidecar_path.is_file():
            continue
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        method = f"{sidecar.get('origin_path')}#{sidecar.get('test_method')}"
        variable = str(sidecar.get("variable") or message.key)
        methods.setdefault(method, {}).setdefault(variable, (message, converted[message.key]))
        method_of[message.key] = method
    return {key: methods[method] for key, method in method_of.items()}


# --------------------------------------------------------------------- the whole run


@dataclass(slots=True)
class CorpusRun:
    """Everything one pass over the corpus produced."""

    corpus: Path
    messages: list[CorpusMessage]
    r4b: dict[str, Converted]
    seconds: float
    cdc: list[PairScore] = field(default_factory=list)
    microsoft: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    lfh: list[AssertionResult] = field(default_factory=list)


def run_corpus(corpus: Path) -> CorpusRun:
    """Convert every message (R4B) and score each source; R5 runs separately (validation)."""
    started = time.perf_counter()
    messages = load_messages(corpus)
    converted = convert_all(messages, "R4B")
    run = CorpusRun(corpus, messages, converted, 0.0)
    siblings = lfh_siblings(messages, converted, corpus)
    for message in messages:
        result = converted[message.key]
        if not message.expected:
            continue
        if message.source == CDC and message.expected_kind == "fhir":
            run.cdc.append(score_cdc(message, result, corpus))
        elif message.source == MICROSOFT and message.expected_kind == "fhir":
            expected = json.loads((corpus / message.expected).read_text("utf-8"))
            run.microsoft[message.key] = score_microsoft(expected, result.bundle)
        elif message.source == LFH and message.expected_kind == "java-assertions":
            run.lfh.extend(score_lfh(message, result, corpus, siblings.get(message.key)))
    run.seconds = time.perf_counter() - started
    return run
