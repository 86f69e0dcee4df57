"""rls-no-policy: row-level security enabled and no policy.

Problem: with RLS on and no policy, every row is hidden from every role but the owner,
superusers and BYPASSRLS roles (default deny). It is rarely meant: usually a policy was
dropped or never created, and the application reads nothing.

Solution: add the policy the table needs, or ``ALTER TABLE t DISABLE ROW LEVEL SECURITY`` if
the table is shared. Tenant tables are reported by tenant-policy-missing instead.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for table in ctx.catalog.tables.values():
        if table.qname in ctx.tenant_names:
            continue
        if table.rls_enabled and not table.policies:
            yield RULE.problem(str(table.qname), "RLS is enabled with no policy: every row is "
                               "hidden from every role but the owner")


RULE = Rule("rls-no-policy", "warning", "RLS enabled on a table with no policy",
            __doc__ or "", column="lints", check=check)
