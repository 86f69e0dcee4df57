"""Shared by the reliability tests: the sample database migrated up to any stage (a chain
of template databases, cloned per trial in milliseconds), its playbook, checksums, and the
summary lines the suite prints for the closing note.

Not a test module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from enforce_helpers import configure, sample_playbook
from psycopg import sql

from rls_migrate import lockwaits, samples
from rls_migrate.catalog import Catalog
from rls_migrate.context import tenant_transaction
from rls_migrate.planner import build_plan
from rls_migrate.playbook import Playbook, dump_playbook
from rls_migrate.runner import apply_stage
from rls_migrate.steps import STAGES, Step
from rls_migrate.testing import servers
from rls_migrate.testing.checksums import table_checksums

SCALE = 0.2
LOCK_SLACK_MS = float(os.environ.get("RLS_MIGRATE_LOCK_SLACK_MS", "150"))
"""How much longer than lock_timeout a workload statement may wait under lock pressure:
scheduling noise of a loaded 2-core machine, not the toolkit's locks."""

# Small backfill batches with a pause: the backfill of the sample takes a few hundred
# batches, so a fault lands mid-table.
SMALL_BATCHES = {"batch_target": 1.0, "batch_start_rows": 50, "batch_min_rows": 20,
                 "batch_max_rows": 50, "pause": 2.0}


def _load(dsn: str) -> None:
    samples.load(dsn, scale=SCALE)


@functools.cache
def newest_major() -> int:
    return max((b.major or 0 for b in servers.find_backends(
        os.environ.get("RLS_MIGRATE_TEST_BACKENDS"))), default=0)


def heavy_on_newest_only(server: servers.PostgresServer) -> None:
    """The heaviest randomized runs use the newest major only (the reduced versions run on
    every major): skip on the others."""
    if server.major < newest_major():
        pytest.skip(f"the full randomized run uses PostgreSQL {newest_major()} only; "
                    f"PostgreSQL {server.major} runs the reduced version")


def report(line: str) -> None:
    """A summary line for the closing note (``pytest -s`` shows it; ``-rA`` too)."""
    print(f"\n[reliability] {line}", flush=True)


def reliability_playbook(dsn: str) -> Playbook:
    """The sample's playbook (see :func:`enforce_helpers.sample_playbook`) with small
    backfill batches."""
    return configure(sample_playbook(dsn), backfill=SMALL_BATCHES)


def write_playbook(playbook: Playbook, path: Path) -> Path:
    path.write_text(dump_playbook(playbook))
    return path


