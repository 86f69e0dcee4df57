"""Tenant-leading primary keys (``options.index.tenant_primary_keys``), planned with the index
stage: what Citus needs from every distributed table, done online.

For each tenant table whose primary key lacks the tenant column, in this order across tables:

1. ``CREATE UNIQUE INDEX CONCURRENTLY <pk>_rlsm_tenant ON t (tenant, <pk columns>)``;
2. every foreign key between tenant tables that references that key gets its composite twin
   ``(tenant, parent_id) -> parent (tenant, id)`` with the same ON DELETE/ON UPDATE actions
   (``SET NULL`` limited to the key column: the tenant stays), added ``NOT VALID``
   (milliseconds) and then validated (one scan, reads and writes go on);
3. the original single-column foreign key is dropped (ACCESS EXCLUSIVE on child and parent,
   milliseconds, under lock_timeout): the validated composite key already guarantees what it
   did;
4. one short transaction swaps the primary key: ``DROP CONSTRAINT <pk>, ADD CONSTRAINT
   <pk>_rlsm_tenant PRIMARY KEY USING INDEX <pk>_rlsm_tenant`` (the index is built: a catalog
   change).

Rollback, per table, undoes 4 first: the old key's index is built again concurrently, the
original foreign keys are added back (NOT VALID, validated), the composite ones into the table
dropped, and the key swapped back in one short transaction; then 3..1 have nothing left to do.

The plan is the same before and after the stage ran (rollback re-plans from the live catalog):
a swapped key and a composite foreign key whose original is gone are read back by name
(``<name>_rlsm_tenant``).

Sync triggers (``options.index.sync_triggers``): ``watch`` adds a trigger that counts, per
table, the rows that arrive without the tenant (the sync trigger had to fill them);
``drop`` drops the sync trigger once that count proves the application writes the tenant
itself (refused, with the count, otherwise). Citus refuses triggers on distributed tables.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from psycopg import sql

from rls_migrate.catalog import Constraint, ForeignKey, QualifiedName, Table, quote_ident
from rls_migrate.errors import PlaybookError
from rls_migrate.sqlcompose import compose, identifier
from rls_migrate.stages import tenant_key_shapes as shapes
from rls_migrate.stages.common import (
    ESTIMATED_INDEX_BYTES_PER_S,
    PlanContext,
    TenantTable,
    columns_sql,
    constraint_exists_check,
    regclass_literal,
    rows_estimate,
)
from rls_migrate.stages.sync_retire import sync_steps
from rls_migrate.steps import Estimate, Lock, StagePlan, Step

SUFFIX = shapes.TENANT_SUFFIX
tenant_name = shapes.tenant_name
replaced_name = shapes.replaced_name

_TAIL = re.compile(
    r"((?: MATCH (?:FULL|SIMPLE|PARTIAL)| ON (?:UPDATE|DELETE) (?:NO ACTION|RESTRICT|CASCADE|"
    r"SET NULL|SET DEFAULT)(?: \([^()]*\))?| DEFERRABLE| NOT DEFERRABLE| INITIALLY DEFERRED|"
    r"INITIALLY IMMEDIATE| NOT VALID| NOT ENFORCED| ENFORCED)*)$")
_SET_ACTION = re.compile(r" ON (UPDATE|DELETE) (SET NULL|SET DEFAULT)(?: \(([^()]*)\))?")


# --------------------------------------------------------------------------- what to do


@dataclasses.dataclass(frozen=True)
class KeySwap:
    """A primary key to swap for a tenant-leading one. ``partitions``: a partitioned table's
    (partition, original key name); ``added``: the table had no primary key, ``old_name``
    and ``old_columns`` are the NOT NULL unique key it is built from (see
    :mod:`.tenant_key_shapes`)."""

    entry: TenantTable
    old_name: str
    old_columns: tuple[str, ...]
    swapped: bool
    partitions: tuple[tuple[QualifiedName, str], ...] = ()
    added: bool = False

    @property
    def new_name(self) -> str:
        if self.added:
            return shapes.added_name(self.entry.qname)
        return tenant_name(self.entry.qname, self.old_name)

    @property
    def new_columns(self) -> tuple[str, ...]:
        return (self.entry.column, *self.old_columns)


@dataclasses.dataclass(frozen=True)
class Repoint:
    """A foreign key between tenant tables that references a swapped key: the original
    (live, or read back from its composite twin) and the twin."""

    child: TenantTable
    parent: KeySwap
    name: str
    columns: tuple[str, ...]
    ref_columns: tuple[str, ...]
    tail: str  # actions and deferrability of the original, as the server prints them
    composite_tail: str

    @property
    def composite_name(self) -> str:
        return tenant_name(self.child.qname, self.name)

    @property
    def composite_columns(self) -> tuple[str, ...]:
        return (self.child.column, *self.columns)

    @property
    def composite_ref_columns(self) -> tuple[str, ...]:
        return (self.parent.entry.column, *self.ref_columns)


def fk_tail(definition: str) -> str:
    match = _TAIL.search(definition)
    return match.group(1).replace(" NOT VALID", "") if match else ""


def composite_tail(tail: str, columns: tuple[str, ...], major: int) -> tuple[str | None, str]:
    """The original's actions for the composite key, or (None, why not)."""
    out = tail
    if " MATCH FULL" in out:
        if len(columns) > 1:
            return None, "MATCH FULL over several columns would also demand the tenant be " \
                         "NULL with them"
        out = out.replace(" MATCH FULL", "")  # one column: the same as MATCH SIMPLE
    for m in _SET_ACTION.finditer(tail):
        event, action, listed = m.groups()
        if listed is not None:
            continue  # already limited to some of the key's columns: the tenant stays
        if event == "UPDATE":
            return None, f"ON UPDATE {action} would also reset the tenant column"
        if major < 15:
            return None, (f"ON DELETE {action} would also reset the tenant column, and "
                          f"PostgreSQL {major} cannot limit it to the key's columns (15+)")
        cols = ", ".join(quote_ident(c) for c in columns)  # as the server prints them
        out = out.replace(m.group(0), f" ON DELETE {action} ({cols})", 1)
    return out, ""


