"""index: tenant-leading indexes built with CREATE INDEX CONCURRENTLY, tenant-scoped
uniques and tenant-consistent foreign keys.

Every tenant table gets ``(tenant)`` or ``(tenant, pk)``, and a tenant-leading twin of each
existing index that queries use (``(created_at)`` -> ``(tenant_id, created_at)``): once the
policy adds ``tenant_id = <current tenant>`` to every query, an index that does not start
with the tenant makes every query read all tenants' rows. Builds run outside any
transaction; an INVALID index left by a failed or killed build is dropped concurrently and
built again. Partitioned tables: an index ``ON ONLY`` the parent, a concurrent build on each
partition, then ``ATTACH PARTITION``.

Opt-in, per the playbook:

* ``drop_replaced_indexes``: the old index is dropped concurrently once its twin is valid;
* ``tenant_unique``: a global ``UNIQUE (email)`` (it reveals that another tenant has the
  value) becomes ``UNIQUE (tenant, email)``: built concurrently, swapped in by one short
  ``DROP CONSTRAINT, ADD CONSTRAINT ... USING INDEX``;
* ``options.index.tenant_foreign_keys``: ``UNIQUE (tenant, id)`` on parents and composite
  foreign keys ``(tenant, parent_id) -> parent (tenant, id)``, added NOT VALID then
  validated, so the database guarantees that a child's tenant is its parent's.

The plan must be the same before and after the stage ran (rollback re-plans from the live
catalog): what this stage replaced is found again from what it built, by name.

The ``create_index`` kind handler (registered below) runs the build like the executor runs
any non-transactional step, while a second connection polls
``pg_stat_progress_create_index`` for the progress display and names the sessions a build
waits for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from rls_migrate.catalog import ForeignKey, Index, QualifiedName, Table
from rls_migrate.errors import PlaybookError
from rls_migrate.executor import Executor, StepOutcome, _now, _Trace, drop_invalid_index
from rls_migrate.sqlcompose import compose
from rls_migrate.sqltext import scan
from rls_migrate.stages.common import (
    ESTIMATED_INDEX_BYTES_PER_S,
    PlanContext,
    TenantTable,
    columns_sql,
    constraint_exists_check,
    exists_sql,
    object_name,
    regclass_literal,
    rows_estimate,
)
from rls_migrate.steps import Estimate, Lock, StagePlan, Step

INDEX_SUFFIX = "_rlsm_idx"
"""Tenant indexes, twins (``<old name>_rlsm_idx``) and extra indexes."""
TENANT_UNIQUE_SUFFIX = "_rlsm_tenant"
"""A tenant-scoped unique that replaced ``<old name>``; composite foreign keys too."""
KEY_SUFFIX = "_rlsm_key"
"""A new tenant-scoped unique (a parent's ``(tenant, id)``, or a tenant_unique with nothing
global to replace)."""
_OURS = re.compile(r"_rlsm_(idx|tenant|key)$")

PROGRESS_INTERVAL_S = 0.5
CLIENT_CHECK_INTERVAL = "1s"


def is_ours(name: str) -> bool:
    return bool(_OURS.search(name))


# --------------------------------------------------------------------------- index shapes


@dataclasses.dataclass(frozen=True)
class IndexShape:
    """An index definition taken apart: method, keys, and what follows the keys (INCLUDE,
    NULLS NOT DISTINCT, WITH, WHERE), so a twin keeps sort orders, operator classes and
    predicates, and a dropped index can be built again exactly.

    ``keys`` hold the server's own text (``pg_get_indexdef``), or identifiers this module
    added; ``columns`` are the key columns when every key is a bare column."""

    method: str
    keys: tuple[sql.Composable, ...]
    columns: tuple[str, ...] | None
    tail: str = ""

    @classmethod
    def of_columns(cls, columns: tuple[str, ...]) -> IndexShape:
        return cls("btree", tuple(sql.Identifier(c) for c in columns), columns)

    @classmethod
    def parse(cls, definition: str) -> IndexShape | None:
        """``CREATE INDEX i ON s.t USING btree (a, b DESC) WHERE (x > 0)`` -> its parts;
        None when the text does not have that form."""
        using = _find_top_level(definition, " USING ")
        if using < 0:
            return None
        rest = definition[using + len(" USING "):]
        method, _, _ = rest.partition(" (")
        start = using + len(" USING ") + len(method) + 1
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", method) or definition[start:start + 1] != "(":
            return None
        end = _matching_paren(definition, start)
        if end < 0:
            return None
        texts = [k.strip() for k in _split_top_level(definition[start + 1:end])]
        names = [_bare_identifier(k) for k in texts]
        columns = None if any(n is None for n in names) else tuple(n for n in names if n)
        # Server text, like format_type() elsewhere: it comes from the catalog, never from a
        # user, and is already quoted where needed.
        return cls(method, tuple(sql.SQL(k) for k in texts), columns,
                   definition[end + 1:].strip())

    @property
    def is_plain(self) -> bool:
        return self.columns is not None and self.method == "btree" and not self.tail

    def leading(self, column: str) -> IndexShape:
        """The same index with ``column`` in front: the tenant-leading twin."""
        return dataclasses.replace(
            self, keys=(sql.Identifier(column), *self.keys),
            columns=None if self.columns is None else (column, *self.columns))

    def without_leading(self) -> IndexShape:
        """The index a twin was made from."""
        return dataclasses.replace(self, keys=self.keys[1:],
                                   columns=None if self.columns is None else self.columns[1:])

    def create(self, name: str, table: QualifiedName, *, unique: bool = False,
               concurrently: bool = True, only: bool = False) -> sql.Composed:
        head = compose("CREATE {kind}{conc} IF NOT EXISTS {name} ON {only}{table}",
                       kind=sql.SQL("UNIQUE INDEX" if unique else "INDEX"),
                       conc=sql.SQL(" CONCURRENTLY" if concurrently else ""),
                       name=sql.Identifier(name), only=sql.SQL("ONLY " if only else ""),
                       table=table.ident)
        if self.is_plain:
            assert self.columns is not None
            return compose("{} ({})", head, columns_sql(self.columns))
        tail = sql.SQL(" " + self.tail) if self.tail else sql.SQL("")
        return compose("{} USING {} ({}){}", head, sql.Identifier(self.method),
                       sql.SQL(", ").join(self.keys), tail)

    def describe(self) -> str:
        if self.columns is not None:
            return ", ".join(self.columns)
        return ", ".join(k.as_string(None) for k in self.keys)


def _find_top_level(text: str, needle: str) -> int:
    for i, _, depth in scan(text):
        if depth == 0 and text.startswith(needle, i):
            return i
    return -1


def _matching_paren(text: str, start: int) -> int:
    for i, ch, depth in scan(text):
        if i > start and ch == ")" and depth == 0:
            return i
    return -1


def _split_top_level(text: str) -> list[str]:
    parts, last = [], 0
    for i, ch, depth in scan(text):
        if ch == "," and depth == 0:
            parts.append(text[last:i])
            last = i + 1
    parts.append(text[last:])
    return parts


def _bare_identifier(text: str) -> str | None:
    """The column name when ``text`` is nothing but a (possibly quoted) identifier."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", text):
        return text
    if len(text) >= 2 and text[0] == text[-1] == '"' and '"' not in text[1:-1].replace('""', ""):
        return text[1:-1].replace('""', '"')
    return None


