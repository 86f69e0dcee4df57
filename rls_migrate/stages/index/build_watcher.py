"""The ``create_index`` kind handler: runs a build like the executor runs any
non-transactional step, while a second connection polls ``pg_stat_progress_create_index`` for
the progress display and names the sessions a build waits for."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from rls_migrate.executor import Executor, _Trace
from rls_migrate.outcomes import StepOutcome, now
from rls_migrate.sqlcompose import identifier
from rls_migrate.steps import Step

PROGRESS_INTERVAL_S = 0.5
CLIENT_CHECK_INTERVAL = "1s"


def build_progress(phase: str, blocks_done: int, blocks_total: int, tuples_done: int,
                   tuples_total: int) -> float:
    """A concurrent build's progress in percent, from its ``pg_stat_progress_create_index``
    phase and counters: the table scan and the tree load are most of the work, the
    validation scan of the table most of the rest."""
    def part(done: int, total: int) -> float:
        return min(done / total, 1.0) if total > 0 else 0.0

    spans: tuple[tuple[str, float, float, float], ...] = (
        ("building index: scanning table", 0, 45, part(blocks_done, blocks_total)),
        ("building index: sorting", 45, 50, 0),
        ("building index: loading tuples", 50, 70, part(tuples_done, tuples_total)),
        ("building index", 0, 70, part(blocks_done, blocks_total)),
        ("waiting for writers before validation", 70, 70, 0),
        ("index validation: scanning index", 70, 78, part(blocks_done, blocks_total)),
        ("index validation: sorting", 78, 80, 0),
        ("index validation: scanning table", 80, 95, part(blocks_done, blocks_total)),
        ("waiting for old snapshots", 95, 95, 0),
        ("waiting for readers", 99, 99, 0),
    )
    for prefix, start, end, fraction in spans:
        if phase.startswith(prefix):
            return round(start + (end - start) * fraction, 1)
    return 0.0


_POLL = (
    "SELECT p.phase, p.blocks_done, p.blocks_total, p.tuples_done, p.tuples_total,"
    " pg_blocking_pids(%(pid)s) AS blockers"
    " FROM (SELECT 1) AS one LEFT JOIN pg_stat_progress_create_index p ON p.pid = %(pid)s")
_HOLDERS = (
    "SELECT pid, application_name, usename, state,"
    " extract(epoch FROM clock_timestamp() - xact_start) * 1000 AS xact_age_ms,"
    " left(query, 200) AS query FROM pg_stat_activity WHERE pid = ANY(%s) ORDER BY xact_start")


def _conninfo(conn: psycopg.Connection[Any]) -> str:
    """The builder's own connection parameters (password included), for a second session."""
    params = {opt.keyword.decode(): opt.val.decode() for opt in conn.pgconn.info
              if opt.val is not None}
    params["application_name"] = "rls-migrate index progress"
    return make_conninfo("", **params)


class BuildWatcher:
    """Polls a build's progress from a second session while the executor's connection runs
    it: reports it to the progress display, logs each phase, and names the sessions the
    build waits for (a CIC waits for every older transaction before and after its scans)."""

    def __init__(self, executor: Executor, step: Step, *,
                 interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.executor = executor
        self.step = step
        self.interval_s = interval_s
        self.pid = executor.conn.info.backend_pid
        self.conninfo = _conninfo(executor.conn)
        self.phases: list[str] = []
        self.waited_for: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"index-progress-{self.pid}")

    def __enter__(self) -> BuildWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        log = self.executor.log.bind(step=self.step.id)
        try:
            with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                last_blockers: list[int] = []
                while not self._stop.wait(self.interval_s):
                    row = conn.execute(_POLL, {"pid": self.pid}).fetchone()
                    if row is None:
                        continue
                    phase, blocks_done, blocks_total, tuples_done, tuples_total, blockers = row
                    if phase is not None:
                        self._report(log, phase, blocks_done, blocks_total, tuples_done,
                                     tuples_total)
                    blockers = sorted(blockers or [])
                    if blockers and blockers != last_blockers:
                        self._report_blockers(conn, log, blockers)
                    last_blockers = blockers
        except psycopg.Error as exc:
            # Progress is a courtesy: the build goes on without it.
            log.warning("index.progress_unavailable", error=str(exc).strip().splitlines()[0])

    def _report(self, log: Any, phase: str, blocks_done: int, blocks_total: int,
                tuples_done: int, tuples_total: int) -> None:
        if not self.phases or self.phases[-1] != phase:
            self.phases.append(phase)
            log.info("index.phase", phase=phase, blocks=f"{blocks_done}/{blocks_total}",
                     tuples=f"{tuples_done}/{tuples_total}")
        if self.executor.progress is not None:
            done = build_progress(phase, blocks_done, blocks_total, tuples_done, tuples_total)
            self.executor.progress.step_advance(self.step, done, 100.0)

    def _report_blockers(self, conn: psycopg.Connection[Any], log: Any,
                         blockers: list[int]) -> None:
        self.waited_for.extend(p for p in blockers if p not in self.waited_for)
        rows = conn.execute(_HOLDERS, [blockers]).fetchall()
        described = [
            f"pid {pid} ({app!r}, user {user!r}, {state}"
            + (f", transaction open {float(age) / 1000:.1f} s" if age is not None else "")
            + f"): {query!r}"
            for pid, app, user, state, age, query in rows]
        log.warning("index.waiting", waiting_for=described or blockers,
                    hint="a concurrent build waits for older transactions; it blocks no "
                         "query meanwhile. End a stuck one with pg_terminate_backend(pid).")


