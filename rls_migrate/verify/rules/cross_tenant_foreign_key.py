"""cross-tenant-foreign-key: a foreign key between tenant tables without the tenant column.

Problem: foreign-key checks are not filtered by RLS. A row of tenant A may reference tenant
B's row (the check finds it), and an insert that fails on a missing key tells A whether B's
key exists. The foreign key through which a derived table gets its tenant (its playbook
parent) is safe: the sync trigger reads the parent as the application role, so a foreign
parent gives no tenant and the policy refuses the row. Other foreign keys are not.

Solution: a composite foreign key ``(tenant_col, ref_id) REFERENCES parent (tenant_col, id)``
(it needs a unique key on the parent's ``(tenant_col, id)``), or a trigger that checks the
referenced row belongs to the same tenant.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for entry in ctx.entries:
        if entry.table.is_partition:
            continue
        name = str(entry.qname)
        risky = []
        for fk in entry.table.foreign_keys:
            if fk.ref_table not in ctx.tenant_names:
                continue  # global reference data
            if entry.column in fk.columns:
                continue  # tenant-scoped (or the tenant key itself)
            parent = entry.plan.parent
            if parent is not None and parent.qname == fk.ref_table and \
                    tuple(parent.columns) == fk.columns:
                continue  # the tenant comes through it: the sync trigger guards it
            risky.append(f"{fk.name} ({', '.join(fk.columns)}) -> {fk.ref_table}")
        if risky:
            yield RULE.problem(name, "; ".join(risky) + ": a row may reference another "
                               "tenant's row, and a failed insert reveals that it exists")
        else:
            yield RULE.ok(name)


RULE = Rule("cross-tenant-foreign-key", "warning",
            "a foreign key between tenant tables that does not include the tenant column",
            __doc__ or "", column="reveals", check=check)
