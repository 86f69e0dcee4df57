"""Write-truth (observe mode's triggers on UPDATE and DELETE), on every major: a recorded
statement's record says whether it changed another tenant's row; unrecorded statements and
roles RLS does not apply to record nothing; it never raises to the application; the gate
judges committed deletes by it (harmless or confirmed, not unconfirmable), rolled-back ones
from the server log; enforce removes the triggers, the kill switch puts them back, rollback
removes them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from test_observe import ObserveDb, cloned_db

from rls_migrate import samples
from rls_migrate.context import tenant_transaction
from rls_migrate.evidence import Violation
from rls_migrate.report import build_report
from rls_migrate.runner import apply_stage, rollback_to
from rls_migrate.testing import servers
from rls_migrate.write_evidence import TruthIndex, WriteTruth, parse_truth_line, read_truth_log

LEGACY_DELETE = ("DELETE FROM comments c USING issues i WHERE i.id = c.issue_id"
                 " AND i.project_id = %s AND c.body LIKE 'wt-draft%%' RETURNING c.body")


@pytest.fixture
def db(pg_server: servers.PostgresServer, make_factory: Any) -> Iterator[ObserveDb]:
    with cloned_db(pg_server, make_factory) as clone:
        clone.observe()
        yield clone


def truth_rows(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT application_name, table_name, operation, foreign_rows, row_tenant, kind,"
            " context, role_name FROM rls_migrate.write_truth ORDER BY id").fetchall()


def wt_triggers(dsn: str) -> set[tuple[str, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {(str(t), str(n)) for t, n in conn.execute(
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger"
            " WHERE tgname LIKE 'rls\\_migrate\\_wt\\_%'")}


def leaf_comment(db: ObserveDb, tenant: int) -> int:
    return int(db.scalar(
        "SELECT min(c.id) FROM comments c WHERE c.tenant_id = %s AND NOT EXISTS (SELECT 1"
        " FROM comments r WHERE r.parent_id = c.id) AND NOT EXISTS (SELECT 1 FROM attachments"
        " a WHERE a.comment_id = c.id)", [tenant]))


def test_write_truth_records_flagged_writes_and_the_gate_judges_by_it(db: ObserveDb) -> None:
    project = db.scalar("SELECT min(id) FROM projects WHERE account_id = 1")
    issue = db.scalar("SELECT min(id) FROM issues WHERE project_id = %s", [project])
    idor, rolled_back = leaf_comment(db, 2), leaf_comment(db, 3)
    with db.app("wt-scoped") as conn, tenant_transaction(conn, 1):  # nothing flags it
        conn.execute("UPDATE comments SET body = body WHERE tenant_id = 1")
        conn.execute("DELETE FROM comments WHERE tenant_id = 1 AND body = 'none such'")
    with db.app("wt-legacy") as conn, tenant_transaction(conn, 1):
        conn.execute("SET LOCAL enable_nestloop = off")  # a hash join that scans comments
        conn.execute("INSERT INTO comments (issue_id, body, created_at) VALUES (%s,"
                     " 'wt-draft', '2026-01-01')", [issue])
        assert conn.execute(LEGACY_DELETE, [project]).fetchall() == [("wt-draft",)]
    with db.app("wt-idor") as conn, tenant_transaction(conn, 1):
        assert conn.execute("DELETE FROM comments WHERE id = %s RETURNING id",
                            [idor]).fetchall() == [(idor,)]
    with db.app("wt-partition") as conn:  # no context, through the partitioned parent
        assert conn.execute("UPDATE events SET kind = kind WHERE account_id = 2").rowcount > 0
    with db.app("wt-rolled-back") as conn:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config('app.tenant_id', '1', true)")
            conn.execute("DELETE FROM comments WHERE id = %s", [rolled_back])
    with db.owner() as owner:  # RLS does not apply to the owner: nothing flags it
        owner.execute("UPDATE comments SET body = body WHERE tenant_id = 2")
        # The rolled-back delete's row goes later: replay finds nothing either way.
        owner.execute("DELETE FROM comments WHERE id = %s", [rolled_back])

    rows = truth_rows(db.dsn)
    assert [(r["application_name"], r["table_name"], r["operation"], r["foreign_rows"],
             r["row_tenant"], r["kind"], r["context"], r["role_name"]) for r in rows] == [
        ("wt-legacy", "public.comments", "delete", False, None, "wrong_tenant", "1",
         samples.APP_ROLE),
        ("wt-idor", "public.comments", "delete", True, "2", "wrong_tenant", "1",
         samples.APP_ROLE),
        # The statement trigger of the parent, told by the partition's row trigger.
        ("wt-partition", "public.events", "update", True, "2", "no_context", None,
         samples.APP_ROLE),
    ]

    log = db.server.log_path
    if log is not None:  # the rolled-back one is in the log only
        logged = [r for r in read_truth_log(log) if r.application_name == "wt-rolled-back"]
        assert [(r.table, r.operation, r.foreign, r.row_tenant) for r in logged] == [
            ("public.comments", "delete", True, "3")]
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        report = build_report(conn, db.playbook, None, logs=[log] if log else [],
                              snapshot=False, confirm_groups=True)
    assert [n for n in report.notes if n.startswith("write-truth: ")] == [
        f"write-truth: {4 if log else 3} recorded UPDATE/DELETE statement(s) were checked when"
        f" they changed their rows; {3 if log else 2} changed another tenant's rows"
        " (public.comments, public.events)"]
    verdicts = {(g.application_name, g.table, g.operation):
                (g.verdict.verdict, " / ".join([g.verdict.reason]
                                               + [s.reason for s in g.verdict.samples]))
                for g in report.groups if g.verdict is not None}
    legacy = verdicts.pop(("wt-legacy", "public.comments", "read"))
    assert legacy[0] == "harmless" and "write-truth" in legacy[1], legacy
    idor_verdict = verdicts.pop(("wt-idor", "public.comments", "read"))
    assert idor_verdict[0] == "confirmed" and "tenant 2's row" in idor_verdict[1], idor_verdict
    if log is not None:
        gone = verdicts.pop(("wt-rolled-back", "public.comments", "read"))
        assert gone[0] == "confirmed" and "tenant 3's row" in gone[1], gone
    assert {k: v[0] for k, v in verdicts.items() if k[0] == "wt-partition"} == {
        ("wt-partition", "public.events", "read"): "confirmed",
        ("wt-partition", "public.events", "write"): "confirmed"}

    # Never an error for the application: the table it writes into gone.
    with db.owner() as owner:
        owner.execute("ALTER TABLE rls_migrate.write_truth RENAME TO write_truth_away")
    try:
        with db.app("wt-no-table") as conn, tenant_transaction(conn, 1):
            assert conn.execute("DELETE FROM comments WHERE id = %s RETURNING id",
                                [leaf_comment(db, 2)]).rowcount == 1
    finally:
        with db.owner() as owner:
            owner.execute("ALTER TABLE rls_migrate.write_truth_away RENAME TO write_truth")

    # Enforce removes them (nothing flags a statement any more), the kill switch puts them
    # back, rollback of observe removes them.
    installed = wt_triggers(db.dsn)
    assert ("events", "rls_migrate_wt_stmt") in installed
    assert ("events", "rls_migrate_wt_row") not in installed  # its partitions have theirs
    assert ("events_2026_01", "rls_migrate_wt_row") in installed
    assert apply_stage(db.dsn, db.playbook, "enforce", force=True).result.failed == 0
    assert wt_triggers(db.dsn) == set()
    rollback_to(db.dsn, db.playbook, "observe")
    assert wt_triggers(db.dsn) == installed
    rollback_to(db.dsn, db.playbook, "index")
    assert wt_triggers(db.dsn) == set()


# --------------------------------------------------------------------------- no server

T0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def _truth(pid: int, start: float, end: float, foreign: bool, table: str = "public.t",
           statement: str = "DELETE FROM t WHERE id = $1") -> WriteTruth:
    return WriteTruth(T0 + dt.timedelta(seconds=end), T0 + dt.timedelta(seconds=start), pid,
                      table, "delete", foreign, "2" if foreign else None, "wrong_tenant", "1",
                      "app", "web", statement, "test")


def _recording(pid: int, at: float, statement: str = "DELETE FROM t WHERE id = $1"
               ) -> Violation:
    return Violation(T0 + dt.timedelta(seconds=at), "public.t", "read", "wrong_tenant", "app",
                     "app", "web", pid, statement, None, None, "1", "test")


def test_a_recording_links_to_the_statement_that_made_it() -> None:
    index = TruthIndex([_truth(7, 1, 2, False), _truth(7, 1, 2, True, "public.u"),
                        _truth(7, 3, 4, True), _truth(8, 0, 10, True),
                        _truth(7, 3, 4, True)])  # the same record from the log: once
    assert len(index) == 4
    assert {(t.table, t.foreign) for t in index.linked(_recording(7, 1.5))} == {
        ("public.t", False), ("public.u", True)}
    assert [t.statement_at for t in index.linked(_recording(7, 3.5))] == [
        T0 + dt.timedelta(seconds=3)]
    assert index.linked(_recording(7, 2.5)) == []  # between two statements: a read
    assert index.linked(_recording(7, 0.5)) == []
    assert index.linked(_recording(9, 1.5)) == []
    assert len(index.foreign_like("DELETE FROM t WHERE id = 42", "web", "wrong_tenant")) == 3
    assert index.foreign_like("DELETE FROM t WHERE id = 42", "cron", "wrong_tenant") == []


def test_a_log_line_cannot_be_forged_by_what_the_application_sends() -> None:
    body = ('{"v" : 1, "at" : "2026-12-03T12:00:01+00:00", "statement_at" :'
            ' "2026-12-03T12:00:00+00:00", "table" : "public.t", "op" : "delete",'
            ' "foreign" : false, "row_tenant" : null, "kind" : "wrong_tenant", "pid" : 7,'
            ' "statement" : "DELETE FROM t"}')
    real = parse_truth_line(f"2026-12-03 12:00:01 UTC [7] app@db LOG:  rls_migrate write-truth"
                            f" {body}")
    assert real is not None and (real.pid, real.foreign) == (7, False)
    quoted = f"2026-12-03 12:00:01 UTC [7] app@db STATEMENT:  rls_migrate write-truth {body}"
    assert parse_truth_line(quoted) is None
    assert parse_truth_line(f"\trls_migrate write-truth {body}") is None
    assert parse_truth_line(f"... LOG:  rls_migrate write-truth {body} trailing") is None
