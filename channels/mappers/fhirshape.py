"""Compiled FHIR JSON validator: the fhir.resources rules, checked by one walk of the dict.

Public API::

    bundle_shape_errors(bundle: Any, fhir_version: "R4B" | "R5") -> list[ShapeError]
    shape_errors(data: Any, model: type[FHIRAbstractModel]) -> list[ShapeError]
    bundle_model(fhir_version) -> type[Bundle]; is_resource_type(name, fhir_version) -> bool
    ShapeError(loc: tuple[str | int, ...], type: str)          # never carries a value

Why: ``Bundle.model_validate`` builds ~190 pydantic models per ADT Bundle and runs
fhir_core's Python-level validators on each (~5 ms). This module reads the same model
classes once, lazily per type reached (``plan_for``), and keeps per type a plan: the JSON
keys it accepts, what each holds, what is required. Validation is then one walk of the
dict with no model built. Nothing is hand-written per resource: a fhir.resources upgrade
changes the plans with it.

What a plan takes from a model class (and fhir_core), per field:

- the keys: the alias (``birthDate``, ``_birthDate``, ``class``) and, since the models
  set ``populate_by_name``, the field name (``birthDate__ext``); when both are given the
  alias wins and the name is ``extra_forbidden``, as in pydantic. Any other key is
  ``extra_forbidden``; ``resourceType`` / ``resource_type`` are accepted on every type
  and must equal the model's ``__resource_type__`` (fhir_core's ``__init__``);
- list or single (``list_type`` / ``model_validation_format``), and for complex elements
  the child model; for ``Resource``-typed elements (``Bundle.entry.resource``,
  ``contained``) the model named by ``resourceType``, resolved through fhir_core's own
  ``FHIR_TYPES_MAPS`` and required to derive from Resource;
- primitives: a pydantic ``TypeAdapter`` of the field's own annotation (the fhir_core
  regexes, lengths, date rules, lax bool/int coercions all come with it); results for
  string and number values are memoised per primitive type in a bounded map, because
  codes, systems and dates repeat (the memo lives in process memory only: it is never
  logged and no error carries a value);
- ``reject_null_complex_elements``: a null inside a list of complex elements (not in
  ``_field`` extension lists, nor in primitive lists) rejects the whole object with
  only those errors, as fhir_core's before-validator does;
- pydantic-required elements (``Coverage.beneficiary``) must be present (null passes,
  as in fhir_core); ``get_required_fields`` primitives need the value or a ``_field``
  with a non-empty ``extension``; ``get_one_of_many_fields``: at most one ``value[x]``
  (and one when required). These two run only when the object's elements are valid;
- ``FHIRPrimitiveExtension`` (``_field``) needs one of id, extension, fhir_comments.

Errors are collected in fhir.resources' order (per object: its elements in model field
order, then unknown keys), so the first error is the first pydantic reports, with the
same ``loc`` tuple and error type.

Known differences from fhir.resources (pinned by tests/unit/test_mappers_fhirshape.py):

- a JSON *string* where an object is expected: fhir.resources parses it as JSON and
  accepts a string that encodes a valid object; this validator rejects it
  (``model_type``), as a FHIR server would. A string that is not JSON gets
  ``json_invalid`` from both, one that is JSON but no object ``model_type`` from both;
- where fhir.resources lets a plain exception escape (an unknown or non-string
  ``resourceType`` in a Resource-typed element: KeyError / TypeError; a list given to a
  ``url``: TypeError from fhir_core), this validator reports an error with a location:
  ``unknown_resource_type`` at ``...resource.resourceType``, or the exception's name;
- a list where pydantic would also take a tuple, set or generator (never in JSON):
  only ``list`` counts as a list here;
- nesting deeper than ``MAX_DEPTH`` objects is rejected (``too_deep``); pydantic has
  its own, different recursion limit.

A model class with a pydantic validator this module does not mirror (a future
fhir.resources) is validated by that model itself (``model_validate``) for its subtree:
slower, never different.

Neither validator checks codes against value sets, reference targets, or invariants
(FHIRPath constraints).
"""

from __future__ import annotations

import importlib
import threading
import types
import typing
from collections.abc import Iterable
from typing import Any, Final, Literal, NamedTuple

from fhir_core.constraints import FHIR_TYPES_MAPS
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase, FhirElementOrResourceBase
from fhir_core.utils import determine_version_prefix, is_list_type, is_primitive_type
from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import from_json

