"""``check``: the CI guard. Every table that holds tenant data must have enforced RLS.

Which tables: with a playbook, its tenant tables and their partitions, plus any other table
that holds the tenant column and that the playbook does not mark global or skip (a table
added since the migration); without one, every table (and partition) with a column named
``--column``. A table is *enforced* when row-level security is enabled, a policy filters on
its tenant column and none records instead (observe mode), nothing admits every row (a
permissive ``USING (true)`` not narrowed by a restrictive tenant policy, or ``... IS NULL OR``
when the context is missing), and the application role, when known, does not own it without
FORCE. One catalog snapshot; no data is read.

Example (CI)::

    rls-migrate check --dsn "$DATABASE_URL" --playbook playbooks/app.yaml
    rls-migrate check --dsn "$DATABASE_URL" --column org_id --app-role web
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from rls_migrate.catalog import Catalog, Policy, Table
from rls_migrate.connect import DSN_DEFAULT_HELP
from rls_migrate.playbook import Playbook, check_against_catalog
from rls_migrate.stages.common import PlanContext, with_partitions
from rls_migrate.verify.expressions import admits_missing_context, calls_toolkit, is_always_true


@dataclasses.dataclass(frozen=True)
class Offender:
    table: str
    column: str
    reasons: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class CheckResult:
    checked: tuple[str, ...]
    offenders: tuple[Offender, ...]

    @property
    def ok(self) -> bool:
        return not self.offenders

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": list(self.checked),
                "offenders": [dataclasses.asdict(o) for o in self.offenders]}


def _mentions(expr: str | None, column: str) -> bool:
    if expr is None:
        return False
    quoted = '"' + column.replace('"', '""') + '"'
    return quoted in expr or re.search(rf"(?<![\w\"$.]){re.escape(column)}(?![\w\"$])",
                                       expr) is not None


def _applies(policy: Policy, role: str | None) -> bool:
    return "public" in policy.roles or (role is not None and role in policy.roles)


def problems(table: Table, column: str, catalog: Catalog, app_role: str | None = None) -> list[str]:
    """Why ``table`` lacks enforced RLS on ``column`` (empty: it has it)."""
    out: list[str] = []
    if not table.rls_enabled:
        out.append("row-level security is not enabled")
    if app_role is not None and table.owner in catalog.role_memberships(app_role) \
            and not table.rls_forced:
        out.append(f"the application role {app_role!r} owns it and RLS is not forced: "
                   "policies do not apply to it")
    filtering = [p for p in table.policies if _mentions(p.using, column)]
    if any(calls_toolkit(e) for p in table.policies for e in p.expressions):
        out.append("in observe mode: its policies record other tenants' rows instead of "
                   "hiding them (rls-migrate apply --stage enforce)")
    elif not filtering:
        out.append(f"no policy filters on {column}" + (
            "" if table.policies else " (there is no policy at all)"))
    narrowed = any(not p.permissive and _mentions(p.using, column) and _applies(p, app_role)
                   for p in table.policies)
    wide = [p.name for p in table.policies
            if p.permissive and is_always_true(p.using) and _applies(p, app_role)]
    if wide and not narrowed:
        out.append(f"permissive policy {', '.join(wide)} USING (true) admits every row and no "
                   "restrictive tenant policy narrows it")
    open_ = [p.name for p in table.policies if p.using and admits_missing_context(p.using)]
    if open_:
        out.append(f"policy {', '.join(open_)} admits every row when the tenant context is "
                   "missing")
    return out


def targets(catalog: Catalog, playbook: Playbook | None, column: str | None) -> list[tuple[Table, str]]:
    """The tables to check, each with its tenant column."""
    found: dict[Any, tuple[Table, str]] = {}
    skipped: set[Any] = set()
    if playbook is not None:
        ctx = PlanContext(catalog, playbook)
        for entry in ctx.tenant_tables:
            for part in with_partitions(ctx, entry):
                found[part.qname] = (part.table, part.column)
        skipped = {q for q, plan in playbook.table_plans() if plan.strategy in ("global", "skip")}
        column = column or playbook.tenant.column
    for table in catalog.tables.values():
        parent = table.partition_of
        if table.qname in found or table.qname in skipped or parent in skipped:
            continue
        if column is not None and table.column(column) is not None:
            found[table.qname] = (table, column)
    return [found[q] for q in sorted(found)]


def check_catalog(catalog: Catalog, *, playbook: Playbook | None = None,
                  column: str | None = None, app_role: str | None = None) -> CheckResult:
    app = app_role or (playbook.roles.app if playbook is not None else None)
    checked: list[str] = []
    offenders: list[Offender] = []
    for table, col in targets(catalog, playbook, column):
        checked.append(str(table.qname))
        reasons = problems(table, col, catalog, app)
        if reasons:
            offenders.append(Offender(str(table.qname), col, tuple(reasons)))
    return CheckResult(tuple(checked), tuple(offenders))


def check(dsn: str, *, playbook: Playbook | None = None, source: str = "playbook",
          column: str | None = None, app_role: str | None = None,
          schemas: Sequence[str] | None = None) -> CheckResult:
    """Read one catalog snapshot and check it (see the module docstring)."""
    from rls_migrate.connect import connect

    wanted = list(schemas) if schemas else (list(playbook.schemas) if playbook else None)
    with connect(dsn, application_name="rls-migrate check") as conn:
        catalog = Catalog.load(conn, schemas=wanted)
    if playbook is not None:
        check_against_catalog(playbook, catalog, source)
    return check_catalog(catalog, playbook=playbook, column=column, app_role=app_role)


def render_text(result: CheckResult, column: str | None, playbook: bool = False) -> str:
    what = ("are tenant tables" + (f" or hold {column}" if column else "")) if playbook else (
        f"hold {column}")
    if not result.checked:
        return f"check: no table holds {column or 'the tenant column'}: nothing to check\n"
    if result.ok:
        return (f"check ok: {len(result.checked)} table(s) {what}, every one with enforced "
                "RLS\n")
    lines = [f"check FAILED: {len(result.offenders)} of {len(result.checked)} table(s) that "
             f"{what} lack enforced RLS:"]
    for o in result.offenders:
        lines.append(f"  {o.table} ({o.column}): " + "; ".join(o.reasons))
    return "\n".join(lines) + "\n"


@click.command("check")
@click.option("--dsn", metavar="DSN", help=f"the database; {DSN_DEFAULT_HELP}")
@click.option("--playbook", type=click.Path(dir_okay=False, path_type=Path),
              help="check the playbook's tenant tables (and any other table holding its "
                   "tenant column)")
@click.option("--column", metavar="NAME",
              help="the tenant column to look for (default: the playbook's tenant.column, "
                   "else tenant_id)")
@click.option("--app-role", metavar="ROLE",
              help="the application role: a table it owns must have FORCE ROW LEVEL SECURITY "
                   "(default: the playbook's roles.app)")
@click.option("--schema", "schemas", multiple=True, metavar="NAME",
              help="only these schemas (repeatable; default: the playbook's, else all)")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def check_command(dsn: str | None, playbook: Path | None,
                  column: str | None, app_role: str | None, schemas: tuple[str, ...],
                  fmt: str) -> None:
    """CI guard: exit 1 when a table holding tenant data lacks enforced RLS.

    \b
    Examples:
      rls-migrate check --dsn "$DATABASE_URL" --playbook playbooks/app.yaml
      rls-migrate check --dsn "$DATABASE_URL" --column org_id --app-role web
    """
    from rls_migrate.connect import resolve_dsn
    from rls_migrate.playbook import load_playbook

    pb = load_playbook(playbook) if playbook is not None else None
    if pb is None and column is None:
        column = "tenant_id"
    result = check(resolve_dsn(dsn, pb.dsn_env if pb else None), playbook=pb,
                   source=str(playbook), column=column, app_role=app_role,
                   schemas=schemas or None)
    shown = column or (pb.tenant.column if pb else None)
    click.echo(json.dumps(result.to_dict(), indent=2) if fmt == "json"
               else render_text(result, shown, pb is not None), nl=False)
    if not result.ok:
        sys.exit(1)
