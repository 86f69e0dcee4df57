"""prepare: the toolkit's schema, and the checks that must pass before anything changes.

Refuses when the application role is a superuser or has BYPASSRLS (RLS never applies to
it), and explains what to do when it owns tenant tables (owners bypass RLS unless the
table has FORCE ROW LEVEL SECURITY)."""

from __future__ import annotations

import dataclasses

from psycopg import sql

from rls_migrate.sqlcompose import identifier
from rls_migrate.stages.common import TOOLKIT_SCHEMA, PlanContext, exists_sql
from rls_migrate.steps import Lock, StagePlan, Step


@dataclasses.dataclass(frozen=True)
class Finding:
    """A prerequisite problem: ``blocking`` ones stop ``apply``; others are risks."""

    code: str
    message: str
    blocking: bool


def check_roles(ctx: PlanContext) -> list[Finding]:
    findings: list[Finding] = []
    app = ctx.playbook.roles.app
    role = ctx.catalog.role(app)
    if role is None:
        findings.append(Finding("app-role-missing", f"the application role {app!r} does not "
                                "exist in the database (roles.app)", True))
        return findings
    if role.superuser:
        findings.append(Finding(
            "app-role-superuser",
            f"the application role {app!r} is a superuser: superusers bypass every RLS policy. "
            "Connect the application as a separate role without SUPERUSER "
            f"(ALTER ROLE {app} NOSUPERUSER, or a new LOGIN role granted the table privileges)",
            True))
    if role.bypassrls:
        findings.append(Finding(
            "app-role-bypassrls",
            f"the application role {app!r} has BYPASSRLS: policies never apply to it. "
            f"Run ALTER ROLE {app} NOBYPASSRLS (keep BYPASSRLS for admin tooling roles only)",
            True))
    tenant_names = {t.qname for t in ctx.tenant_tables}
    owned = [t.qname for t in ctx.catalog.owned_by(app) if t.qname in tenant_names]
    if owned:
        force_all = ctx.playbook.options.enforce.force_rls
        names = ", ".join(str(q) for q in owned[:8]) + (" ..." if len(owned) > 8 else "")
        findings.append(Finding(
            "app-role-owner",
            f"the application role {app!r} owns {len(owned)} tenant table(s) ({names}): table "
            "owners bypass RLS. Either move ownership to a separate migration role "
            f"(ALTER TABLE ... OWNER TO <owner>) and grant {app} the DML privileges, or set "
            "options.enforce.force_rls: true so FORCE ROW LEVEL SECURITY applies policies to the "
            "owner too" + (" (set: the plan forces RLS)" if force_all else ""),
            not force_all))
    for admin in ctx.playbook.roles.admin:
        admin_role = ctx.catalog.role(admin)
        if admin_role is None:
            findings.append(Finding("admin-role-missing", f"admin role {admin!r} does not exist",
                                    True))
        elif ctx.playbook.roles.admin_mode == "bypassrls" and not (
            admin_role.bypassrls or admin_role.superuser
        ):
            findings.append(Finding(
                "admin-role-no-bypass",
                f"roles.admin_mode is bypassrls but {admin!r} lacks BYPASSRLS: "
                f"ALTER ROLE {admin} BYPASSRLS (as a superuser), or use admin_mode: policy", True))
    return findings


def plan(ctx: PlanContext) -> StagePlan:
    schema = identifier(TOOLKIT_SCHEMA)
    steps = [
        Step(
            id="prepare:schema",
            stage="prepare",
            kind="upgrade_schema",
            table=None,
            description=f"create or upgrade the {TOOLKIT_SCHEMA} schema (journal, checkpoints, "
                        "samples; versioned with Alembic) and keep it private",
            statements=(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema),
                sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(schema),
            ),
            lock=Lock.NONE,
            done_check=exists_sql(sql.SQL(
                "SELECT 1 FROM pg_namespace WHERE nspname = {}").format(
                    sql.Literal(TOOLKIT_SCHEMA))),
            why="the journal makes every later stage resumable and reversible",
        ),
    ]
    notes = tuple(f"{'BLOCKS' if f.blocking else 'risk'}: {f.message}" for f in check_roles(ctx))
    return StagePlan("prepare", tuple(steps), notes)
