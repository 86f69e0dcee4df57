"""The Alembic operations on real servers: every ``op.*`` up and down again (its
``reverse()``), what the application role sees in observe and enforce mode, lock timeouts
retried inside the migration's transaction, the toolkit's schema upgraded from inside a
revision without breaking Alembic's ``op`` proxy, clear errors, and doctor's warning about
a migration role with BYPASSRLS."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from alembic.migration import MigrationContext
from alembic.operations import MigrateOperation, Operations
from psycopg import sql

import rls_migrate.alembic as rls_alembic
from rls_migrate import samples
from rls_migrate.alembic import (
    AddTenantColumnOp,
    BackfillTenantColumnOp,
    CreateIndexConcurrentlyOp,
    CreateTenantPolicyOp,
    EnableRlsOp,
    EnforceTenantPolicyOp,
    ForceRlsOp,
    RlsOperationError,
    UpgradeRlsMigrateSchemaOp,
)
from rls_migrate.catalog import Catalog
from rls_migrate.context import tenant_transaction
from rls_migrate.doctor import diagnose
from rls_migrate.journal import make_engine
from rls_migrate.playbook import Options
from rls_migrate.testing import servers

# Version-agnostic (the toolkit's own logic over SQL every major runs alike): the core
# majors only, unless RLS_MIGRATE_TEST_ALL_MAJORS=1 (see tests/conftest.py).
pytestmark = pytest.mark.core_majors


APP = samples.APP_ROLE
PARENT = "project_id -> public.projects(id)"


def load_small(dsn: str) -> None:
    """Tenants 1..3; projects carry the key; tasks reach it through projects; events are
    partitioned and carry it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        samples.ensure_roles(conn)
        for statement in (
            "CREATE TABLE accounts (id bigint PRIMARY KEY)",
            "CREATE TABLE projects (id bigint PRIMARY KEY,"
            " account_id bigint NOT NULL REFERENCES accounts)",
            "CREATE TABLE tasks (id bigint PRIMARY KEY,"
            " project_id bigint NOT NULL REFERENCES projects, title text)",
            "CREATE TABLE events (id bigint, tenant_id bigint NOT NULL, at date NOT NULL)"
            " PARTITION BY RANGE (at)",
            "CREATE TABLE events_2026_01 PARTITION OF events"
            " FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')",
            "CREATE TABLE events_2026_02 PARTITION OF events"
            " FOR VALUES FROM ('2026-02-01') TO ('2026-03-01')",
            "INSERT INTO accounts SELECT g FROM generate_series(1, 3) g",
            "INSERT INTO projects SELECT g, g % 3 + 1 FROM generate_series(1, 9) g",
            "INSERT INTO tasks SELECT g, g % 9 + 1, 't' || g FROM generate_series(1, 3000) g",
            "INSERT INTO events SELECT g, g % 3 + 1, date '2026-01-01' + g % 50"
            " FROM generate_series(1, 300) g",
        ):
            conn.execute(statement)
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON accounts, projects, tasks,"
                             " events, events_2026_01, events_2026_02 TO {}").format(
                                 sql.Identifier(APP)))


@pytest.fixture(scope="module")
def small_factory(make_factory: Callable[..., servers.DatabaseFactory]
                  ) -> servers.DatabaseFactory:
    return make_factory(load_small, "alembicops")


@pytest.fixture
def db(small_factory: servers.DatabaseFactory) -> Iterator[str]:
    dsn = small_factory.create()
    yield dsn
    small_factory.drop(servers.dbname_of(dsn))


def migrate(dsn: str, *operations: MigrateOperation, proxy: Callable[[], None] | None = None
            ) -> None:
    """Run operations the way a revision does: in the migration's transaction, with
    ``autocommit_block()`` available (``Operations.context`` installs ``alembic.op``)."""
    engine = make_engine(dsn)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            with Operations.context(context) as op, context.begin_transaction():
                for operation in operations:
                    op.invoke(operation)
                if proxy is not None:
                    proxy()
    finally:
        engine.dispose()


