"""HL7 v2 escape sequences (HL7 v2.5.1 ch. 2, section 2.7 "Use of escape sequences in text fields").

Public API::

    Delimiters(field="|", component="^", repetition="~", escape="\\\\", subcomponent="&", truncation="")
    DEFAULT_DELIMITERS
    unescape(value: str, delims: Delimiters = DEFAULT_DELIMITERS) -> str
    escape(value: str, delims: Delimiters = DEFAULT_DELIMITERS) -> str

`unescape` runs on ONE already-split leaf value (a subcomponent), so a decoded
delimiter can never create structure. Our policy, where implementations disagree
(see ../shared/corpus/escape-vectors):

- ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` → the message's own field / component / subcomponent /
  repetition / escape character; ``\\P\\`` (v2.7+) → the truncation character.
- ``\\Xhh..\\`` → the bytes, decoded as UTF-8 when they are valid UTF-8, else as
  ISO-8859-1 (python-hl7 reads them as ISO-8859-1; MS FHIR-Converter as bytes). Runs of
  adjacent hex escapes are joined first, so a UTF-8 character split over two escapes
  (``\\XC3\\\\XA9\\``) decodes to one character. Empty, odd-length or non-hex → kept
  literally (MS raises; we never raise on bad input).
- ``\\H\\`` / ``\\N\\`` (highlight on/off) → dropped (python-hl7 renders ``_``; FHIR strings
  carry no highlighting).
- ``\\.br\\`` → a real newline (MS emits the two characters backslash-n for its
  template engine); ``\\.sp\\`` / ``\\.sp n\\`` → n newlines (default 1); ``\\.ce\\`` → a
  newline (centering starts a new line); ``\\.fi\\ \\.nf\\ \\.in±n\\ \\.ti±n\\ \\.sk n\\`` →
  dropped (layout hints with no FHIR equivalent).
- ``\\Cxxyy\\`` / ``\\Mxxyyzz\\`` (ISO 2022 charset switches) → dropped; the text was
  already decoded with MSH-18.
- ``\\Z..\\`` (locally defined), unknown sequences, and an escape with no closing
  escape character → kept literally, so nothing is silently lost.

`escape` is the inverse for our own output (e.g. ACK texts): the five delimiters and
the truncation character become ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\P\\``; CR and LF become
``\\X0D\\`` / ``\\X0A\\`` (a raw CR would end the segment). Non-ASCII passes through
unchanged (python-hl7 hex-escapes it; the message charset, not escapes, carries it).
``unescape(escape(s)) == s`` for every string.
"""

from __future__ import annotations

from typing import NamedTuple


class Delimiters(NamedTuple):
    """A message's delimiters, from MSH-1 and MSH-2 (HL7 v2 ch. 2.5.4).

    A delimiter that MSH-2 did not declare is "" and never splits anything.
    """

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""


DEFAULT_DELIMITERS = Delimiters()

_HEX = frozenset("0123456789abcdefABCDEF")
_DROPPED_FORMATTING = (".fi", ".nf", ".in", ".ti", ".sk")


def _decode_hex(hex_text: str) -> str | None:
    """Bytes of a ``\\X..\\`` run as text; None when the hex is unusable (kept literally)."""
    if not hex_text or len(hex_text) % 2 or not _HEX.issuperset(hex_text):
        return None
    data = bytes.fromhex(hex_text)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _formatting(seq: str) -> str | None:
    """Text for a formatting command (``.br`` etc.); None when it is not one we know."""
    if seq in (".br", ".ce"):
        return "\n"
    if seq.startswith(".sp"):
        count = seq[3:].strip()
        if not count:
            return "\n"
        if count.isdigit():
            return "\n" * min(int(count), 100)  # bounded: a hostile count must not blow memory
        return None
    if seq.startswith(_DROPPED_FORMATTING):
        return ""
    return None


def unescape(value: str, delims: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Decode every escape sequence in one leaf value (policy in the module docstring)."""
    esc = delims.escape
    if not esc or esc not in value:
        return value
    simple = {
        "F": delims.field,
        "S": delims.component,
        "T": delims.subcomponent,
        "R": delims.repetition,
        "E": esc,
        "H": "",
        "N": "",
    }
    if delims.truncation:
        simple["P"] = delims.truncation
    out: list[str] = []
    pending_hex: list[str] = []  # adjacent \X..\ runs, joined before decoding
    pending_raw: list[str] = []
    i = 0
    n = len(value)

    def flush_hex() -> None:
        if not pending_hex:
            return
        decoded = _decode_hex("".join(pending_hex))
        if decoded is None:
            # One bad run must not take its valid neighbours with it: decode each alone.
            for hex_text, raw in zip(pending_hex, pending_raw, strict=True):
                one = _decode_hex(hex_text)
                out.append(raw if one is None else one)
        else:
            out.append(decoded)
        pending_hex.clear()
        pending_raw.clear()

    while i < n:
        start = value.find(esc, i)
        if start < 0:
            flush_hex()
            out.append(value[i:])
            break
        end = value.find(esc, start + 1)
        if start > i:
            flush_hex()
            out.append(value[i:start])
        if end < 0:  # no closing escape character: literal
            flush_hex()
            out.append(value[start:])
            break
        seq = value[start + 1 : end]
        raw = value[start : end + 1]
        i = end + 1
        if seq[:1] == "X" and len(seq) > 1:
            pending_hex.append(seq[1:])
            pending_raw.append(raw)
            continue
        flush_hex()
        if seq in simple:
            out.append(simple[seq])
        elif seq[:1] in ("C", "M") and len(seq) > 1 and _HEX.issuperset(seq[1:]):
            continue  # charset switch: dropped
        elif seq.startswith("."):
            text = _formatting(seq)
            out.append(raw if text is None else text)
        else:
            out.append(raw)  # \Z..\, unknown, empty "\\": kept literally
    else:
        flush_hex()
    return "".join(out)


def escape(value: str, delims: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Escape delimiters, CR and LF in `value` so it can be placed in one leaf of a message."""
    esc = delims.escape or "\\"
    table = {
        esc: f"{esc}E{esc}",
        delims.field: f"{esc}F{esc}",
        delims.component: f"{esc}S{esc}",
        delims.subcomponent: f"{esc}T{esc}",
        delims.repetition: f"{esc}R{esc}",
        "\r": f"{esc}X0D{esc}",
        "\n": f"{esc}X0A{esc}",
    }
    if delims.truncation:
        table[delims.truncation] = f"{esc}P{esc}"
    table.pop("", None)
    if not any(ch in value for ch in table):
        return value
    return "".join(table.get(ch, ch) for ch in value)
