"""docs/configuration.md is generated from the models and must stay in sync."""

from __future__ import annotations

from engine.config.reference import DOC_PATH, render_reference
from engine.registry import default_registry


class TestConfigurationReference:
    def test_committed_reference_matches_the_models(self) -> None:
        """The committed reference equals what the models generate (python -m engine.config.reference)."""
        assert render_reference(default_registry()) == DOC_PATH.read_text(encoding="utf-8")

    def test_every_channel_key_is_documented(self) -> None:
        """Each ChannelConfig field appears as a row in the reference."""
        from engine.config.models import ChannelConfig

        text = DOC_PATH.read_text(encoding="utf-8")
        section = text.split("## ChannelConfig", 1)[1].split("\n## ", 1)[0]
        for name in ChannelConfig.model_fields:
            assert f"| `{name}` |" in section