def one(dsn: str, query: str, params: list[Any] | None = None) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type, unused-ignore]
    assert row is not None
    return row[0] if len(row) == 1 else row


def flags(dsn: str, table: str) -> tuple[bool, bool]:
    return tuple(one(dsn, "SELECT relrowsecurity, relforcerowsecurity FROM pg_class"
                          " WHERE oid = %s::regclass", [table]))  # type: ignore[return-value, unused-ignore]


def policies(dsn: str, table: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT polname FROM pg_policy WHERE polrelid = %s::regclass ORDER BY 1",
            [table]).fetchall()]


def visible(dsn: str, table: str, tenant: int | None) -> int:
    """Rows of ``table`` the application role sees with tenant ``tenant`` (None: no
    context)."""
    with psycopg.connect(dsn, user=APP) as conn:
        if tenant is None:
            return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(table))).fetchone()[0])  # type: ignore[index]
        with tenant_transaction(conn, tenant):
            return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(table))).fetchone()[0])  # type: ignore[index]


# --------------------------------------------------------------------------- RLS flags


def test_rls_flag_ops_and_their_reverses(db: str) -> None:
    enable = EnableRlsOp("events", force=True)
    migrate(db, enable)
    for table in ("events", "events_2026_01", "events_2026_02"):
        assert flags(db, table) == (True, True), table  # partitions too
    migrate(db, enable.reverse())
    assert flags(db, "events_2026_02") == (False, False)

    force = ForceRlsOp("tasks", schema="public")
    migrate(db, EnableRlsOp("tasks"), force)
    assert flags(db, "tasks") == (True, True)
    migrate(db, force.reverse())
    assert flags(db, "tasks") == (True, False)
    migrate(db, EnableRlsOp("tasks").reverse())
    assert flags(db, "tasks") == (False, False)


# --------------------------------------------------------------------------- tenant policies


def test_tenant_policy_ops_observe_enforce_and_back(db: str) -> None:
    total = one(db, "SELECT count(*) FROM projects")
    create = CreateTenantPolicyOp("projects", "account_id", role=APP, mode="observe")
    migrate(db, create, EnableRlsOp("projects"))
    assert policies(db, "projects") == ["rls_migrate_baseline", "rls_migrate_tenant"]
    # Observe: nothing is filtered, and reading other tenants' rows is recorded.
    assert visible(db, "projects", 1) == total
    assert visible(db, "projects", None) == total
    assert one(db, "SELECT count(*) > 0 FROM rls_migrate.violation_samples"
                   " WHERE table_name = 'public.projects'")
    wt = ("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'projects'::regclass"
          " AND tgname LIKE 'rls\\_migrate\\_wt\\_%'")
    assert one(db, wt) == 2  # write-truth, as the observe stage installs it

    migrate(db, EnforceTenantPolicyOp("projects", "account_id", role=APP))
    assert one(db, wt) == 0
    assert visible(db, "projects", 1) == one(db, "SELECT count(*) FROM projects"
                                                 " WHERE account_id = 1")
    assert visible(db, "projects", None) == 0
    with psycopg.connect(db, user=APP) as conn, pytest.raises(psycopg.errors.Error):
        with tenant_transaction(conn, 1):
            conn.execute("INSERT INTO projects VALUES (100, 2)")  # another tenant's row

    # The kill switch, then everything gone again.
    migrate(db, EnforceTenantPolicyOp("projects", "account_id", role=APP).reverse())
    assert visible(db, "projects", 2) == total
    assert one(db, wt) == 2
    migrate(db, EnableRlsOp("projects").reverse(), create.reverse())
    assert policies(db, "projects") == [] and one(db, wt) == 0
    assert one(db, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'observe_%'"
                   " AND pronamespace = 'rls_migrate'::regnamespace") == 0


