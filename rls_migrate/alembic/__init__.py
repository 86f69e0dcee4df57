"""rls-migrate for Alembic: operations, autogenerate comparators, revision rendering.

Import it once (in ``env.py``, or in a revision) and the operations are on ``op``::

    import rls_migrate.alembic  # registers op.enable_rls, op.create_tenant_policy, ...

    def upgrade() -> None:
        op.add_tenant_column("comments", parent="issue_id -> public.issues(id)")
        op.backfill_tenant_column("comments", parent="issue_id -> public.issues(id)")
        op.create_index_concurrently("comments_tenant_idx", "comments", ["tenant_id"])
        op.create_tenant_policy("comments", "tenant_id", role="app_user", mode="observe")
        op.enable_rls("comments")

``rls-migrate alembic render PLAYBOOK --versions-dir DIR`` writes a whole plan as revision
files; :func:`rls_info` declares RLS on a model so autogenerate keeps it in step.

(The subpackage's modules import the ``alembic`` library by absolute name; this package
never shadows it.)
"""

from __future__ import annotations

from .autogenerate import Declared, rls_info
from .ops import (
    AddTenantColumnOp,
    BackfillTenantColumnOp,
    CreateIndexConcurrentlyOp,
    CreateTenantPolicyOp,
    DisableRlsOp,
    DowngradeRlsMigrateSchemaOp,
    DropIndexConcurrentlyOp,
    DropTenantColumnOp,
    DropTenantPolicyOp,
    EnableRlsOp,
    EnforceTenantPolicyOp,
    ForceRlsOp,
    ForgetTenantBackfillOp,
    NoForceRlsOp,
    ObserveTenantPolicyOp,
    RunRlsStepOp,
    UndoRlsStepOp,
    UpgradeRlsMigrateSchemaOp,
)
from .runtime import RlsOperationError, set_default_options

__all__ = [
    "AddTenantColumnOp", "BackfillTenantColumnOp", "CreateIndexConcurrentlyOp",
    "CreateTenantPolicyOp", "Declared", "DisableRlsOp", "DowngradeRlsMigrateSchemaOp",
    "DropIndexConcurrentlyOp", "DropTenantColumnOp", "DropTenantPolicyOp", "EnableRlsOp",
    "EnforceTenantPolicyOp", "ForceRlsOp", "ForgetTenantBackfillOp", "NoForceRlsOp",
    "ObserveTenantPolicyOp", "RlsOperationError", "RunRlsStepOp", "UndoRlsStepOp",
    "UpgradeRlsMigrateSchemaOp", "rls_info", "set_default_options",
]
