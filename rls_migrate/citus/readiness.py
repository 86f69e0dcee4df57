"""What stands between this database and Citus: a role per table and every blocker with its fix.

Citus's multi-tenant migration asks for the same things in the same order: classify every
table (distributed by the tenant key and colocated with the tenant root; reference for global
data that tenant tables point at; local otherwise), one key type everywhere, every primary
key and unique constraint of a distributed table including the distribution column, every
foreign key between distributed tables including it, no foreign key from a reference or local
table into a distributed one. Then ``create_reference_table`` and
``create_distributed_table(..., colocate_with => root)`` in foreign-key order (the runbook).

Read from the catalog only; nothing executes. A blocker's ``online`` says the toolkit has
steps for its fix (``rls-migrate apply --stage index`` with the option the fix names); the
others need a decision or a maintenance window, and the fix says which.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

import psycopg

from rls_migrate.catalog import Catalog, ForeignKey, QualifiedName, Table
from rls_migrate.playbook import Playbook
from rls_migrate.playbook_check import check_against_catalog
from rls_migrate.stages import tenant_key_shapes as key_shapes
from rls_migrate.stages.common import PlanContext, TenantTable
from rls_migrate.stages.sync_retire import PROBE_PREFIX, watch_readings_sql
from rls_migrate.stages.sync_trigger import OWNER_TRIGGER_PREFIX, SYNC_TRIGGER_PREFIX

DISTRIBUTED = "distributed"
REFERENCE = "reference"
LOCAL = "local"

TENANT_PK_OPTION = "options.index.tenant_primary_keys: true"
SYNC_TRIGGERS_OPTION = "options.index.sync_triggers"


@dataclasses.dataclass(frozen=True)
class Blocker:
    """One thing Citus refuses (``blocker``) or that behaves differently there
    (``warning``), with the fix."""

    kind: str
    message: str
    fix: str
    online: bool = False  # the toolkit has steps for the fix
    severity: str = "blocker"  # blocker | warning


@dataclasses.dataclass(frozen=True)
class TableReadiness:
    qname: QualifiedName
    role: str  # distributed | reference | local
    why: str
    column: str | None = None  # the distribution column
    colocate_with: QualifiedName | None = None
    partition_of: QualifiedName | None = None
    rows: int = 0
    size_bytes: int = 0
    blockers: tuple[Blocker, ...] = ()

    @property
    def is_root(self) -> bool:
        return self.role == DISTRIBUTED and self.colocate_with is None


@dataclasses.dataclass(frozen=True)
class Readiness:
    database: str
    server_version: str
    root: QualifiedName
    tables: tuple[TableReadiness, ...]  # in runbook order: reference, root, tenant tables
    general: tuple[Blocker, ...] = ()
    order_problems: tuple[str, ...] = ()  # foreign-key cycles the runbook cannot order

    @property
    def blockers(self) -> list[tuple[QualifiedName | None, Blocker]]:
        out: list[tuple[QualifiedName | None, Blocker]] = [
            (t.qname, b) for t in self.tables for b in t.blockers]
        out += [(None, b) for b in self.general]
        return out

    @property
    def blocking(self) -> int:
        return sum(1 for _, b in self.blockers if b.severity == "blocker")

    @property
    def ready(self) -> bool:
        return self.blocking == 0 and not self.order_problems

    def table(self, qname: QualifiedName) -> TableReadiness:
        for entry in self.tables:
            if entry.qname == qname:
                return entry
        raise KeyError(qname)


# --------------------------------------------------------------------------- classification


def readiness_of(catalog: Catalog, playbook: Playbook, *, source: str = "playbook",
                 conn: psycopg.Connection[Any] | None = None) -> Readiness:
    """Check the playbook against the catalog (the same errors as ``plan``), then assess.
    With ``conn``, a watched sync trigger's blocker says what its watch counted (reads only)."""
    check_against_catalog(playbook, catalog, source)
    ctx = PlanContext(catalog, playbook)
    readings: dict[QualifiedName, str] = {}
    if conn is not None:
        for entry, query in watch_readings_sql(ctx):
            row = conn.execute(query).fetchone()
            if row is not None:
                since, inserted, missing, watched = row
                verdict = ("none did: it can go (sync_triggers: drop)" if not missing and
                           inserted else "not proven yet")
                readings[entry.qname] = (
                    f"watched since {since:%Y-%m-%d %H:%M} ({float(watched) / 60:.0f} min): "
                    f"{inserted} row(s) inserted, {missing} without {entry.column}; {verdict}")
    return assess(ctx, readings)