def original_tail(tail: str, columns: tuple[str, ...]) -> str:
    """The composite twin's actions for the original key (a column list naming every key
    column is the same as none)."""
    full = ", ".join(quote_ident(c) for c in columns)
    out = tail
    for m in _SET_ACTION.finditer(tail):
        event, action, listed = m.groups()
        if listed is not None and listed == full:
            out = out.replace(m.group(0), f" ON {event} {action}", 1)
    return out


def plan_keys(ctx: PlanContext, notes: list[str]) -> tuple[list[KeySwap], list[Repoint]]:
    swaps: dict[QualifiedName, KeySwap] = {}
    for entry in ctx.tenant_tables:
        swap = _key_swap(entry, dict(ctx.catalog.tables), notes)
        if swap is not None:
            swaps[entry.qname] = swap
    repoints: list[Repoint] = []
    blocked: dict[QualifiedName, str] = {}
    for child in ctx.tenant_tables:
        fks = {fk.name: fk for fk in child.table.foreign_keys}
        for fk in child.table.foreign_keys:
            parent = ctx.tenant_table(fk.ref_table)
            swap = swaps.get(fk.ref_table) if parent is not None else None
            if swap is None:
                continue
            original = _original_of(child, fk, swap, fks)
            if original is None:
                continue
            name, columns, ref_columns, tail = original
            if child.column in columns:
                continue
            if set(ref_columns) != set(swap.old_columns) or swap.added:
                continue  # references another unique key: not in the way of the swap
            if swap.partitions:
                blocked[fk.ref_table] = (
                    f"{child.qname}.{name} references it, and a partitioned table's new key "
                    f"exists only once swapped: drop {name}, apply the index stage, then add "
                    f"it back as ({child.column}, {', '.join(columns)}) -> ({swap.entry.column}, "
                    f"{', '.join(ref_columns)}) NOT VALID and VALIDATE it")
                continue
            why = ""
            if child.table.is_partitioned and ctx.catalog.major < 18:
                why = (f"PostgreSQL {ctx.catalog.major} cannot add a NOT VALID foreign key on "
                       f"the partitioned {child.qname}")
            composite, reason = composite_tail(tail, columns, ctx.catalog.major)
            twin = fks.get(tenant_name(child.qname, name))
            if (composite is not None and twin is not None and name in fks
                    and fk_tail(twin.definition) != composite):
                # tenant_foreign_keys made it, without the original's actions: dropping the
                # original would lose them.
                why = (f"{twin.name} exists without {name}'s actions ({tail.strip() or 'none'}):"
                       f" roll the index stage back (it drops {twin.name}), then apply it again")
            if composite is None or why:
                blocked[fk.ref_table] = f"{child.qname}.{name}: {why or reason}"
                continue
            repoints.append(Repoint(child, swap, name, columns, ref_columns, tail, composite))
    # Keys that something else still references cannot be swapped: the old key's index
    # carries that reference.
    into: dict[QualifiedName, list[ForeignKey]] = {}
    for table in ctx.catalog.tables.values():  # once, not once per key (1,000 tables)
        for fk in table.foreign_keys:
            if fk.ref_table in swaps and ctx.tenant_table(fk.table) is None:
                into.setdefault(fk.ref_table, []).append(fk)
    for qname, swap in list(swaps.items()):
        if swap.swapped or swap.added:
            continue
        outside = [f"{fk.table}.{fk.name}" for fk in into.get(qname, ())
                   if set(fk.ref_columns) == set(swap.old_columns)]
        if outside:
            blocked[qname] = (f"referenced from outside the tenant tables by "
                              f"{', '.join(outside)}")
    for qname, why in sorted(blocked.items()):
        if qname in swaps and not swaps[qname].swapped:
            notes.append(f"{qname}: primary key left as it is: {why}")
            del swaps[qname]
    repoints = [r for r in repoints if r.parent.entry.qname in swaps]
    return list(swaps.values()), repoints


