"""channels/mappers/fhirshape.py against fhir.resources: same verdict, same first error.

The reference is ``Bundle.model_validate`` of fhir.resources (R4B and R5). The inputs are
what our mapper produces (bench messages always; the third-party corpus when present)
and hypothesis mutations of those Bundles, one category per kind of rule fhir_core
applies. The known differences (fhirshape's docstring) are pinned by TestKnownDifferences.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError, model_validator

from bench.messages import ADT_A01_WITH_IN1, ORU_R01_20_OBX
from channels.mappers import fhirshape
from channels.mappers.convert import convert_message
from channels.mappers.fhirshape import ShapeError, bundle_model, bundle_shape_errors, shape_errors
from channels.mappers.options import MappingOptions
from engine.types import MappingError
from tests.corpus import harness
from tests.support import corpus as corpus_support

T = TypeVar("T")

VERSIONS = ("R4B", "R5")
Reference = list[tuple[tuple[Any, ...], str]]


def reference_errors(bundle: Any, version: str) -> Reference:
    """fhir.resources' errors as (loc, type); a plain exception as ((), "exception:<name>")."""
    try:
        bundle_model(version).model_validate(bundle)  # type: ignore[arg-type]
    except ValidationError as exc:
        return [(tuple(e["loc"]), e["type"]) for e in exc.errors(include_url=False, include_input=False)]
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        return [((), f"exception:{type(exc).__name__}")]
    return []


def compiled_errors(bundle: Any, version: str) -> Reference:
    return [(error.loc, error.type) for error in bundle_shape_errors(bundle, version)]  # type: ignore[arg-type]


def convert(text: str, version: str) -> dict[str, Any]:
    return convert_message(text, MappingOptions(fhir_version=version, validate_output=False)).bundle  # type: ignore[arg-type]


@functools.cache
def bench_bundles(version: str) -> tuple[dict[str, Any], ...]:
    return tuple(convert(text, version) for text in (ADT_A01_WITH_IN1, ORU_R01_20_OBX))


