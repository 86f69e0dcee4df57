"""Autogenerate: ``alembic revision --autogenerate`` compares the row-level security each
model declares with the database, and writes the operations that close the gap.

Declare it on the table's ``info`` (tables without it are never touched)::

    invoices = sa.Table("invoices", metadata, ..., info=rls_info(tenant_column="tenant_id",
                                                                 role="app_user"))

    class Invoice(Base):
        __tablename__ = "invoices"
        __table_args__ = {"info": rls_info(tenant_column="tenant_id", mode="observe")}

Compared per table, with one catalog query: RLS enabled and forced
(``op.enable_rls`` / ``disable_rls`` / ``force_rls`` / ``no_force_rls``), and the toolkit's
tenant policy (missing: ``op.create_tenant_policy``; another column, role or setting: drop
and create; the other mode: ``op.observe_tenant_policy`` / ``op.enforce_tenant_policy``).
A policy the model does not declare is left alone: ``rls-migrate apply`` may have made it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import comparators, renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation, ops

from rls_migrate.catalog import QualifiedName
from rls_migrate.playbook import KEY_TYPES
from rls_migrate.stages.common import TOOLKIT_SCHEMA, regclass_text
from rls_migrate.stages.policies import BASELINE_POLICY, TENANT_POLICY

from .ops import (
    CreateTenantPolicyOp,
    DisableRlsOp,
    DropTenantPolicyOp,
    EnableRlsOp,
    EnforceTenantPolicyOp,
    ForceRlsOp,
    NoForceRlsOp,
    ObserveTenantPolicyOp,
)
from .ops.policies import PolicyOp
from .runtime import RlsOperationError

INFO_KEY = "rls"
IMPORT_LINE = "import rls_migrate.alembic  # noqa: F401  (registers op.enable_rls and friends)"


@dataclasses.dataclass(frozen=True)
class Declared:
    """What a model declares (``Table.info["rls"]``)."""

    enabled: bool = True
    force: bool = False
    tenant_column: str | None = None
    mode: str = "enforce"
    setting: str = "app.tenant_id"
    key_type: str = "bigint"
    role: str | None = None
    baseline: bool = True


FIELDS = tuple(f.name for f in dataclasses.fields(Declared))


def rls_info(**declared: Any) -> dict[str, dict[str, Any]]:
    """``{"rls": {...}}`` for ``Table(info=...)``, validated now rather than at
    autogenerate time. Keys: ``enabled`` (True), ``force`` (False), ``tenant_column``
    (None: no tenant policy), ``mode`` ("enforce" or "observe"), ``setting``
    ("app.tenant_id"), ``key_type`` ("bigint"), ``role`` (None: PUBLIC), ``baseline`` (True:
    the permissive policy that grants the tenant's rows)."""
    _declared("rls_info()", declared)
    return {INFO_KEY: dict(declared)}


def _declared(where: str, raw: Any) -> Declared:
    if not isinstance(raw, Mapping):
        raise RlsOperationError(f"{where}: info['rls'] must be a dict, got {raw!r}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise RlsOperationError(f"{where}: unknown info['rls'] key(s) {unknown}; expected "
                                f"some of {list(FIELDS)}")
    declared = Declared(**raw)
    for name in ("enabled", "force", "baseline"):
        if not isinstance(getattr(declared, name), bool):
            raise RlsOperationError(f"{where}: info['rls'][{name!r}] must be true or false")
    if declared.mode not in ("observe", "enforce"):
        raise RlsOperationError(f"{where}: info['rls']['mode'] must be 'observe' or "
                                f"'enforce', got {declared.mode!r}")
    if declared.key_type not in KEY_TYPES:
        raise RlsOperationError(f"{where}: info['rls']['key_type'] must be one of "
                                f"{list(KEY_TYPES)}, got {declared.key_type!r}")
    if declared.tenant_column is not None and not declared.enabled:
        raise RlsOperationError(f"{where}: a tenant_column without RLS enabled would never "
                                "apply; set enabled: True or drop tenant_column")
    return declared


@dataclasses.dataclass(frozen=True)
class ActualPolicy:
    columns: tuple[str, ...]
    roles: tuple[str, ...]
    mode: str
    setting: str | None
    key_type: str | None
    baseline: bool


@dataclasses.dataclass(frozen=True)
class Actual:
    """What the database has."""

    enabled: bool = False
    forced: bool = False
    policy: ActualPolicy | None = None


_STATE_SQL = sa.text(
    "SELECT c.relrowsecurity, c.relforcerowsecurity, p.oid IS NOT NULL AS has_policy,"
    " pg_get_expr(p.polqual, p.polrelid) AS qual,"
    " ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r)::text END"
    "       FROM unnest(p.polroles) AS r ORDER BY 1) AS roles,"
    " ARRAY(SELECT DISTINCT a.attname::text FROM pg_depend d JOIN pg_attribute a"
    "       ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
    "       WHERE d.classid = 'pg_policy'::regclass AND d.objid = p.oid"
    "       AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 ORDER BY 1) AS cols,"
    " EXISTS (SELECT 1 FROM pg_depend d JOIN pg_proc f ON f.oid = d.refobjid"
    "         JOIN pg_namespace n ON n.oid = f.pronamespace"
    "         WHERE d.classid = 'pg_policy'::regclass AND d.objid = p.oid"
    "         AND d.refclassid = 'pg_proc'::regclass AND n.nspname = :toolkit) AS observing,"
    " EXISTS (SELECT 1 FROM pg_policy b WHERE b.polrelid = c.oid AND b.polname = :baseline)"
    "   AS has_baseline"
    " FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid AND p.polname = :policy"
    " WHERE c.oid = to_regclass(:name)")
_SETTING = re.compile(r"current_setting\('((?:[^']|'')*)'")
_KEY_TYPE = re.compile(r"\)::(bigint|integer|smallint|uuid|text)\b")


def actual_state(connection: sa.Connection, qname: QualifiedName) -> Actual:
    row = connection.execute(_STATE_SQL, {
        "toolkit": TOOLKIT_SCHEMA, "baseline": BASELINE_POLICY, "policy": TENANT_POLICY,
        "name": regclass_text(qname)}).one_or_none()
    if row is None:
        return Actual()
    policy = None
    if row.has_policy:
        qual = row.qual or ""
        setting = _SETTING.search(qual)
        key_type = _KEY_TYPE.search(qual)
        policy = ActualPolicy(
            columns=tuple(row.cols), roles=tuple(row.roles),
            mode="observe" if row.observing else "enforce",
            setting=setting.group(1).replace("''", "'") if setting else None,
            key_type=key_type.group(1) if key_type else None, baseline=bool(row.has_baseline))
    return Actual(bool(row.relrowsecurity), bool(row.relforcerowsecurity), policy)


def diff(declared: Declared, actual: Actual, table: str,
         schema: str | None) -> list[MigrateOperation]:
    """The operations that take ``actual`` to ``declared``: policies before RLS is turned on
    (no moment without a policy), RLS off before policies go."""
    out: list[MigrateOperation] = []
    column = declared.tenant_column
    if column is not None:
        have = actual.policy
        role = declared.role or "public"

        def create() -> CreateTenantPolicyOp:
            return CreateTenantPolicyOp(
                table, column, setting=declared.setting, key_type=declared.key_type,
                role=declared.role, mode=declared.mode, baseline=declared.baseline,
                schema=schema)

        if have is None:
            out.append(create())
        elif (have.columns != (column,) or have.roles != (role,)
              or (have.setting is not None and have.setting != declared.setting)):
            old_column = have.columns[0] if len(have.columns) == 1 else column
            old_role = None if have.roles in ((), ("public",)) else have.roles[0]
            out += [
                DropTenantPolicyOp(table, old_column, setting=have.setting or declared.setting,
                                   key_type=have.key_type or declared.key_type, role=old_role,
                                   mode=have.mode, baseline=have.baseline, schema=schema),
                create()]
        elif have.mode != declared.mode:
            cls = ObserveTenantPolicyOp if declared.mode == "observe" else EnforceTenantPolicyOp
            out.append(cls(table, column, setting=declared.setting, key_type=declared.key_type,
                           role=declared.role, baseline=declared.baseline, schema=schema))
    if declared.enabled and not actual.enabled:
        out.append(EnableRlsOp(table, force=declared.force, schema=schema))
    elif not declared.enabled and actual.enabled:
        out.insert(0, DisableRlsOp(table, force=actual.forced, schema=schema))
    elif declared.enabled and declared.force != actual.forced:
        out.append(ForceRlsOp(table, schema=schema) if declared.force
                   else NoForceRlsOp(table, schema=schema))
    return out


@comparators.dispatch_for("table")
def compare_rls(
    autogen_context: AutogenContext,
    modify_table_ops: ops.ModifyTableOps,
    schema: str | None,
    tname: str,
    conn_table: sa.Table | None,
    metadata_table: sa.Table | None,
) -> None:
    """The table comparator (``alembic.autogenerate.comparators``)."""
    if metadata_table is None or INFO_KEY not in metadata_table.info:
        return
    declared = _declared(f"table {metadata_table.fullname}", metadata_table.info[INFO_KEY])
    actual = Actual()
    if conn_table is not None:
        assert autogen_context.connection is not None
        default = autogen_context.dialect.default_schema_name or "public"
        actual = actual_state(autogen_context.connection,
                              QualifiedName(schema or default, tname))
    modify_table_ops.ops.extend(diff(declared, actual, tname, schema))


# --------------------------------------------------------------------------- rendering


def _call(autogen_context: AutogenContext, name: str, *args: Any, **kwargs: Any) -> str:
    """``op.name('a', key=...)`` with the keyword arguments that differ from their default
    (given as ``key=(value, default)``)."""
    autogen_context.imports.add(IMPORT_LINE)
    prefix = autogen_context.opts.get("alembic_module_prefix", "op.")
    parts = [repr(a) for a in args]
    parts += [f"{k}={v!r}" for k, (v, default) in kwargs.items() if v != default]
    return f"{prefix}{name}({', '.join(parts)})"


def _render_flags(name: str) -> Any:
    def render(autogen_context: AutogenContext, op: Any) -> str:
        extra = {"force": (op.force, False)} if hasattr(op, "force") else {}
        return _call(autogen_context, name, op.table_name, **extra, schema=(op.schema, None))
    return render


renderers.dispatch_for(EnableRlsOp)(_render_flags("enable_rls"))
renderers.dispatch_for(DisableRlsOp)(_render_flags("disable_rls"))
renderers.dispatch_for(ForceRlsOp)(_render_flags("force_rls"))
renderers.dispatch_for(NoForceRlsOp)(_render_flags("no_force_rls"))


def _render_policy(name: str) -> Any:
    def render(autogen_context: AutogenContext, op: PolicyOp) -> str:
        spec = op.spec
        mode = {"mode": (getattr(op, "mode", "enforce"), "enforce")}
        if name in ("observe_tenant_policy", "enforce_tenant_policy"):
            mode = {}
        return _call(autogen_context, name, spec.table_name, spec.column,
                     setting=(spec.setting, "app.tenant_id"), key_type=(spec.key_type, "bigint"),
                     role=(spec.role, None), **mode, baseline=(spec.baseline, True),
                     schema=(spec.schema, None))
    return render


renderers.dispatch_for(CreateTenantPolicyOp)(_render_policy("create_tenant_policy"))
renderers.dispatch_for(DropTenantPolicyOp)(_render_policy("drop_tenant_policy"))
renderers.dispatch_for(ObserveTenantPolicyOp)(_render_policy("observe_tenant_policy"))
renderers.dispatch_for(EnforceTenantPolicyOp)(_render_policy("enforce_tenant_policy"))


__all__ = ["Actual", "Declared", "actual_state", "compare_rls", "diff", "rls_info"]