def assess(ctx: PlanContext, watches: dict[QualifiedName, str] | None = None) -> Readiness:
    """The readiness report of ``ctx``'s database under its playbook. ``watches``: what the
    watch on a table's sync trigger counted, to show with its blocker."""
    catalog, playbook = ctx.catalog, ctx.playbook
    root = ctx.root
    tenant = {e.qname: e for e in ctx.tenant_tables}
    dist_col = {q: (playbook.tenant.key if e.strategy == "root" else e.column)
                for q, e in tenant.items()}
    tables = {q: t for q, t in catalog.tables.items() if t.partition_of is None}

    # Reference tables: global data that a distributed or reference table points at
    # (transitively: a reference table's own foreign keys need reference targets too).
    reference: set[QualifiedName] = set()
    todo = [fk.ref_table for q in tenant for fk in tables[q].foreign_keys
            if q in tables] if tenant else []
    while todo:
        target = todo.pop()
        if target in tenant or target in reference or target not in tables:
            continue
        plan = playbook.plan_for(target)
        if plan is not None and plan.strategy == "skip":
            continue
        reference.add(target)
        todo.extend(fk.ref_table for fk in tables[target].foreign_keys)

    entries: dict[QualifiedName, TableReadiness] = {}
    for qname, table in sorted(tables.items()):
        if qname in tenant:
            entry = tenant[qname]
            is_root = entry.strategy == "root"
            why = ("the tenant root: distributed by its key; every tenant table is colocated "
                   "with it" if is_root else
                   f"tenant data ({entry.strategy}): distributed by {entry.column}, colocated "
                   f"with {root} so a tenant's rows of every table live on one node")
            blockers = _distributed_blockers(ctx, entry, dist_col, reference,
                                             (watches or {}).get(qname))
            entries[qname] = TableReadiness(
                qname, DISTRIBUTED, why, dist_col[qname], None if is_root else root,
                rows=table.row_estimate, size_bytes=table.size_bytes,
                blockers=tuple(blockers))
        elif qname in reference:
            users = sorted({str(q) for q, t in tables.items()
                            for fk in t.foreign_keys if fk.ref_table == qname and q != qname})
            entries[qname] = TableReadiness(
                qname, REFERENCE,
                f"global data that {', '.join(users)} reference(s): copied to every node",
                rows=table.row_estimate, size_bytes=table.size_bytes,
                blockers=tuple(_reference_blockers(table, tenant, reference)))
        else:
            plan = playbook.plan_for(qname)
            if plan is None:
                why = "not in the playbook: stays on the coordinator"
            elif plan.strategy == "skip":
                why = "skipped in the playbook: stays on the coordinator"
            else:
                why = ("global data no tenant table references: stays on the coordinator "
                       "(make it a reference table if queries join it with tenant tables)")
            entries[qname] = TableReadiness(
                qname, LOCAL, why, rows=table.row_estimate, size_bytes=table.size_bytes,
                blockers=tuple(_local_blockers(table, tenant)))
    ordered, problems = _runbook_order(entries, tables)
    return Readiness(catalog.database, catalog.server_version, root, tuple(ordered),
                     tuple(_general_blockers(ctx, dist_col)), tuple(problems))


def _runbook_order(entries: dict[QualifiedName, TableReadiness],
                   tables: dict[QualifiedName, Table]
                   ) -> tuple[list[TableReadiness], list[str]]:
    """Reference tables first, then the root, then tenant tables with every table a foreign
    key points at before the table itself (Citus refuses a foreign key to a table that is not
    distributed yet); local tables last. Cycles are reported, not guessed."""
    placed: list[TableReadiness] = []
    state: dict[QualifiedName, int] = {}
    problems: list[str] = []

    def visit(qname: QualifiedName, trail: tuple[QualifiedName, ...]) -> None:
        if state.get(qname) == 2:
            return
        if state.get(qname) == 1:
            problems.append("foreign keys form a cycle: "
                            + " -> ".join(str(q) for q in (*trail, qname))
                            + " (distribute one of them first with the foreign key dropped)")
            return
        state[qname] = 1
        for fk in tables[qname].foreign_keys:
            target = entries.get(fk.ref_table)
            if fk.ref_table != qname and target is not None and target.role != LOCAL:
                visit(fk.ref_table, (*trail, qname))
        state[qname] = 2
        placed.append(entries[qname])

    def rank(entry: TableReadiness) -> int:
        return {REFERENCE: 0, DISTRIBUTED: 2, LOCAL: 3}[entry.role] - (entry.is_root and 1)

    for entry in sorted(entries.values(), key=lambda e: (rank(e), e.qname)):
        if entry.role != LOCAL:
            visit(entry.qname, ())
    placed += [e for e in entries.values() if e.role == LOCAL]
    return placed, problems


