"""The journal schema (Alembic), the Journal API and the migration lock, on real servers."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from rls_migrate import journal as jr
from rls_migrate import migration_lock as ml
from rls_migrate.catalog import QualifiedName
from rls_migrate.errors import ConcurrentRunner
from rls_migrate.steps import Step

# Version-agnostic (the toolkit's own logic over SQL every major runs alike): the core
# majors only, unless RLS_MIGRATE_TEST_ALL_MAJORS=1 (see tests/conftest.py).
pytestmark = pytest.mark.core_majors


ROOT = Path(__file__).resolve().parents[1]
ALEMBIC = Path(sys.executable).with_name("alembic")
TABLES = {"runs", "journal", "step_state", "backfill_checkpoint", "backfill_batches",
          "anomalies", "alembic_version", "violation_samples", "counter_snapshots",
          "sync_conflicts", "verdicts", "write_truth"}
HEAD = "0006"


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, **kwargs)


def schema_tables(dsn: str) -> set[str]:
    with connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'rls_migrate' AND c.relkind = 'r'"
        ).fetchall()
    return {r[0] for r in rows}


def schema_exists(dsn: str) -> bool:
    with connect(dsn) as conn:
        row = conn.execute("SELECT to_regnamespace('rls_migrate') IS NOT NULL").fetchone()
    return bool(row and row[0])


@pytest.fixture
def db(empty_db: str) -> str:
    jr.upgrade_schema(empty_db)
    return empty_db


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(db) as c:
        yield c


def a_step(step_id: str = "add_column:public.t", stage: str = "add-column",
           table: str | None = "public.t") -> Step:
    return Step(id=step_id, stage=stage, kind=step_id.split(":")[0],
                table=QualifiedName.parse(table) if table else None, description="",
                statements=(sql.SQL("SELECT 1"),))


# --------------------------------------------------------------------------- schema


def test_upgrade_creates_the_schema_and_is_idempotent(empty_db: str) -> None:
    assert jr.head_revision() == HEAD
    jr.upgrade_schema(empty_db)
    assert schema_tables(empty_db) == TABLES
    jr.upgrade_schema(empty_db)  # again: nothing to do, no error
    with connect(empty_db) as conn:
        assert jr.schema_revision(conn) == HEAD
        assert conn.execute("SELECT count(*) FROM rls_migrate.alembic_version").fetchone() == (1,)


def test_upgrade_on_an_existing_connection_restores_its_mode(empty_db: str) -> None:
    with connect(empty_db) as conn:
        assert jr.schema_revision(conn) is None
        jr.upgrade_schema(conn)
        assert conn.autocommit is True
        assert jr.schema_revision(conn) == HEAD
        jr.upgrade_schema(conn)
        conn.execute("SELECT 1")  # still usable
    with psycopg.connect(empty_db) as conn:  # not autocommit
        jr.upgrade_schema(conn)
        assert conn.autocommit is False
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert schema_tables(empty_db) == TABLES


def test_upgrade_refuses_a_connection_inside_a_transaction(empty_db: str) -> None:
    with psycopg.connect(empty_db) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(ValueError, match="idle"):
            jr.upgrade_schema(conn)


def test_downgrade_drops_everything_and_leaves_the_users_alembic_alone(empty_db: str) -> None:
    with connect(empty_db) as conn:
        conn.execute("CREATE TABLE public.alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO public.alembic_version VALUES ('users_head')")
    jr.upgrade_schema(empty_db)
    jr.downgrade_schema(empty_db)
    assert not schema_exists(empty_db)
    with connect(empty_db) as conn:
        assert conn.execute("SELECT version_num FROM public.alembic_version").fetchall() == [
            ("users_head",)]
    jr.upgrade_schema(empty_db)  # and back up again
    assert schema_tables(empty_db) == TABLES


def test_downgrade_keeps_the_schema_when_something_else_lives_in_it(empty_db: str) -> None:
    jr.upgrade_schema(empty_db)
    with connect(empty_db) as conn:
        conn.execute("CREATE FUNCTION rls_migrate.helper() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    jr.downgrade_schema(empty_db)
    # Never CASCADE into objects the revisions did not create (a policy may call them).
    assert schema_exists(empty_db)
    assert schema_tables(empty_db) <= {"alembic_version"}
    with connect(empty_db) as conn:
        assert conn.execute("SELECT rls_migrate.helper()").fetchone() == (1,)
        assert jr.schema_revision(conn) is None


def _alembic(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("RLS_MIGRATE_DSN", "DATABASE_URL")}
    full_env.update(env or {})
    return subprocess.run(
        [str(ALEMBIC), "-c", "alembic.ini", *args], cwd=ROOT, env=full_env,
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.core_majors  # the alembic CLI; in-process journal tests run on every major
def test_alembic_cli_upgrade_and_downgrade(empty_db: str) -> None:
    up = _alembic("-x", f"dsn={empty_db}", "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert schema_tables(empty_db) == TABLES
    current = _alembic("current", env={"RLS_MIGRATE_DSN": empty_db})
    assert current.returncode == 0, current.stderr
    assert f"{HEAD} (head)" in current.stdout
    down = _alembic("downgrade", "base", env={"RLS_MIGRATE_DSN": empty_db})
    assert down.returncode == 0, down.stderr
    assert not schema_exists(empty_db)


def test_alembic_cli_without_a_dsn_says_what_to_set() -> None:
    result = _alembic("upgrade", "head")
    assert result.returncode != 0
    assert "RLS_MIGRATE_DSN" in result.stderr


def test_alembic_cli_offline_sql_mentions_the_revokes() -> None:
    result = _alembic("upgrade", "head", "--sql")
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE rls_migrate.journal" in result.stdout
    assert "REVOKE ALL ON SCHEMA rls_migrate FROM PUBLIC" in result.stdout


def test_the_application_role_cannot_read_or_write_the_journal(empty_db: str) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    with connect(empty_db) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        # Even a database whose default privileges hand every new table to PUBLIC...
        admin.execute("ALTER DEFAULT PRIVILEGES GRANT SELECT, INSERT ON TABLES TO PUBLIC")
    try:
        jr.upgrade_schema(empty_db)
        with connect(empty_db) as admin:
            # ...and an observe stage that lets the role call helper functions in the schema.
            admin.execute(sql.SQL("GRANT USAGE ON SCHEMA rls_migrate TO {}")
                          .format(sql.Identifier(role)))
            privileges = admin.execute(
                "SELECT c.relname, has_table_privilege(%s, c.oid, 'SELECT, INSERT, UPDATE') "
                "FROM pg_class c WHERE c.relnamespace = 'rls_migrate'::regnamespace "
                "AND c.relkind IN ('r', 'S')", [role],
            ).fetchall()
            assert privileges and not any(p for _, p in privileges), privileges
        with connect(make_conninfo(empty_db, user=role)) as app:
            for statement in ("SELECT * FROM rls_migrate.journal",
                              "SELECT * FROM rls_migrate.step_state",
                              "SELECT * FROM rls_migrate.alembic_version",
                              "INSERT INTO rls_migrate.runs (run_id, command) "
                              "VALUES (gen_random_uuid(), 'x')",
                              "DELETE FROM rls_migrate.backfill_checkpoint"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    app.execute(statement)
    finally:
        with connect(empty_db) as admin:
            admin.execute("ALTER DEFAULT PRIVILEGES REVOKE SELECT, INSERT ON TABLES FROM PUBLIC")
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# --------------------------------------------------------------------------- journal


def test_record_writes_the_journal_and_the_step_state(conn: psycopg.Connection[Any]) -> None:
    journal = jr.Journal(conn)
    run_id = journal.start_run("apply", "add-column")
    step = a_step()
    t0 = dt.datetime.now(dt.UTC)
    journal.record(step, "failed", 3, t0, t0 + dt.timedelta(milliseconds=250),
                   error="lock timeout", details={"attempts": [{"ms": 100.0}], "id": run_id})
    assert journal.step_status(step.id) is None  # a failure changes no state
    journal.record(step, "done", 1, t0, t0 + dt.timedelta(milliseconds=20))
    assert journal.step_status(step.id) == "done"
    journal.record(step, "undone", 1, t0, t0)
    assert journal.step_status(step.id) == "undone"
    journal.record(step, "skipped", 0, t0, t0)
    assert journal.step_status(step.id) == "done"
    journal.finish_run("done")

    entries = journal.entries(step_id=step.id)
    assert [e["outcome"] for e in entries] == ["failed", "done", "undone", "skipped"]
    first = entries[0]
    assert first["run_id"] == run_id and first["attempts"] == 3
    assert first["duration_ms"] == pytest.approx(250.0)
    assert first["table_name"] == "public.t" and first["kind"] == "add_column"
    assert first["details"]["attempts"] == [{"ms": 100.0}]
    assert first["details"]["id"] == str(run_id)  # non-JSON values kept as text
    (run,) = journal.runs()
    assert run["outcome"] == "done" and run["finished_at"] is not None
    assert run["pid"] == os.getpid()
    assert journal.entries(run_id=uuid.uuid4()) == []


def test_record_rejects_an_unknown_outcome(conn: psycopg.Connection[Any]) -> None:
    t0 = dt.datetime.now(dt.UTC)
    with pytest.raises(ValueError, match="unknown outcome"):
        jr.Journal(conn).record(a_step(), "finished", 1, t0, t0)


def test_journal_writes_refuse_to_join_a_steps_transaction(db: str) -> None:
    with psycopg.connect(db) as conn:
        conn.execute("SELECT 1")  # a transaction is open
        t0 = dt.datetime.now(dt.UTC)
        with pytest.raises(RuntimeError, match="idle"):
            jr.Journal(conn).record(a_step(), "done", 1, t0, t0)


def test_status_rows_group_by_table_and_stage(conn: psycopg.Connection[Any]) -> None:
    journal = jr.Journal(conn)
    t0 = dt.datetime.now(dt.UTC)
    a, b = a_step("add_column:public.t"), a_step("sync_trigger:public.t")
    other = a_step("add_column:public.u", table="public.u")
    journal.record(a, "done", 1, t0, t0)
    journal.record(b, "failed", 4, t0, t0, error="could not take the lock")
    journal.record(other, "done", 1, t0, t0)
    rows = {(r.table_name, r.stage): r for r in journal.status_rows()}
    t = rows[("public.t", "add-column")]
    assert (t.steps, t.done, t.undone) == (2, 1, 0)
    assert t.last_outcome == "failed" and t.last_error == "could not take the lock"
    assert t.state == "failed"
    assert rows[("public.u", "add-column")].state == "done"
    steps = {r.step_id: r for r in journal.step_rows()}
    assert steps[b.id].status is None and steps[b.id].last_outcome == "failed"
    assert steps[a.id].status == "done" and steps[a.id].attempts == 1


def test_batch_and_checkpoint_commit_or_roll_back_with_the_batch(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    conn.execute("INSERT INTO t SELECT g, NULL FROM generate_series(1, 10) g")
    journal = jr.Journal(conn)
    table = QualifiedName("public", "t")

    def batch(no: int, lo: int, hi: int, fail: bool = False) -> None:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("UPDATE t SET v = coalesce(v, 0) + 1 WHERE id > %s AND id <= %s",
                        [lo, hi])
            jr.record_batch(cur, table, no, (lo,), (hi,), cur.rowcount, 1.5)
            jr.save_checkpoint(cur, table, (hi,), (10,), hi, no, hi == 10)
            if fail:
                raise RuntimeError("kill -9 before commit")

    batch(1, 0, 5)
    with pytest.raises(RuntimeError):
        batch(2, 5, 10, fail=True)
    checkpoint = journal.load_checkpoint(table)
    assert checkpoint is not None
    assert (checkpoint.last_key, checkpoint.rows_done, checkpoint.batches) == ((5,), 5, 1)
    assert not checkpoint.finished
    # Replaying batch 1 (a resume that forgot its checkpoint) fails and changes nothing.
    with pytest.raises(psycopg.errors.UniqueViolation):
        batch(1, 0, 5)
    assert conn.execute("SELECT count(*) FROM t WHERE v > 1").fetchone() == (0,)
    batch(2, 5, 10)
    checkpoint = journal.load_checkpoint(table)
    assert checkpoint is not None and checkpoint.finished and checkpoint.max_key == (10,)
    assert [(b["batch_no"], b["lo"], b["hi"], b["rows"]) for b in journal.batches(table)] == [
        (1, [0], [5], 5), (2, [5], [10], 5)]
    assert conn.execute("SELECT count(*) FROM t WHERE v = 1").fetchone() == (10,)
    journal.reset_backfill(table)
    assert journal.load_checkpoint(table) is None and journal.batches(table) == []


def test_checkpoint_keys_of_other_types_round_trip_as_text(
    conn: psycopg.Connection[Any],
) -> None:
    journal = jr.Journal(conn)
    key = (uuid.UUID(int=7), dt.date(2024, 5, 1), "(0,12)")
    journal.save_checkpoint("public.x", key, None, 1, 1, False)
    checkpoint = journal.load_checkpoint("public.x")
    assert checkpoint is not None
    assert checkpoint.last_key == (str(uuid.UUID(int=7)), "2024-05-01", "(0,12)")
    assert checkpoint.max_key is None
    journal.record_batch("public.x", 1, None, key, 1, 2.0)
    assert journal.batches("public.x")[0]["lo"] is None


def test_anomalies_are_upserted(conn: psycopg.Connection[Any]) -> None:
    journal = jr.Journal(conn)
    journal.record_anomaly("public.comments", "orphan", 3, [[1], [2], [3]])
    journal.record_anomaly("public.comments", "orphan", 2, [[1], [2]])
    journal.record_anomaly("public.comments", "conflict", 1, [[9]])
    found = {(a.table_name, a.kind): a for a in journal.anomalies()}
    assert found[("public.comments", "orphan")].count == 2
    assert found[("public.comments", "orphan")].sample == [[1], [2]]
    assert found[("public.comments", "conflict")].count == 1
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        journal.record_anomaly("public.comments", "missing", 1, [])


# --------------------------------------------------------------------------- migration lock


def test_a_second_runner_is_refused_with_the_first_ones_name(db: str) -> None:
    with connect(db) as first, connect(db) as second:
        first_pid = first.info.backend_pid
        with ml.MigrationLock(first, command="apply"):
            with pytest.raises(ConcurrentRunner) as caught:
                ml.MigrationLock(second, command="rollback").acquire()
            message = str(caught.value)
            assert f"pid {first_pid}" in message
            assert f"rls-migrate apply pid={os.getpid()}" in message
            assert f"pg_terminate_backend({first_pid})" in message
            assert caught.value.exit_code == 6
        # Released on exit: the second runner gets it now.
        with ml.MigrationLock(second, command="rollback") as lock:
            assert lock.held
        name = second.execute("SHOW application_name").fetchone()
        assert name == (ml.runner_name("rollback"),)


def test_the_lock_dies_with_the_runners_session(db: str) -> None:
    first = connect(db)
    lock = ml.MigrationLock(first, command="apply")
    lock.acquire()
    with connect(db) as other:
        with pytest.raises(ConcurrentRunner):
            ml.MigrationLock(other).acquire()
        # What a kill -9 of the runner amounts to for the server: the session ends.
        other.execute("SELECT pg_terminate_backend(%s)", [first.info.backend_pid])
        other.execute("SELECT pg_sleep(0.1)")
        with ml.MigrationLock(other):
            pass
    lock.release()  # on a dead session: nothing to do, no error
    first.close()


def test_lock_keys_are_stable() -> None:
    assert ml.MIGRATION_LOCK_KEY == ml._lock_key("rls_migrate")
    assert ml.MIGRATION_LOCK_KEY != ml.SCHEMA_UPGRADE_LOCK_KEY
    assert -(2**63) <= ml.MIGRATION_LOCK_KEY < 2**63
    assert len(ml.runner_name("x" * 100).encode()) <= 63
