"""pytest plugin: tenant-isolation fixtures and assertions for your own test suite.

Configure it in ``pytest.ini`` / ``pyproject.toml`` (``[tool.pytest.ini_options]``), or with
environment variables, which win::

    [pytest]
    rls_migrate_dsn = postgresql://owner@localhost/app_test   # env RLS_MIGRATE_DSN
    rls_migrate_app_role = app_user                           # env RLS_MIGRATE_APP_ROLE
    rls_migrate_tenant_setting = app.tenant_id                # env RLS_MIGRATE_TENANT_SETTING
    rls_migrate_key_type = bigint                             # env RLS_MIGRATE_KEY_TYPE
    rls_migrate_tenant_column = tenant_id                     # env RLS_MIGRATE_TENANT_COLUMN

The DSN's role should read every table unfiltered (the owner, or a superuser): the
fixtures switch to the application role (``SET ROLE``) and the assertions pick tenants from
the tables' rows. Then::

    def test_invoices_are_isolated(rls):
        rls.assert_tenant_isolated("public.invoices")   # probe as the app role: A vs B
        rls.assert_rls_enforced("public")               # every tenant_id table enforced

    def test_listing_shows_one_tenant(tenant_connection):
        conn = tenant_connection(42)                    # app role, tenant 42, one transaction
        rows = conn.execute("SELECT DISTINCT tenant_id FROM invoices").fetchall()
        assert rows in ([], [(42,)])

    def test_orm(tenant_session):
        session = tenant_session(42)                    # every transaction scoped to 42
        assert {i.tenant_id for i in session.scalars(select(Invoice))} <= {42}

``tenant_connection(tenant)`` gives a psycopg connection acting as the application role,
inside one transaction with the tenant set; it is rolled back after the test (a
``commit()`` ends the context: the next transaction has none). ``tenant_session(tenant)``
gives an SQLAlchemy session whose every transaction starts with the tenant set
(:func:`rls_migrate.sqlalchemy.install_tenant_listener`), also across commits; closed (so
rolled back) after the test. Both accept several tenants in one test.

The assertions are plain functions too, usable with any connection or DSN:
:func:`assert_tenant_isolated` and :func:`assert_rls_enforced`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.context import (
    DEFAULT_KEY_TYPE,
    DEFAULT_SETTING,
    TenantContextError,
    normalize_key_type,
    normalize_tenant_id,
    set_tenant,
    validate_setting_name,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from rls_migrate.verify.probe import ProbeTarget

# The probe, the checks and SQLAlchemy are imported where they are used: once installed, the
# plugin loads in every pytest session of the environment, used or not.

Conn = psycopg.Connection[Any]

OPTIONS: dict[str, tuple[str, str, str]] = {
    # ini name: (environment variable, default, help)
    "rls_migrate_dsn": ("RLS_MIGRATE_DSN", "", "DSN of the database the isolation tests use "
                        "(a role that reads every table: the owner or a superuser)"),
    "rls_migrate_app_role": ("RLS_MIGRATE_APP_ROLE", "", "the application role the fixtures "
                             "and assertions act as (SET ROLE); empty: the DSN's own role"),
    "rls_migrate_tenant_setting": ("RLS_MIGRATE_TENANT_SETTING", DEFAULT_SETTING,
                                   "the per-transaction setting the policies read"),
    "rls_migrate_key_type": ("RLS_MIGRATE_KEY_TYPE", DEFAULT_KEY_TYPE,
                             "the tenant key type: bigint, integer, smallint, uuid or text"),
    "rls_migrate_tenant_column": ("RLS_MIGRATE_TENANT_COLUMN", "tenant_id",
                                  "the tenant column the assertions look for"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    for name, (env, default, help_) in OPTIONS.items():
        parser.addini(name, f"{help_} (environment: {env})", default=default)


_SETTINGS = pytest.StashKey["RlsSettings"]()


def pytest_configure(config: pytest.Config) -> None:
    """Read and check the configuration once: a bad setting name or key type stops the
    session with one line instead of erroring every test that uses a fixture."""
    config.stash[_SETTINGS] = RlsSettings.from_config(config)


@dataclasses.dataclass(frozen=True)
class RlsSettings:
    dsn: str | None
    app_role: str | None
    setting: str
    key_type: str
    column: str

    @classmethod
    def from_config(cls, config: pytest.Config) -> RlsSettings:
        def get(name: str) -> str:
            env, default, _ = OPTIONS[name]
            value = os.environ.get(env) or str(config.getini(name) or "")
            return value.strip() or default

        try:
            setting = validate_setting_name(get("rls_migrate_tenant_setting"))
            key_type = normalize_key_type(get("rls_migrate_key_type"))
        except TenantContextError as exc:
            raise pytest.UsageError(f"rls-migrate plugin: {exc}") from None
        return cls(get("rls_migrate_dsn") or None, get("rls_migrate_app_role") or None,
                   setting, key_type, get("rls_migrate_tenant_column"))

    def require_dsn(self) -> str:
        if not self.dsn:
            pytest.fail("rls-migrate plugin: no database: set rls_migrate_dsn in the pytest "
                        "configuration or the RLS_MIGRATE_DSN environment variable",
                        pytrace=False)
        return self.dsn

    def connect_as_app(self, *, autocommit: bool = False) -> Conn:
        """A connection acting as the application role for its whole session."""
        conn = psycopg.connect(self.require_dsn(), autocommit=autocommit,
                               application_name="rls-migrate pytest")
        if self.app_role:
            with conn.transaction():
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self.app_role)))
        return conn


# --------------------------------------------------------------------------- assertions


@contextlib.contextmanager
def _connection(conn_or_dsn: Conn | str) -> Iterator[Conn]:
    if isinstance(conn_or_dsn, str):
        with psycopg.connect(conn_or_dsn, autocommit=True,
                             application_name="rls-migrate pytest") as conn:
            yield conn
    else:
        yield conn_or_dsn


def _target(conn: Conn, qname: QualifiedName, column: str) -> ProbeTarget:
    from rls_migrate.verify.probe import ProbeTarget

    regclass = sql.Identifier(qname.schema, qname.name).as_string(conn)
    with conn.transaction():
        cols = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attgenerated <> ''"
            " FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum", [regclass]).fetchall()
        pk = conn.execute(
            "SELECT array_agg(a.attname ORDER BY k.o) FROM pg_index x"
            " CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(n, o)"
            " JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n"
            " WHERE x.indrelid = to_regclass(%s) AND x.indisprimary", [regclass]).fetchone()
    if not cols:
        raise AssertionError(f"no table {qname}")
    types = {str(name): str(type_) for name, type_, _ in cols}
    if column not in types:
        raise AssertionError(f"{qname} has no column {column!r} (pass column=...)")
    keys = tuple(pk[0]) if pk and pk[0] else ()
    return ProbeTarget(qname, column, types[column], keys,
                       tuple(str(name) for name, _, generated in cols if not generated))


def assert_tenant_isolated(
    conn_or_dsn: Conn | str,
    table: str | QualifiedName,
    *,
    tenants: tuple[object, object] | None = None,
    column: str = "tenant_id",
    app_role: str | None = None,
    setting: str = DEFAULT_SETTING,
    key_type: str = DEFAULT_KEY_TYPE,
) -> None:
    """Fail unless, as ``app_role`` (``SET LOCAL ROLE``; None: the connection's own role),
    tenant A cannot read, update, delete or insert tenant B's rows of ``table``, nor move a
    row into B, and nothing is visible or insertable with no context. Everything runs in
    transactions that are rolled back.

    ``tenants`` (A, B): default, two tenants with rows in the table, which the connection
    must read unfiltered (the owner or a superuser)."""
    from rls_migrate.verify.probe import (
        ProbeSettings,
        Unprobeable,
        check_role,
        pick_tenants,
        probe_table,
    )

    qname = table if isinstance(table, QualifiedName) else QualifiedName.parse(table)
    settings = ProbeSettings(validate_setting_name(setting), app_role)
    with _connection(conn_or_dsn) as conn:
        target = _target(conn, qname, column)
        check_role(conn, settings)
        if tenants is None:
            picked = pick_tenants(conn, target)
            if isinstance(picked, Unprobeable):
                raise AssertionError(f"cannot probe {qname}: {picked.message}"
                                     " (pass tenants=(a, b))")
            a, b = picked
        else:
            a, b = (normalize_tenant_id(t, key_type) for t in tenants)
        findings = probe_table(conn, target, a, b, settings, picked=tenants is None)
    failed = [f for f in findings if f.status == "fail"]
    skipped = [f for f in findings if f.status == "skip"]
    if failed:
        raise AssertionError(f"{qname} is not tenant-isolated:\n" + "\n".join(
            f"  {f.code}: {f.message}" for f in failed))
    if len(skipped) == len(findings):
        raise AssertionError(f"cannot probe {qname}: {skipped[0].message}")


def assert_rls_enforced(
    conn_or_dsn: Conn | str,
    schema: str = "public",
    *,
    column: str = "tenant_id",
    app_role: str | None = None,
) -> None:
    """Fail unless every table of ``schema`` holding ``column`` has enforced RLS (what
    ``rls-migrate check`` checks), and at least one table holds it."""
    from rls_migrate.check import check_catalog, render_text

    with _connection(conn_or_dsn) as conn, conn.transaction():
        catalog = Catalog.load(conn, schemas=[schema])
    result = check_catalog(catalog, column=column, app_role=app_role)
    if not result.checked:
        raise AssertionError(f"no table of schema {schema!r} holds {column!r}: nothing is "
                             "protected (wrong schema or column?)")
    if not result.ok:
        raise AssertionError(render_text(result, column))


@dataclasses.dataclass(frozen=True)
class RlsAssertions:
    """The assertions bound to the plugin's configuration (the ``rls`` fixture)."""

    settings: RlsSettings

    def assert_tenant_isolated(self, table: str, *, tenants: tuple[object, object] | None = None,
                               column: str | None = None) -> None:
        assert_tenant_isolated(self.settings.require_dsn(), table, tenants=tenants,
                               column=column or self.settings.column,
                               app_role=self.settings.app_role, setting=self.settings.setting,
                               key_type=self.settings.key_type)

    def assert_rls_enforced(self, schema: str = "public", *, column: str | None = None) -> None:
        assert_rls_enforced(self.settings.require_dsn(), schema,
                            column=column or self.settings.column,
                            app_role=self.settings.app_role)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def rls_settings(pytestconfig: pytest.Config) -> RlsSettings:
    """The plugin's configuration (ini options, environment variables)."""
    return pytestconfig.stash.get(_SETTINGS, None) or RlsSettings.from_config(pytestconfig)


@pytest.fixture
def rls(rls_settings: RlsSettings) -> RlsAssertions:
    """``rls.assert_tenant_isolated(table)``, ``rls.assert_rls_enforced(schema)``."""
    return RlsAssertions(rls_settings)


@pytest.fixture
def tenant_connection(rls_settings: RlsSettings) -> Iterator[Callable[[object], Conn]]:
    """``tenant_connection(tenant_id)``: a psycopg connection acting as the application role,
    in one transaction with the tenant set; rolled back and closed after the test."""
    opened: list[Conn] = []

    def open_(tenant_id: object) -> Conn:
        normalize_tenant_id(tenant_id, rls_settings.key_type)
        conn = rls_settings.connect_as_app()
        opened.append(conn)
        set_tenant(conn, tenant_id, setting=rls_settings.setting,
                   key_type=rls_settings.key_type)
        return conn

    yield open_
    for conn in opened:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()


@pytest.fixture(scope="session")
def rls_engine(rls_settings: RlsSettings) -> Iterator[Engine]:
    """An SQLAlchemy engine (psycopg 3) on the plugin's DSN whose connections act as the
    application role."""
    from sqlalchemy import create_engine, event

    from rls_migrate.sqlalchemy import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(rls_settings.require_dsn()))
    role = rls_settings.app_role
    if role:
        @event.listens_for(engine, "connect")
        def _as_app_role(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            dbapi_conn.commit()

    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def rls_sessionmaker(rls_engine: Engine, rls_settings: RlsSettings) -> sessionmaker[Session]:
    """A sessionmaker whose sessions set the tenant from ``session.info`` at the start of
    every transaction."""
    from sqlalchemy.orm import sessionmaker

    from rls_migrate.sqlalchemy import install_tenant_listener

    factory = sessionmaker(rls_engine)
    install_tenant_listener(factory, setting=rls_settings.setting,
                            key_type=rls_settings.key_type)
    return factory


@pytest.fixture
def tenant_session(rls_sessionmaker: sessionmaker[Session]) -> Iterator[Callable[[object], Session]]:
    """``tenant_session(tenant_id)``: an SQLAlchemy session scoped to the tenant in every
    transaction; closed (rolled back) after the test."""
    from rls_migrate.sqlalchemy import tenant_session as open_session

    with contextlib.ExitStack() as stack:
        def open_(tenant_id: object) -> Session:
            return stack.enter_context(open_session(rls_sessionmaker, tenant_id))

        yield open_