def shape_of(index: Index) -> IndexShape | None:
    return IndexShape.parse(index.definition)


# --------------------------------------------------------------------------- checks


def index_ready_check(qname: QualifiedName, name: str, unique: bool = False) -> sql.Composed:
    """The index exists on ``qname``, is VALID and has the wanted uniqueness (an existing
    non-unique one is rebuilt when a unique one is wanted)."""
    return exists_sql(compose(
        "SELECT 1 FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
        " WHERE x.indrelid = {} AND c.relname = {} AND x.indisvalid AND x.indisunique = {}",
        regclass_literal(qname), sql.Literal(name), sql.Literal(unique)))


def relation_exists_sql(schema: str, name: str) -> sql.Composed:
    return exists_sql(compose(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = {} AND c.relname = {}", sql.Literal(schema), sql.Literal(name)))


def _not(check: sql.Composable) -> sql.Composed:
    return compose("SELECT NOT ({})", check)


def _both(a: sql.Composable, b: sql.Composable) -> sql.Composed:
    return compose("SELECT ({}) AND ({})", a, b)


def _index_estimate(table: Table | None) -> Estimate:
    if table is None:
        return Estimate()
    return Estimate(rows=table.row_estimate, bytes=table.size_bytes // 3,
                    seconds=round(table.size_bytes / ESTIMATED_INDEX_BYTES_PER_S, 2))


def _set_lock_timeout(ms: float) -> sql.Composed:
    value = "0" if ms <= 0 else f"{max(1, round(ms))}ms"
    return compose("SELECT set_config('lock_timeout', {}, false)", sql.Literal(value))


def _do(body: sql.Composable) -> sql.Composed:
    """A DO block around composed statements (identifiers quoted by psycopg, then the whole
    body passed as one string literal)."""
    return compose("DO {}", sql.Literal(compose("BEGIN {} END", body).as_string(None)))


# --------------------------------------------------------------------------- planning


def tenant_index_columns(ctx: PlanContext, entry: TenantTable) -> tuple[tuple[str, ...], str]:
    """The columns of the main tenant index and why."""
    pk = entry.table.primary_key or ()
    mode = ctx.playbook.options.index.tenant_index
    if mode == "tenant" or not pk or entry.column in pk:
        return (entry.column,), "(tenant) serves every tenant-filtered scan"
    if mode == "tenant_pk" or len(pk) == 1:
        return ((entry.column, *pk),
                "(tenant, pk) serves tenant scans and the policy-filtered lookups by key, and "
                "keeps each tenant's rows in key order")
    return (entry.column,), "(tenant): the primary key is composite"


def tenant_index_name(entry: TenantTable) -> str:
    return object_name("", entry.qname, f"_{entry.column}{INDEX_SUFFIX}")


def extra_index_name(entry: TenantTable, extra: tuple[str, ...]) -> str:
    cols = tuple(c for c in extra if c != entry.column)
    return object_name("", entry.qname, "_" + "_".join(cols) + INDEX_SUFFIX)


def twin_name(qname: QualifiedName, index_name: str) -> str:
    return object_name("", QualifiedName(qname.schema, index_name), INDEX_SUFFIX)


def _replaced_name(qname: QualifiedName, name: str, suffix: str) -> str | None:
    """The name ``name`` was derived from with ``suffix`` (None when it was shortened with a
    hash and cannot be read back)."""
    if not name.endswith(suffix):
        return None
    old = name[: -len(suffix)]
    return old if object_name("", QualifiedName(qname.schema, old), suffix) == name else None


def twin_candidates(ctx: PlanContext, entry: TenantTable) -> list[tuple[Index, str]]:
    """Existing indexes that deserve a tenant-leading twin, with the reason. An index whose
    twin exists already stays a candidate whatever its usage (statistics can be reset)."""
    out: list[tuple[Index, str]] = []
    min_scans = ctx.playbook.options.index.twin_min_scans
    names = {i.name for i in entry.table.indexes}
    for idx in entry.table.indexes:
        if idx.is_primary or idx.parent_index or idx.method != "btree" or not idx.is_valid:
            continue
        if idx.name in entry.plan.skip_indexes or is_ours(idx.name):
            continue
        if not idx.columns or idx.columns[0] == entry.column or None in idx.columns:
            continue
        if idx.is_unique:
            continue  # uniqueness is the tenant_unique option's business
        twinned = twin_name(entry.qname, idx.name) in names
        if idx.scans is not None and idx.scans < min_scans and not twinned:
            continue
        used = "unknown usage" if idx.scans is None else f"{idx.scans} scans"
        out.append((idx, f"{idx.name} ({', '.join(c for c in idx.columns if c)}) is used "
                         f"({used}); under the policy its queries also filter by tenant"))
    return out


def _create_step(table: Table | None, qname: QualifiedName, name: str, shape: IndexShape,
                 why: str, *, unique: bool = False, description: str | None = None) -> Step:
    idx = sql.Identifier(qname.schema, name)
    kind = "UNIQUE INDEX" if unique else "INDEX"
    return Step(
        id=f"create_index:{qname}:{name}",
        stage="index",
        kind="create_index",
        table=qname,
        description=description or f"CREATE {kind} CONCURRENTLY {name} ({shape.describe()})",
        statements=(
            # Reached only when the index is missing or INVALID (done_check): drop a
            # leftover of a failed or killed build first.
            compose("DROP INDEX CONCURRENTLY IF EXISTS {}", idx),
            shape.create(name, qname, unique=unique),
        ),
        lock=Lock.SHARE_UPDATE_EXCLUSIVE,
        transactional=False,
        done_check=index_ready_check(qname, name, unique),
        inverse=(compose("DROP INDEX CONCURRENTLY IF EXISTS {}", idx),),
        inverse_transactional=False,
        inverse_lock=Lock.SHARE_UPDATE_EXCLUSIVE,
        estimate=_index_estimate(table),
        why=why,
    )


def _index_steps(ctx: PlanContext, entry: TenantTable, name: str, shape: IndexShape,
                 why: str, unique: bool = False) -> list[Step]:
    table = entry.table
    if not table.is_partitioned:
        return [_create_step(table, entry.qname, name, shape, why, unique=unique)]
    idx = sql.Identifier(entry.qname.schema, name)
    steps = [Step(
        id=f"create_index:{entry.qname}:{name}",
        stage="index",
        kind="create_index_on_only",
        table=entry.qname,
        description=f"{name} ON ONLY the partitioned parent (invalid until every partition "
                    "is attached)",
        statements=(shape.create(name, entry.qname, unique=unique, concurrently=False,
                                 only=True),),
        lock=Lock.SHARE,
        done_check=relation_exists_sql(entry.qname.schema, name),
        inverse=(compose("DROP INDEX IF EXISTS {}", idx),),
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        estimate=Estimate(seconds=0.01),
        why=why + "; the parent index only records the definition: no data is read",
    )]
    for part in table.partitions:
        part_name = partition_index_name(part, name)
        part_idx = sql.Identifier(part.schema, part_name)
        steps.append(_create_step(
            ctx.catalog.tables.get(part), part, part_name, shape, why, unique=unique,
            description=f"CREATE INDEX CONCURRENTLY {part_name} on partition {part}"))
        steps.append(Step(
            id=f"attach_index:{part}:{part_name}",
            stage="index",
            kind="attach_index",
            table=part,
            description=f"ATTACH {part_name} to {name}",
            statements=(compose("ALTER INDEX {} ATTACH PARTITION {}", idx, part_idx),),
            # ACCESS SHARE on the partition itself, but ACCESS EXCLUSIVE on the partition's
            # index: every query that plans against the partition (directly or through the
            # parent) opens that index and waits. Brief, but it must queue like one.
            lock=Lock.ACCESS_EXCLUSIVE,
            done_check=_attached_check(part, part_name, name),
            # An attached index cannot be detached nor dropped concurrently: undoing an
            # attach drops the parent index, and with it every attached partition index.
            # Partition indexes not attached yet are dropped concurrently by their own
            # inverse, which runs first.
            inverse=(compose("DROP INDEX IF EXISTS {}", idx),),
            inverse_lock=Lock.ACCESS_EXCLUSIVE,
            estimate=Estimate(seconds=0.01),
        ))
    return steps


def partition_index_name(part: QualifiedName, parent_index: str) -> str:
    return object_name("", part, f"_{parent_index[:20]}")


def _attached_check(part: QualifiedName, part_name: str, parent_name: str) -> sql.Composed:
    return exists_sql(compose(
        "SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname = {} AND n.nspname = {} AND p.relname = {}",
        sql.Literal(part_name), sql.Literal(part.schema), sql.Literal(parent_name)))


def _drop_index_step(entry: TenantTable, old_name: str, old_shape: IndexShape, *,
                     unique: bool, why: str, risks: tuple[str, ...] = ()) -> Step:
    """Drop ``old_name`` concurrently; the inverse builds it again, concurrently."""
    idx = sql.Identifier(entry.qname.schema, old_name)
    return Step(
        id=f"drop_index:{entry.qname}:{old_name}",
        stage="index",
        kind="drop_index",
        table=entry.qname,
        description=f"DROP INDEX CONCURRENTLY {old_name}",
        statements=(compose("DROP INDEX CONCURRENTLY IF EXISTS {}", idx),),
        lock=Lock.SHARE_UPDATE_EXCLUSIVE,
        transactional=False,
        done_check=_not(relation_exists_sql(entry.qname.schema, old_name)),
        inverse=(compose("DROP INDEX CONCURRENTLY IF EXISTS {}", idx),
                 old_shape.create(old_name, entry.qname, unique=unique)),
        inverse_transactional=False,
        inverse_lock=Lock.SHARE_UPDATE_EXCLUSIVE,
        estimate=Estimate(seconds=0.01),
        why=why,
        risks=risks,
    )


def _twin_steps(ctx: PlanContext, entry: TenantTable, notes: list[str]) -> list[Step]:
    steps: list[Step] = []
    drop = entry.plan.drop_replaced_indexes
    if drop and entry.table.is_partitioned:
        notes.append(f"{entry.qname}: drop_replaced_indexes does not apply to a partitioned "
                     "table (its indexes cannot be dropped concurrently)")
    planned: set[str] = set()
    for idx, reason in twin_candidates(ctx, entry):
        shape = shape_of(idx)
        if shape is None:
            notes.append(f"{entry.qname}: cannot read the definition of {idx.name}: no twin")
            continue
        name = twin_name(entry.qname, idx.name)
        planned.add(name)
        steps.extend(_index_steps(ctx, entry, name, shape.leading(entry.column),
                                  f"tenant-leading twin of {reason}"))
        if drop and not entry.table.is_partitioned:
            steps.append(_drop_index_step(
                entry, idx.name, shape, unique=False,
                why=f"drop_replaced_indexes: {name} serves its tenant-filtered queries",
                risks=(f"queries that do not filter by tenant (admin tools, cross-tenant "
                       f"reports) lose {idx.name}",)))
    # Twins whose original this stage dropped: found again by name, so that a rerun skips
    # them and a rollback builds the original back.
    existing = {i.name for i in entry.table.indexes}
    other = {tenant_index_name(entry), *(extra_index_name(entry, cols)
                                         for cols in entry.plan.extra_indexes)}
    for idx in entry.table.indexes:
        old = _replaced_name(entry.qname, idx.name, INDEX_SUFFIX)
        if (idx.name in planned or idx.name in other or old is None or old in existing
                or idx.parent_index or idx.columns[:1] != (entry.column,)):
            continue
        shape = shape_of(idx)
        if shape is None or not shape.keys:
            continue
        steps.extend(_index_steps(ctx, entry, idx.name, shape,
                                  f"tenant-leading twin of {old} (dropped since)"))
        if drop and not entry.table.is_partitioned:
            steps.append(_drop_index_step(
                entry, old, shape.without_leading(), unique=False,
                why=f"drop_replaced_indexes: {idx.name} serves its tenant-filtered queries"))
    return steps


def _check_columns(entry: TenantTable, columns: tuple[str, ...], where: str) -> None:
    import difflib

    for col in columns:
        if entry.table.column(col) is None:
            hint = difflib.get_close_matches(col, entry.table.column_names, n=3, cutoff=0.5)
            raise PlaybookError(f"tables.{entry.qname}.{where}: table {entry.qname} has no "
                                f"column {col!r}"
                                + (f" (did you mean {', '.join(hint)}?)" if hint else ""))


def _unique_steps(ctx: PlanContext, entry: TenantTable, wanted: tuple[str, ...],
                  notes: list[str]) -> list[Step]:
    """``tenant_unique``: the global unique on ``wanted`` becomes tenant-scoped."""
    cols = tuple(c for c in wanted if c != entry.column)
    where = "tenant_unique"
    if not cols:
        raise PlaybookError(f"tables.{entry.qname}.{where}: name the columns that must be "
                            f"unique within a tenant, e.g. [email]")
    _check_columns(entry, cols, where)
    table = entry.table
    if table.is_partitioned:
        raise PlaybookError(f"tables.{entry.qname}.{where}: not supported on a partitioned "
                            "table (a unique index there must include the partition key, and "
                            "ADD CONSTRAINT ... USING INDEX is refused)")
    if table.primary_key is not None and set(table.primary_key) == set(cols):
        raise PlaybookError(f"tables.{entry.qname}.{where}: ({', '.join(cols)}) is the "
                            "primary key; a tenant-scoped primary key is not supported")
    tenant_cols = (entry.column, *cols)
    risks: tuple[str, ...] = ()
    column = table.column(entry.column)
    if column is not None and not column.not_null:
        risks = (f"{entry.column} is nullable here: rows without a tenant are not checked "
                 "against each other",)
    ident = entry.ident
    by_name = {i.name: i for i in table.indexes}

    def same(columns: tuple[str | None, ...]) -> bool:
        return len(columns) == len(cols) and set(columns) == set(cols)

    old_con = next((c for c in table.constraints
                    if c.kind == "u" and same(c.columns) and not is_ours(c.name)), None)
    old_idx = next((i for i in table.indexes
                    if i.is_unique and not i.is_primary and i.is_valid and same(i.columns)
                    and i.predicate is None and not is_ours(i.name)
                    and not any(c.index_name == i.name for c in table.constraints)), None)
    ours_con = next((c for c in table.constraints
                     if c.kind == "u" and c.columns == tenant_cols
                     and c.name.endswith(TENANT_UNIQUE_SUFFIX)), None)
    ours_idx = next((i for i in table.indexes
                     if i.is_unique and i.columns == tenant_cols
                     and i.name.endswith(TENANT_UNIQUE_SUFFIX)
                     and not any(c.index_name == i.name for c in table.constraints)), None)

    if old_con is not None or (old_con is None and old_idx is None and ours_con is not None):
        # A UNIQUE constraint: swap it for the tenant-scoped one.
        if old_con is not None:
            old_name = old_con.name
            index = by_name.get(old_con.index_name or "")
            old_shape = shape_of(index) if index is not None else None
            deferrable = old_con.definition
        else:
            assert ours_con is not None
            replaced = _replaced_name(entry.qname, ours_con.name, TENANT_UNIQUE_SUFFIX)
            index = by_name.get(ours_con.index_name or "")
            ours_shape = shape_of(index) if index is not None else None
            if replaced is None or ours_shape is None:
                notes.append(f"{entry.qname}: {ours_con.name} is tenant-scoped already; the "
                             "global unique it replaced cannot be read back from its name, so "
                             "a rollback keeps it tenant-scoped")
                return []
            old_name, old_shape, deferrable = replaced, ours_shape.without_leading(), \
                ours_con.definition
        if old_shape is None:
            notes.append(f"{entry.qname}: cannot read the index of {old_name}: left global")
            return []
        new = object_name("", QualifiedName(entry.qname.schema, old_name), TENANT_UNIQUE_SUFFIX)
        new_ident, old_ident = sql.Identifier(new), sql.Identifier(old_name)
        timing = _deferrable_sql(deferrable)
        lock_ms = ctx.playbook.options.lock_timeout
        old_exists = constraint_exists_check(entry.qname, old_name)
        drop_invalid = _do(compose(
            "IF EXISTS (SELECT 1 FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
            " WHERE x.indrelid = {t} AND c.relname = {n} AND NOT x.indisvalid)"
            " THEN DROP INDEX {i}; END IF;",
            t=regclass_literal(entry.qname), n=sql.Literal(old_name),
            i=sql.Identifier(entry.qname.schema, old_name)))
        swap_back = _do(compose(
            "IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {t} AND conname = {n})"
            " THEN ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {new}, ADD CONSTRAINT {old}"
            " UNIQUE USING INDEX {old}{timing}; END IF;",
            t=regclass_literal(entry.qname), n=sql.Literal(old_name), table=ident,
            new=new_ident, old=old_ident, timing=timing))
        return [
            _create_step(table, entry.qname, new, old_shape.leading(entry.column),
                         f"tenant_unique: {old_name} ({', '.join(cols)}) is global: an insert "
                         "reveals that another tenant already has the value", unique=True),
            Step(
                id=f"swap_unique:{entry.qname}:{new}",
                stage="index",
                kind="swap_unique",
                table=entry.qname,
                description=f"swap {old_name} for {new} UNIQUE ({', '.join(tenant_cols)}) in "
                            "one short transaction",
                statements=(compose(
                    "ALTER TABLE {} DROP CONSTRAINT {}, ADD CONSTRAINT {} UNIQUE USING INDEX "
                    "{}{}", ident, old_ident, new_ident, new_ident, timing),),
                lock=Lock.ACCESS_EXCLUSIVE,
                done_check=_both(constraint_exists_check(entry.qname, new), _not(old_exists)),
                # Back: build the global index again concurrently (no lock_timeout: a build
                # waits for older transactions and blocks no query meanwhile), then swap
                # under lock_timeout. Each part is skipped when already done, so a retry or
                # a rerun after a kill converges.
                inverse=(_set_lock_timeout(lock_ms), drop_invalid, _set_lock_timeout(0),
                         old_shape.create(old_name, entry.qname, unique=True),
                         _set_lock_timeout(lock_ms), swap_back),
                inverse_transactional=False,
                inverse_lock=Lock.ACCESS_EXCLUSIVE,
                estimate=Estimate(seconds=0.01),
                why="the unique index is built already: the swap only changes the catalog",
                risks=risks + (f"a rollback builds the global {old_name} again: it fails if "
                               "two tenants have the same value by then",),
            ),
        ]
    if old_idx is not None or ours_idx is not None:
        # A unique index without a constraint (Rails' add_index unique: true).
        if old_idx is not None:
            old_name, old_shape = old_idx.name, shape_of(old_idx)
        else:
            assert ours_idx is not None
            replaced = _replaced_name(entry.qname, ours_idx.name, TENANT_UNIQUE_SUFFIX)
            ours_shape = shape_of(ours_idx)
            if replaced is None or ours_shape is None:
                return [_create_step(table, entry.qname, ours_idx.name,
                                     ours_shape or IndexShape.of_columns(tenant_cols),
                                     "tenant_unique", unique=True)]
            old_name, old_shape = replaced, ours_shape.without_leading()
        if old_shape is None:
            notes.append(f"{entry.qname}: cannot read the definition of {old_name}: left global")
            return []
        new = object_name("", QualifiedName(entry.qname.schema, old_name), TENANT_UNIQUE_SUFFIX)
        return [
            _create_step(table, entry.qname, new, old_shape.leading(entry.column),
                         f"tenant_unique: {old_name} ({', '.join(cols)}) is global",
                         unique=True),
            _drop_index_step(entry, old_name, old_shape, unique=True,
                             why=f"{new} enforces uniqueness within each tenant now",
                             risks=risks + (f"a rollback builds the global {old_name} again: "
                                            "it fails if two tenants have the same value by "
                                            "then",)),
        ]
    # Nothing global to replace: a new tenant-scoped unique constraint.
    return _key_steps(entry, tenant_cols, "tenant_unique: unique within each tenant",
                      risks=risks + ("the build fails if a tenant already has duplicates",))


def _deferrable_sql(definition: str) -> sql.SQL:
    if "INITIALLY DEFERRED" in definition:
        return sql.SQL(" DEFERRABLE INITIALLY DEFERRED")
    if "DEFERRABLE" in definition and "NOT DEFERRABLE" not in definition:
        return sql.SQL(" DEFERRABLE")
    return sql.SQL("")


def key_name(entry: TenantTable, columns: tuple[str, ...]) -> str:
    return object_name("", entry.qname, "_" + "_".join(columns) + KEY_SUFFIX)


def _add_key_step(entry: TenantTable, name: str, columns: tuple[str, ...], why: str,
                  risks: tuple[str, ...] = ()) -> Step:
    ident = sql.Identifier(name)
    return Step(
        id=f"tenant_key:{entry.qname}:{name}",
        stage="index",
        kind="add_unique_constraint",
        table=entry.qname,
        description=f"UNIQUE ({', '.join(columns)}) USING INDEX {name} (built already: a "
                    "catalog change)",
        statements=(compose("ALTER TABLE {} ADD CONSTRAINT {} UNIQUE USING INDEX {}",
                            entry.ident, ident, ident),),
        lock=Lock.ACCESS_EXCLUSIVE,
        done_check=constraint_exists_check(entry.qname, name),
        inverse=(compose("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}", entry.ident, ident),),
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        estimate=Estimate(seconds=0.01),
        why=why,
        risks=risks,
    )


def _key_steps(entry: TenantTable, columns: tuple[str, ...], why: str,
               risks: tuple[str, ...] = ()) -> list[Step]:
    name = key_name(entry, columns)
    return [_create_step(entry.table, entry.qname, name, IndexShape.of_columns(columns),
                         why, unique=True),
            _add_key_step(entry, name, columns, why, risks)]


# --------------------------------------------------------------------------- foreign keys


@dataclasses.dataclass(frozen=True)
class TenantForeignKey:
    child: TenantTable
    fk: ForeignKey
    parent: TenantTable

    @property
    def key(self) -> tuple[str, ...]:
        """The parent's columns the composite key references."""
        return (self.parent.column, *self.fk.ref_columns)

    @property
    def name(self) -> str:
        return object_name("", QualifiedName(self.child.qname.schema, self.fk.name),
                           TENANT_UNIQUE_SUFFIX)


def tenant_foreign_keys(ctx: PlanContext, notes: list[str]) -> list[TenantForeignKey]:
    """Foreign keys between two tenant tables (not to the root: the tenant column is that
    one) that can carry the tenant too."""
    out: list[TenantForeignKey] = []
    for child in ctx.tenant_tables:
        for fk in child.table.foreign_keys:
            parent = ctx.tenant_table(fk.ref_table)
            if parent is None or parent.strategy == "root" or "_rlsm_" in fk.name:
                continue
            if child.column in fk.columns or parent.column in fk.ref_columns:
                continue
            if parent.table.is_partitioned:
                notes.append(f"{child.qname}: {fk.name} references the partitioned "
                             f"{parent.qname}: no tenant-consistent key (a unique key there "
                             "must include the partition key)")
                continue
            if child.table.is_partitioned and ctx.catalog.major < 18:
                notes.append(f"{child.qname}: PostgreSQL {ctx.catalog.major} cannot add a NOT "
                             f"VALID foreign key on a partitioned table: {fk.name} stays as is")
                continue
            out.append(TenantForeignKey(child, fk, parent))
    return out


def _fk_steps(fks: list[TenantForeignKey]) -> list[Step]:
    adds: list[Step] = []
    validates: list[Step] = []
    for tfk in fks:
        child, fk, parent = tfk.child, tfk.fk, tfk.parent
        name = sql.Identifier(tfk.name)
        local = (child.column, *fk.columns)
        adds.append(Step(
            id=f"tenant_fk:{child.qname}:{tfk.name}",
            stage="index",
            kind="add_foreign_key",
            table=child.qname,
            description=f"foreign key ({', '.join(local)}) -> {parent.qname} "
                        f"({', '.join(tfk.key)}), NOT VALID",
            statements=(compose(
                "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}){} "
                "NOT VALID", child.ident, name, columns_sql(local), parent.ident,
                columns_sql(tfk.key), _deferrable_sql(fk.definition)),),
            # SHARE ROW EXCLUSIVE on the child and on the parent: writes to both wait, for
            # milliseconds (no scan: NOT VALID).
            lock=Lock.SHARE_ROW_EXCLUSIVE,
            done_check=constraint_exists_check(child.qname, tfk.name),
            inverse=(compose("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}", child.ident, name),),
            inverse_lock=Lock.ACCESS_EXCLUSIVE,
            estimate=Estimate(seconds=0.01),
            why=f"{fk.name} lets a row point at another tenant's {parent.qname} row; with the "
                "tenant in the key the database refuses that (the original key stays)",
        ))
        validates.append(Step(
            id=f"validate_tenant_fk:{child.qname}:{tfk.name}",
            stage="index",
            kind="validate_constraint",
            table=child.qname,
            description=f"VALIDATE {tfk.name}: one scan, reads and writes go on",
            statements=(compose("ALTER TABLE {} VALIDATE CONSTRAINT {}", child.ident, name),),
            lock=Lock.SHARE_UPDATE_EXCLUSIVE,
            # A statement of its own, outside a step transaction: the scan then runs under
            # options.statement_timeout (none by default) like a concurrent build, not under
            # the few seconds allowed to DDL; its locks block no read or write meanwhile.
            transactional=False,
            done_check=constraint_exists_check(child.qname, tfk.name, validated=True),
            estimate=rows_estimate(child.table),
            risks=("fails, naming a row, where existing data already crosses tenants",),
        ))
    return adds + validates


# --------------------------------------------------------------------------- the stage


def plan(ctx: PlanContext) -> StagePlan:
    steps: list[Step] = []
    notes: list[str] = []
    fks = tenant_foreign_keys(ctx, notes) if ctx.playbook.options.index.tenant_foreign_keys \
        else []
    keys: dict[QualifiedName, set[tuple[str, ...]]] = {}
    for tfk in fks:
        keys.setdefault(tfk.parent.qname, set()).add(tfk.key)
    key_steps: list[Step] = []
    for entry in ctx.tenant_tables:
        _report_invalid(ctx, entry, notes)
        columns, why = tenant_index_columns(ctx, entry)
        wanted_keys = set(keys.get(entry.qname, ()))
        # A user's unique constraint on the key serves the foreign keys as it is.
        wanted_keys -= {c.columns for c in entry.table.constraints
                        if c.kind in ("u", "p") and not is_ours(c.name)}
        existing = [i for i in entry.table.indexes
                    if i.columns[: len(columns)] == columns and i.is_valid
                    and not is_ours(i.name)]
        if existing and entry.strategy != "root":
            notes.append(f"{entry.qname}: {existing[0].name} already leads with "
                         f"({', '.join(columns)})")
        elif entry.strategy != "root":
            name = tenant_index_name(entry)
            unique = columns in wanted_keys
            if unique:
                wanted_keys.discard(columns)
                why += "; unique, as the key tenant-consistent foreign keys reference"
                key_steps.append(_add_key_step(entry, name, columns, why))
            steps.extend(_index_steps(ctx, entry, name, IndexShape.of_columns(columns), why,
                                      unique=unique))
        for key in sorted(wanted_keys):
            built = _key_steps(entry, key, "the key tenant-consistent foreign keys reference")
            steps.append(built[0])
            key_steps.extend(built[1:])
        if entry.strategy != "root":
            steps.extend(_twin_steps(ctx, entry, notes))
        for extra in entry.plan.extra_indexes:
            cols = tuple(c for c in extra if c != entry.column)
            _check_columns(entry, cols, "extra_indexes")
            steps.extend(_index_steps(ctx, entry, extra_index_name(entry, extra),
                                      IndexShape.of_columns((entry.column, *cols)),
                                      "asked for in the playbook"))
        for wanted in entry.plan.tenant_unique:
            steps.extend(_unique_steps(ctx, entry, wanted, notes))
        unknown = set(entry.plan.skip_indexes) - {i.name for i in entry.table.indexes}
        if unknown:
            notes.append(f"{entry.qname}: skip_indexes names no index: "
                         f"{', '.join(sorted(unknown))}")
    steps.extend(key_steps)
    steps.extend(_fk_steps(fks))
    return StagePlan("index", tuple(_unique_ids(steps)), tuple(notes))


def _report_invalid(ctx: PlanContext, entry: TenantTable, notes: list[str]) -> None:
    tables = [entry.table, *(t for p in entry.table.partitions
                             if (t := ctx.catalog.tables.get(p)) is not None)]
    parents = {tenant_index_name(entry), *(i.name for i in entry.table.indexes if is_ours(i.name))}
    for table in tables:
        ours = {partition_index_name(table.qname, n) for n in parents}
        for idx in table.indexes:
            if idx.is_valid:
                continue
            if table.is_partitioned:
                notes.append(f"{table.qname}: {idx.name} is not valid yet: some partitions "
                             "have no attached index (the stage builds and attaches them)")
            elif is_ours(idx.name) or idx.name in ours:
                notes.append(f"{table.qname}: {idx.name} is INVALID (a failed or killed "
                             "build): it is dropped concurrently and built again")
            else:
                notes.append(f"{table.qname}: {idx.name} is INVALID and not ours (a failed "
                             "CREATE INDEX CONCURRENTLY?): it serves no query but slows every "
                             f"write; DROP INDEX CONCURRENTLY {idx.name} and build it again")


def _unique_ids(steps: list[Step]) -> list[Step]:
    """The same object asked for twice (a tenant_unique that is also a foreign-key key) is
    built once."""
    seen: set[str] = set()
    out = []
    for step in steps:
        if step.id not in seen:
            seen.add(step.id)
            out.append(step)
    return out


# --------------------------------------------------------------------------- running


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
    started = _now()
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