FhirVersion = Literal["R4B", "R5"]
Loc = tuple[str | int, ...]

MAX_DEPTH: Final = 64  # objects inside objects; the mapper's Bundles nest fewer than 10
PRIMITIVE_CACHE_SIZE: Final = 8192  # per primitive type; cleared when full (bounded memory)

# Validators fhir_core / fhir.resources declare that this module mirrors. Any other name
# on a model means its rules are unknown here: that model validates itself.
_MIRRORED_VALIDATORS: Final = frozenset(
    {
        "reject_null_complex_elements",
        "validate_after_model_construction",
        "validate_extension_or_fhir_comment_required",
    }
)
_PRIMITIVE_EXTENSION_RULE: Final = "validate_extension_or_fhir_comment_required"
_RESOURCE_TYPE_KEYS: Final = frozenset({"resourceType", "resource_type"})


class ShapeError(NamedTuple):
    """Where (pydantic-style loc, relative to the validated object) and which rule failed."""

    loc: Loc
    type: str


# Field kinds. Ints compared with ==: the walk dispatches on them per key.
_PRIMITIVE: Final = 0
_PRIMITIVE_LIST: Final = 1
_COMPLEX: Final = 2
_COMPLEX_LIST: Final = 3
_DELEGATE: Final = 4  # an annotation of an unexpected shape: pydantic validates it

_MISSING: Final = object()
_PrimitiveResult = tuple[ShapeError, ...]  # empty: valid
_OK: Final[_PrimitiveResult] = ()


class _Primitive:
    """One primitive annotation (e.g. ``Optional[Annotated[str, Code()]]``): its pydantic
    adapter and the memo of string values already checked."""

    __slots__ = ("adapter", "cache", "none_result")

    def __init__(self, annotation: Any) -> None:
        self.adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        # str values keyed by themselves, bool/int/float by (type, value): 1 == True == 1.0.
        self.cache: dict[str | tuple[type, Any], _PrimitiveResult] = {}
        self.none_result = self.run(None)

    def run(self, value: Any) -> _PrimitiveResult:
        try:
            self.adapter.validate_python(value)
        except ValidationError as exc:
            return _errors_of(exc)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            # fhir_core's own validators raise these for some inputs (a list given to a url);
            # fhir.resources lets them escape model_validate: invalid either way.
            return (ShapeError((), type(exc).__name__),)
        return _OK

    def check(self, value: Any) -> _PrimitiveResult:
        kind = type(value)
        key: str | tuple[type, Any]
        if kind is str:
            key = value
        elif kind is bool or kind is int or kind is float:
            key = (kind, value)
        elif value is None:
            return self.none_result
        else:
            return self.run(value)  # lists, dicts, Decimals...: rare, not worth a memo
        found = self.cache.get(key)
        if found is None:
            found = self.run(value)
            if len(self.cache) >= PRIMITIVE_CACHE_SIZE:
                self.cache.clear()
            self.cache[key] = found
        return found


def _errors_of(exc: ValidationError) -> tuple[ShapeError, ...]:
    return tuple(
        ShapeError(tuple(error["loc"]), error["type"])
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    )


class _Field:
    """One element of a model: how to check the value found under its keys."""

    __slots__ = (
        "alias",
        "cache",
        "complex_type",
        "delegate",
        "dispatch",
        "item",
        "kind",
        "name",
        "nullable",
        "order",
        "plan",
        "primitive",
        "rejects_null_items",
        "required",
    )

    def __init__(self, order: int, name: str, info: FieldInfo) -> None:
        self.order = order
        self.name = name
        self.alias: str = info.alias or name
        self.required = info.is_required()
        self.complex_type: type[FhirBase] | None = None  # its model is imported on first use
        self.plan: _ModelPlan | None = None  # the child's plan, compiled on first use
        self.dispatch: _Dispatch | None = None
        self.primitive: _Primitive | None = None  # the whole annotation (single, or a non-list value)
        self.item: _Primitive | None = None  # a list's item annotation
        self.delegate: TypeAdapter[Any] | None = None
        self.cache: dict[str | tuple[type, Any], _PrimitiveResult] = {}  # the primitive's memo, read inline
        # fhir_core's reject_null_complex_elements, decided by fhir_core's own helpers.
        self.rejects_null_items = is_list_type(info) and not is_primitive_type(info) and not name.endswith("__ext")
        annotation = _full_annotation(info)
        base, self.nullable = _strip_optional(annotation)
        is_list = typing.get_origin(base) is list
        if is_list:
            (item_annotation,) = typing.get_args(base)
            base, _ = _strip_optional(item_annotation)
        if _derives(base, FhirBase):
            self.kind = _COMPLEX_LIST if is_list else _COMPLEX
            if _derives(base, FhirElementOrResourceBase):
                self.dispatch = _Dispatch(base)
            else:
                self.complex_type = base
        elif _holds_model(annotation):
            self.kind = _DELEGATE
            self.delegate = TypeAdapter(annotation)
        else:
            self.kind = _PRIMITIVE_LIST if is_list else _PRIMITIVE
            self.primitive = _primitive(annotation)
            self.cache = self.primitive.cache
            if is_list:
                self.item = _primitive(item_annotation)

    def child_model(self) -> type[FHIRAbstractModel]:
        """The model class of a complex element (not a Resource-typed one)."""
        assert self.complex_type is not None
        model: type[FHIRAbstractModel] = self.complex_type.get_model_klass()
        return model


