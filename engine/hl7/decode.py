"""Bytes to text for one HL7 v2 message, driven by MSH-18; never raises, never hangs.

The raw bytes are not modified (the store keeps them exactly, DESIGN.md §5.6); only the
returned text is trimmed of a leading byte-order mark and blank bytes before "MSH".

Policy when the bytes contradict MSH-18 (HL7 v2.5 ch. 2.15.9.18, table 0211):

* Declared single-byte set (8859/x, cp1252) but the bytes are valid UTF-8 and not plain
  ASCII: decode as UTF-8 and report `fallback_used=True`. The declared charset is the
  contract, but a single-byte set accepts *any* byte sequence, so honouring it here
  silently turns "µg" into "Âµg" in every FHIR resource downstream. Genuine Latin-1
  text is almost never valid UTF-8 (an accented letter is followed by ASCII, which
  UTF-8 forbids after a lead byte), so the check does not misfire on real Latin-1;
  the corpus holds exactly this mislabel (`8859/1` declared, UTF-8 bytes). The flag
  lets intake count it, and `trust_utf8=False` restores the strict reading.
* Bytes invalid for the declared set, or an unknown name: the channel's fallback
  charset, then ISO 8859-1, which decodes every byte sequence.
* No MSH-18: HL7 means ASCII; the channel's fallback (default UTF-8, a superset of
  ASCII) is used and is not reported as a fallback.
"""

from __future__ import annotations

import codecs
import functools
from dataclasses import dataclass

from engine.hl7.charset import SINGLE_BYTE_CODECS, WIDE_CODECS, codec_for

_BOM_UTF8 = b"\xef\xbb\xbf"
_BLANK_BYTES = b" \t\r\n\x00"
_LAST_RESORT = "iso8859-1"  # every byte is a character: decoding cannot fail

