"""The data preflight on real PostgreSQL, every major: plan's Risks list every table's rows
without a tenant (NULL keys, NULL links, orphans) with counts and sample keys; the backfill
(orphans: stop) and constrain (NOT NULL) refuse up front with those numbers, nothing
executed; per-table orphans and nullable."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from shapes_helpers import PLAYBOOK, load, playbook, scalar

from rls_migrate import preflight
from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.cli import cli
from rls_migrate.errors import GateClosed
from rls_migrate.planner import build_plan
from rls_migrate.preflight import run_preflight, with_preflight
from rls_migrate.runner import apply_stage, status
from rls_migrate.stages.common import PlanContext
from rls_migrate.testing import servers
from rls_migrate.testing.checksums import table_checksums


@pytest.fixture(scope="module")
def shapes_factory(make_factory):  # type: ignore[no-untyped-def]
    return make_factory(load, "preflight")


@pytest.fixture
def db(shapes_factory: servers.DatabaseFactory) -> Iterator[str]:
    dsn = shapes_factory.create()
    yield dsn
    shapes_factory.drop(servers.dbname_of(dsn))


def strict_playbook() -> str:
    """The shapes playbook without any nullable/orphans decision."""
    return re.sub(r",\s*(orphans: skip, )?nullable: true", "", PLAYBOOK)


def plan_risks(dsn: str, text: str = PLAYBOOK) -> list[str]:
    pb = playbook(text)
    with psycopg.connect(dsn, autocommit=True) as conn:
        catalog = Catalog.load(conn)
        return list(with_preflight(conn, catalog, pb, build_plan(catalog, pb)).risks)


def test_plan_lists_every_tables_rows_without_a_tenant(db: str) -> None:
    risks = [r for r in plan_risks(db, strict_playbook()) if "row(s)" in r]
    by_table = {r.split(":")[0]: r for r in risks}
    # Every table is reported, not only the first one with orphans.
    assert sorted(by_table) == ['public."AuditLog"', 'public."DocumentMeta"', "public.issues",
                                "public.projects"]
    projects = by_table["public.projects"]
    assert "2 row(s) with a NULL tenant key account_id (sample keys: 31, 32)" in projects
    assert "constrain refuses NOT NULL while they remain" in projects
    assert "tables.public.projects.nullable: true" in projects
    issue_lines = [r for r in risks if r.startswith("public.issues")]
    assert any("2 row(s) whose link (project_id) is NULL" in r for r in issue_lines)
    # The issue under a project without an account: an orphan two hops up.
    assert any("1 orphan row(s): their link names no row of public.projects that has a tenant"
               in r and "the backfill stops on them (orphans: stop" in r for r in issue_lines)
    assert "40 row(s) whose link (envelopeId) is NULL" in by_table['public."AuditLog"']
    assert ("1 orphan row(s): no row of public.\"Envelope\" points at them (sample keys: "
            "cmeta_lonely)") in by_table['public."DocumentMeta"']


def test_decided_tables_say_what_happens_to_their_rows(db: str) -> None:
    risks = plan_risks(db)
    issues = [r for r in risks if r.startswith("public.issues")]
    assert issues and all("the backfill leaves them empty (orphans: skip)" in r
                          and "stay without a tenant (nullable)" in r and "admin roles" in r
                          for r in issues)


def test_backfill_refuses_up_front_listing_every_stop_table(db: str) -> None:
    pb = playbook(strict_playbook())
    for stage in ("prepare", "add-column"):
        apply_stage(db, pb, stage)
    with pytest.raises(GateClosed) as refused:
        apply_stage(db, pb, "backfill")
    message = refused.value.message
    assert message.startswith("backfill refused, nothing executed")
    for table in ("public.issues", 'public."AuditLog"', 'public."DocumentMeta"'):
        assert f"\n  {table}: " in message, table
    # Nothing executed: no checkpoint, no row filled.
    assert status(db, pb)["backfill"] == {}
    assert scalar(db, 'SELECT count(*) FROM "Envelope" WHERE tenant_id IS NOT NULL') == 0


def test_constrain_refuses_up_front_with_counts_and_samples(db: str) -> None:
    # Orphans skipped by the backfill, but nobody said the columns may stay nullable.
    text = re.sub(r",\s*nullable: true", "", PLAYBOOK)
    pb = playbook(text)
    for stage in ("prepare", "add-column", "backfill"):
        assert apply_stage(db, pb, stage).result.failed == 0
    before = table_checksums(psycopg.connect(db), exclude_columns=())
    with pytest.raises(GateClosed) as refused:
        apply_stage(db, pb, "constrain")
    message = refused.value.message
    assert message.startswith("constrain refused, nothing executed: NOT NULL cannot be added")
    assert "public.projects: 2 row(s) with a NULL tenant key account_id (sample keys: 31, 32)" \
        in message
    assert "public.issues: 3 row(s) with tenant_id NULL" in message
    assert 'public."AuditLog": 40 row(s) with tenant_id NULL' in message
    assert "\n  public.\"Envelope\": " not in message  # every envelope has its tenant
    # Nothing executed: no check constraint, the data as it was.
    assert scalar(db, "SELECT count(*) FROM pg_constraint WHERE conname LIKE '%rlsm_not_null'") == 0
    assert table_checksums(psycopg.connect(db), exclude_columns=()) == before
    # Deciding nullable: true for those tables lets constrain through; the others get NOT NULL.
    assert apply_stage(db, playbook(PLAYBOOK), "constrain").result.failed == 0
    assert scalar(db, "SELECT attnotnull FROM pg_attribute WHERE attrelid = '\"Envelope\"'"
                      "::regclass AND attname = 'tenant_id'") is True
    assert scalar(db, "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'projects'"
                      "::regclass AND attname = 'account_id'") is False


def test_findings_follow_the_data_after_the_backfill(db: str) -> None:
    pb = playbook()
    for stage in ("prepare", "add-column", "backfill"):
        apply_stage(db, pb, stage)
    with psycopg.connect(db, autocommit=True) as conn:
        found = {str(f.table): f for f in run_preflight(conn, PlanContext(Catalog.load(conn), pb))}
    envelope = found['public."Envelope"']
    assert (envelope.null_keys, envelope.null_links, envelope.orphans) == (0, 0, 0)
    issues = found["public.issues"]
    assert (issues.null_keys, issues.null_links, issues.orphans) == (3, 2, 1)


def test_a_table_over_the_timeout_is_unchecked_and_the_rest_of_its_batch_counted(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tables are counted together in one statement; one that cannot be read in time
    # (here: locked by another session, so deterministic) times the batch out, and each
    # table is counted again on its own: only that one is reported unchecked.
    pb = playbook(strict_playbook())
    with psycopg.connect(db, autocommit=True) as conn:
        ctx = PlanContext(Catalog.load(conn), pb)
        before = {str(f.table): f for f in run_preflight(conn, ctx)}
        monkeypatch.setattr(preflight, "STATEMENT_TIMEOUT_MS", 200)
        with psycopg.connect(db) as locker:
            locker.execute('LOCK TABLE "AuditLog" IN ACCESS EXCLUSIVE MODE')
            after = {str(f.table): f for f in run_preflight(conn, ctx)}
            locker.rollback()
        restored = conn.execute("SHOW statement_timeout").fetchone()
    assert restored == ("0",)  # the session's own setting is back
    locked = 'public."AuditLog"'
    assert after[locked].unchecked == "not checked: longer than 0.2 s"
    assert before[locked].unchecked is None and before[locked].null_links == 40
    assert {t: f for t, f in after.items() if t != locked} == \
        {t: f for t, f in before.items() if t != locked}
    assert before["public.issues"].orphans == 1


def test_tables_judged_empty_without_a_scan_are_exactly_those_without_rows(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute('CREATE TABLE "EmptyNow" (id int)')
        conn.execute('CREATE TABLE "EmptiedNow" (id int)')
        conn.execute('INSERT INTO "EmptiedNow" SELECT 1')
        conn.execute('DELETE FROM "EmptiedNow"')  # its page remains: counted, found empty
        catalog = Catalog.load(conn)
        entries = list(PlanContext(catalog, playbook()).tenant_tables)
        extra = [dataclasses.replace(entries[0], qname=q, table=catalog.tables[q])
                 for q in (QualifiedName("public", "EmptyNow"),
                           QualifiedName("public", "EmptiedNow"))]
        judged = preflight._empty_now(conn, [*extra, *entries])
        really = {e.qname for e in [*extra, *entries] if conn.execute(
            sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(e.ident)).fetchone() == (True,)}
    assert QualifiedName("public", "EmptyNow") in judged and judged <= really
    assert QualifiedName("public", "EmptiedNow") not in judged


def test_cli_plan_shows_the_preflight_and_can_skip_it(db: str) -> None:
    runner = CliRunner()
    path = "/tmp/rlsm-preflight-playbook.yaml"
    with open(path, "w") as fh:
        fh.write(PLAYBOOK)
    result = runner.invoke(cli, ["plan", path, "--dsn", db, "--stage", "constrain"])
    assert result.exit_code == 0, result.output
    assert "public.projects: 2 row(s) with a NULL tenant key account_id" in result.output
    skipped = runner.invoke(cli, ["plan", path, "--dsn", db, "--stage", "constrain",
                                 "--no-preflight"])
    assert skipped.exit_code == 0 and "NULL tenant key" not in skipped.output