def _full_annotation(info: FieldInfo) -> Any:
    """The field's annotation with the metadata pydantic moved out of a top-level Annotated."""
    if info.metadata:
        return typing.Annotated[tuple([info.annotation, *info.metadata])]
    return info.annotation


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    """(annotation without None, whether None was allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = tuple(arg for arg in args if arg is not type(None))
        if len(rest) == 1 and len(rest) != len(args):
            return rest[0], True
    return annotation, False


def _derives(annotation: Any, base: type) -> bool:
    """issubclass without ABCMeta's walk over every subclass of FhirBase (slow on ~700 types)."""
    return isinstance(annotation, type) and base in annotation.__mro__


def _holds_model(annotation: Any) -> bool:
    """Whether a complex type hides anywhere in an annotation (then it is not a primitive)."""
    if _derives(annotation, FhirBase) or _derives(annotation, FHIRAbstractModel):
        return True
    return any(_holds_model(arg) for arg in typing.get_args(annotation))


_primitives: dict[Any, _Primitive] = {}
_compile_lock = threading.RLock()  # plans are built once; concurrent first uses wait for it


def _primitive(annotation: Any) -> _Primitive:
    """One adapter (and memo) per distinct primitive annotation, shared by all fields using it."""
    found = _primitives.get(annotation)
    if found is None:
        found = _primitives[annotation] = _Primitive(annotation)
    return found


class _Dispatch:
    """A Resource-typed element (``Bundle.entry.resource``): the model is named by the value's
    ``resourceType``, as fhir_core's FhirElementOrResourceBase.fhir_model_validator does."""

    __slots__ = ("declared", "plans", "prefix", "wants_resource")

    def __init__(self, annotation: type[FhirElementOrResourceBase]) -> None:
        self.declared: type[FHIRAbstractModel] = annotation.get_model_klass()
        self.prefix: str = annotation._prefix
        self.wants_resource = self.declared.__name__ == "Resource"  # else "Element"
        self.plans: dict[str, _ModelPlan | str] = {}  # resourceType → plan, or the error type

    def resolve(self, resource_type: Any) -> _ModelPlan | str:
        if resource_type is _MISSING:
            return plan_for(self.declared)
        if type(resource_type) is not str:
            return "unknown_resource_type"
        found = self.plans.get(resource_type)
        if found is None:
            found = self._compile(resource_type)
            with _compile_lock:
                if len(self.plans) < 4096:  # bounded: resourceType strings come from the input
                    self.plans[resource_type] = found
        return found

    def _compile(self, resource_type: str) -> _ModelPlan | str:
        path = FHIR_TYPES_MAPS.get(f"{self.prefix}{resource_type}Type")
        if path is None:
            return "unknown_resource_type"
        model = _import_model(path)
        if model.has_resource_base() != self.wants_resource:
            return "model_validation_format"
        return plan_for(model)


def _import_model(path: str) -> type[FHIRAbstractModel]:
    """A model class from its dotted path in fhir_core's FHIR_TYPES_MAPS."""
    module, _, name = path.rpartition(".")
    model: type[FHIRAbstractModel] = getattr(importlib.import_module(module), name)
    return model