@contextlib.contextmanager
def client_connection_check(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """While a build runs, let the server notice a dead runner (PostgreSQL 14+): a backend
    whose client was killed otherwise goes on building and holding its lock, and a rerun
    waits for it; with the check it stops within a second and leaves an INVALID index that
    the rerun drops and builds again."""
    previous = None
    if conn.info.server_version >= 140000:
        with contextlib.suppress(psycopg.Error):
            row = conn.execute("SELECT current_setting('client_connection_check_interval'),"
                               " set_config('client_connection_check_interval', %s, false)",
                               [CLIENT_CHECK_INTERVAL]).fetchone()
            previous = row[0] if row else None
    try:
        yield
    finally:
        if previous is not None and not conn.broken:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT set_config('client_connection_check_interval', %s, false)",
                             [previous])


def index_name_of(step: Step) -> str | None:
    prefix = f"{step.kind}:{step.table}:"
    return step.id[len(prefix):] if step.id.startswith(prefix) else None


@Executor.register("create_index")
def run_create_index(executor: Executor, step: Step) -> StepOutcome:
    """A concurrent build, the way the executor runs every non-transactional step (session
    timeouts per attempt, retries), with its progress polled from a second session."""
    started = now()
    trace = _Trace()
    with BuildWatcher(executor, step) as watcher, client_connection_check(executor.conn):
        executor._execute(step, step.statements, transactional=False, lock=step.lock,
                          trace=trace, action="run")
    if executor.progress is not None:
        executor.progress.step_advance(step, 100.0, 100.0)
    return StepOutcome.finish(step, "done", started=started, attempts=trace.count, details={
        "attempt_ms": [round(a["ms"], 1) for a in trace.attempts],
        "phases": watcher.phases,
        "waited_for_pids": watcher.waited_for,
    })


def drop_invalid_index(conn: psycopg.Connection[Any], schema: str, name: str) -> bool:
    """Drop ``schema.name`` concurrently if it exists and is INVALID (what a failed or
    interrupted ``CREATE INDEX CONCURRENTLY`` leaves). ``conn`` must be in autocommit.
    Returns whether it dropped one."""
    row = conn.execute(
        "SELECT NOT i.indisvalid FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        [schema, name],
    ).fetchone()
    if not row or not row[0]:
        return False
    conn.execute(
        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(identifier(schema, name))
    )
    return True


def _drop_leftover(executor: Executor, step: Step, error: BaseException) -> None:
    """Before a build is retried: drop the INVALID index the failed attempt left."""
    name = index_name_of(step)
    if step.table is None or name is None:
        return
    started = time.monotonic()
    try:
        dropped = drop_invalid_index(executor.conn, step.table.schema, name)
    except psycopg.Error as exc:
        executor.log.warning("index.leftover_not_dropped", step=step.id, error=str(exc))
        return
    if dropped:
        executor.log.info("index.leftover_dropped", step=step.id, index=name,
                          ms=round((time.monotonic() - started) * 1000, 1))


Executor.before_retry_hooks["create_index"] = _drop_leftover