def checksums(dsn: str) -> dict[str, str]:
    """Every non-tenant column of every table (the added ``tenant_id`` excluded)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return table_checksums(conn, exclude_columns=("tenant_id",))


def stage_steps(dsn: str, playbook: Playbook, stage: str) -> tuple[Step, ...]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        catalog = Catalog.load(conn, schemas=playbook.schemas)
    return build_plan(catalog, playbook, [stage]).stage(stage).steps


class StageTemplates:
    """The sample database with every stage before ``S`` applied, for each ``S``: a chain of
    templates (each cloned from the previous one, then one more stage applied), built when
    first asked for; :meth:`clone` makes a fresh copy in milliseconds."""

    def __init__(self, server: servers.PostgresServer, prefix: str = "rel",
                 base: servers.DatabaseFactory | None = None) -> None:
        """``base``: a factory of the sample at :data:`SCALE` to share (closed by its
        owner); else one of its own."""
        self.server = server
        self.prefix = prefix
        self._owns_base = base is None
        self.base = base if base is not None else servers.DatabaseFactory(
            server, _load, prefix=prefix)
        self.playbook = reliability_playbook(server.dsn(self.base.template))
        # The templates' own backfill needs no small batches: only the trials do.
        self._build_playbook = configure(self.playbook, backfill={
            "batch_start_rows": 5000, "batch_max_rows": 50_000, "pause": 0.0})
        self._terminate(self.base.template)
        self._templates: dict[str, str] = {STAGES[0]: self.base.template}
        self._made: list[str] = []

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.server.dsn("postgres"), autocommit=True)

    def _terminate(self, dbname: str) -> None:
        with self._admin() as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = %s AND pid <> pg_backend_pid()", [dbname])

    def _copy(self, template: str, name: str) -> None:
        for attempt in range(40):
            try:
                with self._admin() as conn:
                    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(template)))
                return
            except psycopg.errors.ObjectInUse:
                self._terminate(template)
                time.sleep(0.05 * (attempt + 1))
        raise servers.ServerUnavailable(f"template {template} stayed in use")

    def template_before(self, stage: str) -> str:
        """The template database with every stage before ``stage`` applied."""
        if stage not in self._templates:
            previous = STAGES[STAGES.index(stage) - 1]
            source = self.template_before(previous)
            name = f"{self.prefix}_upto_{previous.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
            self._copy(source, name)
            self._made.append(name)
            result = apply_stage(self.server.dsn(name), self._build_playbook, previous).result
            assert result.failed == 0, (previous, result)
            self._terminate(name)
            self._templates[stage] = name
        return self._templates[stage]

    def clone(self, before: str) -> str:
        """A fresh database with every stage before ``before`` applied; its DSN."""
        name = f"{self.prefix}_{uuid.uuid4().hex[:10]}"
        self._copy(self.template_before(before), name)
        self._made.append(name)
        return self.server.dsn(name)

    @contextlib.contextmanager
    def cloned(self, before: str) -> Iterator[str]:
        dsn = self.clone(before)
        try:
            yield dsn
        finally:
            self.drop(dsn)

    def drop(self, dsn: str) -> None:
        name = servers.dbname_of(dsn)
        with contextlib.suppress(psycopg.Error):
            self._terminate(name)
            with self._admin() as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(
                    sql.Identifier(name)))
        if name in self._made:
            self._made.remove(name)

    def close(self) -> None:
        for name in reversed([*self._made]):
            self.drop(self.server.dsn(name))
        if self._owns_base:
            self.base.close()


# --------------------------------------------------------------------------- lock pressure


@dataclasses.dataclass(frozen=True)
class Timed:
    label: str
    started: float  # time.monotonic()
    ms: float
    error: str | None


class StatementWorkload:
    """Application threads (as the application role, the tenant set per transaction) that
    run short statements on the given tables every few milliseconds and time every one of
    them: a SELECT of a few rows, and an UPDATE of one row's non-key column. Errors are
    collected, never raised."""

    def __init__(self, app_dsn: str, owner_dsn: str, tables: Sequence[str], *,
                 threads: int = 3, interval_ms: float = 3.0, tenant: int = 1) -> None:
        self.app_dsn = app_dsn
        self.tenant = tenant
        self.threads = threads
        self.interval_ms = interval_ms
        self.timed: list[Timed] = []
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._targets: list[tuple[str, sql.Composed, sql.Composed, list[Any]]] = []
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            for name in tables:
                ident = sql.Identifier(name)
                ids = [r[0] for r in conn.execute(
                    sql.SQL("SELECT t.id FROM {} t WHERE {} ORDER BY t.id LIMIT 20").format(
                        ident, tenant_of(name)), [tenant]).fetchall()]
                assert ids, f"tenant {tenant} has no row in {name}"
                self._targets.append((
                    name,
                    # Named columns: a prepared SELECT * fails once after ADD COLUMN
                    # ("cached plan must not change result type"), whatever the locks.
                    sql.SQL("SELECT id, {} FROM {} WHERE id = ANY(%s)").format(
                        sql.Identifier(TOUCHED[name]), ident),
                    sql.SQL("UPDATE {} SET {} = {} WHERE id = %s").format(
                        ident, sql.Identifier(TOUCHED[name]), sql.Identifier(TOUCHED[name])),
                    ids))

    def __enter__(self) -> StatementWorkload:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _run(self, n: int) -> None:
        rng = random.Random(n)
        with psycopg.connect(self.app_dsn, application_name=f"rel-workload-{n}") as conn:
            while not self._stop.is_set():
                name, select, update, ids = rng.choice(self._targets)
                # Each thread updates its own rows: no workload waits for another's row lock.
                mine = ids[n::self.threads] or ids[:1]
                for label, statement, params in (
                        (f"select {name}", select, [ids[:5]]),
                        (f"update {name}", update, [rng.choice(mine)])):
                    started = time.monotonic()
                    error = None
                    try:
                        with tenant_transaction(conn, self.tenant):
                            conn.execute(statement, params)
                    except psycopg.Error as exc:
                        error = str(exc).strip().splitlines()[0]
                    with self._lock:
                        self.timed.append(Timed(label, started,
                                                (time.monotonic() - started) * 1000.0, error))
                time.sleep(self.interval_ms / 1000.0)

    @property
    def errors(self) -> list[str]:
        return [f"{t.label}: {t.error}" for t in self.timed if t.error]

    @property
    def worst(self) -> Timed:
        return max(self.timed, key=lambda t: t.ms)

    def percentile(self, q: float) -> float:
        ordered = sorted(t.ms for t in self.timed)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else 0.0


# The sample's tables a workload touches: the column an UPDATE rewrites (to itself), and
# how a row finds its tenant before any stage ran.
TOUCHED = {"issues": "title", "comments": "body", "users": "name", "projects": "name"}
_TENANT_OF = {
    "issues": "t.project_id IN (SELECT id FROM projects WHERE account_id = %s)",
    "comments": "t.issue_id IN (SELECT i.id FROM issues i JOIN projects p"
                " ON p.id = i.project_id WHERE p.account_id = %s)",
    "users": "t.account_id = %s",
    "projects": "t.account_id = %s",
}


def tenant_of(table: str) -> sql.SQL:
    """A fixed predicate of this module (never input)."""
    return sql.SQL(_TENANT_OF[table])  # type: ignore[arg-type, unused-ignore]  # LiteralString from a dict


class LockHolder:
    """A transaction that holds locks on a table until released: ACCESS SHARE (a long
    read) and, with ``write``, ROW EXCLUSIVE and one row lock (a long writer), idle in
    transaction the way a forgotten session or a slow batch job is."""

    APPLICATION = "rel-lock-holder"

    def __init__(self, dsn: str, table: str, *, write: bool = True) -> None:
        self.conn = psycopg.connect(dsn, application_name=self.APPLICATION)
        ident = sql.Identifier(table)
        self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident))
        if write:
            # The last row: the workload updates the first ones, so no row lock is shared.
            self.conn.execute(sql.SQL("UPDATE {} SET {} = {} WHERE id = (SELECT max(id) FROM {})"
                                      ).format(ident, sql.Identifier(TOUCHED[table]),
                                               sql.Identifier(TOUCHED[table]), ident))
        row = self.conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        self.pid = int(row[0])
        self._timer: threading.Thread | None = None
        self._closed = threading.Event()
        self._release = threading.Lock()

    def release_when_blocked(self, dsn: str, table: str, seconds: float) -> None:
        """In the background: once a toolkit session waits for a lock on ``table`` (it is
        blocked), keep holding for ``seconds`` more, then release."""
        def watch() -> None:
            deadline = time.monotonic() + 120
            with psycopg.connect(dsn, autocommit=True) as conn:
                while time.monotonic() < deadline and not self._closed.is_set():
                    row = conn.execute(
                        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a"
                        " USING (pid) WHERE NOT l.granted AND l.relation = %s::regclass"
                        " AND starts_with(a.application_name, 'rls-migrate'))",
                        [sql.Identifier(table).as_string(conn)]).fetchone()
                    if row and row[0]:
                        break
                    time.sleep(0.005)
            self._closed.wait(seconds)
            self.release()

        self._timer = threading.Thread(target=watch, daemon=True)
        self._timer.start()

    def release(self) -> None:
        with self._release:
            self._closed.set()
            with contextlib.suppress(psycopg.Error):
                self.conn.rollback()
            self.conn.close()

    def __enter__(self) -> LockHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        if self._timer is not None:
            self._timer.join(timeout=30)


def log_lock_waits(dsn: str) -> None:
    """Make the server log every lock wait longer than 10 ms in ``dsn``'s database, with
    its duration when the lock is granted: the exact time each session waited, measured by
    the server, not the client."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        lockwaits.log_lock_waits(conn, servers.dbname_of(dsn))


def relation_waits(log_text: str, dsn: str, user: str) -> list[tuple[str, float]]:
    """``(lock mode, ms)`` of every relation lock ``user`` waited for in ``dsn``'s
    database longer than deadlock_timeout, from the server log."""
    return [(w.mode, w.ms) for w in lockwaits.parse(log_text, user=user,
                                                    database=servers.dbname_of(dsn))
            if w.kind == "relation"]