# --------------------------------------------------------------------------- blockers


def _distributed_blockers(ctx: PlanContext, entry: TenantTable,
                          dist_col: dict[QualifiedName, str],
                          reference: set[QualifiedName], watch: str | None) -> list[Blocker]:
    table, col = entry.table, dist_col[entry.qname]
    is_root = entry.strategy == "root"
    out: list[Blocker] = []
    pk = table.primary_key
    if pk is None:
        out.append(_no_primary_key(entry, col, is_root))
    elif col not in pk:
        if table.is_partitioned:
            parts, why = key_shapes.partition_keys(table, dict(ctx.catalog.tables), False)
            out.append(Blocker(
                "primary_key", f"PRIMARY KEY ({', '.join(pk)}) lacks {col}",
                f"{TENANT_PK_OPTION}: on each of its {len(parts)} partitions UNIQUE ({col}, "
                f"{', '.join(pk)}) built concurrently, then one short transaction (every "
                "partition locked, catalog only) makes them the partitions' primary keys and "
                f"adds the parent's PRIMARY KEY ({col}, {', '.join(pk)}); not when other tables' "
                "foreign keys reference the key (then by hand: plan says so)" if not why else
                f"{why}: recreate it as PRIMARY KEY ({col}, {', '.join(pk)}) in a maintenance "
                "window", online=not why))
        else:
            out.append(Blocker(
                "primary_key", f"PRIMARY KEY ({', '.join(pk)}) lacks {col}",
                f"{TENANT_PK_OPTION}: UNIQUE ({col}, {', '.join(pk)}) built concurrently, the "
                "foreign keys that reference it re-pointed to the composite key (NOT VALID, "
                "then VALIDATE), then one short transaction swaps the primary key USING INDEX",
                online=True))
    for con in table.constraints:
        if con.kind in ("u", "x") and col not in con.columns:
            out.append(_unique_blocker(entry, con.name, con.columns, col, is_root,
                                       exclusion=con.kind == "x"))
    constraint_indexes = {c.index_name for c in table.constraints}
    for idx in table.indexes:
        if (idx.is_unique and not idx.is_primary and idx.name not in constraint_indexes
                and idx.parent_index is None and col not in idx.columns):
            cols = tuple(c or "<expression>" for c in idx.columns)
            out.append(_unique_blocker(entry, f"unique index {idx.name}", cols, col, is_root))
    for fk in table.foreign_keys:
        out.extend(_foreign_key_blockers(ctx, entry, fk, dist_col, reference))
    out.extend(_column_blockers(ctx, entry, col))
    out.extend(_trigger_blockers(ctx, entry, watch))
    if table.is_partitioned:
        out.append(Blocker(
            "partitioned", f"{entry.qname} is partitioned ({len(table.partitions)} "
            "partition(s))",
            "create_distributed_table on the parent distributes every partition with it; "
            "partitions attached later are distributed when attached. Keys must hold both "
            f"the partition key and {col}", severity="warning"))
    for policy in table.policies:
        if policy.name.startswith("rls_migrate_"):
            continue
        exprs = [e for e in policy.expressions if e.strip().lower() not in ("true", "(true)")]
        if exprs and not any(_mentions(e, col) for e in exprs):
            out.append(Blocker(
                "policy", f"policy {policy.name} filters on something other than {col}: "
                f"{' / '.join(exprs)}",
                f"policies that do not filter on the distribution column are known not to be "
                f"respected on distributed tables: rewrite it over {col} (the toolkit's "
                "observe/enforce policies do) or drop it before distributing"))
    return out


