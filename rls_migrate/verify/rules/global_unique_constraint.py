"""global-unique-constraint: a unique constraint or unique index on a tenant table without the
tenant column.

Problem: unique checks are not filtered by RLS. With ``UNIQUE (email)``, or a ``CREATE UNIQUE
INDEX index_articles_on_slug ON articles (slug)`` as Rails and Prisma emit (partial and
expression indexes too: ``(lower(email)) WHERE deleted_at IS NULL``), a tenant that inserts a
value another tenant already has gets a duplicate-key error: it learns that the value exists
elsewhere (and cannot use it).

Solution: make it tenant-scoped: ``tenant_unique: [[email]]`` for the table in the playbook
(or the index's name, ``tenant_unique: [[index_users_on_lower_email]]``, for an expression or
partial index), which builds the same uniqueness led by the tenant column in the index stage
and drops the global one.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for entry in ctx.entries:
        if entry.table.is_partition:
            continue  # the parent's constraint is reported once
        name = str(entry.qname)
        global_ = ctx.plan.global_uniques(entry)
        if global_:
            listed = "; ".join(str(u) for u in global_)
            hint = "; ".join(f"tenant_unique: [[{u.suggestion}]]" for u in global_)
            yield RULE.problem(name, f"{listed}: an insert reveals that another tenant has the "
                               f"value ({hint} in the playbook)")
        else:
            yield RULE.ok(name)


RULE = Rule("global-unique-constraint", "warning",
            "a unique constraint or index that spans tenants reveals other tenants' values",
            __doc__ or "", column="reveals", check=check)
