"""Tenant context helpers (rls_migrate.context, rls_migrate.sqlalchemy) on real PostgreSQL.

Each test builds a tiny RLS schema in a fresh database as ``postgres`` and works as
``ctx_app``, a plain role (no superuser, no BYPASSRLS, not the table owner), so the
policies really apply.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool
from sqlalchemy import create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from rls_migrate.context import (
    MAX_TEXT_TENANT_ID_LENGTH,
    InvalidTenantId,
    InvalidTenantSetting,
    NotInTransaction,
    TenantConnectionPool,
    TenantContextError,
    current_tenant,
    make_tenant_pool,
    normalize_key_type,
    normalize_tenant_id,
    pool_reset,
    pooled_tenant_connection,
    set_tenant,
    tenant_transaction,
    validate_setting_name,
)
from rls_migrate.errors import RlsMigrateError
from rls_migrate.sqlalchemy import (
    TENANT_INFO_KEY,
    async_tenant_session,
    install_tenant_listener,
    sqlalchemy_url,
    tenant_session,
)
from rls_migrate.testing.servers import PostgresServer, dbname_of

# Version-agnostic (the toolkit's own logic over SQL every major runs alike): the core
# majors only, unless RLS_MIGRATE_TEST_ALL_MAJORS=1 (see tests/conftest.py).
pytestmark = pytest.mark.core_majors


INJECTION = "1'; DROP TABLE accounts; --"
TENANT_UUID_A = uuid.UUID("0b7e2b1c-6d0f-4a59-9a43-3c1f0d6f1a01")
TENANT_UUID_B = uuid.UUID("5f3c9a77-21d4-4c1e-8e0b-9d2a4b6c8e02")

SCHEMA = """
DO $$
BEGIN
    CREATE ROLE ctx_app LOGIN NOSUPERUSER NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- roles are cluster-wide: an earlier test (or a concurrent one) made it
END $$;

CREATE TABLE accounts (id bigint PRIMARY KEY, name text);
INSERT INTO accounts VALUES (1, 'one'), (2, 'two');

CREATE TABLE items (id serial PRIMARY KEY, tenant_id bigint NOT NULL, v text);
ALTER TABLE items ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON items
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::bigint);
INSERT INTO items (tenant_id, v) VALUES (1, 'a1'), (1, 'a2'), (2, 'b1'), (3, 'c1');

CREATE TABLE notes (tenant text NOT NULL, v text);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON notes
    USING (tenant = NULLIF(current_setting('app.tenant_key', true), ''));
