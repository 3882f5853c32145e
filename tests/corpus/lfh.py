"""Evaluate LinuxForHealth's field assertions against our Bundles.

LinuxForHealth's tests are Java: `assertThat(patient.getIdentifier().get(0).getSystem())
.isEqualTo("urn:id:XYZ"); // PID.3.4`. The corpus keeps each statement (not the code that
bound its variables), so this module reads a statement as a path plus an expectation:

- the root variable's name gives the resource type (`patient` → Patient, `orgIdentifier` →
  somewhere inside an Organization, `coding` → somewhere in the Bundle);
- each HAPI getter is a FHIR JSON key (`getIdentifier()` → `identifier`, `get(0)` → `[0]`,
  `getUseElement().getCode()` → `use`, `getValue()` on an Observation → `value[x]`,
  `hasX()` → "x is present", `getGivenAsSingleString()` → the givens joined by a space);
- the matcher (`isEqualTo`, `hasToString`, `containsPattern`, `hasSize`, `isTrue`, `isNull` …)
  is checked existentially: the assertion passes when some resource of that type (some
  element, for an intermediate variable) satisfies it; negative matchers on a resource
  variable must hold for every such resource.

Statements whose expectation is itself a variable or an expression we cannot see
(`isEqualTo(patientId)`, `V3MaritalStatus.M.getDisplay()`, string concatenation, lambdas)
are `unsupported`: counted and reported, never passed or failed.

The segment an assertion checks is the one its comment names (`// IN1.36`), else the one
whose IG map produces the root resource (Patient → PID, Coverage → IN1 …).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["pass", "fail", "unsupported"]

_MISSING: Any = object()


class Unsupported(Exception):
    """The statement cannot be evaluated from its text alone."""


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    reason: str = ""


# --------------------------------------------------------------------- names → types

# Longest stem first: the first stem a lower-cased variable name starts with wins.
_TYPE_STEMS: tuple[tuple[str, str], ...] = tuple(
    sorted(
        {
            "patient": "Patient",
            "pat": "Patient",
            "coverage": "Coverage",
            "insurance": "Coverage",
            "organization": "Organization",
            "org": "Organization",
            "payor": "Organization",
            "relatedperson": "RelatedPerson",
            "related": "RelatedPerson",
            "encounter": "Encounter",
            "enc": "Encounter",
            "observation": "Observation",
            "obs": "Observation",
            "diagnosticreport": "DiagnosticReport",
            "diag": "DiagnosticReport",
            "report": "DiagnosticReport",
            "condition": "Condition",
            "cond": "Condition",
            "allergyintolerance": "AllergyIntolerance",
            "allergy": "AllergyIntolerance",
            "immunization": "Immunization",
            "immu": "Immunization",
            "imm": "Immunization",
            "servicerequest": "ServiceRequest",
            "servicereq": "ServiceRequest",
            "servreq": "ServiceRequest",
            "service": "ServiceRequest",
            "medicationrequest": "MedicationRequest",
            "medrequest": "MedicationRequest",
            "medreq": "MedicationRequest",
            "msgh": "MessageHeader",
            "messageheader": "MessageHeader",
            "practitioner": "Practitioner",
            "practioner": "Practitioner",
            "pract": "Practitioner",
            "prac": "Practitioner",
            "procedure": "Procedure",
            "documentreference": "DocumentReference",
            "docref": "DocumentReference",
            "specimen": "Specimen",
            "spm": "Specimen",
            "device": "Device",
            "location": "Location",
            "account": "Account",
        }.items(),
        key=lambda item: -len(item[0]),
    )
)

# What a variable name may add to a stem and still name the resource itself
# (`patientOne`, `obsGlucose`, `orgResource`), rather than something inside it
# (`orgIdentifier`, `contactName`).
_RESOURCE_SUFFIXES = re.compile(
    r"^(?:resource|\d+|obj\w*|hemoglobin|glucose|stenosis|tachy|verified|"
    r"bundle\d*|w)?$"
)
_LIST_SUFFIXES = re.compile(r"^(?:s|resource|resources|list|ies)$")

SEGMENT_OF_TYPE: dict[str, str] = {
    "Patient": "PID",
    "Coverage": "IN1",
    "RelatedPerson": "NK1",
    "Encounter": "PV1",
    "Observation": "OBX",
    "DiagnosticReport": "OBR",
    "ServiceRequest": "ORC",
    "Condition": "DG1",
    "AllergyIntolerance": "AL1",
    "Procedure": "PR1",
    "Immunization": "RXA",
    "MessageHeader": "MSH",
    "Specimen": "SPM",
    "MedicationRequest": "RXO",
    "DocumentReference": "TXA",
}

_SEGMENT_TAG = re.compile(r"\b([A-Z][A-Z0-9]{2})[.-](\d+)")


def resource_type_of(name: str) -> tuple[str | None, str]:
    """(resource type, what follows the stem) for a Java variable name."""
    lowered = name.lower()
    for stem, resource_type in _TYPE_STEMS:
        if lowered.startswith(stem):
            return resource_type, lowered[len(stem) :]
    return None, lowered


def segment_tag(comment: str) -> str | None:
    """The v2 field a comment names (`IN1.36`, `PID-3.4`), as its segment id."""
    match = _SEGMENT_TAG.search(comment)
    return match.group(1) if match else None


# --------------------------------------------------------------------- Java text


def split_comment(stmt: str) -> tuple[str, str]:
    """(code, trailing // comment), ignoring // inside string literals."""
    in_string = False
    i = 0
    while i < len(stmt):
        ch = stmt[i]
        if in_string:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif stmt.startswith("//", i):
            return stmt[:i].strip(), stmt[i + 2 :].strip()
        i += 1
    return stmt.strip(), ""


def _matching_paren(text: str, open_index: int) -> int:
    depth = 0
    in_string = False
    i = open_index
    while i < len(text):
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise Unsupported("unbalanced parentheses")


def _split_args(text: str) -> list[str]:
    args: list[str] = []
    depth = 0
    in_string = False
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    tail = text[start:].strip()
    if tail:
        args.append(tail)
    return args


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[str, ...]


def parse_chain(expr: str) -> tuple[str, list[Call]]:
    """`root.getA().get(0).getB()` → ("root", [getA(), get(0), getB()])."""
    expr = expr.strip()
    while expr.startswith("(") and _matching_paren(expr, 0) == len(expr) - 1:
        expr = expr[1:-1].strip()
    match = _IDENT.match(expr)
    if not match:
        raise Unsupported("subject is not a variable")
    root = match.group(0)
    calls: list[Call] = []
    i = match.end()
    while i < len(expr):
        if expr[i].isspace():
            i += 1
            continue
        if expr[i] != ".":
            raise Unsupported("subject is an expression")
        name_match = _IDENT.match(expr, i + 1)
        if not name_match:
            raise Unsupported("subject is an expression")
        j = name_match.end()
        while j < len(expr) and expr[j].isspace():
            j += 1
        if j >= len(expr) or expr[j] != "(":
            raise Unsupported("field access")
        close = _matching_paren(expr, j)
        calls.append(Call(name_match.group(0), tuple(_split_args(expr[j + 1 : close]))))
        i = close + 1
    return root, calls


@dataclass(frozen=True, slots=True)
class Statement:
    subject: str
    matcher: str
    args: tuple[str, ...]


_JUNIT = re.compile(r"^(?:Assertions\.)?(assertEquals|assertNull|assertNotNull|assertTrue|assertFalse)\s*\(")


def parse_statement(code: str) -> Statement:
    """Subject, matcher and matcher arguments of an AssertJ or JUnit assertion."""
    code = code.strip().rstrip(";").strip()
    junit = _JUNIT.match(code)
    if junit:
        open_index = junit.end() - 1
        close = _matching_paren(code, open_index)
        args = _split_args(code[open_index + 1 : close])
        kind = junit.group(1)
        if kind == "assertEquals" and len(args) >= 2:
            return Statement(args[1], "isEqualTo", (args[0],))
        if kind in ("assertNull", "assertNotNull", "assertTrue", "assertFalse") and args:
            matcher = {"assertNull": "isNull", "assertNotNull": "isNotNull", "assertTrue": "isTrue"}
            return Statement(args[0], matcher.get(kind, "isFalse"), ())
        raise Unsupported("junit form")
    if code.startswith("assertThat") or code.startswith("assert "):
        open_index = code.index("(")
        close = _matching_paren(code, open_index)
        subject = code[open_index + 1 : close]
        rest = code[close + 1 :].strip()
        last: tuple[str, tuple[str, ...]] | None = None
        while rest:
            match = re.match(r"\.\s*([A-Za-z_]\w*)\s*\(", rest)
            if not match:
                raise Unsupported("matcher")
            close = _matching_paren(rest, match.end() - 1)
            last = (match.group(1), tuple(_split_args(rest[match.end() : close])))
            rest = rest[close + 1 :].strip()
        if last is None:
            raise Unsupported("no matcher")
        return Statement(subject, last[0], last[1])
    raise Unsupported("not an assertion")


def _java_string(literal: str) -> str:
    body = literal[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m.group(1), m.group(1)), body)


