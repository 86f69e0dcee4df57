"""Alembic environment for rls-migrate's own schema, ``rls_migrate``.

Run by ``alembic -c alembic.ini ...`` (DSN from ``-x dsn=...``, ``RLS_MIGRATE_DSN`` or
``DATABASE_URL``) and by :func:`rls_migrate.journal.upgrade_schema` (which passes a
SQLAlchemy connection in ``config.attributes["connection"]``, or a DSN in
``config.attributes["dsn"]``).

Every run, in one transaction:

1. takes a transaction-level advisory lock, so two toolkits upgrading at once run one after
   the other (the second then finds the schema at head and does nothing);
2. creates the schema, because the version table lives in it
   (``rls_migrate.alembic_version``, never the application's ``public.alembic_version``);
3. runs the revisions;
4. re-asserts that PUBLIC has no privilege on the schema or anything in it, whatever a
   future revision forgot (the application role must never read or change the journal);
   after a downgrade to base it drops the version table and the schema if nothing else is
   left in it (never CASCADE: a policy may still call a helper function there).
"""

from __future__ import annotations

from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection

from rls_migrate.journal import (
    SCHEMA,
    VERSION_TABLE,
    make_engine,
    resolve_schema_dsn,
)
from rls_migrate.migration_lock import SCHEMA_UPGRADE_LOCK_KEY

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

_REVOKES = (
    "REVOKE ALL ON SCHEMA rls_migrate FROM PUBLIC",
    "REVOKE ALL ON ALL TABLES IN SCHEMA rls_migrate FROM PUBLIC",
    "REVOKE ALL ON ALL SEQUENCES IN SCHEMA rls_migrate FROM PUBLIC",
)


def _dsn() -> str:
    dsn: str | None = config.attributes.get("dsn") or context.get_x_argument(
        as_dictionary=True
    ).get("dsn")
    if not dsn:
        dsn = config.get_main_option("sqlalchemy.url") or None
    # resolve_dsn falls back to RLS_MIGRATE_DSN, then DATABASE_URL, or says what to set.
    return resolve_schema_dsn(dsn)


def _prologue(connection: Connection) -> None:
    connection.execute(
        sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_UPGRADE_LOCK_KEY}
    )
    connection.execute(sa.text("CREATE SCHEMA IF NOT EXISTS rls_migrate"))


def _epilogue(connection: Connection) -> None:
    if context.get_context().get_current_heads():
        for statement in _REVOKES:
            connection.execute(sa.text(statement))
        return
    # At base: the revisions dropped their objects; what is left is the version table.
    savepoint = connection.begin_nested()
    try:
        connection.execute(sa.text("DROP TABLE IF EXISTS rls_migrate.alembic_version"))
        connection.execute(sa.text("DROP SCHEMA IF EXISTS rls_migrate"))
    except sa.exc.DBAPIError:
        # Something else still lives in the schema (objects created outside the revisions):
        # keep it, and the empty version table, rather than CASCADE into user policies.
        savepoint.rollback()
    else:
        savepoint.commit()


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        version_table_schema=SCHEMA,
        transactional_ddl=True,
        transaction_per_migration=False,
    )


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
        return
    engine = make_engine(_dsn())
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        _prologue(connection)
        context.run_migrations()
        _epilogue(connection)


def run_migrations_offline() -> None:
    """``--sql``: print the script for a DBA to review instead of running it."""
    context.configure(
        url="postgresql+psycopg://",
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        version_table=VERSION_TABLE,
        version_table_schema=SCHEMA,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.execute("CREATE SCHEMA IF NOT EXISTS rls_migrate")
        context.run_migrations()
        for statement in _REVOKES:
            context.execute(statement)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
