"""setting-read-per-row: a policy reads the tenant setting for every row.

Problem: ``current_setting('app.tenant_id')::bigint`` written straight into a policy is
evaluated for every row the query reads, and a comparison with it may not use the tenant
index. Wrapped in a scalar sub-select, ``(SELECT current_setting(...))``, it becomes an
InitPlan: evaluated once per statement, and the comparison can use an index.

Solution: write the policy as ``tenant_col = (SELECT NULLIF(current_setting('app.tenant_id',
true), '')::bigint)`` (what the toolkit's policies do), with ``ALTER POLICY``.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.verify.expressions import setting_read_per_row
from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for table in ctx.catalog.tables.values():
        slow = [p.name for p in table.policies
                if any(setting_read_per_row(e) for e in p.expressions)]
        if slow:
            yield RULE.problem(str(table.qname), f"{', '.join(slow)}: current_setting(...) is "
                               "read for every row (wrap it: (SELECT current_setting(...)))")
        elif table.qname in ctx.tenant_names and table.policies:
            yield RULE.ok(str(table.qname))


RULE = Rule("setting-read-per-row", "warning",
            "a policy reads current_setting() per row instead of once per statement",
            __doc__ or "", column="lints", check=check)
