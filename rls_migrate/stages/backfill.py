"""backfill: fill the tenant column of derived tables in short keyset batches.

Parents before children, so each batch is one join with the parent (probed by index when
the parent's key has one: a hash or merge join would read the whole parent per batch).

Running (:func:`run_backfill`): each batch is one :meth:`Executor.run_in_transaction`
(timeouts set on every attempt, lock timeouts retried with backoff), pipelined to three
round trips, and writes its batch record and checkpoint with the journal's functions on
its own cursor: a run killed at any point resumes after the last committed batch and never
applies a batch twice. A pass is bounded by the largest key present when it starts (later
rows get their key from the sync trigger), so it ends under any insert load; before reading
that bound it waits for the transactions writing the table then, which may have read a
parent not yet filled. Batch size adapts to ``batch_target``; replica lag and
anti-wraparound vacuums pause the run. At the end the table is inspected: orphans and
conflicts are recorded, rows still without a key get another pass. Row-level security
that filters the migration role fails the step instead of letting it "finish".
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
from rls_migrate.errors import PlaybookError, StepFailed
from rls_migrate.playbook import Options
from rls_migrate.sqlcompose import compose, for_params, sep
from rls_migrate.stages.common import (
    PlanContext,
    TenantTable,
    comparable,
    regclass_text,
    rows_estimate,
    triggers_firing_on_update,
)
from rls_migrate.steps import BackfillSpec, Lock, Query, StagePlan, Step

if TYPE_CHECKING:
    from rls_migrate.executor import Executor

SAMPLE_SIZE = 10
Executes: TypeAlias = psycopg.Connection[Any] | psycopg.Cursor[Any]


def _key_expr(columns: Sequence[str], alias: str) -> sql.Composable:
    parts = [sql.Identifier(alias, c) for c in columns]
    if len(parts) == 1:
        return parts[0]
    return compose("({})", sep(", ").join(parts))


def _params(types: Sequence[str]) -> sql.Composable:
    parts = [compose("%s::{}", sql.SQL(t)) for t in types]
    if len(parts) == 1:
        return parts[0]
    return compose("({})", sep(", ").join(parts))


def _key_range(columns: Sequence[str], types: Sequence[str], alias: str, *, first: bool
               ) -> sql.Composed:
    """``key > lo AND key <= hi`` on ``alias`` (composite keys by row comparison), or only
    ``key <= hi`` for the first batch; ``lo`` and ``hi`` are typed placeholders."""
    key = _key_expr(columns, alias)
    if first:
        return compose("{} <= {}", key, _params(types))
    return compose("{} > {} AND {} <= {}", key, _params(types), key, _params(types))


def _key_text(columns: Sequence[str], alias: str) -> sql.Composed:
    return sep(", ").join(compose("{}::text", sql.Identifier(alias, c))
                              for c in columns)


def build_spec(ctx: PlanContext, entry: TenantTable) -> BackfillSpec:
    assert entry.parent is not None and entry.parent_column is not None
    table = entry.table
    t = entry.ident
    col = sql.Identifier(entry.column)
    parent = entry.parent.qname.ident
    match = ctx.parent_match(entry, "c")
    # The parent's tenant as this table's column type (an integer root under bigint
    # parents, a text key): cast where the two differ.
    ptenant = ctx.parent_tenant_sql(entry)
    fill = compose("UPDATE {t} AS c SET {col} = {ptenant} FROM {parent} AS p WHERE {match}",
                   t=t, col=col, ptenant=ptenant, parent=parent, match=match)
    # A row whose parent is gone, or whose parent has no tenant either, cannot get one.
    no_parent = compose(
        "NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE {match} AND p.{pcol} IS NOT NULL)",
        parent=parent, match=match, pcol=sql.Identifier(entry.parent_column))
    ahead: Query
    first_ahead: Query
    max_key: Query
    sample_key: Query
    batch: Query
    first: Query
    probe = _parent_indexed(ctx, entry)
    gather = probe and len(entry.parent.columns) == 1
    settings: tuple[tuple[str, str], ...] = ()
    range_uses = 1
    if table.primary_key:
        keys = table.primary_key
        types = [table.column(k).type for k in keys]  # type: ignore[union-attr]
        order = sep(", ").join(sql.Identifier("c", k) for k in keys)

        def fill_range(first: bool) -> sql.Composed:
            # The gathering form reads the key range once more, to collect the parents.
            head = (_gathering_fill(ctx, entry, t, col, parent, match,
                                    _key_range(keys, types, "k", first=first))
                    if gather else fill)
            return compose("{} AND {} AND c.{} IS NULL",
                head, _key_range(keys, types, "c", first=first), col)

        batch, first = fill_range(False), fill_range(True)
        if gather:
            settings, range_uses = HASH_GATHERED, 2
        else:
            settings = PROBE_PARENT if probe else ()

        def key_ahead(first: bool) -> sql.Composed:
            # The key `size` rows after lo (from the start for the first batch), within the
            # pass's bound.
            return compose(
                "SELECT {txt} FROM {t} AS c WHERE {range} ORDER BY {order} OFFSET %s LIMIT 1",
                txt=_key_text(keys, "c"), t=t, order=order,
                range=_key_range(keys, types, "c", first=first))

        ahead, first_ahead = key_ahead(False), key_ahead(True)
        max_key = compose("SELECT {txt} FROM {t} AS c ORDER BY {desc} LIMIT 1",
                          txt=_key_text(keys, "c"), t=t,
                          desc=sep(", ").join(compose("{} DESC", sql.Identifier("c", k))
                                                  for k in keys))
        sample_key = compose("concat_ws(',', {})", _key_text(keys, "c"))
        uses_ctid = False
        integer_key = len(keys) == 1 and types[0] in INTEGER_TYPES
    else:
        if table.is_partitioned:
            raise PlaybookError(f"{entry.qname}: a partitioned table without a primary key "
                                "cannot be backfilled in batches; add a primary key first")
        keys = ("ctid",)
        ctid = sql.SQL("c.ctid")

        batch = compose("{fill} AND {ctid} >= %s::tid AND {ctid} < %s::tid AND c.{col} IS NULL",
                        fill=fill, ctid=ctid, col=col)
        settings = PROBE_PARENT if probe else ()
        first = batch
        # ctid batches count pages: the "key ahead" is simply lo + n pages.
        ahead = sql.SQL("SELECT (%s::bigint + %s::bigint)::text")
        first_ahead = sql.SQL("SELECT %s::bigint::text")
        max_key = compose(
            "SELECT (pg_relation_size({reg}) / current_setting('block_size')::bigint + 1)::text",
            reg=sql.Literal(regclass_text(entry.qname)))
        sample_key = sql.SQL("c.ctid::text")
        uses_ctid = True
        integer_key = False
    remaining = compose("SELECT count(*) FROM {t} AS c WHERE c.{col} IS NULL", t=t, col=col)
    orphans = compose(
        "SELECT count(*), (array_agg({key}))[1:{n}] FROM {t} AS c WHERE c.{col} IS NULL"
        " AND {no_parent}", key=sample_key, n=sql.Literal(SAMPLE_SIZE), t=t, col=col,
                                   no_parent=no_parent)
    # One scan for two findings: conflicts (a key that differs from the parent's) and
    # unfilled rows (no key although the parent has one: written by a transaction that read
    # the parent before the parent's backfill committed; another pass fills them).
    conflicts = compose(
        "SELECT count(*) FILTER (WHERE c.{col} IS NOT NULL),"
        " (array_agg({key}) FILTER (WHERE c.{col} IS NOT NULL))[1:{n}],"
        " count(*) FILTER (WHERE c.{col} IS NULL),"
        " (array_agg({key}) FILTER (WHERE c.{col} IS NULL))[1:{n}]"
        " FROM {t} AS c JOIN {parent} AS p ON {match}"
        " WHERE p.{pcol} IS NOT NULL AND c.{col} IS DISTINCT FROM {ptenant}",
        key=sample_key, n=sql.Literal(SAMPLE_SIZE), t=t, parent=parent, match=match, col=col,
        pcol=sql.Identifier(entry.parent_column), ptenant=ptenant)
    return BackfillSpec(
        table=entry.qname, key_columns=tuple(keys), uses_ctid=uses_ctid, column=entry.column,
        parent=entry.parent.qname, batch_sql=batch, first_batch_sql=first, next_key_sql=ahead,
        first_next_key_sql=first_ahead, max_key_sql=max_key, remaining_sql=remaining,
        single_statement_sql=compose("{} AND c.{} IS NULL", fill, col),
        orphans_sql=orphans, conflicts_sql=conflicts,
        batch_settings=settings, range_uses=range_uses, integer_key=integer_key,
        orphans=ctx.playbook.orphans_for(entry.qname))


def _gathering_fill(
    ctx: PlanContext, entry: TenantTable, t: sql.Composable, col: sql.Identifier,
    parent: sql.Composable, match: sql.Composable, k_range: sql.Composable,
) -> sql.Composed:
    """The head of a batch that gathers its parents first: the parent keys of the batch's
    rows (``k_range``) into an array (an InitPlan), the parents fetched with one index scan
    over the sorted array and hashed, then the batch's rows, in key order, each find theirs
    in the hash table. One index probe per row interleaved with the updates cost 6.5-6.7 µs
    a row on the sample's comments, this 4.7 (a constant: 3.4; the single statement: 4.4).
    The batch then takes the key range twice: ``(lo, hi)`` for the gathering, again for the
    update."""
    assert entry.parent is not None and entry.parent_column is not None
    mine, theirs = ctx.link_types(entry)[0]
    fk: sql.Composable = compose("k.{}", sql.Identifier(entry.parent.columns[0]))
    if not comparable(mine, theirs) and theirs is not None:
        fk = compose("({})::{}", fk, sql.SQL(theirs))
    return compose(
        "UPDATE {t} AS c SET {col} = {ptenant} FROM {parent} AS p"
        " WHERE p.{ref} = ANY (ARRAY(SELECT {fk} FROM {t} AS k WHERE {k_range}))"
        " AND {match}",
        t=t, col=col, ptenant=ctx.parent_tenant_sql(entry), parent=parent,
        ref=sql.Identifier(entry.parent.ref_columns[0]), fk=fk, k_range=k_range, match=match)


HASH_GATHERED = (("enable_nestloop", "off"), ("enable_mergejoin", "off"))
"""For a gathering batch: the join is a hash join, the gathered parents hashed, the batch's
rows probing in key order (the planner estimates ``ANY (ARRAY(...))`` at a few rows, so it
hashes that side; a nested loop over it would rescan the batch once per parent)."""


INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
DENSE = 0.8
"""Rows per key from which an integer key range counts as dense: the next batch then ends
``size`` keys on (``lo + size``) instead of asking the index for the key ``size`` rows
ahead, a scan of the batch's keys that cost 4-9 ms of a 200 ms batch. A batch that finds
fewer rows per key (a gap, a shared sequence) hands the next one back to the index, which
also jumps the gap; the threshold keeps a batch's rows within 1.25 times what the sizer
expects whichever way it ends."""


PROBE_PARENT = (("enable_hashjoin", "off"), ("enable_mergejoin", "off"))
"""Where the parent link has several columns (no gathering, see :func:`_gathering_fill`)
and for ctid batches: a batch's parents are as many index probes; a hash or merge join
would read the whole parent instead, once per batch (a 10-million-row parent would make
every batch take seconds), and the planner picks one for batches of a few thousand rows
already."""


def _parent_indexed(ctx: PlanContext, entry: TenantTable) -> bool:
    """Whether a valid plain btree index leads with the parent's referenced columns (a
    foreign key's target always has one; a hint's may not, and then a nested loop would
    scan the parent once per row)."""
    assert entry.parent is not None
    parent = ctx.catalog.tables.get(entry.parent.qname)
    if parent is None:
        return False
    wanted = set(entry.parent.ref_columns)
    return any(
        index.method == "btree" and index.is_valid and index.predicate is None
        and set(index.columns[:len(wanted)]) == wanted for index in parent.indexes)


def _owner_link_unique(ctx: PlanContext, entry: TenantTable) -> bool:
    """Whether a valid unique index (or constraint) covers exactly the owner's link columns."""
    assert entry.parent is not None
    owner = ctx.catalog.tables.get(entry.parent.qname)
    wanted = set(entry.parent.ref_columns)
    return owner is not None and any(
        index.is_unique and index.is_valid and index.predicate is None
        and set(index.columns) == wanted for index in owner.indexes)


