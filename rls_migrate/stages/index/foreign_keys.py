"""Tenant-consistent foreign keys (``options.index.tenant_foreign_keys``): composite keys
``(tenant, parent_id) -> parent (tenant, id)``, added NOT VALID then validated, so the database
guarantees that a child's tenant is its parent's."""

from __future__ import annotations

import dataclasses

from rls_migrate.catalog import ForeignKey, QualifiedName
from rls_migrate.sqlcompose import compose, identifier
from rls_migrate.stages.common import (
    PlanContext,
    TenantTable,
    columns_sql,
    constraint_exists_check,
    object_name,
    rows_estimate,
)
from rls_migrate.stages.index.shapes import TENANT_UNIQUE_SUFFIX
from rls_migrate.stages.index.uniques import deferrable_sql
from rls_migrate.steps import Estimate, Lock, Step


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


def fk_steps(fks: list[TenantForeignKey]) -> list[Step]:
    adds: list[Step] = []
    validates: list[Step] = []
    for tfk in fks:
        child, fk, parent = tfk.child, tfk.fk, tfk.parent
        name = identifier(tfk.name)
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
                columns_sql(tfk.key), deferrable_sql(fk.definition)),),
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
