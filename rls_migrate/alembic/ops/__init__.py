"""Alembic operations for row-level security, registered the standard way
(``Operations.register_operation`` + ``Operations.implementation_for``), so after
``import rls_migrate.alembic`` a revision can say::

    op.enable_rls("invoices")
    op.create_tenant_policy("invoices", "tenant_id", role="app_user", mode="observe")
    op.enforce_tenant_policy("invoices", "tenant_id", role="app_user")

Every operation is data with a ``reverse()`` (what autogenerate puts in ``downgrade()``).
Implementations resolve the table against the live catalog and take their SQL from the stage
modules, so they do what ``rls-migrate apply`` does:

* small DDL (RLS flags, policies, the tenant column and its sync trigger) runs in the
  migration's transaction, each table under ``lock_timeout`` in a savepoint that is retried
  with a jittered backoff when the lock is not granted in time;
* ``backfill_tenant_column`` and the ``CONCURRENTLY`` index operations run inside
  ``autocommit_block()``: batches, checkpoints, retries and the journal are the executor's;
* ``run_rls_step`` / ``undo_rls_step`` run one planned step exactly as ``apply`` /
  ``rollback`` would (they are what ``rls-migrate alembic render`` writes).

Tables are named the Alembic way: a raw table name and ``schema=`` (default: where the
search path finds it). ``parent`` and ``references`` use the playbook's syntax
(``"issue_id -> public.issues(id)"``, ``"public.accounts(id)"``).

One module per stage's operations: :mod:`.rls_flags`, :mod:`.policies`, :mod:`.tenant_column`,
:mod:`.backfill`, :mod:`.indexes`, :mod:`.toolkit_schema`, :mod:`.planned_steps`; importing
this package registers them all.
"""

from __future__ import annotations

from rls_migrate.alembic.ops.backfill import BackfillTenantColumnOp, ForgetTenantBackfillOp
from rls_migrate.alembic.ops.indexes import CreateIndexConcurrentlyOp, DropIndexConcurrentlyOp
from rls_migrate.alembic.ops.planned_steps import RunRlsStepOp, UndoRlsStepOp
from rls_migrate.alembic.ops.policies import (
    CreateTenantPolicyOp,
    DropTenantPolicyOp,
    EnforceTenantPolicyOp,
    ObserveTenantPolicyOp,
)
from rls_migrate.alembic.ops.rls_flags import DisableRlsOp, EnableRlsOp, ForceRlsOp, NoForceRlsOp
from rls_migrate.alembic.ops.tenant_column import AddTenantColumnOp, DropTenantColumnOp
from rls_migrate.alembic.ops.toolkit_schema import (
    DowngradeRlsMigrateSchemaOp,
    UpgradeRlsMigrateSchemaOp,
)

__all__ = [
    "AddTenantColumnOp", "BackfillTenantColumnOp", "CreateIndexConcurrentlyOp",
    "CreateTenantPolicyOp", "DisableRlsOp", "DowngradeRlsMigrateSchemaOp",
    "DropIndexConcurrentlyOp", "DropTenantColumnOp", "DropTenantPolicyOp", "EnableRlsOp",
    "EnforceTenantPolicyOp", "ForceRlsOp", "ForgetTenantBackfillOp", "NoForceRlsOp",
    "ObserveTenantPolicyOp", "RunRlsStepOp", "UndoRlsStepOp", "UpgradeRlsMigrateSchemaOp",
]