class _ModelPlan:
    """One model class compiled: keys → fields, and its object-level rules."""

    __slots__ = (
        "choice_of",
        "choice_required",
        "delegate",
        "fields",
        "has_rules",
        "model",
        "needs_id_extension_or_comments",
        "null_checked",
        "plain",
        "required",
        "required_primitives",
        "resource_type",
        "unknown_order",
    )

    def __init__(self, model: type[FHIRAbstractModel]) -> None:
        self.model = model
        self.resource_type: str = model.__resource_type__
        fields = [_Field(order, name, info) for order, (name, info) in enumerate(model.model_fields.items())]
        by_name = {field.name: field for field in fields}
        self.fields: dict[str, _Field] = {}
        for field in fields:
            self.fields[field.name] = field
        for field in fields:
            self.fields[field.alias] = field  # an alias wins over a clashing field name
        self.unknown_order = len(fields)  # unknown keys sort after every element
        self.required = tuple(field for field in fields if field.required)
        self.null_checked = tuple(field for field in fields if field.rejects_null_items)
        instance = model.model_construct()
        aliases = model.get_alias_mapping()
        self.required_primitives = tuple(
            (by_name[aliases[element]], by_name[ext] if ext is not None else None)
            for element, ext in instance.get_required_fields()
        )
        choices = list(instance.get_one_of_many_fields().values())
        # every key (alias and name) of a value[x] variant → its choice group
        self.choice_of: dict[str, int] = {
            key: group for group, names in enumerate(choices) for name in names for key in (name, by_name[name].alias)
        }
        self.choice_required = tuple(_choice_required(model, names[0]) for names in choices)
        self.has_rules = bool(self.required_primitives or self.choice_of)
        validators = _validator_names(model)
        self.needs_id_extension_or_comments = _PRIMITIVE_EXTENSION_RULE in validators
        self.delegate = bool(validators - _MIRRORED_VALIDATORS) or model.__init__ is not FHIRAbstractModel.__init__
        # No object-level rule: valid elements make a valid object.
        self.plain = not (self.required or self.has_rules or self.needs_id_extension_or_comments)


def _choice_required(model: type[FHIRAbstractModel], field_name: str) -> bool:
    extra = model.model_fields[field_name].json_schema_extra
    return isinstance(extra, dict) and extra.get("one_of_many_required") is True


def _validator_names(model: type[FHIRAbstractModel]) -> set[str]:
    decorators = model.__pydantic_decorators__
    groups: list[dict[str, Any]] = [
        decorators.model_validators,
        decorators.field_validators,
        decorators.validators,
        decorators.root_validators,
    ]
    return {name for group in groups for name in group}


_plans: dict[type[FHIRAbstractModel], _ModelPlan] = {}


def plan_for(model: type[FHIRAbstractModel]) -> _ModelPlan:
    """The compiled plan of a model class (built on first use, then shared)."""
    found = _plans.get(model)
    if found is None:
        with _compile_lock:
            found = _plans.get(model)
            if found is None:
                found = _plans[model] = _ModelPlan(model)
    return found


# ------------------------------------------------------------------------------------ walk
# A check returns the errors of one object with locs relative to it (None: valid). The
# parent prefixes its key (and list index) only when a child reports errors, so a valid
# Bundle costs no tuples and no lists. An object's errors are gathered as (field order,
# error) and sorted only when there are some: that is fhir.resources' order (elements in
# model field order, then unknown keys in input order).

_Errors = list[ShapeError]
_Pending = list[tuple[int, ShapeError]]


