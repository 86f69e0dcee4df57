"""permissive-policy-always-true: a permissive ``USING (true)`` left in place.

Problem: a permissive policy whose ``USING`` is ``true`` grants every row to the roles it
names. During observe that is the point (the baseline keeps every query's result unchanged);
after enforcement it means every role it applies to, other than those restricted by a
restrictive policy, still reads every tenant's rows. It is kept on purpose with
``options.enforce.baseline: keep`` (roles other than the application role keep their
access); admin policies for ``roles.admin`` are expected and not reported.

Solution: ``options.enforce.baseline: drop`` and ``rls-migrate apply --stage enforce`` (the
baseline then grants the application role its tenant only), or replace the policy with one
that filters; give roles that must see everything BYPASSRLS or an explicit admin policy.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.stages.policies import TENANT_POLICY
from rls_migrate.verify.expressions import calls_toolkit, is_always_true
from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    admins = set(ctx.playbook.roles.admin)
    for table in ctx.catalog.tables.values():
        if not table.rls_enabled:
            continue
        tenant = next((p for p in table.policies if p.name == TENANT_POLICY), None)
        if tenant is not None and calls_toolkit(tenant.using):
            continue  # observe mode: the baseline is meant to be there
        wide = [p for p in table.policies if p.permissive and is_always_true(p.using)
                and not set(p.roles) <= admins]
        name = str(table.qname)
        if wide:
            listed = "; ".join(f"{p.name} TO {', '.join(p.roles)}" for p in wide)
            yield RULE.problem(name, f"{listed}: USING (true), every row for "
                               + ("every role but the application role"
                                  if tenant is not None else "those roles"))
        elif table.qname in ctx.tenant_names:
            yield RULE.ok(name)


RULE = Rule("permissive-policy-always-true", "warning",
            "a permissive USING (true) policy left after enforcement", __doc__ or "",
            column="lints", check=check)
