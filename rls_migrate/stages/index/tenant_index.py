"""The tenant index and its twins: ``(tenant)`` or ``(tenant, pk)`` on every tenant table, and a
tenant-leading twin of each existing index that queries use. Also how any index of this stage
is built: concurrently, after dropping an INVALID leftover; on a partitioned table ``ON ONLY``
the parent, concurrently on each partition, then ``ATTACH PARTITION``."""

from __future__ import annotations

from psycopg import sql

from rls_migrate.catalog import Index, QualifiedName, Table
from rls_migrate.errors import PlaybookError
from rls_migrate.sqlcompose import compose, identifier
from rls_migrate.stages.common import (
    ESTIMATED_INDEX_BYTES_PER_S,
    PlanContext,
    TenantTable,
    exists_sql,
    object_name,
    regclass_literal,
)
from rls_migrate.stages.index.shapes import INDEX_SUFFIX, IndexShape, shape_of
from rls_migrate.stages.index.usage import scans_of, usage_decided
from rls_migrate.steps import Estimate, Later, Lock, Step


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


def not_sql(check: sql.Composable) -> sql.Composed:
    return compose("SELECT NOT ({})", check)


def _index_estimate(table: Table | None) -> Estimate:
    if table is None:
        return Estimate()
    return Estimate(rows=table.row_estimate, bytes=table.size_bytes // 3,
                    seconds=round(table.size_bytes / ESTIMATED_INDEX_BYTES_PER_S, 2))


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


def replaced_name(qname: QualifiedName, name: str, suffix: str) -> str | None:
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
        if not usage_decided(entry, idx):
            continue  # uniqueness is the tenant_unique option's business; ours are twins
        twinned = twin_name(entry.qname, idx.name) in names
        scans = scans_of(ctx, entry, idx)
        if scans is not None and scans < min_scans and not twinned:
            continue
        used = "unknown usage" if scans is None else f"{scans} scans"
        out.append((idx, f"{idx.name} ({', '.join(c for c in idx.columns if c)}) is used "
                         f"({used}); under the policy its queries also filter by tenant"))
    return out


def create_step(table: Table | None, qname: QualifiedName, name: str, shape: IndexShape,
                 why: str, *, unique: bool = False, description: str | None = None) -> Step:
    idx = identifier(qname.schema, name)
    kind = "UNIQUE INDEX" if unique else "INDEX"
    return Step(
        id=f"create_index:{qname}:{name}",
        stage="index",
        kind="create_index",
        table=qname,
        description=description or f"CREATE {kind} CONCURRENTLY {name} ({shape.describe()})",
        statements=Later(lambda: (
            # Reached only when the index is missing or INVALID (done_check): drop a
            # leftover of a failed or killed build first.
            compose("DROP INDEX CONCURRENTLY IF EXISTS {}", idx),
            shape.create(name, qname, unique=unique),
        )),
        lock=Lock.SHARE_UPDATE_EXCLUSIVE,
        transactional=False,
        done_check=Later(lambda: index_ready_check(qname, name, unique)),
        inverse=Later(lambda: (compose("DROP INDEX CONCURRENTLY IF EXISTS {}", idx),)),
        inverse_transactional=False,
        inverse_lock=Lock.SHARE_UPDATE_EXCLUSIVE,
        estimate=_index_estimate(table),
        why=why,
    )


def index_steps(ctx: PlanContext, entry: TenantTable, name: str, shape: IndexShape,
                 why: str, unique: bool = False) -> list[Step]:
    table = entry.table
    if not table.is_partitioned:
        return [create_step(table, entry.qname, name, shape, why, unique=unique)]
    idx = identifier(entry.qname.schema, name)
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
        part_idx = identifier(part.schema, part_name)
        steps.append(create_step(
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


def drop_index_step(entry: TenantTable, old_name: str, old_shape: IndexShape, *,
                     unique: bool, why: str, risks: tuple[str, ...] = ()) -> Step:
    """Drop ``old_name`` concurrently; the inverse builds it again, concurrently."""
    idx = identifier(entry.qname.schema, old_name)
    return Step(
        id=f"drop_index:{entry.qname}:{old_name}",
        stage="index",
        kind="drop_index",
        table=entry.qname,
        description=f"DROP INDEX CONCURRENTLY {old_name}",
        statements=(compose("DROP INDEX CONCURRENTLY IF EXISTS {}", idx),),
        lock=Lock.SHARE_UPDATE_EXCLUSIVE,
        transactional=False,
        done_check=not_sql(relation_exists_sql(entry.qname.schema, old_name)),
        inverse=(compose("DROP INDEX CONCURRENTLY IF EXISTS {}", idx),
                 old_shape.create(old_name, entry.qname, unique=unique)),
        inverse_transactional=False,
        inverse_lock=Lock.SHARE_UPDATE_EXCLUSIVE,
        estimate=Estimate(seconds=0.01),
        why=why,
        risks=risks,
    )


def twin_steps(ctx: PlanContext, entry: TenantTable, notes: list[str]) -> list[Step]:
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
        steps.extend(index_steps(ctx, entry, name, shape.leading(entry.column),
                                  f"tenant-leading twin of {reason}"))
        if drop and not entry.table.is_partitioned:
            steps.append(drop_index_step(
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
        old = replaced_name(entry.qname, idx.name, INDEX_SUFFIX)
        if (idx.name in planned or idx.name in other or old is None or old in existing
                or idx.parent_index or idx.columns[:1] != (entry.column,)):
            continue
        shape = shape_of(idx)
        if shape is None or not shape.keys:
            continue
        steps.extend(index_steps(ctx, entry, idx.name, shape,
                                  f"tenant-leading twin of {old} (dropped since)"))
        if drop and not entry.table.is_partitioned:
            steps.append(drop_index_step(
                entry, old, shape.without_leading(), unique=False,
                why=f"drop_replaced_indexes: {idx.name} serves its tenant-filtered queries"))
    return steps


def check_columns(entry: TenantTable, columns: tuple[str, ...], where: str) -> None:
    import difflib

    for col in columns:
        if entry.table.column(col) is None:
            hint = difflib.get_close_matches(col, entry.table.column_names, n=3, cutoff=0.5)
            raise PlaybookError(f"tables.{entry.qname}.{where}: table {entry.qname} has no "
                                f"column {col!r}"
                                + (f" (did you mean {', '.join(hint)}?)" if hint else ""))