def _check_object(plan: _ModelPlan, data: dict[str, Any], depth: int) -> _Errors | None:
    """The errors fhir.resources reports for `data` validated as `plan.model`."""
    if depth > MAX_DEPTH:
        return [ShapeError((), "too_deep")]
    if plan.delegate:
        return _delegate_object(plan.model, data)
    pending: _Pending | None = None
    null_items = typed = False
    fields = plan.fields
    for key, value in data.items():
        field = fields.get(key)
        if field is None or (field.alias != key and field.alias in data):
            if key in _RESOURCE_TYPE_KEYS:
                typed = True
            else:
                pending = _add(pending, plan.unknown_order, ShapeError((key,), "extra_forbidden"))
            continue
        kind = field.kind
        errors: _Errors | tuple[ShapeError, ...] | None
        if kind == _PRIMITIVE:
            # The memo lookup inlined: this line runs for most values of a Bundle.
            errors = field.cache.get(value) if type(value) is str else None
            if errors is None:
                errors = field.primitive.check(value)  # type: ignore[union-attr]
            if errors:
                pending = _add_all(pending, field.order, (key,), errors)
        elif kind == _COMPLEX:
            if type(value) is dict:
                child = field.plan
                errors = _check_object(child, value, depth + 1) if child else _check_child(field, value, depth)
                if errors:
                    pending = _add_all(pending, field.order, (key,), errors)
            elif value is not None:
                pending = _add(pending, field.order, _not_an_object(value, (key,)))
        elif kind == _COMPLEX_LIST:
            if type(value) is list:
                errors, has_null = _check_complex_list(field, value, depth)
                null_items = null_items or has_null
                if errors:
                    pending = _add_all(pending, field.order, (key,), errors)
            elif value is not None or not field.nullable:
                pending = _add(pending, field.order, ShapeError((key,), "list_type"))
        else:
            errors = _check_primitive_list(field, value) if kind == _PRIMITIVE_LIST else _delegate_field(field, value)
            if errors:
                pending = _add_all(pending, field.order, (key,), errors)
    if pending is None and plan.plain and not (typed or null_items):
        return None  # the common case, without a call
    return _object_verdict(plan, data, pending, null_items=null_items, typed=typed)


def _object_verdict(
    plan: _ModelPlan, data: dict[str, Any], pending: _Pending | None, *, null_items: bool, typed: bool
) -> _Errors | None:
    """The object's errors once its elements are checked, applying fhir_core's precedence:
    a wrong resourceType (``__init__``), then the before-validators, hide every other error;
    the object-level rules (after-validators) run only on valid elements."""
    if typed:
        declared = data["resourceType"] if "resourceType" in data else data.get("resource_type")
        if declared is not None and declared != plan.resource_type:
            return [ShapeError(("resource_type",), "fhir-validation-wrong-resource-type")]
    if plan.needs_id_extension_or_comments and all(data.get(k) is None for k in ("id", "extension", "fhir_comments")):
        return [ShapeError((), "model_validation_format")]
    if null_items:
        return _null_item_errors(plan, data)
    for field in plan.required:
        if field.alias not in data and field.name not in data:
            pending = _add(pending, field.order, ShapeError((field.alias,), "missing"))
    if pending:
        pending.sort(key=lambda entry: entry[0])
        return [error for _, error in pending]
    if plan.has_rules:
        return _check_object_rules(plan, data)
    return None


def _add(pending: _Pending | None, order: int, error: ShapeError) -> _Pending:
    if pending is None:
        pending = []
    pending.append((order, error))
    return pending


def _add_all(pending: _Pending | None, order: int, prefix: Loc, errors: Iterable[ShapeError]) -> _Pending:
    if pending is None:
        pending = []
    pending.extend((order, ShapeError((*prefix, *error.loc), error.type)) for error in errors)
    return pending


def _check_child(field: _Field, value: dict[str, Any], depth: int) -> _Errors | None:
    """Check an object whose plan is not cached on the field: first use, or a Resource."""
    if field.dispatch is None:
        field.plan = plan_for(field.child_model())
        return _check_object(field.plan, value, depth + 1)
    resolved = field.dispatch.resolve(value.get("resourceType", _MISSING))
    if isinstance(resolved, str):
        if resolved == "unknown_resource_type":
            return [ShapeError(("resourceType",), resolved)]
        return [ShapeError(("root",), resolved)]
    return _check_object(resolved, value, depth + 1)


def _not_an_object(value: Any, loc: Loc) -> ShapeError:
    if isinstance(value, str | bytes):
        # fhir.resources parses a string here as JSON (pydantic's parser, so the same verdict
        # on what is not JSON); a string holding an object is the documented difference.
        try:
            from_json(value)
        except ValueError:
            return ShapeError(loc, "json_invalid")
        return ShapeError(loc, "model_type")
    return ShapeError((*loc, "root"), "model_validation_format")


def _check_complex_list(field: _Field, items: list[Any], depth: int) -> tuple[_Errors | None, bool]:
    """(errors of the list's objects, whether a null item makes the parent object invalid)."""
    errors: _Errors | None = None
    null_items = False
    child = field.plan
    for index, item in enumerate(items):
        if type(item) is dict:
            found = _check_object(child, item, depth + 1) if child else _check_child(field, item, depth)
            child = field.plan
            if found:
                errors = errors or []
                errors.extend(ShapeError((index, *error.loc), error.type) for error in found)
        elif item is None:
            null_items = null_items or field.rejects_null_items
        else:
            errors = errors or []
            errors.append(_not_an_object(item, (index,)))
    return errors, null_items


