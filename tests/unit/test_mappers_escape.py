"""Escape sequences (channels/mappers/escape.py) against the shared corpus vectors and our policy."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.mappers.escape import DEFAULT_DELIMITERS, Delimiters, escape, unescape

CORPUS = (Path(__file__).parents[2] / ".." / "shared" / "corpus").resolve()
VECTORS = CORPUS / "escape-vectors" / "escape_vectors.json"

# Where implementations disagree we chose differently from the vector's origin (see escape.py).
OUR_POLICY: dict[tuple[str, str], str | None] = {
    ("unescape", "\\H\\text\\N\\"): "text",  # highlighting dropped, python-hl7 renders "_"
    ("unescape", "\\.br\\n"): "\nn",  # a real newline, MS emits backslash-n for its templates
    ("unescape", "\\X656\\n"): "\\X656\\n",  # odd hex kept literally, MS raises
    ("escape", "\u00e1\u00e9\u00ed\u00f3\u00fa"): "\u00e1\u00e9\u00ed\u00f3\u00fa",  # non-ASCII passes through
}


def _vectors() -> list[dict[str, Any]]:
    if not VECTORS.is_file():
        if os.environ.get("HL7ENGINE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"corpus missing: {VECTORS}")
        pytest.skip("shared corpus not present (../shared/corpus)")
    vectors: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]
    return vectors


def _delims(vector: dict[str, Any]) -> Delimiters:
    d = vector.get("delimiters")
    if not d:
        return DEFAULT_DELIMITERS
    return Delimiters(d["field"], d["component"], d["repetition"], d["escape"], d["subcomponent"])


class TestCorpusVectors:
    def test_every_vector_matches_the_source_or_our_documented_policy(self) -> None:
        """Each corpus vector gives its expected value, or the value our documented policy chose."""
        checked = 0
        for vector in _vectors():
            key = (vector["op"], vector["input"])
            expected = OUR_POLICY.get(key, vector.get("expected"))
            if expected is None:
                expected = vector["input"]  # "expected_error" vectors: we keep the text literally
            fn = unescape if vector["op"] == "unescape" else escape
            assert fn(vector["input"], _delims(vector)) == expected, vector.get("origin")
            checked += 1
        assert checked >= 20


class TestUnescape:
    def test_delimiters_of_the_message(self) -> None:
        """\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ decode to the message's own delimiters, \\P\\ to its truncation char."""
        d = Delimiters("*", "!", "@", "#", "$", "%")
        assert unescape("#F##S##T##R##E##P#", d) == "*!$@#%"

    def test_hex_runs_are_joined_then_decoded(self) -> None:
        """Adjacent \\X..\\ escapes decode as one UTF-8 sequence, else as ISO-8859-1."""
        assert unescape("caf\\XC3\\\\XA9\\") == "caf\u00e9"
        assert unescape("\\Xe9\\t\\Xe9\\") == "\u00e9t\u00e9"
        assert unescape("\\X0D0A\\") == "\r\n"

    def test_formatting_commands(self) -> None:
        """\\.br\\ and \\.sp\\ give newlines; layout hints and charset switches are dropped."""
        assert unescape("a\\.br\\b\\.sp2\\c") == "a\nb\n\nc"
        assert unescape("\\.in+4\\x\\.fi\\\\C2842\\y") == "xy"

    def test_unknown_and_unterminated_are_kept(self) -> None:
        """Locally defined (\\Z..\\), unknown and unterminated escapes stay literal."""
        assert unescape("\\Zlocal\\") == "\\Zlocal\\"
        assert unescape("\\Q\\") == "\\Q\\"
        assert unescape("tail \\F") == "tail \\F"

    def test_no_escape_char_is_a_fast_identity(self) -> None:
        """Text without the escape character comes back unchanged."""
        text = "plain text ^ not split here"
        assert unescape(text) is text


class TestEscape:
    @given(st.text(max_size=40))
    def test_round_trip(self, text: str) -> None:
        """unescape(escape(s)) == s for any string, and the escaped text holds no delimiter or line break."""
        d = Delimiters("|", "^", "~", "\\", "&", "#")
        escaped = escape(text, d)
        assert unescape(escaped, d) == text
        assert not any(ch in escaped for ch in "|^~&#\r\n")
