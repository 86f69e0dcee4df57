"""The planner: (catalog, playbook) -> Plan. Each stage module decides its steps; this
module orders them and collects the risks a reviewer must see. Nothing executes here."""

from __future__ import annotations

from collections.abc import Sequence

from rls_migrate.catalog import Catalog
from rls_migrate.gcpause import without_cyclic_gc
from rls_migrate.playbook import Playbook
from rls_migrate.playbook_check import check_against_catalog
from rls_migrate.stages import PLANNERS
from rls_migrate.stages.common import PlanContext
from rls_migrate.stages.prepare import check_roles
from rls_migrate.steps import STAGES, Plan


def build_plan(
    catalog: Catalog,
    playbook: Playbook,
    stages: Sequence[str] | None = None,
    *,
    source: str = "playbook",
) -> Plan:
    """Plan the given stages (all by default). Raises PlaybookError when the playbook does
    not match the catalog."""
    with without_cyclic_gc():
        check_against_catalog(playbook, catalog, source)
        ctx = PlanContext(catalog, playbook)
        wanted = list(stages) if stages else list(STAGES)
        stage_plans = tuple(PLANNERS[name](ctx) for name in STAGES if name in wanted)
        return Plan(stage_plans, tuple(global_risks(ctx)), playbook.options.lock_timeout)


def global_risks(ctx: PlanContext) -> list[str]:
    """What the reviewer must know that is not one step's business."""
    risks: list[str] = [f.message for f in check_roles(ctx)]
    tenant = {e.qname: e for e in ctx.tenant_tables}
    for view in ctx.catalog.views.values():
        over = [str(q) for q in view.depends_on if q in tenant]
        if over and (view.kind == "materialized" or not view.security_invoker):
            how = ("a materialized view stores rows outside RLS" if view.kind == "materialized"
                   else "it runs with its owner's rights (not security_invoker)")
            fix = ("" if view.kind == "materialized" or ctx.catalog.major < 15 else
                   f": ALTER VIEW {view.qname} SET (security_invoker = true)")
            risks.append(f"view {view.qname} over {', '.join(over)} bypasses RLS: {how}{fix}")
    for entry in ctx.tenant_tables:
        for unique in ctx.global_uniques(entry):
            risks.append(
                f"{entry.qname}: {unique} is global: an insert reveals that another tenant "
                f"already has the value; consider tenant_unique: [[{unique.suggestion}]] "
                "(unique within each tenant)")
        if entry.table.primary_key is None and entry.added:
            risks.append(f"{entry.qname} has no primary key: backfilled by physical ranges")
    for fn in ctx.catalog.functions:
        if fn.security_definer and any(e.qname.name in fn.source for e in ctx.tenant_tables):
            risks.append(f"SECURITY DEFINER function {fn.schema}.{fn.name}({fn.signature}) may "
                         "read tenant tables with its owner's rights (RLS bypassed)")
    return risks
