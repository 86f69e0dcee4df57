"""tenant-policy-mismatch: the tenant policies are not the enforced ones.

Problem: after the enforce stage every tenant table has, for the application role, a
RESTRICTIVE policy ``rls_migrate_tenant`` for ALL commands with ``USING`` and ``WITH CHECK``
both ``<tenant column> = (SELECT <current tenant>)``; where observe added the permissive
baseline and the playbook drops it (``options.enforce.baseline: drop``), the baseline grants
the application role its tenant only, and admin roles (``roles.admin_mode: policy``) have a
permissive ``rls_migrate_admin`` policy. Anything else is a half-finished flip or a hand
edit: still in observe mode (the policy records other tenants' rows instead of hiding them),
a ``WITH CHECK`` that lets a row be written into another tenant, a policy for the wrong role,
or admins who will see nothing.

Solution: ``rls-migrate apply PLAYBOOK --stage enforce`` makes every table match (it reruns
the steps whose done check fails). To go back, ``rollback --to observe``.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.catalog import Policy
from rls_migrate.stages.common import TenantTable
from rls_migrate.stages.policies import ADMIN_POLICY, BASELINE_POLICY, TENANT_POLICY
from rls_migrate.verify.expressions import calls_toolkit, is_always_true, is_enforced_match
from rls_migrate.verify.model import Finding, Rule, VerifyContext


def _problems(ctx: VerifyContext, entry: TenantTable, policy: Policy) -> list[str]:
    setting = ctx.playbook.tenant.setting
    if any(calls_toolkit(e) for e in policy.expressions):
        return ["still in observe mode: other tenants' rows are recorded, not hidden "
                "(apply --stage enforce)"]
    out: list[str] = []
    if policy.permissive:
        out.append("it is PERMISSIVE: other permissive policies can widen it (it must be "
                   "RESTRICTIVE)")
    if policy.command != "ALL":
        out.append(f"it covers {policy.command} only, not every command")
    if ctx.app_role not in policy.roles and "public" not in policy.roles:
        out.append(f"it applies to {', '.join(policy.roles)}, not to the application role "
                   f"{ctx.app_role!r}")
    if not is_enforced_match(policy.using, entry.column, setting):
        out.append(f"USING is {policy.using!r}, not {entry.column} = (SELECT <{setting}>)")
    if policy.with_check is not None and not is_enforced_match(policy.with_check, entry.column,
                                                               setting):
        out.append(f"WITH CHECK is {policy.with_check!r}: rows can be written into another "
                   "tenant")
    return out


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for entry in ctx.entries:
        name = str(entry.qname)
        policies = {p.name: p for p in entry.table.policies}
        tenant = policies.get(TENANT_POLICY)
        if tenant is None:
            yield RULE.skip(name, "no tenant policy (tenant-policy-missing)")
            continue
        problems = _problems(ctx, entry, tenant)
        plan = ctx.enforcement(entry)
        baseline = policies.get(BASELINE_POLICY)
        if plan.replace_baseline and baseline is not None and not calls_toolkit(tenant.using) \
                and ("public" in baseline.roles or is_always_true(baseline.using)):
            problems.append(f"{BASELINE_POLICY} still grants {', '.join(baseline.roles)} every "
                            "row (options.enforce.baseline: drop)")
        if plan.admin_policy and ADMIN_POLICY not in policies and not calls_toolkit(
                tenant.using):
            problems.append(f"no {ADMIN_POLICY} policy: the admin roles "
                            f"{', '.join(ctx.playbook.roles.admin)} see no row")
        if problems:
            yield RULE.problem(name, "; ".join(problems))
        else:
            yield RULE.ok(name)


RULE = Rule("tenant-policy-mismatch", "error",
            "the tenant policies are not the enforced ones (observe mode, wrong expression, "
            "role or command)", __doc__ or "", column="policy", check=check)
