"""IG datatype maps (channels/mappers/datatypes.py): one class per datatype, outputs validated with fhir.resources."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from channels.mappers.datatypes import (
    _DTM_MEMO,
    _DTM_MEMO_SIZE,
    HD,
    ORIGINAL_TEXT,
    SD,
    cq_to_quantity,
    cwe_to_codeable_concept,
    cx_to_identifier,
    dln_to_identifier,
    dt_to_date,
    dtm_to_datetime,
    dtm_to_instant,
    ei_to_identifier,
    forget_message_dates,
    hd_to_identifiers,
    hd_to_system,
    hd_to_uri,
    nm_to_number,
    sn_to_value,
    xad_to_address,
    xcn_to_practitioner,
    xon_to_organization,
    xpn_called_by,
    xpn_to_human_name,
    xpn_to_string,
    xtn_to_contact_point,
)
from channels.mappers.escape import escape
from tests.unit.test_mappers_helpers import rep, settings, validate_resource

S = settings()
FHIR_DATETIME = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2}))?)?)?$")
_word = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '-.|^&~\\", min_size=1, max_size=12
).filter(lambda t: t.strip() == t and t != '""')


def _valid_in_both(resource: dict[str, object]) -> None:
    for version in ("R4B", "R5"):
        validate_resource(resource, version)


class TestDtmToDatetime:
    @pytest.mark.parametrize(
        ("v2", "fhir"),
        [
            ("2024", "2024"),  # DTM year precision
            ("202402", "2024-02"),  # month
            ("20240229", "2024-02-29"),  # day (leap year)
            ("2024022913-0500", "2024-02-29T13:00:00-05:00"),  # hour: seconds padded
            ("202402291305+0130", "2024-02-29T13:05:00+01:30"),  # minute
            ("20240229130559-0000", "2024-02-29T13:05:59-00:00"),  # second
            ("20240229130559.1+0000", "2024-02-29T13:05:59.1+00:00"),  # tenths
            ("20240229130559.12-1200", "2024-02-29T13:05:59.12-12:00"),  # hundredths
            ("20240229130559.123+1400", "2024-02-29T13:05:59.123+14:00"),  # milliseconds
            ("20240229130559.1234-0330", "2024-02-29T13:05:59.1234-03:30"),  # ten-thousandths
            ("20240229-0500", "2024-02-29"),  # a date with an offset stays a date
        ],
    )
    def test_every_precision_with_offset(self, v2: str, fhir: str) -> None:
        """Precision and offset are kept exactly; no timezone is invented."""
        result = dtm_to_datetime(v2, S)
        assert result is not None
        assert result.value == fhir
        assert result.original is None
        _valid_in_both({"resourceType": "Patient", "deceasedDateTime": result.value})

    def test_time_without_zone_keeps_date_and_original_text(self) -> None:
        """A time without an offset drops to date precision with the v2 text as originalText."""
        result = dtm_to_datetime("19880517180606", S)
        assert result is not None
        assert result.value == "1988-05-17"
        assert result.primitive_extension() == {"extension": [{"url": ORIGINAL_TEXT, "valueString": "19880517180606"}]}
        _valid_in_both(
            {"resourceType": "Patient", "birthDate": "1988-05-17", "_birthDate": result.primitive_extension()}
        )

    def test_channel_timezone_supplies_dst_aware_offset(self) -> None:
        """The channel's IANA zone gives -06:00 in winter and -05:00 in summer for Chicago."""
        chicago = settings(timezone="America/Chicago")
        winter = dtm_to_datetime("202401151200", chicago)
        summer = dtm_to_datetime("202407151200", chicago)
        assert winter is not None and winter.value == "2024-01-15T12:00:00-06:00"
        assert summer is not None and summer.value == "2024-07-15T12:00:00-05:00"

    @pytest.mark.parametrize("bad", ["", "abc", "20241301", "20240230", "00000101", "20240101120000+1500", "2024010"])
    def test_invalid_values_map_to_none(self, bad: str) -> None:
        """Impossible dates, bad offsets and odd lengths give None (the caller reports the field)."""
        assert dtm_to_datetime(bad, S) is None

    @hsettings(max_examples=80, deadline=None)
    @given(
        moment=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31)),
        precision=st.integers(min_value=4, max_value=18),
        offset_minutes=st.one_of(st.none(), st.integers(min_value=-12 * 60, max_value=14 * 60)),
    )
    def test_generated_values_are_valid_fhir_and_keep_their_parts(
        self, moment: datetime, precision: int, offset_minutes: int | None
    ) -> None:
        """Any DTM of any precision and offset maps to a valid FHIR dateTime with the same date/time parts."""
        text = moment.strftime("%Y%m%d%H%M%S") + f".{moment.microsecond // 100:04d}"
        text = text[
            : {4: 4, 5: 6, 6: 6, 7: 8, 8: 8, 9: 10, 10: 10, 11: 12, 12: 12}.get(precision, min(precision + 2, 19))
        ]
        text = text.rstrip(".")
        if offset_minutes is not None:
            sign = "+" if offset_minutes >= 0 else "-"
            text += f"{sign}{abs(offset_minutes) // 60:02d}{abs(offset_minutes) % 60:02d}"
        result = dtm_to_datetime(text, S)
        assert result is not None
        assert FHIR_DATETIME.match(result.value)
        digits = re.sub(r"[^0-9]", "", result.value)
        assert digits.startswith(re.sub(r"[^0-9]", "", text.split("+")[0].split("-")[0])[: len(digits)][:8])
        if "T" in result.value:
            assert offset_minutes is not None  # a time only ever comes with a real offset
            parsed = datetime.fromisoformat(result.value)
            assert parsed.utcoffset() == timedelta(minutes=offset_minutes)
        _valid_in_both({"resourceType": "Patient", "deceasedDateTime": result.value})

    def test_instant_needs_time_and_zone(self) -> None:
        """dtm_to_instant gives an instant only for a full time with a zone."""
        assert dtm_to_instant("20240101120000-0500", S) == "2024-01-01T12:00:00-05:00"
        assert dtm_to_instant("20240101120000", S) is None
        assert dtm_to_instant("20240101", S) is None
        utc = datetime.fromisoformat(dtm_to_instant("20240101120000+0000", S) or "")
        assert utc.tzinfo is not None and utc.utcoffset() == UTC.utcoffset(None)