def _key_swap(entry: TenantTable, tables: dict[QualifiedName, Table], notes: list[str]
              ) -> KeySwap | None:
    if entry.strategy == "root":
        return None
    table = entry.table
    con: Constraint | None = next((c for c in table.constraints if c.kind == "p"), None)
    if con is None or con.name == shapes.added_name(entry.qname):
        return _added_key(entry, con, notes)
    swapped = entry.column in con.columns
    if swapped:
        old = replaced_name(entry.qname, con.name)
        if old is None or con.columns[:1] != (entry.column,) or len(con.columns) < 2:
            return None  # the user's own key holds the tenant already
    elif "DEFERRABLE" in con.definition and "NOT DEFERRABLE" not in con.definition:
        notes.append(f"{entry.qname}: {con.name} is DEFERRABLE: left as it is")
        return None
    parts: list[tuple[QualifiedName, str]] = []
    if table.is_partitioned:
        parts, why = shapes.partition_keys(table, tables, swapped=swapped)
        if why:
            notes.append(f"{entry.qname}: primary key left as it is: {why} (blocker: recreate "
                         f"it as ({entry.column}, {', '.join(con.columns)}) by hand)")
            return None
    if swapped:
        return KeySwap(entry, old or "", tuple(con.columns[1:]), swapped=True,
                       partitions=tuple(parts))
    return KeySwap(entry, con.name, tuple(con.columns), swapped=False, partitions=tuple(parts))


def _added_key(entry: TenantTable, con: Constraint | None, notes: list[str]) -> KeySwap | None:
    """A table without a primary key (or with the one this stage added)."""
    found = shapes.unique_key_for(entry.table)
    if con is not None and con.columns[:1] == (entry.column,) and len(con.columns) > 1:
        return KeySwap(entry, found[0] if found else "", tuple(con.columns[1:]),
                       swapped=True, added=True)
    if entry.table.is_partitioned or found is None:
        what = ("a partitioned table without a primary key" if entry.table.is_partitioned
                else "no primary key and no NOT NULL unique key to build one from")
        notes.append(f"{entry.qname}: primary key not added: {what} (blocker: add a NOT NULL "
                     f"unique key, e.g. an identity column id with UNIQUE (id), and apply the "
                     f"index stage again; it adds PRIMARY KEY ({entry.column}, id))")
        return None
    return KeySwap(entry, found[0], found[1], swapped=False, added=True)


def _original_of(child: TenantTable, fk: ForeignKey, swap: KeySwap,
                 fks: dict[str, ForeignKey]
                 ) -> tuple[str, tuple[str, ...], tuple[str, ...], str] | None:
    """(name, columns, ref columns, tail) of the original key ``fk`` is or stands for."""
    if "_rlsm_" not in fk.name:
        return fk.name, tuple(fk.columns), tuple(fk.ref_columns), fk_tail(fk.definition)
    old = replaced_name(child.qname, fk.name)
    if (old is None or old in fks or fk.columns[:1] != (child.column,)
            or fk.ref_columns[:1] != (swap.entry.column,)):
        return None  # not ours, or the original is still there (planned from it)
    columns = tuple(fk.columns[1:])
    return old, columns, tuple(fk.ref_columns[1:]), original_tail(fk_tail(fk.definition),
                                                                   columns)


