"""``check``: the CI guard. Every table that holds tenant data must have enforced RLS.

Which tables: the playbook's tenant tables and their partitions; every table discovery
classifies as tenant data around the playbook's tenant table (or ``--tenant-table``): a
foreign key to the root or to a tenant table under any column name, or what looks like one
(a generic relation, a key-like column without a foreign key: a warning without a playbook);
and every table holding a tenant column of the playbook (or ``--column``). A table the playbook marks skip or global
with a note is a named warning; without a note, TODO, or not in the playbook, it fails. A
table is *enforced* when row-level security is enabled, a policy filters on its tenant
column and none records instead (observe mode), nothing admits every row (a permissive
``USING (true)`` not narrowed by a restrictive tenant policy, or ``... IS NULL OR`` when the
context is missing), and the application role, when known, does not own it without FORCE.
One catalog snapshot; no data is read.

Example (CI)::

    rls-migrate check --dsn "$DATABASE_URL" --playbook playbooks/app.yaml
    rls-migrate check --dsn "$DATABASE_URL" --tenant-table companies --app-role web
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

from rls_migrate.catalog import Catalog, Policy, QualifiedName, Table, parse_column
from rls_migrate.connect import DSN_DEFAULT_HELP
from rls_migrate.discover import TENANT_KINDS, Classification, TenantGraph, discover
from rls_migrate.errors import UsageError
from rls_migrate.playbook import TODO, Playbook, TablePlan
from rls_migrate.playbook_check import check_against_catalog
from rls_migrate.stages.common import PlanContext, with_partitions
from rls_migrate.verify.expressions import admits_missing_context, calls_toolkit, is_always_true


@dataclasses.dataclass(frozen=True)
class Offender:
    """A table that holds tenant data without enforced RLS (or, as a warning, one the
    playbook deliberately leaves out). ``why`` says why it was checked."""

    table: str
    column: str | None
    reasons: tuple[str, ...]
    why: str = ""


@dataclasses.dataclass(frozen=True)
class CheckResult:
    checked: tuple[str, ...]
    offenders: tuple[Offender, ...]
    warnings: tuple[Offender, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.offenders

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": list(self.checked),
                "offenders": [dataclasses.asdict(o) for o in self.offenders],
                "warnings": [dataclasses.asdict(o) for o in self.warnings]}


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


@dataclasses.dataclass(frozen=True)
class Target:
    """A table to check: its tenant column (None: it has none), why it is checked, and
    ``warn_only`` for a table the playbook leaves out on purpose (skip or global with a
    note): reported by name, never failing."""

    table: Table
    column: str | None
    why: str
    warn_only: bool = False
    missing: str | None = None  # what the playbook lacks for it, said first when it fails


def targets(catalog: Catalog, playbook: Playbook | None, column: str | None,
            graph: TenantGraph | None = None) -> list[Target]:
    """The tables to check: the playbook's tenant tables (partitions included); every
    table discovery classifies as tenant data (root, direct, derived or ambiguous: a
    foreign key to the root or to a tenant table under any column name); and every table
    holding a tenant column of the playbook (its ``tenant.column`` and the direct tables'
    columns) or ``column``."""
    found: dict[QualifiedName, Target] = {}
    plans: dict[QualifiedName, TablePlan] = {}
    columns: set[str] = set()
    if column is not None:
        columns.add(column)
    if playbook is not None:
        ctx = PlanContext(catalog, playbook)
        for entry in ctx.tenant_tables:
            for part in with_partitions(ctx, entry):
                found[part.qname] = Target(part.table, part.column,
                                           f"strategy {entry.strategy} in the playbook")
        plans = dict(playbook.table_plans())
        columns.add(playbook.tenant.column)
        columns.update(p.column for p in plans.values()
                       if p.strategy == "direct" and p.column)

    def add(table: Table, col: str | None, why: str, maybe: bool = False) -> None:
        if table.qname in found:
            return
        parent = _top(catalog, table.qname)
        plan = plans.get(parent)
        if plan is None:
            # Without a playbook, a table that only looks like tenant data (discovery needs
            # a hint for it) is a warning; with one, it is a table the playbook does not know.
            found[table.qname] = Target(table, col, why, warn_only=maybe and playbook is None,
                                        missing=None if playbook is None else
                                        "not in the playbook: add it (rls-migrate init shows how "
                                        "it reaches the tenant) and run the stages, or mark it "
                                        "skip with a note saying why")
        elif plan.strategy in ("skip", "global"):
            left_out = (f"the playbook has strategy {plan.strategy}"
                        + (f" ({plan.note})" if plan.note else ", without a note saying why"))
            found[table.qname] = Target(table, col, f"{why}; {left_out}",
                                        warn_only=bool(plan.note))
        elif plan.strategy == TODO:
            found[table.qname] = Target(table, col, why,
                                        missing="undecided (strategy TODO) in the playbook")

    if graph is not None:
        for qname, found_as in graph.tables.items():
            if found_as.kind not in TENANT_KINDS and found_as.kind != "needs_hint":
                continue
            why = _discovered(found_as)
            for name in (qname, *found_as.partitions):
                table = catalog.tables.get(name)
                if table is not None:
                    add(table, _column_of(table, found_as, columns), why,
                        maybe=found_as.kind == "needs_hint")
    for table in catalog.tables.values():
        held = sorted(c for c in columns if table.column(c) is not None)
        if held and not (playbook is not None and table.qname == playbook.tenant.qname):
            add(table, held[0], f"holds the tenant column {held[0]}")
    return [found[q] for q in sorted(found)]


def _top(catalog: Catalog, qname: QualifiedName) -> QualifiedName:
    table = catalog.tables.get(qname)
    seen = {qname}
    while table is not None and table.partition_of is not None \
            and table.partition_of not in seen:
        qname = table.partition_of
        seen.add(qname)
        table = catalog.tables.get(qname)
    return qname


def _discovered(entry: Classification) -> str:
    if entry.kind == "root":
        return "the tenant root"
    if entry.kind == "direct":
        return f"holds the tenant key ({entry.evidence})"
    if entry.kind == "derived" and entry.parent is not None:
        return f"derived from the tenant through {entry.parent} ({_path(entry)})"
    if entry.kind == "needs_hint":
        return f"may hold tenant data ({entry.evidence})"
    return "reaches the tenant by foreign keys (" + "; ".join(
        str(o) for o in entry.options) + ")"


def _path(entry: Classification) -> str:
    names = [entry.table.short] + [hop.ref_table.short for hop in entry.path]
    return " -> ".join(names)


def _column_of(table: Table, entry: Classification, columns: set[str]) -> str | None:
    if entry.column is not None and table.column(entry.column) is not None:
        return entry.column
    held = sorted(c for c in columns if table.column(c) is not None)
    return held[0] if held else None


def check_catalog(catalog: Catalog, *, playbook: Playbook | None = None,
                  column: str | None = None, app_role: str | None = None,
                  tenant_table: str | None = None, key: str | None = None) -> CheckResult:
    """Check one snapshot. With a playbook (or ``tenant_table``), discovery finds the
    tables that hold tenant data whatever their columns are named."""
    app = app_role or (playbook.roles.app if playbook is not None else None)
    graph = None
    if playbook is not None:
        graph = discover(catalog, playbook.tenant.qname, key=playbook.tenant.key,
                         tenant_column=playbook.tenant.column)
    elif tenant_table is not None:
        graph = discover(catalog, tenant_table, key=key, tenant_column=column or "tenant_id")
    checked: list[str] = []
    offenders: list[Offender] = []
    warnings: list[Offender] = []
    for target in targets(catalog, playbook, column, graph):
        table = target.table
        checked.append(str(table.qname))
        if target.column is None:
            reasons = ["it has no tenant column, so no policy can filter it"
                       + ("" if table.rls_enabled else " (row-level security is not enabled)")]
        else:
            reasons = problems(table, target.column, catalog, app)
        if target.warn_only:
            if reasons:
                warnings.append(Offender(str(table.qname), target.column, tuple(reasons),
                                         target.why))
            continue
        if reasons and target.missing:
            reasons.insert(0, target.missing)
        if reasons:
            offenders.append(Offender(str(table.qname), target.column, tuple(reasons),
                                      target.why))
    return CheckResult(tuple(checked), tuple(offenders), tuple(warnings))


def check(dsn: str, *, playbook: Playbook | None = None, source: str = "playbook",
          column: str | None = None, app_role: str | None = None,
          schemas: Sequence[str] | None = None, tenant_table: str | None = None,
          key: str | None = None) -> CheckResult:
    """Read one catalog snapshot and check it (see the module docstring)."""
    from rls_migrate.connect import connect

    if playbook is not None and (tenant_table is not None or key is not None):
        raise UsageError("--tenant-table and --key go without --playbook (the playbook names "
                         "the tenant table and its key)")
    if key is not None and tenant_table is None:
        raise UsageError("--key needs --tenant-table (the key of which table?)")
    wanted = list(schemas) if schemas else (list(playbook.schemas) if playbook else None)
    with connect(dsn, application_name="rls-migrate check") as conn:
        catalog = Catalog.load(conn, schemas=wanted)
    if playbook is not None:
        check_against_catalog(playbook, catalog, source)
    return check_catalog(catalog, playbook=playbook, column=column, app_role=app_role,
                         tenant_table=tenant_table, key=key)


def render_text(result: CheckResult, column: str | None, playbook: bool = False,
                discovered: bool = False) -> str:
    if playbook:
        what = "hold tenant data (the playbook's tenant tables, tables that reach the tenant " \
               "by foreign keys, tables with a tenant column)"
    elif discovered:
        what = "hold tenant data (reach the tenant by foreign keys" + (
            f", or hold {column})" if column else ")")
    else:
        what = f"hold {column}"
    if not result.checked:
        return f"check: no table holds {column or 'the tenant column'}: nothing to check\n"
    if result.ok:
        lines = [f"check ok: {len(result.checked)} table(s) {what}, every one with enforced "
                 "RLS" + (f"; {len(result.warnings)} left out on purpose:" if result.warnings
                          else "")]
    else:
        lines = [f"check FAILED: {len(result.offenders)} of {len(result.checked)} table(s) that "
                 f"{what} lack enforced RLS:"]
        for o in result.offenders:
            lines.extend(_offender(o))
        if result.warnings:
            lines.append(f"{len(result.warnings)} left out on purpose:")
    for o in result.warnings:
        lines.extend(_offender(o, "WARNING "))
    return "\n".join(lines) + "\n"


def _offender(o: Offender, mark: str = "") -> list[str]:
    column = f" ({o.column})" if o.column else ""
    out = [f"  {mark}{o.table}{column}: " + "; ".join(o.reasons)]
    if o.why:
        out.append(f"      checked because: {o.why}")
    return out


@click.command("check")
@click.option("--dsn", metavar="DSN", help=f"the database; {DSN_DEFAULT_HELP}")
@click.option("--playbook", type=click.Path(dir_okay=False, path_type=Path),
              help="check the playbook's tenant tables, every table that reaches its tenant "
                   "table by foreign keys, and every table holding one of its tenant columns")
@click.option("--tenant-table", metavar="TABLE",
              help="without a playbook: the tenant root (e.g. companies); every table that "
                   "reaches it by foreign keys, under any column name, is checked")
@click.option("--key", metavar="COLUMN",
              help="with --tenant-table: the root's key column (default: its primary key)")
@click.option("--column", metavar="NAME",
              help="a tenant column to look for, as in SQL: tenant_id, '\"organisationId\"' "
                   "(default: the playbook's tenant.column, else tenant_id)")
@click.option("--app-role", metavar="ROLE",
              help="the application role: a table it owns must have FORCE ROW LEVEL SECURITY "
                   "(default: the playbook's roles.app)")
@click.option("--schema", "schemas", multiple=True, metavar="NAME",
              help="only these schemas (repeatable; default: the playbook's, else all)")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def check_command(dsn: str | None, playbook: Path | None, tenant_table: str | None,
                  key: str | None, column: str | None, app_role: str | None,
                  schemas: tuple[str, ...], fmt: str) -> None:
    """CI guard: exit 1 when a table holding tenant data lacks enforced RLS.

    With a playbook, every table discovery classifies as tenant data is checked, not only
    the playbook's: a table added next month with `company_id bigint REFERENCES
    companies(id)` fails until it is migrated. A table the playbook marks skip (or global)
    with a note is a named warning; without a note, or not in the playbook at all, it fails.

    \b
    Examples:
      rls-migrate check --dsn "$DATABASE_URL" --playbook playbooks/app.yaml
      rls-migrate check --dsn "$DATABASE_URL" --tenant-table companies --app-role web
      rls-migrate check --dsn "$DATABASE_URL" --column '"organisationId"'
    """
    from rls_migrate.connect import resolve_dsn
    from rls_migrate.playbook import load_playbook

    if column is not None:
        try:
            column = parse_column(column)
        except ValueError as exc:
            raise UsageError(f"--column: {exc}") from None
    if key is not None:
        try:
            key = parse_column(key)
        except ValueError as exc:
            raise UsageError(f"--key: {exc}") from None
    pb = load_playbook(playbook) if playbook is not None else None
    if pb is None and column is None:
        column = "tenant_id"
    result = check(resolve_dsn(dsn, pb.dsn_env if pb else None), playbook=pb,
                   source=str(playbook), column=column, app_role=app_role,
                   schemas=schemas or None, tenant_table=tenant_table, key=key)
    shown = column or (pb.tenant.column if pb else None)
    click.echo(json.dumps(result.to_dict(), indent=2) if fmt == "json"
               else render_text(result, shown, pb is not None, tenant_table is not None),
               nl=False)
    if not result.ok:
        sys.exit(1)
