"""observe mode on the sample database, on every major, with the application connecting as
app_user (neither owner nor superuser): query results do not change, every kind of would-be
violation is recorded with the right table, operation, kind, role and application_name,
correct traffic never calls a recorder, a big wrong scan is recorded once per statement,
read-only transactions, hot standbys and roles without privileges keep working, clients see
no notice, and rollback leaves the catalog as it was.

The helpers at the top are shared with test_report.py."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import version_helpers
from psycopg import sql
from psycopg.rows import dict_row

from rls_migrate import samples
from rls_migrate.catalog import Catalog
from rls_migrate.context import tenant_transaction
from rls_migrate.demo import sample_playbook as init_playbook
from rls_migrate.playbook import Playbook
from rls_migrate.report import Violation, build_report, parse_log_line
from rls_migrate.runner import apply_stage, rollback_to
from rls_migrate.testing import servers

BEFORE_OBSERVE = ("prepare", "add-column", "backfill", "constrain", "index")
Conn = psycopg.Connection[Any]
Row = tuple[Any, ...]

# --------------------------------------------------------------------------- shared helpers


def sample_playbook(dsn: str) -> Playbook:
    """init's playbook for the sample database, with the decision a person makes."""
    with psycopg.connect(dsn) as conn:
        playbook = init_playbook(Catalog.load(conn))
    backfill = playbook.options.backfill.model_copy(update={"batch_start_rows": 500})
    return playbook.model_copy(update={"options": playbook.options.model_copy(
        update={"backfill": backfill})})


_TEMPLATES: dict[str, tuple[servers.DatabaseFactory, Playbook]] = {}


@dataclasses.dataclass
class ObserveDb:
    """A fresh clone of the indexed sample database (observe not applied yet)."""

    server: servers.PostgresServer
    dsn: str  # the owner (superuser)
    playbook: Playbook

    @property
    def name(self) -> str:
        return servers.dbname_of(self.dsn)

    def app_dsn(self, user: str = samples.APP_ROLE) -> str:
        return self.server.dsn(self.name, user=user)

    def observe(self) -> None:
        assert apply_stage(self.dsn, self.playbook, "observe").result.failed == 0

    @contextlib.contextmanager
    def app(self, application_name: str, user: str = samples.APP_ROLE,
            dsn: str | None = None) -> Iterator[Conn]:
        """An autocommit application connection; nothing may reach it as a notice."""
        notices: list[psycopg.errors.Diagnostic] = []
        with psycopg.connect(dsn or self.app_dsn(user), autocommit=True,
                             application_name=application_name) as conn:
            conn.add_notice_handler(notices.append)
            yield conn
        assert [(n.severity, n.message_primary) for n in notices] == []

    def owner(self) -> Conn:
        return psycopg.connect(self.dsn, autocommit=True)

    def scalar(self, query: str, params: list[Any] | None = None) -> Any:
        with self.owner() as conn:
            row = conn.execute(query, params).fetchone()
        assert row is not None
        return row[0]


@contextlib.contextmanager
def cloned_db(pg_server: servers.PostgresServer,
              make_factory: Callable[..., servers.DatabaseFactory]) -> Iterator[ObserveDb]:
    key = pg_server.dsn()
    if key not in _TEMPLATES:
        made: list[Playbook] = []

        def load_indexed(dsn: str) -> None:
            """The sample database with every stage before observe applied (the playbook
            comes from the untouched database, as a person would write it)."""
            samples.load(dsn, scale=0.2)
            made.append(sample_playbook(dsn))
            for stage in BEFORE_OBSERVE:
                assert apply_stage(dsn, made[0], stage).result.failed == 0

        factory = make_factory(load_indexed, "observe")
        _TEMPLATES[key] = (factory, made[0])
    factory, playbook = _TEMPLATES[key]
    dsn = factory.create()
    try:
        yield ObserveDb(pg_server, dsn, playbook)
    finally:
        factory.drop(servers.dbname_of(dsn))


def sample_rows(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT table_name, operation, kind, role_name, session_role, application_name,"
            " statement, row_tenant, context FROM rls_migrate.violation_samples ORDER BY id"
        ).fetchall()


