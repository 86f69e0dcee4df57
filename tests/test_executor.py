"""The executor on real servers: skips, transactions, CIC, lock contention under a workload,
retries with fresh timeouts, failures that name the blocker, Ctrl-C, rollback, dry runs."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rls_migrate import journal as jr
from rls_migrate import logs
from rls_migrate.catalog import QualifiedName
from rls_migrate.errors import Interrupted, StepFailed
from rls_migrate.executor import Executor
from rls_migrate.lockholders import lock_holders
from rls_migrate.outcomes import StepOutcome
from rls_migrate.playbook import Options
from rls_migrate.progress import RichProgress, make_progress
from rls_migrate.stages.index.build_watcher import drop_invalid_index
from rls_migrate.steps import Lock, StagePlan, Step

# Version-agnostic (the toolkit's own logic over SQL every major runs alike): the core
# majors only, unless RLS_MIGRATE_TEST_ALL_MAJORS=1 (see tests/conftest.py).
pytestmark = pytest.mark.core_majors


T = QualifiedName("public", "t")
LOCK_TIMEOUT_MS = 100.0
# Scheduling, the round trip and the retry's own statements: what a wait may add to
# lock_timeout. Typical: 1-15 ms; a busy 2-core CI machine has shown 140 ms once. Without
# the per-attempt lock_timeout a wait would last as long as the blocker (600 ms, or forever).
SLACK_MS = float(os.environ.get("RLS_MIGRATE_TEST_LOCK_SLACK_MS", "200"))


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, **kwargs)


@pytest.fixture
def db(empty_db: str) -> str:
    jr.upgrade_schema(empty_db)
    with connect(empty_db) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO t SELECT g, g % 7 FROM generate_series(1, 500) g")
        conn.execute("CREATE SEQUENCE attempts_seq")
    return empty_db


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(db, application_name="rls-migrate test-runner") as c:
        yield c


def options(**overrides: Any) -> Options:
    values: dict[str, Any] = {"lock_timeout": LOCK_TIMEOUT_MS, "ddl_statement_timeout": 5000,
                              "retries": 3, "backoff_initial": 10, "backoff_max": 40}
    values.update(overrides)
    return Options(**values)


def make_executor(conn: psycopg.Connection[Any], **kwargs: Any) -> Executor:
    opts = kwargs.pop("opts", None) or options()
    kwargs.setdefault("rng", random.Random(7))
    return Executor(conn, opts, jr.Journal(conn), **kwargs)


def step(step_id: str, *statements: str, lock: Lock = Lock.ACCESS_EXCLUSIVE,
         transactional: bool = True, done_check: str | None = None,
         inverse: tuple[str, ...] = (), kind: str | None = None,
         inverse_transactional: bool = True) -> Step:
    return Step(
        id=step_id, stage="add-column", kind=kind or step_id.split(":")[0], table=T,
        description=step_id, statements=tuple(sql.SQL(s) for s in statements),  # type: ignore[arg-type, unused-ignore]
        lock=lock, transactional=transactional,
        done_check=sql.SQL(done_check) if done_check else None,  # type: ignore[arg-type, unused-ignore]
        inverse=tuple(sql.SQL(s) for s in inverse),  # type: ignore[arg-type, unused-ignore]
        inverse_transactional=inverse_transactional, inverse_lock=lock,
    )


def plan(*steps: Step) -> StagePlan:
    return StagePlan("add-column", tuple(steps))


def has_column(dsn: str, column: str) -> bool:
    with connect(dsn) as c:
        row = c.execute(
            "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'public.t'::regclass "
            "AND attname = %s AND NOT attisdropped)", [column]).fetchone()
    return bool(row and row[0])


def column_check(column: str) -> str:
    # Constant test SQL, composed here only to keep the steps short.
    return ("SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'public.t'::regclass "
            f"AND attname = '{column}' AND NOT attisdropped)")


ADD_X = step("add_column:public.t", "ALTER TABLE t ADD COLUMN x int",
             done_check=column_check("x"), inverse=("ALTER TABLE t DROP COLUMN IF EXISTS x",))


# --------------------------------------------------------------------------- basics


def test_transactional_step_commits_and_is_journaled(db: str, conn: psycopg.Connection[Any]) -> None:
    executor = make_executor(conn)
    result = executor.run(plan(ADD_X))
    assert (result.done, result.skipped, result.failed) == (1, 0, 0)
    assert has_column(db, "x")
    outcome = result.outcome(ADD_X.id)
    assert outcome.attempts == 1 and outcome.duration_ms > 0
    (entry,) = executor.journal.entries(step_id=ADD_X.id)
    assert entry["outcome"] == "done" and entry["attempts"] == 1
    assert entry["details"]["lock_timeout_ms"] == LOCK_TIMEOUT_MS
    assert executor.journal.step_status(ADD_X.id) == "done"
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_done_check_true_skips_the_step(conn: psycopg.Connection[Any]) -> None:
    never = step("never:public.t", "SELECT 1/0", done_check="SELECT true")
    executor = make_executor(conn)
    result = executor.run(plan(never))
    assert (result.done, result.skipped) == (0, 1)
    assert result.outcome(never.id).details == {"reason": "done_check"}
    (entry,) = executor.journal.entries(step_id=never.id)
    assert entry["outcome"] == "skipped"


def test_a_second_run_skips_what_is_done(conn: psycopg.Connection[Any]) -> None:
    no_check = step("add_column:public.t#y", "ALTER TABLE t ADD COLUMN y int")
    executor = make_executor(conn)
    executor.run(plan(ADD_X, no_check))
    again = executor.run(plan(ADD_X, no_check))
    assert (again.done, again.skipped) == (0, 2)
    # Without a done_check, the journal's state decides.
    assert again.outcome(no_check.id).details == {"reason": "journal"}


def test_a_failing_step_rolls_back_whole_and_is_journaled(
    db: str, conn: psycopg.Connection[Any],
) -> None:
    bad = step("bad:public.t", "ALTER TABLE t ADD COLUMN z int", "SELECT 1/0")
    executor = make_executor(conn)
    with pytest.raises(StepFailed, match=r"bad:public.t \(run\) failed \[22012\]: division by zero"):
        executor.run(plan(ADD_X, bad, step("after:public.t", "SELECT 1")))
    assert not has_column(db, "z")
    assert executor.last_result is not None
    assert [o.outcome for o in executor.last_result.outcomes] == ["done"]
    (entry,) = executor.journal.entries(step_id=bad.id)
    assert entry["outcome"] == "failed" and "division by zero" in entry["error"]
    assert executor.journal.entries(step_id="after:public.t") == []
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_executor_needs_autocommit(db: str) -> None:
    with psycopg.connect(db) as c, pytest.raises(ValueError, match="autocommit"):
        Executor(c, options(), jr.Journal(c))


def test_dry_run_executes_and_journals_nothing(db: str, conn: psycopg.Connection[Any]) -> None:
    done = step("done:public.t", "SELECT 1", done_check="SELECT true")
    create = step("create:public.t", "CREATE TABLE made (id int)",
                  done_check="SELECT to_regclass('public.made') IS NOT NULL")
    executor = make_executor(conn)
    result = executor.run(plan(done, create, ADD_X), dry_run=True)
    assert result.dry_run
    assert result.would_run == [create.id, ADD_X.id]
    assert result.skipped == 1 and result.done == 0
    assert not has_column(db, "x")
    assert conn.execute("SELECT to_regclass('public.made')").fetchone() == (None,)
    assert executor.journal.entries() == []


def test_done_checks_run_read_only(conn: psycopg.Connection[Any]) -> None:
    sneaky = step("sneaky:public.t", "SELECT 1",
                  done_check="WITH i AS (INSERT INTO t VALUES (9999, 0) RETURNING 1) "
                             "SELECT count(*) > 0 FROM i")
    with pytest.raises(StepFailed, match=r"\(done check\) failed .*read-only transaction"):
        make_executor(conn).run(plan(sneaky), dry_run=True)
    assert conn.execute("SELECT count(*) FROM t WHERE id = 9999").fetchone() == (0,)


def test_create_index_concurrently_runs_outside_a_transaction(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute("SET lock_timeout = '7s'")
    cic = step(
        "create_index:public.t_v_idx", "CREATE INDEX CONCURRENTLY t_v_idx ON t (v)",
        lock=Lock.SHARE_UPDATE_EXCLUSIVE, transactional=False,
        done_check="SELECT EXISTS (SELECT FROM pg_index WHERE indexrelid = "
                   "to_regclass('public.t_v_idx') AND indisvalid)",
        inverse=("DROP INDEX CONCURRENTLY IF EXISTS t_v_idx",), inverse_transactional=False,
    )
    executor = make_executor(conn)
    assert executor.run(plan(cic)).done == 1
    assert conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'public.t_v_idx'::regclass"
    ).fetchone() == (True,)
    # The session's own timeouts are back to what they were.
    assert conn.execute("SHOW lock_timeout").fetchone() == ("7s",)
    assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
    assert executor.run(plan(cic)).skipped == 1
    assert executor.rollback(plan(cic)).undone == 1
    assert conn.execute("SELECT to_regclass('public.t_v_idx')").fetchone() == (None,)


def test_drop_invalid_index_cleans_up_after_a_failed_cic(conn: psycopg.Connection[Any]) -> None:
    hooked: list[str] = []

    def before_retry(executor: Executor, failed: Step, error: BaseException) -> None:
        hooked.append(type(error).__name__)
        assert drop_invalid_index(executor.conn, "public", "t_v_key")

    cic = step("create_index:public.t_v_key",
               "CREATE UNIQUE INDEX CONCURRENTLY t_v_key ON t (v)",
               lock=Lock.SHARE_UPDATE_EXCLUSIVE, transactional=False)
    executor = make_executor(conn, retry_hooks={"create_index": before_retry})
    with pytest.raises(StepFailed, match="could not create unique index"):
        executor.run(plan(cic))
    # A unique violation is not retried; the INVALID index is what the next run meets.
    assert hooked == []
    assert conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'public.t_v_key'::regclass"
    ).fetchone() == (False,)
    assert drop_invalid_index(conn, "public", "t_v_key")
    assert not drop_invalid_index(conn, "public", "t_v_key")
    assert conn.execute("SELECT to_regclass('public.t_v_key')").fetchone() == (None,)


# --------------------------------------------------------------------------- retries


def failing_first(n: int, sqlstate: str) -> str:
    """A statement that raises ``sqlstate`` on its first ``n`` runs (a sequence counts
    runs, and is not rolled back with the attempt)."""
    return (
        "DO $$ BEGIN IF nextval('attempts_seq') <= " + str(n) + " THEN "
        "RAISE EXCEPTION 'simulated' USING ERRCODE = '" + sqlstate + "'; END IF; END $$"
    )


def test_lock_timeouts_are_retried_with_jittered_backoff(conn: psycopg.Connection[Any]) -> None:
    slept: list[float] = []
    hooked: list[str] = []
    flaky = step("flaky:public.t", failing_first(3, "55P03"))
    executor = make_executor(
        conn, sleep=slept.append,
        retry_hooks={"flaky": lambda ex, st, err: hooked.append(type(err).__name__)},
    )
    result = executor.run(plan(flaky))
    assert result.outcome(flaky.id).attempts == 4
    assert len(slept) == 3 and hooked == ["LockNotAvailable"] * 3
    # Full jitter under a cap that doubles from backoff_initial (10 ms) up to backoff_max (40).
    for retry, seconds in enumerate(slept):
        assert 0 <= seconds * 1000 <= min(40.0, 10.0 * 2**retry)
    assert len(set(slept)) == 3


def test_deadlocks_are_retried_a_few_times(conn: psycopg.Connection[Any]) -> None:
    executor = make_executor(conn, sleep=lambda s: None)
    assert executor.run(plan(step("dl:public.t", failing_first(2, "40P01")))).done == 1
    conn.execute("SELECT setval('attempts_seq', 1, false)")
    with pytest.raises(StepFailed, match=r"after 4 attempts: simulated"):
        executor.run(plan(step("dl2:public.t", failing_first(10, "40001"))))


def test_retry_limit_gives_up_with_step_failed(conn: psycopg.Connection[Any]) -> None:
    executor = make_executor(conn, opts=options(retries=2), sleep=lambda s: None)
    with pytest.raises(StepFailed) as caught:
        executor.run(plan(step("stuck:public.t", failing_first(100, "55P03"))))
    assert "in 3 attempts" in str(caught.value)
    assert "No other session holds a lock" in str(caught.value)
    assert caught.value.exit_code == 7


class Workload:
    """An application stand-in: a SELECT on the table every few milliseconds, timing each."""

    def __init__(self, dsn: str) -> None:
        self.conn = connect(dsn, application_name="workload")
        self.latencies_ms: list[float] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                self.conn.execute("SELECT count(*) FROM t")
            except psycopg.Error as exc:
                self.errors.append(exc)
            self.latencies_ms.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.003)

    def __enter__(self) -> Workload:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.conn.close()

    @property
    def worst_ms(self) -> float:
        return max(self.latencies_ms)


def hold_access_share(dsn: str) -> psycopg.Connection[Any]:
    """A session with an open transaction that has read the table (ACCESS SHARE)."""
    blocker = psycopg.connect(dsn, application_name="long-report")
    blocker.execute("SELECT count(*) FROM t")
    return blocker


def test_contention_each_attempt_is_bounded_and_the_step_succeeds_after_the_blocker(
    db: str, conn: psycopg.Connection[Any], record_property: Callable[[str, object], None],
) -> None:
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    add = step(
        "add_column:public.t#w",
        # Reports, from inside each attempt's transaction, the timeouts it runs under.
        "DO $$ BEGIN RAISE NOTICE 'timeouts %/%', current_setting('lock_timeout'), "
        "current_setting('statement_timeout'); END $$",
        "ALTER TABLE t ADD COLUMN w int",
    )
    executor = make_executor(conn, opts=options(retries=20, backoff_initial=20, backoff_max=60))
    blocker = hold_access_share(db)
    release = threading.Timer(0.6, blocker.commit)
    with Workload(db) as workload:
        time.sleep(0.05)
        release.start()
        t0 = time.perf_counter()
        result = executor.run(plan(add))
        elapsed_ms = (time.perf_counter() - t0) * 1000
        time.sleep(0.05)
    release.join()
    blocker.close()
    outcome = result.outcome(add.id)
    attempt_ms = outcome.details["attempt_ms"]
    record_property("worst_workload_wait_ms", round(workload.worst_ms, 1))
    record_property("attempt_ms", attempt_ms)
    print(f"\nlock_timeout {LOCK_TIMEOUT_MS} ms: worst workload wait {workload.worst_ms:.1f} ms "
          f"over {len(workload.latencies_ms)} queries; attempts {attempt_ms}; "
          f"step {elapsed_ms:.0f} ms")
    assert outcome.outcome == "done" and has_column(db, "w")
    assert outcome.attempts >= 3, "the blocker held the table for ~600 ms"
    assert not workload.errors
    assert len(workload.latencies_ms) > 20
    # No application query waited much longer than one lock_timeout.
    assert workload.worst_ms < LOCK_TIMEOUT_MS + SLACK_MS
    # Every attempt, not just the first, gave up within lock_timeout...
    assert all(ms < LOCK_TIMEOUT_MS + SLACK_MS for ms in attempt_ms[:-1])
    # ...because every attempt set it again, in its own transaction.
    assert notices == ["timeouts 100ms/5s"] * outcome.attempts


def test_a_blocker_that_never_lets_go_fails_the_step_naming_it(
    db: str, conn: psycopg.Connection[Any], record_property: Callable[[str, object], None],
) -> None:
    add = step("add_column:public.t#w", "ALTER TABLE t ADD COLUMN w int")
    retries, backoff_max = 3, 40.0
    executor = make_executor(conn, opts=options(retries=retries, backoff_max=backoff_max))
    blocker = hold_access_share(db)
    blocker_pid = blocker.info.backend_pid
    try:
        with Workload(db) as workload:
            t0 = time.perf_counter()
            with pytest.raises(StepFailed) as caught:
                executor.run(plan(add))
            elapsed_ms = (time.perf_counter() - t0) * 1000
        holders = lock_holders(conn, T, conflicting_with=Lock.ACCESS_EXCLUSIVE)
    finally:
        blocker.close()
    message = str(caught.value)
    record_property("worst_workload_wait_ms", round(workload.worst_ms, 1))
    print(f"\ngave up after {elapsed_ms:.0f} ms; worst workload wait {workload.worst_ms:.1f} ms;"
          f"\n{message}")
    assert f"pid {blocker_pid}" in message
    assert "'long-report'" in message and "idle in transaction" in message
    assert "ACCESS EXCLUSIVE lock on public.t" in message
    assert f"in {retries + 1} attempts" in message
    assert f"pg_terminate_backend({blocker_pid})" in message
    assert [h["pid"] for h in holders] == [blocker_pid]
    assert holders[0]["mode"] == "AccessShareLock" and holders[0]["xact_age_ms"] > 0
    # Bounded: attempts x lock_timeout plus the backoff (at most backoff_max each) and slack.
    budget = (retries + 1) * LOCK_TIMEOUT_MS + retries * backoff_max
    assert elapsed_ms < budget + (retries + 1) * SLACK_MS
    assert elapsed_ms >= (retries + 1) * LOCK_TIMEOUT_MS * 0.9
    assert workload.worst_ms < LOCK_TIMEOUT_MS + SLACK_MS
    (entry,) = executor.journal.entries(step_id=add.id)
    assert entry["outcome"] == "failed" and entry["attempts"] == retries + 1
    assert [a["error"] for a in entry["details"]["attempts"]] == ["lock_timeout"] * (retries + 1)
    assert all(a["ms"] < LOCK_TIMEOUT_MS + SLACK_MS for a in entry["details"]["attempts"])
    assert not has_column(db, "w")


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_during_backoff_journals_interrupted(conn: psycopg.Connection[Any]) -> None:
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    flaky = step("flaky:public.t", failing_first(5, "55P03"))
    executor = make_executor(conn, sleep=interrupt)
    with pytest.raises(Interrupted) as caught:
        executor.run(plan(ADD_X, flaky))
    assert caught.value.exit_code == 130
    assert "resumable" in str(caught.value) and "--stage add-column" in str(caught.value)
    (entry,) = executor.journal.entries(step_id=flaky.id)
    assert entry["outcome"] == "interrupted" and entry["attempts"] == 1
    assert executor.journal.step_status(ADD_X.id) == "done"
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_ctrl_c_cancels_the_running_statement(conn: psycopg.Connection[Any], db: str) -> None:
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        pytest.skip("needs the main thread and Python's own SIGINT handler")
    main = threading.main_thread().ident
    assert main is not None
    slow = step("slow:public.t", "ALTER TABLE t ADD COLUMN s int", "SELECT pg_sleep(20)")
    executor = make_executor(conn)
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(Interrupted):
        executor.run(plan(slow))
    timer.join()
    assert time.perf_counter() - t0 < 5
    assert not has_column(db, "s")
    (entry,) = executor.journal.entries(step_id=slow.id)
    assert entry["outcome"] == "interrupted"
    with connect(db) as other:
        state = other.execute("SELECT state FROM pg_stat_activity WHERE pid = %s",
                              [conn.info.backend_pid]).fetchone()
    assert state == ("idle",)


# --------------------------------------------------------------------------- rollback


def test_rollback_runs_inverses_in_reverse_order(db: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE undo_log (n serial, step text)")

    def logged(name: str, done_check: str | None = None) -> Step:
        return step(f"{name}:public.t", f"ALTER TABLE t ADD COLUMN {name} int",
                    done_check=done_check,
                    inverse=(f"ALTER TABLE t DROP COLUMN {name}",
                             f"INSERT INTO undo_log (step) VALUES ('{name}')"))

    a, b, c = logged("a"), logged("b"), logged("c")
    never = step("never:public.t", "SELECT 1", done_check="SELECT true",
                 inverse=("INSERT INTO undo_log (step) VALUES ('never')",))
    irreversible = step("irreversible:public.t", "SELECT 1")
    executor = make_executor(conn)
    executor.run(plan(a, b, irreversible, never, c))
    # "never" was skipped by its done check: journaled done (its state is applied), so it
    # is undone like the others; only a step without an inverse stays.
    result = executor.rollback(plan(a, b, irreversible, never, c))
    assert result.stage == "rollback add-column"
    assert [(o.step_id.split(":")[0], o.outcome) for o in result.outcomes] == [
        ("c", "undone"), ("never", "undone"), ("irreversible", "skipped"), ("b", "undone"),
        ("a", "undone")]
    assert [r[0] for r in conn.execute("SELECT step FROM undo_log ORDER BY n")] == [
        "c", "never", "b", "a"]
    assert not any(has_column(db, n) for n in "abc")
    journal = executor.journal
    assert journal.step_status(a.id) == "undone"
    assert journal.step_status(irreversible.id) == "done"
    # Undoing again does nothing; applying again redoes what was undone.
    assert executor.rollback(plan(a, b, c)).undone == 0
    assert executor.run(plan(a, b, c)).done == 3


# --------------------------------------------------------------------------- kind handlers


def test_a_kind_handler_runs_the_step_and_the_executor_journals_it(
    conn: psycopg.Connection[Any],
) -> None:
    calls: list[str] = []

    def batches(executor: Executor, st: Step) -> StepOutcome:
        started = dt.datetime.now(dt.UTC)
        total = 0
        for lo in (0, 250):
            def one(cur: psycopg.Cursor[Any], lo: int = lo) -> int:
                cur.execute("UPDATE t SET v = -1 WHERE id > %s AND id <= %s", [lo, lo + 250])
                rows = cur.rowcount
                jr.record_batch(cur, T, lo // 250 + 1, (lo,), (lo + 250,), rows, 1.0)
                return rows
            rows, _attempts = executor.run_in_transaction(st, one, lock=Lock.ROW_EXCLUSIVE)
            total += rows
        calls.append(st.id)
        return StepOutcome.finish(st, "done", started=started, attempts=2,
                                  details={"rows": total})

    fill = step("fill:public.t", kind="backfill")
    executor = make_executor(conn, handlers={"backfill": batches})
    result = executor.run(plan(fill))
    assert calls == [fill.id] and result.outcome(fill.id).details == {"rows": 500}
    (entry,) = executor.journal.entries(step_id=fill.id)
    assert entry["outcome"] == "done" and entry["details"] == {"rows": 500}
    assert len(executor.journal.batches(T)) == 2
    assert conn.execute("SELECT count(*) FROM t WHERE v = -1").fetchone() == (500,)
    # The class-wide registry is what stages use.
    assert Executor.register("noop-test")(batches) is batches
    assert Executor(conn, options(), jr.Journal(conn)).handler_for("noop-test") is batches
    del Executor.kind_handlers["noop-test"]


def test_a_handler_that_leaves_a_transaction_open_fails(conn: psycopg.Connection[Any]) -> None:
    def sloppy(executor: Executor, st: Step) -> StepOutcome:
        executor.conn.execute("BEGIN")
        executor.conn.execute("UPDATE t SET v = 0")
        return StepOutcome.finish(st, "done", started=dt.datetime.now(dt.UTC))

    executor = make_executor(conn, handlers={"sloppy": sloppy})
    with pytest.raises(StepFailed, match="left a transaction open"):
        executor.run(plan(step("sloppy:public.t")))
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert conn.execute("SELECT count(*) FROM t WHERE v = 0").fetchone() != (500,)


# --------------------------------------------------------------------------- logs, progress


def test_json_logs_are_one_object_per_line(conn: psycopg.Connection[Any]) -> None:
    stream = io.StringIO()
    logs.configure_logging("json", "info", stream=stream)
    try:
        make_executor(conn, logger=logs.get_logger(run="test")).run(plan(ADD_X))
        assert make_progress() is None
    finally:
        logs.configure_logging("text", "info")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    events = [line["event"] for line in lines]
    assert events == ["stage.start", "step.start", "step.done", "stage.done"]
    done = lines[2]
    assert done["step"] == ADD_X.id and done["table"] == "public.t" and done["run"] == "test"
    assert done["level"] == "info" and "timestamp" in done and done["attempts"] == 1


def test_rich_progress_follows_the_steps(conn: psycopg.Connection[Any]) -> None:
    stream = io.StringIO()
    assert make_progress(stream) is None  # not a terminal
    with RichProgress(stream) as progress:
        make_executor(conn, progress=progress).run(plan(ADD_X, step("b:public.t", "SELECT 1")))
        progress.step_advance(ADD_X, 5, 10)
    assert "add-column" in stream.getvalue()