def plan(ctx: PlanContext) -> StagePlan:
    steps: list[Step] = []
    notes: list[str] = []
    for entry in ctx.tenant_tables:
        if not entry.added:
            continue
        spec = build_spec(ctx, entry)
        risks: list[str] = []
        fired = triggers_firing_on_update(entry.table, entry.column)
        if fired and ctx.playbook.options.backfill.user_triggers == "fire":
            risks.append(f"user trigger(s) {', '.join(fired)} fire once per backfilled row "
                         "(e.g. updated_at changes)")
        elif fired:
            risks.append(f"user trigger(s) {', '.join(fired)} are skipped by the backfill "
                         "(session_replication_role = replica in each batch: needs a superuser "
                         "or, on PostgreSQL 15+, GRANT SET ON PARAMETER session_replication_role)")
        if entry.table.publications:
            risks.append(f"publication(s) {', '.join(entry.table.publications)}: logical "
                         "replication consumers see every backfilled row as an UPDATE")
        if spec.uses_ctid:
            risks.append("no primary key: batches walk physical pages (ctid ranges)")
        if entry.strategy == "hint":
            risks.append("no foreign key backs the parent link (hint): rows whose parent is "
                         "gone cannot get a tenant (orphans)")
        if entry.owned and entry.parent is not None:
            risks.append(f"owned (reverse one-to-one): a row no {entry.parent.qname} row points "
                         "at has no tenant to take (an orphan)")
            if not _owner_link_unique(ctx, entry):
                risks.append(
                    f"nothing makes {entry.parent.qname}({', '.join(entry.parent.ref_columns)}) "
                    "unique: two owners may point at one row, with different tenants (the "
                    "backfill reports them as conflicts); a one-to-one needs a unique index")
        est = rows_estimate(entry.table)
        wal = entry.table.size_bytes
        if wal:
            risks.append(f"about {wal // 1_000_000 or 1} MB of WAL (every row is rewritten once)")
        steps.append(Step(
            id=f"backfill:{entry.qname}",
            stage="backfill",
            kind="backfill",
            table=entry.qname,
            description=f"fill {entry.column} from {entry.parent.qname if entry.parent else ''} in "
                        f"keyset batches of ~{ctx.playbook.options.backfill.batch_target:.0f} ms "
                        f"on ({', '.join(spec.key_columns)})",
            statements=(spec.batch_sql,),
            lock=Lock.ROW_EXCLUSIVE,
            done_check=compose("SELECT NOT EXISTS ({})", compose(
                "SELECT 1 FROM {} AS c WHERE c.{} IS NULL",
                entry.ident, sql.Identifier(entry.column))),
            estimate=est,
            risks=tuple(risks),
            why="each batch is its own short transaction: row locks last milliseconds",
            backfill=spec,
        ))
    if not steps:
        notes.append("nothing to backfill")
    options = ctx.playbook.options
    if steps and options.backfill.batch_target > options.lock_timeout:
        notes.append(
            f"a batch holds the row locks of the rows it fills until it commits: an application "
            f"write to one of them waits up to a batch (options.backfill.batch_target "
            f"{options.backfill.batch_target:g} ms), longer than lock_timeout "
            f"({options.lock_timeout:g} ms); lower batch_target where that matters")
    return StagePlan("backfill", tuple(steps), tuple(notes))


# --------------------------------------------------------------------------- running

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
