"""MSH-18 character set names (HL7 table 0211) mapped to Python codecs.

HL7 v2.5 ch. 2.15.9.18: an empty MSH-18 means the default single-byte set (ASCII). The
table's names are matched after upper-casing and collapsing blanks; a few spellings
senders use in practice (`UTF-8`, `ISO-8859-1`, `WINDOWS-1252`) are accepted too.
Arbitrary names are never handed to `codecs.lookup`: that would let a message pick
codecs such as `unicode_escape` that are not character sets.
"""

from __future__ import annotations

import codecs

_TABLE_0211: dict[str, str] = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",  # ISO 646, the ASCII repertoire
    "8859/1": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    # JIS X 0201 as an 8-bit set: ASCII plus half-width katakana at 0xA1-0xDF, the
    # single-byte part of Shift_JIS.
    "ISO IR14": "shift_jis",
    # JIS X 0208 / 0212 are only reachable through ISO 2022 escape sequences (MSH-20).
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    # Deprecated "UNICODE" (ISO/IEC 10646) names no encoding form; in an 8-bit stream whose
    # MSH reads as ASCII the only consistent form is UTF-8.
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32",
}

# Spellings outside table 0211 that real senders put in MSH-18.
_ALIASES: dict[str, str] = {
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "UTF-16": "utf-16",
    "UTF-32": "utf-32",
    "US-ASCII": "ascii",
    "ISO-8859-1": "iso8859-1",
    "ISO8859-1": "iso8859-1",
    "ISO_8859-1": "iso8859-1",
    "LATIN1": "iso8859-1",
    "LATIN-1": "iso8859-1",
    "ISO-8859-15": "iso8859-15",
    "ISO8859-15": "iso8859-15",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
}

#: Codecs where every byte stands alone and ASCII is a subset: text in another encoding
#: always "decodes" under them, so a valid-UTF-8 check is the only way to spot a mislabel.
SINGLE_BYTE_CODECS: frozenset[str] = frozenset(
    {f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)} | {"cp1252"}
)

#: Encoding forms whose code units are wider than a byte; "MSH" in such a message is
#: never the three bytes b"MSH".
WIDE_CODECS: frozenset[str] = frozenset(
    {"utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"}
)


def codec_for(declared: str) -> str | None:
    """The Python codec for one MSH-18 repetition, or None when the name is unknown."""
    if not declared:
        return None
    key = " ".join(declared.upper().split())
    return _TABLE_0211.get(key) or _ALIASES.get(key)


def resolve_fallback(name: str) -> str:
    """Validate a configured fallback charset and return its canonical codec name.

    The fallback must be a text codec in which the bytes b"MSH|" read as "MSH|" (ASCII
    compatible), otherwise the header could not be read after falling back. Raises
    ValueError naming the problem (for `hl7engine validate`).
    """
    try:
        canonical = codecs.lookup(name).name
        readable = b"MSH|".decode(canonical) == "MSH|"
    except (LookupError, UnicodeDecodeError) as exc:
        raise ValueError(f"unknown or non-text charset {name!r}") from exc
    if not readable:
        raise ValueError(f"charset {name!r} is not ASCII compatible")
    return canonical