class TestDtmMemo:
    """dtm_to_datetime keeps results per message (same text, same zone → same answer)."""

    def test_same_text_under_two_zones_gives_two_answers(self) -> None:
        """The memo is keyed by zone too: one channel's offset never leaks into another's."""
        forget_message_dates()
        chicago, kolkata = settings(timezone="America/Chicago"), settings(timezone="Asia/Kolkata")
        results = [dtm_to_datetime("202401151200", s) for s in (chicago, kolkata, None, chicago)]
        assert [r.value if r else None for r in results] == [
            "2024-01-15T12:00:00-06:00",
            "2024-01-15T12:00:00+05:30",
            "2024-01-15",
            "2024-01-15T12:00:00-06:00",
        ]
        assert results[2] is not None and results[2].original == "202401151200"

    def test_memo_is_emptied_per_message_and_bounded(self) -> None:
        """forget_message_dates() empties it (convert_message calls it); a long message cannot grow it unbounded."""
        forget_message_dates()
        days = [f"2024{month:02d}{day:02d}" for month in range(1, 13) for day in range(1, 29)]
        assert len(days) > _DTM_MEMO_SIZE
        assert [dtm_to_datetime(day, S) for day in days] == [dtm_to_datetime(day, None) for day in days]
        assert 0 < len(_DTM_MEMO) <= _DTM_MEMO_SIZE
        forget_message_dates()
        assert not _DTM_MEMO

    def test_digits_of_other_scripts_are_written_in_ascii(self) -> None:
        """\\d in the DTM pattern also matches e.g. Arabic-Indic digits: the FHIR text is ASCII."""
        result = dtm_to_datetime("٢٠٢٤٠١١٥١٢٠٠-0500", S)
        assert result is not None and result.value == "2024-01-15T12:00:00-05:00"
        assert dt_to_date("٢٠٢٤٠١١٥") == "2024-01-15"


class TestDtToDate:
    def test_time_part_is_cut(self) -> None:
        """DT/TS → date keeps YYYY, YYYY-MM, YYYY-MM-DD and drops any time."""
        assert dt_to_date("19880517180606") == "1988-05-17"
        assert dt_to_date("198805") == "1988-05"
        assert dt_to_date("1988") == "1988"
        assert dt_to_date("19881317") is None