# --------------------------------------------------------------------------- steps


_set_lock_timeout = shapes.set_lock_timeout
_do = shapes.do_block
_index_ready = shapes.index_ready
_drop_invalid = shapes.drop_invalid


def _add_fk_sql(child: TenantTable, name: str, columns: tuple[str, ...], parent: TenantTable,
                ref_columns: tuple[str, ...], tail: str) -> sql.Composed:
    # ``tail`` is the server's own text (pg_get_constraintdef), like format_type elsewhere.
    return compose("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}){} "
                   "NOT VALID", child.ident, identifier(name), columns_sql(columns),
                   parent.ident, columns_sql(ref_columns), sql.SQL(tail))


def _add_fk(child: TenantTable, name: str, columns: tuple[str, ...], parent: TenantTable,
            ref_columns: tuple[str, ...], tail: str) -> sql.Composed:
    """``ADD CONSTRAINT ... NOT VALID`` unless a constraint of that name exists."""
    return _do(compose(
        "IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {} AND conname = {})"
        " THEN {}; END IF;", regclass_literal(child.qname), sql.Literal(name),
        _add_fk_sql(child, name, columns, parent, ref_columns, tail)))


def _index_estimate(entry: TenantTable) -> Estimate:
    size = entry.table.size_bytes
    return Estimate(rows=entry.table.row_estimate, bytes=size // 3,
                    seconds=round(size / ESTIMATED_INDEX_BYTES_PER_S, 2))