_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?[fFdDlL]?$")
_ENUM = re.compile(r"^(?:[A-Z]\w*\.)+([A-Z][A-Z0-9_]*)$")
_BIG_DECIMAL = re.compile(r'^(?:new BigDecimal\(\s*"?([-\d.]+)"?\s*\)|BigDecimal\.valueOf\(\s*([-\d.]+)\s*\))$')


def literal_value(expr: str) -> Any:
    """The value of a Java literal expression; Unsupported for anything computed."""
    expr = expr.strip()
    if len(expr) >= 2 and expr[0] == '"' and expr[-1] == '"' and '" +' not in expr and '+ "' not in expr:
        return _java_string(expr)
    if expr in ("true", "false"):
        return expr == "true"
    if _NUMBER.match(expr):
        text = expr.rstrip("fFdDlL")
        return float(text) if "." in text else int(text)
    big = _BIG_DECIMAL.match(expr)
    if big:
        return float(big.group(1) or big.group(2))
    enum = _ENUM.match(expr)
    if enum:
        # HAPI enums print as their FHIR code: ContactPointUse.HOME → "home", NULL → null.
        name = enum.group(1)
        if name == "NULL":
            return None
        return _RUN_TOGETHER_CODES.get(name, name.lower().replace("_", "-"))
    raise Unsupported("expected value is not a literal")


