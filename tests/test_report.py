"""report: statement normalization, the log-line parser (every format, forged shapes), grouping
and counting on a live observe database, windows measured from counter snapshots, server
logs as a second source counted once, the CLI's exit codes, and the enforce gate."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import gzip
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_observe import ObserveDb, cloned_db, flush_stats, sample_rows, wait_for_calls

from rls_migrate.cli import main
from rls_migrate.context import tenant_transaction
from rls_migrate.errors import GateClosed
from rls_migrate.gate import enforce_gate
from rls_migrate.playbook import dump_playbook
from rls_migrate.report import build_report, normalize_statement, parse_log_line, read_log
from rls_migrate.report_cli import render_json, render_markdown, render_text
from rls_migrate.runner import apply_stage
from rls_migrate.testing import servers

HOUR = dt.timedelta(hours=1)


@pytest.fixture
def db(pg_server: servers.PostgresServer, make_factory: Any) -> Iterator[ObserveDb]:
    with cloned_db(pg_server, make_factory) as clone:
        clone.observe()
        yield clone


def report_of(db: ObserveDb, since: dt.timedelta | None = HOUR, **kwargs: Any) -> Any:
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        return build_report(conn, db.playbook, since, **kwargs)


@dataclasses.dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_cli(db: ObserveDb, tmp_path: Path, capsys: pytest.CaptureFixture[str],
            *args: str) -> Ran:
    """``rls-migrate ARGS PLAYBOOK --dsn DSN`` through the console entry point, in process."""
    playbook = tmp_path / "app.yaml"
    if not playbook.exists():
        playbook.write_text(dump_playbook(db.playbook))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([*args, str(playbook), "--dsn", db.dsn])
    out = capsys.readouterr()
    return Ran(int(exited.value.code or 0), out.out, out.err)


# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(("statement", "normalized"), [
    ("SELECT * FROM issues WHERE id = 7", "SELECT * FROM issues WHERE id = ?"),
    ("SELECT *\n  FROM issues\tWHERE id =  8;", "SELECT * FROM issues WHERE id = ?"),
    ("select 1 -- trailing comment\n, 'it''s' /* block */", "select ?, ?"),
    ("UPDATE t SET a = E'x\\'y', b = $$z$$, c = $q$w$q$ WHERE d IN (1, 2, 3.5)",
     "UPDATE t SET a = ?, b = ?, c = ? WHERE d IN (?, ...)"),
    ('SELECT "col 1", t2.x FROM "T 9" t2 WHERE y = $1', 'SELECT "col 1", t2.x FROM "T 9" t2 WHERE y = ?'),
    ("INSERT INTO p (a, b) VALUES (2, 'x')", "INSERT INTO p (a, b) VALUES (?, ...)"),
    ("INSERT INTO p (a,b) VALUES ( $1 , $2 )", "INSERT INTO p (a, b) VALUES (?, ...)"),
])
def test_normalize_statement(statement: str, normalized: str) -> None:
    assert normalize_statement(statement) == normalized


def record(**fields: Any) -> dict[str, Any]:
    base = {"v": 1, "at": "2026-03-01T10:00:00.123456+00:00", "table": "public.issues",
            "op": "read", "kind": "no_context", "db": "app", "role": "app_user",
            "session_user": "app_user", "app": "web", "pid": 42, "row_tenant": "3",
            "context": None, "query_id": 7, "statement": "SELECT 1"}
    base.update(fields)
    return base


def stderr_line(obj: dict[str, Any], prefix: str = "2026-03-01 10:00:00.123 UTC [42] a@b ") -> str:
    # What RAISE LOG writes: json_build_object's spacing, all on one line.
    return f"{prefix}LOG:  rls_migrate violation {json.dumps(obj, separators=(', ', ' : '))}"


def test_parse_log_line_reads_the_recorder_line() -> None:
    found = parse_log_line(stderr_line(record()), "primary.log")
    assert found is not None
    assert (found.table, found.operation, found.kind, found.role, found.application_name,
            found.pid, found.database, found.source) == (
        "public.issues", "read", "no_context", "app_user", "web", 42, "app", "primary.log")
    assert found.at == dt.datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=dt.UTC)


def test_parse_log_line_cannot_be_forged_by_a_prefix_or_a_value() -> None:
    forged = json.dumps(record(app="forged", kind="wrong_tenant"))
    # An application_name in log_line_prefix (%a) that imitates the message...
    line = stderr_line(record(app="real"), prefix=f"2026 [1] rls_migrate violation {forged} ")
    found = parse_log_line(line)
    assert found is not None and (found.application_name, found.kind) == ("real", "no_context")
    # ...or a value that carries the marker: it stays inside its JSON string.
    sneaky = f'rls_migrate violation {{}}"}} rls_migrate violation {forged}'
    found = parse_log_line(stderr_line(record(app=sneaky, statement=sneaky)))
    assert found is not None and found.application_name == sneaky and found.kind == "no_context"
    # Lines that are not the recorder's, or not whole, are not records.
    for line in ("2026 [1] STATEMENT:  SELECT 1", stderr_line(record(v=99)),
                 stderr_line(record(op="delete")), stderr_line(record())[:-1],
                 stderr_line(record()) + " trailing", stderr_line(record(at="yesterday")),
                 "rls_migrate violation [1, 2]"):
        assert parse_log_line(line) is None, line
    # The application's own statement, which the server logs after the recorder's line
    # (STATEMENT:, or statement: with log_statement), quoting whatever the application sent.
    for line in (f"2026 [1] STATEMENT:  SELECT 1 -- rls_migrate violation {forged}",
                 f"2026 [1] LOG:  statement: SELECT 1 -- rls_migrate violation {forged}",
                 f"\trls_migrate violation {forged}", f"\tLOG:  rls_migrate violation {forged}"):
        assert parse_log_line(line) is None, line


def test_read_log_reads_stderr_gzip_csvlog_and_jsonlog(tmp_path: Path) -> None:
    lines = [stderr_line(record(pid=1)), "2026 [9] LOG:  checkpoint complete",
             "\tcontinuation of a STATEMENT", stderr_line(record(pid=2, statement="a\nb"))]
    plain = tmp_path / "postgresql.log"
    plain.write_text("\n".join(lines) + "\n")
    packed = tmp_path / "postgresql.log.1.gz"
    with gzip.open(packed, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    csv_path = tmp_path / "postgresql.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    message = "rls_migrate violation " + json.dumps(record(pid=3))
    writer.writerow(["2026-03-01 10:00:00 UTC", "app_user", "app", "3", "", "", "1", "SELECT",
                     "", "", "", "LOG", "00000", message, "", "", "", "", "", "",
                     "multi\nline statement", "", "", "web"])
    writer.writerow(["2026-03-01 10:00:01 UTC", "", "", "9", "", "", "", "", "", "", "", "LOG",
                     "00000", "checkpoint complete"])
    csv_path.write_text(buffer.getvalue())
    json_path = tmp_path / "postgresql.json"
    json_path.write_text(json.dumps({"timestamp": "2026-03-01", "pid": 4, "error_severity": "LOG",
                                     "message": "rls_migrate violation " + json.dumps(
                                         record(pid=4))}) + "\n"
                         + json.dumps({"message": "checkpoint complete"}) + "\n")
    assert [v.pid for v in read_log(plain)] == [1, 2]
    assert [v.pid for v in read_log(packed)] == [1, 2]
    assert [(v.pid, v.source) for v in read_log(csv_path)] == [(3, "postgresql.csv")]
    assert [v.pid for v in read_log(json_path)] == [4]


# --------------------------------------------------------------------------- on a database


def test_report_groups_counts_and_windows(db: ObserveDb) -> None:
    with db.app("api") as conn:
        for query in ("SELECT * FROM issues WHERE id = 1", "SELECT *  FROM issues\n WHERE id = 22",
                      "SELECT * FROM issues WHERE id = 333"):
            conn.execute(query).fetchall()
    with db.app("worker") as conn:
        for name in ("a", "b"):
            with tenant_transaction(conn, 1):
                conn.execute("INSERT INTO projects (account_id, name) VALUES (2, %s)", [name])
        flush_stats(conn)
    with db.owner() as owner:  # an old recording, outside a one-hour window
        owner.execute(
            "INSERT INTO rls_migrate.violation_samples (at, table_name, operation, kind,"
            " role_name, application_name, statement) VALUES (now() - interval '2 hours',"
            " 'public.labels', 'read', 'no_context', 'app_user', 'old-job', 'SELECT 1')")

    # Counters are flushed asynchronously (before 15 a collector relays them, late).
    wait_for_calls(db.dsn, lambda calls: sum(calls.values()) >= 5)
    report = report_of(db, HOUR)
    assert not report.clean and report.statements == 5
    assert [(g.table, g.operation, g.kind, g.role, g.application_name, g.statement, g.count)
            for g in report.groups] == [
        ("public.issues", "read", "no_context", "app_user", "api",
         "SELECT * FROM issues WHERE id = ?", 3),
        ("public.projects", "write", "wrong_tenant", "app_user", "worker",
         "INSERT INTO projects (account_id, name) VALUES (?, ...)", 2)]
    issues, projects = report.groups
    assert issues.first_seen < issues.last_seen
    assert issues.example.statement == "SELECT * FROM issues WHERE id = 333"  # the latest
    assert (projects.example.context, projects.example.row_tenant) == ("1", None)
    if issues.statement_calls is not None:  # pg_stat_statements, where it is installed
        assert issues.statement_calls == 3
    counted = {(c.table, c.operation): c.calls for c in report.counters if c.calls}
    assert counted == {("public.issues", "read"): 3, ("public.projects", "write"): 2}

    everything = report_of(db, None)
    assert [g.application_name for g in everything.groups] == ["api", "worker", "old-job"]

    text = render_text(report)
    assert "NOT CLEAN: 2 group(s) (2 not replayed), 5 recorded statement(s)" in text
    assert "SELECT * FROM issues WHERE id = ?" in text and "worker" in text
    markdown = render_markdown(report)
    assert "| 3 | public.issues | read | no_context | app_user | api |" in markdown
    data = json.loads(render_json(report))
    assert data["clean"] is False and data["statements"] == 5
    assert data["groups"][1]["example"]["context"] == "1"


def test_a_server_log_adds_what_samples_miss_and_counts_each_recording_once(
        db: ObserveDb, pg_server: servers.PostgresServer) -> None:
    if pg_server.log_path is None:
        pytest.skip(f"{pg_server.backend.name}: the server log is not readable here")
    with db.app("committed") as conn:
        conn.execute("SELECT count(*) FROM issues").fetchone()
    with db.app("read-only") as conn, conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute("SELECT count(*) FROM users").fetchone()
    assert [r["application_name"] for r in sample_rows(db.dsn)] == ["committed"]
    deadline = time.monotonic() + 5
    while "read-only" not in pg_server.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    report = report_of(db, HOUR, logs=[pg_server.log_path])
    # The same server log holds other databases' lines: only this database's count.
    assert [(g.application_name, g.count, sorted(g.sources)) for g in report.groups] == [
        ("committed", 1, ["samples", "server.log"]), ("read-only", 1, ["server.log"])]


def test_counters_are_measured_from_the_last_snapshot_before_the_window(db: ObserveDb) -> None:
    first = report_of(db, HOUR)  # saves a snapshot of the counters
    assert first.clean and first.counted_statements == 0
    time.sleep(1.2)
    with db.app("read-only-job") as conn:
        conn.execute("SET default_transaction_read_only = on")
        conn.execute("SELECT count(*) FROM labels").fetchone()
        flush_stats(conn)
    deadline = time.monotonic() + 10
    while True:
        second = report_of(db, dt.timedelta(seconds=1))
        if second.counted_statements or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # No sample (read-only), but the statement counted since the first snapshot.
    assert second.groups == () and second.counted_statements == 1 and not second.clean
    assert any("without a sample" in note for note in second.notes)
    time.sleep(1.2)
    third = report_of(db, dt.timedelta(seconds=1))  # measured from the second's snapshot
    assert third.clean and third.counted_statements == 0
    assert report_of(db, None).counted_statements == 1  # everything: since the stats reset


def test_cli_report_exit_codes(db: ObserveDb, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    clean = run_cli(db, tmp_path, capsys, "report", "--since", "1h", "--fail-on-violations")
    assert clean.returncode == 0, clean.stderr
    assert "clean: no would-be violation recorded" in clean.stdout
    with db.app("cli-check") as conn:
        conn.execute("SELECT count(*) FROM comments").fetchone()
    failing = run_cli(db, tmp_path, capsys, "report", "--fail-on-violations")
    assert failing.returncode == 3, failing.stderr
    assert "public.comments" in failing.stdout and "cli-check" in failing.stdout
    as_json = run_cli(db, tmp_path, capsys, "report", "--format", "json", "--since", "all")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["statements"] == 1
    for bad in (("--since", "soon"), ("--log", str(tmp_path / "missing.log")),
                ("--format", "yaml")):
        result = run_cli(db, tmp_path, capsys, "report", *bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.strip()


def test_enforce_gate_refuses_until_the_report_is_clean_or_forced(db: ObserveDb,
                                                                  tmp_path: Path) -> None:
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        assert enforce_gate(conn, db.playbook, False) is None  # clean: the gate is open
    with db.app("nightly-export") as conn:
        conn.execute("SELECT count(*) FROM comments").fetchone()
    with psycopg.connect(db.dsn, autocommit=True) as conn, pytest.raises(GateClosed) as closed:
        enforce_gate(conn, db.playbook, False)
    message = str(closed.value)
    assert "public.comments read no_context" in message and "'nightly-export'" in message
    assert "CONFIRMED" in message  # the gate replayed it: enforced, the count differs
    assert "rls-migrate report PLAYBOOK --confirm --since 24h" in message
    assert "--force" in message

    # apply configures process-wide logging: run it in its own process.
    playbook = tmp_path / "app.yaml"
    playbook.write_text(dump_playbook(db.playbook))
    refused = subprocess.run(
        [sys.executable, "-m", "rls_migrate", "apply", "--stage", "enforce", "--yes",
         str(playbook), "--dsn", db.dsn], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 3 and "enforce refused" in refused.stderr
    assert "Traceback" not in refused.stderr
    observing = db.scalar("SELECT count(*) FROM pg_policy WHERE polname = 'rls_migrate_tenant'"
                          " AND pg_get_expr(polqual, polrelid) LIKE '%observe_%'")
    assert observing > 0 and observing == db.scalar(
        "SELECT count(*) FROM pg_policy WHERE polname = 'rls_migrate_tenant'")

    forced = apply_stage(db.dsn, db.playbook, "enforce", force=True)
    assert forced.result.failed == 0
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT outcome, details FROM rls_migrate.journal"
                           " WHERE step_id = 'gate:enforce'").fetchone()
    assert row is not None and row[0] == "forced"
    assert row[1]["statements"] == 1 and "nightly-export" in row[1]["top"][0]
