"""index: tenant-leading indexes built with CREATE INDEX CONCURRENTLY.

Every tenant table gets ``(tenant)`` or ``(tenant, pk)``, and a tenant-leading twin of each
existing index that queries use (``(created_at)`` -> ``(tenant_id, created_at)``): once the
policy adds ``tenant_id = <current tenant>`` to every query, an index that does not start
with the tenant makes every query read all tenants' rows. Builds run outside any
transaction; an INVALID index left by a failed or killed build is dropped concurrently and
built again. Partitioned tables: an index ``ON ONLY`` the parent, a concurrent build on each
partition, then ``ATTACH PARTITION``."""

from __future__ import annotations

from psycopg import sql

from rls_migrate.catalog import Index, QualifiedName, Table
from rls_migrate.stages.common import (
    ESTIMATED_INDEX_BYTES_PER_S,
    PlanContext,
    TenantTable,
    columns_sql,
    exists_sql,
    index_valid_check,
    object_name,
)
from rls_migrate.steps import Estimate, Lock, StagePlan, Step

INDEX_SUFFIX = "_rlsm_idx"


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


def twin_candidates(ctx: PlanContext, entry: TenantTable) -> list[tuple[Index, str]]:
    """Existing indexes that deserve a tenant-leading twin, with the reason."""
    out: list[tuple[Index, str]] = []
    min_scans = ctx.playbook.options.index.twin_min_scans
    for idx in entry.table.indexes:
        if idx.is_primary or idx.parent_index or idx.method != "btree" or not idx.is_valid:
            continue
        if idx.name in entry.plan.skip_indexes or idx.name.endswith(INDEX_SUFFIX):
            continue
        if not idx.columns or idx.columns[0] == entry.column or None in idx.columns:
            continue
        if idx.is_unique:
            continue  # uniqueness is the tenant_unique option's business
        if idx.scans is not None and idx.scans < min_scans:
            continue
        used = "unknown usage" if idx.scans is None else f"{idx.scans} scans"
        out.append((idx, f"{idx.name} ({', '.join(c for c in idx.columns if c)}) is used "
                         f"({used}); under the policy its queries also filter by tenant"))
    return out


def _index_steps(
    ctx: PlanContext, entry: TenantTable, name: str, columns: tuple[str, ...], why: str,
    unique: bool = False,
) -> list[Step]:
    table: Table = entry.table
    ident = entry.ident
    idx = sql.Identifier(entry.qname.schema, name)
    kind = sql.SQL("UNIQUE INDEX" if unique else "INDEX")
    est = Estimate(rows=table.row_estimate, bytes=table.size_bytes // 3,
                   seconds=round(table.size_bytes / ESTIMATED_INDEX_BYTES_PER_S, 2))
    if not table.is_partitioned:
        return [Step(
            id=f"create_index:{entry.qname}:{name}",
            stage="index",
            kind="create_index",
            table=entry.qname,
            description=f"CREATE INDEX CONCURRENTLY {name} ({', '.join(columns)})",
            statements=(
                # Reached only when the index is missing or INVALID (done_check): drop a
                # leftover of a failed build first.
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(idx),
                sql.SQL("CREATE {} CONCURRENTLY IF NOT EXISTS {} ON {} ({})").format(
                    kind, sql.Identifier(name), ident, columns_sql(columns)),
            ),
            lock=Lock.SHARE_UPDATE_EXCLUSIVE,
            transactional=False,
            done_check=index_valid_check(entry.qname, name),
            inverse=(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(idx),),
            inverse_transactional=False,
            inverse_lock=Lock.SHARE_UPDATE_EXCLUSIVE,
            estimate=est,
            why=why,
        )]
    steps = [Step(
        id=f"create_index:{entry.qname}:{name}",
        stage="index",
        kind="create_index_on_only",
        table=entry.qname,
        description=f"{name} ON ONLY the partitioned parent (invalid until every partition "
                    "is attached)",
        statements=(sql.SQL("CREATE {} IF NOT EXISTS {} ON ONLY {} ({})").format(
            kind, sql.Identifier(name), ident, columns_sql(columns)),),
        lock=Lock.SHARE,
        done_check=exists_sql(sql.SQL(
            "SELECT 1 FROM pg_class WHERE relname = {} AND relnamespace = {}::regnamespace"
        ).format(sql.Literal(name), sql.Literal(entry.qname.schema))),
        inverse=(sql.SQL("DROP INDEX IF EXISTS {}").format(idx),),
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        estimate=Estimate(seconds=0.01),
        why=why + "; the parent index only records the definition: no data is read",
    )]
    for part in table.partitions:
        part_name = object_name("", part, f"_{name[:20]}")
        part_idx = sql.Identifier(part.schema, part_name)
        steps.append(Step(
            id=f"create_index:{part}:{part_name}",
            stage="index",
            kind="create_index",
            table=part,
            description=f"CREATE INDEX CONCURRENTLY {part_name} on partition {part}",
            statements=(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(part_idx),
                sql.SQL("CREATE {} CONCURRENTLY IF NOT EXISTS {} ON {} ({})").format(
                    kind, sql.Identifier(part_name), part.ident, columns_sql(columns)),
            ),
            lock=Lock.SHARE_UPDATE_EXCLUSIVE,
            transactional=False,
            done_check=index_valid_check(part, part_name),
            inverse=(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(part_idx),),
            inverse_transactional=False,
            inverse_lock=Lock.SHARE_UPDATE_EXCLUSIVE,
            estimate=_partition_estimate(ctx, part),
        ))
        steps.append(Step(
            id=f"attach_index:{part}:{part_name}",
            stage="index",
            kind="attach_index",
            table=part,
            description=f"ATTACH {part_name} to {name}",
            statements=(sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(idx, part_idx),),
            # ACCESS SHARE on the partition itself, but ACCESS EXCLUSIVE on the partition's
            # index: every query that plans against the partition (directly or through the
            # parent) opens that index and waits. Brief, but it must queue like one.
            lock=Lock.ACCESS_EXCLUSIVE,
            done_check=_attached_check(part, part_name, name),
            estimate=Estimate(seconds=0.01),
        ))
    return steps


