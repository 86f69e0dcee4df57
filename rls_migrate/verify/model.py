"""What verify's checks are made of: a :class:`Rule` (code, severity, one-line summary, the
documentation page, the check), the :class:`Finding` a check produces per subject, and the
:class:`VerifyContext` every check reads (one catalog snapshot and the playbook)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from rls_migrate.catalog import Catalog, QualifiedName, Table
from rls_migrate.playbook import Playbook
from rls_migrate.stages.common import PlanContext, TenantTable, with_partitions
from rls_migrate.stages.enforce import TableEnforcement, app_owns, enforcement

Status = Literal["pass", "fail", "warn", "skip"]
Severity = Literal["error", "warning"]
SubjectKind = Literal["table", "view", "function", "role", "database"]


@dataclasses.dataclass(frozen=True)
class Finding:
    """One check on one subject. ``fail`` and ``warn`` carry a message that says what is
    wrong and what to do; ``skip`` says why the check does not apply."""

    code: str
    status: Status
    subject: str
    kind: SubjectKind = "table"
    message: str = ""


@dataclasses.dataclass(frozen=True)
class Rule:
    """A check: squawk-style, one per module, with a kebab-case code and a documentation
    page (the module docstring: problem, then solution), shown by ``verify --explain``."""

    code: str
    severity: Severity
    summary: str
    doc: str
    column: str | None = None  # the column of the per-table matrix it reports in
    check: Callable[[VerifyContext], Iterable[Finding]] | None = None  # None: the probe's

    def problem(self, subject: str, message: str, kind: SubjectKind = "table") -> Finding:
        return Finding(self.code, "fail" if self.severity == "error" else "warn", subject, kind,
                       message)

    def ok(self, subject: str, kind: SubjectKind = "table", message: str = "") -> Finding:
        return Finding(self.code, "pass", subject, kind, message)

    def skip(self, subject: str, message: str, kind: SubjectKind = "table") -> Finding:
        return Finding(self.code, "skip", subject, kind, message)


@dataclasses.dataclass(frozen=True)
class VerifyContext:
    """The snapshot every structural check reads. The catalog is never filtered by RLS, so
    FORCE ROW LEVEL SECURITY on the tenant tables changes nothing here."""

    catalog: Catalog
    playbook: Playbook
    # Rows whose tenant column is NULL, per tenant table with a nullable tenant column
    # (counted by verify on its connection; None: not counted).
    rows_without_tenant: Mapping[QualifiedName, int] | None = None

    @functools.cached_property
    def plan(self) -> PlanContext:
        return PlanContext(self.catalog, self.playbook)

    @functools.cached_property
    def entries(self) -> tuple[TenantTable, ...]:
        """Every tenant table with its partitions (each one is queried directly too)."""
        return tuple(e for t in self.plan.tenant_tables for e in with_partitions(self.plan, t))

    @functools.cached_property
    def tenant_names(self) -> frozenset[QualifiedName]:
        return frozenset(e.qname for e in self.entries)

    @property
    def app_role(self) -> str:
        return self.playbook.roles.app

    def enforcement(self, entry: TenantTable) -> TableEnforcement:
        """What the enforce stage does to ``entry`` (so verify expects exactly that)."""
        return enforcement(self.plan, entry)

    def app_owns(self, entry: TenantTable) -> bool:
        return app_owns(self.plan, entry)

    def bypasses_rls(self, role_name: str, table: Table) -> bool:
        """Whether ``role_name`` reads ``table`` unfiltered: a superuser, BYPASSRLS, or the
        owner (or a member of the owner role) of a table without FORCE."""
        role = self.catalog.role(role_name)
        if role is not None and (role.superuser or role.bypassrls):
            return True
        owner = table.owner in self.catalog.role_memberships(role_name)
        return owner and not table.rls_forced
