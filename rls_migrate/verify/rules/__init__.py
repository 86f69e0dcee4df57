"""verify's structural checks and policy lints: one rule per module (code, severity,
summary, documentation page, check). A new rule: a module here with a ``RULE``, listed in
:data:`RULES`, and a test planting the problem it catches in ``tests/test_verify.py``."""

from __future__ import annotations

from rls_migrate.verify.model import Rule
from rls_migrate.verify.rules import (
    app_role_bypasses_rls,
    cross_tenant_foreign_key,
    global_unique_constraint,
    missing_context_admits_all,
    multiple_permissive_policies,
    permissive_policy_always_true,
    policy_rls_disabled,
    rls_no_policy,
    rows_without_tenant,
    security_definer_function,
    setting_read_per_row,
    tenant_column_nullable,
    tenant_index_missing,
    tenant_policy_mismatch,
    tenant_policy_missing,
    tenant_table_not_forced,
    tenant_table_rls_disabled,
    view_bypasses_rls,
)

RULES: tuple[Rule, ...] = tuple(m.RULE for m in (
    # structure, per tenant table
    tenant_table_rls_disabled,
    tenant_table_not_forced,
    tenant_policy_missing,
    tenant_policy_mismatch,
    tenant_column_nullable,
    rows_without_tenant,
    tenant_index_missing,
    # what bypasses or leaks around RLS
    app_role_bypasses_rls,
    view_bypasses_rls,
    security_definer_function,
    global_unique_constraint,
    cross_tenant_foreign_key,
    # policy lints
    policy_rls_disabled,
    rls_no_policy,
    multiple_permissive_policies,
    permissive_policy_always_true,
    setting_read_per_row,
    missing_context_admits_all,
))
