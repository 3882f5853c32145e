"""Find or start a PostgreSQL server for tests, and give each test run its own database.

Order (DESIGN.md §6): the server named by HL7ENGINE_TEST_PG_URL; else the machine's own
server on 127.0.0.1:5432 (the project's machines run one, trust auth, database `test`);
else a throwaway cluster started with the Debian binaries (`initdb`, `pg_ctl`) on a free
loopback port in a temporary directory, stopped at exit; else skip with the reason, or
fail when HL7ENGINE_REQUIRE_SERVICES=1.

A run works in a database of its own, `hl7engine_test_<random>`, dropped at the end, so
runs (and engineers) sharing one server never see each other's rows.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.engine_proc import free_port

PG_URL_ENV = "HL7ENGINE_TEST_PG_URL"
REQUIRE_ENV = "HL7ENGINE_REQUIRE_SERVICES"
#: Tried in order when the variable is unset: the project machines' server as the
#: `postgres` role, then as the current OS user.
LOCAL_URLS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://127.0.0.1:5432/test",
    "postgresql://postgres@127.0.0.1:5432/postgres",
)
_BIN_GLOBS = ("/usr/lib/postgresql/*/bin",)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PgServer:
    """A server the tests may use; `admin_url` may create and drop databases."""

    admin_url: str
    origin: str  # "env", "local" or "throwaway": said in skip/fail messages and reports

    def url_for(self, database: str) -> str:
        """`admin_url` with its database part replaced."""
        parts = urlsplit(self.admin_url)
        return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def run_sync(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=timeout)


async def _answers(url: str) -> str | None:
    """None when `url` accepts a connection and can create databases, else the reason."""
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=3)
    except Exception as exc:
        return f"{type(exc).__name__}"
    try:
        can_create = await conn.fetchval(
            "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        return None if can_create else "role cannot create databases"
    finally:
        await conn.close()


def _postgres_bin() -> Path | None:
    for pattern in _BIN_GLOBS:
        for directory in sorted(glob.glob(pattern), reverse=True):  # newest major first
            if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
                return Path(directory)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


def _as_cluster_owner(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its binaries as `postgres` then."""
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root and runuser is missing")
    return [runuser, "-u", "postgres", "--", *argv]


def _start_throwaway() -> tuple[PgServer | None, str]:
    bindir = _postgres_bin()
    if bindir is None:
        return None, "no PostgreSQL binaries (initdb, pg_ctl) found"
    if os.geteuid() == 0:
        try:
            import pwd

            owner = pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and there is no `postgres` user to own a cluster"
    base = Path(tempfile.mkdtemp(prefix="hl7engine-pg-"))
    data = base / "data"
    if os.geteuid() == 0:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    port = free_port()
    try:
        subprocess.run(
            _as_cluster_owner([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                               "--no-sync", "-E", "UTF8"]),
            check=True, capture_output=True, timeout=120,
        )
        subprocess.run(
            _as_cluster_owner([
                str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(base / "log"),
                "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c max_connections=100",
                "start",
            ]),
            check=True, capture_output=True, timeout=90,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(base, ignore_errors=True)
        return None, f"could not start a throwaway cluster: {type(exc).__name__}"

    def stop() -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                _as_cluster_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                check=False, capture_output=True, timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)

    atexit.register(stop)
    return PgServer(f"postgresql://postgres@127.0.0.1:{port}/postgres", "throwaway"), ""


_FOUND: list[tuple[PgServer | None, str]] = []


def find_server() -> tuple[PgServer | None, str]:
    """The server to use and, when there is none, why (looked up once per process)."""
    if _FOUND:
        return _FOUND[0]
    url = os.environ.get(PG_URL_ENV)
    if url:
        reason = run_sync(_answers(url))
        found: tuple[PgServer | None, str] = (
            (PgServer(url, "env"), "") if reason is None else (None, f"{PG_URL_ENV} does not answer: {reason}")
        )
    else:
        found = (None, "")
        for candidate in LOCAL_URLS:
            if run_sync(_answers(candidate)) is None:
                found = (PgServer(candidate, "local"), "")
                break
        if found[0] is None:
            found = _start_throwaway()
    _FOUND.append(found)
    return found


