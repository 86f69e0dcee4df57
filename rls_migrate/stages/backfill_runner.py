"""Running the backfill (:func:`run_backfill`, the ``backfill`` kind handler): each batch is
one :meth:`Executor.run_in_transaction` (timeouts set on every attempt, lock timeouts retried
with backoff), pipelined to three round trips, and writes its batch record and checkpoint with
the journal's functions on its own cursor: a run killed at any point resumes after the last
committed batch and never applies a batch twice. A pass is bounded by the largest key present
when it starts (later rows get their key from the sync trigger), so it ends under any insert
load; before reading that bound it waits for the transactions writing the table then, which
may have read a parent not yet filled. Batch size adapts to ``batch_target``; replica lag and
anti-wraparound vacuums pause the run. At the end the table is inspected: orphans and
conflicts are recorded, rows still without a key get another pass. Row-level security that
filters the migration role fails the step instead of letting it "finish".

The statements come from the plan (:mod:`rls_migrate.stages.backfill` builds them).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import psycopg
import psycopg.errors
from psycopg import sql

from rls_migrate.catalog import QualifiedName
from rls_migrate.errors import StepFailed
from rls_migrate.playbook import Options
from rls_migrate.sqlcompose import compose, for_params, sep
from rls_migrate.stages.backfill import DENSE
from rls_migrate.stages.common import regclass_text
from rls_migrate.steps import BackfillSpec, Lock, Query, Step

if TYPE_CHECKING:
    from rls_migrate.executor import Executor

Executes: TypeAlias = psycopg.Connection[Any] | psycopg.Cursor[Any]


WRITERS_WAIT_S = 60.0
"""At most this long, before a pass reads its bound, for transactions already writing the
table to end (see :func:`_wait_for_writers`)."""
MAX_SWEEPS = 2
"""Extra passes over the table when unfilled rows remain after a pass."""
TIMEOUT_SHRINKS = 3
"""Times in a row a batch that hit its statement_timeout is retried at a quarter size."""


@dataclasses.dataclass
class BackfillResult:
    """What a run did. ``rows`` and ``batches`` count every run of the table (they come
    from the checkpoint); the ``*_this_run`` fields only this one."""

    table: QualifiedName
    rows: int = 0
    batches: int = 0
    rows_this_run: int = 0
    batches_this_run: int = 0
    resumed: bool = False
    finished_earlier: bool = False
    passes: int = 0
    retries: int = 0
    writers_waited_ms: float = 0.0
    batch_ms: list[float] = dataclasses.field(default_factory=list)
    orphans: int = 0
    orphan_sample: list[str] = dataclasses.field(default_factory=list)
    conflicts: int = 0
    conflict_sample: list[str] = dataclasses.field(default_factory=list)
    unfilled: int = 0
    unfilled_sample: list[str] = dataclasses.field(default_factory=list)


ProgressCallback = Callable[[QualifiedName, int, int], None]


@dataclasses.dataclass
class _Pass:
    """The walk in progress: keys (last_key, max_key] are left; None: from the start."""

    last_key: list[str] | None
    max_key: list[str] | None
    finished: bool
    # Whether the last batch found the keys dense (see DENSE); not checkpointed: a resumed
    # run asks the index once, then knows again.
    dense: bool = False


@dataclasses.dataclass(frozen=True)
class _Batch:
    hi: list[str]
    last: bool
    rows: int
    ms: float
    keys: int  # the size asked for: what the batch's time depends on
    dense: bool


class _Sizer:
    """Keys (pages for ctid walks) per batch, from a learned rate, so that a batch takes
    about ``batch_target``.

    Cautious, because one slow batch is what the p99 sees and rows can get dearer from one
    batch to the next (the table got busier; its indexes' leaf pages filled up and started
    splitting: on the sample's ``issues`` from 10 to 49 µs a row over five batches): batches
    aim at :data:`AIM` of the target, so a batch whose rows cost twice the last one's still
    ends within 1.6 times the target; a batch slower per key than the one before makes the
    sizer expect the next slower again by as much (at most twice), a faster one raises the
    estimate by half the difference (one quick batch is often just a warm cache); the size
    grows by at most :data:`GROWTH` from one batch to the next, so a ramp-up never doubles
    into such a stretch."""

    AIM = 0.8
    GROWTH = 1.5

    def __init__(self, options: Options, uses_ctid: bool) -> None:
        opts = options.backfill
        self.target = opts.batch_target
        # A ctid batch counts pages: about 50 rows each in a typical table.
        size = opts.batch_start_rows if not uses_ctid else max(opts.batch_start_rows // 50, 1)
        self.max = opts.batch_max_rows if not uses_ctid else max(opts.batch_max_rows // 20, 1)
        self.min = opts.batch_min_rows if not uses_ctid else 1
        self.size = min(max(size, self.min), self.max)
        self.rate: float | None = None  # keys per ms, the estimate for the next batch
        self.last: float | None = None  # keys per ms the last batch did

    def adapt(self, keys: int, elapsed_ms: float) -> None:
        if elapsed_ms <= 0 or keys <= 0:
            return
        rate = keys / elapsed_ms
        if self.last is not None and rate < self.last:
            # Dearer than the batch before: expect the next to be dearer again, by as much
            # (at most twice): rows that get dearer tend to go on getting dearer for a while.
            self.rate = rate * max(rate / self.last, 0.5)
        elif self.rate is None or rate < self.rate:
            self.rate = rate
        else:
            self.rate = (self.rate + rate) / 2
        self.last = rate
        wanted = self.rate * self.target * self.AIM
        self.size = int(min(max(wanted, self.min), self.max,
                            max(self.size * self.GROWTH, self.size + 1)))

    def shrink(self) -> bool:
        """A quarter of the size after a statement timeout; False when already minimal."""
        if self.size <= self.min:
            return False
        self.size = max(self.size // 4, self.min)
        self.rate = self.last = None
        return True


def run_backfill(
    executor: Executor,
    step: Step,
    *,
    progress: ProgressCallback | None = None,
) -> BackfillResult:
    """Run (or resume) the backfill of ``step``'s table on ``executor.conn`` (autocommit,
    left idle).

    Each batch is one :meth:`Executor.run_in_transaction` (timeouts set on every attempt,
    lock timeouts and deadlocks retried with backoff): find the batch's upper key, UPDATE,
    :func:`~rls_migrate.journal.record_batch` and :func:`~rls_migrate.journal.save_checkpoint`
    on the batch's cursor, so the batch and its checkpoint commit together. A pass walks the
    keys up to the largest one present when it starts (later rows get their key from the
    sync trigger), then the table is inspected: orphans and conflicts are recorded, and rows
    still unfilled (written by a transaction that read its parent before the parent was
    filled) get another pass, at most :data:`MAX_SWEEPS` times.

    Raises :class:`StepFailed` when row-level security hides rows from the migration role
    (:func:`_refuse_if_rls_filters`), for orphans with ``orphans: stop``, and when a batch
    keeps hitting its statement timeout.
    """
    spec = step.backfill
    if spec is None:
        raise ValueError(f"step {step.id} has no backfill spec")
    options = executor.options
    opts = options.backfill
    conn = executor.conn
    journal = executor.journal
    result = BackfillResult(spec.table)
    _refuse_if_rls_filters(conn, spec, "it may not see every row")
    if opts.user_triggers == "skip":
        _check_trigger_skipping(conn, spec)
    ckpt = journal.load_checkpoint(spec.table)
    if ckpt is None:
        walk = _start_pass(executor, spec, result)
    else:
        result.rows, result.batches = int(ckpt.rows_done), int(ckpt.batches)
        walk = _Pass(_keys(ckpt.last_key), _keys(ckpt.max_key), bool(ckpt.finished))
        result.resumed = not walk.finished
        result.finished_earlier = walk.finished
        if result.resumed:
            executor.log.info("backfill.resume", table=str(spec.table), batches=result.batches,
                              rows=result.rows, last_key=walk.last_key)
    sizer = _Sizer(options, spec.uses_ctid)
    safety = _SafetyChecks()
    batch_timeout_ms = max(options.ddl_statement_timeout, opts.batch_target * 25)
    sweeps = 0
    while True:
        shrinks = 0
        while not walk.finished and walk.max_key is not None:
            _wait_until_safe(executor, spec.table, safety)
            try:
                # Pipelined: a batch is three round trips (BEGIN, timeouts, settings and
                # the batch's end; the UPDATE; the journal and COMMIT), not eight.
                with conn.pipeline() as pipeline:
                    batch, attempts = executor.run_in_transaction(
                        step, _batch_body(executor, spec, walk, sizer.size, result, pipeline),
                        lock=Lock.ROW_EXCLUSIVE, statement_timeout_ms=batch_timeout_ms,
                        action=f"backfill batch {result.batches + 1}")
            except psycopg.errors.QueryCanceled:
                # Slower than 25 times the target (an I/O stall, a cold cache): a smaller
                # batch, rather than a failed step.
                if shrinks >= TIMEOUT_SHRINKS or not sizer.shrink():
                    raise StepFailed(
                        f"backfill of {spec.table}: batch {result.batches + 1} of "
                        f"{sizer.size} row(s) after key {walk.last_key} exceeded its "
                        f"statement_timeout ({batch_timeout_ms:.0f} ms) {shrinks + 1} time(s). "
                        "Raise options.ddl_statement_timeout, or lower "
                        "options.backfill.batch_min_rows") from None
                shrinks += 1
                executor.log.warning("backfill.batch_timeout", table=str(spec.table),
                                     batch=result.batches + 1, new_size=sizer.size)
                continue
            shrinks = 0
            result.retries += attempts - 1
            result.rows += batch.rows
            result.rows_this_run += batch.rows
            result.batches += 1
            result.batches_this_run += 1
            result.batch_ms.append(batch.ms)
            walk.last_key, walk.finished, walk.dense = batch.hi, batch.last, batch.dense
            if progress is not None:
                progress(spec.table, result.rows, step.estimate.rows)
            sizer.adapt(batch.keys, batch.ms)
            if opts.pause and not walk.finished:
                executor.sleep(opts.pause / 1000)
        _inspect(conn, spec, result)
        if not result.unfilled or sweeps >= MAX_SWEEPS:
            break
        sweeps += 1
        result.finished_earlier = False
        executor.log.info("backfill.sweep", table=str(spec.table), unfilled=result.unfilled,
                          sample=result.unfilled_sample)
        walk = _start_pass(executor, spec, result)
    if result.orphans:
        journal.record_anomaly(spec.table, "orphan", result.orphans, result.orphan_sample)
    if result.conflicts:
        journal.record_anomaly(spec.table, "conflict", result.conflicts, result.conflict_sample)
    if result.unfilled:
        raise StepFailed(
            f"backfill of {spec.table}: {result.unfilled} row(s) still have no "
            f"{spec.column} although their parent in {spec.parent} has one, after "
            f"{sweeps + 1} pass(es) (sample keys: {', '.join(result.unfilled_sample)}). "
            "Rows keep being written without the key: check that the sync trigger of "
            "add-column is enabled, then run the stage again")
    if result.orphans and (spec.orphans or opts.orphans) == "stop":
        raise StepFailed(
            f"backfill of {spec.table}: {result.orphans} row(s) have no parent in {spec.parent} "
            f"carrying a tenant, so no tenant (sample keys: {', '.join(result.orphan_sample)}). "
            f"Fix or delete them, or set `orphans: skip` and `nullable: true` on "
            f"tables.{spec.table} to leave them empty (invisible to every tenant once policies "
            "are enforced, visible to admin roles; constrain keeps the column nullable)")
    return result


def _keys(value: Sequence[Any] | None) -> list[str] | None:
    return None if value is None else [str(v) for v in value]


def _start_pass(executor: Executor, spec: BackfillSpec, result: BackfillResult) -> _Pass:
    """A new walk over the whole key range, bounded by the largest key present now."""
    result.writers_waited_ms += _wait_for_writers(executor, spec.table)
    row = executor.conn.execute(spec.max_key_sql).fetchone()
    max_key = _keys(row) if row is not None and row[0] is not None else None
    if max_key is None:
        # Nothing visible: an empty table, or one whose rows RLS hides from us.
        _refuse_if_rls_filters(executor.conn, spec, "it found no rows at all")
    walk = _Pass(None, max_key, max_key is None)
    executor.journal.save_checkpoint(spec.table, None, max_key, result.rows, result.batches,
                                     walk.finished)
    result.passes += 1
    return walk


def _batch_body(
    executor: Executor, spec: BackfillSpec, walk: _Pass, size: int, result: BackfillResult,
    pipeline: psycopg.Pipeline,
) -> Callable[[psycopg.Cursor[Any]], _Batch]:
    """One batch, as the body of :meth:`Executor.run_in_transaction` in pipeline mode
    (errors surface at the syncs: a fetch, ``pipeline.sync()``, the COMMIT)."""
    assert walk.max_key is not None
    max_key, lo = walk.max_key, walk.last_key
    batch_no = result.batches + 1

    def body(cur: psycopg.Cursor[Any]) -> _Batch:
        _batch_settings(cur, spec, executor.options.backfill.user_triggers == "skip")
        hi, last, counted = _batch_end(cur, spec, lo, max_key, size, walk.dense)
        statement, params = _batch_statement(spec, lo, hi)
        started = time.perf_counter()
        cur.execute(for_params(statement), params)
        pipeline.sync()
        rows = cur.rowcount
        elapsed_ms = (time.perf_counter() - started) * 1000
        if rows == 0:
            # Every row of the range may be an orphan, or hidden by a policy FORCEd on us
            # since the run started: a silent "finished" is the one wrong answer.
            _refuse_if_rls_filters(cur, spec, f"batch {batch_no} (keys after {lo} up to {hi}) "
                                              "updated no row")
        executor.journal.record_batch(spec.table, batch_no, lo, hi, rows, elapsed_ms, cur=cur)
        executor.journal.save_checkpoint(spec.table, hi, max_key, result.rows + rows, batch_no,
                                         last, cur=cur)
        return _Batch(hi, last, rows, elapsed_ms, size,
                      _dense(spec, lo, hi, rows if counted is None else counted))

    return body


def _batch_end(
    cur: psycopg.Cursor[Any], spec: BackfillSpec, lo: list[str] | None, max_key: list[str],
    size: int, dense: bool,
) -> tuple[list[str], bool, int | None]:
    """Where a batch ends: ``size`` keys (pages) after ``lo``, or the pass's bound; and how
    many keys the index counted in the range (None when it was not asked)."""
    if spec.uses_ctid:
        lo_page = int(lo[0]) if lo else 0
        hi_page = min(lo_page + size, int(max_key[0]))
        return [str(hi_page)], hi_page >= int(max_key[0]), None
    if spec.integer_key and dense and lo is not None:
        hi_int = min(int(lo[0]) + size, int(max_key[0]))
        return [str(hi_int)], hi_int >= int(max_key[0]), None
    if lo is None:
        row = cur.execute(for_params(spec.first_next_key_sql), [*max_key, size - 1]).fetchone()
    else:
        row = cur.execute(for_params(spec.next_key_sql), [*lo, *max_key, size - 1]).fetchone()
    if row is None:
        return list(max_key), True, None
    hi = [str(v) for v in row]
    return hi, hi == list(max_key), size


def _dense(spec: BackfillSpec, lo: list[str] | None, hi: list[str], rows: int) -> bool:
    """Whether ``rows`` rows in the integer key range (lo, hi] make it dense (:data:`DENSE`)."""
    if not spec.integer_key or lo is None:
        return False
    span = int(hi[0]) - int(lo[0])
    return span > 0 and rows >= DENSE * span


def _batch_statement(
    spec: BackfillSpec, lo: list[str] | None, hi: list[str]
) -> tuple[Query, list[object]]:
    if spec.uses_ctid:
        lo_page = int(lo[0]) if lo else 0
        return spec.batch_sql, [f"({lo_page},0)", f"({int(hi[0])},0)"]
    if lo is None:
        return spec.first_batch_sql, [*hi] * spec.range_uses
    return spec.batch_sql, [*lo, *hi] * spec.range_uses


def _refuse_if_rls_filters(db: Executes, spec: BackfillSpec, symptom: str) -> None:
    """Fail when row-level security applies to the migration role on the table or its
    parent: the backfill would fill only the rows the policies show it, and report success.
    Superusers and BYPASSRLS roles are never filtered; a table's owner is, once the table
    has FORCE ROW LEVEL SECURITY."""
    tables = [spec.table, *([spec.parent] if spec.parent is not None else [])]
    filtered = []
    role = ""
    for qname in tables:
        row = db.execute("SELECT row_security_active(%s::regclass::oid), current_user",
                         [regclass_text(qname)]).fetchone()
        if row is not None and row[0]:
            filtered.append(str(qname))
            role = str(row[1])
    if filtered:
        raise StepFailed(
            f"backfill of {spec.table}: {symptom}, and row-level security filters the "
            f"migration role {role!r} on {' and '.join(filtered)} (FORCE ROW LEVEL SECURITY "
            "applies policies to the table owner too): rows the policies hide would stay "
            "without a tenant while the backfill reports success. Run the backfill as a role "
            "with BYPASSRLS (roles.migration_bypassrls) or a superuser, or before FORCE ROW "
            "LEVEL SECURITY (ALTER TABLE ... NO FORCE ROW LEVEL SECURITY for the backfill)")


_WRITERS = sql.SQL(
    "SELECT array_agg(DISTINCT l.virtualtransaction), array_agg(DISTINCT l.pid) FROM pg_locks l"
    " WHERE l.locktype = 'relation' AND l.granted AND l.mode = 'RowExclusiveLock'"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    # pg_partition_tree lists nothing for a table that is not partitioned.
    " AND (l.relation = %(t)s::regclass"
    "      OR l.relation IN (SELECT relid FROM pg_partition_tree(%(t)s::regclass)))"
    " AND l.pid IS DISTINCT FROM pg_backend_pid()")
_STILL_RUNNING = sql.SQL(
    "SELECT array_agg(DISTINCT pid) FROM pg_locks WHERE virtualtransaction = ANY(%s::text[])")


def _wait_for_writers(executor: Executor, table: QualifiedName) -> float:
    """Wait (like CREATE INDEX CONCURRENTLY) for the transactions writing the table right
    now to end, before a pass reads its bound. Such a transaction may have taken its row's
    key from a parent not yet filled (the sync trigger found NULL) and commit its row, with
    a key above the bound, after the bound is read: no batch would ever visit it. Rows
    written later find their parent filled. Bounded by :data:`WRITERS_WAIT_S` (an idle
    transaction must not stall the migration); what it misses, the inspection's sweep
    fills. Returns the milliseconds waited."""
    conn = executor.conn
    row = conn.execute(_WRITERS, {"t": regclass_text(table)}).fetchone()
    if row is None or not row[0]:
        return 0.0
    vxids, started, logged = list(row[0]), time.monotonic(), False
    while True:
        still = conn.execute(_STILL_RUNNING, [vxids]).fetchone()
        waited = time.monotonic() - started
        if still is None or not still[0]:
            return waited * 1000
        if waited >= WRITERS_WAIT_S:
            executor.log.warning("backfill.writers_still_open", table=str(table),
                                 pids=list(still[0]), waited_s=round(waited, 1))
            return waited * 1000
        if not logged and waited >= 1.0:
            executor.log.info("backfill.waiting_for_writers", table=str(table),
                              pids=list(still[0]))
            logged = True
        executor.sleep(0.02)


def _replica_lag_ms(conn: psycopg.Connection[Any]) -> float:
    row = conn.execute(
        "SELECT COALESCE(max(EXTRACT(epoch FROM replay_lag)) * 1000, 0)::float8"
        " FROM pg_stat_replication").fetchone()
    return float(row[0]) if row else 0.0


def _wraparound_vacuum(conn: psycopg.Connection[Any], qname: QualifiedName) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_progress_vacuum v JOIN pg_stat_activity a"
        " USING (pid) WHERE v.relid = %s::regclass AND a.query LIKE %s)",
        [regclass_text(qname), "%to prevent wraparound%"]).fetchone()
    return bool(row and row[0])


WRAPAROUND_CHECK_S = 1.0
"""How often a backfill looks for an anti-wraparound autovacuum on its table (one that runs
for minutes; looking before every batch cost 1 ms of 5 in a batch's own overhead)."""


@dataclasses.dataclass
class _SafetyChecks:
    """When a table's backfill last looked for an anti-wraparound autovacuum (monotonic)."""

    wraparound_checked_at: float = -WRAPAROUND_CHECK_S


def _wait_until_safe(executor: Executor, table: QualifiedName, checks: _SafetyChecks) -> None:
    """Pause while a replica lags more than ``max_replica_lag`` (asked before every batch),
    and while an anti-wraparound autovacuum works on the table (it does not yield to lock
    conflicts as other autovacuums do, and every batch adds to its work; asked every
    :data:`WRAPAROUND_CHECK_S`)."""
    bound = executor.options.backfill.max_replica_lag
    paused = False
    while True:
        reasons = []
        if bound is not None:
            lag = _replica_lag_ms(executor.conn)
            if lag > bound:
                reasons.append(f"replica replay lag {lag:.0f} ms > {bound:.0f} ms")
        now = time.monotonic()
        if paused or now - checks.wraparound_checked_at >= WRAPAROUND_CHECK_S:
            checks.wraparound_checked_at = now
            if _wraparound_vacuum(executor.conn, table):
                reasons.append("an anti-wraparound autovacuum is running on the table")
        if not reasons:
            if paused:
                executor.log.info("backfill.resumed", table=str(table))
            return
        if not paused:
            executor.log.info("backfill.paused", table=str(table), reasons=reasons)
            paused = True
        executor.sleep(0.5)


def _batch_settings(cur: psycopg.Cursor[Any], spec: BackfillSpec, skip_triggers: bool) -> None:
    """The batch transaction's local settings: the spec's planner settings,
    ``session_replication_role = replica`` so that user triggers (updated_at!) do not see
    the backfill as a change (:func:`_check_trigger_skipping` made sure we may), and
    ``synchronous_commit = off``: the commit does not wait for its WAL to reach the disk.
    That is safe here: the batch and its checkpoint commit together, so a crash that loses
    the last batches loses their checkpoints too, and the resumed run does them again; the
    step's final journal entry commits synchronously and flushes everything before it."""
    settings = [*spec.batch_settings, ("synchronous_commit", "off")]
    if skip_triggers:
        settings.append(("session_replication_role", "replica"))
    cur.execute(compose("SELECT {}", sep(", ").join(
        sql.SQL("set_config(%s, %s, true)") for _ in settings)),
        [v for pair in settings for v in pair])


def _check_trigger_skipping(conn: psycopg.Connection[Any], spec: BackfillSpec) -> None:
    """Fail up front, in words, when the role may not set session_replication_role (in a
    pipelined batch the error would surface later, at the next sync)."""
    try:
        with conn.transaction():
            conn.execute("SELECT set_config('session_replication_role', 'replica', true)")
    except psycopg.errors.InsufficientPrivilege:
        raise StepFailed(
            f"backfill of {spec.table}: skipping user triggers needs the right to set "
            "session_replication_role (a superuser, or on PostgreSQL 15+ "
            "GRANT SET ON PARAMETER session_replication_role TO <migration role>); or set "
            "options.backfill.user_triggers: fire to let them run (updated_at columns change)"
        ) from None


def _inspect(conn: psycopg.Connection[Any], spec: BackfillSpec, result: BackfillResult) -> None:
    """Orphans, conflicts and unfilled rows, with sample keys (two scans of the table)."""
    if spec.orphans_sql is not None:
        row = conn.execute(spec.orphans_sql).fetchone()
        if row:
            result.orphans = int(row[0])
            result.orphan_sample = [str(k) for k in (row[1] or [])]
    if spec.conflicts_sql is not None:
        row = conn.execute(spec.conflicts_sql).fetchone()
        if row:
            result.conflicts = int(row[0])
            result.conflict_sample = [str(k) for k in (row[1] or [])]
            result.unfilled = int(row[2])
            result.unfilled_sample = [str(k) for k in (row[3] or [])]
