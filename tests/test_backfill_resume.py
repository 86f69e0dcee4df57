"""The backfill's own guarantees, on every major.

* Resume after ``kill -9``: the CLI runs the backfill in a real process, killed with SIGKILL
  mid-table, then run again to the end: batch numbers never repeat, key ranges never
  overlap, and the rows counted are the rows filled.
* Row-level security that filters the migration role (FORCE on a table it owns) fails the
  step with the remedy instead of a silent "finished", at the start or in mid-run.
* Transactions that were writing a table when its pass starts are waited for; rows left
  without a key anyway get another pass; lock timeouts are retried; a batch slower than
  its statement_timeout is cut smaller.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from test_backfill_load import app_dsn, db_at, playbook_for, wrong_tenants

from rls_migrate.catalog import Catalog
from rls_migrate.errors import StepFailed
from rls_migrate.executor import Executor
from rls_migrate.journal import Journal, load_checkpoint
from rls_migrate.migration_lock import lock_holder
from rls_migrate.planner import build_plan
from rls_migrate.playbook import Playbook, dump_playbook
from rls_migrate.runner import apply_stage
from rls_migrate.stages.backfill_runner import BackfillResult, run_backfill
from rls_migrate.steps import Step

__all__ = ["db_at"]  # the fixture, shared with the load tests

# Version-agnostic (the toolkit's own logic over SQL every major runs alike): the core
# majors only, unless RLS_MIGRATE_TEST_ALL_MAJORS=1 (see tests/conftest.py).
pytestmark = pytest.mark.core_majors


MIGRATOR = "rlsm_migrator"


def _key(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


def check_batches(dsn: str, table: str) -> dict[str, Any]:
    """The batch log of one table is a clean walk: numbers 1..n without a repeat, each
    range starting where the previous one ended and moving forward, the last ending at the
    bound, and the rows counted equal to the rows the checkpoint has."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT batch_no, lo, hi, rows FROM rls_migrate.backfill_batches"
            " WHERE table_name = %s ORDER BY batch_no", [table]).fetchall()
        ckpt = load_checkpoint(conn, table)
    assert ckpt is not None and ckpt.finished, table
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), f"{table}: batch numbers"
    previous_hi = None
    for batch_no, lo, hi, _ in rows:
        assert lo == previous_hi, f"{table}: batch {batch_no} starts at {lo}, not {previous_hi}"
        if lo is not None:
            assert [_key(k) for k in lo] < [_key(k) for k in hi], f"{table}: batch {batch_no}"
        previous_hi = hi
    assert previous_hi == (list(ckpt.max_key) if ckpt.max_key else None), table
    assert sum(r[3] for r in rows) == ckpt.rows_done, table
    return {"batches": len(rows), "rows_done": ckpt.rows_done}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rls_migrate", *args]