class TestCxToIdentifier:
    def test_every_ig_row(self) -> None:
        """CX.1-CX.5, CX.7, CX.8 land in their Identifier elements."""
        ident = cx_to_identifier(rep("123^7^M10^HOSP&1.2.3&ISO^MR^^20200101^20301231"), S)
        assert ident == {
            "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/identifier-checkDigit", "valueString": "7"},  # CX.2
                {"url": "http://hl7.org/fhir/StructureDefinition/namingsystem-checkDigit", "valueString": "M10"},
            ],
            "type": {  # CX.5 → type (v2-0203)
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "MR",
                        "display": "Medical record number",
                    }
                ]
            },
            "system": "urn:oid:1.2.3",  # CX.4 (HD.2 ISO) → system
            "value": "123",  # CX.1 → value
            "period": {"start": "2020-01-01", "end": "2030-12-31"},  # CX.7, CX.8 → period
        }
        _valid_in_both({"resourceType": "Patient", "identifier": [ident]})

    def test_configured_system_and_namespace_fallback(self) -> None:
        """identifier_systems wins for an authority; an unknown namespace becomes urn:id: with an assigner."""
        configured = settings(identifier_systems={"HOSP": "https://hosp.example/mrn", "": "https://default.example"})
        assert (cx_to_identifier(rep("1^^^HOSP"), configured) or {})["system"] == "https://hosp.example/mrn"
        assert (cx_to_identifier(rep("1"), configured) or {})["system"] == "https://default.example"
        other = cx_to_identifier(rep("1^^^OTHER CLINIC"), S) or {}
        assert other["system"] == "urn:id:OTHER_CLINIC"
        assert other["assigner"] == {"display": "OTHER CLINIC"}

    @hsettings(max_examples=60, deadline=None)
    @given(
        value=_word,
        authority=st.one_of(st.none(), st.text(alphabet="ABCXYZ", min_size=1, max_size=5)),
        id_type=st.sampled_from(["", "MR", "PI", "SS", "XX"]),
    )
    def test_round_trip(self, value: str, authority: str | None, id_type: str) -> None:
        """Generated CX.1/CX.4/CX.5 land in value, system and type.coding.code."""
        field = "^".join([escape(value), "", "", authority or "", id_type])
        ident = cx_to_identifier(rep(field), S)
        assert ident is not None
        assert ident["value"] == value  # CX.1 → value
        if authority:
            assert ident["system"] == f"urn:id:{authority}"  # CX.4 → system
        if id_type:
            assert ident["type"]["coding"][0]["code"] == id_type  # CX.5 → type
        _valid_in_both({"resourceType": "Patient", "identifier": [ident]})


class TestXpnToHumanName:
    def test_every_ig_row(self) -> None:
        """XPN.1-XPN.7, XPN.11-XPN.15 land in family/given/suffix/prefix/use/period/extension."""
        xpn = rep("VAN&VAN&BEETHOVEN^LUDWIG^B^JR^DR^PHD^L^^^^G^18000101^18271231^MD^LUDI")
        name = xpn_to_human_name(xpn, S)
        assert name is not None
        assert name["family"] == "VAN"  # XPN.1 (FN.1) → family
        assert name["_family"]["extension"][0]["valueString"] == "VAN"  # FN.2 → own-prefix
        assert name["given"] == ["LUDWIG", "B"]  # XPN.2, XPN.3 → given
        assert name["suffix"] == ["JR", "PHD", "MD"]  # XPN.4, XPN.6, XPN.14 → suffix
        assert name["prefix"] == ["DR"]  # XPN.5 → prefix
        assert name["use"] == "official"  # XPN.7 L → use
        assert name["period"] == {"start": "1800-01-01", "end": "1827-12-31"}  # XPN.12, XPN.13
        assert xpn_called_by(xpn) == {"use": "nickname", "given": ["LUDI"]}  # XPN.15 → name[2]
        _valid_in_both({"resourceType": "Patient", "name": [name]})

    @hsettings(max_examples=60, deadline=None)
    @given(parts=st.lists(st.one_of(st.just(""), _word), min_size=6, max_size=6))
    def test_round_trip(self, parts: list[str]) -> None:
        """Generated family/given/middle/suffix/prefix/degree values land in their HumanName elements."""
        family, given, middle, suffix, prefix, degree = parts
        name = xpn_to_human_name(rep("^".join(escape(p) for p in parts)), S)
        if not any(parts):
            assert name is None
            return
        assert name is not None
        assert name.get("family") == (family or None)
        assert name.get("given", []) == [g for g in (given, middle) if g]
        assert name.get("suffix", []) == [x for x in (suffix, degree) if x]
        assert name.get("prefix", []) == ([prefix] if prefix else [])
        _valid_in_both({"resourceType": "Patient", "name": [name]})

    def test_as_string(self) -> None:
        """XPN[string] joins family, given and further names (mother's maiden name)."""
        assert xpn_to_string(rep("SMITH^ANNA^M")) == "SMITH ANNA M"