INSERT INTO notes VALUES ('acme', 'n1'), ($inj$1'; DROP TABLE accounts; --$inj$, 'evil');

CREATE TABLE docs (tenant uuid NOT NULL, v text);
ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON docs
    USING (tenant = NULLIF(current_setting('app.tenant_uuid', true), '')::uuid);

GRANT SELECT, INSERT, UPDATE, DELETE ON items, notes, docs, accounts TO ctx_app;
GRANT USAGE ON SEQUENCE items_id_seq TO ctx_app;
"""


@dataclass(frozen=True)
class Db:
    admin_dsn: str  # postgres, bypasses RLS
    app_dsn: str  # ctx_app, subject to RLS


@pytest.fixture
def db(pg_server: PostgresServer, empty_db: str) -> Db:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(
            "INSERT INTO docs VALUES (%s, 'da'), (%s, 'db')", [TENANT_UUID_A, TENANT_UUID_B]
        )
    return Db(empty_db, pg_server.dsn(dbname_of(empty_db), user="ctx_app"))


@pytest.fixture
def app_conn(db: Db) -> Iterator[psycopg.Connection[Any]]:
    """A non-autocommit connection as ctx_app (psycopg's default mode)."""
    with psycopg.connect(db.app_dsn) as conn:
        yield conn


def visible(conn: psycopg.Connection[Any], table: str = "items") -> list[tuple[Any, ...]]:
    """Every row ``conn`` can see, in a stable order (table names are our own constants)."""
    query = {
        "items": "SELECT tenant_id, v FROM items ORDER BY id",
        "notes": "SELECT tenant, v FROM notes ORDER BY v",
        "docs": "SELECT tenant, v FROM docs ORDER BY v",
    }[table]
    return conn.execute(query).fetchall()


def table_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
        return bool(row and row[0])


# --------------------------------------------------------------------------- validation (no server)


@pytest.mark.parametrize(
    ("value", "key_type", "expected"),
    [
        (42, "bigint", "42"),
        ("42", "bigint", "42"),
        ("007", "bigint", "7"),
        (-5, "integer", "-5"),
        (2**63 - 1, "bigint", str(2**63 - 1)),
        (-(2**63), "int8", str(-(2**63))),
        (32767, "smallint", "32767"),
        (TENANT_UUID_A, "uuid", str(TENANT_UUID_A)),
        (str(TENANT_UUID_A).upper(), "uuid", str(TENANT_UUID_A)),
        ("acme", "text", "acme"),
        (INJECTION, "text", INJECTION),
        ("x" * MAX_TEXT_TENANT_ID_LENGTH, "varchar", "x" * MAX_TEXT_TENANT_ID_LENGTH),
    ],
)
def test_normalize_tenant_id_accepts(value: object, key_type: str, expected: str) -> None:
    assert normalize_tenant_id(value, key_type) == expected


@pytest.mark.parametrize(
    ("value", "key_type"),
    [
        (INJECTION, "bigint"),
        (True, "bigint"),
        (False, "integer"),
        (-1e30, "bigint"),
        (1.0, "bigint"),
        ("abc", "bigint"),
        ("", "bigint"),
        (" 42", "bigint"),
        ("4 2", "bigint"),
        ("+42", "bigint"),
        ("\u0661\u0662", "bigint"),  # Arabic-Indic digits: str.isdigit() says yes, PG says no
        (None, "bigint"),
        (2**63, "bigint"),
        (-(2**63) - 1, "bigint"),
        (2**31, "integer"),
        (32768, "smallint"),
        ("9" * 5000, "bigint"),
        ("not-a-uuid", "uuid"),
        (INJECTION, "uuid"),
        ("0b7e2b1c6d0f4a599a433c1f0d6f1a01", "uuid"),  # valid for uuid.UUID, not canonical
        (42, "uuid"),
        ("acme\x00", "text"),
        ("", "text"),
        ("x" * (MAX_TEXT_TENANT_ID_LENGTH + 1), "text"),
        ("\ud800", "text"),
        (42, "text"),
        (b"acme", "text"),
    ],
)
def test_normalize_tenant_id_rejects(value: object, key_type: str) -> None:
    with pytest.raises(InvalidTenantId) as info:
        normalize_tenant_id(value, key_type)
    err = info.value
    assert isinstance(err, RlsMigrateError)
    assert err.value is value
    assert f"for a {normalize_key_type(key_type)} tenant key" in str(err)
    assert "expected" in str(err)
    assert len(str(err)) < 400  # a 5000-digit id is shown shortened


def test_message_shows_repr_and_expectation() -> None:
    expected = r"invalid tenant id 'abc' for a bigint tenant key: expected an int in \["
    with pytest.raises(InvalidTenantId, match=expected):
        normalize_tenant_id("abc", "bigint")


@pytest.mark.parametrize("key_type", ["float", "", "json", "bigint; drop"])
def test_unknown_key_type(key_type: str) -> None:
    with pytest.raises(InvalidTenantSetting, match="tenant key type"):
        normalize_tenant_id(1, key_type)


@pytest.mark.parametrize("name", ["app.tenant_id", "myapp.tenant", "a.b.c", "_x.y$1", "App.Tenant"])
def test_setting_name_accepted(name: str) -> None:
    assert validate_setting_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["tenant_id", "search_path", "", "app.", ".tenant", "app..tenant", "app.tenant-id",
     "app.1tenant", "app.tenant_id; DROP TABLE accounts", "app.tenant id", "app.$x"],
)
def test_setting_name_rejected(name: str) -> None:
    with pytest.raises(InvalidTenantSetting, match="tenant setting name"):
        validate_setting_name(name)


# --------------------------------------------------------------------------- psycopg


def test_without_context_nothing_is_visible(app_conn: psycopg.Connection[Any]) -> None:
    assert visible(app_conn) == []
    assert current_tenant(app_conn) is None


def test_set_tenant_scopes_the_transaction(app_conn: psycopg.Connection[Any]) -> None:
    set_tenant(app_conn, 1)  # non-autocommit: opens the transaction
    assert app_conn.info.transaction_status == TransactionStatus.INTRANS
    assert visible(app_conn) == [(1, "a1"), (1, "a2")]
    assert current_tenant(app_conn) == "1"
    app_conn.commit()
    # Transaction-local: gone with the commit (and reads '' now, hence NULLIF in policies).
    assert visible(app_conn) == []
    row = app_conn.execute("SELECT current_setting('app.tenant_id', true)").fetchone()
    assert row == ("",)


def test_set_tenant_through_a_cursor(app_conn: psycopg.Connection[Any]) -> None:
    with app_conn.cursor() as cur:
        set_tenant(cur, "2")
        cur.execute("SELECT tenant_id, v FROM items")
        assert cur.fetchall() == [(2, "b1")]
    app_conn.rollback()
    assert visible(app_conn) == []


def test_set_tenant_refuses_autocommit_outside_a_transaction(db: Db) -> None:
    with psycopg.connect(db.app_dsn, autocommit=True) as conn:
        with pytest.raises(NotInTransaction, match="autocommit"):
            set_tenant(conn, 1)
        with conn.transaction():  # inside an explicit transaction it is fine
            set_tenant(conn, 1)
            assert visible(conn) == [(1, "a1"), (1, "a2")]
        assert visible(conn) == []


def test_tenant_transaction(app_conn: psycopg.Connection[Any]) -> None:
    with tenant_transaction(app_conn, 2) as conn:
        assert conn is app_conn
        assert visible(conn) == [(2, "b1")]
        conn.execute("INSERT INTO items (tenant_id, v) VALUES (2, 'b2')")
    assert app_conn.info.transaction_status == TransactionStatus.IDLE  # committed
    assert visible(app_conn) == []
    app_conn.rollback()
    with tenant_transaction(app_conn, 2):
        assert visible(app_conn) == [(2, "b1"), (2, "b2")]
    # The policy also checks writes: tenant 1 cannot insert a row for tenant 3.
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(app_conn, 1):
        app_conn.execute("INSERT INTO items (tenant_id, v) VALUES (3, 'x')")
    assert app_conn.info.transaction_status == TransactionStatus.IDLE  # rolled back


def test_tenant_transaction_rolls_back_on_error(app_conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(RuntimeError), tenant_transaction(app_conn, 1):
        app_conn.execute("DELETE FROM items")
        raise RuntimeError("boom")
    with tenant_transaction(app_conn, 1):
        assert visible(app_conn) == [(1, "a1"), (1, "a2")]


def test_tenant_transaction_refuses_an_open_transaction(app_conn: psycopg.Connection[Any]) -> None:
    app_conn.execute("SELECT 1")  # implicit transaction now open
    with pytest.raises(NotInTransaction, match="idle connection"), tenant_transaction(app_conn, 1):
        pytest.fail("must not be entered")
    assert current_tenant(app_conn) is None


def test_tenant_transaction_autocommit(db: Db) -> None:
    with psycopg.connect(db.app_dsn, autocommit=True) as conn:
        with tenant_transaction(conn, 3):
            assert visible(conn) == [(3, "c1")]
        assert visible(conn) == []


def test_custom_setting_and_uuid_key(app_conn: psycopg.Connection[Any]) -> None:
    with tenant_transaction(app_conn, TENANT_UUID_B, setting="app.tenant_uuid", key_type="uuid"):
        assert visible(app_conn, "docs") == [(TENANT_UUID_B, "db")]
        assert visible(app_conn) == []  # items reads app.tenant_id, which is not set
    with tenant_transaction(app_conn, str(TENANT_UUID_A).upper(), setting="app.tenant_uuid",
                            key_type="uuid"):
        assert visible(app_conn, "docs") == [(TENANT_UUID_A, "da")]


INVALID_FOR_BIGINT = [INJECTION, True, -1e30, "abc", 2**63, None, ""]


@pytest.mark.parametrize("bad", INVALID_FOR_BIGINT, ids=repr)
def test_invalid_ids_execute_nothing(
    db: Db, app_conn: psycopg.Connection[Any], bad: object
) -> None:
    # A non-autocommit connection starts a transaction with its first statement: still IDLE
    # afterwards means nothing at all was sent.
    with pytest.raises(InvalidTenantId):
        set_tenant(app_conn, bad)
    assert app_conn.info.transaction_status == TransactionStatus.IDLE
    with pytest.raises(InvalidTenantId), tenant_transaction(app_conn, bad):
        pytest.fail("must not be entered")
    assert app_conn.info.transaction_status == TransactionStatus.IDLE
    assert current_tenant(app_conn) is None
    assert table_exists(db.admin_dsn, "accounts")


@pytest.mark.parametrize(
    ("bad", "key_type"),
    [("not-a-uuid", "uuid"), (INJECTION, "uuid"), ("acme\x00", "text"), (2**31, "integer")],
    ids=repr,
)
def test_invalid_ids_for_other_types_execute_nothing(
    app_conn: psycopg.Connection[Any], bad: object, key_type: str
) -> None:
    with pytest.raises(InvalidTenantId):
        set_tenant(app_conn, bad, setting="app.tenant_uuid", key_type=key_type)
    assert app_conn.info.transaction_status == TransactionStatus.IDLE


def test_invalid_setting_name_executes_nothing(app_conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(InvalidTenantSetting):
        set_tenant(app_conn, 1, setting="search_path")
    with pytest.raises(InvalidTenantSetting):
        set_tenant(app_conn, 1, setting="app.x', 'y")
    assert app_conn.info.transaction_status == TransactionStatus.IDLE


def test_injection_string_is_an_inert_text_value(db: Db, app_conn: psycopg.Connection[Any]) -> None:
    with tenant_transaction(app_conn, INJECTION, setting="app.tenant_key", key_type="text"):
        assert current_tenant(app_conn, setting="app.tenant_key") == INJECTION
        assert visible(app_conn, "notes") == [(INJECTION, "evil")]
        app_conn.execute("INSERT INTO notes VALUES (%s, 'evil2')", [INJECTION])
    with tenant_transaction(app_conn, "acme", setting="app.tenant_key", key_type="text"):
        assert visible(app_conn, "notes") == [("acme", "n1")]
    assert table_exists(db.admin_dsn, "accounts")
    with psycopg.connect(db.admin_dsn) as admin:
        assert admin.execute("SELECT count(*) FROM accounts").fetchone() == (2,)
        assert admin.execute("SELECT count(*) FROM notes WHERE tenant = %s", [INJECTION]
                             ).fetchone() == (2,)


# --------------------------------------------------------------------------- psycopg_pool


def _backend_pid(conn: psycopg.Connection[Any]) -> int:
    return int(conn.info.backend_pid)


def test_pooled_tenant_connection(db: Db) -> None:
    with make_tenant_pool(db.app_dsn, min_size=1, max_size=1, open=True) as pool:
        assert isinstance(pool, TenantConnectionPool)
        for tenant, rows in [(1, [(1, "a1"), (1, "a2")]), (2, [(2, "b1")]), (3, [(3, "c1")])]:
            with pooled_tenant_connection(pool, tenant) as conn:
                assert visible(conn) == rows
            with pool.tenant_connection(tenant) as conn:
                assert visible(conn) == rows
            with pool.connection() as conn:  # a checkout without context sees nothing
                assert visible(conn) == []
        with pytest.raises(InvalidTenantId), pooled_tenant_connection(pool, INJECTION):
            pytest.fail("must not be entered")
        assert pool.get_stats().get("requests_num", 0) == 9  # the bad id took no connection


def test_pool_reset_clears_a_session_level_set(db: Db) -> None:
    with make_tenant_pool(db.app_dsn, min_size=1, max_size=1, open=True) as pool:
        with pool.connection() as conn:
            pid = _backend_pid(conn)
            conn.execute("SET app.tenant_id = '1'")  # session-level, not our helper
            conn.commit()
            assert visible(conn) == [(1, "a1"), (1, "a2")]
        with pool.connection() as conn:
            assert _backend_pid(conn) == pid  # the very same server session
            assert visible(conn) == []
            assert current_tenant(conn) is None
        # Left in autocommit with a session-level set_config, the same.
        with pool.connection() as conn:
            conn.autocommit = True
            conn.execute("SELECT set_config('app.tenant_id', '2', false)")
        with pool.connection() as conn:
            assert _backend_pid(conn) == pid
            assert visible(conn) == []


def test_without_pool_reset_the_session_level_set_leaks(db: Db) -> None:
    """Control: the same sequence on a plain pool leaks, so the test above can fail."""
    with ConnectionPool(db.app_dsn, min_size=1, max_size=1, open=True) as pool:
        with pool.connection() as conn:
            conn.execute("SET app.tenant_id = '1'")
        with pool.connection() as conn:
            assert visible(conn) == [(1, "a1"), (1, "a2")]


def test_pool_reset_keeps_other_session_settings(db: Db) -> None:
    # Unlike RESET ALL / DISCARD ALL, settings made by configure= survive a return.
    def configure(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET statement_timeout = '7s'")
        conn.commit()

    seen: list[str | None] = []

    def user_reset(conn: psycopg.Connection[Any]) -> None:
        seen.append(current_tenant(conn))
        conn.rollback()  # a reset hook must leave the connection idle

    with make_tenant_pool(db.app_dsn, min_size=1, max_size=1, open=True,
                          configure=configure, reset=user_reset) as pool:
        with pool.connection() as conn:
            conn.execute("SET app.tenant_id = '1'")
            conn.commit()
        with pool.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("7s",)
            assert visible(conn) == []
            # The caller's reset= ran for the first checkout, after ours had cleared it.
            assert seen == [None]


def test_pool_reset_leaves_the_connection_idle(app_conn: psycopg.Connection[Any]) -> None:
    app_conn.execute("SET app.tenant_id = '3'")
    app_conn.commit()
    pool_reset(app_conn)
    assert app_conn.info.transaction_status == TransactionStatus.IDLE
    assert visible(app_conn) == []


def test_pooled_connection_with_a_plain_pool_and_custom_setting(db: Db) -> None:
    with ConnectionPool(db.app_dsn, min_size=1, max_size=1, open=True) as pool:
        with pooled_tenant_connection(pool, "acme", setting="app.tenant_key",
                                      key_type="text") as conn:
            assert visible(conn, "notes") == [("acme", "n1")]
        with pool.connection() as conn:
            assert visible(conn, "notes") == []


# --------------------------------------------------------------------------- SQLAlchemy


def test_sqlalchemy_url_round_trip(db: Db) -> None:
    url = sqlalchemy_url(db.app_dsn)
    assert url.drivername == "postgresql+psycopg"
    assert url.username == "ctx_app"
    assert url.database == dbname_of(db.app_dsn)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar_one() == "ctx_app"
    finally:
        engine.dispose()
    multi = sqlalchemy_url("host=/tmp,db2 port=5432,5433 dbname=x user=u password=p@ss")
    assert dict(multi.query) == {"host": "/tmp,db2", "port": "5432,5433"}
    assert multi.password == "p@ss"


def _items(session: Session) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in session.execute(text("SELECT tenant_id, v FROM items ORDER BY id"))]


def test_sqlalchemy_session_sees_only_its_tenant(db: Db) -> None:
    # pool_size=1: every session below reuses one server connection, the hard case.
    engine = create_engine(sqlalchemy_url(db.app_dsn), pool_size=1, max_overflow=0)
    factory = sessionmaker(engine)
    try:
        install_tenant_listener(factory)
        with tenant_session(factory, 1) as session:
            assert session.info[TENANT_INFO_KEY] == 1
            assert _items(session) == [(1, "a1"), (1, "a2")]
            session.execute(text("INSERT INTO items (tenant_id, v) VALUES (1, 'a3')"))
            session.commit()
            # A new transaction after the commit: context again, and the new row.
            assert _items(session) == [(1, "a1"), (1, "a2"), (1, "a3")]
            session.rollback()
            assert _items(session) == [(1, "a1"), (1, "a2"), (1, "a3")]
        with tenant_session(factory, "2") as session:
            assert _items(session) == [(2, "b1")]
        with factory() as session:  # no tenant in info: nothing
            assert _items(session) == []
        # Somebody sets the tenant session-level on the shared pooled connection...
        with engine.connect() as conn:
            conn.execute(text("SET app.tenant_id = '3'"))
            conn.commit()
        # ...and neither a tenant session nor a session without tenant is affected.
        with tenant_session(factory, 2) as session:
            assert _items(session) == [(2, "b1")]
        with factory() as session:
            assert _items(session) == []
    finally:
        engine.dispose()


def test_sqlalchemy_invalid_id_and_missing_listener(db: Db) -> None:
    engine = create_engine(sqlalchemy_url(db.app_dsn), pool_size=1, max_overflow=0)
    try:
        bare = sessionmaker(engine)
        with pytest.raises(TenantContextError, match="install_tenant_listener"), \
                tenant_session(bare, 1):
            pytest.fail("must not be entered")
        factory = sessionmaker(engine)
        install_tenant_listener(factory)
        install_tenant_listener(factory)  # same arguments: no-op
        with pytest.raises(TenantContextError, match="already installed"):
            install_tenant_listener(factory, key_type="uuid")
        sent: list[str] = []
        event.listen(engine, "before_cursor_execute",
                     lambda conn, cursor, statement, *args: sent.append(statement))
        for bad in INVALID_FOR_BIGINT:  # None too: "no tenant" is a plain factory() session
            with pytest.raises(InvalidTenantId), tenant_session(factory, bad):
                pytest.fail("must not be entered")
        # An id put straight into info is checked too, before the query runs.
        with factory(info={TENANT_INFO_KEY: True}) as session, pytest.raises(InvalidTenantId):
            session.execute(text("DELETE FROM items"))
        assert sent == []  # not one statement reached the server
        with pytest.raises(TenantContextError, match="every Session"):
            install_tenant_listener(Session)
        # The listener is on `factory` only: a `bare` session does not override a
        # session-level SET left on the (single) pooled connection, a `factory` one does.
        with engine.connect() as conn:
            conn.execute(text("SET app.tenant_id = '3'"))
            conn.commit()
        with bare() as session:
            assert _items(session) == [(3, "c1")]
        with factory() as session:
            assert _items(session) == []
    finally:
        engine.dispose()
    assert table_exists(db.admin_dsn, "accounts")
    with psycopg.connect(db.admin_dsn) as admin:
        assert admin.execute("SELECT count(*) FROM items").fetchone() == (4,)


def test_sqlalchemy_text_key(db: Db) -> None:
    engine = create_engine(sqlalchemy_url(db.app_dsn), pool_size=1, max_overflow=0)
    factory = sessionmaker(engine)
    try:
        install_tenant_listener(factory, setting="app.tenant_key", key_type="text")
        with tenant_session(factory, INJECTION) as session:
            rows = session.execute(text("SELECT tenant, v FROM notes")).all()
            assert [tuple(r) for r in rows] == [(INJECTION, "evil")]
    finally:
        engine.dispose()
    assert table_exists(db.admin_dsn, "accounts")


def test_sqlalchemy_async_sessions(db: Db) -> None:
    pytest.importorskip("greenlet", reason="SQLAlchemy's asyncio needs greenlet "
                        "(pip install 'sqlalchemy[asyncio]')")

    async def items(session: AsyncSession) -> list[tuple[Any, ...]]:
        result = await session.execute(text("SELECT tenant_id, v FROM items ORDER BY id"))
        return [tuple(r) for r in result]

    async def main() -> None:
        engine = create_async_engine(sqlalchemy_url(db.app_dsn), pool_size=1, max_overflow=0)
        factory = async_sessionmaker(engine)
        other = async_sessionmaker(engine)  # no listener: must stay untouched
        try:
            install_tenant_listener(factory)
            async with async_tenant_session(factory, 1) as session:
                assert await items(session) == [(1, "a1"), (1, "a2")]
                await session.execute(text("INSERT INTO items (tenant_id, v) VALUES (1, 'a3')"))
                await session.commit()
                assert await items(session) == [(1, "a1"), (1, "a2"), (1, "a3")]
            async with async_tenant_session(factory, 3) as session:
                assert await items(session) == [(3, "c1")]
            async with factory() as session:
                assert await items(session) == []
            with pytest.raises(TenantContextError, match="install_tenant_listener"):
                async with async_tenant_session(other, 1):
                    pytest.fail("must not be entered")
            # The listener is on `factory` only (not on the Session class both share): with
            # a session-level SET left on the single pooled connection, an `other` session
            # sees that tenant, a `factory` session without tenant sees nothing.
            async with other() as session:
                await session.execute(text("SET app.tenant_id = '2'"))
                await session.commit()
                assert await items(session) == [(2, "b1")]
            async with factory() as session:
                assert await items(session) == []
            with pytest.raises(InvalidTenantId):
                async with async_tenant_session(factory, "abc"):
                    pytest.fail("must not be entered")

            # Two tenants at once, interleaved on the event loop, each with its own view.
            async def worker(tenant: int, expected: list[tuple[Any, ...]]) -> None:
                for _ in range(5):
                    async with async_tenant_session(factory, tenant) as session:
                        assert await items(session) == expected
                        await asyncio.sleep(0)
            await engine.dispose()
            wide = create_async_engine(sqlalchemy_url(db.app_dsn), pool_size=2)
            try:
                factory.configure(bind=wide)
                await asyncio.gather(worker(2, [(2, "b1")]), worker(3, [(3, "c1")]))
            finally:
                await wide.dispose()
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_install_on_session_subclasses(db: Db) -> None:
    class TenantSession(Session):
        pass

    class TenantAsyncSession(AsyncSession):
        sync_session_class = TenantSession

    install_tenant_listener(TenantAsyncSession)  # listens on TenantSession
    engine = create_engine(sqlalchemy_url(db.app_dsn), pool_size=1, max_overflow=0)
    try:
        factory: sessionmaker[TenantSession] = sessionmaker(engine, class_=TenantSession)
        with tenant_session(factory, 2) as session:
            assert isinstance(session, TenantSession)
            assert _items(session) == [(2, "b1")]
    finally:
        engine.dispose()
    with pytest.raises(TenantContextError, match="every Session"):
        install_tenant_listener(AsyncSession)

