"""Confirmation by replay, on every major: correct legacy statements that observe records
(a hash join scanning a child, a non-leakproof filter, a forced generic plan, ``= ANY`` over
a ``smallint[]``) replay harmless; a job without tenant context, an IDOR read and a
cross-tenant write are confirmed; what cannot be replayed says why; the enforce gate lets
only harmless groups through. Also the pure parts: statement analysis and the parameters
the server logs beside a recorder's line, in every log format."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_observe import ObserveDb, cloned_db

from rls_migrate.context import tenant_transaction
from rls_migrate.errors import GateClosed
from rls_migrate.evidence import parse_parameters, read_log
from rls_migrate.gate import enforce_gate
from rls_migrate.playbook import Playbook
from rls_migrate.replay import (
    CONFIRMED,
    CURSOR_WITH_PARAMETERS,
    HARMLESS,
    UNCONFIRMABLE,
    modifies_data,
    placeholder_count,
    statement_count,
)
from rls_migrate.report import Report, build_report
from rls_migrate.report_cli import render_text
from rls_migrate.runner import apply_stage
from rls_migrate.testing import servers
from rls_migrate.workload import Workload

# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("statement", "count", "params", "writes"), [
    ("SELECT * FROM t WHERE a = $1 AND b = $2", 1, 2, False),
    ("SELECT ';' FROM t; SELECT 2", 2, 0, False),
    ("select '$3', $$ ; $9 $$ -- ; $4\n FROM t WHERE x = $1;", 1, 1, False),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", 1, 0, True),
    ("SELECT * FROM t WHERE id = $1 FOR UPDATE", 1, 1, True),
    ("UPDATE t SET a = 1 FROM u WHERE u.id = t.u_id", 1, 0, True),
    ('SELECT "update" FROM t', 1, 0, False),
    ("VACUUM t", 1, 0, True),
])
def test_statement_analysis(statement: str, count: int, params: int, writes: bool) -> None:
    assert statement_count(statement) == count
    assert placeholder_count(statement) == params
    assert modifies_data(statement) is writes


def test_parse_parameters() -> None:
    context = ("PL/pgSQL function rls_migrate.observe_r_t(name) line 20 at RAISE\n"
               "unnamed portal with parameters: $1 = '5', $2 = 'it''s, $3 = ''x''', $3 = NULL")
    assert parse_parameters(context) == ("5", "it's, $3 = 'x'", None)
    assert parse_parameters('portal "p1" with parameters: $1 = \'a\nb\'') == ("a\nb",)
    assert parse_parameters("PL/pgSQL function x line 1 at RAISE") is None
    assert parse_parameters("unnamed portal with parameters: $2 = '1'") is None  # no $1


def _record(**fields: Any) -> str:
    base = {"v": 2, "at": "2026-03-01T10:00:00.123456+00:00", "table": "public.issues",
            "op": "read", "kind": "wrong_tenant", "db": "app", "dbid": "7/16384",
            "role": "app_user", "session_user": "app_user", "app": "web", "pid": 42,
            "context": "1", "query_id": 7, "read_only": False,
            "statement": "SELECT * FROM issues WHERE id = $1"}
    base.update(fields)
    return "rls_migrate violation " + json.dumps(base, separators=(", ", " : "))


def test_read_log_takes_parameters_from_the_recorders_own_context(tmp_path: Path) -> None:
    prefix = "2026-03-01 10:00:00.123 UTC [42] app_user@app "
    forged = "unnamed portal with parameters: $1 = 'forged'"
    lines = [
        f"{prefix}LOG:  {_record(pid=1)}",
        f"{prefix}CONTEXT:  PL/pgSQL function rls_migrate.observe_r_issues(name) line 20 at RAISE",
        "\tunnamed portal with parameters: $1 = '7'",
        f"{prefix}STATEMENT:  SELECT * FROM issues WHERE id = $1",
        f"{prefix}LOG:  {_record(pid=2)}",  # no parameters logged for this one
        f"{prefix}STATEMENT:  SELECT 1 -- {forged}",
        f"\t{forged}",
        f"{prefix}LOG:  {_record(pid=3)}",
        f"{prefix}CONTEXT:  PL/pgSQL function rls_migrate.observe_r_issues(name) line 20 at RAISE",
        "\tunnamed portal with parameters: $1 = 'multi",
        "\tline'",
    ]
    plain = tmp_path / "postgresql.log"
    plain.write_text("\n".join(lines) + "\n")
    assert [(v.pid, v.parameters, v.dbid) for v in read_log(plain)] == [
        (1, ("7",), "7/16384"), (2, None, "7/16384"), (3, ("multi\nline",), "7/16384")]

    buffer = io.StringIO()
    row = ["2026-03-01 10:00:00 UTC", "app_user", "app", "4"] + [""] * 7 + ["LOG", "00000",
           _record(pid=4), "", "", "", "", "PL/pgSQL function x line 1 at RAISE\n"
           "unnamed portal with parameters: $1 = '8'", "SELECT"]
    csv.writer(buffer).writerow(row)
    csv_path = tmp_path / "postgresql.csv"
    csv_path.write_text(buffer.getvalue())
    assert [(v.pid, v.parameters) for v in read_log(csv_path)] == [(4, ("8",))]

    json_path = tmp_path / "postgresql.json"
    json_path.write_text(json.dumps({"message": _record(pid=5), "context":
                                     "unnamed portal with parameters: $1 = '9'"}) + "\n")
    assert [(v.pid, v.parameters) for v in read_log(json_path)] == [(5, ("9",))]


# --------------------------------------------------------------------------- on a database


@pytest.fixture
def db(pg_server: servers.PostgresServer, make_factory: Any) -> Iterator[ObserveDb]:
    if pg_server.log_path is None:
        pytest.skip(f"{pg_server.backend.name}: the server log is not readable here")
    with cloned_db(pg_server, make_factory) as clone:
        clone.observe()
        observe = clone.playbook.options.observe.model_copy(
            update={"logs": (str(pg_server.log_path),)})
        clone.playbook = clone.playbook.model_copy(update={"options": clone.playbook.options
                                                           .model_copy(update={"observe":
                                                                               observe})})
        yield clone


def report_of(db: ObserveDb, **kwargs: Any) -> Report:
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        return build_report(conn, db.playbook, None, **kwargs)


def verdicts(report: Report) -> dict[str, tuple[str, str]]:
    """application_name -> (verdict, reason) of each group."""
    out = {}
    for g in report.groups:
        assert g.verdict is not None, g
        assert g.application_name is not None
        out[g.application_name] = (g.verdict.verdict, g.verdict.reason)
    return out


def legacy_traffic(db: ObserveDb, tenant: int, project: int) -> None:
    """Correct statements of an app scoped through parents, each recorded by observe."""
    with db.app("legacy-hash-join") as conn, tenant_transaction(conn, tenant):
        conn.execute("SET LOCAL enable_nestloop = off")
        conn.execute("SET LOCAL enable_mergejoin = off")
        conn.execute("SELECT c.id, c.body FROM comments c JOIN issues i ON i.id = c.issue_id"
                     " WHERE i.project_id = %s", [project]).fetchall()
    email = db.scalar("SELECT min(email) FROM users WHERE account_id = %s", [tenant])
    with db.app("legacy-lower") as conn, tenant_transaction(conn, tenant):
        conn.execute("SET LOCAL enable_indexscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        conn.execute("SELECT id FROM users WHERE lower(email) = lower(%s)",
                     [email.upper()]).fetchall()
    with db.app("legacy-generic") as conn, tenant_transaction(conn, tenant):
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        conn.execute("SET LOCAL enable_indexscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        ids = [int(r[0]) for r in conn.execute(
            "SELECT id FROM issues WHERE project_id = %s ORDER BY id LIMIT 12",
            [project]).fetchall()]
        # psycopg sends a list of small ints as smallint[]
        conn.execute("SELECT id, title FROM issues WHERE id = ANY(%s)", [ids],
                     prepare=True).fetchall()


def test_replay_tells_harmless_from_confirmed(db: ObserveDb) -> None:
    project = db.scalar("SELECT min(id) FROM projects WHERE account_id = 1")
    other_project = db.scalar("SELECT min(id) FROM projects WHERE account_id = 2")
    legacy_traffic(db, 1, project)
    with db.app("nightly") as conn:  # no tenant context: confirmed
        conn.execute("SELECT count(*) FROM comments").fetchone()
    with db.app("idor") as conn, tenant_transaction(conn, 1):  # another tenant's project
        conn.execute("SELECT name FROM projects WHERE id = %s", [other_project]).fetchall()
    with db.app("misfiled") as conn, tenant_transaction(conn, 1):
        conn.execute("INSERT INTO labels (account_id, name) VALUES (%s, %s)", [2, "x"])
    with db.app("batch") as conn:  # two statements in one string (simple protocol)
        conn.execute("SELECT count(*) FROM users; SELECT 1")

    before = report_of(db)
    assert all(g.verdict is None for g in before.groups)
    report = report_of(db, confirm_groups=True)
    found = verdicts(report)
    harmless = {"legacy-hash-join", "legacy-lower", "legacy-generic"}
    assert {k for k, (v, _) in found.items() if v == HARMLESS} == harmless, found
    assert found["nightly"][0] == CONFIRMED and "other values" in found["nightly"][1]
    assert found["idor"][0] == CONFIRMED
    assert found["misfiled"][0] == CONFIRMED and "by construction" in found["misfiled"][1]
    assert found["batch"] == (UNCONFIRMABLE, found["batch"][1])
    assert "several statements" in found["batch"][1]
    nightly = next(g for g in report.groups if g.application_name == "nightly")
    assert nightly.verdict is not None and nightly.verdict.deciding is not None
    assert nightly.verdict.deciding.enforce_rows == 1  # count(*) of nothing: one row, 0
    hash_join = next(g for g in report.groups if g.application_name == "legacy-hash-join")
    assert hash_join.example.parameters == (str(project),)  # from the server log
    assert any("tenant predicate" in a for a in hash_join.advice)
    text = render_text(report)
    assert "HARMLESS" in text and "CONFIRMED" in text and f"'{project}'" not in text
    assert f"$1 = <{len(str(project))} chars>" in text  # redacted by default
    assert f"'{project}'" in render_text(report, show_parameters=True)

    # Verdicts are stored: the next report has them without replaying.
    again = report_of(db)
    assert verdicts(again) == found
    # Nothing the replays did was recorded.
    assert sum(g.count for g in again.groups) == sum(g.count for g in report.groups)

    with psycopg.connect(db.dsn, autocommit=True) as conn, pytest.raises(GateClosed) as closed:
        enforce_gate(conn, db.playbook, False)
    message = str(closed.value)
    assert "CONFIRMED" in message and "'nightly'" in message and "UNCONFIRMABLE" in message
    assert "legacy-hash-join" not in message and "3 group(s) replayed harmless" in message


def test_the_gate_lets_harmless_groups_through(db: ObserveDb) -> None:
    project = db.scalar("SELECT min(id) FROM projects WHERE account_id = 2")
    legacy_traffic(db, 2, project)
    assert {g.application_name for g in report_of(db).groups} == {
        "legacy-hash-join", "legacy-lower", "legacy-generic"}
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        assert enforce_gate(conn, db.playbook, False) is None  # it confirms by itself
    assert apply_stage(db.dsn, db.playbook, "enforce").result.failed == 0


def test_unconfirmable_without_parameters(db: ObserveDb) -> None:
    project = db.scalar("SELECT min(id) FROM projects WHERE account_id = 1")
    legacy_traffic(db, 1, project)
    no_logs = dataclasses.replace(db)
    observe = db.playbook.options.observe.model_copy(update={"logs": ()})
    no_logs.playbook = db.playbook.model_copy(update={"options": db.playbook.options.model_copy(
        update={"observe": observe})})
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        report = build_report(conn, no_logs.playbook, None, confirm_groups=True)
    found = verdicts(report)
    assert found["legacy-hash-join"][0] == UNCONFIRMABLE
    assert "none were captured" in found["legacy-hash-join"][1]
    assert any("no server log was read" in n for n in report.notes)
    _ = Playbook  # the type, for readers: playbooks are immutable copies


def test_a_session_older_than_observe_logs_parameters_from_its_second_recording(
        db: ObserveDb) -> None:
    project = db.scalar("SELECT min(id) FROM projects WHERE account_id = 1")
    query = ("SELECT c.id FROM comments c JOIN issues i ON i.id = c.issue_id"
             " WHERE i.project_id = %s")
    with db.app("pooled") as conn:
        conn.execute("SET log_parameter_max_length_on_error = 0")  # as before observe
        for _ in range(2):
            with tenant_transaction(conn, 1):
                conn.execute("SET LOCAL enable_nestloop = off")
                conn.execute("SET LOCAL enable_mergejoin = off")
                conn.execute(query, [project]).fetchall()
        assert conn.execute("SELECT setting FROM pg_settings WHERE name ="
                            " 'log_parameter_max_length_on_error'").fetchone() == ("1024",)
    report = report_of(db, confirm_groups=True)
    (group,) = report.groups
    assert sorted(r.parameters is not None for r in group.records) == [False, True]
    assert group.verdict is not None and group.verdict.verdict == HARMLESS
    assert "1 recorded without parameters left out" in group.verdict.reason


def test_log_lines_are_keyed_by_database_identity(db: ObserveDb, tmp_path: Path) -> None:
    from rls_migrate.evidence import database_identity

    with psycopg.connect(db.dsn, autocommit=True) as conn:
        identity = database_identity(conn)
        now = conn.execute("SELECT now()").fetchone()
    assert identity is not None and now is not None
    at = now[0].isoformat()
    log = tmp_path / "old.log"
    log.write_text("\n".join(
        f"2026 [1] LOG:  {_record(db=db.name, dbid=dbid, app=app, at=at, pid=pid)}"
        for dbid, app, pid in ((identity, "this-one", 1),
                               ("7/1", "recreated-same-name", 2),  # another OID, same name
                               (None, "version-1-line", 3))) + "\n")
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        report = build_report(conn, db.playbook, None, logs=[log])
    assert {g.application_name for g in report.groups} == {"this-one", "version-1-line"}


def test_a_server_side_cursor_records_and_replays_its_query(db: ObserveDb) -> None:
    project = db.scalar("SELECT min(id) FROM projects WHERE account_id = 1")
    with db.app("streamed") as conn:
        for name in ("c_first_run", "c_second_run"):  # a new cursor name every run
            with tenant_transaction(conn, 1):
                conn.execute("SET LOCAL enable_nestloop = off")
                conn.execute("SET LOCAL enable_mergejoin = off")
                with conn.cursor(name=name) as cur:
                    cur.execute(f"SELECT c.id FROM comments c JOIN issues i ON i.id = c.issue_id"
                                f" WHERE i.project_id = {int(project)}")  # type: ignore[arg-type, unused-ignore]
                    cur.fetchmany(5)
    with db.app("streamed-bound") as conn, tenant_transaction(conn, 1):
        conn.execute("SET LOCAL enable_nestloop = off")
        conn.execute("SET LOCAL enable_mergejoin = off")
        with conn.cursor(name="c_bound") as cur:  # DECLARE ... $1, then FETCH
            cur.execute("SELECT c.id FROM comments c JOIN issues i ON i.id = c.issue_id"
                        " WHERE i.project_id = %s", [project])
            cur.fetchmany(5)
    report = report_of(db, confirm_groups=True)
    groups = {g.application_name: g for g in report.groups}
    group = groups["streamed"]  # one group: the query, not the cursor's name
    assert group.statement.startswith("DECLARE ? ") and group.count == 2
    assert group.verdict is not None and group.verdict.verdict == HARMLESS, group.verdict
    # Its parameters are in no log entry: unconfirmable, saying why.
    bound = groups["streamed-bound"].verdict
    assert bound is not None and bound.verdict == UNCONFIRMABLE
    assert bound.reason.startswith(CURSOR_WITH_PARAMETERS), bound.reason


def test_a_concurrent_update_of_the_same_row_is_a_candidate_replay_finds_harmless(
        db: ObserveDb) -> None:
    """Two requests of one tenant update the same row. The second waits for the first, then
    re-checks the row's new version (EvalPlanQual), and PostgreSQL evaluates every InitPlan
    the re-check may need first, the lazy recorder included: observe records a correct
    statement that no row of another tenant ever reached. Replay shows it harmless."""
    issue = db.scalar("SELECT min(id) FROM issues WHERE tenant_id = 1")
    update = "UPDATE issues SET status = %s WHERE id = %s"
    with db.app("first") as first, db.app("second") as second:
        first_pid = first.info.backend_pid
        with tenant_transaction(first, 1):
            first.execute(update, ["closed", issue])
            waiter = threading.Thread(target=_in_tenant, args=(second, 1, update,
                                                               ["open", issue]))
            waiter.start()
            with db.owner() as owner:  # until the second one waits for the first's row
                while not owner.execute(
                        "SELECT %s = ANY(pg_blocking_pids(pid)) FROM pg_stat_activity"
                        " WHERE application_name = 'second'", [first_pid]).fetchone() == (True,):
                    time.sleep(0.01)
        waiter.join()
    assert db.scalar("SELECT status FROM issues WHERE id = %s", [issue]) == "open"
    (group,) = report_of(db).groups
    assert (group.application_name, group.operation, group.kind) == (
        "second", "read", "wrong_tenant")
    assert group.statement == "UPDATE issues SET status = ? WHERE id = ?"
    found = verdicts(report_of(db, confirm_groups=True))
    assert found["second"][0] == HARMLESS, found
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        assert enforce_gate(conn, db.playbook, False) is None


def _in_tenant(conn: psycopg.Connection[Any], tenant: int, query: str,
               params: list[Any]) -> None:
    with tenant_transaction(conn, tenant):
        conn.execute(query, params)


def test_the_sample_workload_blocks_the_gate_on_the_forgotten_job_only(db: ObserveDb) -> None:
    """Correct traffic under load: whatever it records (requests of one tenant updating the
    same row, above) replays harmless; the nightly job without tenant context is confirmed,
    every run of it counted."""
    with Workload(db.app_dsn(), db.dsn, threads=2, forgotten_job=True,
                  forgotten_every_s=0.1) as load:
        time.sleep(1.0)
    stats = load.stats.summary()
    assert stats["errors"] == 0, stats["error_samples"]
    report = report_of(db, confirm_groups=True)
    blocking = [g for g in report.groups if not g.harmless]
    assert [(g.table, g.operation, g.kind, g.application_name, g.statement)
            for g in blocking] == [
        ("public.comments", "read", "no_context", "nightly-report",
         "SELECT count(*) FROM comments")]
    assert blocking[0].count == stats["forgotten_job_runs"]
    assert blocking[0].verdict is not None and blocking[0].verdict.verdict == CONFIRMED


def test_a_statement_enforcement_makes_slower_is_reported(db: ObserveDb) -> None:
    """The same rows, but the enforced plan is worse (stood in for by a sleep that only the
    enforced replay takes): harmless, and the report says how much slower; past the replay's
    statement_timeout it is unconfirmable, saying that observe answered in time."""
    project = db.scalar("SELECT min(id) FROM projects WHERE account_id = 1")
    for app, seconds in (("slower", 0.4), ("much-slower", 3)):
        with db.app(app) as conn, tenant_transaction(conn, 1):
            conn.execute("SET LOCAL enable_nestloop = off")
            conn.execute("SET LOCAL enable_mergejoin = off")
            conn.execute(
                "SELECT c.id FROM comments c JOIN issues i ON i.id = c.issue_id"
                " WHERE i.project_id = %s AND (SELECT count(*) FROM (SELECT pg_sleep(%s)"
                " WHERE current_setting('rls_migrate.mode', true) = 'enforce') s) >= 0",
                [project, seconds]).fetchall()
    observe = db.playbook.options.observe.model_copy(update={"replay_timeout": 1500.0})
    playbook = db.playbook.model_copy(update={"options": db.playbook.options.model_copy(
        update={"observe": observe})})
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        report = build_report(conn, playbook, None, confirm_groups=True)
    found = verdicts(report)
    assert found["slower"][0] == HARMLESS and "x slower enforced (" in found["slower"][1]
    assert "tenant_statistics" in found["slower"][1]
    slower = next(g for g in report.groups if g.application_name == "slower")
    assert slower.verdict is not None and slower.verdict.deciding is not None
    assert (slower.verdict.deciding.enforce_ms or 0) >= 400
    verdict, reason = found["much-slower"]
    assert verdict == UNCONFIRMABLE and "enforced replay timed out after 1500 ms" in reason
    assert "where observe answered in" in reason
