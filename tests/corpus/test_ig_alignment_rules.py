"""Time rules of tests/corpus/ig_alignment.py: which v2 timestamp a ReportStream "…Z" came from."""

from __future__ import annotations

from typing import Any

from tests.corpus import ig_alignment

_MSH = "MSH|^~\\&|||||20230501102531-0400||ORU^R01^ORU_R01|1|P|2.5.1"


def _aligned(value: str, segment: str) -> tuple[Any, list[str]]:
    expected = {"entry": [{"resource": {"resourceType": "Observation", "valueDateTime": value}}]}
    aligned, rules = ig_alignment.align_cdc(expected, _MSH + "\r" + segment + "\r")
    return aligned["entry"][0]["resource"].get("valueDateTime"), rules


class TestTimeRules:
    def test_zoneless_value_sharing_a_prefix_with_msh7(self) -> None:
        """A zoneless OBX value (2023050110) is compared as a date although MSH-7 starts alike and has an offset."""
        assert _aligned("2023-05-01T10:00:00Z", "OBX|1|DT|X^Y^LN||2023050110") == (
            "2023-05-01",
            ["zoneless-time-as-utc"],
        )

    def test_plus_zero_offset_kept_as_sent(self) -> None:
        """A value sent with +0000 is compared in the +00:00 form, not as a date."""
        assert _aligned("2021-06-24T19:48:00Z", "OBX|1|DTM|X^Y^LN||20210624194800+0000") == (
            "2021-06-24T19:48:00+00:00",
            ["utc-offset-form"],
        )

    def test_other_offset_untouched(self) -> None:
        """A "…Z" whose v2 source has a non-zero offset is a real instant: left as ReportStream wrote it."""
        assert _aligned("2023-05-01T10:25:31Z", "OBX|1|DTM|X^Y^LN||20230501102531-0400") == (
            "2023-05-01T10:25:31Z",
            [],
        )