class TestXadToAddress:
    def test_every_ig_row(self) -> None:
        """XAD.1-XAD.7, XAD.9, XAD.10, XAD.13, XAD.14, XAD.19 land in their Address elements."""
        address = xad_to_address(
            rep(
                "1 MAIN ST&MAIN ST&1^APT 2^SPRINGFIELD^IL^62701^USA^M^^SANGAMON^0001^^^20200101^20251231^^^^^C/O JONES"
            ),
            S,
        )
        assert address == {
            "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/iso21090-ADXP-censusTract", "valueString": "0001"}
            ],  # XAD.10 → censusTract
            "type": "postal",  # XAD.7 M → type
            "line": ["1 MAIN ST", "MAIN ST", "1", "APT 2", "C/O JONES"],  # SAD.1-3, XAD.2, XAD.19 → line
            "city": "SPRINGFIELD",  # XAD.3
            "district": "SANGAMON",  # XAD.9
            "state": "IL",  # XAD.4
            "postalCode": "62701",  # XAD.5
            "country": "USA",  # XAD.6
            "period": {"start": "2020-01-01", "end": "2025-12-31"},  # XAD.13, XAD.14
        }
        _valid_in_both({"resourceType": "Patient", "address": [address]})

    def test_vacation_home_keeps_its_code(self) -> None:
        """XAD.7 HV → iso21090-AD-use with the code HV itself (IG XAD.7 row; PostalAddressUse HV)."""
        address = xad_to_address(rep("1 MAIN ST^^SPRINGFIELD^^^^HV"), S)
        assert address is not None
        assert address["extension"] == [{"url": f"{SD}iso21090-AD-use", "valueCode": "HV"}]

    @hsettings(max_examples=60, deadline=None)
    @given(
        parts=st.lists(st.one_of(st.just(""), _word), min_size=6, max_size=6),
        kind=st.sampled_from(["", "H", "B", "M", "C", "BA"]),
    )
    def test_round_trip(self, parts: list[str], kind: str) -> None:
        """Generated street/other/city/state/zip/country values and the address type land in place."""
        street, other, city, state, zip_code, country = parts
        address = xad_to_address(rep("^".join([*(escape(p) for p in parts), kind])), S)
        if not any(parts):
            assert address is None or "line" not in address
            return
        assert address is not None
        assert address.get("line", []) == [x for x in (street, other) if x]
        for key, expected in (("city", city), ("state", state), ("postalCode", zip_code), ("country", country)):
            assert address.get(key) == (expected or None)
        expected_use = {"H": "home", "B": "work", "C": "temp", "BA": "old"}.get(kind)
        assert address.get("use") == expected_use
        assert address.get("type") == ("postal" if kind == "M" else None)
        _valid_in_both({"resourceType": "Patient", "address": [address]})


class TestXtnToContactPoint:
    def test_phone_without_equipment_is_a_phone(self) -> None:
        """XTN.1 with no XTN.3 → system phone; the segment's default use applies when XTN.2 is empty."""
        point = xtn_to_contact_point(rep("(157)983-3296"), S, "home")
        assert point == {"system": "phone", "value": "(157)983-3296", "use": "home"}

    def test_email(self) -> None:
        """XTN.3 Internet → system email and XTN.4 → value; XTN.2 NET has no use."""
        assert xtn_to_contact_point(rep("^NET^Internet^a@example.org"), S) == {
            "system": "email",
            "value": "a@example.org",
        }

    def test_composed_number_and_extensions(self) -> None:
        """XTN.5-8 compose the value and land in the contactpoint extensions; CP → phone/mobile."""
        point = xtn_to_contact_point(rep("^PRN^CP^^1^555^1234567^89^^^^^20200101^20301231^^^^2"), S)
        assert point is not None
        assert point["value"] == "+1 555 1234567 X89"  # XTN.5 + XTN.6 + XTN.7 + XTN.8 → value
        assert point["system"] == "phone" and point["use"] == "home"  # XTN.3 CP, XTN.2 PRN
        assert [e["valueString"] for e in point["extension"]] == ["1", "555", "1234567", "89"]
        assert point["rank"] == 2  # XTN.18 → rank
        assert point["period"] == {"start": "2020-01-01", "end": "2030-12-31"}  # XTN.13, XTN.14
        _valid_in_both({"resourceType": "Patient", "telecom": [point]})

    @hsettings(max_examples=60, deadline=None)
    @given(
        number=st.text(alphabet="0123456789()- ", min_size=1, max_size=14).filter(lambda t: t.strip() == t),
        use=st.sampled_from(["", "PRN", "WPN", "PRS"]),
        equipment=st.sampled_from(["", "PH", "FX", "CP", "BP"]),
    )
    def test_round_trip(self, number: str, use: str, equipment: str) -> None:
        """Generated numbers, use codes and equipment types land in value, use and system."""
        point = xtn_to_contact_point(rep(f"{number}^{use}^{equipment}"), S)
        assert point is not None
        assert point["value"] == number
        assert point["system"] == {"": "phone", "PH": "phone", "FX": "fax", "CP": "phone", "BP": "pager"}[equipment]
        expected_use = {"PRN": "home", "WPN": "work", "PRS": "mobile"}.get(use) or (
            "mobile" if equipment == "CP" else None
        )
        assert point.get("use") == expected_use
        _valid_in_both({"resourceType": "Patient", "telecom": [point]})


