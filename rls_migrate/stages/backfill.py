"""backfill: fill the tenant column of derived tables in short keyset batches.

Parents before children, so each batch is one join with the parent (probed by index when
the parent's key has one: a hash or merge join would read the whole parent per batch).

Each table's step carries the statements a batch runs (a :class:`~rls_migrate.steps.
BackfillSpec`); :mod:`rls_migrate.stages.backfill_runner` runs them in short batches.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from psycopg import sql

from rls_migrate.errors import PlaybookError
from rls_migrate.sqlcompose import compose, identifier, sep
from rls_migrate.stages.common import (
    PlanContext,
    TenantTable,
    comparable,
    regclass_text,
    rows_estimate,
    triggers_firing_on_update,
)
from rls_migrate.steps import BackfillSpec, Estimate, Later, Lock, Query, StagePlan, Step

SAMPLE_SIZE = 10


def _key_expr(columns: Sequence[str], alias: str) -> sql.Composable:
    parts = [identifier(alias, c) for c in columns]
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
    return sep(", ").join(compose("{}::text", identifier(alias, c))
                              for c in columns)


def build_spec(ctx: PlanContext, entry: TenantTable) -> BackfillSpec:
    """The table's backfill; each statement is built when first read (``plan`` prints one
    of them, ``apply`` runs them all)."""
    assert entry.parent is not None and entry.parent_column is not None
    refuse_unbatchable(entry)
    q = _Statements(ctx, entry)
    keyed = bool(entry.table.primary_key)
    gather = keyed and q.gather
    keys = entry.table.primary_key or ("ctid",)
    return BackfillSpec(
        table=entry.qname, key_columns=tuple(keys), uses_ctid=not keyed, column=entry.column,
        parent=entry.parent.qname, batch_sql=Later(q.batch),
        first_batch_sql=Later(q.first_batch), next_key_sql=Later(q.next_key),
        first_next_key_sql=Later(q.first_next_key), max_key_sql=Later(q.max_key),
        remaining_sql=Later(q.remaining), single_statement_sql=Later(q.single_statement),
        orphans_sql=Later(q.orphans), conflicts_sql=Later(q.conflicts),
        batch_settings=HASH_GATHERED if gather else PROBE_PARENT if q.probe else (),
        range_uses=2 if gather else 1,
        integer_key=keyed and len(keys) == 1 and q.types[0] in INTEGER_TYPES,
        orphans=ctx.playbook.orphans_for(entry.qname))


class _Statements:
    """The statements of one table's backfill, each built on request, from pieces built
    once. Keyed tables walk their primary key; tables without one walk physical pages
    (ctid ranges)."""

    def __init__(self, ctx: PlanContext, entry: TenantTable) -> None:
        assert entry.parent is not None and entry.parent_column is not None
        self.ctx, self.entry, self.parent_ref = ctx, entry, entry.parent
        self.parent_column = entry.parent_column
        self.keys = entry.table.primary_key
        self.probe = _parent_indexed(ctx, entry)
        self.gather = self.probe and len(entry.parent.columns) == 1

    @functools.cached_property
    def types(self) -> list[str]:
        return [self.entry.table.column(k).type for k in self.keys]  # type: ignore[union-attr]

    @functools.cached_property
    def col(self) -> sql.Identifier:
        return identifier(self.entry.column)

    @functools.cached_property
    def match(self) -> sql.Composable:
        return self.ctx.parent_match(self.entry, "c")

    @functools.cached_property
    def ptenant(self) -> sql.Composable:
        # The parent's tenant as this table's column type (an integer root under bigint
        # parents, a text key): cast where the two differ.
        return self.ctx.parent_tenant_sql(self.entry)

    @functools.cached_property
    def fill(self) -> sql.Composed:
        return compose("UPDATE {t} AS c SET {col} = {ptenant} FROM {parent} AS p WHERE {match}",
                       t=self.entry.ident, col=self.col, ptenant=self.ptenant,
                       parent=self.parent_ref.qname.ident, match=self.match)

    @functools.cached_property
    def sample_key(self) -> sql.Composable:
        if not self.keys:
            return sql.SQL("c.ctid::text")
        return compose("concat_ws(',', {})", _key_text(self.keys, "c"))

    def _fill_range(self, first: bool) -> sql.Composed:
        if not self.keys:
            return compose(
                "{fill} AND {ctid} >= %s::tid AND {ctid} < %s::tid AND c.{col} IS NULL",
                fill=self.fill, ctid=sql.SQL("c.ctid"), col=self.col)
        # The gathering form reads the key range once more, to collect the parents.
        head = (_gathering_fill(self.ctx, self.entry, self.entry.ident, self.col,
                                self.parent_ref.qname.ident, self.match,
                                _key_range(self.keys, self.types, "k", first=first))
                if self.gather else self.fill)
        return compose("{} AND {} AND c.{} IS NULL",
            head, _key_range(self.keys, self.types, "c", first=first), self.col)

    def batch(self) -> Query:
        return self._fill_range(False)

    def first_batch(self) -> Query:
        # A ctid batch has no "first" form: every batch takes both page bounds.
        return self._fill_range(bool(self.keys))

    def _key_ahead(self, first: bool) -> Query:
        if not self.keys:
            # ctid batches count pages: the "key ahead" is simply lo + n pages.
            return sql.SQL("SELECT %s::bigint::text" if first
                           else "SELECT (%s::bigint + %s::bigint)::text")
        # The key `size` rows after lo (from the start for the first batch), within the
        # pass's bound.
        return compose(
            "SELECT {txt} FROM {t} AS c WHERE {range} ORDER BY {order} OFFSET %s LIMIT 1",
            txt=_key_text(self.keys, "c"), t=self.entry.ident,
            order=sep(", ").join(identifier("c", k) for k in self.keys),
            range=_key_range(self.keys, self.types, "c", first=first))

    def next_key(self) -> Query:
        return self._key_ahead(False)

    def first_next_key(self) -> Query:
        return self._key_ahead(True)

    def max_key(self) -> Query:
        if not self.keys:
            return compose(
                "SELECT (pg_relation_size({reg}) / current_setting('block_size')::bigint + 1)"
                "::text", reg=sql.Literal(regclass_text(self.entry.qname)))
        return compose("SELECT {txt} FROM {t} AS c ORDER BY {desc} LIMIT 1",
                       txt=_key_text(self.keys, "c"), t=self.entry.ident,
                       desc=sep(", ").join(compose("{} DESC", identifier("c", k))
                                           for k in self.keys))

    def remaining(self) -> Query:
        return compose("SELECT count(*) FROM {t} AS c WHERE c.{col} IS NULL",
                       t=self.entry.ident, col=self.col)

    def single_statement(self) -> Query:
        return compose("{} AND c.{} IS NULL", self.fill, self.col)

    def orphans(self) -> Query | None:
        # A row whose parent is gone, or whose parent has no tenant either, cannot get one.
        no_parent = compose(
            "NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE {match} AND p.{pcol} IS NOT NULL)",
            parent=self.parent_ref.qname.ident, match=self.match,
            pcol=identifier(self.parent_column))
        return compose(
            "SELECT count(*), (array_agg({key}))[1:{n}] FROM {t} AS c WHERE c.{col} IS NULL"
            " AND {no_parent}", key=self.sample_key, n=sql.Literal(SAMPLE_SIZE),
            t=self.entry.ident, col=self.col, no_parent=no_parent)

    def conflicts(self) -> Query | None:
        # One scan for two findings: conflicts (a key that differs from the parent's) and
        # unfilled rows (no key although the parent has one: written by a transaction that
        # read the parent before the parent's backfill committed; another pass fills them).
        return compose(
            "SELECT count(*) FILTER (WHERE c.{col} IS NOT NULL),"
            " (array_agg({key}) FILTER (WHERE c.{col} IS NOT NULL))[1:{n}],"
            " count(*) FILTER (WHERE c.{col} IS NULL),"
            " (array_agg({key}) FILTER (WHERE c.{col} IS NULL))[1:{n}]"
            " FROM {t} AS c JOIN {parent} AS p ON {match}"
            " WHERE p.{pcol} IS NOT NULL AND c.{col} IS DISTINCT FROM {ptenant}",
            key=self.sample_key, n=sql.Literal(SAMPLE_SIZE), t=self.entry.ident,
            parent=self.parent_ref.qname.ident, match=self.match, col=self.col,
            pcol=identifier(self.parent_column), ptenant=self.ptenant)


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
    fk: sql.Composable = compose("k.{}", identifier(entry.parent.columns[0]))
    if not comparable(mine, theirs) and theirs is not None:
        fk = compose("({})::{}", fk, sql.SQL(theirs))
    return compose(
        "UPDATE {t} AS c SET {col} = {ptenant} FROM {parent} AS p"
        " WHERE p.{ref} = ANY (ARRAY(SELECT {fk} FROM {t} AS k WHERE {k_range}))"
        " AND {match}",
        t=t, col=col, ptenant=ctx.parent_tenant_sql(entry), parent=parent,
        ref=identifier(entry.parent.ref_columns[0]), fk=fk, k_range=k_range, match=match)


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


def refuse_unbatchable(entry: TenantTable) -> None:
    if entry.table.is_partitioned and not entry.table.primary_key:
        raise PlaybookError(f"{entry.qname}: a partitioned table without a primary key "
                            "cannot be backfilled in batches; add a primary key first")


def plan(ctx: PlanContext) -> StagePlan:
    steps: list[Step] = []
    notes: list[str] = []
    for entry in ctx.tenant_tables:
        if not entry.added:
            continue
        refuse_unbatchable(entry)  # here, not when the statements are first read
        key_columns = entry.table.primary_key or ("ctid",)
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
        if not entry.table.primary_key:
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
        steps.append(_step(ctx, entry, key_columns, est, tuple(risks)))
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


def _step(ctx: PlanContext, entry: TenantTable, key_columns: Sequence[str], est: Estimate,
          risks: tuple[str, ...]) -> Step:
    spec = build_spec(ctx, entry)  # cheap: its statements are built when first read
    return Step(
        id=f"backfill:{entry.qname}",
        stage="backfill",
        kind="backfill",
        table=entry.qname,
        description=f"fill {entry.column} from {entry.parent.qname if entry.parent else ''} in "
                    f"keyset batches of ~{ctx.playbook.options.backfill.batch_target:.0f} ms "
                    f"on ({', '.join(key_columns)})",
        statements=Later(lambda: (spec.batch_sql,)),
        lock=Lock.ROW_EXCLUSIVE,
        done_check=Later(lambda: compose("SELECT NOT EXISTS ({})", compose(
            "SELECT 1 FROM {} AS c WHERE c.{} IS NULL",
            entry.ident, identifier(entry.column)))),
        estimate=est,
        risks=risks,
        why="each batch is its own short transaction: row locks last milliseconds",
        backfill=spec,
    )
