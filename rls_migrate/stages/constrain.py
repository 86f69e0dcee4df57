"""constrain: NOT NULL on the tenant column without a long lock, and the tenant foreign key
validated without blocking writes.

``CHECK (col IS NOT NULL) NOT VALID`` (instant) -> ``VALIDATE CONSTRAINT`` (SHARE UPDATE
EXCLUSIVE: reads and writes go on while it scans) -> ``SET NOT NULL`` (PostgreSQL 12+ skips
the scan because the valid check proves it) -> drop the check."""

from __future__ import annotations

from psycopg import sql

from rls_migrate.sqlcompose import compose, identifier
from rls_migrate.stages.add_column import tenant_fk_name
from rls_migrate.stages.common import (
    PlanContext,
    TenantTable,
    column_not_null_check,
    constraint_exists_check,
    object_name,
    rows_estimate,
)
from rls_migrate.steps import Estimate, Later, Lock, StagePlan, Step


def not_null_check_name(entry: TenantTable) -> str:
    return object_name("", entry.qname, f"_{entry.column}_rlsm_not_null")


def plan(ctx: PlanContext) -> StagePlan:
    steps: list[Step] = []
    notes: list[str] = []
    for entry in ctx.tenant_tables:
        column = entry.table.column(entry.column)
        # Columns the toolkit adds are always planned (done checks make reruns no-ops and
        # rollback needs the steps); an existing key column already NOT NULL needs nothing.
        already_not_null = not entry.added and column is not None and column.not_null
        if ctx.playbook.keeps_nullable(entry.qname):
            plan_ = entry.plan
            why = ("nullable: true" if plan_.nullable else
                   "a hint whose orphans are skipped (set nullable: false to change that)")
            notes.append(f"{entry.qname}: {entry.column} stays nullable ({why}): rows without "
                         "a tenant are invisible to every tenant and seen by admin roles; "
                         "verify reports them")
        elif not already_not_null:
            steps += _not_null_steps(entry)
        if entry.added and not (entry.table.is_partitioned and ctx.catalog.major < 18):
            steps.append(_validate_fk_step(entry))
    return StagePlan("constrain", tuple(steps), tuple(notes))


def _not_null_steps(entry: TenantTable) -> list[Step]:
    """Check NOT VALID, validate it, SET NOT NULL, drop the check. The statements are built
    when first read (``plan`` in text form never reads them)."""
    ident = entry.ident
    col = identifier(entry.column)
    check = not_null_check_name(entry)
    check_ident = identifier(check)

    def not_null() -> sql.Composed:
        return column_not_null_check(entry.qname, entry.column)

    return [
        Step(
            id=f"not_null_check:{entry.qname}",
            stage="constrain",
            kind="add_check",
            table=entry.qname,
            description=f"CHECK ({entry.column} IS NOT NULL) NOT VALID: new rows are checked "
                        "at once, old rows are not scanned",
            statements=Later(lambda: (compose(
                "ALTER TABLE {} ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID",
                ident, check_ident, col),)),
            lock=Lock.ACCESS_EXCLUSIVE,
            done_check=Later(lambda: compose("SELECT ({}) OR ({})",
                not_null(), constraint_exists_check(entry.qname, check))),
            inverse=Later(lambda: (compose("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
                ident, check_ident),)),
            inverse_lock=Lock.ACCESS_EXCLUSIVE,
            estimate=Estimate(seconds=0.01),
        ),
        Step(
            id=f"validate_not_null:{entry.qname}",
            stage="constrain",
            kind="validate_constraint",
            table=entry.qname,
            description="VALIDATE the check: one scan, reads and writes go on",
            statements=Later(lambda: (compose("ALTER TABLE {} VALIDATE CONSTRAINT {}",
                ident, check_ident),)),
            lock=Lock.SHARE_UPDATE_EXCLUSIVE,
            done_check=Later(lambda: compose("SELECT ({}) OR ({})",
                not_null(), constraint_exists_check(entry.qname, check, validated=True))),
            estimate=rows_estimate(entry.table),
        ),
        Step(
            id=f"set_not_null:{entry.qname}",
            stage="constrain",
            kind="set_not_null",
            table=entry.qname,
            description=f"SET NOT NULL on {entry.column}: no scan, the valid check proves it",
            statements=Later(lambda: (compose("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL",
                ident, col),)),
            lock=Lock.ACCESS_EXCLUSIVE,
            done_check=Later(not_null),
            inverse=Later(lambda: (compose("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL",
                ident, col),)),
            inverse_lock=Lock.ACCESS_EXCLUSIVE,
            estimate=Estimate(seconds=0.01),
        ),
        Step(
            id=f"drop_not_null_check:{entry.qname}",
            stage="constrain",
            kind="drop_check",
            table=entry.qname,
            description="drop the now redundant check",
            statements=Later(lambda: (compose("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
                ident, check_ident),)),
            lock=Lock.ACCESS_EXCLUSIVE,
            done_check=Later(lambda: compose("SELECT ({}) AND NOT ({})",
                not_null(), constraint_exists_check(entry.qname, check))),
            estimate=Estimate(seconds=0.01),
        ),
    ]


def _validate_fk_step(entry: TenantTable) -> Step:
    fk = tenant_fk_name(entry)
    return Step(
        id=f"validate_tenant_fk:{entry.qname}",
        stage="constrain",
        kind="validate_constraint",
        table=entry.qname,
        description=f"VALIDATE the tenant foreign key {fk}: reads and writes go on",
        statements=Later(lambda: (compose("ALTER TABLE {} VALIDATE CONSTRAINT {}",
            entry.ident, identifier(fk)),)),
        lock=Lock.SHARE_UPDATE_EXCLUSIVE,
        done_check=Later(lambda: constraint_exists_check(entry.qname, fk, validated=True)),
        estimate=rows_estimate(entry.table),
    )
