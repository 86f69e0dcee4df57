"""What would let tenant rows past RLS: views over tenant tables that run with their
owner's rights, an unsupported key type, and an application role that owns tables or
bypasses RLS."""

from __future__ import annotations

from collections.abc import Mapping

from rls_migrate.catalog import QualifiedName, View, quote_ident
from rls_migrate.discover.model import SUPPORTED_KEY_TYPES, Classification, Finding, ViewReport
from rls_migrate.discover.state import Discovery


def view_reports(
    state: Discovery, tables: Mapping[QualifiedName, Classification]
) -> list[ViewReport]:
    reports: list[ViewReport] = []
    views = state.catalog.views
    for qname, view in views.items():
        # Views over views: follow them down to the tables.
        under: set[QualifiedName] = set()
        seen = {qname}
        todo = list(view.depends_on)
        while todo:
            dep = todo.pop()
            if dep in seen:
                continue
            seen.add(dep)
            if dep in views:
                todo.extend(views[dep].depends_on)
            else:
                top = state.top.get(dep, dep)
                found = tables.get(top)
                if found is not None and found.kind != "global":
                    under.add(top)
        if not under:
            continue
        bypasses, reason = _view_bypasses(state, view, under)
        reports.append(ViewReport(qname, view.kind, view.owner, view.security_invoker,
                                  tuple(sorted(under)), bypasses, reason))
    return reports


def _view_bypasses(
    state: Discovery, view: View, under: set[QualifiedName]
) -> tuple[bool, str]:
    if view.kind == "materialized":
        return True, ("a materialized view stores rows of every tenant and has no RLS: "
                      "revoke it from the application role or replace it")
    if view.security_invoker:
        return False, "security_invoker: RLS applies as the querying role"
    owner = state.catalog.roles.get(view.owner)
    memberships = state.catalog.role_memberships(view.owner)
    owns = sorted(q for q in under if state.nodes[q].owner in memberships)
    fix = ("ALTER VIEW ... SET (security_invoker = true)" if state.catalog.major >= 15
           else "security_invoker needs PostgreSQL 15: revoke the view from the "
                "application role or replace it with a function")
    if owner is not None and (owner.superuser or owner.bypassrls):
        what = "a superuser" if owner.superuser else "a BYPASSRLS role"
        return True, f"runs with the rights of its owner {view.owner}, {what}: {fix}"
    if owns:
        return True, (f"runs with the rights of its owner {view.owner}, who owns "
                      f"{', '.join(map(str, owns))} (RLS does not apply to owners "
                      f"without FORCE): {fix}")
    return False, (f"runs with the rights of {view.owner}, which is subject to RLS: "
                   f"policies apply as that role")


def findings(
    state: Discovery, tables: Mapping[QualifiedName, Classification], views: list[ViewReport]
) -> list[Finding]:
    found: list[Finding] = []
    if state.key_col.type not in SUPPORTED_KEY_TYPES:
        found.append(Finding(
            "key_type_unsupported", str(state.root),
            f"the tenant key {state.root}({state.key}) is {state.key_col.type}; the toolkit "
            f"supports {', '.join(SUPPORTED_KEY_TYPES)}"))
    for report in views:
        if report.bypasses_rls:
            found.append(Finding(
                "view_bypasses_rls", str(report.view),
                f"{'materialized view' if report.kind == 'materialized' else 'view'} "
                f"{report.view} reads tenant tables "
                f"{', '.join(map(str, report.tenant_tables))} and would bypass RLS: "
                f"{report.reason}"))
    role = state.app_role
    if role is None:
        return found
    info = state.catalog.roles.get(role)
    if info is None:
        found.append(Finding("app_role_missing", role,
                             f"application role {role} does not exist in the database"))
        return found
    if info.superuser:
        # Owner or not, RLS never applies to it: one warning says it all.
        found.append(Finding("app_role_superuser", role,
                             f"application role {role} is a superuser: RLS never applies "
                             f"to it; connect the application as an ordinary role"))
        return found
    if info.bypassrls:
        found.append(Finding("app_role_bypassrls", role,
                             f"application role {role} has BYPASSRLS: RLS never applies "
                             f"to it (ALTER ROLE {quote_ident(role)} NOBYPASSRLS)"))
    owners = state.catalog.role_memberships(role)
    for qname, c in tables.items():
        table = state.nodes[qname]
        if c.kind != "global" and table.owner in owners:
            found.append(Finding(
                "app_role_owns_table", str(qname),
                f"{qname} is owned by {table.owner}"
                + (f" (application role {role} is a member)" if table.owner != role
                   else " (the application role)")
                + ": RLS does not apply to the owner unless FORCE ROW LEVEL SECURITY; "
                  "give the tables a separate owner, or set force_rls"))
    return found
