"""view-bypasses-rls: a view over tenant tables runs with its owner's rights.

Problem: a view reads its tables with the rights of the view's owner, not of the role that
queries it. When the owner is the tables' owner (the usual case), a superuser or a BYPASSRLS
role, RLS does not filter what the view returns: tenant A reads tenant B's rows through the
view. A materialized view is worse: it stores every tenant's rows and has no RLS at all.

Solution: on PostgreSQL 15 and later, ``ALTER VIEW v SET (security_invoker = true)``: the
view then reads its tables as the querying role, and the policies apply. Before 15, give the
view an owner that RLS applies to (``ALTER VIEW v OWNER TO app_user``: not a superuser, no
BYPASSRLS, not the owner of its tables unless they FORCE row-level security), or revoke the
application role's access to the view (a SECURITY INVOKER function can replace it). For a
materialized view: revoke it from the application role, or replace it with a view.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.catalog import QualifiedName
from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for view in ctx.catalog.views.values():
        over = [str(q) for q in view.depends_on if q in ctx.tenant_names]
        if not over:
            continue
        name = str(view.qname)
        tables = ", ".join(over)
        if view.kind == "materialized":
            yield RULE.problem(name, f"materialized view over {tables}: it stores every "
                               "tenant's rows outside RLS (revoke it from the application role)",
                               "view")
        elif view.security_invoker:
            yield RULE.ok(name, "view", "security_invoker: RLS applies as the querying role")
        elif _owner_subject_to_rls(ctx, view.owner,
                                   tuple(q for q in view.depends_on if q in ctx.tenant_names)):
            yield RULE.ok(name, "view", f"its owner {view.owner!r} is subject to RLS on "
                          f"{tables}: the policies apply as that role")
        else:
            fix = (f"ALTER VIEW {name} SET (security_invoker = true)"
                   if ctx.catalog.major >= 15 else
                   f"security_invoker needs PostgreSQL 15 (this is {ctx.catalog.major}): "
                   f"ALTER VIEW {name} OWNER TO the application role (or another role "
                   "that RLS applies to), or revoke the view from the application role")
            yield RULE.problem(name, f"view over {tables} runs with its owner's rights "
                               f"({view.owner!r}): it returns every tenant's rows to the "
                               f"application. {fix}", "view")


def _owner_subject_to_rls(ctx: VerifyContext, owner: str,
                          tables: tuple[QualifiedName, ...]) -> bool:
    """Whether RLS filters what ``owner`` reads from ``tables`` (tenant tables): RLS is on,
    and the owner is not a superuser or BYPASSRLS role, and owning (directly or by membership) none of them
    unless it forces row-level security."""
    roles = ctx.catalog.role_memberships(owner)
    if any((role := ctx.catalog.roles.get(name)) is not None
           and (role.superuser or role.bypassrls) for name in roles):
        return False
    for qname in tables:
        table = ctx.catalog.tables.get(qname)
        if table is None:
            continue
        if not table.rls_enabled or (table.owner in roles and not table.rls_forced):
            return False
    return True


RULE = Rule("view-bypasses-rls", "error",
            "a view over tenant tables without security_invoker (or a materialized view)",
            __doc__ or "", check=check)
