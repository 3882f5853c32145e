"""validate_bundle (channels/mappers/validate.py): fhir.resources errors as MappingError without values."""

from __future__ import annotations

import pytest

from channels.mappers.options import MappingOptions
from channels.mappers.validate import validate_bundle
from engine.types import MappingError


def _bundle(resource: dict[str, object]) -> dict[str, object]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"fullUrl": "urn:uuid:1", "resource": resource, "request": {"method": "POST", "url": "Patient"}}],
    }


class TestValidateBundle:
    @pytest.mark.parametrize("version", ["R4B", "R5"])
    def test_valid_bundle_passes(self, version: str) -> None:
        """A valid Patient Bundle raises nothing in R4B and R5."""
        validate_bundle(_bundle({"resourceType": "Patient", "birthDate": "1980-01-01"}), version)  # type: ignore[arg-type]

    @pytest.mark.parametrize("version", ["R4B", "R5"])
    def test_error_names_the_element_not_the_value(self, version: str) -> None:
        """An invalid element gives MappingError naming resource type and path, never the value."""
        with pytest.raises(MappingError) as info:
            validate_bundle(_bundle({"resourceType": "Patient", "birthDate": "SECRET-NOT-A-DATE"}), version)  # type: ignore[arg-type]
        assert "Patient.birthDate" in str(info.value)
        assert "SECRET" not in str(info.value)

    def test_options_accept_the_yaml_key_validate(self) -> None:
        """MappingOptions reads `validate` from config and rejects unknown keys."""
        assert MappingOptions.model_validate({"validate": True}).validate_output is True
        with pytest.raises(ValueError):
            MappingOptions.model_validate({"validat": True})
        with pytest.raises(ValueError):
            MappingOptions.model_validate({"timezone": "Mars/Olympus"})
