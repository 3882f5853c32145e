"""Masks patient data in a v2 message for display: structure stays, values go.

Segment ids, delimiters and the MSH segment (routing data, no patient data) are kept;
every other non-empty field becomes `***`, so an operator can see which fields were
sent without seeing what they hold.
"""

from __future__ import annotations

import re

_TERMINATORS = re.compile(r"(\r\n|\r|\n)")


def mask_message(text: str) -> str:
    parts = _TERMINATORS.split(text)
    field_sep = text[3] if text.startswith("MSH") and len(text) > 3 else "|"
    masked: list[str] = []
    for part in parts:
        if not part or _TERMINATORS.fullmatch(part):
            masked.append(part)
            continue
        if part.startswith(("MSH", "FHS", "BHS")):
            masked.append(part)
            continue
        fields = part.split(field_sep)
        masked.append(field_sep.join([fields[0], *("***" if f else "" for f in fields[1:])]))
    return "".join(masked)
