"""BundleBuilder (channels/mappers/bundle.py): deterministic fullUrls, idempotent requests, R5 adapters."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.mappers.bundle import _NAMESPACE, URI_SYSTEM, BundleBuilder, _quote
from tests.unit.test_mappers_helpers import validate_resource


def _entry(bundle: dict[str, Any], index: int = 0) -> dict[str, Any]:
    entry: dict[str, Any] = bundle["entry"][index]
    return entry


class TestFullUrls:
    def test_deterministic_per_identity_and_role(self) -> None:
        """The same identity and role give the same urn:uuid; another identity or role another one."""
        first, again, other = BundleBuilder("msg-a"), BundleBuilder("msg-a"), BundleBuilder("msg-b")
        assert first.full_url("PID-1/Patient") == again.full_url("PID-1/Patient")
        assert first.full_url("PID-1/Patient") != other.full_url("PID-1/Patient")
        assert first.full_url("PID-1/Patient") != first.full_url("PID-1/Account")
        assert first.full_url("PID-1/Patient").startswith("urn:uuid:")

    def test_a_role_is_added_once(self) -> None:
        """Adding the same role twice is a mapper bug and raises."""
        builder = BundleBuilder("m")
        builder.add({"resourceType": "Patient"}, "r")
        with pytest.raises(ValueError):
            builder.add({"resourceType": "Patient"}, "r")


class TestRequests:
    def test_identifier_with_system_is_a_conditional_update(self) -> None:
        """system|value → PUT Type?identifier=system|value, value URL-encoded."""
        builder = BundleBuilder("m")
        builder.add({"resourceType": "Patient", "identifier": [{"system": "urn:id:H", "value": "A 1/2"}]}, "p")
        assert _entry(builder.build())["request"] == {"method": "PUT", "url": "Patient?identifier=urn:id:H|A%201%2F2"}

    def test_value_only_is_a_conditional_create(self) -> None:
        """A value without system → POST with ifNoneExist (never overwrite an inexact match)."""
        builder = BundleBuilder("m")
        builder.add({"resourceType": "Account", "identifier": [{"value": "12345678"}]}, "a")
        assert _entry(builder.build())["request"] == {
            "method": "POST",
            "url": "Account",
            "ifNoneExist": "identifier=12345678",
        }

    def test_no_identifier_gets_the_full_url_as_identifier(self) -> None:
        """No business identifier → identifier urn:ietf:rfc:3986|fullUrl and ifNoneExist on it."""
        builder = BundleBuilder("m")
        url = builder.add({"resourceType": "RelatedPerson", "patient": {"reference": "urn:uuid:x"}}, "rp")
        entry = _entry(builder.build())
        assert entry["resource"]["identifier"] == [{"system": URI_SYSTEM, "value": url}]
        assert entry["request"]["method"] == "POST" and "ifNoneExist" in entry["request"]

    def test_ssn_never_goes_into_a_url(self) -> None:
        """SS/DL identifiers are not used for matching (request URLs end up in access logs)."""
        builder = BundleBuilder("m")
        ssn = {"type": {"coding": [{"code": "SS"}]}, "system": "http://hl7.org/fhir/sid/us-ssn", "value": "123456789"}
        builder.add({"resourceType": "Patient", "identifier": [{"value": "MRN1"}, ssn]}, "p")
        request = _entry(builder.build())["request"]
        assert "123456789" not in str(request) and request["ifNoneExist"] == "identifier=MRN1"

    def test_message_header_is_put_by_id(self) -> None:
        """Types without identifier (MessageHeader, Provenance) are PUT by their deterministic id."""
        builder = BundleBuilder("m")
        url = builder.add({"resourceType": "MessageHeader"}, "h")
        entry = _entry(builder.build())
        assert entry["request"] == {"method": "PUT", "url": f"MessageHeader/{url.rsplit(':', 1)[1]}"}

    def test_same_conditional_url_is_merged(self) -> None:
        """Two resources with the same conditional URL become one entry; lists are merged."""
        builder = BundleBuilder("m")
        first = builder.add(
            {"resourceType": "Organization", "identifier": [{"system": "s", "value": "1"}], "name": "A"}, "o1"
        )
        second = builder.add(
            {
                "resourceType": "Organization",
                "identifier": [{"system": "s", "value": "1"}],
                "name": "B",
                "alias": ["X"],
            },
            "o2",
        )
        bundle = builder.build()
        assert first == second and len(bundle["entry"]) == 1
        assert _entry(bundle)["resource"]["name"] == "A" and _entry(bundle)["resource"]["alias"] == ["X"]

    def test_empty_values_are_pruned(self) -> None:
        """Empty strings, lists and objects never reach the Bundle."""
        builder = BundleBuilder("m")
        builder.add(
            {"resourceType": "Patient", "identifier": [{"value": "1", "system": ""}], "name": [{"given": [""]}]}, "p"
        )
        assert _entry(builder.build())["resource"] == {"resourceType": "Patient", "identifier": [{"value": "1"}]}


class TestR5Adapters:
    def test_coverage_and_organization(self) -> None:
        """R5: Coverage.payor → insurer/paymentBy (+kind), Organization.address/telecom → contact."""
        builder = BundleBuilder("m", "R5")
        org = builder.add(
            {
                "resourceType": "Organization",
                "name": "PAYER",
                "address": [{"city": "X"}],
                "telecom": [{"system": "phone", "value": "1"}],
                "contact": [{"name": {"family": "SMITH"}}],
            },
            "o",
        )
        builder.add(
            {
                "resourceType": "Coverage",
                "status": "active",
                "beneficiary": {"reference": "urn:uuid:p"},
                "payor": [{"reference": org}],
                "subscriberId": "S1",
                "class": [{"type": {"coding": [{"code": "group"}]}, "value": "G"}],
            },
            "c",
        )
        bundle = builder.build()
        organization, coverage = (e["resource"] for e in bundle["entry"])
        assert coverage["insurer"] == {"reference": org} and coverage["paymentBy"] == [{"party": {"reference": org}}]
        assert coverage["kind"] == "insurance" and coverage["subscriberId"] == [{"value": "S1"}]
        assert organization["contact"][0]["name"] == [{"family": "SMITH"}]
        assert organization["contact"][1] == {"telecom": [{"system": "phone", "value": "1"}], "address": {"city": "X"}}
        for resource in (organization, coverage):
            validate_resource(resource, "R5")


class TestShortcutsMatchTheirReference:
    """full_url, _quote and _prune take shortcuts for speed; each must give what the plain way gives."""

    @settings(max_examples=300, deadline=None)
    @given(identity=st.text(max_size=70), role=st.text(max_size=40))
    def test_full_url_is_uuid5(self, identity: str, role: str) -> None:
        """fullUrl = urn:uuid: + uuid.uuid5(namespace, identity|role), byte for byte."""
        expected = "urn:uuid:" + str(uuid.uuid5(_NAMESPACE, f"{identity}|{role}"))
        assert expected == BundleBuilder(identity).full_url(role)

    @settings(max_examples=500, deadline=None)
    @given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=30), safe=st.sampled_from(["", ":/"]))
    def test_quote_is_urllib_quote(self, text: str, safe: str) -> None:
        """Identifier systems and values are escaped exactly as urllib.parse.quote escapes them."""
        assert quote(text, safe=safe) == _quote(text, safe)

    def test_prune_cascades_and_keeps_zero_and_false(self) -> None:
        """A container emptied by pruning goes too; 0, 0.0 and False are values, not empties."""
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "valueQuantity": {"value": 0, "unit": ""},
            "component": [{"code": {"coding": [{"system": "", "code": None}]}}, {"valueBoolean": False}, ""],
            "note": [[], {}, None],
            "extension": [{"url": "u", "valueDecimal": 0.0}],
        }
        builder = BundleBuilder("m")
        builder.add(resource, "o")
        pruned = _entry(builder.build())["resource"]
        assert {k: v for k, v in pruned.items() if k != "identifier"} == {
            "resourceType": "Observation",
            "valueQuantity": {"value": 0},
            "component": [{"valueBoolean": False}],
            "extension": [{"url": "u", "valueDecimal": 0.0}],
        }
