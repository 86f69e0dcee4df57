"""The journal: what rls-migrate did to a database, kept in that database.

The ``rls_migrate`` schema holds runs, one row per step outcome, the current state of every
step, backfill checkpoints and batches, and data anomalies. Its shape is versioned with
Alembic (``rls_migrate/migrations``, version table ``rls_migrate.alembic_version``), so a
newer toolkit can take over a half-finished migration: :func:`upgrade_schema`.

Step outcomes are written in their own short transaction, after the step's transaction has
ended, so they survive whatever the step did. Backfill batches are the exception: their
record and checkpoint must commit *with* the batch's ``UPDATE`` (a ``kill -9`` then either
loses both or keeps both), so :func:`record_batch` and :func:`save_checkpoint` take the
caller's cursor.

One runner at a time: :class:`~rls_migrate.migration_lock.MigrationLock`.

Example::

    upgrade_schema(conn)
    journal = Journal(conn)
    with MigrationLock(conn, command="apply"):
        run_id = journal.start_run("apply", "add-column")
        ...
        journal.finish_run("done")
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from rls_migrate.catalog import QualifiedName
from rls_migrate.connect import resolve_dsn
from rls_migrate.journal_rows import Anomaly, Checkpoint, JournaledStep, StatusRow, StepRow
from rls_migrate.steps import Step, as_string

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Engine

Conn: TypeAlias = psycopg.Connection[Any]
Executes: TypeAlias = psycopg.Connection[Any] | psycopg.Cursor[Any]
"""Where a write goes: a connection, or a cursor inside the caller's transaction."""
TableName: TypeAlias = QualifiedName | str
Outcome: TypeAlias = Literal["done", "skipped", "failed", "interrupted", "undone", "forced"]

SCHEMA = "rls_migrate"
VERSION_TABLE = "alembic_version"
SCRIPT_LOCATION = "rls_migrate:migrations"
OUTCOMES: tuple[str, ...] = ("done", "skipped", "failed", "interrupted", "undone", "forced")
ANOMALY_KINDS: tuple[str, ...] = ("orphan", "conflict")
# What an outcome means for the step's current state; failed and interrupted change nothing.
_STATE_OF_OUTCOME = {"done": "done", "skipped": "done", "forced": "done", "undone": "undone"}


_dumps = functools.partial(json.dumps, default=str)


def _jsonb(value: Any) -> Jsonb | None:
    """Keys and samples as JSON; uuids, dates and decimals are kept as their text form."""
    if value is None:
        return None
    if isinstance(value, tuple):
        value = list(value)
    return Jsonb(value, dumps=_dumps)


def _key(value: Any) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


def _table(table: TableName | None) -> str | None:
    return None if table is None else str(table)


# --------------------------------------------------------------------------- schema (Alembic)


def resolve_schema_dsn(dsn: str | None) -> str:
    """The DSN for a schema upgrade: the one given, else RLS_MIGRATE_DSN, else DATABASE_URL.
    A SQLAlchemy URL (``postgresql+psycopg://``) is accepted and turned into a libpq one."""
    dsn = resolve_dsn(dsn)
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres+psycopg://"):
        if dsn.startswith(prefix):
            return "postgresql://" + dsn[len(prefix):]
    return dsn


def make_engine(dsn: str) -> Engine:
    """A SQLAlchemy engine on ``postgresql+psycopg`` that connects with the libpq DSN as is
    (key=value strings and URLs alike)."""
    import sqlalchemy as sa

    def connect() -> Conn:
        return psycopg.connect(dsn, application_name="rls-migrate schema-upgrade")

    return sa.create_engine("postgresql+psycopg://", creator=connect)