def _no_primary_key(entry: TenantTable, col: str, is_root: bool) -> Blocker:
    what = f"{entry.qname} has no primary key"
    why = ("Citus distributes it, but moving its shards (rebalancing) replicates changes "
           "logically and needs a replica identity")
    found = key_shapes.unique_key_for(entry.table)
    if found is not None and not is_root and not entry.table.is_partitioned:
        name, cols = found
        return Blocker("no_primary_key", what, f"{why}: {TENANT_PK_OPTION}: UNIQUE ({col}, "
                       f"{', '.join(cols)}) built concurrently, then added as the primary key "
                       f"USING INDEX (from the NOT NULL unique {name})", online=True,
                       severity="warning")
    return Blocker("no_primary_key", f"{what}, and no NOT NULL unique key to build one from",
                   f"{why}: add a NOT NULL unique key (an identity column id with UNIQUE (id)), "
                   f"then {TENANT_PK_OPTION} adds PRIMARY KEY ({col}, id); or set REPLICA "
                   "IDENTITY FULL (every update then logs the whole row)")


def _unique_blocker(entry: TenantTable, name: str, columns: tuple[str, ...], col: str,
                    is_root: bool, exclusion: bool = False) -> Blocker:
    what = f"{'EXCLUDE' if exclusion else 'UNIQUE'} {name} ({', '.join(columns)}) lacks {col}"
    if entry.table.primary_key == (col, *columns):
        return Blocker("unique", what,
                       f"PRIMARY KEY ({col}, {', '.join(columns)}) already holds what Citus can "
                       f"enforce of it: drop {name} once no foreign key references it")
    if is_root:
        return Blocker("unique", what,
                       "on the tenant root, uniqueness across tenants cannot be enforced by a "
                       "distributed table: keep the value in a reference (or local) lookup "
                       "table with its own unique key, or enforce it in the application")
    if entry.table.is_partitioned or exclusion or "<expression>" in columns:
        return Blocker("unique", what,
                       f"rebuild it with {col} in front (CREATE UNIQUE INDEX CONCURRENTLY ... "
                       f"({col}, ...)), then drop the old one")
    return Blocker("unique", what,
                   f"tables.{entry.qname}.tenant_unique: [[{', '.join(columns)}]] (index "
                   f"stage): UNIQUE ({col}, {', '.join(columns)}) built concurrently and "
                   "swapped in by one short transaction", online=True)


def _foreign_key_blockers(ctx: PlanContext, entry: TenantTable, fk: ForeignKey,
                          dist_col: dict[QualifiedName, str],
                          reference: set[QualifiedName]) -> list[Blocker]:
    target = fk.ref_table
    col = dist_col[entry.qname]
    desc = (f"foreign key {fk.name} ({', '.join(fk.columns)}) -> {target} "
            f"({', '.join(fk.ref_columns)})")
    if target in reference:
        return []
    if target not in dist_col:
        plan = ctx.playbook.plan_for(target)
        how = "is skipped in the playbook" if plan is not None and plan.strategy == "skip" \
            else "stays local"
        return [Blocker("foreign_key_to_local", f"{desc}: {target} {how}",
                        f"make {target} global (a reference table) or a tenant table in the "
                        "playbook, or drop the foreign key")]
    target_col = dist_col[target]
    pairs = set(zip(fk.columns, fk.ref_columns, strict=True))
    if (col, target_col) in pairs:
        return []
    parent = ctx.tenant_table(target)
    assert parent is not None
    if parent.strategy == "root":
        return [Blocker(
            "foreign_key", f"{desc} lacks {col}",
            f"a foreign key to the tenant root from another column than {col} can only hold "
            f"on Citus when it names the same tenant: drop {fk.name}, or check "
            f"{', '.join(fk.columns)} = {col} in the application")]
    pk = parent.table.primary_key
    references_key = pk is not None and (
        tuple(fk.ref_columns) == tuple(pk)
        or (pk[:1] == (target_col,) and tuple(fk.ref_columns) == tuple(pk[1:])))
    if references_key and not parent.table.is_partitioned and not entry.table.is_partitioned:
        return [Blocker(
            "foreign_key", f"{desc} lacks {col}",
            f"{TENANT_PK_OPTION}: foreign key ({col}, {', '.join(fk.columns)}) -> {target} "
            f"({target_col}, {', '.join(fk.ref_columns)}) added NOT VALID and validated, "
            "keeping its ON DELETE/ON UPDATE actions; the original is dropped", online=True)]
    return [Blocker(
        "foreign_key", f"{desc} lacks {col}",
        f"add UNIQUE ({target_col}, {', '.join(fk.ref_columns)}) on {target}, then a foreign "
        f"key ({col}, {', '.join(fk.columns)}) -> {target} ({target_col}, "
        f"{', '.join(fk.ref_columns)}) NOT VALID + VALIDATE, then drop {fk.name}")]


