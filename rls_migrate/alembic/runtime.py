"""What the Alembic operations share: the psycopg connection under Alembic's, the toolkit's
own plan builders applied to the one table an operation names, and statements run under
``lock_timeout`` with jittered retries.

Operations never build SQL of their own beyond a DDL line: expressions, recorder functions,
sync triggers, backfill batches and index builds come from the stage modules, resolved
against the live catalog (a handful of queries), so an ``op.*`` call and
``rls-migrate apply`` do the same thing to a table.
"""

from __future__ import annotations

import contextlib
import random
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.errors
from alembic.util import CommandError
from psycopg import sql
from psycopg.pq import TransactionStatus

from rls_migrate.catalog import Catalog, QualifiedName, quote_ident
from rls_migrate.errors import RlsMigrateError
from rls_migrate.lockholders import describe_holder, lock_holders
from rls_migrate.playbook import Options, ParentRef, Playbook, Roles, TablePlan, Tenant
from rls_migrate.stages.common import PlanContext, TenantTable, regclass_text
from rls_migrate.steps import Lock

if TYPE_CHECKING:
    from alembic.operations import Operations

Conn = psycopg.Connection[Any]

_defaults: dict[str, Any] = {}


class RlsOperationError(CommandError):
    """An rls_migrate operation cannot run: one clear message. A ``CommandError``, so the
    ``alembic`` command prints ``FAILED: <message>`` without a traceback."""


def set_default_options(**overrides: Any) -> Options:
    """Lock care for every operation of this process, e.g. in ``env.py``::

        rls_migrate.alembic.set_default_options(lock_timeout="200ms", retries=10)

    Same keys and units as the playbook's ``options`` (``lock_timeout``, ``retries``,
    ``backoff_initial``, ``backoff_max``, ``ddl_statement_timeout``, ``statement_timeout``);
    each call replaces the previous overrides (no arguments: the playbook defaults again).
    Returns the options now in force."""
    try:
        options = Options.model_validate(overrides)
    except ValueError as exc:
        raise RlsOperationError(f"rls_migrate options: {exc}") from None
    _defaults.clear()
    _defaults.update(overrides)
    return options


def options_from(overrides: Mapping[str, Any] | None = None) -> Options:
    """The process defaults, with ``overrides`` (a rendered revision passes its own)."""
    try:
        return Options.model_validate({**_defaults, **(overrides or {})})
    except ValueError as exc:
        raise RlsOperationError(f"rls_migrate options: {exc}") from None


# --------------------------------------------------------------------------- connections


def require_online(operations: Operations, what: str) -> None:
    if operations.get_context().as_sql:
        raise RlsOperationError(
            f"op.{what} needs a live database connection; `alembic upgrade --sql` cannot "
            "render it (`rls-migrate plan --format sql` writes the whole migration as a "
            "psql script)")


def driver_connection(operations: Operations, what: str) -> Conn:
    """The psycopg 3 connection under Alembic's SQLAlchemy connection."""
    require_online(operations, what)
    raw = operations.get_bind().connection.driver_connection
    if not isinstance(raw, psycopg.Connection):
        raise RlsOperationError(
            f"op.{what} needs the psycopg 3 driver: use a postgresql+psycopg:// URL in "
            f"env.py (got a {type(raw).__module__}.{type(raw).__name__} connection)")
    return raw


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """The toolkit's typed errors, as Alembic's (a clean ``FAILED:`` line)."""
    try:
        yield
    except RlsMigrateError as exc:
        raise RlsOperationError(exc.message) from exc


# --------------------------------------------------------------------------- tables


def qualified(conn: Conn, table: str, schema: str | None) -> QualifiedName:
    """``schema.table`` as Alembic names it (raw names, no quoting); without a schema, the
    one the search path finds the table in. The table must exist."""
    name = regclass_text(QualifiedName(schema, table)) if schema is not None else (
        '"' + table.replace('"', '""') + '"')
    row = conn.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass(%s)", [name]).fetchone()
    if row is None:
        where = f"schema {schema!r}" if schema is not None else "the search path"
        raise RlsOperationError(f"table {table!r} does not exist in {where}")
    return QualifiedName(str(row[0]), table)


