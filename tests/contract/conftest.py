"""Store implementations the contract suite runs against (DESIGN.md §2: one suite, every backend).

Each factory takes a per-test scratch directory and returns an unopened Store. To add
PostgreSQL: append a factory to `_postgres_factories` that builds the PostgreSQL store
on `HL7ENGINE_TEST_PG_URL` (reserved for it; a throwaway schema per test), skip with a
reason when the variable is unset, and fail instead when HL7ENGINE_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from engine.store import SQLiteStore
from engine.types import Store

StoreFactory = Callable[[Path], Store]

PG_URL_ENV = "HL7ENGINE_TEST_PG_URL"


def _sqlite(scratch: Path) -> Store:
    return SQLiteStore(scratch / "store.db")


def _encrypted_sqlite(scratch: Path) -> Store:
    """SQLite behind EncryptedStore: two keys, rows sealed under the active one."""
    from engine.store.crypto import Keyring
    from engine.store.encrypted import EncryptedStore

    keyring = Keyring({"old": bytes(range(32)), "new": bytes(range(32, 64))}, active="new")
    return EncryptedStore(SQLiteStore(scratch / "store.db"), keyring)


def _postgres_factories() -> list[object]:
    """No PostgreSQL store exists yet; this is where its factory goes (see module docstring)."""
    if not os.environ.get(PG_URL_ENV):
        return []
    return []


FACTORIES: list[object] = [
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_encrypted_sqlite, id="encrypted-sqlite"),
    *_postgres_factories(),
]


@pytest.fixture(params=FACTORIES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    factory: StoreFactory = request.param
    instance = factory(tmp_path)
    await instance.open()
    try:
        yield instance
    finally:
        await instance.close()
