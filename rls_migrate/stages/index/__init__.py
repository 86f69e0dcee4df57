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
* ``options.index.tenant_statistics`` (on by default): extended statistics that tell the
  planner a row's tenant follows from its link to the parent (:mod:`.statistics`);
* ``options.index.tenant_foreign_keys``: ``UNIQUE (tenant, id)`` on parents and composite
  foreign keys ``(tenant, parent_id) -> parent (tenant, id)``, added NOT VALID then
  validated, so the database guarantees that a child's tenant is its parent's.

The plan must be the same before and after the stage ran (rollback re-plans from the live
catalog): what this stage replaced is found again from what it built, by name.

The ``create_index`` kind handler (registered below) runs the build like the executor runs
any non-transactional step, while a second connection polls
``pg_stat_progress_create_index`` for the progress display and names the sessions a build
waits for.

One module per idea: :mod:`.shapes` (index definitions taken apart, our names),
:mod:`.tenant_index` (the tenant index, twins, concurrent and partitioned builds),
:mod:`.uniques` (tenant-scoped uniques and keys), :mod:`.foreign_keys` (tenant-consistent
foreign keys), :mod:`.statistics` (the planner's statistics), :mod:`.usage` (the index usage
twins are decided from, pinned in the journal), :mod:`.build_watcher` (the runtime handler of a
build); the stage itself, which puts them together, is here.
"""

from __future__ import annotations

from rls_migrate.catalog import QualifiedName
from rls_migrate.stages.common import PlanContext, TenantTable
from rls_migrate.stages.index import build_watcher  # noqa: F401 (registers its kind handler)
from rls_migrate.stages.index.foreign_keys import fk_steps, tenant_foreign_keys
from rls_migrate.stages.index.shapes import IndexShape, is_ours
from rls_migrate.stages.index.statistics import statistics_steps
from rls_migrate.stages.index.tenant_index import (
    check_columns,
    extra_index_name,
    index_steps,
    partition_index_name,
    tenant_index_columns,
    tenant_index_name,
    twin_steps,
)
from rls_migrate.stages.index.uniques import add_key_step, key_steps, unique_steps
from rls_migrate.stages.index.usage import pin_step
from rls_migrate.steps import StagePlan, Step


def plan(ctx: PlanContext) -> StagePlan:
    steps: list[Step] = []
    notes: list[str] = []
    fks = tenant_foreign_keys(ctx, notes) if ctx.playbook.options.index.tenant_foreign_keys \
        else []
    keys: dict[QualifiedName, set[tuple[str, ...]]] = {}
    for tfk in fks:
        keys.setdefault(tfk.parent.qname, set()).add(tfk.key)
    constraint_steps: list[Step] = []
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
                constraint_steps.append(add_key_step(entry, name, columns, why))
            steps.extend(index_steps(ctx, entry, name, IndexShape.of_columns(columns), why,
                                      unique=unique))
        for key in sorted(wanted_keys):
            built = key_steps(entry, key, "the key tenant-consistent foreign keys reference")
            steps.append(built[0])
            constraint_steps.extend(built[1:])
        if entry.strategy != "root":
            steps.extend(twin_steps(ctx, entry, notes))
        for extra in entry.plan.extra_indexes:
            cols = tuple(c for c in extra if c != entry.column)
            check_columns(entry, cols, "extra_indexes")
            steps.extend(index_steps(ctx, entry, extra_index_name(entry, extra),
                                      IndexShape.of_columns((entry.column, *cols)),
                                      "asked for in the playbook"))
        for wanted in entry.plan.tenant_unique:
            steps.extend(unique_steps(ctx, entry, wanted, notes))
        unknown = set(entry.plan.skip_indexes) - {i.name for i in entry.table.indexes}
        if unknown:
            notes.append(f"{entry.qname}: skip_indexes names no index: "
                         f"{', '.join(sorted(unknown))}")
    steps.extend(constraint_steps)
    steps.extend(fk_steps(fks))
    if ctx.playbook.options.index.tenant_statistics:
        for entry in ctx.tenant_tables:
            steps.extend(statistics_steps(ctx, entry))
    # First of all, before anything the stage does can move the counters: the usage the
    # twins were decided from (see .usage).
    pins = [p for e in ctx.tenant_tables if e.strategy != "root"
            and (p := pin_step(ctx, e)) is not None]
    return StagePlan("index", tuple(_unique_ids([*pins, *steps])), tuple(notes))


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