_RELATIVE_REFERENCE = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9.\-]+$")

# HAPI enum constants whose FHIR code has hyphens the constant's name drops.
_RUN_TOGETHER_CODES = {
    "REPLACEDBY": "replaced-by",
    "ENTEREDINERROR": "entered-in-error",
    "INPROGRESS": "in-progress",
    "ONHOLD": "on-hold",
    "NOTDONE": "not-done",
    "ORIGINALORDER": "original-order",
    "REFLEXORDER": "reflex-order",
    "FILLERORDER": "filler-order",
    "INSTANCEORDER": "instance-order",
    "NOTTAKEN": "not-taken",
}


# --------------------------------------------------------------------- evaluation


def _resources(bundle: Mapping[str, Any], resource_type: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if isinstance(resource, dict) and (resource_type is None or resource.get("resourceType") == resource_type):
            out.append(resource)
    return out


def _descendants(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, Mapping):
        for value in node.values():
            yield from _descendants(value)
    elif isinstance(node, list):
        for item in node:
            yield from _descendants(item)


# HAPI names a primitive choice accessor after its type class: getDeceasedDateTimeType()
# reads deceasedDateTime, hasMultipleBirthBooleanType() multipleBirthBoolean.
_PRIMITIVE_CHOICE = re.compile(
    r"(?<=[a-z])(Boolean|Integer|DateTime|Date|String|Decimal|Time|Instant|Code|Uri|PositiveInt|UnsignedInt)Type$"
)


def _key_of(getter: str) -> str:
    name = getter[3:] if getter.startswith(("get", "has")) else getter
    for suffix in ("FirstRep", "Element", "AsSingleString"):
        name = name.removesuffix(suffix)
    name = _PRIMITIVE_CHOICE.sub(r"\1", name)
    name = name.rstrip("_")  # HAPI: getClass_() for Encounter.class
    return name[:1].lower() + name[1:]


def _lookup(node: Any, key: str) -> Any:
    """node[key], or a choice element key[x] (valueQuantity, onsetDateTime …)."""
    if not isinstance(node, Mapping):
        return _MISSING
    if key in node:
        return node[key]
    for candidate, value in node.items():
        if candidate.startswith(key) and candidate[len(key) :] in _CHOICE_TYPES:
            return value
    return _MISSING


# The type suffixes of FHIR choice elements (value[x], onset[x] …). Not "Id": `subscriberId`
# is its own element, not subscriber[x].
_CHOICE_TYPES = frozenset(
    [
        "Boolean",
        "Integer",
        "String",
        "DateTime",
        "Date",
        "Time",
        "Instant",
        "Decimal",
        "Uri",
        "Url",
        "Canonical",
        "Code",
        "Oid",
        "Uuid",
        "PositiveInt",
        "UnsignedInt",
        "Base64Binary",
        "Markdown",
        "Period",
        "Quantity",
        "CodeableConcept",
        "Coding",
        "Reference",
        "Range",
        "Ratio",
        "Attachment",
        "Age",
        "Duration",
        "Address",
        "Annotation",
        "ContactPoint",
        "HumanName",
        "Identifier",
        "Money",
        "SampledData",
        "Signature",
        "Timing",
        "Dosage",
        "Count",
        "Distance",
        "Meta",
        "Expression",
    ]
)


_SELF_ON_PRIMITIVE = frozenset(
    {
        "getCode",
        "getValue",
        "getValueAsString",
        "toString",
        "asStringValue",
        "getValueAsNumber",
        "toCode",
        "getDisplay",
        "getSystem",
        "primitiveValue",
        "name",
        "intValue",
        "doubleValue",
        "floatValue",
    }
)


def apply_call(node: Any, call: Call) -> Any:
    """One HAPI call on a FHIR JSON node; _MISSING when the element is absent."""
    name = call.name
    if node is _MISSING:
        if name.startswith("has"):
            return False
        if name in ("isEmpty",):
            return True
        if name == "size":
            return 0
        return _MISSING
    if name == "get" and len(call.args) == 1:
        index = literal_value(call.args[0])
        if isinstance(node, list) and isinstance(index, int) and 0 <= index < len(node):
            return node[index]
        return _MISSING
    if name == "size":
        return len(node) if isinstance(node, list | str) else 1
    if name == "isEmpty":
        return not node
    if name == "getExtensionByUrl" and len(call.args) == 1:
        url = literal_value(call.args[0])
        for ext in node.get("extension", []) if isinstance(node, Mapping) else []:
            if isinstance(ext, Mapping) and ext.get("url") == url:
                return ext
        return _MISSING
    if not isinstance(node, Mapping | list):
        if name in _SELF_ON_PRIMITIVE:
            return node
        if name.startswith("has") and name in ("hasValue", "hasCode"):
            return True
        raise Unsupported(f"{name} on a primitive")
    if isinstance(node, list) and not name.startswith("has"):
        if name.endswith("FirstRep"):
            return apply_call(node[0], call) if node else _MISSING
        if name.endswith("AsSingleString"):
            return " ".join(str(v) for v in node)
        # A HAPI getter on what FHIR JSON holds as a list: apply to the first item.
        return apply_call(node[0], call) if node else _MISSING
    if call.args or not name.startswith(("get", "has")):
        raise Unsupported(f"call {name}")
    value = _lookup(node, _key_of(name))
    if name.startswith("has"):
        return value is not _MISSING and value not in ([], {}, "")
    if name.endswith("FirstRep") and isinstance(value, list):
        return value[0] if value else _MISSING
    if name.endswith("AsSingleString"):
        if isinstance(value, list):
            return " ".join(str(v) for v in value)
        return "" if value is _MISSING else value
    return value


def _resolve(node: Any, calls: list[Call]) -> Any:
    for call in calls:
        node = apply_call(node, call)
    return node


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _equal(actual: Any, expected: Any) -> bool:
    if actual is _MISSING:
        return expected is None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return float(actual) == float(expected)
    if isinstance(expected, int | float) and isinstance(actual, str):
        try:
            return float(actual) == float(expected)
        except ValueError:
            return False
    if isinstance(expected, str) and not isinstance(actual, Mapping | list):
        return _scalar_text(actual) == expected
    return bool(actual == expected)


_POSITIVE = frozenset(
    {
        "isEqualTo",
        "hasToString",
        "isEqualByComparingTo",
        "containsPattern",
        "contains",
        "containsIgnoringCase",
        "startsWith",
        "endsWith",
        "isNotNull",
        "isNotBlank",
        "isNotEmpty",
        "hasSize",
        "isTrue",
        "isZero",
    }
)
_NEGATIVE = frozenset({"isNull", "isFalse", "isEmpty"})
_WITH_EXPECTED_VALUE = frozenset(
    {
        "isEqualTo",
        "hasToString",
        "isEqualByComparingTo",
        "containsPattern",
        "contains",
        "containsIgnoringCase",
        "startsWith",
        "endsWith",
        "hasSize",
    }
)


def _check(matcher: str, args: tuple[str, ...], actual: Any) -> bool:
    if matcher in ("isEqualTo", "hasToString", "isEqualByComparingTo"):
        return _equal(actual, literal_value(args[0]))
    if matcher in ("containsPattern", "contains", "containsIgnoringCase", "startsWith", "endsWith"):
        if actual is _MISSING or isinstance(actual, Mapping):
            return False
        expected = literal_value(args[0])
        if isinstance(actual, list):
            return matcher == "contains" and any(_equal(item, expected) for item in actual)
        text = _scalar_text(actual)
        if matcher == "containsPattern":
            return re.search(str(expected), text) is not None
        if matcher == "containsIgnoringCase":
            return str(expected).lower() in text.lower()
        if matcher == "startsWith":
            return text.startswith(str(expected))
        if matcher == "endsWith":
            return text.endswith(str(expected))
        return str(expected) in text
    if matcher == "hasSize":
        size = literal_value(args[0])
        if actual is _MISSING:
            return bool(size == 0)
        return isinstance(actual, list | str) and len(actual) == size
    if matcher == "isTrue":
        return actual is True
    if matcher == "isFalse":
        return actual is False or actual is _MISSING
    if matcher == "isNull":
        return actual is _MISSING or actual is None
    if matcher in ("isNotNull",):
        return actual is not _MISSING and actual is not None
    if matcher in ("isNotBlank", "isNotEmpty"):
        return actual is not _MISSING and actual not in ("", [], {})
    if matcher == "isEmpty":
        return actual is _MISSING or actual in ("", [], {})
    if matcher == "isZero":
        return isinstance(actual, int | float) and actual == 0
    raise Unsupported(f"matcher {matcher}")


def evaluate(stmt: str, bundle: Mapping[str, Any]) -> Outcome:
    """Evaluate one LinuxForHealth assertion statement against one of our Bundles."""
    code, _ = split_comment(stmt)
    try:
        statement = parse_statement(code)
        if statement.matcher not in _POSITIVE | _NEGATIVE:
            raise Unsupported(f"matcher {statement.matcher}")
        if statement.matcher in _WITH_EXPECTED_VALUE:
            if not statement.args:
                raise Unsupported("matcher without a value")
            expected = literal_value(statement.args[0])  # an expectation we cannot see is unsupported, first
            if isinstance(expected, str) and _RELATIVE_REFERENCE.match(expected):
                # `Organization/idvalue1`: LinuxForHealth's resource-id convention; ids are
                # generated (urn:uuid fullUrls here) and never compared, as for the other sources.
                raise Unsupported("expected value is a resource id")
        root, calls = parse_chain(statement.subject)
        resource_type, rest = resource_type_of(root)
        ordinal = _ORDINAL.match(rest)
        if resource_type and ordinal:
            return _evaluate_nth(statement, calls, bundle, resource_type, ordinal)
        counting = statement.matcher in ("hasSize", "isEmpty", "isNotEmpty", "isNotNull")
        counts_list = _LIST_SUFFIXES.match(rest) or statement.matcher in ("hasSize", "isEmpty")
        element = rest.removesuffix("list")
        if resource_type and not calls and counting and element and not _RESOURCE_SUFFIXES.match(rest):
            # A list element held in a variable: `encParticipantList` = Encounter.participant.
            resources = _resources(bundle, resource_type)
            lists = [_element_ignoring_case(r, element) for r in resources]
            if any(found is not _MISSING for found in lists):
                return _outcome(
                    any(_check(statement.matcher, statement.args, found) for found in lists if found is not _MISSING)
                )
        if resource_type and not calls and counting and counts_list:
            # A list of resources: `assertThat(patients).hasSize(1)`.
            count = len(_resources(bundle, resource_type))
            return _outcome(_check(statement.matcher, statement.args, [None] * count))
        negative = statement.matcher in _NEGATIVE or (
            statement.matcher == "isEqualTo" and statement.args and statement.args[0] == "false"
        )
        if resource_type and _RESOURCE_SUFFIXES.match(rest):
            resources = _resources(bundle, resource_type)
            if not resources:
                return Outcome("fail", f"no {resource_type}")
            results = [_check(statement.matcher, statement.args, _resolve(r, calls)) for r in resources]
            return _outcome(all(results) if negative else any(results))
        if negative:
            raise Unsupported("negative assertion on an intermediate variable")
        scope = _resources(bundle, resource_type)
        if not calls:
            # A bare intermediate (`value`, `system`): some scalar in scope has the value.
            nodes = [n for r in scope for n in _descendants(r) if not isinstance(n, Mapping | list)]
            if statement.matcher == "hasSize":
                raise Unsupported("size of an intermediate variable")
            return _outcome(any(_safe_check(statement, node) for node in nodes))
        starts = [n for r in scope for n in _descendants(r) if isinstance(n, Mapping | list)]
        return _outcome(any(_safe_check(statement, _safe_resolve(node, calls)) for node in starts))
    except Unsupported as exc:
        return Outcome("unsupported", str(exc))


# `patientOne`, `patientTwoIdentifierList`: the n-th resource of the type in Bundle order
# (LinuxForHealth's order and ours agree: message order).
_ORDINAL = re.compile(r"^(one|two|three|four|five)(.*)$")
_ORDINALS = {"one": 0, "two": 1, "three": 2, "four": 3, "five": 4}


def _evaluate_nth(
    statement: Statement, calls: list[Call], bundle: Mapping[str, Any], resource_type: str, ordinal: re.Match[str]
) -> Outcome:
    resources = _resources(bundle, resource_type)
    index = _ORDINALS[ordinal.group(1)]
    if index >= len(resources):
        return Outcome("fail", f"no {resource_type} number {index + 1}")
    node: Any = resources[index]
    inner = ordinal.group(2)
    if inner:
        element = _element_ignoring_case(node, inner.removesuffix("list"))
        if element is _MISSING and not inner.endswith("list"):
            # An intermediate inside that resource (`patientOneIdentifierType`): any node fits.
            starts = [n for n in _descendants(node) if isinstance(n, Mapping | list)]
            return _outcome(any(_safe_check(statement, _safe_resolve(n, calls)) for n in starts))
        node = element
    return _outcome(_check(statement.matcher, statement.args, _safe_resolve(node, calls)))


def _element_ignoring_case(resource: Mapping[str, Any], name: str) -> Any:
    for key, value in resource.items():
        if key.lower() == name and isinstance(value, list):
            return value
    return _MISSING


def _safe_resolve(node: Any, calls: list[Call]) -> Any:
    try:
        return _resolve(node, calls)
    except Unsupported:
        return _MISSING


def _safe_check(statement: Statement, actual: Any) -> bool:
    if actual is _MISSING:
        return False
    return _check(statement.matcher, statement.args, actual)


def _outcome(ok: bool) -> Outcome:
    return Outcome("pass" if ok else "fail")


def assertion_segment(stmt: str) -> str:
    """The segment an assertion is about: its comment's tag, else its resource's segment."""
    code, comment = split_comment(stmt)
    tagged = segment_tag(comment)
    if tagged:
        return tagged
    match = re.search(r"assert\w*\s*\(\s*\(?\s*([A-Za-z_]\w*)", code)
    if match:
        resource_type, _ = resource_type_of(match.group(1))
        if resource_type:
            return SEGMENT_OF_TYPE.get(resource_type, "other")
    return "other"


_ROOT = re.compile(r"assert\w*\s*\(\s*\(?\s*([A-Za-z_]\w*)")
_OBJECT_MARK = re.compile(r"(?:Obj|Object|Resource)(?=[A-Z0-9])")
_MESSAGE_MARK = re.compile(r"(?:Msg|Message)(?=[A-Z0-9])")


def _tail(name: str, mark: re.Pattern[str]) -> str:
    found = mark.search(name)
    return name[found.end() :] if found else ""


def message_of_assertion(stmt: str, variables: list[str]) -> int | None:
    """Which of a test method's messages an assertion is about, from the variable names.

    A LinuxForHealth test method may convert several messages (`patientMsgDeceasedEmpty`,
    `patientMsgNotDeadBooleanN`, …) and check each result through its own variable
    (`patientObjDeceasedEmpty`, …); the extracted sidecars keep every statement with the last
    message. The root variable's tail after `Obj` names the message's tail after `Msg`
    (exactly, else as the one message variable ending with it). None: not decidable, the
    statement stays with the message it was extracted with.
    """
    match = _ROOT.search(split_comment(stmt)[0])
    if match is None:
        return None
    tail = _tail(match.group(1), _OBJECT_MARK)
    if not tail:
        return None
    exact = [i for i, v in enumerate(variables) if _tail(v, _MESSAGE_MARK) == tail]
    if len(exact) == 1:
        return exact[0]
    ending = [i for i, v in enumerate(variables) if v.endswith(tail)]
    return ending[0] if len(ending) == 1 else None


def branch_dependent(stmts: list[str]) -> set[int]:
    """Indexes of statements that contradict another one on the same subject.

    A parameterized LinuxForHealth test checks one subject differently per parameter value
    inside `if`/`switch` branches the corpus does not keep (`getSystem()` is PHONE for `PH`,
    FAX for `FX` …); against the one extracted message at most one branch can hold, so none
    of them can be judged.
    """
    expectations: dict[str, set[tuple[str, tuple[str, ...]]]] = {}
    parsed: list[Statement | None] = []
    for stmt in stmts:
        try:
            statement = parse_statement(split_comment(stmt)[0])
        except Unsupported:
            parsed.append(None)
            continue
        parsed.append(statement)
        expectations.setdefault(" ".join(statement.subject.split()), set()).add((statement.matcher, statement.args))
    return {
        i
        for i, statement in enumerate(parsed)
        if statement is not None and len(expectations[" ".join(statement.subject.split())]) > 1
    }


Evaluator = Callable[[str, Mapping[str, Any]], Outcome]