def wait_for_lock_release(dsn: str, timeout_s: float = 20.0) -> None:
    """A killed runner's session ends (and frees the migration lock) once the server sees
    the closed socket."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True) as conn:
        while lock_holder(conn) is not None:
            assert time.monotonic() < deadline, "the killed runner's session stayed"
            time.sleep(0.05)


def kill_and_resume(dsn: str, playbook: Playbook, tmp_path: Path,
                    kills: list[tuple[str, int]]) -> None:
    """Run ``apply --stage backfill`` as a process; for each ``(table, n)`` kill it with
    SIGKILL once ``table`` has ``n`` committed batches; then run it to the end."""
    path = tmp_path / "app.yaml"
    path.write_text(dump_playbook(playbook))
    for stage in ("prepare", "add-column"):
        apply_stage(dsn, playbook, stage)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(t))).fetchone() for t in ("issues", "comments")}
    command = cli("--log-format", "json", "apply", str(path), "--stage", "backfill", "--yes",
                  "--dsn", dsn)
    for table, batches in kills:
        with (tmp_path / "killed.log").open("w") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 120
            with psycopg.connect(dsn, autocommit=True) as conn:
                while True:
                    row = conn.execute("SELECT count(*) FROM rls_migrate.backfill_batches"
                                       " WHERE table_name = %s", [table]).fetchone()
                    if row and row[0] >= batches:
                        break
                    assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
                    assert time.monotonic() < deadline
                    time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        with psycopg.connect(dsn, autocommit=True) as conn:
            killed_at = load_checkpoint(conn, table)
        assert killed_at is not None and not killed_at.finished, "killed too late"
        wait_for_lock_release(dsn)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"event": "backfill.resume"' in done.stdout + done.stderr

    assert all(v == 0 for v in wrong_tenants(dsn).values()), wrong_tenants(dsn)
    for table in ("public.issues", "public.comments", "public.attachments",
                  "public.issue_labels", 'public."Project Notes"', "public.audit_log"):
        check_batches(dsn, table)
    # Nothing was written meanwhile, so every row was filled by exactly one batch.
    for name, count in before.items():
        assert count is not None
        assert check_batches(dsn, f"public.{name}")["rows_done"] == count[0], name
    with psycopg.connect(dsn, autocommit=True) as conn:
        outcomes = [e for e in Journal(conn).entries(step_id="backfill:public.comments")
                    if e["outcome"] == "done"]
    assert len(outcomes) == 1 and outcomes[0]["details"]["resumed"] is True


def test_resume_after_sigkill(db_at: Callable[[float], str], tmp_path: Path) -> None:
    dsn = db_at(0.2)
    # 100-row batches 5 ms apart: comments take 20 batches, a window to kill in.
    playbook = playbook_for(dsn, batch_target=1.0, batch_start_rows=100, batch_min_rows=100,
                            batch_max_rows=100, pause=5.0)
    kill_and_resume(dsn, playbook, tmp_path, [("public.comments", 3)])


@pytest.mark.reliability
def test_resume_after_repeated_sigkills(db_at: Callable[[float], str], tmp_path: Path) -> None:
    dsn = db_at(2.0)
    playbook = playbook_for(dsn, batch_target=1.0, batch_start_rows=50, batch_min_rows=20,
                            batch_max_rows=200)
    kill_and_resume(dsn, playbook, tmp_path, [("public.issues", 3), ("public.comments", 10),
                                              ("public.comments", 40)])


# --------------------------------------------------------------------------- the runner


def backfill_step(dsn: str, playbook: Playbook, table: str) -> Step:
    with psycopg.connect(dsn, autocommit=True) as conn:
        catalog = Catalog.load(conn)
    for step in build_plan(catalog, playbook, ["backfill"]).stage("backfill"):
        if step.id == f"backfill:{table}":
            return step
    raise AssertionError(f"no backfill step for {table}")


def run_one(dsn: str, playbook: Playbook, step: Step,
            progress: Callable[[Any, int, int], None] | None = None) -> BackfillResult:
    """run_backfill alone, the way the executor calls it (autocommit, idle)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        executor = Executor(conn, playbook.options, Journal(conn))
        return run_backfill(executor, step, progress=progress)


