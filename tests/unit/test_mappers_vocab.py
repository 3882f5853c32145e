"""Code tables as data (channels/mappers/vocab.py, channels/vocab/*.json) and their channel overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from channels.mappers.vocab import Concept, Vocabulary, load_vocabulary
from engine.types import ConfigError


class TestVocabulary:
    def test_ig_tables_are_loaded(self) -> None:
        """IG concept maps resolve: table 0001 F → female, 0063 SEL → ONESELF (v3 RoleCode)."""
        vocab = load_vocabulary()
        assert vocab.lookup("AdministrativeSex", "F") == Concept(
            "female", "http://hl7.org/fhir/administrative-gender", "Female"
        )
        concept = vocab.lookup("Relationship", "SEL")
        assert concept is not None and concept.code == "ONESELF"
        assert vocab.lookup("AdministrativeSex", "ZZ") is None

    def test_coding_system_names(self) -> None:
        """Table 0396 names, HL7nnnn tables and URIs resolve; unknown names give None."""
        vocab = load_vocabulary()
        assert vocab.coding_system("LN") == "http://loinc.org"
        assert vocab.coding_system("HL70203") == "http://terminology.hl7.org/CodeSystem/v2-0203"
        assert vocab.coding_system("http://example.org/cs") == "http://example.org/cs"
        assert vocab.coding_system("99ZZZ") is None

    def test_inline_override_by_table_number(self) -> None:
        """An inline override keyed by table number adds codes to every map of that table."""
        vocab = Vocabulary({"0001": {"X": "other", "F": {"code": "female", "system": "urn:local", "display": "F"}}})
        assert vocab.lookup("AdministrativeSex", "X") == Concept(
            "other", "http://hl7.org/fhir/administrative-gender", ""
        )
        assert vocab.lookup("AdministrativeSex", "F") == Concept("female", "urn:local", "F")
        assert vocab.lookup("AdministrativeSex", "M") is not None  # the rest of the base map stays

    def test_file_override(self, tmp_path: Path) -> None:
        """An override naming a file reads it from the vocab folder; an unknown file is a ConfigError."""
        for source in Path(__file__).parents[2].joinpath("channels", "vocab").glob("*.json"):
            (tmp_path / source.name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
        (tmp_path / "local-0063.json").write_text(json.dumps({"map": {"FRD": {"code": "FRND"}}}), encoding="utf-8")
        vocab = Vocabulary({"0063": "local-0063.json"}, vocab_dir=tmp_path)
        concept = vocab.lookup("Relationship", "FRD")
        assert concept is not None and concept.code == "FRND"
        with pytest.raises(ConfigError):
            Vocabulary({"0063": "missing.json"}, vocab_dir=tmp_path)
        with pytest.raises(ConfigError):
            Vocabulary({"0063": "../escape.json"}, vocab_dir=tmp_path)

    def test_unknown_map_name_is_a_config_error(self) -> None:
        """An override for a map that does not exist is a ConfigError naming the key."""
        with pytest.raises(ConfigError) as info:
            Vocabulary({"NoSuchMap": {"A": "b"}})
        assert "code_tables.NoSuchMap" in str(info.value)


class TestCodingSystemMemo:
    def test_answers_do_not_change_once_remembered(self) -> None:
        """coding_system() keeps its answers per name (known, table, URI, unknown) and stays bounded."""
        vocab = Vocabulary()
        names = ["LN", "ln", "HL7-0078", "urn:oid:1.2", "NOT-A-SYSTEM", ""]
        first = [vocab.coding_system(n) for n in names]
        assert first == [vocab.coding_system(n) for n in names]
        assert first[:4] == [
            "http://loinc.org",
            "http://loinc.org",
            "http://terminology.hl7.org/CodeSystem/v2-0078",
            "urn:oid:1.2",
        ] and first[4:] == [None, None]
        for number in range(3000):
            vocab.coding_system(f"LOCAL{number}")
        assert vocab.coding_system("LN") == "http://loinc.org"
        assert len(vocab._system_memo) <= 1024