def recorder_calls(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = conn.execute("SELECT funcname::text, calls FROM pg_stat_user_functions"
                            " WHERE schemaname = 'rls_migrate' AND funcname LIKE 'observe\\_%'"
                            ).fetchall()
    return {str(name): int(calls) for name, calls in rows}


def wait_for_calls(dsn: str, ready: Callable[[dict[str, int]], bool],
                   timeout: float = 10.0) -> dict[str, int]:
    """The recorder counters once ``ready`` holds (statistics are flushed asynchronously;
    sessions call pg_stat_force_next_flush() to hurry them)."""
    deadline = time.monotonic() + timeout
    while True:
        calls = recorder_calls(dsn)
        if ready(calls) or time.monotonic() > deadline:
            return calls
        time.sleep(0.05)


def flush_stats(conn: Conn) -> None:
    """Ask the session to flush its statistics soon (how depends on the major)."""
    version_helpers.flush_stats(conn)


def log_records(log_path: Path | None, where: Callable[[Violation], bool],
                expected: int = 1, timeout: float = 5.0) -> list[Violation]:
    """The recorder lines in a server log matching ``where`` (waiting for ``expected``)."""
    assert log_path is not None
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for line in log_path.read_text(errors="replace").splitlines():
            record = parse_log_line(line, log_path.name)
            if record is not None and where(record):
                found.append(record)
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def keys(rows: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    return {(r["table_name"], r["operation"], r["kind"], r["application_name"]) for r in rows}


@pytest.fixture
def db(pg_server: servers.PostgresServer,
       make_factory: Callable[..., servers.DatabaseFactory]) -> Iterator[ObserveDb]:
    with cloned_db(pg_server, make_factory) as clone:
        yield clone


def needs_log(pg_server: servers.PostgresServer) -> Path:
    if pg_server.log_path is None:
        pytest.skip(f"{pg_server.backend.name}: the server log is not readable here")
    return pg_server.log_path


# --------------------------------------------------------------------------- results


def app_workload(db: ObserveDb) -> list[tuple[str, list[Row]]]:
    """Reads, joins, the view, the partitioned table and a partition, writes that commit and
    writes that roll back (whole transactions and savepoints), as the application: with a
    tenant, without one, and touching other tenants' rows."""
    out: list[tuple[str, list[Row]]] = []

    def q(conn: Conn, query: str, params: list[Any] | None = None) -> None:
        cur = conn.execute(query, params)
        rows = cur.fetchall() if cur.description else [(cur.rowcount,)]
        # As multisets: a plan may return the rows of a statement without ORDER BY in
        # another order (RETURNING, say), which is not a different result.
        out.append((query, sorted(rows, key=repr)))

    with db.app("workload") as conn:
        q(conn, "SELECT id, account_id, name FROM projects ORDER BY id")
        q(conn, "SELECT count(*) FROM comments")
        with tenant_transaction(conn, 1):
            q(conn, "SELECT i.id, i.title, p.name FROM issues i JOIN projects p"
                    " ON p.id = i.project_id ORDER BY i.id")
            q(conn, "SELECT id, title, status FROM open_issues ORDER BY id")
            q(conn, "SELECT account_id, count(*) FROM events GROUP BY 1 ORDER BY 1")
            q(conn, "SELECT count(*), min(id) FROM events_2026_03")
            q(conn, "SELECT a.id, a.filename, c.body FROM attachments a JOIN comments c"
                    " ON c.id = a.comment_id ORDER BY a.id")
            q(conn, 'SELECT count(*) FROM "Project Notes"')
            q(conn, "SELECT count(*) FROM audit_log")
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config('app.tenant_id', '1', true)")
            q(conn, "INSERT INTO projects (account_id, name) VALUES (1, 'p1'), (2, 'p2')"
                    " RETURNING id, account_id, name")
            q(conn, "UPDATE issues SET title = title || '!' WHERE id IN (1, 2, 3)"
                    " RETURNING id, title")
            q(conn, "DELETE FROM issue_labels WHERE issue_id IN (SELECT id FROM issues"
                    " ORDER BY id LIMIT 3) RETURNING issue_id, label_id")
            q(conn, "INSERT INTO events (account_id, kind, created_at)"
                    " VALUES (2, 'x', '2026-02-03') RETURNING account_id, kind")
            q(conn, "INSERT INTO comments (issue_id, body) VALUES (1, 'hi') RETURNING tenant_id")
            q(conn, "SELECT count(*) FROM projects")
        with conn.transaction():
            conn.execute("SELECT set_config('app.tenant_id', '2', true)")
            q(conn, "UPDATE users SET name = name || '.' WHERE id IN (1, 2, 3) RETURNING id, name")
            with conn.transaction() as savepoint:
                q(conn, 'DELETE FROM "Project Notes" WHERE tenant_id = 1 RETURNING id')
                raise psycopg.Rollback(savepoint)
        q(conn, "SELECT count(*) FROM labels")
        q(conn, "SELECT id, name FROM users WHERE id IN (1, 2, 3) ORDER BY id")
    return out


def test_results_unchanged_and_nothing_reaches_the_client(db: ObserveDb,
                                                          make_factory: Any) -> None:
    with cloned_db(db.server, make_factory) as plain:
        without = app_workload(plain)
    db.observe()
    with_observe = app_workload(db)
    assert with_observe == without
    assert sum(len(rows) for _, rows in without) > 500
    # Not vacuous: the workload does touch other tenants' rows, and that was recorded.
    assert {r["application_name"] for r in sample_rows(db.dsn)} == {"workload"}


# --------------------------------------------------------------------------- recording


def test_every_kind_of_violation_is_recorded(db: ObserveDb) -> None:
    user_of_1 = db.scalar("SELECT min(id) FROM users WHERE account_id = 1")
    note_of_2 = db.scalar('SELECT min(id) FROM "Project Notes" WHERE tenant_id = 2')
    issue_of_1 = db.scalar("SELECT min(i.id) FROM issues i JOIN projects p"
                           " ON p.id = i.project_id WHERE p.account_id = 1")
    issues_total = db.scalar("SELECT count(*) FROM issues")
    db.observe()

    with db.app("t-read-nocontext") as conn:
        assert conn.execute("SELECT count(*) FROM issues").fetchone() == (issues_total,)
    with db.app("t-read-other") as conn, tenant_transaction(conn, 1):
        ids = conn.execute("SELECT account_id FROM projects").fetchall()
        assert {r[0] for r in ids} > {1}  # still every tenant's rows
    with db.app("t-insert-wrong") as conn, tenant_transaction(conn, 1):
        conn.execute("INSERT INTO projects (account_id, name) VALUES (2, 'misfiled')")
    with db.app("t-update-wrong") as conn, tenant_transaction(conn, 1):
        conn.execute("UPDATE users SET account_id = 2 WHERE id = %s", [user_of_1])
    with db.app("t-cron") as conn:  # a cron job that never sets a tenant
        conn.execute("UPDATE issues SET status = status WHERE id = %s", [issue_of_1])
        conn.execute("SELECT count(*) FROM events").fetchone()
        conn.execute("SELECT count(*) FROM events_2026_01").fetchone()
    with db.app("t-rolled-back") as conn:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config('app.tenant_id', '1', true)")
            conn.execute('DELETE FROM "Project Notes" WHERE id = %s', [note_of_2])
        flush_stats(conn)

    rows = sample_rows(db.dsn)
    assert keys(rows) == {
        ("public.issues", "read", "no_context", "t-read-nocontext"),
        ("public.projects", "read", "wrong_tenant", "t-read-other"),
        ("public.projects", "write", "wrong_tenant", "t-insert-wrong"),
        # Moving a row to another tenant: WITH CHECK, and USING too (PostgreSQL checks the new
        # row against it when the UPDATE reads columns).
        ("public.users", "write", "wrong_tenant", "t-update-wrong"),
        ("public.users", "read", "wrong_tenant", "t-update-wrong"),
        ("public.issues", "read", "no_context", "t-cron"),
        ("public.issues", "write", "no_context", "t-cron"),
        ("public.events", "read", "no_context", "t-cron"),
        ("public.events_2026_01", "read", "no_context", "t-cron"),
    }
    assert len(rows) == len(keys(rows)), "one sample per statement, table and operation"
    assert {(r["role_name"], r["session_role"]) for r in rows} == {("app_user", "app_user")}
    by_app = {(r["application_name"], r["operation"]): r for r in rows}
    inserted = by_app[("t-insert-wrong", "write")]
    # One recorder call per statement (an InitPlan): the record has the context, not the row.
    assert (inserted["context"], inserted["row_tenant"]) == ("1", None)
    assert inserted["statement"] == "INSERT INTO projects (account_id, name) VALUES (2, 'misfiled')"
    assert by_app[("t-cron", "write")]["context"] is None

    # The rolled-back DELETE left no sample, but its log line and its counter survive.
    notes = "observe_r_Project Notes"
    calls = wait_for_calls(db.dsn, lambda c: c.get(notes, 0) > 0)
    assert calls.get(notes) == 1
    if db.server.log_path is not None:
        logged = log_records(db.server.log_path, lambda v: v.application_name == "t-rolled-back")
        assert [(v.table, v.operation, v.kind, v.role) for v in logged] == [
            ('public."Project Notes"', "read", "wrong_tenant", "app_user")]


def test_correct_traffic_never_calls_a_recorder(db: ObserveDb) -> None:
    project = db.scalar("SELECT min(id) FROM projects WHERE account_id = 1")
    db.observe()
    with db.app("t-correct") as conn:
        with tenant_transaction(conn, 1):
            for query in (
                "SELECT * FROM projects WHERE account_id = 1",
                "SELECT * FROM issues WHERE tenant_id = 1 ORDER BY id",
                "SELECT c.id, i.title FROM comments c JOIN issues i ON i.id = c.issue_id"
                " WHERE c.tenant_id = 1 AND i.tenant_id = 1",
                "SELECT * FROM events WHERE account_id = 1 AND created_at >= '2026-03-01'"
                " AND created_at < '2026-04-01'",
                "SELECT * FROM events_2026_02 WHERE account_id = 1",
                'SELECT * FROM "Project Notes" WHERE tenant_id = 1',
                "SELECT * FROM audit_log WHERE tenant_id = 1",
            ):
                conn.execute(query).fetchall()
            issue = conn.execute("INSERT INTO issues (project_id, title) VALUES (%s, 'mine')"
                                 " RETURNING id, tenant_id", [project]).fetchone()
            assert issue is not None and issue[1] == 1  # the sync trigger derived it
            conn.execute("INSERT INTO comments (issue_id, body) VALUES (%s, 'c')", [issue[0]])
            conn.execute("UPDATE issues SET status = 'closed' WHERE tenant_id = 1 AND id = %s",
                         [issue[0]])
            conn.execute("DELETE FROM comments WHERE tenant_id = 1 AND issue_id = %s",
                         [issue[0]])
            conn.execute("INSERT INTO events (account_id, kind, created_at)"
                         " VALUES (1, 'x', '2026-05-05')")
        # A sentinel: one known violation, so we know the statistics have been flushed.
        conn.execute("SELECT count(*) FROM labels").fetchone()
        flush_stats(conn)
    calls = wait_for_calls(db.dsn, lambda c: c.get("observe_r_labels", 0) > 0)
    assert calls.pop("observe_r_labels") > 0
    assert calls == {}, "correct traffic called a recorder"
    assert keys(sample_rows(db.dsn)) == {("public.labels", "read", "no_context", "t-correct")}


def test_a_scan_over_100000_wrong_rows_calls_the_recorder_once_per_statement(
        db: ObserveDb) -> None:
    with db.owner() as owner:
        owner.execute("INSERT INTO labels (account_id, name)"
                      " SELECT 2, 'bulk ' || g FROM generate_series(1, 100000) g")
        owner.execute("ANALYZE labels")
    total = db.scalar("SELECT count(*) FROM labels")
    own = db.scalar("SELECT count(*) FROM labels WHERE account_id = 1")
    db.observe()
    with db.app("t-scan") as conn:
        with tenant_transaction(conn, 1):
            assert conn.execute("SELECT count(*) FROM labels").fetchone() == (total,)
            assert conn.execute("SELECT count(*) FROM labels WHERE name LIKE 'bulk%'"
                                ).fetchone() == (100000,)
        flush_stats(conn)
    rows = sample_rows(db.dsn)
    assert [(r["table_name"], r["statement"][:26]) for r in rows] == [
        ("public.labels", "SELECT count(*) FROM label"),
        ("public.labels", "SELECT count(*) FROM label")]
    assert total - own > 100000
    # pg_stat_user_functions counts statements: the recorder is an InitPlan, called for the
    # first row the enforced policy would hide and cached for the rest of the statement.
    wait_for_calls(db.dsn, lambda c: c.get("observe_r_labels", 0) >= 2)
    time.sleep(0.5)
    assert recorder_calls(db.dsn)["observe_r_labels"] == 2


def test_read_only_transactions_keep_working_and_log(db: ObserveDb,
                                                     pg_server: servers.PostgresServer) -> None:
    total = db.scalar("SELECT count(*) FROM users")
    own = db.scalar("SELECT count(*) FROM users WHERE account_id = 1")
    db.observe()
    with db.app("t-readonly") as conn:
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute("SELECT set_config('app.tenant_id', '1', true)")
            assert conn.execute("SELECT count(*) FROM users").fetchone() == (total,)
        conn.execute("SET default_transaction_read_only = on")
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (total,)
        flush_stats(conn)
    assert sample_rows(db.dsn) == []  # nothing can be written there...
    assert total > own
    calls = wait_for_calls(db.dsn, lambda c: c.get("observe_r_users", 0) >= 2)
    assert calls["observe_r_users"] == 2  # ...but every statement is counted
    logged = log_records(needs_log(pg_server), lambda v: v.application_name == "t-readonly",
                         expected=2)
    assert sorted(v.kind for v in logged) == ["no_context", "wrong_tenant"]
    assert {(v.table, v.operation, v.role) for v in logged} == {("public.users", "read",
                                                                   "app_user")}


def test_hot_standby_keeps_working_and_logs(db: ObserveDb,
                                            pg_server: servers.PostgresServer) -> None:
    from rls_migrate.testing.replica import start_standby

    if not isinstance(pg_server, servers.LocalServer):
        pytest.skip(f"{pg_server.backend.name}: streams a standby from a local server only")
    comments = db.scalar("SELECT count(*) FROM comments")
    projects = db.scalar("SELECT count(*) FROM projects")
    db.observe()
    with start_standby(pg_server) as standby:
        standby.catch_up(pg_server)
        standby_app = standby.dsn(db.name, user=samples.APP_ROLE)
        with db.app("t-standby", dsn=standby_app) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            assert conn.execute("SELECT count(*) FROM comments").fetchone() == (comments,)
            with tenant_transaction(conn, 1):
                assert conn.execute("SELECT count(*) FROM projects").fetchone() == (projects,)
            flush_stats(conn)
        logged = log_records(standby.log_path, lambda v: v.application_name == "t-standby",
                             expected=2)
        assert {(v.table, v.kind) for v in logged} == {("public.comments", "no_context"),
                                                        ("public.projects", "wrong_tenant")}
        # The standby counts too, in its own statistics.
        calls = wait_for_calls(standby.dsn(db.name),
                               lambda c: c.get("observe_r_comments", 0) > 0)
        assert calls.get("observe_r_comments", 0) > 0
        # Nothing reached the primary's samples; report reads the standby's log file.
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            assert standby.log_path is not None
            report = build_report(conn, db.playbook, logs=[standby.log_path])
        assert {(g.table, g.kind, g.application_name, g.sources.pop()) for g in report.groups
                } == {("public.comments", "no_context", "t-standby", "server.log"),
                      ("public.projects", "wrong_tenant", "t-standby", "server.log")}


def test_roles_without_privileges_and_security_definer_callers(db: ObserveDb) -> None:
    worker = f"worker_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(worker)
    with db.owner() as owner:
        owner.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE app_user").format(ident))
        owner.execute("CREATE FUNCTION public.count_projects() RETURNS bigint LANGUAGE sql"
                      " SECURITY DEFINER SET search_path = public"
                      " AS 'SELECT count(*) FROM projects'")
        owner.execute("ALTER FUNCTION public.count_projects() OWNER TO app_user")
    try:
        db.observe()
        with db.owner() as owner:
            for role in ("app_user", worker):
                assert owner.execute(
                    "SELECT has_schema_privilege(%s, 'rls_migrate', 'USAGE'),"
                    " has_table_privilege(%s, 'rls_migrate.violation_samples', 'INSERT')",
                    [role, role]).fetchone() == (False, False)
        total = db.scalar("SELECT count(*) FROM projects")
        with db.app("t-member", user=worker) as conn:  # a member of the application role
            assert conn.execute("SELECT count(*) FROM projects").fetchone() == (total,)
        with db.app("t-definer", user=worker) as conn:  # runs as app_user inside
            assert conn.execute("SELECT public.count_projects()").fetchone() == (total,)
        with db.app("t-admin", user=samples.ADMIN_ROLE) as conn:  # not subject to the policy
            assert conn.execute("SELECT count(*) FROM projects").fetchone() == (total,)
        rows = sample_rows(db.dsn)
        assert {(r["application_name"], r["role_name"], r["session_role"]) for r in rows} == {
            ("t-member", worker, worker), ("t-definer", "app_user", worker)}
    finally:
        with db.owner() as owner:
            owner.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            owner.execute(sql.SQL("DROP ROLE {}").format(ident))


def test_log_line_escapes_a_crafted_application_name(db: ObserveDb,
                                                     pg_server: servers.PostgresServer) -> None:
    log_path = needs_log(pg_server)
    crafted = 'x", "kind" : "no_context"} rls_migrate violation {"v" : 1}'
    db.observe()
    with db.app(crafted) as conn, tenant_transaction(conn, 1):
        pid = conn.info.backend_pid
        conn.execute("SELECT id FROM projects /* a\nmulti-line statement */").fetchall()
    lines: list[str] = []
    deadline = time.monotonic() + 5
    while not lines and time.monotonic() < deadline:
        lines = [line for line in log_path.read_text(errors="replace").splitlines()
                 if f"[{pid}]" in line and "rls_migrate violation" in line]
    assert len(lines) >= 1
    records = [parse_log_line(line) for line in lines]
    real = [r for r in records if r is not None]
    assert len(real) == 1, lines
    assert (real[0].application_name, real[0].kind, real[0].table) == (
        crafted, "wrong_tenant", "public.projects")
    assert real[0].statement == "SELECT id FROM projects /* a\nmulti-line statement */"
    assert [r["application_name"] for r in sample_rows(db.dsn)] == [crafted]


# --------------------------------------------------------------------------- rollback


def rls_state(dsn: str) -> dict[str, Any]:
    """RLS flags of every table, every policy, and the toolkit's functions."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        flags = conn.execute(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')"
            " ORDER BY relname").fetchall()
        policies = conn.execute(
            "SELECT polrelid::regclass::text, polname, polpermissive, polroles::regrole[]::text,"
            " pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)"
            " FROM pg_policy ORDER BY 1, 2").fetchall()
        functions = conn.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'rls_migrate'::regnamespace"
            " ORDER BY 1").fetchall()
        triggers = conn.execute(
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal"
            " ORDER BY 1, 2").fetchall()
    return {"flags": flags, "policies": policies, "functions": functions,
            "triggers": triggers}


def test_rollback_restores_rls_flags_and_policies(db: ObserveDb) -> None:
    with db.owner() as owner:  # a table whose RLS the team turned on before us
        owner.execute("ALTER TABLE labels ENABLE ROW LEVEL SECURITY")
        owner.execute("CREATE POLICY labels_everyone ON labels USING (true)")
    before = rls_state(db.dsn)
    db.observe()
    again = apply_stage(db.dsn, db.playbook, "observe").result
    assert again.done == 0 and again.skipped == len(again.outcomes)
    during = rls_state(db.dsn)
    assert [name for name, on, _ in during["flags"] if not on] == ["countries"]
    names = {(table, name) for table, name, *_ in during["policies"]}
    assert ("labels", "rls_migrate_baseline") not in names  # its own policy grants access
    assert ("labels", "rls_migrate_tenant") in names and ("issues", "rls_migrate_baseline") in names
    assert ("events_2026_04", "rls_migrate_tenant") in names

    rollback_to(db.dsn, db.playbook, "index")
    assert rls_state(db.dsn) == before  # labels keeps its RLS and its policy
    db.observe()  # and forward again
    assert rls_state(db.dsn)["flags"] == during["flags"]
