"""policy-rls-disabled: policies on a table whose row-level security is off.

Problem: policies do nothing until ``ALTER TABLE t ENABLE ROW LEVEL SECURITY``. A table with
policies and RLS off looks protected in a schema review and is not: every role with
privileges sees every row.

Solution: enable it (``ALTER TABLE t ENABLE ROW LEVEL SECURITY``: an ACCESS EXCLUSIVE lock,
take it under lock_timeout), or drop the policies if the table is meant to be shared. For a
tenant table, ``rls-migrate apply --stage observe`` enables it safely.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for table in ctx.catalog.tables.values():
        name = str(table.qname)
        if table.policies and not table.rls_enabled:
            names = ", ".join(p.name for p in table.policies)
            yield RULE.problem(name, f"policies {names} exist but row-level security is "
                               "disabled: none of them applies")
        elif table.qname in ctx.tenant_names:
            yield RULE.ok(name)


RULE = Rule("policy-rls-disabled", "error", "policies on a table with RLS disabled",
            __doc__ or "", column="lints", check=check)
