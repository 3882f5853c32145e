"""Store implementations the contract suite runs against (DESIGN.md §2: one suite, every backend).

Each factory takes the test's scratch directory and the pytest request, and returns an
unopened Store. PostgreSQL runs in this session's own database (tests/support/pg.py:
HL7ENGINE_TEST_PG_URL, else the local server, else a throwaway cluster), one schema per
test; it skips with the reason when no server is reachable, and fails instead when
HL7ENGINE_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from engine.store import SQLiteStore
from engine.types import Store
from tests.support.pg import pg_url

__all__ = ["pg_url"]  # a session fixture: one database for every PostgreSQL test here

StoreFactory = Callable[[Path, pytest.FixtureRequest], Store]

_schemas = itertools.count(1)


def _sqlite(scratch: Path, request: pytest.FixtureRequest) -> Store:
    return SQLiteStore(scratch / "store.db")


def _encrypted(inner: StoreFactory) -> StoreFactory:
    """`inner` behind EncryptedStore (engine/store/encrypted.py): two keys, rows sealed under the active one."""

    def factory(scratch: Path, request: pytest.FixtureRequest) -> Store:
        from engine.store.crypto import Keyring
        from engine.store.encrypted import EncryptedStore

        keyring = Keyring({"old": bytes(range(32)), "new": bytes(range(32, 64))}, active="new")
        return EncryptedStore(inner(scratch, request), keyring)

    return factory


def _postgres(scratch: Path, request: pytest.FixtureRequest) -> Store:
    url = request.getfixturevalue("pg_url")  # skips (or fails) when there is no server
    from engine.store.postgres import PostgresStore

    # A schema per test: each test starts from an empty store, without a database each.
    return PostgresStore(url, schema=f"contract_{next(_schemas)}", pool_max=4)


FACTORIES: list[object] = [
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_postgres, id="postgres"),
    pytest.param(_encrypted(_sqlite), id="encrypted-sqlite"),
    pytest.param(_encrypted(_postgres), id="encrypted-postgres"),
]


@pytest.fixture(params=FACTORIES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    factory: StoreFactory = request.param
    instance = factory(tmp_path, request)
    await instance.open()
    try:
        yield instance
    finally:
        await instance.close()