def as_migrator(dsn: str) -> str:
    """The table's owner, without superuser or BYPASSRLS: what a careful setup uses to
    migrate, and what FORCE ROW LEVEL SECURITY filters."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(
                sql.Identifier(MIGRATOR)))
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass  # roles are cluster-wide: another test made it
        for statement in (
            'ALTER TABLE "Project Notes" OWNER TO {r}',
            "GRANT SELECT ON projects TO {r}",
            "GRANT USAGE ON SCHEMA rls_migrate TO {r}",
            "GRANT ALL ON ALL TABLES IN SCHEMA rls_migrate TO {r}",
            'ALTER TABLE "Project Notes" ENABLE ROW LEVEL SECURITY',
            'CREATE POLICY tenant ON "Project Notes" USING'
            " (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::bigint)",
        ):
            conn.execute(sql.SQL(statement).format(r=sql.Identifier(MIGRATOR)))
    return make_conninfo(dsn, user=MIGRATOR)


def unfilled_notes(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute('SELECT count(*) FROM "Project Notes" WHERE tenant_id IS NULL'
                           ).fetchone()
    assert row is not None
    return int(row[0])


def test_force_rls_on_the_migration_role_fails_instead_of_finishing(
        db_at: Callable[[float], str]) -> None:
    dsn = db_at(0.2)
    # user_triggers: fire, because the owner may not set session_replication_role.
    playbook = playbook_for(dsn, user_triggers="fire", batch_start_rows=5, batch_min_rows=5,
                            batch_max_rows=5)
    for stage in ("prepare", "add-column"):
        apply_stage(dsn, playbook, stage)
    step = backfill_step(dsn, playbook, 'public."Project Notes"')
    migrator = as_migrator(dsn)
    rows = unfilled_notes(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute('ALTER TABLE "Project Notes" FORCE ROW LEVEL SECURITY')
    with pytest.raises(StepFailed, match=r"filters the migration role 'rlsm_migrator'.*"
                                         r"BYPASSRLS.*FORCE ROW LEVEL SECURITY"):
        run_one(migrator, playbook, step)
    assert unfilled_notes(dsn) == rows

    # The owner without FORCE is not filtered: the same run fills every row.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute('ALTER TABLE "Project Notes" NO FORCE ROW LEVEL SECURITY')
    result = run_one(migrator, playbook, step)
    assert result.rows == rows and unfilled_notes(dsn) == 0

    # FORCE switched on in mid-run: the next batch updates nothing, and says why.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute('UPDATE "Project Notes" SET tenant_id = NULL')
        Journal(conn).reset_backfill('public."Project Notes"')

    def force_after_two(table: Any, done: int, total: int) -> None:
        if done == 10:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute('ALTER TABLE "Project Notes" FORCE ROW LEVEL SECURITY')

    with pytest.raises(StepFailed, match=r"batch 3 .* updated no row.*BYPASSRLS"):
        run_one(migrator, playbook, step, progress=force_after_two)
    assert unfilled_notes(dsn) == rows - 10


def test_waits_for_writers_that_read_an_unfilled_parent(db_at: Callable[[float], str]) -> None:
    """A comment inserted before issues are filled gets no key from the trigger; if its
    transaction commits after the comments pass read its bound, no batch would visit it.
    The pass waits for it instead."""
    dsn = db_at(0.2)
    playbook = playbook_for(dsn)
    for stage in ("prepare", "add-column"):
        apply_stage(dsn, playbook, stage)
    with psycopg.connect(app_dsn(dsn)) as writer:
        row = writer.execute("INSERT INTO comments (issue_id, body) VALUES"
                             " ((SELECT min(id) FROM issues), 'late') RETURNING id, tenant_id"
                             ).fetchone()
        assert row is not None and row[1] is None  # issues are not filled yet
        outcome: dict[str, Any] = {}
        runner = threading.Thread(
            target=lambda: outcome.update(result=apply_stage(dsn, playbook, "backfill")))
        runner.start()
        with psycopg.connect(dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while Journal(conn).step_status("backfill:public.issues") != "done":
                assert time.monotonic() < deadline and runner.is_alive()
                time.sleep(0.02)
            time.sleep(0.3)
            assert load_checkpoint(conn, "public.comments") is None, "did not wait"
        writer.commit()
    runner.join(timeout=60)
    result = outcome["result"].result
    assert result.failed == 0
    assert result.outcome("backfill:public.comments").details["writers_waited_ms"] > 0
    assert wrong_tenants(dsn)["comments"] == 0


def test_rows_left_without_a_key_get_another_pass(db_at: Callable[[float], str]) -> None:
    dsn = db_at(0.2)
    playbook = playbook_for(dsn)
    for stage in ("prepare", "add-column", "backfill"):
        apply_stage(dsn, playbook, stage)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # What a writer that read its parent too early leaves behind.
        conn.execute("UPDATE comments SET tenant_id = NULL WHERE id % 97 = 0")
    again = apply_stage(dsn, playbook, "backfill").result
    details = again.outcome("backfill:public.comments").details
    assert again.failed == 0 and details["passes"] == 1 and details["rows_this_run"] > 0
    assert wrong_tenants(dsn)["comments"] == 0
    # Other tables finished earlier and were skipped without another pass.
    assert again.outcome("backfill:public.audit_log").outcome == "skipped"


def test_lock_timeouts_are_retried(db_at: Callable[[float], str]) -> None:
    dsn = db_at(0.2)
    playbook = playbook_for(dsn)
    playbook = playbook.model_copy(update={"options": playbook.options.model_copy(
        update={"lock_timeout": 50.0, "backoff_initial": 20.0})})
    for stage in ("prepare", "add-column"):
        apply_stage(dsn, playbook, stage)
    step = backfill_step(dsn, playbook, "public.issues")
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT 1 FROM issues WHERE id = (SELECT min(id) FROM issues) FOR UPDATE")
        timer = threading.Timer(0.4, holder.commit)
        timer.start()
        result = run_one(dsn, playbook, step)
        timer.join()
    assert result.retries > 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM issues WHERE tenant_id IS NULL").fetchone()
    assert left == (0,)


def test_a_batch_over_its_statement_timeout_is_cut_smaller(
        db_at: Callable[[float], str]) -> None:
    dsn = db_at(0.2)
    # A user trigger takes 60 ms for each of the first 12 notes; batches time out at
    # 500 ms: 40 rows (12 slow) and 10 (all slow) do, 2 (120 ms) do not, with a wide margin.
    playbook = playbook_for(dsn, user_triggers="fire", batch_target=5.0, batch_start_rows=40,
                            batch_min_rows=2, batch_max_rows=40)
    playbook = playbook.model_copy(update={"options": playbook.options.model_copy(
        update={"ddl_statement_timeout": 500.0})})
    for stage in ("prepare", "add-column"):
        apply_stage(dsn, playbook, stage)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                     " IF NEW.id <= 12 THEN PERFORM pg_sleep(0.06); END IF; RETURN NEW; END $$")
        conn.execute('CREATE TRIGGER slow BEFORE UPDATE ON "Project Notes"'
                     " FOR EACH ROW EXECUTE FUNCTION slow()")
    step = backfill_step(dsn, playbook, 'public."Project Notes"')
    result = run_one(dsn, playbook, step)
    # The 12 slow rows went 2 by 2 after the cuts: no batch reached the timeout.
    assert result.rows == 40 and result.batches >= 7 and max(result.batch_ms) < 500
    assert unfilled_notes(dsn) == 0
