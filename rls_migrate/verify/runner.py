"""``verify`` as a library call: the structural checks and lints on one catalog snapshot,
then the live probe as the application role.

Example::

    from rls_migrate.verify import verify
    report = verify(dsn, playbook)
    assert report.ok, report.failures
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.connect import connect
from rls_migrate.errors import UsageError
from rls_migrate.playbook import Playbook
from rls_migrate.playbook_check import check_against_catalog
from rls_migrate.stages.common import PlanContext
from rls_migrate.verify.model import Finding, Rule, VerifyContext
from rls_migrate.verify.probe import PROBE_RULES, ProbeSettings, ProbeTarget, probe_all
from rls_migrate.verify.rules import RULES

ALL_RULES: tuple[Rule, ...] = (*RULES, *PROBE_RULES)


def rule(code: str) -> Rule:
    for r in ALL_RULES:
        if r.code == code:
            return r
    raise UsageError(f"no verify check {code!r}; the checks are: "
                     + ", ".join(r.code for r in ALL_RULES))


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    database: str
    server_version: str
    tables: tuple[str, ...]  # tenant tables and partitions, in plan order
    findings: tuple[Finding, ...]
    probe_role: str | None  # None: the probe did not run
    tenants: tuple[str, str] | None

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "fail"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "warn"]

    @property
    def ok(self) -> bool:
        return not self.failures

    def count(self, status: str) -> int:
        return sum(1 for f in self.findings if f.status == status)

    def matrix(self) -> dict[str, dict[str, str]]:
        """table -> matrix column -> the worst status of the checks in that cell."""
        rank = {"fail": 3, "warn": 2, "pass": 1, "skip": 0}
        columns = {r.code: r.column for r in ALL_RULES if r.column}
        out: dict[str, dict[str, str]] = {t: {} for t in self.tables}
        for f in self.findings:
            column = columns.get(f.code)
            if column is None or f.subject not in out or f.kind != "table":
                continue
            cell = out[f.subject]
            if rank[f.status] > rank.get(cell.get(column, "skip"), -1) or column not in cell:
                cell[column] = f.status
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "ok": self.ok,
            "database": self.database,
            "server_version": self.server_version,
            "probe": {"ran": self.probe_role is not None, "role": self.probe_role,
                      "tenants": list(self.tenants) if self.tenants else None},
            "summary": {s: self.count(s) for s in ("fail", "warn", "pass", "skip")},
            "tables": self.matrix(),
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "checks": {r.code: {"severity": r.severity, "summary": r.summary}
                       for r in ALL_RULES},
        }


def structural_findings(ctx: VerifyContext) -> list[Finding]:
    """Every structural check and lint: catalog reads only."""
    return [f for r in RULES if r.check is not None for f in r.check(ctx)]


def verify(
    dsn: str,
    playbook: Playbook,
    *,
    source: str = "playbook",
    app_dsn: str | None = None,
    tenants: Sequence[str] | None = None,
    probe: bool = True,
) -> VerifyReport:
    """Check the database against the playbook. ``app_dsn``: the probe connects as the
    application itself instead of ``SET ROLE`` on this connection; ``tenants``: the two
    tenants (A, B) to probe with instead of picking them per table."""
    pair = _pair(tenants)
    with connect(dsn, application_name="rls-migrate verify") as conn:
        catalog = Catalog.load(conn, schemas=playbook.schemas)
        check_against_catalog(playbook, catalog, source)
        ctx = VerifyContext(catalog, playbook,
                            rows_without_tenant(conn, PlanContext(catalog, playbook)))
        findings = structural_findings(ctx)
        probe_role = None
        if probe:
            with _app_connection(app_dsn) as app_conn:
                probe_role = (playbook.roles.app if app_conn is None else
                              _current_user(app_conn))
                findings += list(_probe(conn, ctx, app_conn, pair))
    return VerifyReport(catalog.database, catalog.server_version,
                        tuple(str(e.qname) for e in ctx.entries), tuple(findings), probe_role,
                        pair)


def rows_without_tenant(conn: psycopg.Connection[Any], ctx: PlanContext
                        ) -> dict[QualifiedName, int]:
    """``count(*)`` of the rows whose tenant column is NULL, for every tenant table whose
    tenant column is nullable (a NOT NULL column has none: not scanned)."""
    out: dict[QualifiedName, int] = {}
    for entry in ctx.tenant_tables:
        column = entry.table.column(entry.column)
        if column is None or column.not_null:
            continue
        row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
            entry.ident, sql.Identifier(entry.column))).fetchone()
        out[entry.qname] = int(row[0]) if row else 0
    return out


def _pair(tenants: Sequence[str] | None) -> tuple[str, str] | None:
    if tenants is None:
        return None
    values = [str(t).strip() for t in tenants]
    if len(values) != 2 or not all(values) or values[0] == values[1]:
        raise UsageError(f"--tenants: expected two different tenant ids like 1,2, got "
                         f"{','.join(values)!r}")
    return values[0], values[1]


@contextlib.contextmanager
def _app_connection(app_dsn: str | None) -> Iterator[psycopg.Connection[Any] | None]:
    if app_dsn is None:
        yield None
        return
    with connect(app_dsn, application_name="rls-migrate verify probe") as conn:
        yield conn


def _current_user(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_user").fetchone()
    return str(row[0]) if row else "?"


def _probe(conn: psycopg.Connection[Any], ctx: VerifyContext,
           app_conn: psycopg.Connection[Any] | None,
           tenants: tuple[str, str] | None) -> Iterator[Finding]:
    settings = ProbeSettings(ctx.playbook.tenant.setting,
                             None if app_conn is not None else ctx.app_role)
    targets = [ProbeTarget.of(e.table, e.column) for e in ctx.entries
               if e.table.column(e.column) is not None]
    views = [v.qname for v in ctx.catalog.views.values()
             if v.kind == "view" and v.depends_on
             and all(q in ctx.tenant_names for q in v.depends_on)]
    tenant = ctx.playbook.tenant
    root = (tenant.qname, tenant.key, ctx.plan.key_column_type())
    yield from probe_all(conn, targets, views, settings, probe_conn=app_conn, tenants=tenants,
                         root=root)
