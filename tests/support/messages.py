"""HL7 v2 test messages written for this project (no third-party data)."""

from __future__ import annotations


def adt_a01(
    control_id: str = "MSG00001",
    *,
    mrn: str = "MRN12345",
    family: str = "DOE",
    given: str = "JANE",
    sending_app: str = "EPICADT",
    sending_facility: str = "GENHOSP",
    accept_ack: str = "",
    app_ack: str = "",
    charset: str = "",
    message_type: str = "ADT^A01^ADT_A01",
    terminator: str = "\r",
) -> str:
    segments = [
        f"MSH|^~\\&|{sending_app}|{sending_facility}|HL7ENGINE|HUB|20260115083000-0500||{message_type}|"
        f"{control_id}|P|2.5.1|||{accept_ack}|{app_ack}||{charset}",
        "EVN|A01|20260115083000-0500",
        f"PID|1||{mrn}^^^GENHOSP^MR||{family}^{given}^Q||19800101|F|||1 MAIN ST^^SPRINGFIELD^IL^62701^USA"
        "||(217)555-0100|||S",
        "PV1|1|I|WARD1^101^A^GENHOSP||||1234^ATTEND^ALICE^^^DR|||MED||||ADM|||||V123",
        "IN1|1|PLAN01|INS001|ACME HEALTH|PO BOX 1^^CHICAGO^IL^60601||(312)555-0199|GRP42|||||20250101|"
        f"20261231|||{family}^{given}|SEL|19800101|1 MAIN ST^^SPRINGFIELD^IL^62701|||||||||||||||||POL123",
    ]
    return terminator.join(segments) + terminator


def encode(text: str, charset: str = "utf-8") -> bytes:
    return text.encode(charset)
