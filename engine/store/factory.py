"""Chooses the store implementation from the `store:` config."""

from __future__ import annotations

from pathlib import Path

from engine.config.models import EngineConfig, StoreConfig
from engine.types import ConfigError, Store


def open_store(config: StoreConfig) -> Store:
    """SQLite for `path:` (the embedded default); PostgreSQL for `url: postgresql://…`.

    Returns the store unopened; nothing is connected or created until `open()`.
    """
    if config.url:
        return _postgres(config)
    from engine.store.sqlite import SQLiteStore

    assert config.path is not None, "the config model requires path or url"
    return SQLiteStore(Path(config.path), max_batch=config.group_commit.max_batch)


def _postgres(config: StoreConfig) -> Store:
    assert config.url is not None
    try:
        from engine.store.postgres import PostgresStore
    except ImportError as exc:  # asyncpg is needed only by sites that use PostgreSQL
        raise ConfigError(
            [f"store.url: PostgreSQL needs the asyncpg package (pip install asyncpg): {exc.name}"]
        ) from None
    return PostgresStore(
        config.url,
        # Asked on every new connection, so a rotated secret is picked up; never stored here.
        password=config.password.reveal if config.password is not None else None,
        pool_min=config.pool_min,
        pool_max=config.pool_max,
        lease_timeout_s=config.lease_timeout_s,
        instance_id=config.instance_id,
        max_batch=config.group_commit.max_batch,
    )


def open_engine_store(config: EngineConfig) -> Store:
    """The engine's store: the configured backend, encrypted at rest when `encryption:` is set."""
    store = open_store(config.store)
    if config.encryption is None:
        return store  # without loading `cryptography` (~6 MB) in a process that never needs it
    from engine.store.encrypted import wrap_if_configured

    return wrap_if_configured(store, config)
