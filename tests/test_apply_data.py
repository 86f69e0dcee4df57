"""apply / status / rollback of the data stages on the sample database, on every major:
idempotent, reversible, and nothing lost (checksums of every non-tenant column)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from rls_migrate import samples
from rls_migrate.catalog import Catalog
from rls_migrate.demo import sample_playbook as init_playbook
from rls_migrate.errors import GateClosed, StepFailed
from rls_migrate.playbook import Playbook
from rls_migrate.runner import apply_stage, rollback_to, status
from rls_migrate.testing import servers
from rls_migrate.testing.checksums import table_checksums

# Version-agnostic (the toolkit's own logic over SQL every major runs alike): the core
# majors only, unless RLS_MIGRATE_TEST_ALL_MAJORS=1 (see tests/conftest.py).
pytestmark = pytest.mark.core_majors


DATA_STAGES = ("prepare", "add-column", "backfill", "constrain")


@pytest.fixture(scope="module")
def sample_factory(make_factory):  # type: ignore[no-untyped-def]
    return make_factory(lambda dsn: samples.load(dsn, scale=0.2), "applydata")


@pytest.fixture
def sample_db(sample_factory: servers.DatabaseFactory) -> Iterator[str]:
    dsn = sample_factory.create()
    yield dsn
    sample_factory.drop(servers.dbname_of(dsn))


def sample_playbook(dsn: str, orphans: str = "skip") -> Playbook:
    with psycopg.connect(dsn) as conn:
        playbook = init_playbook(Catalog.load(conn))
    backfill = playbook.options.backfill.model_copy(update={"orphans": orphans,
                                                            "batch_start_rows": 200})
    options = playbook.options.model_copy(update={"backfill": backfill})
    return playbook.model_copy(update={"options": options})


def checksums(dsn: str, exclude: tuple[str, ...] = ("tenant_id",)) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return table_checksums(conn, exclude_columns=exclude)


def tenant_columns(dsn: str) -> dict[str, tuple[int, bool]]:
    """table -> (rows without a tenant, NOT NULL?) for every added tenant_id column."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for (table,) in conn.execute(
            "SELECT attrelid::regclass::text FROM pg_attribute WHERE attname = 'tenant_id'"
            " AND attnum > 0 AND NOT attisdropped AND attrelid IN (SELECT oid FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace AND NOT relispartition)"
        ).fetchall():
            nulls = conn.execute(f"SELECT count(*) FROM {table} WHERE tenant_id IS NULL"  # catalog-quoted name
                                 ).fetchone()
            notnull = conn.execute(
                "SELECT attnotnull FROM pg_attribute WHERE attrelid = %s::regclass"
                " AND attname = 'tenant_id'", [table]).fetchone()
            assert nulls and notnull
            out[table] = (int(nulls[0]), bool(notnull[0]))
    return out


def test_data_stages_apply_idempotent_and_roll_back(sample_db: str) -> None:
    playbook = sample_playbook(sample_db)
    before = checksums(sample_db, exclude=())
    for stage in DATA_STAGES:
        first = apply_stage(sample_db, playbook, stage).result
        assert first.failed == 0
        # Nothing lost: every non-tenant column is unchanged after every stage.
        assert checksums(sample_db) == before
        second = apply_stage(sample_db, playbook, stage).result
        assert second.done == 0 and second.failed == 0, "a rerun changes nothing"
        assert second.skipped == len(second.outcomes)
    columns = tenant_columns(sample_db)
    assert set(columns) == {"issues", "comments", "attachments", "audit_log", "issue_labels",
                            '"Project Notes"'}
    for table, (nulls, notnull) in columns.items():
        if table == "audit_log":
            assert nulls > 0 and not notnull  # orphans skipped: stays nullable
        else:
            assert (nulls, notnull) == (0, True), table
    # Every derived row carries its parent's tenant.
    with psycopg.connect(sample_db) as conn:
        wrong = conn.execute(
            "SELECT count(*) FROM comments c JOIN issues i ON i.id = c.issue_id"
            " JOIN projects p ON p.id = i.project_id WHERE c.tenant_id <> p.account_id"
        ).fetchone()
        assert wrong == (0,)
    report = status(sample_db, playbook)
    assert report["matrix"]["public.comments"]["constrain"] == "done"
    assert report["anomalies"][0]["table_name"] == "public.audit_log"
    assert report["anomalies"][0]["kind"] == "orphan"
    assert report["anomalies"][0]["count"] > 0

    rollback_to(sample_db, playbook, "backfill")
    assert all(not notnull for _, notnull in tenant_columns(sample_db).values())
    assert checksums(sample_db) == before
    rollback_to(sample_db, playbook, "none", drop_columns=True)
    assert tenant_columns(sample_db) == {}
    assert checksums(sample_db, exclude=()) == before
    # And forward again after a full rollback.
    for stage in DATA_STAGES:
        assert apply_stage(sample_db, playbook, stage).result.failed == 0
    assert checksums(sample_db) == before