def _attached_check(part: QualifiedName, part_name: str, parent_name: str) -> sql.Composed:
    return exists_sql(sql.SQL(
        "SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent"
        " WHERE c.relname = {} AND c.relnamespace = {}::regnamespace AND p.relname = {}"
    ).format(sql.Literal(part_name), sql.Literal(part.schema), sql.Literal(parent_name)))


def _partition_estimate(ctx: PlanContext, part: QualifiedName) -> Estimate:
    table = ctx.catalog.tables.get(part)
    if table is None:
        return Estimate()
    return Estimate(rows=table.row_estimate, bytes=table.size_bytes // 3,
                    seconds=round(table.size_bytes / ESTIMATED_INDEX_BYTES_PER_S, 2))


def plan(ctx: PlanContext) -> StagePlan:
    steps: list[Step] = []
    notes: list[str] = []
    for entry in ctx.tenant_tables:
        columns, why = tenant_index_columns(ctx, entry)
        existing = [i for i in entry.table.indexes
                    if i.columns[: len(columns)] == columns and i.is_valid
                    and not i.name.endswith(INDEX_SUFFIX)]
        if existing and entry.strategy != "root":
            notes.append(f"{entry.qname}: {existing[0].name} already leads with "
                         f"({', '.join(columns)})")
        elif entry.strategy != "root":
            name = object_name("", entry.qname, f"_{entry.column}{INDEX_SUFFIX}")
            steps.extend(_index_steps(ctx, entry, name, columns, why))
        for idx, reason in twin_candidates(ctx, entry):
            twin_cols = (entry.column, *(c for c in idx.columns if c and c != entry.column))
            name = object_name("", QualifiedName(entry.qname.schema, idx.name), INDEX_SUFFIX)
            steps.extend(_index_steps(ctx, entry, name, twin_cols,
                                      f"tenant-leading twin of {reason}"))
        for extra in entry.plan.extra_indexes:
            cols = (entry.column, *extra)
            name = object_name("", entry.qname, "_" + "_".join(extra) + INDEX_SUFFIX)
            steps.extend(_index_steps(ctx, entry, name, cols, "asked for in the playbook"))
    return StagePlan("index", tuple(steps), tuple(notes))
