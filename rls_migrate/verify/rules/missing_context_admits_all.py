"""missing-context-admits-all: a policy lets every row through when no tenant is set.

Problem: a policy such as ``current_setting('app.tenant_id', true) IS NULL OR tenant_id =
...`` (often written so that admin scripts and migrations "just work") admits every row of
every tenant whenever the context is missing: exactly the forgotten code path (a cron job, a
webhook, a new endpoint) that RLS is there to catch. A missing context must mean no rows.

Solution: drop the ``IS NULL OR`` (or ``= '' OR``) branch. Give the code paths that must see
every tenant a role of their own (``roles.admin``: an admin policy or BYPASSRLS) instead.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.verify.expressions import admits_missing_context
from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for table in ctx.catalog.tables.values():
        open_ = [p.name for p in table.policies
                 if any(admits_missing_context(e) for e in p.expressions)]
        if open_:
            yield RULE.problem(str(table.qname), f"{', '.join(open_)}: a top-level OR admits "
                               "every row when the tenant setting is missing or empty")
        elif table.qname in ctx.tenant_names and table.policies:
            yield RULE.ok(str(table.qname))


RULE = Rule("missing-context-admits-all", "error",
            "a policy admits every row when the tenant context is missing", __doc__ or "",
            column="lints", check=check)