def test_stage_order_is_enforced(sample_db: str) -> None:
    playbook = sample_playbook(sample_db)
    with pytest.raises(GateClosed, match="prepare"):
        apply_stage(sample_db, playbook, "add-column")
    apply_stage(sample_db, playbook, "prepare")
    with pytest.raises(GateClosed, match="add-column"):
        apply_stage(sample_db, playbook, "backfill")


def test_orphans_stop_the_backfill_up_front_with_counts_and_samples(sample_db: str) -> None:
    playbook = sample_playbook(sample_db, orphans="stop")
    for stage in ("prepare", "add-column"):
        apply_stage(sample_db, playbook, stage)
    with pytest.raises(GateClosed, match=r"audit_log: \d+ orphan row\(s\).*sample keys: "):
        apply_stage(sample_db, playbook, "backfill")
    # Refused before any batch: nothing filled, nothing checkpointed.
    assert status(sample_db, playbook)["backfill"] == {}
    with psycopg.connect(sample_db) as conn:
        assert conn.execute("SELECT count(*) FROM issues WHERE tenant_id IS NOT NULL"
                            ).fetchone() == (0,)


def test_the_runner_still_stops_on_orphans_the_preflight_did_not_see(sample_db: str) -> None:
    """Orphans that appear after the preflight (a parent deleted meanwhile) stop the
    backfill of that table with counts and samples, and are recorded."""
    from rls_migrate.executor import Executor
    from rls_migrate.journal import Journal
    from rls_migrate.planner import build_plan
    from rls_migrate.stages.backfill_runner import run_backfill

    playbook = sample_playbook(sample_db, orphans="stop")
    for stage in ("prepare", "add-column"):
        apply_stage(sample_db, playbook, stage)
    with psycopg.connect(sample_db, autocommit=True) as conn:
        plan = build_plan(Catalog.load(conn), playbook, ["backfill"])
        step = next(s for s in plan.steps if s.id == "backfill:public.audit_log")
        for parent in ("backfill:public.issues",):
            run_backfill(Executor(conn, playbook.options, Journal(conn)),
                         next(s for s in plan.steps if s.id == parent))
        with pytest.raises(StepFailed, match=r"audit_log: \d+ row\(s\) have no parent"):
            run_backfill(Executor(conn, playbook.options, Journal(conn)), step)
    orphan = status(sample_db, playbook)["anomalies"][0]
    assert orphan["kind"] == "orphan" and orphan["count"] >= 3 and len(orphan["sample"]) >= 3


@pytest.mark.core_majors  # the CLI over the stages the in-process test runs on every major
def test_cli_apply_status_rollback(sample_db: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    from rls_migrate.playbook import dump_playbook

    path = tmp_path / "app.yaml"
    path.write_text(dump_playbook(sample_playbook(sample_db)))
    cli = [sys.executable, "-c", "from rls_migrate.cli import main; main()"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args, "--dsn", sample_db], capture_output=True, text=True,
                              timeout=120)

    early = run("apply", str(path), "--stage", "backfill", "--yes")
    assert early.returncode == 3 and "prepare" in early.stderr and "Traceback" not in early.stderr
    for stage in DATA_STAGES:
        done = run("apply", str(path), "--stage", stage, "--yes")
        assert done.returncode == 0, done.stderr
        assert f"{stage}:" in done.stdout
    shown = run("status", str(path))
    assert shown.returncode == 0 and "public.comments" in shown.stdout
    assert "orphans in public.audit_log" in shown.stdout
    back = run("rollback", str(path), "--to", "add-column")
    assert back.returncode == 0, back.stderr
    assert "undone" in back.stdout