@functools.cache
def corpus_bundles(version: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    """(message key, Bundle) for every corpus message our mapper converts (empty without corpus)."""
    corpus = harness.locate_corpus()
    if corpus is None:
        return ()
    converted = harness.convert_all(harness.load_messages(corpus), version)
    return tuple((key, result.bundle) for key, result in converted.items() if result.bundle is not None)


@functools.cache
def mutation_pool(version: str) -> tuple[dict[str, Any], ...]:
    """Bundles to mutate: the bench messages and, when the corpus is here, every 8th corpus Bundle."""
    sample = tuple(bundle for _, bundle in corpus_bundles(version)[::8])
    return bench_bundles(version) + sample


# ------------------------------------------------------------------------------- mutations
# A node is (container, key): a dict and one of its keys, or a list and an index.

Node = tuple[Any, Any]
CHOICE_KEY = re.compile(r"^(value|deceased|multipleBirth|effective|onset|abatement|occurrence|timing|serviced)[A-Z]")
EXTENSION = {"extension": [{"url": "http://example.org/fhir/x", "valueString": "y"}]}


def nodes(value: Any) -> Iterator[Node]:
    """Every (container, key) below `value`, depth first (a Bundle has a few thousand)."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield value, key
        yield from nodes(child)


def objects(value: Any) -> list[dict[str, Any]]:
    found = [value] if isinstance(value, dict) else []
    for container, key in nodes(value):
        if isinstance(container[key], dict):
            found.append(container[key])
    return found


def _primitive_nodes(bundle: dict[str, Any]) -> list[Node]:
    return [(c, k) for c, k in nodes(bundle) if isinstance(c, dict) and isinstance(c[k], str | bool | int | float)]


def _pick(data: st.DataObject, items: Sequence[T]) -> T | None:
    """One of `items`, or None when an earlier mutation left nothing of that kind."""
    return data.draw(st.sampled_from(items)) if items else None


def _delete_key(bundle: dict[str, Any], data: st.DataObject) -> None:
    picked = _pick(data, [n for n in nodes(bundle) if isinstance(n[0], dict)])
    if picked is None:
        return
    container, key = picked
    del container[key]


def _unknown_key(bundle: dict[str, Any], data: st.DataObject) -> None:
    target = _pick(data, objects(bundle))
    if target is None:
        return
    target[data.draw(st.sampled_from(["unknownElement", "_", "valueFoo", "resource_Type"]))] = "x"


def _wrong_primitive(bundle: dict[str, Any], data: st.DataObject) -> None:
    picked = _pick(data, _primitive_nodes(bundle))
    if picked is None:
        return
    container, key = picked
    container[key] = data.draw(
        st.sampled_from([None, "", " ", 0, -1, 2**40, 1.5, True, "false", [], {}, ["x"], "2020-13-45", "not a date"])
    )


def _bad_date(bundle: dict[str, Any], data: st.DataObject) -> None:
    dated = [(c, k) for c, k in _primitive_nodes(bundle) if isinstance(c[k], str) and re.match(r"^\d{4}", c[k])]
    if not dated:
        return
    container, key = data.draw(st.sampled_from(dated))
    container[key] = data.draw(
        st.sampled_from(
            ["2020-02-30", "2020-1-01", "2020-01-01T10:00", "2020-01-01T10:00:00", "20200101", "2020-01-01T25:00:00Z"]
        )
    )


def _wrap_or_unwrap(bundle: dict[str, Any], data: st.DataObject) -> None:
    picked = _pick(data, [n for n in nodes(bundle) if isinstance(n[0], dict)])
    if picked is None:
        return
    container, key = picked
    value = container[key]
    container[key] = value[0] if isinstance(value, list) and value else [value]


def _two_choices(bundle: dict[str, Any], data: st.DataObject) -> None:
    chosen = [(o, k) for o in objects(bundle) for k in o if CHOICE_KEY.match(k)]
    if not chosen:
        return
    target, key = data.draw(st.sampled_from(chosen))
    prefix = CHOICE_KEY.match(key).group(1)  # type: ignore[union-attr]
    extra_key, extra_value = data.draw(st.sampled_from([("Boolean", True), ("String", "x"), ("DateTime", "2020")]))
    if prefix + extra_key != key:
        target[prefix + extra_key] = extra_value


def _empty_value(bundle: dict[str, Any], data: st.DataObject) -> None:
    picked = _pick(data, list(nodes(bundle)))
    if picked is None:
        return
    container, key = picked
    container[key] = data.draw(st.sampled_from([{}, [], "", None, [None], [{}]]))


def _primitive_extension(bundle: dict[str, Any], data: st.DataObject) -> None:
    picked = _pick(data, _primitive_nodes(bundle))
    if picked is None:
        return
    container, key = picked
    if isinstance(key, str) and key not in ("resourceType",):
        extension = data.draw(st.sampled_from([EXTENSION, {}, {"id": "a"}, {"extension": []}, None]))
        container["_" + key] = copy.deepcopy(extension)  # later mutations may edit it
        if data.draw(st.booleans()):
            del container[key]  # the `_field` alone stands for a missing required value


def _resource_type(bundle: dict[str, Any], data: st.DataObject) -> None:
    target = _pick(data, [o for o in objects(bundle) if "resourceType" in o])
    if target is None:
        return
    target["resourceType"] = data.draw(st.sampled_from(["Patient", "Observation", "HumanName", "Resource", "Bundle"]))


def _null_in_list(bundle: dict[str, Any], data: st.DataObject) -> None:
    lists = [(c, k) for c, k in nodes(bundle) if isinstance(c[k], list) and c[k]]
    picked = _pick(data, lists)
    if picked is None:
        return
    container, key = picked
    container[key].insert(data.draw(st.integers(0, len(container[key]))), None)


MUTATIONS: dict[str, Callable[[dict[str, Any], st.DataObject], None]] = {
    "delete_key": _delete_key,
    "unknown_key": _unknown_key,
    "wrong_primitive": _wrong_primitive,
    "bad_date": _bad_date,
    "wrap_or_unwrap": _wrap_or_unwrap,
    "two_choices": _two_choices,
    "empty_value": _empty_value,
    "primitive_extension": _primitive_extension,
    "resource_type": _resource_type,
    "null_in_list": _null_in_list,
}


def mutate(version: str, data: st.DataObject) -> tuple[dict[str, Any], list[str]]:
    """A deep copy of a pool Bundle with one to three mutations applied (and their names)."""
    bundle = copy.deepcopy(data.draw(st.sampled_from(mutation_pool(version))))
    names = data.draw(st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=3))
    for name in names:
        MUTATIONS[name](bundle, data)
    return bundle, names


# ----------------------------------------------------------------------------------- tests


class TestMapperOutput:
    @pytest.mark.parametrize("version", VERSIONS)
    def test_bench_bundles_are_valid_for_both(self, version: str) -> None:
        """The bench ADT and ORU Bundles: no error from either validator."""
        for bundle in bench_bundles(version):
            assert [] == reference_errors(bundle, version)
            assert [] == compiled_errors(bundle, version)

    @pytest.mark.corpus
    @pytest.mark.parametrize("version", VERSIONS)
    def test_every_corpus_bundle_gets_the_same_verdict(self, version: str) -> None:
        """Every Bundle the mapper makes from the corpus: both accept, or both reject at the same place."""
        corpus_support.require(corpus_support.CORPUS / "INDEX.csv")
        bundles = corpus_bundles(version)
        assert len(bundles) > 500  # the whole corpus, not a stray file
        differing = [
            key for key, bundle in bundles if reference_errors(bundle, version) != compiled_errors(bundle, version)
        ]
        assert [] == differing


class TestMutations:
    @pytest.mark.parametrize("version", VERSIONS)
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def test_mutated_bundles_get_the_same_errors(self, version: str, data: st.DataObject) -> None:
        """Mutated mapper output: same verdict, and the same errors (loc and type) in the same order."""
        bundle, names = mutate(version, data)
        expected = reference_errors(bundle, version)
        actual = compiled_errors(bundle, version)
        if expected and expected[0][1].startswith("exception:"):
            # fhir.resources let a plain KeyError/TypeError escape (no location): the verdict only.
            assert actual, names
        else:
            assert expected == actual, names


def _bundle_of(resource: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": resource}]}


EXT = {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}


def patient(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **elements}


def coverage(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Coverage", **elements}


def observation(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {}, **elements}


# One row per rule fhir_core applies: (what, resource). Each must give fhir.resources' errors.
RULES: list[tuple[str, Any]] = [
    ("resourceType of the element's own type on a datatype", patient(name=[{"resourceType": "HumanName"}])),
    ("wrong resourceType on a datatype", patient(name=[{"resourceType": "Patient"}])),
    ("resource_type key", patient(name=[{"resource_type": "Patient"}])),
    ("empty list", patient(name=[])),
    ("empty object", patient(name=[{}], maritalStatus={})),
    ("null in a complex list", patient(name=[None], gender=5)),
    ("null in a primitive list", patient(name=[{"given": ["a", None]}])),
    ("_field list with null placeholders", patient(name=[{"given": ["a", None], "_given": [None, EXT]}])),
    ("empty string", patient(name=[{"given": [""]}])),
    ("lax bool", patient(active="yes")),
    ("bad bool", patient(active="maybe")),
    ("lax integer", patient(multipleBirthInteger="3")),
    ("two value[x]", patient(multipleBirthInteger=3, multipleBirthBoolean=True)),
    ("value[x] conflict hidden by an element error", patient(deceasedBoolean=True, deceasedDateTime="2020", gender=5)),
    ("field name instead of alias", patient(birthDate__ext=EXT)),
    ("alias and field name both", patient(_birthDate=EXT, birthDate__ext={})),
    ("_field without id or extension", patient(_birthDate={})),
    ("_field with id only", patient(_birthDate={"id": "a"})),
    ("code with a leading space", patient(gender=" male")),
    ("id too long", patient(id="a" * 300)),
    ("extension without url", patient(extension=[{}])),
    ("required primitive given as _field", coverage(_status=EXT, beneficiary={}, payor=[{}])),
    ("required primitive _field without extension", coverage(_status={"id": "a"}, beneficiary={}, payor=[{}])),
    ("required complex missing", coverage(status="active", payor=[{}])),
    ("required complex null", coverage(status="active", beneficiary=None, payor=[{}])),
    ("required list null", coverage(status="active", beneficiary={}, payor=None)),
    ("required list empty", coverage(status="active", beneficiary={}, payor=[])),
    ("object given a list", patient(maritalStatus=[{}])),
    ("list given an object", patient(name={"given": ["a"]})),
    ("list given a string", patient(name=[{"given": "a"}])),
    ("not JSON where an object belongs", patient(maritalStatus="x")),
    ("JSON but no object where an object belongs", patient(maritalStatus="[1]")),
    ("dateTime without zone", observation(effectiveDateTime="2020-01-01T10:00:00")),
    ("partial date", patient(birthDate="1980-02")),
    ("month 13", patient(birthDate="1980-13")),
    ("leap second", observation(effectiveInstant="2016-12-31T23:59:60Z")),
    ("errors in field order, unknown keys last", patient(zzz=1, gender=5, birthDate="x", active="maybe")),
    ("a datatype as resource", {"resourceType": "HumanName"}),
    ("no resourceType: Resource", {"id": "x"}),
    ("abstract DomainResource", {"resourceType": "DomainResource", "text": {}}),
    ("contained resource", patient(contained=[patient(id="a b")])),
    ("resource null", None),
]


class TestRules:
    @pytest.mark.parametrize("version", VERSIONS)
    @pytest.mark.parametrize(("what", "resource"), RULES, ids=[what for what, _ in RULES])
    def test_rule_gives_the_errors_of_fhir_resources(self, version: str, what: str, resource: Any) -> None:
        """Each fhir_core rule, alone: the compiled validator reports exactly fhir.resources' errors."""
        bundle = _bundle_of(resource)
        assert reference_errors(bundle, version) == compiled_errors(bundle, version)

    def test_rules_table_exercises_both_verdicts(self) -> None:
        """The rules table holds valid and invalid cases, so a validator that always agrees by saying "no" fails."""
        verdicts = {bool(reference_errors(_bundle_of(resource), "R4B")) for _, resource in RULES}
        assert {True, False} == verdicts

    def test_validation_does_not_change_the_input(self) -> None:
        """Checking a Bundle leaves it as it was (the walk reads, never pops resourceType)."""
        bundle = copy.deepcopy(bench_bundles("R4B")[0])
        bundle["entry"][0]["resource"]["name"] = [None]
        before = copy.deepcopy(bundle)
        bundle_shape_errors(bundle, "R4B")
        assert before == bundle


class TestKnownDifferences:
    """The categories fhirshape's docstring lists as differing: the actual behaviour of each side."""

    def test_json_object_in_a_string_is_rejected_here_only(self) -> None:
        """fhir.resources parses a string where an object belongs; the compiled validator rejects it."""
        bundle = _bundle_of({"resourceType": "Patient", "maritalStatus": '{"text": "x"}'})
        assert [] == reference_errors(bundle, "R4B")
        assert [(("entry", 0, "resource", "maritalStatus"), "model_type")] == compiled_errors(bundle, "R4B")

    @pytest.mark.parametrize("resource_type", ["NoSuchResource", None, 5])
    def test_unknown_resource_type_gets_a_location_here(self, resource_type: Any) -> None:
        """fhir.resources raises a bare KeyError/TypeError; the compiled validator names the element."""
        bundle = _bundle_of({"resourceType": resource_type})
        assert reference_errors(bundle, "R4B")[0][1] in ("exception:KeyError", "exception:TypeError")
        assert [(("entry", 0, "resource", "resourceType"), "unknown_resource_type")] == compiled_errors(bundle, "R4B")

    def test_fhir_core_exception_gets_a_location_here(self) -> None:
        """A list given to a url makes fhir_core raise TypeError; here it is an error at the element."""
        bundle = _bundle_of({"resourceType": "Patient", "extension": [{"url": "u", "valueUrl": ["x"]}]})
        assert [((), "exception:TypeError")] == reference_errors(bundle, "R4B")
        assert [(("entry", 0, "resource", "extension", 0, "valueUrl"), "TypeError")] == compiled_errors(bundle, "R4B")

    def test_tuple_is_not_a_list_here(self) -> None:
        """pydantic takes a tuple for a list (never in JSON); the compiled validator does not."""
        bundle = _bundle_of({"resourceType": "Patient", "name": ({"text": "x"},)})
        assert [] == reference_errors(bundle, "R4B")
        assert [(("entry", 0, "resource", "name"), "list_type")] == compiled_errors(bundle, "R4B")

    def test_nesting_deeper_than_the_limit_is_rejected_here(self) -> None:
        """Extensions nested past MAX_DEPTH: fhir.resources accepts, the compiled validator says too_deep."""
        extension: dict[str, Any] = {"url": "u", "valueString": "x"}
        for _ in range(fhirshape.MAX_DEPTH):
            extension = {"url": "u", "extension": [extension]}
        bundle = _bundle_of({"resourceType": "Patient", "extension": [extension]})
        assert [] == reference_errors(bundle, "R4B")
        errors = compiled_errors(bundle, "R4B")
        assert 1 == len(errors)
        assert "too_deep" == errors[0][1]


def _errors(model: Any, data: Any) -> list[Any]:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return list(exc.errors(include_url=False, include_input=False))
    return []


def _patient(version: str) -> Any:
    module = "fhir.resources.patient" if version == "R5" else "fhir.resources.R4B.patient"
    return __import__(module, fromlist=["Patient"]).Patient


class TestPlans:
    @pytest.mark.parametrize("version", VERSIONS)
    def test_keys_come_from_the_model_fields(self, version: str) -> None:
        """A plan accepts each field's alias and name, nothing else (no table written by hand)."""
        bundle = bundle_model(version)
        entry = fhirshape.plan_for(bundle).fields["entry"].child_model()
        for model in (bundle, entry):
            expected = {info.alias or name for name, info in model.model_fields.items()} | set(model.model_fields)
            assert expected == set(fhirshape.plan_for(model).fields)
        assert {"_birthDate", "birthDate__ext", "birthDate"} <= set(fhirshape.plan_for(_patient(version)).fields)

    def test_choice_groups_come_from_the_model(self) -> None:
        """Patient's deceased[x] and multipleBirth[x] groups are read from get_one_of_many_fields."""
        from fhir.resources.R4B.patient import Patient

        plan = fhirshape.plan_for(Patient)
        assert plan.choice_of["deceasedBoolean"] == plan.choice_of["deceasedDateTime"]
        assert plan.choice_of["deceasedBoolean"] != plan.choice_of["multipleBirthInteger"]
        assert (False, False) == plan.choice_required

    def test_model_with_an_unknown_validator_validates_itself(self) -> None:
        """A subclass with a validator fhirshape does not mirror is checked by pydantic, and its error kept."""
        from fhir.resources.R4B.humanname import HumanName

        class StrictName(HumanName):
            @model_validator(mode="after")
            def family_required(self) -> StrictName:
                if self.family is None:
                    raise ValueError("family required")
                return self

        assert fhirshape.plan_for(StrictName).delegate
        assert [ShapeError((), "value_error")] == shape_errors({"given": ["a"]}, StrictName)
        assert [] == shape_errors({"family": "b"}, StrictName)

    def test_field_of_an_unexpected_shape_validates_itself(self) -> None:
        """A field mixing a complex type with a primitive in one union is checked by its own pydantic adapter."""
        from fhir.resources.R4B import fhirtypes
        from fhir.resources.R4B.humanname import HumanName

        class OddName(HumanName):
            alt: fhirtypes.ReferenceType | int | None = None

        assert fhirshape.plan_for(OddName).fields["alt"].delegate is not None
        for value in ({"reference": "Patient/1"}, 5, {"nope": 1}, "x"):
            expected = [(tuple(e["loc"]), e["type"]) for e in _errors(OddName, {"alt": value})]
            assert expected == [(e.loc, e.type) for e in shape_errors({"alt": value}, OddName)]

    def test_primitive_memo_is_bounded(self) -> None:
        """The per-type memo of checked strings never grows past PRIMITIVE_CACHE_SIZE."""
        from fhir.resources.R4B.patient import Patient

        for number in range(fhirshape.PRIMITIVE_CACHE_SIZE + 50):
            shape_errors({"name": [{"text": f"n{number}"}]}, Patient)
        text_field = fhirshape.plan_for(fhirshape.plan_for(Patient).fields["name"].child_model()).fields["text"]
        assert 0 < len(text_field.cache) <= fhirshape.PRIMITIVE_CACHE_SIZE

    def test_top_level_not_an_object(self) -> None:
        """A Bundle that is not a dict is rejected like pydantic does (model_type at the root)."""
        assert [ShapeError((), "model_type")] == bundle_shape_errors([], "R4B")
        with pytest.raises(ValidationError):
            bundle_model("R4B").model_validate([])


class TestErrorsCarryNoValues:
    @pytest.mark.parametrize("version", VERSIONS)
    def test_shape_errors_hold_locations_and_types_only(self, version: str) -> None:
        """A ShapeError is (loc, type): the secret value appears nowhere in it."""
        bundle = _bundle_of({"resourceType": "Patient", "birthDate": "SECRET-1980", "gender": "SECRET GENDER "})
        errors = bundle_shape_errors(bundle, version)  # type: ignore[arg-type]
        assert errors
        assert "SECRET" not in repr(errors)

    def test_mapping_error_names_path_not_value(self) -> None:
        """MappingError from the compiled validator: the path, the error type, no value."""
        from channels.mappers.validate import validate_bundle

        bundle = _bundle_of({"resourceType": "Patient", "birthDate": "SECRET-1980"})
        with pytest.raises(MappingError) as info:
            validate_bundle(bundle, "R4B", "compiled")
        assert "invalid R4B output at Patient.birthDate: value_error" == str(info.value)
