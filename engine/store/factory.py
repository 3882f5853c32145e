"""Chooses the store implementation from the `store:` config."""

from __future__ import annotations

from pathlib import Path

from engine.config.models import StoreConfig
from engine.types import ConfigError, Store


def open_store(config: StoreConfig) -> Store:
    """SQLite for `path:` (the embedded default); PostgreSQL for `url: postgresql://…`."""
    if config.url:
        scheme = config.url.split(":", 1)[0]  # never echo the rest: it may hold credentials
        raise ConfigError([f"store.url: {scheme}:// stores are not available in this version; use store.path"])
    from engine.store.sqlite import SQLiteStore

    assert config.path is not None, "the config model requires path or url"
    return SQLiteStore(Path(config.path))