def key_steps(ctx: PlanContext, notes: list[str]) -> list[Step]:
    swaps, repoints = plan_keys(ctx, notes)
    lock_ms = ctx.playbook.options.lock_timeout
    builds, adds, validates, drops, swaps_out = [], [], [], [], []
    for swap in swaps:
        entry = swap.entry
        if swap.partitions:
            builds += shapes.partition_builds(entry, list(swap.partitions), swap.new_columns,
                                              dict(ctx.catalog.tables))
            continue
        if swap.added:
            builds.append(shapes.added_build(entry, swap.old_columns))
            continue
        idx = identifier(entry.qname.schema, swap.new_name)
        builds.append(Step(
            id=f"create_index:{entry.qname}:{swap.new_name}",
            stage="index",
            kind="create_index",
            table=entry.qname,
            description=f"CREATE UNIQUE INDEX CONCURRENTLY {swap.new_name} "
                        f"({', '.join(swap.new_columns)}): the tenant-leading primary key, "
                        "built before the swap",
            statements=(compose("DROP INDEX CONCURRENTLY IF EXISTS {}", idx),
                        compose("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})",
                                identifier(swap.new_name), entry.ident,
                                columns_sql(swap.new_columns))),
            lock=Lock.SHARE_UPDATE_EXCLUSIVE,
            transactional=False,
            done_check=_index_ready(entry.qname, swap.new_name),
            inverse=(compose("DROP INDEX CONCURRENTLY IF EXISTS {}", idx),),
            inverse_transactional=False,
            inverse_lock=Lock.SHARE_UPDATE_EXCLUSIVE,
            estimate=_index_estimate(entry),
            why="Citus needs the distribution column in every primary key; the unique index "
                "is built without blocking writes, the swap later only changes the catalog",
        ))
    for rp in repoints:
        child, parent = rp.child, rp.parent.entry
        adds.append(Step(
            id=f"tenant_fk:{child.qname}:{rp.composite_name}",
            stage="index",
            kind="add_foreign_key",
            table=child.qname,
            description=f"foreign key ({', '.join(rp.composite_columns)}) -> {parent.qname} "
                        f"({', '.join(rp.composite_ref_columns)}){rp.composite_tail}, NOT VALID: "
                        f"replaces {rp.name}",
            statements=(_add_fk_sql(child, rp.composite_name, rp.composite_columns, parent,
                                    rp.composite_ref_columns, rp.composite_tail),),
            # SHARE ROW EXCLUSIVE on the child and on the parent, milliseconds (no scan).
            lock=Lock.SHARE_ROW_EXCLUSIVE,
            done_check=constraint_exists_check(child.qname, rp.composite_name),
            inverse=(compose("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}", child.ident,
                             identifier(rp.composite_name)),),
            inverse_lock=Lock.ACCESS_EXCLUSIVE,
            estimate=Estimate(seconds=0.01),
            why=f"Citus needs foreign keys between distributed tables to include the "
                f"distribution column; it keeps {rp.name}'s actions",
        ))
        validates.append(Step(
            id=f"validate_tenant_fk:{child.qname}:{rp.composite_name}",
            stage="index",
            kind="validate_constraint",
            table=child.qname,
            description=f"VALIDATE {rp.composite_name}: one scan, reads and writes go on",
            statements=(compose("ALTER TABLE {} VALIDATE CONSTRAINT {}", child.ident,
                                identifier(rp.composite_name)),),
            lock=Lock.SHARE_UPDATE_EXCLUSIVE,
            transactional=False,
            done_check=constraint_exists_check(child.qname, rp.composite_name, validated=True),
            estimate=rows_estimate(child.table),
            risks=("fails, naming a row, where existing data already crosses tenants",),
        ))
        drops.append(Step(
            id=f"drop_fk:{child.qname}:{rp.name}",
            stage="index",
            kind="drop_foreign_key",
            table=child.qname,
            description=f"DROP CONSTRAINT {rp.name}: the validated {rp.composite_name} "
                        "guarantees what it did",
            statements=(compose("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}", child.ident,
                                identifier(rp.name)),),
            # ACCESS EXCLUSIVE on the child and on the parent (their RI triggers go), for
            # milliseconds, under lock_timeout.
            lock=Lock.ACCESS_EXCLUSIVE,
            done_check=compose("SELECT NOT ({})", constraint_exists_check(child.qname, rp.name)),
            inverse=(_set_lock_timeout(lock_ms),
                     _add_fk(child, rp.name, rp.columns, parent, rp.ref_columns, rp.tail),
                     _set_lock_timeout(0),
                     compose("ALTER TABLE {} VALIDATE CONSTRAINT {}", child.ident,
                             identifier(rp.name))),
            inverse_transactional=False,
            inverse_lock=Lock.ACCESS_EXCLUSIVE,
            estimate=Estimate(seconds=0.01),
            why=f"Citus refuses {rp.name}: it does not include the distribution column",
        ))
    by_parent: dict[QualifiedName, list[Repoint]] = {}
    for rp in repoints:
        by_parent.setdefault(rp.parent.entry.qname, []).append(rp)
    for swap in swaps:
        if swap.partitions:
            swaps_out.append(shapes.partitioned_swap_step(
                swap.entry, swap.old_name, swap.old_columns, list(swap.partitions), lock_ms))
        elif swap.added:
            swaps_out.append(shapes.added_key_step(swap.entry, swap.old_name, swap.old_columns))
        else:
            swaps_out.append(_swap_step(ctx, swap, by_parent.get(swap.entry.qname, []),
                                        lock_ms))
    if swaps:
        notes.append("tenant_primary_keys: the primary key (tenant, id) serves what the "
                     "tenant index (tenant, id) does; with options.index.tenant_index: tenant "
                     "the stage builds the smaller (tenant) one")
        deadlock_ms = _setting_ms(ctx.catalog.settings.get("deadlock_timeout"))
        if repoints and deadlock_ms is not None and deadlock_ms <= lock_ms:
            notes.append(
                f"deadlock_timeout ({deadlock_ms:g} ms) is not above lock_timeout "
                f"({lock_ms:g} ms): dropping a foreign key locks the child and the parent, and "
                "an application statement that locks them in the other order can then be the "
                "deadlock's victim instead of the toolkit giving up first; keep lock_timeout "
                "below deadlock_timeout (default 1 s)")
    return builds + adds + validates + drops + swaps_out


