"""``rls-migrate plan`` as a user runs it: the real CLI in a subprocess, every output format.
The SQL script runs with the server's own ``psql`` on a fresh copy of the sample database
and must take it all the way to enforced RLS."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from plan_helpers import execute, load_catalog, q, sample_factory, sample_playbook
from psycopg import sql

from rls_migrate import samples
from rls_migrate.catalog import QualifiedName
from rls_migrate.cli import cli, main
from rls_migrate.planner import build_plan
from rls_migrate.playbook import dump_playbook
from rls_migrate.render import _compact_json, render_sql
from rls_migrate.steps import STAGES, Plan, StagePlan, Step
from rls_migrate.testing import servers

CLI = str(Path(sys.executable).with_name("rls-migrate"))
TIMEOUT = 120

STEP_KEYS = {"id", "kind", "table", "description", "why", "lock", "blocks", "transactional",
             "statements", "inverse", "estimate", "risks"}
STAGE_KEYS = {"name", "notes", "estimate", "steps"}
TOP_KEYS = {"format", "database", "server_version", "risks", "stages"}
ESTIMATE_KEYS = {"rows", "bytes", "seconds"}

IN_PROCESS = {
    "json": ["--format", "json"],
    "json-pretty": ["--format", "json", "--pretty"],
    "markdown": ["--format", "markdown"],
    "text": ["--format", "text"],
    "backfill-text": ["--stage", "backfill"],
    "backfill-json": ["--stage", "backfill", "--format", "json"],
}
"""The other formats run in this process (the same click command, without paying for a
Python start-up each); the SQL script comes from a real ``rls-migrate`` process."""


@dataclasses.dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


@dataclasses.dataclass(frozen=True)
class Outputs:
    workdir: Path
    runs: dict[str, Run]

    @property
    def script(self) -> str:
        return (self.workdir / "plan.sql").read_text()


def run_cli(playbook: Path, dsn: str, workdir: Path) -> dict[str, Run]:
    proc = subprocess.run(
        [CLI, "plan", str(playbook), "--dsn", dsn, "--format", "sql", "-o", "plan.sql"],
        cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT)
    runs = {"sql": Run(proc.returncode, proc.stdout, proc.stderr)}
    runner = CliRunner()
    for name, args in IN_PROCESS.items():
        result = runner.invoke(cli, ["plan", str(playbook), "--dsn", dsn, *args])
        runs[name] = Run(result.exit_code, result.stdout, result.stderr)
    return runs


_CACHE: dict[str, Outputs] = {}


@pytest.fixture(scope="module")
def outputs(
    pg_server: servers.PostgresServer,
    make_factory: Callable[..., servers.DatabaseFactory],
    tmp_path_factory: pytest.TempPathFactory,
) -> Outputs:
    key = pg_server.dsn()
    if key not in _CACHE:
        factory = sample_factory(pg_server, make_factory)
        dsn = factory.create()
        try:
            workdir = tmp_path_factory.mktemp("plan")
            playbook = workdir / "sample.yaml"
            playbook.write_text(dump_playbook(sample_playbook(load_catalog(dsn))))
            _CACHE[key] = Outputs(workdir, run_cli(playbook, dsn, workdir))
        finally:
            factory.drop(servers.dbname_of(dsn))
    return _CACHE[key]


@pytest.fixture
def fresh_dsn(
    pg_server: servers.PostgresServer, make_factory: Callable[..., servers.DatabaseFactory]
) -> Iterator[str]:
    factory = sample_factory(pg_server, make_factory)
    dsn = factory.create()
    yield dsn
    factory.drop(servers.dbname_of(dsn))


def psql_path(server: servers.PostgresServer) -> str:
    bindir = getattr(server, "bindir", None)
    if bindir is not None and (Path(bindir) / "psql").exists():
        return str(Path(bindir) / "psql")
    found = shutil.which("psql")
    if found is None:
        pytest.skip("no psql for this backend")
    return found


def test_every_invocation_succeeds_quietly(outputs: Outputs) -> None:
    for name, run in outputs.runs.items():
        assert run.returncode == 0, (name, run.stderr)
        assert "Traceback" not in run.stderr, name
    assert outputs.runs["sql"].stdout.strip() == "wrote plan.sql"
    # Written as it renders, through a file renamed into place: nothing else is left.
    assert not [p.name for p in outputs.workdir.iterdir() if p.name.endswith(".partial")]


# --------------------------------------------------------------------------- the SQL script


def test_sql_script_is_well_formed(outputs: Outputs) -> None:
    script = outputs.script
    lines = script.splitlines()
    assert "\\set ON_ERROR_STOP on" in lines
    assert [m.group(1) for m in re.finditer(r"^-- ===== stage (\S+)$", script, re.M)] == list(
        STAGES)
    # Transactions pair up, and CONCURRENTLY never runs inside one.
    in_txn = False
    for number, line in enumerate(lines, 1):
        if line == "BEGIN;":
            assert not in_txn, f"line {number}: nested BEGIN"
            in_txn = True
        elif line == "COMMIT;":
            assert in_txn, f"line {number}: COMMIT without BEGIN"
            in_txn = False
        elif line.startswith("SET LOCAL"):
            assert in_txn, f"line {number}: SET LOCAL outside a transaction has no effect"
        elif "CONCURRENTLY" in line and not line.startswith("--"):
            assert not in_txn, f"line {number}: CONCURRENTLY inside a transaction"
            assert line.endswith(";"), f"line {number}"
    assert not in_txn
    # Each concurrent build first drops what a failed build may have left behind.
    builds = script.count("\nCREATE INDEX CONCURRENTLY")
    assert builds == script.count("\nDROP INDEX CONCURRENTLY IF EXISTS") > 0
    # Strong locks are taken under a lock_timeout.
    for block in re.findall(r"BEGIN;\n(.*?)COMMIT;", script, re.S):
        if re.search(r"^ALTER (TABLE|POLICY)|^CREATE POLICY", block, re.M):
            assert block.startswith("SET LOCAL lock_timeout = "), block[:200]


def test_sql_script_runs_with_psql_to_enforced_rls(
    outputs: Outputs, pg_server: servers.PostgresServer, fresh_dsn: str
) -> None:
    before = load_catalog(fresh_dsn)
    plan = build_plan(before, sample_playbook(before))
    result = subprocess.run(
        [psql_path(pg_server), "-X", "-q", "-v", "ON_ERROR_STOP=1",
         "-f", str(outputs.workdir / "plan.sql"), fresh_dsn],
        capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ERROR" not in result.stderr

    catalog = load_catalog(fresh_dsn)
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        # Every step reports itself done, except the backfill that leaves orphans empty.
        not_done = []
        for step in plan.steps:
            if step.done_check is not None:
                row = execute(conn, step.done_check).fetchone()
                if not (row and row[0]):
                    not_done.append(step.id)
        assert not_done == ["backfill:public.audit_log"]

        for name in samples.DERIVED_TABLES:
            column = catalog.table(q(name)).column("tenant_id")
            assert column is not None and column.not_null, name
        audit = catalog.table(q("audit_log")).column("tenant_id")
        assert audit is not None and not audit.not_null
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE a.tenant_id IS NULL),"
            " count(*) FILTER (WHERE i.id IS NULL),"
            " count(*) FILTER (WHERE a.tenant_id IS DISTINCT FROM p.account_id AND i.id IS NOT NULL)"
            " FROM audit_log a LEFT JOIN issues i ON i.id = a.issue_id"
            " LEFT JOIN projects p ON p.id = i.project_id").fetchone()
        assert row is not None
        empty, orphans, wrong = row
        assert empty == orphans > 0 and wrong == 0

        rlsm_indexes = conn.execute(
            "SELECT c.relname, x.indisvalid FROM pg_index x JOIN pg_class c"
            " ON c.oid = x.indexrelid WHERE c.relname LIKE '%rlsm_idx' OR c.relname LIKE"
            " 'events_2026_%_events_account_id_rl'").fetchall()
        builds = [s for s in plan.stage("index")
                  if s.kind not in ("attach_index", "tenant_statistics", "pin_index_usage")]
        assert len(rlsm_indexes) == len(builds)
        assert all(valid for _, valid in rlsm_indexes), rlsm_indexes

        protected = [samples.TENANT_ROOT, *samples.DIRECT_TABLES, *samples.DERIVED_TABLES,
                     *samples.HINT_TABLES, *samples.EVENT_PARTITIONS]
        policies = conn.execute(
            "SELECT c.relname, c.relrowsecurity, p.polpermissive,"
            " pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)"
            " FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid"
            " WHERE p.polname = 'rls_migrate_tenant'").fetchall()
        assert sorted(p[0] for p in policies) == sorted(protected)
        for table, rls, permissive, using, check in policies:
            assert rls and not permissive, table
            assert using == check, table
            assert "current_setting('app.tenant_id'" in using and "observe_" not in using, using

        # The application role sees its tenant's rows only, and nothing without a context.
        expected = conn.execute(
            "SELECT count(*) FROM comments c JOIN issues i ON i.id = c.issue_id"
            " JOIN projects p ON p.id = i.project_id WHERE p.account_id = 1").fetchone()
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL ROLE app_user")
            assert conn.execute("SELECT count(*) FROM comments").fetchone() == (0,)
            conn.execute("SELECT set_config('app.tenant_id', '1', true)")
            assert conn.execute("SELECT count(*) FROM comments").fetchone() == expected
            assert expected is not None and expected[0] > 0
            # Naming a partition directly does not get around the policy.
            for partition in samples.EVENT_PARTITIONS:
                row = conn.execute(sql.SQL("SELECT count(*) FILTER (WHERE account_id <> 1)"
                                           " FROM {}").format(sql.Identifier(partition))
                                   ).fetchone()
                assert row == (0,), partition


# --------------------------------------------------------------------------- other formats


def test_json_has_the_documented_shape(outputs: Outputs) -> None:
    data = json.loads(outputs.runs["json"].stdout)
    assert set(data) == TOP_KEYS
    assert data["format"] == 1 and data["database"].startswith("plan_")
    assert [s["name"] for s in data["stages"]] == list(STAGES)
    ids = []
    for stage in data["stages"]:
        assert set(stage) == STAGE_KEYS
        assert set(stage["estimate"]) == ESTIMATE_KEYS
        for step in stage["steps"]:
            assert set(step) == STEP_KEYS, step["id"]
            assert set(step["estimate"]) == ESTIMATE_KEYS
            assert step["statements"] and all(isinstance(s, str) for s in step["statements"])
            ids.append(step["id"])
    assert len(ids) == len(set(ids))
    issues = next(s for s in data["stages"][1]["steps"] if s["id"] == "add_column:public.issues")
    assert issues["statements"] == [
        'ALTER TABLE "public"."issues" ADD COLUMN IF NOT EXISTS "tenant_id" bigint']
    assert (issues["lock"], issues["transactional"]) == ("ACCESS EXCLUSIVE", True)
    assert any("audit_log has no primary key" in r for r in data["risks"])


def test_json_is_one_line_per_step_unless_pretty(outputs: Outputs) -> None:
    compact = outputs.runs["json"].stdout
    data = json.loads(compact)
    steps = [step for stage in data["stages"] for step in stage["steps"]]
    lines = compact.splitlines()
    # The plan's keys, one line per stage and per step, the closing brackets.
    assert len(lines) == 1 + len(data["stages"]) + len(steps) + 1
    decode = json.JSONDecoder().raw_decode
    assert [decode(line)[0] for line in lines if line.startswith('{"id":')] == steps
    assert not any(line.startswith(" ") for line in lines)
    pretty = outputs.runs["json-pretty"].stdout
    assert json.loads(pretty) == data
    assert '\n  "stages": [' in pretty


_JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.text()
_JSON = st.recursive(_JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


@given(_JSON)
def test_compact_json_writes_what_json_dumps_writes(value: object) -> None:
    """The plan's compact json comes from pydantic's encoder (three times faster): ASCII,
    read back as the value, and the text ``json.dumps`` writes with compact separators,
    but for DEL (0x7f), which it writes as itself (valid JSON) where json.dumps escapes it."""
    out = _compact_json(value)
    assert out.isascii() and json.loads(out) == value
    if "\x7f" not in json.dumps(value, ensure_ascii=False):
        assert out == json.dumps(value, separators=(",", ":"))


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_compact_json_floats_read_back_the_same(value: float) -> None:
    assert json.loads(_compact_json({"seconds": value})) == {"seconds": value}


def test_pretty_is_for_json_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["plan", str(tmp_path / "app.yaml"), "--format", "text", "--pretty"])
    assert exited.value.code == 2
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", "error: --pretty applies to --format json only\n")


def test_markdown_has_a_table_per_stage(outputs: Outputs) -> None:
    text = outputs.runs["markdown"].stdout
    headings = re.findall(r"^## (\S+) \((\d+) steps", text, re.M)
    assert [h for h, _ in headings] == list(STAGES)
    tables = text.split("| step | table | lock | blocks | in txn |")
    assert len(tables) == len(STAGES) + 1
    assert "| ACCESS EXCLUSIVE |" in text and "```sql" in text


def test_text_mentions_every_stage(outputs: Outputs) -> None:
    text = outputs.runs["text"].stdout
    for stage in STAGES:
        assert re.search(rf"^== {re.escape(stage)}: \d+ step", text, re.M), stage


def test_stage_option_limits_the_output(outputs: Outputs) -> None:
    text = outputs.runs["backfill-text"].stdout
    assert re.findall(r"^== (\S+):", text, re.M) == ["backfill"]
    data = json.loads(outputs.runs["backfill-json"].stdout)
    assert [s["name"] for s in data["stages"]] == ["backfill"]
    assert {s["kind"] for s in data["stages"][0]["steps"]} == {"backfill"}


def test_line_breaks_in_names_stay_inside_comments(
    pg_server: servers.PostgresServer, fresh_dsn: str, tmp_path: Path
) -> None:
    """Step ids and descriptions carry table names, which may hold line breaks: in the
    script they must stay comments, never become statements."""
    evil = QualifiedName("public", "x\nDROP TABLE public.users CASCADE;\n")
    step = Step(id=f"observe:{evil}", stage="observe", kind="observe_policy", table=evil,
                description=f"on {evil.name}", statements=(sql.SQL("SELECT 1"),))
    plan = Plan((StagePlan("observe", (step,)),))
    with psycopg.connect(fresh_dsn) as conn:
        script = render_sql(plan, load_catalog(fresh_dsn), conn)
    assert not any(line.startswith("DROP TABLE") for line in script.splitlines())
    path = tmp_path / "evil.sql"
    path.write_text(script)
    result = subprocess.run([psql_path(pg_server), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                             "-f", str(path), fresh_dsn], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert load_catalog(fresh_dsn).find_table("public.users") is not None


def test_sql_script_takes_the_playbooks_lock_timeout(fresh_dsn: str) -> None:
    catalog = load_catalog(fresh_dsn)
    playbook = sample_playbook(catalog)
    playbook = playbook.model_copy(update={"options": playbook.options.model_copy(
        update={"lock_timeout": 250.0})})
    plan = build_plan(catalog, playbook, ["add-column"])
    assert plan.lock_timeout_ms == 250.0
    script = render_sql(plan, catalog)
    assert "SET LOCAL lock_timeout = '250ms';" in script
    assert "'100ms'" not in script


@pytest.mark.core_majors
def test_ctrl_c_while_the_catalog_read_waits_on_a_lock(tmp_path: Path, fresh_dsn: str) -> None:
    """``plan`` reads the catalog in another thread while its modules load; a catalog query
    can wait on another session's lock (pg_total_relation_size opens the table). Ctrl-C then
    cancels that query and exits (130), as when the read ran on the main thread, instead of
    waiting for the lock."""
    playbook = tmp_path / "sample.yaml"
    playbook.write_text(dump_playbook(sample_playbook(load_catalog(fresh_dsn))))
    with psycopg.connect(fresh_dsn) as holder, \
            psycopg.connect(fresh_dsn, autocommit=True) as watcher:
        holder.execute("LOCK TABLE public.issues IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen([CLI, "plan", str(playbook), "--dsn", fresh_dsn],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not watcher.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted"
                    " AND relation = 'public.issues'::regclass").fetchone()[0]:  # type: ignore[index]
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "plan never waited on the lock"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)  # while the lock is still held
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err

