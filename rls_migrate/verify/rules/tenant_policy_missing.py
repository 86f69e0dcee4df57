"""tenant-policy-missing: a tenant table without the tenant policy.

Problem: the toolkit protects each tenant table with a RESTRICTIVE policy
``rls_migrate_tenant`` for the application role. Without it, nothing narrows the rows the
application sees to its tenant: with RLS enabled and no policy at all every row is hidden
(an outage); with only permissive policies every row they grant is visible (a leak).

Solution: ``rls-migrate apply PLAYBOOK --stage observe`` (installs it in observe mode), then
``--stage enforce``. If someone dropped it by hand, the same two commands put it back.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.stages.policies import TENANT_POLICY
from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for entry in ctx.entries:
        name = str(entry.qname)
        if any(p.name == TENANT_POLICY for p in entry.table.policies):
            yield RULE.ok(name)
        elif not entry.table.policies:
            yield RULE.problem(name, "no policy at all: "
                               + ("every row is hidden from every non-owner role"
                                  if entry.table.rls_enabled else
                                  "nothing restricts the application to its tenant"))
        else:
            others = ", ".join(p.name for p in entry.table.policies)
            yield RULE.problem(name, f"no {TENANT_POLICY} policy (only {others}): nothing "
                               "guarantees the application sees its tenant only")


RULE = Rule("tenant-policy-missing", "error", "a tenant table without the tenant policy",
            __doc__ or "", column="policy", check=check)