def target(
    conn: Conn,
    qname: QualifiedName,
    column: str,
    *,
    setting: str = "app.tenant_id",
    key_type: str = "bigint",
    role: str | None = None,
    parent: str | None = None,
    parent_column: str = "tenant_id",
    references: str | None = None,
    options: Options | None = None,
) -> tuple[PlanContext, TenantTable]:
    """The plan context and tenant-table entry of one table, as a playbook naming only that
    table (and its parent) would give them. ``parent`` uses the playbook syntax
    (``"issue_id -> public.issues(id)"``); ``references`` names the tenant root and its key
    (``"public.accounts(id)"``) for the tenant foreign key."""
    try:
        parent_ref = ParentRef.parse(parent) if parent is not None else None
        root_ref = (ParentRef.parse(f"{quote_ident(column)} -> {references}")
                    if references is not None else None)
        tables: dict[str, TablePlan] = {}
        if parent_ref is None:
            tables[str(qname)] = TablePlan(strategy="direct", column=column)
            root, key = (root_ref.qname, root_ref.ref_columns[0]) if root_ref else (qname, column)
        else:
            tables[str(qname)] = TablePlan(strategy="derive", parent=parent_ref)
            tables[str(parent_ref.qname)] = TablePlan(strategy="direct", column=parent_column)
            root, key = ((root_ref.qname, root_ref.ref_columns[0]) if root_ref
                         else (parent_ref.qname, parent_column))
        playbook = Playbook(
            tenant=Tenant.model_validate({"table": str(root), "key": key, "key_type": key_type,
                                          "column": column, "setting": setting}),
            roles=Roles(app=role or "public"),
            options=options or options_from(),
            tables=tables)
    except ValueError as exc:
        raise RlsOperationError(f"{qname}: {exc}") from None
    schemas = sorted({qname.schema, root.schema}
                     | ({parent_ref.qname.schema} if parent_ref else set()))
    catalog = Catalog.load(conn, schemas=schemas)
    for needed in (qname, *([parent_ref.qname] if parent_ref else [])):
        if needed not in catalog.tables:
            hint = catalog.suggest(str(needed))
            raise RlsOperationError(f"table {needed} does not exist"
                                    + (f" (did you mean {', '.join(hint)}?)" if hint else ""))
    ctx = PlanContext(catalog, playbook)
    with translated_errors():
        entry = ctx.tenant_table(qname)
    assert entry is not None
    return ctx, entry


def role_sql(role: str | None) -> sql.Composable:
    return sql.SQL("PUBLIC") if role is None else sql.Identifier(role)


# --------------------------------------------------------------------------- running


def _backoff_ms(options: Options, retry: int, rng: random.Random) -> float:
    """Full jitter, as the executor's."""
    return rng.uniform(0.0, min(options.backoff_max, options.backoff_initial * 2.0 ** retry))