def test_enforce_mode_policy_on_a_partitioned_table(db: str) -> None:
    migrate(db, CreateTenantPolicyOp("events", role=APP), EnableRlsOp("events"))
    mine = one(db, "SELECT count(*) FROM events WHERE tenant_id = 3")
    assert visible(db, "events", 3) == mine
    assert visible(db, "events_2026_02", None) == 0  # a partition named directly
    migrate(db, CreateTenantPolicyOp("events", role=APP).reverse())
    assert policies(db, "events_2026_01") == []


# --------------------------------------------------------------------------- the tenant column


def test_tenant_column_add_backfill_and_drop(db: str) -> None:
    add = AddTenantColumnOp("tasks", parent=PARENT, parent_column="account_id",
                            references="public.accounts(id)")
    backfill = BackfillTenantColumnOp("tasks", parent=PARENT, parent_column="account_id",
                                      batch_start_rows=500, batch_max_rows=500)
    migrate(db, add, backfill)
    assert one(db, "SELECT count(*) FROM tasks WHERE tenant_id IS NULL") == 0
    assert one(db, "SELECT count(*) FROM tasks t JOIN projects p ON p.id = t.project_id"
                   " WHERE t.tenant_id <> p.account_id") == 0
    assert one(db, "SELECT count(*) FROM rls_migrate.backfill_batches"
                   " WHERE table_name = 'public.tasks'") >= 6  # batched: 3,000 rows by 500
    assert one(db, "SELECT status FROM rls_migrate.step_state"
                   " WHERE step_id = 'backfill:public.tasks'") == "done"
    assert one(db, "SELECT NOT convalidated FROM pg_constraint"
                   " WHERE conname = 'tasks_tenant_id_rlsm_fkey'")
    with psycopg.connect(db, autocommit=True) as conn:  # the sync trigger fills new rows
        conn.execute("INSERT INTO tasks (id, project_id) VALUES (9999, 5)")
    assert one(db, "SELECT tenant_id FROM tasks WHERE id = 9999") == one(
        db, "SELECT account_id FROM projects WHERE id = 5")
    migrate(db, backfill)  # again: finished before, nothing to do
    assert one(db, "SELECT count(*) FROM rls_migrate.journal"
                   " WHERE step_id = 'backfill:public.tasks' AND outcome = 'skipped'") == 1

    migrate(db, backfill.reverse())
    assert one(db, "SELECT count(*) FROM rls_migrate.backfill_checkpoint") == 0
    migrate(db, add.reverse())
    assert one(db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'tasks'::regclass"
                   " AND attname = 'tenant_id' AND NOT attisdropped") == 0
    assert one(db, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'tasks'::regclass"
                   " AND NOT tgisinternal") == 0
    assert one(db, "SELECT count(*) FROM pg_proc WHERE proname = 'sync_tasks'") == 0


# --------------------------------------------------------------------------- indexes


def test_concurrent_index_ops_plain_partitioned_and_invalid_leftover(db: str) -> None:
    plain = CreateIndexConcurrentlyOp("tasks_title_idx", "tasks", ["title"])
    parted = CreateIndexConcurrentlyOp("events_tenant_at_idx", "events", ["tenant_id", "at"])
    with psycopg.connect(db, autocommit=True) as conn:
        # What a killed CREATE INDEX CONCURRENTLY leaves behind: an INVALID index.
        conn.execute("CREATE INDEX tasks_title_idx ON tasks (id)")
        conn.execute("UPDATE pg_index SET indisvalid = false"
                     " WHERE indexrelid = 'tasks_title_idx'::regclass")
    migrate(db, plain, parted)
    assert one(db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'tasks_title_idx'"
                   "::regclass")
    assert "(title)" in one(db, "SELECT pg_get_indexdef('tasks_title_idx'::regclass)")
    assert one(db, "SELECT count(*) FROM pg_inherits WHERE inhparent ="
                   " 'events_tenant_at_idx'::regclass") == 2
    assert one(db, "SELECT indisvalid FROM pg_index WHERE indexrelid ="
                   " 'events_tenant_at_idx'::regclass")
    migrate(db, plain.reverse(), parted.reverse())
    assert one(db, "SELECT count(*) FROM pg_class WHERE relname LIKE 'events_%_events_ten%'"
                   " OR relname IN ('tasks_title_idx', 'events_tenant_at_idx')") == 0


