"""global-unique-constraint: a unique constraint on a tenant table without the tenant column.

Problem: unique checks are not filtered by RLS. With ``UNIQUE (email)`` on a shared table, a
tenant that inserts an email another tenant already has gets a duplicate-key error: it learns
that the value exists elsewhere (and cannot use it).

Solution: make the constraint tenant-scoped: ``tenant_unique: [[email]]`` for the table in the
playbook, which builds ``UNIQUE (tenant_col, email)`` in the index stage; drop the global one
once the application no longer relies on it.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for entry in ctx.entries:
        if entry.table.is_partition:
            continue  # the parent's constraint is reported once
        name = str(entry.qname)
        global_ = entry.global_uniques
        if global_:
            listed = "; ".join(f"{c.name} UNIQUE ({', '.join(c.columns)})" for c in global_)
            yield RULE.problem(name, f"{listed}: an insert reveals that another tenant has the "
                               "value (tenant_unique in the playbook)")
        else:
            yield RULE.ok(name)


RULE = Rule("global-unique-constraint", "warning",
            "a unique constraint that spans tenants reveals other tenants' values",
            __doc__ or "", column="reveals", check=check)