def _column_blockers(ctx: PlanContext, entry: TenantTable, col: str) -> list[Blocker]:
    out: list[Blocker] = []
    column = entry.table.column(col)
    root_type = ctx.key_column_type()
    if column is None:
        out.append(Blocker(
            "tenant_column", f"{entry.qname} has no {col} yet",
            "rls-migrate apply --stage add-column, then backfill and constrain: the column, "
            "filled in short batches, then NOT NULL without a long lock", online=True))
    elif not column.not_null:
        out.append(Blocker(
            "tenant_column", f"{col} is nullable",
            "Citus refuses rows without a distribution value: rls-migrate apply --stage "
            "constrain (NOT NULL through a validated check, no long lock)", online=True))
    if column is not None and column.type != root_type:
        out.append(Blocker(
            "key_type", f"{col} is {column.type}, the root key {ctx.root}."
            f"{ctx.playbook.tenant.key} is {root_type}",
            f"colocation needs one type everywhere: ALTER COLUMN {col} TYPE {root_type} "
            "rewrites the table under ACCESS EXCLUSIVE (not online): a maintenance window, or "
            "a new column filled in batches and swapped"))
    for c in entry.table.columns:
        default = c.default or ""
        if c.identity:
            if c.type == "bigint":
                out.append(Blocker(
                    "identity", f"identity column {c.name} (bigint)",
                    "Citus keeps one sequence for it on the coordinator and hands worker "
                    "nodes disjoint ranges (bigint only); check your Citus version supports "
                    "identity columns on distributed tables", severity="warning"))
            else:
                out.append(Blocker(
                    "identity", f"identity column {c.name} ({c.type})",
                    "Citus supports only bigint identity columns on distributed tables: "
                    f"ALTER COLUMN {c.name} TYPE bigint (a table rewrite: maintenance window) "
                    "or replace the identity with a bigint sequence default or uuids"))
        elif "nextval(" in default:
            out.append(Blocker(
                "serial", f"{c.name} defaults to a sequence ({default})",
                "works through the coordinator; writes through worker nodes get unique "
                "values only from a bigint sequence" + (
                    "" if c.type == "bigint" else f" ({c.name} is {c.type})"),
                severity="warning"))
    return out


def _trigger_blockers(ctx: PlanContext, entry: TenantTable, watch: str | None
                      ) -> list[Blocker]:
    out: list[Blocker] = []
    for trig in entry.table.triggers:
        if trig.name.startswith(PROBE_PREFIX):
            continue  # reported with the sync trigger it watches
        if trig.name.startswith(SYNC_TRIGGER_PREFIX):
            out.append(Blocker(
                "sync_trigger", f"the toolkit's sync trigger {trig.name} (fills "
                f"{entry.column} from {entry.parent.qname if entry.parent else 'the parent'})"
                + (f"; {watch}" if watch else ""),
                "Citus refuses triggers on distributed tables unless citus.enable_unsafe_"
                f"triggers is on. Once the application writes {entry.column} itself it can "
                f"go: {SYNC_TRIGGERS_OPTION}: watch (counts rows that arrive without it), "
                "then drop (refused while any recent row needed the trigger)", online=True))
        elif trig.name.startswith(OWNER_TRIGGER_PREFIX):
            out.append(Blocker(
                "sync_trigger", f"the toolkit's owner trigger {trig.name} (gives this row's "
                "tenant to the row it points at, strategy owned)",
                "Citus refuses triggers on distributed tables unless citus.enable_unsafe_"
                f"triggers is on: {SYNC_TRIGGERS_OPTION}: watch on the owned table, then drop "
                "retires it with the owned table's sync trigger, once no row arrives there "
                "without the tenant", online=True))
        else:
            out.append(Blocker(
                "trigger", f"trigger {trig.name} ({trig.timing} {' OR '.join(trig.events)}, "
                f"{trig.function})",
                "Citus refuses triggers on distributed tables unless citus.enable_unsafe_"
                "triggers = on (ALTER SYSTEM on every node): the trigger then fires on each "
                "shard and may only touch rows of the same tenant in colocated tables; or "
                "move its logic into the application"))
    return out