# --------------------------------------------------------------------------- lock care


def test_a_held_lock_is_retried_in_the_migration_transaction(db: str) -> None:
    rls_alembic.set_default_options(lock_timeout="30ms", retries=40, backoff_max="40ms")
    holder = psycopg.connect(db)
    try:
        holder.execute("LOCK TABLE tasks IN ACCESS SHARE MODE")  # a long read, say
        release = threading.Timer(0.4, holder.rollback)
        release.start()
        migrate(db, EnableRlsOp("tasks"))  # waits 30 ms at a time, never queues for long
        release.join()
        assert flags(db, "tasks") == (True, False)

        rls_alembic.set_default_options(lock_timeout="30ms", retries=2, backoff_max="40ms")
        holder.execute("LOCK TABLE projects IN ACCESS SHARE MODE")
        with pytest.raises(RlsOperationError) as failed:
            migrate(db, EnableRlsOp("accounts"), EnableRlsOp("projects"))
        assert re.search(r"op\.enable_rls gave up: could not take the ACCESS EXCLUSIVE lock "
                         r"on public\.projects within lock_timeout in 3 attempts", str(failed.value))
        assert "Held by: pid" in str(failed.value)
        assert flags(db, "accounts") == (False, False), "the migration rolled back as a whole"
    finally:
        holder.close()
        assert rls_alembic.set_default_options() == Options()


# --------------------------------------------------------------------------- the toolkit's schema


def test_toolkit_schema_from_inside_a_revision_keeps_alembic_op(db: str) -> None:
    def then_the_rest_of_the_revision() -> None:
        from alembic import op  # the module proxy the user's revision calls

        proxy: Any = op  # rls-migrate's operations are registered at import time
        proxy.enable_rls("tasks")
        proxy.execute("CREATE TABLE after_upgrade (id int)")

    upgrade = UpgradeRlsMigrateSchemaOp()
    migrate(db, upgrade, proxy=then_the_rest_of_the_revision)
    assert one(db, "SELECT version_num FROM rls_migrate.alembic_version") is not None
    assert flags(db, "tasks") == (True, False)
    assert one(db, "SELECT to_regclass('after_upgrade') IS NOT NULL")
    migrate(db, upgrade.reverse())
    assert one(db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'rls_migrate'") == 0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("operation", "message"), [
    (EnableRlsOp("nope"), "table 'nope' does not exist in the search path"),
    (EnableRlsOp("tasks", schema="nowhere"), "table 'tasks' does not exist in schema 'nowhere'"),
    (AddTenantColumnOp("tasks", parent="project_id -> public.nope(id)"),
     "table public.nope does not exist"),
    (AddTenantColumnOp("tasks", parent="project_id public.projects"),
     "expected 'column -> schema.table(column)'"),
    (CreateTenantPolicyOp("tasks", "tenant"),
     "op.create_tenant_policy: public.tasks has no column 'tenant' (columns: id, project_id,"),
    (BackfillTenantColumnOp("tasks", parent=PARENT, orphans="maybe"),
     "op.backfill_tenant_column: 1 validation error"),
])
def test_bad_input_is_one_clear_error(db: str, operation: MigrateOperation,
                                      message: str) -> None:
    with pytest.raises(RlsOperationError) as failed:
        migrate(db, operation)
    assert message in str(failed.value)
    with pytest.raises(RlsOperationError, match="mode must be 'observe' or 'enforce'"):
        CreateTenantPolicyOp("tasks", mode="strict")


def test_offline_mode_says_what_to_use_instead() -> None:
    context = MigrationContext.configure(dialect_name="postgresql", opts={"as_sql": True})
    with Operations.context(context) as op, pytest.raises(
            RlsOperationError, match=r"op\.enable_rls needs a live database connection"):
        op.enable_rls("tasks")  # type: ignore[attr-defined]  # registered at import time


