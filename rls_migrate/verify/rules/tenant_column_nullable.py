"""tenant-column-nullable: the tenant column allows NULL.

Problem: a row whose tenant column is NULL belongs to no tenant: the enforced policy
(``col = <current tenant>``) hides it from every tenant, so the application silently loses
it, and nothing stops new rows without a tenant. The usual cause is orphan rows the backfill
skipped (``options.backfill.orphans: skip``), which left constrain unable to set NOT NULL.

A table the playbook keeps nullable (``nullable: true``) passes: rows-without-tenant
reports its rows instead.

Solution: decide about the rows without a tenant (``rls-migrate status`` lists orphans with
sample keys): delete them or give them a tenant, then ``rls-migrate apply PLAYBOOK --stage
constrain``.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for entry in ctx.entries:
        name = str(entry.qname)
        column = entry.table.column(entry.column)
        if column is None:
            yield RULE.problem(name, f"no column {entry.column!r} (apply --stage add-column)")
        elif column.not_null:
            yield RULE.ok(name)
        elif ctx.playbook.keeps_nullable(entry.qname):
            yield RULE.ok(name, message=f"{entry.column} is nullable by the playbook "
                          "(nullable: true); rows-without-tenant counts its rows")
        else:
            yield RULE.problem(name, f"{entry.column} is nullable: rows without a tenant are "
                               "invisible to every tenant (orphans? see rls-migrate status)")


RULE = Rule("tenant-column-nullable", "warning", "the tenant column is nullable",
            __doc__ or "", column="not-null", check=check)
