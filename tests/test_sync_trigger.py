"""The sync trigger's rules and typing on shapes the sample database does not have (see
tests/shapes_helpers.py), on every major: an integer root under bigint children, text keys
and quoted names, a reverse one-to-one row written before its owner, ON DELETE SET NULL,
a writer whose tenant setting disagrees with the parent."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
import version_helpers
from shapes_helpers import checksums, execute_as_tenant, load, playbook, scalar

from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.errors import StepFailed
from rls_migrate.planner import build_plan
from rls_migrate.runner import apply_stage, rollback_to, status
from rls_migrate.testing import servers

DATA_STAGES = ("prepare", "add-column", "backfill", "constrain")


@pytest.fixture(scope="module")
def shapes_factory(make_factory):  # type: ignore[no-untyped-def]
    return make_factory(load, "shapes")


@pytest.fixture
def db(shapes_factory: servers.DatabaseFactory) -> Iterator[str]:
    dsn = shapes_factory.create()
    yield dsn
    shapes_factory.drop(servers.dbname_of(dsn))



def conflicts(dsn: str) -> list[tuple[str, str, str, str]]:
    with psycopg.connect(dsn) as conn:
        return [tuple(r) for r in conn.execute(
            "SELECT table_name, kept_tenant, other_tenant, source"
            " FROM rls_migrate.sync_conflicts ORDER BY id").fetchall()]


def test_plan_types_each_step_from_the_actual_columns(db: str) -> None:
    with psycopg.connect(db) as conn:
        catalog = Catalog.load(conn)
        plan = build_plan(catalog, playbook(), ["add-column", "backfill"])
        steps = {s.id: s for s in plan.steps}
        # The added column takes the root key's type (integer), not the playbook default.
        assert steps["add_column:public.issues"].render(conn) == [
            'ALTER TABLE "public"."issues" ADD COLUMN IF NOT EXISTS "tenant_id" integer']
        body = steps["sync_trigger:public.issues"].render(conn)[0]
        # projects.account_id is bigint: cast into the integer column, and the tenant
        # setting read as the row's own type.
        assert 'SELECT (p."account_id")::integer INTO rlsm_found' in body
        assert "rlsm_setting::integer" in body
        assert "SECURITY DEFINER" in body
        spec = steps["backfill:public.issues"].backfill
        assert spec is not None
        assert 'SET "tenant_id" = (p."account_id")::integer' in spec.batch_sql.as_string(conn)
        # The owned table: a trigger on the owner too.
        owner = steps['owner_trigger:public."DocumentMeta"']
        assert owner.table == QualifiedName("public", "Envelope")
        assert ('AFTER INSERT OR UPDATE OF "documentMetaId", "tenant_id" ON "public"."Envelope"'
                in owner.render(conn)[2])
        meta = steps['backfill:public."DocumentMeta"'].backfill
        assert meta is not None and meta.parent == QualifiedName("public", "Envelope")
        assert ('p."documentMetaId" = c."id"' in meta.single_statement_sql.as_string(conn))


def test_data_stages_on_shapes_idempotent_reversible_nothing_lost(db: str) -> None:
    pb = playbook()
    before = checksums(db, exclude=())
    for stage in DATA_STAGES:
        assert apply_stage(db, pb, stage).result.failed == 0, stage
        assert checksums(db) == before, stage
        again = apply_stage(db, pb, stage).result
        assert again.done == 0 and again.failed == 0, stage
    assert scalar(db, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                      "attrelid = 'issues'::regclass AND attname = 'tenant_id'") == "integer"
    # Every row that has a way to its tenant got it, through casts and text keys.
    assert scalar(db, 'SELECT count(*) FROM "Envelope" e JOIN "Team" t ON t.id = e."teamId"'
                      ' WHERE e.tenant_id IS DISTINCT FROM t."accountId"') == 0
    assert scalar(db, 'SELECT count(*) FROM "DocumentMeta" m JOIN "Envelope" e ON'
                      ' e."documentMetaId" = m.id WHERE m.tenant_id IS DISTINCT FROM'
                      ' e.tenant_id') == 0
    assert scalar(db, 'SELECT tenant_id FROM "DocumentMeta" WHERE id = \'cmeta_lonely\'') is None
    assert scalar(db, "SELECT count(*) FROM issues i JOIN projects p ON p.id = i.project_id"
                      " WHERE i.tenant_id IS DISTINCT FROM p.account_id") == 0
    # nullable: true kept the columns nullable; the others are NOT NULL.
    notnull = {r: scalar(db, "SELECT attnotnull FROM pg_attribute WHERE attrelid = %s::regclass"
                             " AND attname = 'tenant_id'", [r])
               for r in ('"Envelope"', '"AuditLog"', '"DocumentMeta"', "issues")}
    assert notnull == {'"Envelope"': True, '"AuditLog"': False, '"DocumentMeta"': False,
                       "issues": False}
    rollback_to(db, pb, "none", drop_columns=True)
    assert checksums(db, exclude=()) == before
    for stage in DATA_STAGES:
        assert apply_stage(db, pb, stage).result.failed == 0, stage
    assert checksums(db) == before


@pytest.fixture
def synced(db: str) -> str:
    pb = playbook()
    for stage in ("prepare", "add-column", "backfill"):
        assert apply_stage(db, pb, stage).result.failed == 0
    return db


def tenant_of(dsn: str, table: str, key: str) -> object:
    return scalar(dsn, f"SELECT tenant_id FROM {table} WHERE id = %s", [key])  # test-owned names


def test_parent_wins_over_the_setting_and_the_conflict_is_recorded(synced: str) -> None:
    project2 = scalar(synced, "SELECT min(id) FROM projects WHERE account_id = 2")
    execute_as_tenant(synced, 1,
                      f"INSERT INTO issues (id, project_id, title) VALUES (9001, {project2}, 'x')",
                      f"INSERT INTO issues (id, project_id, title) VALUES (9002, {project2}, 'y')")
    assert tenant_of(synced, "issues", "9001") == 2
    # One sample per transaction and table.
    assert conflicts(synced) == [("public.issues", "2", "1", "setting")]
    [reported] = status(synced, playbook())["sync_conflicts"]
    assert (reported["table_name"], reported["count"]) == ("public.issues", 1)
    assert reported["sample"][0].endswith(": kept 2, not 1 (setting)")
    # The same tenant in the setting is no conflict.
    execute_as_tenant(synced, 2,
                      f"INSERT INTO issues (id, project_id, title) VALUES (9003, {project2}, 'z')")
    assert len(conflicts(synced)) == 1


def test_rows_without_a_resolvable_parent_take_the_writers_tenant(synced: str) -> None:
    orphan_project = scalar(synced, "SELECT min(id) FROM projects WHERE account_id IS NULL")
    execute_as_tenant(synced, 3,
                      "INSERT INTO issues (id, project_id, title) VALUES (9101, NULL, 'a')",
                      f"INSERT INTO issues (id, project_id, title) VALUES (9102, {orphan_project},"
                      " 'b')")
    assert tenant_of(synced, "issues", "9101") == 3
    assert tenant_of(synced, "issues", "9102") == 3
    # No setting: nothing to take; a setting that is no integer: ignored, the write goes on.
    execute_as_tenant(synced, None,
                      "INSERT INTO issues (id, project_id, title) VALUES (9103, NULL, 'c')")
    with psycopg.connect(synced) as conn, conn.transaction():
        conn.execute("SELECT set_config('app.tenant_id', 'not-a-number', true)")
        conn.execute("INSERT INTO issues (id, project_id, title) VALUES (9104, NULL, 'd')")
    assert tenant_of(synced, "issues", "9103") is None
    assert tenant_of(synced, "issues", "9104") is None
    assert conflicts(synced) == []


def test_set_null_and_updates_to_null_keep_the_tenant(synced: str) -> None:
    logs = scalar(synced, """SELECT count(*) FROM "AuditLog" WHERE "envelopeId" = 'cenv5'""")
    assert logs > 0
    tenant = tenant_of(synced, '"Envelope"', "cenv5")
    execute_as_tenant(synced, None, """DELETE FROM "Envelope" WHERE id = 'cenv5'""")
    assert scalar(synced, """SELECT count(*) FROM "AuditLog" WHERE "envelopeId" IS NULL
                             AND tenant_id = %s AND data IN (SELECT 'event ' || g
                             FROM generate_series(1, 400) g WHERE g %% 10 <> 0
                             AND 1 + g %% 200 = 5)""", [tenant]) == logs
    issue = scalar(synced, "SELECT min(id) FROM issues WHERE tenant_id = 2")
    execute_as_tenant(synced, 1, f"UPDATE issues SET project_id = NULL WHERE id = {issue}")
    assert tenant_of(synced, "issues", str(issue)) == 2
    # Moving the row to another parent takes the new parent's tenant.
    project3 = scalar(synced, "SELECT min(id) FROM projects WHERE account_id = 3")
    execute_as_tenant(synced, 3, f"UPDATE issues SET project_id = {project3} WHERE id = {issue}")
    assert tenant_of(synced, "issues", str(issue)) == 3


def test_reverse_one_to_one_row_written_before_its_owner(synced: str) -> None:
    # Prisma's order: the DocumentMeta first, then the Envelope that points at it.
    execute_as_tenant(synced, 2,
                      """INSERT INTO "DocumentMeta" (id, subject) VALUES ('new1', 's')""",
                      """INSERT INTO "Envelope" (id, "teamId", "documentMetaId", title)
                         VALUES ('envnew1', 'cteam2', 'new1', 't')""")
    assert tenant_of(synced, '"DocumentMeta"', "new1") == 2
    # Written without a tenant setting: the owner fills it when it arrives.
    execute_as_tenant(synced, None,
                      """INSERT INTO "DocumentMeta" (id, subject) VALUES ('new2', 's')""")
    assert tenant_of(synced, '"DocumentMeta"', "new2") is None
    execute_as_tenant(synced, None, """INSERT INTO "Envelope" (id, "teamId", "documentMetaId",
                      title) VALUES ('envnew2', 'cteam3', 'new2', 't')""")
    assert tenant_of(synced, '"DocumentMeta"', "new2") == 3
    # The owner's tenant wins over the one the owned row was written with, recorded.
    execute_as_tenant(synced, 1,
                      """INSERT INTO "DocumentMeta" (id, subject) VALUES ('new3', 's')""")
    execute_as_tenant(synced, None, """INSERT INTO "Envelope" (id, "teamId", "documentMetaId",
                      title) VALUES ('envnew3', 'cteam2', 'new3', 't')""")
    assert tenant_of(synced, '"DocumentMeta"', "new3") == 2
    assert conflicts(synced) == [('public."DocumentMeta"', "2", "1", "owner")]
    # Re-pointing the owner fills the newly owned row; the old one keeps its tenant.
    execute_as_tenant(synced, None,
                      """INSERT INTO "DocumentMeta" (id, subject) VALUES ('new4', 's')""",
                      """UPDATE "Envelope" SET "documentMetaId" = 'new4' WHERE id = 'envnew2'""")
    assert tenant_of(synced, '"DocumentMeta"', "new4") == 3
    assert tenant_of(synced, '"DocumentMeta"', "new2") == 3


def test_rows_written_before_their_tenant_row_commit(synced: str) -> None:
    """A sign-up writes the new tenant's rows before the tenant row, in one transaction: the
    toolkit's tenant foreign key is checked at commit."""
    execute_as_tenant(synced, 4,
                      """INSERT INTO "DocumentMeta" (id, subject) VALUES ('signup', 's')""",
                      "INSERT INTO accounts VALUES (4, 'four')")
    assert tenant_of(synced, '"DocumentMeta"', "signup") == 4
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        execute_as_tenant(synced, 5,
                          """INSERT INTO "DocumentMeta" (id, subject) VALUES ('nobody', 's')""")


