"""The index usage a table's twins are decided from, pinned in the journal when the index
stage first runs on the table.

A tenant-leading twin is planned for an index used at least ``twin_min_scans`` times
(``pg_stat_user_indexes.idx_scan``). That counter is no input a rerun can trust: the stage's
own work moves it (validating a composite foreign key reads the child's ``(parent_id)``
index), so does a rollback (it validates the original keys again), and PostgreSQL 14's
statistics collector reports scans up to half a second late. A plan built from the live
counter therefore changed under its own feet: a second ``apply --stage index`` built twins
the first one had not planned. The first step of the stage on each table records the usage
the plan was made from (``pin_index_usage:<table>``, its journal details); every later plan
(a rerun, a resume after a kill, a rollback, ``plan``) decides from that record, so the stage
plans the same steps before and after it ran. The record is journal history, not a change to
the database: a rollback keeps it (the indexes the stage builds again are the ones it built),
``rollback --to none --drop-schema`` forgets it. An index created after the pin is judged by
its live usage.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql

from rls_migrate.catalog import Index
from rls_migrate.executor import Executor, _query
from rls_migrate.outcomes import StepOutcome, now
from rls_migrate.sqlcompose import compose
from rls_migrate.stages.common import PlanContext, TenantTable
from rls_migrate.stages.index.shapes import is_ours
from rls_migrate.steps import Estimate, Later, Step

KIND = "pin_index_usage"


def usage_decided(entry: TenantTable, idx: Index) -> bool:
    """Whether ``idx`` is an index whose twin depends on its usage (a plain non-unique btree
    index of the user's that does not lead with the tenant)."""
    return not (idx.is_primary or idx.parent_index or idx.method != "btree" or not idx.is_valid
                or idx.name in entry.plan.skip_indexes or is_ours(idx.name)
                or not idx.columns or idx.columns[0] == entry.column or None in idx.columns
                or idx.is_unique)


def scans_of(ctx: PlanContext, entry: TenantTable, idx: Index) -> int | None:
    """The usage to decide ``idx``'s twin from: the pinned one, else the live counter."""
    pinned = ctx.catalog.usage_pins.get(entry.qname, {})
    return pinned[idx.name] if idx.name in pinned else idx.scans


def pin_step(ctx: PlanContext, entry: TenantTable) -> Step | None:
    # What was pinned stays in the step (an index the stage dropped since included), so
    # the plan is the same before and after the stage ran.
    usage = dict(ctx.catalog.usage_pins.get(entry.qname, {}))
    for idx in entry.table.indexes:
        if usage_decided(entry, idx) and idx.name not in usage:
            usage[idx.name] = idx.scans
    if not usage:
        return None  # nothing on this table depends on statistics
    listed = ", ".join(f"{name} ({'unknown' if n is None else n})"
                       for name, n in sorted(usage.items()))
    return Step(
        id=f"{KIND}:{entry.qname}",
        stage="index",
        kind=KIND,
        table=entry.qname,
        description=f"record the usage its twins are decided from: {listed}",
        # Read only: the handler journals what it returns (the outcome's details).
        statements=Later(lambda: (compose("SELECT {}::jsonb AS usage",
                                          sql.Literal(json.dumps(usage, sort_keys=True))),)),
        # No done check in the database: the journal has it done (or not). No inverse:
        # the record is history, and a rollback plans from it like the apply did.
        estimate=Estimate(seconds=0.001),
        why="idx_scan moves with the stage's own work (validating foreign keys reads "
            "indexes) and PostgreSQL 14 reports it late: a rerun, a resume and a rollback "
            "decide from this record, not from the live counter",
    )


@Executor.register(KIND)
def _pin(executor: Executor, step: Step) -> StepOutcome:
    started = now()

    def body(cur: psycopg.Cursor[Any]) -> Any:
        cur.execute(_query(step.statements[0]))
        row = cur.fetchone()
        return row[0] if row else {}

    usage, attempts = executor.run_in_transaction(step, body)
    return StepOutcome.finish(step, "done", started=started, attempts=attempts,
                              details={"usage": usage})
