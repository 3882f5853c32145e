"""Code tables as data: v2 codes → FHIR codes (HL7 v2-to-FHIR IG concept maps).

The tables live in ``channels/vocab/*.json``, one concept map per file:
``{"name", "v2_table", "source", "map": {v2 code: {"code", "system", "display", "v2_display"}}}``.
All but CodingSystems.json are transcribed from the HL7 v2-to-FHIR IG concept maps
(HL7/v2-to-fhir @ 8c9b414b, mappings/codesystems, spec data); CodingSystems.json maps
v2 table 0396 coding-system names (CWE.3) to FHIR system URIs. This module loads them
once per channel and applies the channel's overrides, e.g. in YAML::

    code_tables:
      "0001": local-0001.json          # a file in channels/vocab/, same format
      "0063": {"FRD": {"code": "FRND", "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode"}}
      "0002": {"Q": "U"}               # a bare target code, in the map's usual system

Public API::

    Concept(code: str, system: str, display: str)
    Vocabulary(overrides: Mapping[str, str | Mapping[str, object]] = {}, vocab_dir: Path = VOCAB_DIR)
    vocab.lookup(map_name: str, code: str) -> Concept | None     # e.g. ("AdministrativeSex", "F")
    vocab.coding_system(name: str) -> str | None                  # CWE.3 "LN" → "http://loinc.org"
    v2_table_system(table: str) -> str                            # "0203" → ".../CodeSystem/v2-0203"
    load_vocabulary(overrides) -> Vocabulary                      # cached for identical overrides

Overrides are keyed by v2 table number ("0001": every map of table 0001) or by map
name ("AdministrativeSex"); the value names a JSON file in ``vocab_dir`` or is an inline
mapping ``{v2 code: target code | {"code", "system", "display"}}``. A bare target code
takes the system the base map mostly uses. Overrides merge over the base map (local
codes are added, listed codes replaced). Unknown file names or malformed entries raise
ConfigError (they are channel configuration, caught at start-up).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.types import ConfigError

VOCAB_DIR = Path(__file__).resolve().parents[1] / "vocab"
CODING_SYSTEMS = "CodingSystems"
_HL7_TABLE = re.compile(r"^HL7(\d{4})$")
_TABLE_NUMBER = re.compile(r"^\d{4}$")
_SYSTEM_MEMO_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Concept:
    """One target concept. `system` may be "" when the IG gives no target system."""

    code: str
    system: str
    display: str


def v2_table_system(table: str) -> str:
    """FHIR URI of an HL7-defined v2 table (terminology.hl7.org naming)."""
    return f"http://terminology.hl7.org/CodeSystem/v2-{table}"


def _file_stem(map_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", map_name).strip("-")


def _concept(entry: object, default_system: str, where: str) -> Concept:
    if isinstance(entry, str):
        return Concept(entry, default_system, "")
    if isinstance(entry, Mapping):
        code = entry.get("code", "")
        system = entry.get("system", default_system)
        display = entry.get("display", "")
        if isinstance(code, str) and isinstance(system, str) and isinstance(display, str):
            return Concept(code, system, display)
    raise ConfigError([f"{where}: each entry must be a code or a mapping of code/system/display"])


class _Table:
    __slots__ = ("concepts", "default_system", "name", "v2_table")

    def __init__(self, name: str, v2_table: str, raw_map: Mapping[str, Any]) -> None:
        self.name = name
        self.v2_table = v2_table
        systems = Counter(
            str(e.get("system", "")) for e in raw_map.values() if isinstance(e, Mapping) and e.get("system")
        )
        self.default_system = systems.most_common(1)[0][0] if systems else ""
        concepts: dict[str, Concept] = {}
        for code, entry in raw_map.items():
            # IG rows with no FHIR target carry only the v2 display: no concept.
            if isinstance(entry, Mapping) and not entry.get("code") and not entry.get("system"):
                continue
            concepts[code] = _concept(entry, self.default_system, f"vocab {name}")
        self.concepts = concepts

    def merged(self, overrides: Mapping[str, Any], where: str) -> _Table:
        copy = _Table.__new__(_Table)
        copy.name = self.name
        copy.v2_table = self.v2_table
        copy.default_system = self.default_system
        copy.concepts = dict(self.concepts)
        for code, entry in overrides.items():
            copy.concepts[str(code)] = _concept(entry, self.default_system, where)
        return copy


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError([f"{path.name}: cannot read code table ({type(exc).__name__})"]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("map"), dict):
        raise ConfigError([f"{path.name}: a code table needs a 'map' object"])
    return doc


class Vocabulary:
    """Every concept map of ``vocab_dir`` with a channel's overrides applied (immutable after init)."""

    def __init__(
        self,
        overrides: Mapping[str, str | Mapping[str, object]] | None = None,
        vocab_dir: Path = VOCAB_DIR,
    ) -> None:
        tables: dict[str, _Table] = {}
        for path in sorted(vocab_dir.glob("*.json")):
            doc = _read_json(path)
            name = str(doc.get("name") or path.stem)
            tables[name] = _Table(name, str(doc.get("v2_table", "")), doc["map"])
        for key, value in (overrides or {}).items():
            where = f"code_tables.{key}"
            if isinstance(value, str):
                override_path = (vocab_dir / value).resolve()
                if override_path.parent != vocab_dir.resolve() or not override_path.is_file():
                    raise ConfigError([f"{where}: no code table file {value!r} in channels/vocab/"])
                override_map: Mapping[str, Any] = _read_json(override_path)["map"]
            elif isinstance(value, Mapping):
                override_map = value
            else:
                raise ConfigError([f"{where}: expected a file name or a mapping"])
            is_number = bool(_TABLE_NUMBER.match(key))
            targets = [t for t in tables.values() if t.name == key or (is_number and t.v2_table == key)]
            if not targets:
                if not is_number:
                    raise ConfigError([f"{where}: no code table named {key!r}"])
                targets = [_Table(key, key, {})]  # a local table the IG does not map
            for table in targets:
                tables[table.name] = table.merged(override_map, where)
        self._tables = tables
        coding = tables.get(CODING_SYSTEMS)
        self._coding_systems = {k: c.system for k, c in coding.concepts.items()} if coding else {}
        # coding_system() answers by name, the same for the life of this Vocabulary: names
        # (LN, UCUM, HL70078 ...) are few, kept here once seen; bounded because they come
        # from messages.
        self._system_memo: dict[str, str | None] = {}

    def lookup(self, map_name: str, code: str) -> Concept | None:
        """Target concept of `code` in concept map `map_name` (or v2 table number); None if unmapped."""
        table = self._tables.get(map_name)
        if table is None:
            return None
        return table.concepts.get(code)

    def has_map(self, map_name: str) -> bool:
        return map_name in self._tables

    def coding_system(self, name: str) -> str | None:
        """FHIR system URI for a v2 coding-system name (table 0396), None when unknown.

        ``HL7nnnn`` / ``HL7-nnnn`` → http://terminology.hl7.org/CodeSystem/v2-nnnn; names
        that are already URIs (``http…``, ``urn:…``) pass through.
        """
        if not name:
            return None
        if name in self._system_memo:
            return self._system_memo[name]
        known = self._coding_systems.get(name) or self._coding_systems.get(name.upper())
        if not known:
            match = _HL7_TABLE.match(name.replace("-", "").upper())
            if match:
                known = v2_table_system(match.group(1))
            elif name.startswith(("http://", "https://", "urn:")):
                known = name
        if len(self._system_memo) < _SYSTEM_MEMO_SIZE:
            self._system_memo[name] = known or None
        return known or None


@lru_cache(maxsize=32)
def _cached(frozen: str) -> Vocabulary:
    return Vocabulary(json.loads(frozen))


def load_vocabulary(overrides: Mapping[str, str | Mapping[str, object]] | None = None) -> Vocabulary:
    """A Vocabulary for these overrides, shared by every channel that uses the same ones."""
    return _cached(json.dumps(overrides or {}, sort_keys=True))