def _triggers(dsn: str) -> set[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        return {(r[0], r[1]) for r in conn.execute(
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal"
            " AND tgname LIKE 'rls_migrate_%'").fetchall()}


@pytest.mark.core_majors  # the drop's proof runs on every major in test_citus
def test_drop_retires_the_owner_trigger_and_add_column_leaves_them_retired(db: str) -> None:
    """sync_triggers: drop retires the owned table's owner trigger (on "Envelope") with its
    sync trigger, once the application writes the tenant; add-column run again does not
    bring either back; the index stage's rollback does, exactly as add-column made them."""
    pb = playbook()
    for stage in DATA_STAGES:
        assert apply_stage(db, pb, stage).result.failed == 0, stage
    made = _triggers(db)
    assert ('"Envelope"', 'rls_migrate_owns_DocumentMeta') in made
    options = pb.options.model_copy(update={"index": pb.options.index.model_copy(
        update={"sync_triggers": "watch", "sync_watch_min": 0.0})})
    watch = pb.model_copy(update={"options": options})
    drop = pb.model_copy(update={"options": options.model_copy(update={
        "index": options.index.model_copy(update={"sync_triggers": "drop"})})})
    assert apply_stage(db, watch, "index").result.failed == 0
    # The application now writes the tenant itself, in every watched table.
    with psycopg.connect(db) as conn:
        with conn.transaction():
            conn.execute("SELECT set_config('app.tenant_id', '2', true)")
            for statement in (
                    "INSERT INTO issues (project_id, title, tenant_id) VALUES (1, 'new', 2)",
                    'INSERT INTO "Envelope" (id, "teamId", title, tenant_id)'
                    " VALUES ('cenv_new', 'cteam2', 'new', 2)",
                    'INSERT INTO "DocumentMeta" (id, subject, tenant_id)'
                    " VALUES ('cmeta_new', 'new', 2)",
                    'INSERT INTO "AuditLog" (id, "envelopeId", data, tenant_id)'
                    " VALUES ('clog_new', 'cenv_new', 'new', 2)"):
                conn.execute(statement.encode())
        version_helpers.flush_stats(conn)
        conn.execute("SELECT 1")  # the flush happens when the backend goes idle
    before = checksums(db, exclude=())
    deadline = time.monotonic() + 10
    while True:  # before PostgreSQL 15 a stats collector relays the insert counters
        try:
            assert apply_stage(db, drop, "index").result.failed == 0
            break
        except StepFailed as exc:
            if "no row inserted" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert _triggers(db) == set()
    again = apply_stage(db, pb, "add-column")
    assert again.result.done == 0 and again.result.failed == 0
    assert any("retired its sync trigger and owner trigger" in n for n in again.plan.notes)
    assert _triggers(db) == set()
    rollback_to(db, drop, "constrain")
    assert _triggers(db) == made
    assert checksums(db, exclude=()) == before
    # Back as add-column makes them: a rerun finds them done.
    assert apply_stage(db, pb, "add-column").result.done == 0
