"""Tenant statistics (``options.index.tenant_statistics``): extended statistics that tell the
planner a row's tenant follows from its link to a tenant parent.

Enforcement adds ``tenant_id = <current tenant>`` to every scan. A legacy query that scopes a
child through its parent (``... WHERE issues.project_id = $1``) then filters on both
``project_id`` and ``tenant_id``, and the planner, which takes the two as independent,
multiplies their selectivities: one issue estimated instead of sixty, a nested loop that
rescans the tenant's comments once per issue, 10-70x the statement without RLS (measured:
README, "Enforce on legacy joins"). ``CREATE STATISTICS (dependencies) ON project_id,
tenant_id`` lets ANALYZE measure that ``project_id`` determines ``tenant_id``, and the
planner stops multiplying. The tenant is a pseudo-constant (an InitPlan) in the policy:
dependencies apply to it, an MCV list would not.

One object per link (a foreign key into a tenant table, or the playbook's parent reference),
on every table that holds rows (a partitioned table's partitions, not the parent: the planner
estimates each partition's scan from its own statistics), then ``ANALYZE`` of those columns
so the planner has them before enforcement. Both take SHARE UPDATE EXCLUSIVE: reads and
writes go on; they wait only behind other schema changes, VACUUM or a concurrent build."""

from __future__ import annotations

from psycopg import sql

from rls_migrate.catalog import QualifiedName
from rls_migrate.sqlcompose import compose, identifier, sep
from rls_migrate.stages.common import (
    PlanContext,
    TenantTable,
    columns_sql,
    object_name,
    regclass_literal,
    with_partitions,
)
from rls_migrate.steps import Estimate, Later, Lock, Step

MAX_COLUMNS = 8
"""PostgreSQL's limit on the columns of one statistics object."""

SUFFIX = "_rlsm_dep"


def links(ctx: PlanContext, entry: TenantTable) -> list[tuple[str, ...]]:
    """The column sets that determine ``entry``'s tenant: each foreign key into a tenant table
    (its columns other than the tenant column: a composite tenant key carries the same
    link) and the playbook's parent reference. Parents first, then in the catalog's order."""
    found: list[tuple[str, ...]] = []
    candidates: list[tuple[str, ...]] = []
    if entry.parent is not None and not entry.owned:
        candidates.append(entry.parent.columns)
    for fk in entry.table.foreign_keys:
        if ctx.tenant_table(fk.ref_table) is not None:
            candidates.append(fk.columns)
    for columns in candidates:
        link = tuple(c for c in columns if c != entry.column)
        if link and len(link) < MAX_COLUMNS and set(link) not in [set(f) for f in found]:
            found.append(link)
    return found


def statistics_name(qname: QualifiedName, link: tuple[str, ...]) -> str:
    return object_name("", qname, "_" + "_".join(link) + SUFFIX)


def statistics_steps(ctx: PlanContext, entry: TenantTable) -> list[Step]:
    if entry.strategy == "root":
        return []
    wanted = links(ctx, entry)
    if not wanted:
        return []
    steps = []
    for target in with_partitions(ctx, entry):
        if target.table.is_partitioned:
            continue
        steps.append(_step(entry, target, wanted))
    return steps


def _step(entry: TenantTable, target: TenantTable, wanted: list[tuple[str, ...]]) -> Step:
    names = [statistics_name(target.qname, link) for link in wanted]

    def statements() -> tuple[sql.Composable, ...]:
        columns = sorted({c for link in wanted for c in link} | {entry.column})
        creates = tuple(
            compose("CREATE STATISTICS IF NOT EXISTS {} (dependencies) ON {} FROM {}",
                    identifier(target.qname.schema, name),
                    columns_sql((*link, entry.column)), target.ident)
            for name, link in zip(names, wanted, strict=True))
        return (*creates, compose("ANALYZE {} ({})", target.ident, columns_sql(columns)))

    return Step(
        id=f"tenant_statistics:{target.qname}",
        stage="index",
        kind="tenant_statistics",
        table=target.qname,
        description="dependencies statistics on " + ", ".join(
            f"({', '.join((*link, entry.column))})" for link in wanted)
            + ", then ANALYZE of those columns",
        statements=Later(statements),
        # SHARE UPDATE EXCLUSIVE: reads and writes go on. One transaction, so that a
        # statistics object exists only once ANALYZE has filled it (ANALYZE may run in
        # one): the done check can then be "they exist", also for an empty table, where
        # ANALYZE builds nothing. A weak lock: no ddl_statement_timeout on the sample.
        lock=Lock.SHARE_UPDATE_EXCLUSIVE,
        done_check=Later(lambda: _exist_check(target.qname, names)),
        inverse=Later(lambda: (compose("DROP STATISTICS IF EXISTS {}", sep(", ").join(
            identifier(target.qname.schema, n) for n in names)),)),
        inverse_lock=Lock.SHARE_UPDATE_EXCLUSIVE,
        estimate=Estimate(seconds=0.1),
        why="the policy's tenant comparison and a filter on the link to the parent are "
            "not independent: without these statistics the planner multiplies their "
            "selectivities and picks nested loops that run 10-70x longer",
    )


def _exist_check(qname: QualifiedName, names: list[str]) -> sql.Composed:
    return compose(
        "SELECT count(*) = {} FROM pg_statistic_ext WHERE stxrelid = {}"
        " AND stxname = ANY({}::name[])",
        sql.Literal(len(names)), regclass_literal(qname), sql.Literal(names))