class TestCweToCodeableConcept:
    @pytest.mark.parametrize(
        ("name", "system"),
        [
            ("LN", "http://loinc.org"),
            ("SCT", "http://snomed.info/sct"),
            ("I10", "http://hl7.org/fhir/sid/icd-10"),
            ("I10C", "http://hl7.org/fhir/sid/icd-10-cm"),
            ("C4", "http://www.ama-assn.org/go/cpt"),
            ("HL70001", "http://terminology.hl7.org/CodeSystem/v2-0001"),
            ("UCUM", "http://unitsofmeasure.org"),
            ("99LOCAL", "urn:id:99LOCAL"),
        ],
    )
    def test_coding_system_names(self, name: str, system: str) -> None:
        """CWE.3 coding-system names map to FHIR system URIs (unknown ones to urn:id:)."""
        concept = cwe_to_codeable_concept(rep(f"CODE^Text^{name}"), S)
        assert concept == {"coding": [{"system": system, "code": "CODE", "display": "Text"}]}

    def test_all_three_triplets_and_original_text(self) -> None:
        """CWE.1-3/.7 → coding[1], CWE.4-6/.8 → coding[2], CWE.10-13 → coding[3], CWE.9 → text."""
        concept = cwe_to_codeable_concept(rep("1^One^LN^2^Two^SCT^v1^v2^Original^3^Three^I10^v3"), S)
        assert concept is not None
        assert [c["code"] for c in concept["coding"]] == ["1", "2", "3"]
        assert [c.get("version") for c in concept["coding"]] == ["v1", "v2", "v3"]
        assert concept["text"] == "Original"
        _valid_in_both({"resourceType": "Patient", "maritalStatus": concept})

    def test_concept_map_translation_keeps_the_v2_code(self) -> None:
        """A local code translated through a concept map comes first; the v2 coding is kept after it."""
        concept = cwe_to_codeable_concept(rep("M^Married"), S, "MaritalStatus", "0002")
        assert concept is not None
        assert concept["coding"][0] == {
            "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
            "code": "M",
            "display": "Married",
        }
        assert concept["coding"][1]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0002"


class TestHd:
    def test_uri_system_and_identifiers(self) -> None:
        """HD[uri], our identifier-system rule and HD[Organization] identifiers."""
        hd = HD("LAB", "2.16.840.1.113883.3.1", "ISO")
        assert hd_to_uri(hd) == "LAB"  # HD.1 first (IG HD[uri])
        assert hd_to_uri(HD("", "2.16.840.1.113883.3.1", "ISO")) == "urn:oid:2.16.840.1.113883.3.1"
        assert hd_to_system(hd, S) == "urn:oid:2.16.840.1.113883.3.1"
        assert hd_to_identifiers(hd)[1]["system"] == "urn:ietf:rfc:3986"  # HD.3 ISO → system (IG)


