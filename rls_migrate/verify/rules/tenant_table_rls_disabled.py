"""tenant-table-rls-disabled: a tenant table without row-level security.

Problem: without ``ENABLE ROW LEVEL SECURITY`` PostgreSQL ignores every policy on the
table: every role with privileges reads and writes every tenant's rows, whatever the policies
say. A partition counts on its own: a query that names the partition uses the partition's
setting, not its parent's.

Solution: ``rls-migrate apply PLAYBOOK --stage observe`` then ``--stage enforce`` (they enable
it, with policies, table by table under lock_timeout). A partition created after the
migration needs the same: run plan and apply --stage observe and enforce again.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for entry in ctx.entries:
        if entry.table.rls_enabled:
            yield RULE.ok(str(entry.qname))
        else:
            yield RULE.problem(str(entry.qname), "row-level security is not enabled: every "
                               "policy is ignored and every role with privileges sees every "
                               "tenant's rows (apply --stage observe, then enforce)")


RULE = Rule("tenant-table-rls-disabled", "error",
            "a tenant table (or partition) without ENABLE ROW LEVEL SECURITY", __doc__ or "",
            column="rls", check=check)
