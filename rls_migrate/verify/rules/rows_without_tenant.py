"""rows-without-tenant: rows whose tenant column is NULL.

Problem: a row without a tenant matches no tenant's ``col = <current tenant>``: once the
policies are enforced it is invisible to every tenant (the application loses it) and seen
only by the admin roles (``roles.admin``: their permissive policy) and roles that bypass
RLS. That is deliberate for a table the playbook keeps nullable (``nullable: true``: orphans
the backfill skipped, an optional ``account_id`` of the application's own), and a defect
anywhere else (constrain has not run, or rows were written without a tenant since).

Solution: give the rows a tenant or delete them (``rls-migrate plan`` lists them per table
with sample keys: NULL keys, NULL links, orphans); where they are meant to stay, keep
``nullable: true`` and make sure an admin role owns them. Then run constrain for the
tables that should be NOT NULL.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    counts = ctx.rows_without_tenant
    if counts is None:
        return
    admins = ", ".join(ctx.playbook.roles.admin) or "none declared in roles.admin"
    for entry in ctx.plan.tenant_tables:
        name = str(entry.qname)
        rows = counts.get(entry.qname)
        if rows is None:
            yield RULE.ok(name, message=f"{entry.column} is NOT NULL")
        elif rows == 0:
            yield RULE.ok(name, message=f"no row without {entry.column}")
        elif ctx.playbook.keeps_nullable(entry.qname):
            yield RULE.problem(name, f"{rows} row(s) without a tenant, kept nullable by the "
                               f"playbook: invisible to every tenant, seen by admin roles "
                               f"({admins})")
        else:
            yield RULE.problem(name, f"{rows} row(s) without a tenant although the playbook "
                               "wants NOT NULL: fix them (rls-migrate plan lists them), then "
                               "apply --stage constrain")


RULE = Rule("rows-without-tenant", "warning", "rows whose tenant column is NULL",
            __doc__ or "", check=check)