# Byte-order marks and the pattern "MSH" makes in each wide form, longest first.
_WIDE_SIGNATURES: tuple[tuple[bytes, str, int], ...] = (
    (b"\xff\xfe\x00\x00", "utf-32-le", 4),
    (b"\x00\x00\xfe\xff", "utf-32-be", 4),
    (b"\xff\xfe", "utf-16-le", 2),
    (b"\xfe\xff", "utf-16-be", 2),
    (b"M\x00\x00\x00S\x00\x00\x00", "utf-32-le", 0),
    (b"\x00\x00\x00M\x00\x00\x00S", "utf-32-be", 0),
    (b"M\x00S\x00", "utf-16-le", 0),
    (b"\x00M\x00S", "utf-16-be", 0),
)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded message.

    `codec` is the Python codec actually used (store it as Inbound.charset and encode
    the ACK with it); `declared` is MSH-18's first repetition as received ("" when
    absent); `fallback_used` is True when the text was not decoded with the declared
    charset (or, with none declared, not with the channel's default).
    """

    text: str
    codec: str
    fallback_used: bool
    declared: str


def decode(data: bytes, fallback: str = "utf-8", *, trust_utf8: bool = True) -> Decoded:
    """Decode one message's bytes per its MSH-18, falling back as the module docstring says."""
    if data.startswith(b"MSH"):
        body, msh_at = data, 0
    else:
        wide = _wide_form(data)
        if wide is not None:
            return _decode_wide(data, wide[0], wide[1])
        start = _content_start(data)
        body = data[start:]
        msh_at = 0 if body.startswith(b"MSH") else _find_msh_line(body)
    declared, codec = _declared_charset(body, msh_at) if msh_at >= 0 else ("", None)
    if codec in WIDE_CODECS:
        codec = None  # "MSH" was read as single bytes, so a wide form is a mislabel

    if codec is not None:
        attempt = _decode_with(body, codec, trust_utf8)
        if attempt is not None:
            return Decoded(attempt[0], attempt[1], attempt[1] != codec, declared)
    default = _canonical(fallback)
    for candidate in (default, _LAST_RESORT):
        if candidate is None:
            continue
        attempt = _decode_with(body, candidate, trust_utf8)
        if attempt is not None:
            used = attempt[1]
            return Decoded(attempt[0], used, bool(declared) or used != default, declared)
    raise AssertionError("ISO 8859-1 decodes every byte sequence")  # pragma: no cover


def segments(text: str) -> list[str]:
    """Split a message into segments on CR, LF or CRLF (mixed allowed), dropping blank lines.

    HL7 v2 ch. 2.5.3 prescribes CR alone; LF and CRLF come from files and tools, and the
    custody path accepts them rather than rejecting a message over its line endings.
    """
    lines = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")
    return [line for line in lines if line and not line.isspace()]


def _decode_with(body: bytes, codec: str, trust_utf8: bool) -> tuple[str, str] | None:
    """(text, codec used) or None when the bytes are invalid for `codec`."""
    if trust_utf8 and codec in SINGLE_BYTE_CODECS and not body.isascii():
        try:
            return body.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass
    try:
        return body.decode(codec), codec
    except (UnicodeDecodeError, LookupError):
        return None


@functools.lru_cache(maxsize=64)
def _canonical(name: str) -> str | None:
    """Canonical name of a configured fallback; None when unknown or not ASCII compatible.

    Config validation should already have refused such a name (`resolve_fallback`); this
    keeps a bad one from turning every message into garbage instead of ISO 8859-1.
    """
    try:
        canonical = codecs.lookup(name).name
        return canonical if b"MSH|".decode(canonical) == "MSH|" else None
    except (LookupError, UnicodeDecodeError):
        return None


def _content_start(data: bytes) -> int:
    """Offset of the first byte after a UTF-8 BOM and any blanks/NULs."""
    start = len(_BOM_UTF8) if data.startswith(_BOM_UTF8) else 0
    return len(data) - len(data[start:].lstrip(_BLANK_BYTES))


def _find_msh_line(body: bytes) -> int:
    """Offset of the first segment named MSH at a line start (after FHS/BHS), or -1."""
    found = [i + 1 for i in (body.find(b"\rMSH"), body.find(b"\nMSH")) if i >= 0]
    return min(found) if found else -1


def _declared_charset(body: bytes, msh_at: int) -> tuple[str, str | None]:
    """MSH-18's first repetition (as text) and the codec it names.

    When the first repetition names no codec (empty or ASCII) and a later one names an
    ISO 2022 set (HL7 ch. 2.15.9.18 code extension, e.g. `~ISO IR87`), the message uses
    escape sequences and is read as ISO-2022-JP-2, which covers ASCII and JIS X 0208/0212.
    """
    line_end = len(body)
    for terminator in (b"\r", b"\n"):
        found = body.find(terminator, msh_at)
        if 0 <= found < line_end:
            line_end = found
    line = body[msh_at:line_end]
    if len(line) < 4:
        return "", None
    fields = line.split(line[3:4], 18)  # fields[17] is MSH-18; MSH-1 is the separator itself
    if len(fields) < 18:
        return "", None
    repetition_sep = fields[1][1:2] or b"~"
    repetitions = [r.decode("ascii", "replace").strip() for r in fields[17].split(repetition_sep)]
    declared = repetitions[0]
    codec = codec_for(declared)
    if (not declared or codec == "ascii") and len(repetitions) > 1:
        extended = [codec_for(r) for r in repetitions[1:]]
        if any(c is not None and c.startswith("iso2022") for c in extended):
            codec = "iso2022_jp_2"
    return declared, codec


def _wide_form(data: bytes) -> tuple[str, int] | None:
    """(codec, BOM length) when the message is UTF-16/UTF-32 by BOM or by how "MSH" looks."""
    for signature, codec, bom_length in _WIDE_SIGNATURES:
        if data.startswith(signature):
            return codec, bom_length
    return None


def _decode_wide(data: bytes, codec: str, bom_length: int) -> Decoded:
    """Decode a UTF-16/UTF-32 message; MSH-18 is read from the decoded text."""
    try:
        text = data[bom_length:].decode(codec).lstrip(" \t\r\n\x00")
    except UnicodeDecodeError:
        # Broken wide text: read it byte by byte; the header check then rejects it.
        return Decoded(data.decode(_LAST_RESORT), _LAST_RESORT, True, "")
    probe = text.encode("utf-8", "surrogatepass")
    declared = _declared_charset(probe, 0)[0] if probe.startswith(b"MSH") else ""
    mislabelled = bool(declared) and codec_for(declared) not in WIDE_CODECS
    return Decoded(text, codec, mislabelled, declared)


#: The name intake and conversion import; same function.
decode_message = decode