# --------------------------------------------------------------------------- without BYPASSRLS


def test_migrations_as_the_owner_without_bypassrls(
        pg_server: servers.PostgresServer, db: str) -> None:
    """The safer setup: Alembic connects as the tables' owner, a plain role (no BYPASSRLS,
    no superuser), with ``row_security = off``; the application is another role. The owner
    backfills every row while the table is not FORCEd; once it is, a statement the policy
    would filter fails loudly instead of silently seeing part of the rows."""
    owner = f"rlsm_owner_{uuid.uuid4().hex[:8]}"
    dbname = servers.dbname_of(db)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOBYPASSRLS").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(dbname), sql.Identifier(owner)))
        for table in ("accounts", "projects", "tasks"):
            conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(
                sql.Identifier(table), sql.Identifier(owner)))
    as_owner = pg_server.dsn(dbname, user=owner, options="-c row_security=off")
    try:
        migrate(as_owner,
                AddTenantColumnOp("tasks", parent=PARENT, parent_column="account_id"),
                CreateTenantPolicyOp("tasks", role=APP),
                EnableRlsOp("tasks"),
                BackfillTenantColumnOp("tasks", parent=PARENT, parent_column="account_id",
                                       user_triggers="fire"))
        with psycopg.connect(as_owner) as conn:
            assert conn.execute("SELECT count(*) FROM tasks WHERE tenant_id IS NULL"
                                ).fetchone() == (0,)
        assert visible(db, "tasks", 2) == one(db, "SELECT count(*) FROM tasks t JOIN projects p"
                                                  " ON p.id = t.project_id WHERE account_id = 2")
        migrate(as_owner, ForceRlsOp("tasks"))
        with psycopg.connect(as_owner) as conn, pytest.raises(
                psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("SELECT count(*) FROM tasks")
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(
                sql.Identifier(owner)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(owner)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(owner)))


# --------------------------------------------------------------------------- doctor


def test_doctor_warns_about_a_bypassrls_migration_role(
        pg_server: servers.PostgresServer, db: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    migrator, web = f"rlsm_migrator_{suffix}", f"rlsm_web_{suffix}"
    dbname = servers.dbname_of(db)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN BYPASSRLS").format(sql.Identifier(migrator)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
            sql.Identifier(web), sql.Identifier(migrator)))
        conn.execute(sql.SQL("ALTER TABLE tasks OWNER TO {}").format(sql.Identifier(migrator)))
    try:
        as_migrator = pg_server.dsn(dbname, user=migrator)
        with psycopg.connect(as_migrator) as conn:
            findings = [f for f in diagnose(Catalog.load(conn), web) if f.topic == "migrations"]
        assert [f.level for f in findings] == ["warn", "warn"]
        assert f"the application role '{web}' is a member of '{migrator}', which has " \
               f"BYPASSRLS: it can SET ROLE {migrator}" in findings[0].message
        assert f"the migration role '{migrator}' has BYPASSRLS and owns 1 table(s)" in (
            findings[1].message)
        assert f"ALTER ROLE {migrator} NOBYPASSRLS" in findings[1].message

        cli = subprocess.run([sys.executable, "-m", "rls_migrate", "doctor", "--dsn",
                              as_migrator], capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert re.search(rf"^WARN  migrations the migration role '{migrator}' has BYPASSRLS",
                         cli.stdout, re.M), cli.stdout

        # The safer setup: the owner without BYPASSRLS, the application a separate role.
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} NOBYPASSRLS").format(sql.Identifier(migrator)))
            conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(migrator),
                                                             sql.Identifier(web)))
        with psycopg.connect(as_migrator) as conn:
            assert not [f for f in diagnose(Catalog.load(conn), web) if f.topic == "migrations"]
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("ALTER TABLE tasks OWNER TO CURRENT_USER")
            for role in (web, migrator):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

