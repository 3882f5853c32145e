"""validate_bundle (channels/mappers/validate.py): both validators, MappingError without values."""

from __future__ import annotations

from typing import Any

import pytest

import channels.mappers.convert as convert_module
from bench.messages import ADT_A01_WITH_IN1
from channels.mappers.options import MappingOptions, compile_options
from channels.mappers.validate import validate_bundle
from engine.types import MappingError

VALIDATORS = ("compiled", "fhir.resources")


def _bundle(resource: object) -> dict[str, object]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"fullUrl": "urn:uuid:1", "resource": resource, "request": {"method": "POST", "url": "Patient"}}],
    }


# Invalid Bundles whose message must be the same from both validators (path and error type).
INVALID: list[tuple[str, dict[str, object]]] = [
    ("bad date", _bundle({"resourceType": "Patient", "birthDate": "SECRET-NOT-A-DATE"})),
    ("unknown element", _bundle({"resourceType": "Patient", "secretElement": "x"})),
    ("list expected", _bundle({"resourceType": "Patient", "name": {"family": "SECRET"}})),
    ("two value[x]", _bundle({"resourceType": "Patient", "deceasedBoolean": True, "deceasedDateTime": "2020"})),
    ("required missing", _bundle({"resourceType": "Coverage", "beneficiary": {}, "payor": [{}]})),
    ("empty string", _bundle({"resourceType": "Patient", "name": [{"given": ["SECRET", ""]}]})),
    ("several errors", _bundle({"resourceType": "Patient", "gender": 5, "birthDate": "x", "zz": 1})),
    ("bundle level", {"resourceType": "Bundle", "type": "transaction", "timestamp": "2020-01-01T10:00:00"}),
    ("wrong resource type on a datatype", _bundle({"resourceType": "Patient", "name": [{"resourceType": "SECRET"}]})),
]


class TestValidateBundle:
    @pytest.mark.parametrize("validator", VALIDATORS)
    @pytest.mark.parametrize("version", ["R4B", "R5"])
    def test_valid_bundle_passes(self, version: str, validator: str) -> None:
        """A valid Patient Bundle raises nothing in R4B and R5, with either validator."""
        validate_bundle(_bundle({"resourceType": "Patient", "birthDate": "1980-01-01"}), version, validator)  # type: ignore[arg-type]

    @pytest.mark.parametrize("validator", VALIDATORS)
    @pytest.mark.parametrize("version", ["R4B", "R5"])
    def test_error_names_the_element_not_the_value(self, version: str, validator: str) -> None:
        """An invalid element gives MappingError naming resource type and path, never the value."""
        with pytest.raises(MappingError) as info:
            validate_bundle(_bundle({"resourceType": "Patient", "birthDate": "SECRET-NOT-A-DATE"}), version, validator)  # type: ignore[arg-type]
        assert "Patient.birthDate" in str(info.value)
        assert "SECRET" not in str(info.value)

    @pytest.mark.parametrize("version", ["R4B", "R5"])
    @pytest.mark.parametrize(("what", "bundle"), INVALID, ids=[what for what, _ in INVALID])
    def test_both_validators_give_the_same_message(self, version: str, what: str, bundle: dict[str, object]) -> None:
        """The compiled validator's MappingError reads exactly as fhir.resources' (path, type, count)."""
        messages = []
        for validator in VALIDATORS:
            with pytest.raises(MappingError) as info:
                validate_bundle(bundle, version, validator)  # type: ignore[arg-type]
            messages.append(str(info.value))
            assert "SECRET" not in str(info.value)
        assert messages[1] == messages[0]

    def test_several_errors_are_counted(self) -> None:
        """The message names the first error in fhir.resources' order and counts the rest."""
        bundle = _bundle({"resourceType": "Patient", "gender": 5, "birthDate": "x", "zz": 1})
        with pytest.raises(MappingError) as info:
            validate_bundle(bundle, "R4B", "compiled")
        assert "invalid R4B output at Patient.birthDate: value_error (+2 more)" == str(info.value)

    def test_unknown_resource_type_is_not_echoed(self) -> None:
        """An unknown resourceType (input text) is not used as the path's type name."""
        with pytest.raises(MappingError) as info:
            validate_bundle(_bundle({"resourceType": "SECRETTYPE"}), "R4B", "compiled")
        assert "invalid R4B output at Resource.resourceType: unknown_resource_type" == str(info.value)


class TestOptions:
    def test_options_accept_the_yaml_key_validate(self) -> None:
        """MappingOptions reads `validate` from config and rejects unknown keys."""
        assert MappingOptions.model_validate({"validate": True}).validate_output is True
        with pytest.raises(ValueError):
            MappingOptions.model_validate({"validat": True})
        with pytest.raises(ValueError):
            MappingOptions.model_validate({"timezone": "Mars/Olympus"})

    def test_validator_defaults_to_compiled_and_reaches_settings(self) -> None:
        """`validator` is "compiled" unless configured; the choice is carried into Settings."""
        assert "compiled" == compile_options(MappingOptions()).validator
        chosen = MappingOptions.model_validate({"validate": True, "validator": "fhir.resources"})
        assert "fhir.resources" == compile_options(chosen).validator
        with pytest.raises(ValueError):
            MappingOptions.model_validate({"validator": "jsonschema"})

    @pytest.mark.parametrize("validator", VALIDATORS)
    def test_convert_uses_the_configured_validator(self, validator: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """convert_message passes the channel's validator choice to validate_bundle."""
        calls: list[tuple[Any, ...]] = []
        monkeypatch.setattr(convert_module, "validate_bundle", lambda *args: calls.append(args[1:]))
        options = MappingOptions.model_validate({"fhir_version": "R5", "validate": True, "validator": validator})
        convert_module.convert_message(ADT_A01_WITH_IN1, options)
        assert [("R5", validator)] == calls