def alembic_config(**attributes: Any) -> Config:
    """An Alembic ``Config`` for the toolkit's schema, built in code (no ini file)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["configure_logger"] = False
    config.attributes.update(attributes)
    return config


def upgrade_schema(conn_or_dsn: Conn | str, revision: str = "head") -> None:
    """Bring the ``rls_migrate`` schema to ``revision`` (idempotent).

    With a connection, the upgrade runs on it (it must be idle; its autocommit setting is
    restored afterwards); with a DSN, on a new connection.
    """
    from alembic import command

    _run_alembic(conn_or_dsn, lambda config: command.upgrade(config, revision))


def downgrade_schema(conn_or_dsn: Conn | str, revision: str = "base") -> None:
    """Take the schema back to ``revision``; ``base`` drops it all."""
    from alembic import command

    _run_alembic(conn_or_dsn, lambda config: command.downgrade(config, revision))


def head_revision() -> str | None:
    """The newest revision this toolkit knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def schema_revision(conn: Conn) -> str | None:
    """The revision the database is at, or None when the schema is not installed."""
    row = conn.execute(
        "SELECT to_regclass('rls_migrate.alembic_version') IS NOT NULL"
    ).fetchone()
    if not row or not row[0]:
        return None
    version = conn.execute("SELECT version_num FROM rls_migrate.alembic_version").fetchone()
    return None if version is None else str(version[0])


def _run_alembic(conn_or_dsn: Conn | str, run: Callable[[Config], None]) -> None:
    """Run an Alembic command; a server error comes out as the psycopg error it is, not
    wrapped by SQLAlchemy, so that callers (and the CLI) handle it like any other."""
    import sqlalchemy.exc

    try:
        _run_alembic_unwrapped(conn_or_dsn, run)
    except sqlalchemy.exc.DBAPIError as exc:
        if isinstance(exc.orig, psycopg.Error):
            raise exc.orig from None
        raise


def _run_alembic_unwrapped(conn_or_dsn: Conn | str, run: Callable[[Config], None]) -> None:
    if isinstance(conn_or_dsn, str):
        run(alembic_config(dsn=conn_or_dsn))
        return
    conn = conn_or_dsn
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("upgrade_schema needs an idle connection (no open transaction)")
    import sqlalchemy as sa
    from sqlalchemy.pool import StaticPool

    saved_autocommit = conn.autocommit
    # SQLAlchemy (and so Alembic) expect the DBAPI's implicit transactions.
    conn.autocommit = False
    # StaticPool hands out this one connection; no reset on return, and the engine is never
    # disposed, because the connection is the caller's to close.
    engine = sa.create_engine(
        "postgresql+psycopg://", creator=lambda: conn, poolclass=StaticPool,
        pool_reset_on_return=None,
    )
    try:
        with engine.connect() as sa_conn:
            run(alembic_config(connection=sa_conn))
            sa_conn.commit()
    finally:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()
        conn.autocommit = saved_autocommit


# --------------------------------------------------------------------------- batch writes


def record_batch(
    db: Executes,
    table: TableName,
    batch_no: int,
    lo: Sequence[Any] | None,
    hi: Sequence[Any] | None,
    rows: int,
    ms: float,
) -> None:
    """Record one backfill batch. Call it with the batch's own cursor, in the batch's
    transaction: a batch applied twice then fails on the primary key and rolls back."""
    db.execute(
        "INSERT INTO rls_migrate.backfill_batches "
        "(table_name, batch_no, lo, hi, rows, duration_ms) VALUES (%s, %s, %s, %s, %s, %s)",
        [str(table), batch_no, _jsonb(lo), _jsonb(hi), rows, ms],
    )


def save_checkpoint(
    db: Executes,
    table: TableName,
    last_key: Sequence[Any] | None,
    max_key: Sequence[Any] | None,
    rows_done: int,
    batches: int,
    finished: bool,
) -> None:
    """Upsert a table's backfill checkpoint (in the batch's transaction, like
    :func:`record_batch`)."""
    db.execute(
        "INSERT INTO rls_migrate.backfill_checkpoint "
        "(table_name, last_key, max_key, rows_done, batches, finished, updated_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, clock_timestamp()) "
        "ON CONFLICT (table_name) DO UPDATE SET last_key = EXCLUDED.last_key, "
        "max_key = EXCLUDED.max_key, rows_done = EXCLUDED.rows_done, "
        "batches = EXCLUDED.batches, finished = EXCLUDED.finished, "
        "updated_at = EXCLUDED.updated_at",
        [str(table), _jsonb(last_key), _jsonb(max_key), rows_done, batches, finished],
    )