def _reference_blockers(table: Table, tenant: dict[QualifiedName, TenantTable],
                        reference: set[QualifiedName]) -> list[Blocker]:
    out: list[Blocker] = []
    for fk in table.foreign_keys:
        if fk.ref_table in tenant:
            out.append(Blocker(
                "foreign_key_into_distributed",
                f"foreign key {fk.name} from the reference table {table.qname} into the "
                f"distributed {fk.ref_table}",
                f"Citus refuses foreign keys from reference tables to distributed tables: "
                f"drop {fk.name}, or make {table.qname} a tenant table"))
    if table.triggers:
        names = ", ".join(t.name for t in table.triggers)
        out.append(Blocker("trigger", f"trigger(s) {names}",
                           "Citus refuses triggers on reference tables unless "
                           "citus.enable_unsafe_triggers = on", severity="warning"))
    return out


def _local_blockers(table: Table, tenant: dict[QualifiedName, TenantTable]) -> list[Blocker]:
    return [Blocker(
        "foreign_key_into_distributed",
        f"foreign key {fk.name} from the local table {table.qname} into the distributed "
        f"{fk.ref_table}",
        f"Citus refuses foreign keys from local tables to distributed tables: drop {fk.name}, "
        f"or make {table.qname} a tenant table")
        for fk in table.foreign_keys if fk.ref_table in tenant]


def _general_blockers(ctx: PlanContext, dist_col: dict[QualifiedName, str]) -> list[Blocker]:
    out: list[Blocker] = []
    catalog: Catalog = ctx.catalog
    for view in sorted(catalog.views.values(), key=lambda v: v.qname):
        over = [q for q in view.depends_on if q in dist_col]
        if len(over) >= 2:
            unjoined = [str(q) for q in over if not _mentions(view.definition, dist_col[q])]
            if unjoined:
                out.append(Blocker(
                    "view", f"view {view.qname} joins {', '.join(str(q) for q in over)} "
                    f"without naming the distribution column of {', '.join(unjoined)}",
                    "a join of distributed tables runs on one node only when it joins on the "
                    "distribution column (a.account_id = b.account_id) and filters by one "
                    "tenant: add the tenant to the join condition", severity="warning"))
        if view.kind == "materialized" and over:
            out.append(Blocker(
                "view", f"materialized view {view.qname} over distributed "
                f"{', '.join(str(q) for q in over)}",
                "it is refreshed on the coordinator, pulling every tenant's rows: replace it "
                "with a table maintained per tenant, or accept the cost", severity="warning"))
    names = {q.name: q for q in dist_col}
    for fn in catalog.functions:
        if fn.schema == "rls_migrate":
            continue
        used = sorted(str(q) for n, q in names.items() if _mentions_word(fn.source, n))
        if len(used) >= 2:
            out.append(Blocker(
                "function", f"function {fn.schema}.{fn.name}({fn.signature}) reads "
                f"{', '.join(used)}",
                "on Citus a statement that crosses tenants fans out to every node: make it "
                "filter by one tenant (and consider create_distributed_function(..., "
                "colocate_with => the root) so it runs next to the tenant's shards)",
                severity="warning"))
    out.append(Blocker(
        "tenant_context", f"policies read {ctx.playbook.tenant.setting} on the worker nodes",
        "the per-transaction setting must reach every node that runs a shard query; Citus "
        "propagates SET LOCAL with citus.propagate_set_commands = 'local', and a set_config() "
        "call may not be propagated: check how your Citus version carries it (never verified "
        "here: these machines have no Citus)", severity="warning"))
    return out


def _mentions(expression: str, column: str) -> bool:
    quoted = '"' + column.replace('"', '""') + '"'
    return quoted in expression or _mentions_word(expression, column)


def _mentions_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w$]){re.escape(word)}(?![\w$])", text) is not None


def distributed(readiness: Readiness) -> Iterable[TableReadiness]:
    return (t for t in readiness.tables if t.role == DISTRIBUTED)