def _swap_step(ctx: PlanContext, swap: KeySwap, into: list[Repoint], lock_ms: float) -> Step:
    entry = swap.entry
    new, old = identifier(swap.new_name), identifier(swap.old_name)
    column = entry.table.column(entry.column)
    risks = [f"a rollback builds the old key ({', '.join(swap.old_columns)}) again: it fails "
             "if two tenants have the same value by then"]
    if column is not None and not column.not_null:
        risks.append(f"{entry.column} is nullable: run constrain first (the swap refuses: "
                     "SET NOT NULL inside it would scan the table under ACCESS EXCLUSIVE)")
    if entry.table.replica_identity == "default" and entry.table.publications:
        risks.append("the replica identity is the primary key: logical replication "
                     "subscribers see the tenant column join the key")
    guard = _do(compose(
        "IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {t} AND attname = {c}"
        " AND NOT attnotnull) THEN RAISE EXCEPTION {msg}; END IF;",
        t=regclass_literal(entry.qname), c=sql.Literal(entry.column),
        msg=sql.Literal(f"{entry.qname}.{entry.column} is nullable: apply the constrain stage "
                        "first")))
    readd: list[sql.Composable] = []
    for rp in into:
        readd += [_add_fk(rp.child, rp.name, rp.columns, entry, rp.ref_columns, rp.tail),
                  _set_lock_timeout(0),
                  compose("ALTER TABLE {} VALIDATE CONSTRAINT {}", rp.child.ident,
                          identifier(rp.name)),
                  _set_lock_timeout(lock_ms)]
    # One transaction each (autocommit): a transaction that locks several tables one after
    # the other is a deadlock waiting for an application statement that locks them in the
    # other order.
    drop_composites = [compose("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}", rp.child.ident,
                               identifier(rp.composite_name)) for rp in into]
    swap_back = _do(compose(
        "IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {t} AND conname = {n}) THEN"
        " ALTER TABLE {table} DROP CONSTRAINT {new}, ADD CONSTRAINT {old} PRIMARY KEY"
        " USING INDEX {old}; END IF;",
        t=regclass_literal(entry.qname), n=sql.Literal(swap.new_name), table=entry.ident,
        new=new, old=old))
    return Step(
        id=f"swap_primary_key:{entry.qname}:{swap.new_name}",
        stage="index",
        kind="swap_primary_key",
        table=entry.qname,
        description=f"swap {swap.old_name} ({', '.join(swap.old_columns)}) for {swap.new_name} "
                    f"PRIMARY KEY ({', '.join(swap.new_columns)}) in one short transaction",
        statements=(guard, compose(
            "ALTER TABLE {} DROP CONSTRAINT {}, ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}",
            entry.ident, old, new, new)),
        lock=Lock.ACCESS_EXCLUSIVE,
        done_check=constraint_exists_check(entry.qname, swap.new_name),
        # Back: the old key's index again, concurrently (no lock_timeout: a build waits for
        # older transactions and blocks no query); the original foreign keys back into it
        # (NOT VALID under lock_timeout, then validated); the composite keys into this table
        # dropped; then one short transaction swaps the key back. Every part is skipped when
        # already done, so a retry or a rerun after a kill converges.
        inverse=(_set_lock_timeout(lock_ms), _drop_invalid(entry.qname, swap.old_name),
                 _set_lock_timeout(0),
                 compose("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})", old,
                         entry.ident, columns_sql(swap.old_columns)),
                 _set_lock_timeout(lock_ms), *readd, *drop_composites, swap_back),
        inverse_transactional=False,
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        estimate=Estimate(seconds=0.01),
        why="the unique index is built and every foreign key into the old key re-pointed: "
            "the swap only changes the catalog",
        risks=tuple(risks),
    )


def _setting_ms(value: str | None) -> float | None:
    """A millisecond setting as pg_settings gives it (``1000``)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def check_options(ctx: PlanContext) -> None:
    opts = ctx.playbook.options.index
    if opts.tenant_primary_keys and opts.tenant_foreign_keys:
        raise PlaybookError(
            "options.index: tenant_primary_keys adds the composite foreign keys itself (keeping "
            "ON DELETE/ON UPDATE actions) and drops the originals; set tenant_foreign_keys: "
            "false")


def extend(index_plan: Callable[[PlanContext], StagePlan]
           ) -> Callable[[PlanContext], StagePlan]:
    """The index stage's planner, followed by this module's steps when the playbook asks for
    them (nothing changes otherwise)."""
    def plan(ctx: PlanContext) -> StagePlan:
        opts = ctx.playbook.options.index
        if not opts.tenant_primary_keys and opts.sync_triggers == "keep":
            return index_plan(ctx)
        check_options(ctx)
        base = index_plan(ctx)
        notes = list(base.notes)
        steps = list(base.steps)
        if opts.tenant_primary_keys:
            steps += key_steps(ctx, notes)
        steps += sync_steps(ctx, notes)
        return dataclasses.replace(base, steps=tuple(steps), notes=tuple(notes))
    return plan