def require_server() -> PgServer:
    """The server, or skip the test with the reason (fail under HL7ENGINE_REQUIRE_SERVICES=1)."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        server, reason = None, "asyncpg is not installed (pip install asyncpg)"
    else:
        server, reason = find_server()
    if server is None:
        message = f"PostgreSQL unavailable: {reason}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)
    return server


async def _create(server: PgServer, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server.admin_url, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop(server: PgServer, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server.admin_url, timeout=10)
    try:
        # FORCE (PostgreSQL 13+) ends sessions a killed engine may have left behind.
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.contextmanager
def scratch_database(server: PgServer) -> Iterator[str]:
    """A new empty database for this run; yields its URL and drops it afterwards."""
    name = f"hl7engine_test_{secrets.token_hex(6)}"
    run_sync(_create(server, name))
    try:
        yield server.url_for(name)
    finally:
        deadline = time.monotonic() + 30
        while True:
            try:
                run_sync(_drop(server, name))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # a just-killed engine's sessions are still closing


#: A witness for per-key order that does not trust the store's own lease logic: a
#: trigger on the store's `messages` table that runs inside every leasing transaction.
#: Whenever a row becomes `processing` with one more attempt (a lease, also of an expired
#: lease), it records every earlier row of the same channel and ordering key that is
#: still unfinished and was not claimed by this same transaction (xmin = this xid), as
#: seen at that moment, and it records a lease taken from a live (unexpired) lease. A
#: correct store never leaves a row in `lease_order_violations`.
ORDER_AUDIT_SQL = """
CREATE TABLE lease_order_violations (
    leased_id bigint NOT NULL, earlier_id bigint NOT NULL, earlier_status text NOT NULL,
    leased_by text, at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION audit_lease_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'processing' AND OLD.leased_until >= extract(epoch FROM clock_timestamp()) THEN
        -- taken from a live lease: two workers would hold one message at once
        INSERT INTO lease_order_violations (leased_id, earlier_id, earlier_status, leased_by)
        VALUES (NEW.id, NEW.id, 'leased-live', NEW.leased_by);
    END IF;
    INSERT INTO lease_order_violations (leased_id, earlier_id, earlier_status, leased_by)
    SELECT NEW.id, e.id, e.status, NEW.leased_by FROM messages e
    WHERE e.channel = NEW.channel AND e.ordering_key = NEW.ordering_key AND e.id < NEW.id
      AND e.status IN ('received', 'processing', 'retry')
      AND e.xmin::text::bigint <> txid_current() % 4294967296;
    RETURN NULL;
END $$;
CREATE TRIGGER audit_lease_order AFTER UPDATE ON messages FOR EACH ROW
    WHEN (NEW.status = 'processing' AND NEW.attempts > OLD.attempts)
    EXECUTE FUNCTION audit_lease_order();
"""


async def install_order_audit(url: str, schema: str | None = None) -> None:
    """Add the ORDER_AUDIT_SQL witness to a store's (already migrated) tables."""
    import asyncpg

    settings = {"search_path": schema} if schema else {}
    conn = await asyncpg.connect(url, timeout=10, server_settings=settings)
    try:
        await conn.execute(ORDER_AUDIT_SQL)
    finally:
        await conn.close()


async def order_violations(url: str, schema: str | None = None) -> list[tuple[int, int, str]]:
    """(leased id, earlier unfinished id, its status) for every per-key order violation seen."""
    import asyncpg

    settings = {"search_path": schema} if schema else {}
    conn = await asyncpg.connect(url, timeout=10, server_settings=settings)
    try:
        rows = await conn.fetch(
            "SELECT leased_id, earlier_id, earlier_status FROM lease_order_violations ORDER BY at"
        )
    finally:
        await conn.close()
    return [(r[0], r[1], r[2]) for r in rows]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a database of this test session's own (skips or fails when there is no server)."""
    server = require_server()
    with scratch_database(server) as url:
        yield url