def _check_primitive_list(field: _Field, value: Any) -> _Errors | None:
    if type(value) is not list:
        return list(field.primitive.check(value)) or None  # type: ignore[union-attr]
    item = field.item
    assert item is not None
    errors: _Errors | None = None
    for index, element in enumerate(value):
        result = item.check(element)
        if result:
            errors = errors or []
            errors.extend(ShapeError((index, *error.loc), error.type) for error in result)
    return errors


def _null_item_errors(plan: _ModelPlan, data: dict[str, Any]) -> _Errors:
    """fhir_core's reject_null_complex_elements errors, in model field order."""
    errors: _Errors = []
    for field in plan.null_checked:
        key = field.alias if field.alias in data else field.name
        value = data.get(key)
        if isinstance(value, list) and any(item is None for item in value):
            errors.append(ShapeError((key,), "list_type"))
    return errors


def _check_object_rules(plan: _ModelPlan, data: dict[str, Any]) -> _Errors | None:
    """fhir_core's after-validators: required primitives (value, or a `_field` with
    extensions), then at most one value[x] per choice (exactly one when required)."""
    missing = [
        ShapeError((field.alias,), "model_field_validation.missing")
        for field, ext in plan.required_primitives
        if _value(data, field) is None and (ext is None or not _has_extensions(_value(data, ext)))
    ]
    if missing:
        return missing
    if plan.choice_of:
        # Count from the data's keys: Extension has ~50 value[x] variants, an object a few keys.
        counts = [0] * len(plan.choice_required)
        for key, value in data.items():
            group = plan.choice_of.get(key)
            if group is not None and value is not None:
                counts[group] += 1
        for count, required in zip(counts, plan.choice_required, strict=True):
            if count > 1 or (required and count == 0):
                return [ShapeError((), "value_error")]
    return None


def _value(data: dict[str, Any], field: _Field) -> Any:
    value = data.get(field.alias)
    if value is None and field.name != field.alias:
        value = data.get(field.name)
    return value


def _has_extensions(ext: Any) -> bool:
    if isinstance(ext, dict):
        extensions = ext.get("extension")
        return isinstance(extensions, list) and len(extensions) > 0
    return False


def _delegate_field(field: _Field, value: Any) -> _Errors | None:
    assert field.delegate is not None
    try:
        field.delegate.validate_python(value)
    except ValidationError as exc:
        return list(_errors_of(exc))
    return None


def _delegate_object(model: type[FHIRAbstractModel], data: dict[str, Any]) -> _Errors | None:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return list(_errors_of(exc))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return [ShapeError((), type(exc).__name__)]
    return None


# ---------------------------------------------------------------------------------- entry


def shape_errors(data: Any, model: type[FHIRAbstractModel]) -> list[ShapeError]:
    """Every error fhir.resources would report for ``model.model_validate(data)``, in its order
    (empty: valid). See the module docstring for what is checked and the known differences."""
    if type(data) is not dict:
        return [ShapeError((), "model_type")]
    return _check_object(plan_for(model), data, 0) or []


def bundle_model(fhir_version: FhirVersion) -> type[FHIRAbstractModel]:
    """The fhir.resources Bundle class of a FHIR version (R4B: fhir.resources.R4B, R5: top level)."""
    # Imported on first use: most channels never validate.
    return _import_model("fhir.resources.bundle.Bundle" if fhir_version == "R5" else "fhir.resources.R4B.bundle.Bundle")


def bundle_shape_errors(bundle: Any, fhir_version: FhirVersion) -> list[ShapeError]:
    """Every error of ``bundle`` validated as a Bundle of this FHIR version (empty: valid)."""
    return shape_errors(bundle, bundle_model(fhir_version))


def is_resource_type(name: str, fhir_version: FhirVersion) -> bool:
    """Whether `name` is a resource type of this FHIR version (as fhir_core resolves it)."""
    prefix = determine_version_prefix(bundle_model(fhir_version).__module__)
    path = FHIR_TYPES_MAPS.get(f"{prefix}{name}Type")
    return path is not None and bool(_import_model(path).has_resource_base())
