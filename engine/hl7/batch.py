"""Split a file or byte stream into messages (HL7 v2.5 ch. 2.10.3, batch protocol).

A message starts at every line beginning with "MSH". Batch envelope segments (FHS, BHS,
BTS, FTS) end the message before them and are dropped. Each message keeps its bytes
exactly, from "MSH" through the terminator of its last segment; blank lines after it, a
UTF-8 BOM and MLLP block bytes at line starts (file dumps of MLLP traffic) are not part
of any message. Lines before the first MSH that are neither blank nor envelope form a
chunk of their own, so the caller rejects them visibly (ERR 100) instead of losing them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_TERMINATOR = re.compile(rb"\r\n|\r|\n")
_ENVELOPE = frozenset({b"FHS", b"BHS", b"BTS", b"FTS"})
_BOM = b"\xef\xbb\xbf"
_LINE_LEAD = b"\x0b \t\x00"  # an MLLP start block or blanks before a segment
_BLANK_LINE = b" \t\x00\x0b\x1c"  # a line of only these (after a BOM) holds no segment


def split_messages(data: bytes) -> list[bytes]:
    """The messages in `data`, in order, each byte-exact apart from the split."""
    messages: list[bytes] = []
    start: int | None = None  # where the current message began
    end = 0  # end of its last non-blank line, terminator included
    for line_start, content_end, line_end in _lines(data):
        content = data[line_start:content_end]
        bom = len(_BOM) if content.startswith(_BOM) else 0
        if not content[bom:].strip(_BLANK_LINE):
            continue
        lead = len(content) - len(content[bom:].lstrip(_LINE_LEAD))
        kind = content[lead : lead + 3]
        if kind == b"MSH" or kind in _ENVELOPE:
            if start is not None:
                messages.append(data[start:end])
            start = line_start + lead if kind == b"MSH" else None
        elif start is None:
            start = line_start + lead  # stray content: a chunk of its own
        end = line_end
    if start is not None:
        messages.append(data[start:end])
    return messages


def split_text(text: str) -> list[str]:
    """`split_messages` for decoded text (UTF-8 round trip keeps every code point)."""
    data = text.encode("utf-8", "surrogatepass")
    return [chunk.decode("utf-8", "surrogatepass") for chunk in split_messages(data)]


def _lines(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(start, end of content, end including terminator) of every line, CR/LF/CRLF alike."""
    position = 0
    for match in _TERMINATOR.finditer(data):
        yield position, match.start(), match.end()
        position = match.end()
    if position < len(data):
        yield position, len(data), len(data)
