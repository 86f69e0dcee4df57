"""The exact steps the planner produces for each shape of table in the sample database:
a direct table, one- and two-hop derived tables, a partitioned table, a table whose name
needs quoting and a table without a primary key. Statements are compared as the exact text
psycopg renders with a live connection (the text the SQL script and ``apply`` run)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
import version_helpers
from plan_helpers import Conn, all_sql, execute, load_catalog, q, sample_factory, sample_playbook

from rls_migrate import samples
from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.planner import build_plan
from rls_migrate.playbook import Playbook
from rls_migrate.steps import STAGES, Lock, Plan, Step
from rls_migrate.testing import servers

ISSUES_MATCH = "\"tenant_id\" = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::bigint)"


@dataclasses.dataclass(frozen=True)
class Sample:
    dsn: str
    catalog: Catalog
    playbook: Playbook
    plan: Plan


@pytest.fixture(scope="module")
def sample(
    pg_server: servers.PostgresServer,
    make_factory: Callable[..., servers.DatabaseFactory],
) -> Iterator[Sample]:
    factory = sample_factory(pg_server, make_factory)
    dsn = factory.create()
    catalog = load_catalog(dsn)
    playbook = sample_playbook(catalog)
    yield Sample(dsn, catalog, playbook, build_plan(catalog, playbook))
    factory.drop(servers.dbname_of(dsn))


@pytest.fixture
def conn(sample: Sample) -> Iterator[Conn]:
    with psycopg.connect(sample.dsn, autocommit=True) as connection:
        yield connection


def by_stage(plan: Plan, table: QualifiedName) -> dict[str, list[tuple[str, str]]]:
    """(id, kind) of the steps on ``table``, per stage that has any."""
    out: dict[str, list[tuple[str, str]]] = {}
    for stage in plan.stages:
        for step in stage.steps:
            if step.table == table:
                out.setdefault(stage.name, []).append((step.id, step.kind))
    return out


def step(plan: Plan, step_id: str) -> Step:
    found = [s for s in plan.steps if s.id == step_id]
    assert len(found) == 1, step_id
    return found[0]


def texts(s: Step, conn: Conn) -> list[str]:
    return [statement.as_string(conn) for statement in s.statements]


def observe_and_enforce(name: str) -> dict[str, list[tuple[str, str]]]:
    qualified = str(q(name))
    return {"observe": [(f"observe:{qualified}", "observe_policy"),
                        (f"observe-writes:{qualified}", "observe_write_truth")],
            "enforce": [(f"enforce:{qualified}", "enforce_policy")]}


# --------------------------------------------------------------------------- plan shape


def test_stages_in_order_and_steps_know_their_stage(sample: Sample) -> None:
    assert [s.name for s in sample.plan.stages] == list(STAGES)
    for stage in sample.plan.stages:
        for s in stage.steps:
            assert s.stage == stage.name, s.id
    assert [s.id for s in sample.plan.stage("prepare")] == ["prepare:schema"]


def test_step_ids_are_unique_and_deterministic(sample: Sample) -> None:
    ids = [s.id for s in sample.plan.steps]
    assert len(ids) == len(set(ids))
    # A second catalog read and a second plan give the same ids and the same SQL.
    again = build_plan(load_catalog(sample.dsn), sample_playbook(sample.catalog))
    assert [s.id for s in again.steps] == ids
    assert [s.render() for s in again.steps] == [s.render() for s in sample.plan.steps]


def test_backfill_runs_parents_before_children(sample: Sample) -> None:
    order = [s.table for s in sample.plan.stage("backfill")]
    assert set(order) == {q(n) for n in (*samples.DERIVED_TABLES, *samples.HINT_TABLES)}
    for s in sample.plan.stage("backfill"):
        assert s.backfill is not None and s.backfill.parent is not None
        if s.backfill.parent in order:
            assert order.index(s.backfill.parent) < order.index(s.table), s.id
    assert order.index(q("issues")) < order.index(q("comments")) < order.index(q("attachments"))
    assert order.index(q("issues")) < order.index(q("audit_log"))
    # The same parents-first order everywhere a derived table appears.
    for stage in ("add-column", "constrain"):
        tables = list(dict.fromkeys(s.table for s in sample.plan.stage(stage)))
        assert tables.index(q("issues")) < tables.index(q("comments")), stage


# --------------------------------------------------------------------------- table shapes


def test_direct_table_users(sample: Sample, conn: Conn) -> None:
    """account_id is already there and NOT NULL: nothing to add, fill or constrain; a
    (tenant, pk) index; the global unique email gets no twin but is a plan risk."""
    assert by_stage(sample.plan, q("users")) == {
        "index": [("create_index:public.users:users_account_id_rlsm_idx", "create_index")],
        **observe_and_enforce("users"),
    }
    index = step(sample.plan, "create_index:public.users:users_account_id_rlsm_idx")
    assert texts(index, conn) == [
        'DROP INDEX CONCURRENTLY IF EXISTS "public"."users_account_id_rlsm_idx"',
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "users_account_id_rlsm_idx" ON "public"."users"'
        ' ("account_id", "id")',
    ]
    assert (index.lock, index.transactional) == (Lock.SHARE_UPDATE_EXCLUSIVE, False)
    assert any(r.startswith("public.users: users_email_key UNIQUE (email) is global")
               and "tenant_unique: [[email]]" in r for r in sample.plan.risks)
    enforce = step(sample.plan, "enforce:public.users")
    assert texts(enforce, conn)[0] == (
        'ALTER POLICY "rls_migrate_tenant" ON "public"."users" USING ("account_id" = (SELECT '
        "NULLIF(current_setting('app.tenant_id', true), '')::bigint)) WITH CHECK (\"account_id\""
        " = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::bigint))")


def test_one_hop_derived_issues(sample: Sample, conn: Conn) -> None:
    t = "public.issues"
    assert by_stage(sample.plan, q("issues")) == {
        "add-column": [(f"add_column:{t}", "add_column"), (f"sync_trigger:{t}", "sync_trigger"),
                       (f"tenant_fk:{t}", "add_foreign_key")],
        "backfill": [(f"backfill:{t}", "backfill")],
        "constrain": [(f"not_null_check:{t}", "add_check"),
                      (f"validate_not_null:{t}", "validate_constraint"),
                      (f"set_not_null:{t}", "set_not_null"),
                      (f"drop_not_null_check:{t}", "drop_check"),
                      (f"validate_tenant_fk:{t}", "validate_constraint")],
        "index": [(f"pin_index_usage:{t}", "pin_index_usage"),
                  (f"create_index:{t}:issues_tenant_id_rlsm_idx", "create_index"),
                  (f"tenant_statistics:{t}", "tenant_statistics")],
        **observe_and_enforce("issues"),
    }
    plan = sample.plan
    statistics = step(plan, f"tenant_statistics:{t}")
    assert texts(statistics, conn) == [
        'CREATE STATISTICS IF NOT EXISTS "public"."issues_project_id_rlsm_dep" (dependencies)'
        ' ON "project_id", "tenant_id" FROM "public"."issues"',
        'ANALYZE "public"."issues" ("project_id", "tenant_id")']
    assert (statistics.lock, statistics.transactional) == (Lock.SHARE_UPDATE_EXCLUSIVE, True)
    assert texts(step(plan, f"add_column:{t}"), conn) == [
        'ALTER TABLE "public"."issues" ADD COLUMN IF NOT EXISTS "tenant_id" bigint']
    assert texts(step(plan, f"sync_trigger:{t}"), conn)[1:] == [
        'DROP TRIGGER IF EXISTS "rls_migrate_sync_issues" ON "public"."issues"',
        'CREATE TRIGGER "rls_migrate_sync_issues" BEFORE INSERT OR UPDATE OF "project_id" ON '
        '"public"."issues" FOR EACH ROW EXECUTE FUNCTION "rls_migrate"."sync_issues"()',
    ]
    body = texts(step(plan, f"sync_trigger:{t}"), conn)[0]
    assert body.startswith('CREATE OR REPLACE FUNCTION "rls_migrate"."sync_issues"() RETURNS '
                           "trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = "
                           "pg_catalog, pg_temp AS ")
    assert ('SELECT p."account_id" INTO rlsm_found FROM "public"."projects" AS p '
            'WHERE p."id" = NEW."project_id";') in body
    assert texts(step(plan, f"tenant_fk:{t}"), conn) == [
        'ALTER TABLE "public"."issues" ADD CONSTRAINT "issues_tenant_id_rlsm_fkey" FOREIGN KEY '
        '("tenant_id") REFERENCES "public"."accounts" ("id") DEFERRABLE INITIALLY DEFERRED '
        'NOT VALID']

    backfill = step(plan, f"backfill:{t}")
    spec = backfill.backfill
    assert spec is not None
    assert (spec.key_columns, spec.uses_ctid, spec.parent) == (("id",), False, q("projects"))
    # The batch gathers its rows' parents first (one index scan, hashed), then fills its
    # rows in key order: the key range twice.
    assert spec.batch_sql.as_string(conn) == (
        'UPDATE "public"."issues" AS c SET "tenant_id" = p."account_id" FROM "public"."projects"'
        ' AS p WHERE p."id" = ANY (ARRAY(SELECT k."project_id" FROM "public"."issues" AS k'
        ' WHERE "k"."id" > %s::bigint AND "k"."id" <= %s::bigint)) AND p."id" = c."project_id"'
        ' AND "c"."id" > %s::bigint AND "c"."id" <= %s::bigint AND c."tenant_id" IS NULL')
    assert spec.range_uses == 2
    assert spec.batch_settings == (("enable_nestloop", "off"), ("enable_mergejoin", "off"))
    assert (backfill.lock, backfill.transactional) == (Lock.ROW_EXCLUSIVE, True)
    assert any("issues_touch_updated_at" in r and "skipped" in r for r in backfill.risks)

    assert [texts(step(plan, f"{kind}:{t}"), conn)[0] for kind in (
        "not_null_check", "validate_not_null", "set_not_null", "drop_not_null_check",
        "validate_tenant_fk")] == [
        'ALTER TABLE "public"."issues" ADD CONSTRAINT "issues_tenant_id_rlsm_not_null" '
        'CHECK ("tenant_id" IS NOT NULL) NOT VALID',
        'ALTER TABLE "public"."issues" VALIDATE CONSTRAINT "issues_tenant_id_rlsm_not_null"',
        'ALTER TABLE "public"."issues" ALTER COLUMN "tenant_id" SET NOT NULL',
        'ALTER TABLE "public"."issues" DROP CONSTRAINT IF EXISTS "issues_tenant_id_rlsm_not_null"',
        'ALTER TABLE "public"."issues" VALIDATE CONSTRAINT "issues_tenant_id_rlsm_fkey"',
    ]
    assert texts(step(plan, f"create_index:{t}:issues_tenant_id_rlsm_idx"), conn) == [
        'DROP INDEX CONCURRENTLY IF EXISTS "public"."issues_tenant_id_rlsm_idx"',
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "issues_tenant_id_rlsm_idx" ON "public"."issues"'
        ' ("tenant_id", "id")',
    ]
    assert texts(step(plan, f"enforce:{t}"), conn)[0] == (
        f'ALTER POLICY "rls_migrate_tenant" ON "public"."issues" USING ({ISSUES_MATCH}) '
        f"WITH CHECK ({ISSUES_MATCH})")


def test_two_hop_derived_comments_take_the_key_from_issues(sample: Sample, conn: Conn) -> None:
    plan = sample.plan
    stages = by_stage(plan, q("comments"))
    assert [kind for _, kind in stages["add-column"]] == [
        "add_column", "sync_trigger", "add_foreign_key"]
    assert len(stages["constrain"]) == 5
    spec = step(plan, "backfill:public.comments").backfill
    assert spec is not None and spec.parent == q("issues")
    assert spec.single_statement_sql.as_string(conn) == (
        'UPDATE "public"."comments" AS c SET "tenant_id" = p."tenant_id" FROM "public"."issues"'
        ' AS p WHERE p."id" = c."issue_id" AND c."tenant_id" IS NULL')
    body = texts(step(plan, "sync_trigger:public.comments"), conn)[0]
    assert ('SELECT p."tenant_id" INTO rlsm_found FROM "public"."issues" AS p '
            'WHERE p."id" = NEW."issue_id";') in body
    # Three hops: attachments read comments, which are filled before them.
    attachments = step(plan, "backfill:public.attachments").backfill
    assert attachments is not None and attachments.parent == q("comments")


def test_partitioned_events(sample: Sample, conn: Conn) -> None:
    """An index ON ONLY the parent, then per partition a concurrent build and an attach."""
    plan = sample.plan
    parent_index = "events_account_id_rlsm_idx"
    expected = [(f"create_index:public.events:{parent_index}", "create_index_on_only")]
    for part in samples.EVENT_PARTITIONS:
        name = f"{part}_events_account_id_rl"
        expected += [(f"create_index:public.{part}:{name}", "create_index"),
                     (f"attach_index:public.{part}:{name}", "attach_index")]
    index_steps = [(s.id, s.kind) for s in plan.stage("index")
                   if s.table == q("events") or (s.table and s.table.name.startswith("events_"))]
    assert index_steps == expected
    assert len(samples.EVENT_PARTITIONS) == 6
    assert by_stage(plan, q("events")) == {
        "index": expected[:1], **observe_and_enforce("events")}
    # A query that names a partition uses the partition's own RLS: each partition gets the
    # policies too, right after its parent.
    for stage, kind in (("observe", "observe"), ("observe", "observe-writes"),
                        ("enforce", "enforce")):
        ids = [s.id for s in plan.stage(stage) if s.id.startswith(f"{kind}:")]
        start = ids.index(f"{kind}:public.events")
        assert ids[start: start + 7] == [f"{kind}:public.events"] + [
            f"{kind}:public.{p}" for p in samples.EVENT_PARTITIONS]
    assert any(n.startswith("public.events: its partitions get the same policies")
               for n in plan.stage("observe").notes)

    on_only = step(plan, expected[0][0])
    assert texts(on_only, conn) == [
        f'CREATE INDEX IF NOT EXISTS "{parent_index}" ON ONLY "public"."events" ("account_id")']
    assert (on_only.lock, on_only.transactional) == (Lock.SHARE, True)
    first = samples.EVENT_PARTITIONS[0]
    build = step(plan, expected[1][0])
    assert texts(build, conn) == [
        f'DROP INDEX CONCURRENTLY IF EXISTS "public"."{first}_events_account_id_rl"',
        f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{first}_events_account_id_rl" ON '
        f'"public"."{first}" ("account_id")',
    ]
    assert not build.transactional
    attach = step(plan, expected[2][0])
    assert texts(attach, conn) == [
        f'ALTER INDEX "public"."{parent_index}" ATTACH PARTITION '
        f'"public"."{first}_events_account_id_rl"']
    assert attach.lock is Lock.ACCESS_EXCLUSIVE and attach.needs_lock_timeout


def test_quoted_name_project_notes(sample: Sample, conn: Conn) -> None:
    plan = sample.plan
    t = 'public."Project Notes"'
    stages = by_stage(plan, q("Project Notes"))
    assert [i for i, _ in stages["add-column"]] == [
        f"add_column:{t}", f"sync_trigger:{t}", f"tenant_fk:{t}"]
    assert texts(step(plan, f"add_column:{t}"), conn) == [
        'ALTER TABLE "public"."Project Notes" ADD COLUMN IF NOT EXISTS "tenant_id" bigint']
    assert texts(step(plan, f"sync_trigger:{t}"), conn)[2] == (
        'CREATE TRIGGER "rls_migrate_sync_Project Notes" BEFORE INSERT OR UPDATE OF "projectId"'
        ' ON "public"."Project Notes" FOR EACH ROW EXECUTE FUNCTION '
        '"rls_migrate"."sync_Project Notes"()')
    spec = step(plan, f"backfill:{t}").backfill
    assert spec is not None
    assert spec.first_batch_sql.as_string(conn) == (
        'UPDATE "public"."Project Notes" AS c SET "tenant_id" = p."account_id" FROM '
        '"public"."projects" AS p WHERE p."id" = ANY (ARRAY(SELECT k."projectId" FROM '
        '"public"."Project Notes" AS k WHERE "k"."id" <= %s::bigint)) AND p."id" = c."projectId"'
        ' AND "c"."id" <= %s::bigint AND c."tenant_id" IS NULL')
    assert texts(step(plan, f"validate_not_null:{t}"), conn) == [
        'ALTER TABLE "public"."Project Notes" VALIDATE CONSTRAINT '
        '"Project Notes_tenant_id_rlsm_not_null"']
    index_id = f"create_index:{t}:Project Notes_tenant_id_rlsm_idx"
    assert texts(step(plan, index_id), conn)[1] == (
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "Project Notes_tenant_id_rlsm_idx" ON '
        '"public"."Project Notes" ("tenant_id", "id")')
    # Every done check (regclass literals included) runs against the real table; the
    # backfill's reads the tenant column, which does not exist before add-column.
    for s in plan.steps:
        if s.table == q("Project Notes") and s.kind != "backfill":
            assert s.done_check is not None, s.id
            row = execute(conn, s.done_check).fetchone()
            assert row == (False,), s.id


def test_table_without_primary_key_audit_log(sample: Sample, conn: Conn) -> None:
    plan = sample.plan
    t = "public.audit_log"
    stages = by_stage(plan, q("audit_log"))
    assert stages["constrain"] == [(f"validate_tenant_fk:{t}", "validate_constraint")]
    assert stages["index"] == [(f"create_index:{t}:audit_log_tenant_id_rlsm_idx", "create_index"),
                               (f"tenant_statistics:{t}", "tenant_statistics")]
    assert any(n.startswith(f"{t}: tenant_id stays nullable (a hint whose orphans are skipped")
               for n in plan.stage("constrain").notes)
    backfill = step(plan, f"backfill:{t}")
    spec = backfill.backfill
    assert spec is not None
    assert (spec.key_columns, spec.uses_ctid, spec.parent) == (("ctid",), True, q("issues"))
    assert spec.batch_sql.as_string(conn) == (
        'UPDATE "public"."audit_log" AS c SET "tenant_id" = p."tenant_id" FROM "public"."issues"'
        ' AS p WHERE p."id" = c."issue_id" AND c.ctid >= %s::tid AND c.ctid < %s::tid AND '
        'c."tenant_id" IS NULL')
    assert "no primary key: batches walk physical pages (ctid ranges)" in backfill.risks
    assert any("hint" in r and "orphans" in r for r in backfill.risks)
    assert f"{t} has no primary key: backfilled by physical ranges" in plan.risks
    texts_ = texts(step(plan, f"create_index:{t}:audit_log_tenant_id_rlsm_idx"), conn)
    assert texts_[1] == ('CREATE INDEX CONCURRENTLY IF NOT EXISTS "audit_log_tenant_id_rlsm_idx"'
                         ' ON "public"."audit_log" ("tenant_id")')


def test_twins_follow_index_usage(sample: Sample, pg_server: servers.PostgresServer,
                                  make_factory: Callable[..., servers.DatabaseFactory]) -> None:
    """An index that queries use gets a tenant-leading twin; an unused one does not."""
    factory = sample_factory(pg_server, make_factory)
    dsn = factory.create()
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SET enable_seqscan = off")
            c.execute("SELECT count(*) FROM issues WHERE created_at > '2025-06-01'")
            version_helpers.flush_stats(c)
            c.execute("SELECT 1")  # the flush happens when the backend goes idle
        used = None
        for _ in range(40):  # before PostgreSQL 15 a stats collector relays the counts
            catalog = load_catalog(dsn)
            used = catalog.table("public.issues").index("issues_created_at_idx")
            if used is not None and (used.scans or 0) >= 1:
                break
            time.sleep(0.1)
        assert used is not None and (used.scans or 0) >= 1
        plan = build_plan(catalog, sample.playbook, ["index"])
        issues = [s for s in plan.stage("index") if s.table == q("issues")]
        assert [s.id for s in issues] == [
            "pin_index_usage:public.issues",
            "create_index:public.issues:issues_tenant_id_rlsm_idx",
            "create_index:public.issues:issues_created_at_idx_rlsm_idx",
            "tenant_statistics:public.issues"]
        with psycopg.connect(dsn) as c:
            assert texts(issues[2], c)[1] == (
                'CREATE INDEX CONCURRENTLY IF NOT EXISTS "issues_created_at_idx_rlsm_idx" ON '
                '"public"."issues" ("tenant_id", "created_at")')
        assert "issues_created_at_idx (created_at) is used" in issues[2].why
        assert "issues_created_at_idx (" in issues[0].description
        # users has no index but its key and the unique email: no twin either way.
        assert [s.id for s in plan.stage("index") if s.table == q("users")] == [
            "create_index:public.users:users_account_id_rlsm_idx"]
    finally:
        factory.drop(servers.dbname_of(dsn))


@pytest.mark.parametrize(("prefix", "name", "suffix"), [
    ("", "users", "_" + "tenant_" + "t" * 56 + "_rlsm_fkey"),  # a 63-byte column in the suffix
    ("", "users", "_mandant_é_rlsm_fkey"),
    ("tenant_sync_", "数据表" * 10, ""),
    ("", "x" * 63, "_idx"),
])
def test_object_names_fit_and_stay_distinct(prefix: str, name: str, suffix: str) -> None:
    from rls_migrate.stages.common import object_name

    made = object_name(prefix, QualifiedName("s", name), suffix)
    assert len(made.encode()) <= 63 and made.isascii()
    assert made == object_name(prefix, QualifiedName("s", name), suffix)  # deterministic
    assert made != object_name(prefix, QualifiedName("s", name), suffix + "x")
    assert made != object_name(prefix, QualifiedName("t", name), suffix)


def test_backfill_notes_row_waits_longer_than_lock_timeout(sample: Sample) -> None:
    notes = sample.plan.stage("backfill").notes
    assert any("longer than lock_timeout (100 ms)" in n for n in notes), notes
    options = sample.playbook.options
    short = sample.playbook.model_copy(update={"options": options.model_copy(
        update={"backfill": options.backfill.model_copy(update={"batch_target": 80.0})})})
    notes = build_plan(sample.catalog, short, ["backfill"]).stage("backfill").notes
    assert not any("lock_timeout" in n for n in notes), notes


def test_step_sql_is_the_same_whenever_it_is_read(sample: Sample) -> None:
    """Steps build their SQL when it is first read (``plan`` in text form never reads it):
    what they build must depend only on what is fixed at planning time, never on when or in
    which order the statements are read."""
    forward = all_sql(build_plan(sample.catalog, sample.playbook), list)
    backward = all_sql(build_plan(sample.catalog, sample.playbook),
                        lambda steps: list(reversed(steps)))
    assert forward == backward
    assert len(forward) > 50 and all(statements for statements, *_ in forward.values())
    again = build_plan(sample.catalog, sample.playbook).steps[0]
    assert again.statements is again.statements  # built once, then kept
