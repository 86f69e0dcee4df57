"""security-definer-function: a SECURITY DEFINER function reads tenant tables unfiltered.

Problem: a ``SECURITY DEFINER`` function runs with its owner's rights. When that owner is a
superuser, has BYPASSRLS, or owns the tenant tables it reads (without FORCE ROW LEVEL
SECURITY), RLS does not filter inside the function: any tenant that may call it reads (or
writes) every tenant's rows through it.

Solution: make it ``SECURITY INVOKER`` where it does not need the owner's rights
(``ALTER FUNCTION f(...) SECURITY INVOKER``); otherwise give it an owner that RLS applies
to, make it filter by the current tenant itself, and revoke EXECUTE from roles that must not
call it. The check matches table names in the function's source text, so a function that
builds SQL dynamically may be missed, and one that merely mentions a name is reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    tables = {e.qname: e.table for e in ctx.entries}
    for fn in ctx.catalog.functions:
        if not fn.security_definer:
            continue
        subject = f"{fn.schema}.{fn.name}({fn.signature})"
        read = [(q, t) for q, t in tables.items()
                if re.search(rf"(?<![\w$]){re.escape(q.name)}(?![\w$])", fn.source)]
        if not read:
            continue
        unfiltered = [str(q) for q, t in read if ctx.bypasses_rls(fn.owner, t)]
        if unfiltered:
            yield RULE.problem(subject, f"SECURITY DEFINER, owned by {fn.owner!r}, which RLS "
                               f"does not filter on {', '.join(unfiltered)}: callers read every "
                               "tenant's rows through it (make it SECURITY INVOKER)", "function")
        else:
            yield RULE.ok(subject, "function",
                          f"its owner {fn.owner!r} is filtered by RLS on the tables it names")


RULE = Rule("security-definer-function", "error",
            "a SECURITY DEFINER function whose owner reads tenant tables unfiltered",
            __doc__ or "", check=check)