def run_locked(
    conn: Conn,
    statements: Sequence[sql.Composable],
    *,
    table: QualifiedName,
    lock: Lock,
    options: Options,
    what: str,
    sleep: Any = time.sleep,
    rng: random.Random | None = None,
) -> int:
    """Run ``statements`` as one unit under ``lock_timeout``, retrying a lock timeout (or a
    deadlock) after a jittered backoff. Returns the attempts it took.

    Inside Alembic's migration transaction the unit is a savepoint: a failed attempt rolls
    back to it, so the migration goes on; the locks taken stay until the migration commits
    (keep such revisions small, or use ``transaction_per_migration``). In autocommit (an
    ``autocommit_block()``) the unit is its own short transaction. The timeouts are local and
    put back afterwards."""
    rng = rng or random.Random()
    inside = conn.info.transaction_status == TransactionStatus.INTRANS
    previous = None
    if inside:
        previous = conn.execute(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
        ).fetchone()
    lock_ms = f"{max(1, round(options.lock_timeout))}ms" if options.lock_timeout > 0 else "0"
    stmt_ms = (f"{max(1, round(options.ddl_statement_timeout))}ms"
               if options.ddl_statement_timeout > 0 else "0")
    attempt = 0
    while True:
        attempt += 1
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true),"
                             " set_config('statement_timeout', %s, true)", [lock_ms, stmt_ms])
                for statement in statements:
                    conn.execute(_query(statement))
            break
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
            if attempt > options.retries:
                raise RlsOperationError(_gave_up(conn, what, table, lock, attempt, exc)) from exc
            sleep(_backoff_ms(options, attempt - 1, rng) / 1000.0)
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RlsOperationError(f"op.{what} on {table} failed: {first}") from exc
    if previous is not None:
        conn.execute("SELECT set_config('lock_timeout', %s, true),"
                     " set_config('statement_timeout', %s, true)", list(previous))
    return attempt


def _gave_up(conn: Conn, what: str, table: QualifiedName, lock: Lock, attempts: int,
             exc: BaseException) -> str:
    text = (f"op.{what} gave up: could not take the {lock.label} lock on {table} within "
            f"lock_timeout in {attempts} attempts ({type(exc).__name__})")
    with contextlib.suppress(psycopg.Error):
        holders = lock_holders(conn, table, conflicting_with=lock)
        if holders:
            text += ". Held by: " + "; ".join(describe_holder(h) for h in holders[:5])
    return text + ". Let that transaction finish and run the migration again."


def _query(statement: sql.Composable) -> sql.SQL | sql.Composed:
    if isinstance(statement, sql.SQL | sql.Composed):
        return statement
    return sql.Composed([statement])


# --------------------------------------------------------------------------- the toolkit's schema


@contextlib.contextmanager
def keep_alembic_proxies() -> Iterator[None]:
    """Alembic's ``op`` and ``context`` modules point at the running migration. Running the
    toolkit's own migrations from inside one replaces and then removes those pointers; put
    the outer ones back, so the rest of the user's revision keeps working."""
    import alembic.context
    import alembic.op

    saved = [getattr(module, "_proxy", None) for module in (alembic.op, alembic.context)]
    try:
        yield
    finally:
        for proxy in saved:
            if proxy is not None:
                proxy._install_proxy()


def ensure_toolkit_schema(operations: Operations, revision: str = "head") -> bool:
    """Bring the ``rls_migrate`` schema (journal, checkpoints, samples) to ``revision`` in
    the migration's own transaction. Returns whether anything had to run."""
    from alembic import command

    from rls_migrate import journal

    conn = driver_connection(operations, "upgrade_rls_migrate_schema")
    if revision == "head" and journal.schema_revision(conn) == journal.head_revision():
        return False
    with keep_alembic_proxies():
        command.upgrade(journal.alembic_config(connection=operations.get_bind()), revision)
    return True


_HAVE_SCHEMA: weakref.WeakSet[Conn] = weakref.WeakSet()
"""Connections already seen with the toolkit's schema: a rendered revision checks it once,
not before each of its steps."""


def require_toolkit_schema(conn: Conn, what: str) -> None:
    from rls_migrate import journal

    if conn in _HAVE_SCHEMA:
        return
    if journal.schema_revision(conn) is not None:
        _HAVE_SCHEMA.add(conn)
    else:
        raise RlsOperationError(
            f"op.{what} journals into the rls_migrate schema, which does not exist: run "
            "op.upgrade_rls_migrate_schema() first (the prepare revision that "
            "`rls-migrate alembic render` writes does), or `rls-migrate apply PLAYBOOK "
            "--stage prepare`")
