"""`store:` config for PostgreSQL and the factory that picks the store (DESIGN.md §3, issue #4)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.config.models import StoreConfig
from engine.config.yamlpos import interpolate
from engine.store.factory import open_store
from engine.store.sqlite import SQLiteStore
from engine.types import ConfigError


class TestPostgresStoreConfig:
    def test_url_with_password_reference_and_pool_settings_validates(self) -> None:
        """A PostgreSQL store takes its password by reference and its pool and lease settings."""
        store = StoreConfig.model_validate({
            "url": "postgresql://hl7@db:5432/hl7", "password": {"env": "PGPW"},
            "pool_min": 2, "pool_max": 8, "lease_timeout_s": 30, "instance_id": "engine-a",
        })
        assert ("postgresql", 2, 8, 30.0, "engine-a") == (
            store.backend, store.pool_min, store.pool_max, store.lease_timeout_s, store.instance_id
        )

    @pytest.mark.parametrize(
        "data",
        [
            {"url": "postgresql://u:hunter2@h/db"},
            {"url": "postgresql://u@h/db?password=hunter2"},
            {"url": "postgresql://u@h/db?sslmode=require&sslpassword=hunter2"},
            {"path": "x.db", "pool_max": 4},
            {"path": "x.db", "lease_timeout_s": 10},
            {"url": "postgresql://u@h/db", "pool_min": 9, "pool_max": 4},
            {"url": "postgresql://u@h/db", "lease_timeout_s": 0},
            {"url": "postgresql://u@h/db", "instance_id": "has space"},
        ],
    )
    def test_inline_secrets_and_misplaced_settings_are_refused(self, data: dict[str, object]) -> None:
        """Secrets never inline (userinfo or query string); PostgreSQL settings need a url."""
        with pytest.raises(ValidationError) as caught:
            StoreConfig.model_validate(data)
        # What the loader reports (messages, never input values) does not quote the secret.
        assert not any("hunter2" in e["msg"] for e in caught.value.errors(include_input=False))

    def test_a_query_password_from_the_environment_is_a_reference(self) -> None:
        """?password=${VAR} came from the environment, so it is not an inline secret."""
        url = interpolate("postgresql://u@h/db?password=${PGPW}", {"PGPW": "pw"})
        assert StoreConfig.model_validate({"url": url}).url == "postgresql://u@h/db?password=pw"


class TestOpenStore:
    def test_url_selects_postgres_with_the_settings_passed_through(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """store.url gives an unopened PostgresStore carrying pool, lease, instance and batch settings."""
        pytest.importorskip("asyncpg")
        from engine.store.postgres import PostgresStore

        config = StoreConfig.model_validate({
            "url": "postgresql://hl7@db/hl7", "password": {"env": "PGPW_TEST"}, "pool_min": 0, "pool_max": 3,
            "lease_timeout_s": 12, "instance_id": "engine-b", "group_commit": {"max_batch": 64},
        })
        store = open_store(config)
        assert isinstance(store, PostgresStore)
        assert ("engine-b", 12.0, 3, 64) == (
            store.instance_id, store.lease_timeout_s, store._pool_max, store._writer.max_batch
        )
        monkeypatch.setenv("PGPW_TEST", "rotated")
        assert callable(store._password) and "rotated" == store._password()  # read when connecting

    def test_path_selects_sqlite_with_its_group_commit_size(self, tmp_path: Path) -> None:
        """store.path gives SQLiteStore; group_commit.max_batch reaches it."""
        store = open_store(StoreConfig.model_validate({"path": str(tmp_path / "s.db"),
                                                       "group_commit": {"max_batch": 7}}))
        assert isinstance(store, SQLiteStore)
        assert 7 == store._writer.max_batch

    def test_without_asyncpg_a_postgres_url_is_a_config_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A site without asyncpg gets a ConfigError saying what to install, not an ImportError."""
        monkeypatch.setitem(sys.modules, "engine.store.postgres", None)
        with pytest.raises(ConfigError, match="pip install asyncpg"):
            open_store(StoreConfig.model_validate({"url": "postgresql://hl7@db/hl7"}))
