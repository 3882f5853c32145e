"""MSH → MessageHeader/Bundle/Provenance and EVN → Provenance (channels/mappers/segments/header.py)."""

from __future__ import annotations

import pytest

from engine.types import MappingError
from tests.unit.test_mappers_helpers import by_name, convert_both, one, resources, segment

_MSH_FIELDS = {
    1: "^~\\&",  # MSH-2 (segment() numbers after the id, so 1 here is MSH-2)
    2: "LAB^1.2.3^ISO",  # MSH-3
    3: "HOSP",  # MSH-4
    4: "EHR",  # MSH-5
    5: "CLINIC",  # MSH-6
    6: "20240301101500-0800",  # MSH-7
    8: "ADT^A08^ADT_A01",  # MSH-9
    9: "MSG42",  # MSH-10
    10: "P^T",  # MSH-11
    11: "2.5.1",  # MSH-12
    16: "USA",  # MSH-17
    17: "UNICODE UTF-8",  # MSH-18
    18: "en",  # MSH-19
}
MSH = segment("MSH", _MSH_FIELDS)
PID = "PID|1||M1||DOE^JANE"


class TestMshToMessageHeader:
    def test_every_row(self) -> None:
        """MSH-3..-19 land in MessageHeader, Bundle.identifier/timestamp and the sender Organization."""
        results = convert_both(MSH + "\r" + PID + "\r")
        bundle, unmapped = results["R4B"].bundle, results["R4B"].unmapped
        header = one(bundle, "MessageHeader")
        assert header["eventCoding"]["code"] == "A08"  # MSH-9.2 → eventCoding (v2-0003)
        assert header["source"]["name"] == "LAB"  # MSH-3.1 → source.name
        assert header["source"]["endpoint"] == "urn:oid:1.2.3"  # MSH-3.2/3 → source.endpoint
        assert header["destination"][0]["name"] == "EHR"  # MSH-5 → destination.name
        receiver = by_name(bundle, "Organization", "CLINIC")  # MSH-6 → destination.receiver
        sender = by_name(bundle, "Organization", "HOSP")  # MSH-4 → sender
        urls = {id(e["resource"]): e["fullUrl"] for e in bundle["entry"]}
        assert header["destination"][0]["receiver"] == {"reference": urls[id(receiver)]}
        assert header["sender"] == {"reference": urls[id(sender)]}
        assert sender["address"] == [{"country": "USA"}]  # MSH-17 → sender address country
        assert header["meta"]["tag"][0]["code"] == "P"  # MSH-11.1 → meta.tag (v2-0103)
        assert header["meta"]["tag"][1]["code"] == "T"  # MSH-11.2 → meta.tag (v2-0207)
        assert header["language"] == "en"  # MSH-19 → language
        assert bundle["identifier"] == {"value": "MSG42", "system": "urn:oid:1.2.3"}  # MSH-10, system from MSH-3
        assert bundle["timestamp"] == "2024-03-01T10:15:00-08:00"  # MSH-7 → Bundle.timestamp
        provenance = one(bundle, "Provenance")  # IG MSH[Provenance-Source]
        assert provenance["recorded"] == "2024-03-01T10:15:00-08:00"
        assert provenance["agent"][0]["who"] == {"reference": urls[id(sender)]}
        assert {"reference": urls[id(one(bundle, "Patient"))]} in provenance["target"]
        assert [f for s, f in unmapped if s == "MSH"] == ["12"]  # the version has no FHIR target

    def test_r5_endpoints(self) -> None:
        """R5 MessageHeader uses endpointUrl instead of endpoint."""
        bundle = convert_both(MSH + "\r" + PID + "\r")["R5"].bundle
        header = one(bundle, "MessageHeader")
        assert header["source"]["endpointUrl"] == "urn:oid:1.2.3"
        assert "endpoint" not in header["source"]

    def test_zone_less_timestamp_is_reported(self) -> None:
        """MSH-7 without a zone gives no Bundle.timestamp or Provenance and is reported unmapped."""
        msh = MSH.replace("20240301101500-0800", "20240301101500")
        result = convert_both(msh + "\r" + PID + "\r")["R4B"]
        assert "timestamp" not in result.bundle
        assert resources(result.bundle, "Provenance") == []
        assert ("MSH", "7") in result.unmapped

    def test_country_without_sending_facility_is_reported(self) -> None:
        """MSH-17 without MSH-4: no sender (an Organization with only a country breaks org-1), MSH-17 reported."""
        msh = MSH.replace("|HOSP|", "||")
        result = convert_both(msh + "\r" + PID + "\r")["R4B"]
        assert "sender" not in one(result.bundle, "MessageHeader")
        assert all(o.get("name") or o.get("identifier") for o in resources(result.bundle, "Organization"))
        assert resources(result.bundle, "Provenance") == []  # IG message maps: "if there is a source in MSH-4"
        assert ("MSH", "17") in result.unmapped

    def test_source_provenance_activity(self) -> None:
        """IG MSH-9 row: activity.coding.display is "message - " + MSG.1^MSG.2^MSG.3."""
        bundle = convert_both(MSH + "\r" + PID + "\r")["R4B"].bundle
        provenance = one(bundle, "Provenance")
        assert provenance["activity"] == {"coding": [{"display": "message - ADT^A08^ADT_A01"}]}

    def test_security_and_alternate_language(self) -> None:
        """MSH-8 → meta.security code; MSH-19.4 gives the language when MSH-19.1 is empty."""
        msh = MSH.replace("||ADT^A08", "|SEC1|ADT^A08").replace("|en", "|^^^EN-US")
        header = one(convert_both(msh + "\r" + PID + "\r")["R4B"].bundle, "MessageHeader")
        assert header["meta"]["security"] == [{"code": "SEC1"}]
        assert header["language"] == "EN-US"

    def test_receiving_application_and_network_are_two_destinations(self) -> None:
        """MSH-5 and MSH-25 each give a destination (HD.1 → name, HD.2/3 → endpoint), both received by MSH-6."""
        msh = segment("MSH", {**_MSH_FIELDS, 4: "EHR^2.1.5^ISO", 24: "NET^2.1.1^ISO"})  # MSH-5, MSH-25
        bundle = convert_both(msh + "\r" + PID + "\r")["R4B"].bundle
        destinations = one(bundle, "MessageHeader")["destination"]
        assert [(d["name"], d["endpoint"]) for d in destinations] == [
            ("EHR", "urn:oid:2.1.5"),
            ("NET", "urn:oid:2.1.1"),
        ]
        assert destinations[0]["receiver"] == destinations[1]["receiver"]  # MSH-6, the receiving facility

    def test_network_address_alone_names_the_destination(self) -> None:
        """MSH-25 without MSH-5: its HD.1 is destination.name (IG HD[MessageHeader.destination-endpoint])."""
        msh = segment("MSH", {**_MSH_FIELDS, 4: "", 24: "NET^2.1.1^ISO"})
        header = one(convert_both(msh + "\r" + PID + "\r")["R4B"].bundle, "MessageHeader")
        assert [(d["name"], d["endpoint"]) for d in header["destination"]] == [("NET", "urn:oid:2.1.1")]

    def test_missing_message_type_is_a_mapping_error(self) -> None:
        """An MSH without MSH-9 raises MappingError naming MSH-9."""
        with pytest.raises(MappingError) as info:
            convert_both("MSH|^~\\&|A|B|C|D|20240101||||P|2.5\r")
        assert (info.value.segment, info.value.field) == ("MSH", "9")


