"""tenant-index-missing: no valid index leads with the tenant column.

Problem: once the policy adds ``tenant_col = <current tenant>`` to every query, a table
without an index that starts with the tenant column is read whole for every query of every
tenant: correct, and slower with every tenant you add. An INVALID index (a failed or killed
``CREATE INDEX CONCURRENTLY``) does not count; neither does a partial one.

Solution: ``rls-migrate apply PLAYBOOK --stage index`` builds ``(tenant)`` or
``(tenant, pk)`` concurrently (and rebuilds INVALID leftovers); a partitioned table gets an
index on each partition, attached to one on the parent.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for entry in ctx.entries:
        name = str(entry.qname)
        leading = [i for i in entry.table.indexes
                   if i.columns and i.columns[0] == entry.column and i.predicate is None]
        if any(i.is_valid for i in leading):
            yield RULE.ok(name)
        elif leading:
            yield RULE.problem(name, f"{leading[0].name} leads with {entry.column} but is "
                               "INVALID (a failed concurrent build): apply --stage index "
                               "rebuilds it")
        else:
            yield RULE.problem(name, f"no index starts with {entry.column}: every query reads "
                               "every tenant's rows (apply --stage index)")


RULE = Rule("tenant-index-missing", "error", "no valid index leads with the tenant column",
            __doc__ or "", column="index", check=check)