def test_add_column_warns_about_prepared_select_star(sample_db: str) -> None:
    """What the plan's add-column note says happens: a session that prepared `SELECT *`
    fails on it after the column appears (psycopg 3: every time, until the connection is
    replaced); a new connection is fine."""
    from rls_migrate.planner import build_plan
    from rls_migrate.stages.add_column import PREPARED_SELECT_STAR

    playbook = sample_playbook(sample_db)
    with psycopg.connect(sample_db, autocommit=True) as conn:
        plan = build_plan(Catalog.load(conn), playbook, ["add-column"])
    assert PREPARED_SELECT_STAR in plan.stage("add-column").notes
    query = "SELECT * FROM comments WHERE id = %s"
    with psycopg.connect(sample_db, autocommit=True) as app:
        for _ in range(6):  # psycopg prepares after 5 executions
            app.execute(query, [1]).fetchall()
        apply_stage(sample_db, playbook, "prepare")
        apply_stage(sample_db, playbook, "add-column")
        for _ in range(2):
            with pytest.raises(psycopg.errors.FeatureNotSupported,
                               match="cached plan must not change result type"):
                app.execute(query, [1]).fetchall()
    with psycopg.connect(sample_db, autocommit=True) as fresh:
        row = fresh.execute(query, [1]).fetchone()
        assert row is not None and "tenant_id" in [c.name for c in fresh.execute(
            query, [1]).description or []]


def test_rollback_undoes_tables_the_playbook_no_longer_plans(sample_db: str) -> None:
    """A table taken out of the playbook after its steps ran: rollback undoes them with the
    inverses the journal kept when they ran. Steps journaled without one (before schema
    revision 0003) are named in a warning and left in place."""
    from structlog.testing import capture_logs

    from rls_migrate.playbook import TablePlan

    playbook = sample_playbook(sample_db)
    apply_stage(sample_db, playbook, "prepare")
    apply_stage(sample_db, playbook, "add-column")
    tables = dict(playbook.tables)
    tables['public."Project Notes"'] = TablePlan(strategy="skip")
    with psycopg.connect(sample_db, autocommit=True) as conn:
        # As if issues' steps had been journaled by a toolkit without revision 0003.
        conn.execute("UPDATE rls_migrate.step_state SET inverse = NULL"
                     " WHERE table_name = 'public.issues'")
    tables["public.issues"] = TablePlan(strategy="skip")
    for name in ("public.comments", "public.attachments", "public.issue_labels",
                 "public.audit_log"):  # derived through issues: out too
        tables[name] = TablePlan(strategy="skip")
    smaller = playbook.model_copy(update={"tables": tables})
    with capture_logs() as logs:
        results = rollback_to(sample_db, smaller, "prepare")
    undone = {o.step_id for r in results for o in r.outcomes if o.outcome == "undone"}
    assert {'sync_trigger:public."Project Notes"', 'tenant_fk:public."Project Notes"',
            "sync_trigger:public.comments", "tenant_fk:public.comments"} <= undone, undone
    warned = [e for e in logs if e["event"] == "rollback.not_in_playbook"]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning"
    assert warned[0]["steps"] == ["add_column:public.issues", "sync_trigger:public.issues",
                                  "tenant_fk:public.issues"], warned[0]
    with psycopg.connect(sample_db) as conn:  # only issues' own trigger is left
        triggers = {r[0] for r in conn.execute(
            "SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname LIKE 'rls_migrate%'")}
    assert triggers == {"issues"}


def test_rollback_leaves_steps_of_a_renamed_table_and_goes_on(sample_db: str) -> None:
    """Journaled statements name the table as it was: after a rename they would fail and
    stop the rollback (the kill switch), so they are left, named in the warning."""
    from structlog.testing import capture_logs


    playbook = sample_playbook(sample_db)
    apply_stage(sample_db, playbook, "prepare")
    apply_stage(sample_db, playbook, "add-column")
    with psycopg.connect(sample_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE attachments RENAME TO files")
    tables = dict(playbook.tables)
    tables.pop("public.attachments")
    smaller = playbook.model_copy(update={"tables": tables})
    with capture_logs() as logs:
        rollback_to(sample_db, smaller, "prepare")
    warned = [e for e in logs if e["event"] == "rollback.not_in_playbook"]
    assert len(warned) == 1
    assert warned[0]["steps"] == ["add_column:public.attachments",
                                  "sync_trigger:public.attachments",
                                  "tenant_fk:public.attachments"], warned[0]
    with psycopg.connect(sample_db) as conn:
        triggers = {r[0] for r in conn.execute(
            "SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname LIKE 'rls_migrate%'")}
    assert triggers == {"files"}