class TestXcnToPractitioner:
    def test_every_ig_row(self) -> None:
        """XCN.1/.9/.13 → identifier, XCN.2-6/.10 → name, XCN.7 → qualification."""
        practitioner = xcn_to_practitioner(
            rep("1234^HOUSE^GREGORY^M^JR^DR^MD^^NPI&2.16.840.1.113883.4.6&ISO^L^^^NPI"), S
        )
        assert practitioner is not None
        assert practitioner["identifier"][0]["value"] == "1234"  # XCN.1
        assert practitioner["identifier"][0]["system"] == "urn:oid:2.16.840.1.113883.4.6"  # XCN.9
        assert practitioner["identifier"][0]["type"]["coding"][0]["code"] == "NPI"  # XCN.13
        assert practitioner["name"][0]["family"] == "HOUSE"  # XCN.2
        assert practitioner["name"][0]["given"] == ["GREGORY", "M"]  # XCN.3, XCN.4
        assert practitioner["name"][0]["use"] == "official"  # XCN.10
        assert practitioner["qualification"][0]["code"]["coding"][0]["code"] == "MD"  # XCN.7
        _valid_in_both(practitioner)

    def test_name_follows_fn_and_xcn_rows(self) -> None:
        """XCN.2 through FN[HumanName] (own/partner parts), XCN.5/.7/.21 → suffix, XCN.18 → assembly order."""
        practitioner = xcn_to_practitioner(
            rep("7^VAN BEETHOVEN&VAN&BEETHOVEN&VAL&ROGER^LUDWIG^^2ND^DR^MD^^^L^^^^^^^^G^^^PHD"), S
        )
        assert practitioner is not None
        name = practitioner["name"][0]
        assert name["family"] == "VAN BEETHOVEN"  # FN.1
        assert [e["valueString"] for e in name["_family"]["extension"]] == ["VAN", "BEETHOVEN", "VAL", "ROGER"]
        assert name["suffix"] == ["2ND", "MD", "PHD"]  # XCN.5, XCN.7 (degree), XCN.21
        assert name["extension"] == [{"url": f"{SD}humanname-assembly-order", "valueCode": "G"}]  # XCN.18
        assert name["use"] == "official"  # XCN.10 L
        _valid_in_both(practitioner)

    def test_check_digit_scheme_is_a_string(self) -> None:
        """XCN.11 / XCN.12 → identifier-checkDigit and namingsystem-checkDigit, both valueString (IG rows)."""
        practitioner = xcn_to_practitioner(rep("7^DOE^^^^^^^^^A^NPI"), S)
        assert practitioner is not None
        assert practitioner["identifier"][0]["extension"] == [
            {"url": f"{SD}identifier-checkDigit", "valueString": "A"},
            {"url": f"{SD}namingsystem-checkDigit", "valueString": "NPI"},
        ]


class TestXonToOrganization:
    def test_every_ig_row(self) -> None:
        """XON.1 → name, XON.10 (else XON.3) → identifier.value, XON.6 → system, XON.7 → type."""
        org = xon_to_organization(rep("GOOD HEALTH^^77^^^AUTH&1.2.9&ISO^XX^^^ORG-10"), S)
        assert org is not None
        assert org["name"] == "GOOD HEALTH"
        assert org["identifier"][0]["value"] == "ORG-10"
        assert org["identifier"][0]["system"] == "urn:oid:1.2.9"
        assert org["identifier"][0]["type"]["coding"][0]["code"] == "XX"
        _valid_in_both(org)


class TestOtherTypes:
    def test_ei_and_dln(self) -> None:
        """EI.1 + EI.2-4 → value/system; DLN.1-3 → value, system (state), type DL, period.end."""
        assert ei_to_identifier(rep("ORD1^LAB^1.2.3^ISO"), S) == {"system": "urn:oid:1.2.3", "value": "ORD1"}
        dln = dln_to_identifier(rep("D123^CA^20300101"), S)
        assert dln is not None and dln["value"] == "D123" and dln["period"] == {"end": "2030-01-01"}
        assert dln["type"]["coding"][0]["code"] == "DL"

    def test_numbers(self) -> None:
        """NM → JSON number; SN → Quantity / Range / Ratio with the original text kept."""
        assert nm_to_number("12") == 12
        assert nm_to_number("-0.5") == -0.5
        assert nm_to_number("1e5") is None
        assert sn_to_value(rep(">^10")) == ("Quantity", {"value": 10, "comparator": ">"})
        kind, rng = sn_to_value(rep("^10^-^20")) or ("", {})
        assert kind == "Range" and rng["low"] == {"value": 10} and rng["high"] == {"value": 20}
        kind, ratio = sn_to_value(rep("^1^:^128")) or ("", {})
        assert kind == "Ratio" and ratio["denominator"] == {"value": 128}
        quantity = cq_to_quantity(rep("5^mg&milligram&UCUM"), S)
        assert quantity == {"value": 5, "unit": "milligram", "system": "http://unitsofmeasure.org", "code": "mg"}