def load_checkpoint(db: Executes, table: TableName) -> Checkpoint | None:
    """The table's checkpoint, or None when its backfill never started."""
    cur = db.execute(
        "SELECT table_name, last_key, max_key, rows_done, batches, finished, updated_at "
        "FROM rls_migrate.backfill_checkpoint WHERE table_name = %s",
        [str(table)],
    )
    row = cur.fetchone()
    if row is None:
        return None
    return Checkpoint(
        table_name=row[0], last_key=_key(row[1]), max_key=_key(row[2]), rows_done=row[3],
        batches=row[4], finished=row[5], updated_at=row[6],
    )


def reset_backfill(db: Executes, table: TableName) -> None:
    """Forget a table's checkpoint and batches (to backfill it again from the start)."""
    db.execute("DELETE FROM rls_migrate.backfill_batches WHERE table_name = %s", [str(table)])
    db.execute("DELETE FROM rls_migrate.backfill_checkpoint WHERE table_name = %s",
               [str(table)])


# --------------------------------------------------------------------------- the journal


class Journal:
    """Reads and writes the journal on ``conn``.

    Writes run in their own transaction, so ``conn`` must not be inside a step's
    transaction when they happen (they raise ``RuntimeError`` otherwise, rather than commit
    or lose half of a step). The executor's connection, between steps, qualifies.
    """

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.run_id: uuid.UUID | None = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[psycopg.Cursor[Any]]:
        if self.conn.info.transaction_status != TransactionStatus.IDLE:
            raise RuntimeError(
                "journal writes need an idle connection: a step's transaction is still open"
            )
        with self.conn.transaction(), self.conn.cursor() as cur:
            yield cur

    # -- runs

    def start_run(self, command: str, stage: str | None) -> uuid.UUID:
        """Record the start of a run; later records carry its id."""
        run_id = uuid.uuid4()
        with self._write() as cur:
            cur.execute(
                "INSERT INTO rls_migrate.runs (run_id, command, stage, runner, pid, host) "
                "VALUES (%s, %s, %s, current_setting('application_name'), %s, %s)",
                [run_id, command, stage, os.getpid(), socket.gethostname()],
            )
        self.run_id = run_id
        return run_id

    def finish_run(self, outcome: str) -> None:
        """Close the current run (``done``, ``failed``, ``interrupted``...)."""
        if self.run_id is None:
            return
        with self._write() as cur:
            cur.execute(
                "UPDATE rls_migrate.runs SET finished_at = clock_timestamp(), outcome = %s "
                "WHERE run_id = %s",
                [outcome, self.run_id],
            )

    # -- step outcomes

    def record(
        self,
        step: Step,
        outcome: Outcome | str,
        attempts: int,
        started: dt.datetime,
        finished: dt.datetime,
        error: str | None = None,
        details: Mapping[str, Any] | None = None,
        *,
        duration_ms: float | None = None,
    ) -> int:
        """Journal one outcome and update the step's state, in one transaction of their
        own. Returns the journal row id."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}: expected one of {OUTCOMES}")
        if duration_ms is None:
            duration_ms = (finished - started).total_seconds() * 1000.0
        table = _table(step.table)
        stores_inverse = self._stores_inverse  # (a query: not inside the write below)
        with self._write() as cur:
            cur.execute(
                "INSERT INTO rls_migrate.journal (run_id, step_id, stage, kind, table_name, "
                "outcome, attempts, started_at, finished_at, duration_ms, error, details) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                [self.run_id, step.id, step.stage, step.kind, table, outcome, attempts,
                 started, finished, duration_ms, error,
                 _jsonb(dict(details)) if details is not None else None],
            )
            row = cur.fetchone()
            state = _STATE_OF_OUTCOME.get(outcome)
            if state is not None:
                cur.execute(
                    "INSERT INTO rls_migrate.step_state (step_id, stage, table_name, status, "
                    "updated_at) VALUES (%s, %s, %s, %s, clock_timestamp()) "
                    "ON CONFLICT (step_id) DO UPDATE SET stage = EXCLUDED.stage, "
                    "table_name = EXCLUDED.table_name, status = EXCLUDED.status, "
                    "updated_at = EXCLUDED.updated_at",
                    [step.id, step.stage, table, state],
                )
            if state == "done" and stores_inverse:
                # The inverse as it is now: rollback needs it even if the playbook stops
                # planning this step (a table taken out of it).
                cur.execute(
                    "UPDATE rls_migrate.step_state SET kind = %s, inverse = %s, "
                    "inverse_lock = %s, inverse_transactional = %s, inverse_needs = %s "
                    "WHERE step_id = %s",
                    [step.kind, _jsonb([as_string(s, self.conn) for s in step.inverse]),
                     step.inverse_lock.label, step.inverse_transactional, step.inverse_needs,
                     step.id],
                )
        assert row is not None
        return int(row[0])

    @functools.cached_property
    def _stores_inverse(self) -> bool:
        """Whether the schema is at revision 0003 or later (a newer toolkit can run on a
        schema an older one made, until ``apply --stage prepare`` upgrades it)."""
        with self.conn.transaction():
            row = self.conn.execute(
                "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = "
                "to_regclass('rls_migrate.step_state') AND attname = 'inverse' "
                "AND NOT attisdropped)").fetchone()
        return bool(row and row[0])

    def journaled_inverses(self, stages: Sequence[str]) -> list[JournaledStep]:
        """The steps of ``stages`` the journal has as done, with the inverse each had when it
        ran (empty when it ran before revision 0003), in the order they were done."""
        if not self._stores_inverse:
            return [JournaledStep(r.step_id, r.stage, r.table_name, None, None, None, True,
                                  None) for r in self.step_rows()
                    if r.status == "done" and r.stage in stages]
        rows = self.conn.execute(
            "SELECT step_id, stage, table_name, kind, inverse, inverse_lock, "
            "coalesce(inverse_transactional, true), inverse_needs "
            "FROM rls_migrate.step_state WHERE status = 'done' AND stage = ANY(%s) "
            "ORDER BY updated_at, step_id", [list(stages)]).fetchall()
        return [JournaledStep(*row) for row in rows]

    def record_override(self, stage: str, details: Mapping[str, Any]) -> int:
        """Journal that a stage's gate was overridden (``apply --force``), with what the
        gate saw, so the override is on record next to the steps it let through."""
        now = dt.datetime.now(dt.UTC)
        with self._write() as cur:
            cur.execute(
                "INSERT INTO rls_migrate.journal (run_id, step_id, stage, kind, outcome, "
                "attempts, started_at, finished_at, duration_ms, details) "
                "VALUES (%s, %s, %s, 'gate', 'forced', 0, %s, %s, 0, %s) RETURNING id",
                [self.run_id, f"gate:{stage}", stage, now, now, _jsonb(dict(details))],
            )
            row = cur.fetchone()
        assert row is not None
        return int(row[0])

    def step_status(self, step_id: str) -> str | None:
        """``done``, ``undone``, or None when the step never completed."""
        row = self.conn.execute(
            "SELECT status FROM rls_migrate.step_state WHERE step_id = %s", [step_id]
        ).fetchone()
        return None if row is None else str(row[0])

    def entries(
        self, *, step_id: str | None = None, run_id: uuid.UUID | None = None
    ) -> list[dict[str, Any]]:
        """Journal rows, oldest first, optionally for one step or one run."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT * FROM rls_migrate.journal "
                "WHERE (%(step)s::text IS NULL OR step_id = %(step)s) "
                "AND (%(run)s::uuid IS NULL OR run_id = %(run)s) ORDER BY id",
                {"step": step_id, "run": run_id},
            )
            return cur.fetchall()

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT * FROM rls_migrate.runs ORDER BY started_at DESC")
            return cur.fetchall()

    def step_rows(self) -> list[StepRow]:
        """Every step the journal has seen: its state and latest outcome."""
        rows = self.conn.execute(
            "WITH last AS ("
            "  SELECT DISTINCT ON (step_id) step_id, stage, table_name, outcome, error, "
            "         attempts, finished_at"
            "  FROM rls_migrate.journal ORDER BY step_id, id DESC) "
            "SELECT coalesce(s.step_id, l.step_id), coalesce(s.stage, l.stage), "
            "       coalesce(s.table_name, l.table_name), s.status, l.outcome, l.error, "
            "       l.attempts, coalesce(l.finished_at, s.updated_at) "
            "FROM rls_migrate.step_state s FULL JOIN last l ON l.step_id = s.step_id "
            "ORDER BY 2, 3 NULLS FIRST, 1"
        ).fetchall()
        return [StepRow(*row) for row in rows]

    def status_rows(self) -> list[StatusRow]:
        """The ``status`` matrix: per (table, stage), how many steps are done or undone,
        and the latest outcome and error the journal has for that cell."""
        rows = self.conn.execute(
            "WITH last AS ("
            "  SELECT DISTINCT ON (step_id) step_id, stage, table_name, outcome, error, id,"
            "         finished_at"
            "  FROM rls_migrate.journal ORDER BY step_id, id DESC), "
            "steps AS ("
            "  SELECT coalesce(s.step_id, l.step_id) AS step_id,"
            "         coalesce(s.stage, l.stage) AS stage,"
            "         coalesce(s.table_name, l.table_name) AS table_name,"
            "         s.status, l.outcome, l.error, l.id,"
            "         coalesce(l.finished_at, s.updated_at) AS at"
            "  FROM rls_migrate.step_state s FULL JOIN last l ON l.step_id = s.step_id) "
            "SELECT table_name, stage, count(*)::int,"
            "       count(*) FILTER (WHERE status = 'done')::int,"
            "       count(*) FILTER (WHERE status = 'undone')::int,"
            "       (array_agg(outcome ORDER BY id DESC NULLS LAST))[1],"
            "       (array_agg(error ORDER BY id DESC NULLS LAST)"
            "          FILTER (WHERE error IS NOT NULL))[1],"
            "       max(at) "
            "FROM steps GROUP BY table_name, stage ORDER BY table_name NULLS FIRST, stage"
        ).fetchall()
        return [StatusRow(*row) for row in rows]

    # -- backfill (own transaction unless ``cur`` is given)

    def record_batch(
        self,
        table: TableName,
        batch_no: int,
        lo: Sequence[Any] | None,
        hi: Sequence[Any] | None,
        rows: int,
        ms: float,
        *,
        cur: Executes | None = None,
    ) -> None:
        """See :func:`record_batch`; pass the batch's cursor as ``cur``."""
        if cur is not None:
            record_batch(cur, table, batch_no, lo, hi, rows, ms)
            return
        with self._write() as own:
            record_batch(own, table, batch_no, lo, hi, rows, ms)

    def save_checkpoint(
        self,
        table: TableName,
        last_key: Sequence[Any] | None,
        max_key: Sequence[Any] | None,
        rows_done: int,
        batches: int,
        finished: bool,
        *,
        cur: Executes | None = None,
    ) -> None:
        """See :func:`save_checkpoint`; pass the batch's cursor as ``cur``."""
        if cur is not None:
            save_checkpoint(cur, table, last_key, max_key, rows_done, batches, finished)
            return
        with self._write() as own:
            save_checkpoint(own, table, last_key, max_key, rows_done, batches, finished)

    def load_checkpoint(self, table: TableName) -> Checkpoint | None:
        return load_checkpoint(self.conn, table)

    def reset_backfill(self, table: TableName) -> None:
        with self._write() as cur:
            reset_backfill(cur, table)

    def batches(self, table: TableName) -> list[dict[str, Any]]:
        """A table's recorded batches, in order."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT * FROM rls_migrate.backfill_batches WHERE table_name = %s "
                "ORDER BY batch_no",
                [str(table)],
            )
            return cur.fetchall()

    # -- anomalies

    def record_anomaly(self, table: TableName, kind: str, count: int, sample: Any) -> None:
        """Record (or replace) the latest count and sample keys of orphans or conflicts."""
        if kind not in ANOMALY_KINDS:
            raise ValueError(f"unknown anomaly kind {kind!r}: expected one of {ANOMALY_KINDS}")
        with self._write() as cur:
            cur.execute(
                "INSERT INTO rls_migrate.anomalies (table_name, kind, count, sample, found_at) "
                "VALUES (%s, %s, %s, %s, clock_timestamp()) "
                "ON CONFLICT (table_name, kind) DO UPDATE SET count = EXCLUDED.count, "
                "sample = EXCLUDED.sample, found_at = EXCLUDED.found_at",
                [str(table), kind, count, _jsonb(sample)],
            )

    def anomalies(self) -> list[Anomaly]:
        rows = self.conn.execute(
            "SELECT table_name, kind, count, sample, found_at FROM rls_migrate.anomalies "
            "ORDER BY table_name, kind"
        ).fetchall()
        return [Anomaly(*row) for row in rows]