class TestEvnToProvenance:
    def test_every_row(self) -> None:
        """EVN-2 → recorded, EVN-4 → reason, EVN-5 → agent (Practitioner), EVN-6 → occurred, EVN-7 → location."""
        evn = segment(
            "EVN",
            {
                1: "A08",
                2: "20240301101000-0800",
                4: "01^Patient request^HL70062",
                5: "77^CLERK^CAROL",
                6: "20240301100000-0800",
                7: "FRONT DESK",
            },
        )
        result = convert_both(MSH + "\r" + evn + "\r" + PID + "\r")["R4B"]
        bundle = result.bundle
        provenance = next(
            p for p in resources(bundle, "Provenance") if p["activity"]["coding"][0]["display"].startswith("event")
        )
        urls = {id(e["resource"]): e["fullUrl"] for e in bundle["entry"]}
        assert provenance["recorded"] == "2024-03-01T10:10:00-08:00"  # EVN-2
        assert provenance["reason"][0]["coding"][0]["code"] == "PATRQT"  # EVN-4 via EventReason
        assert provenance["agent"][0]["who"] == {"reference": urls[id(one(bundle, "Practitioner"))]}  # EVN-5
        assert provenance["occurredDateTime"] == "2024-03-01T10:00:00-08:00"  # EVN-6
        assert one(bundle, "Location")["name"] == "FRONT DESK"  # EVN-7
        assert provenance["target"] == [{"reference": urls[id(one(bundle, "MessageHeader"))]}]
        assert [f for s, f in result.unmapped if s == "EVN"] == []
