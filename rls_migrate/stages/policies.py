"""The policy expressions and recording functions shared by observe, enforce and rollback."""

from __future__ import annotations

import hashlib

from psycopg import sql

from rls_migrate.stages.common import (
    TOOLKIT_SCHEMA,
    PlanContext,
    TenantTable,
    function_name,
    policy_exists_check,
)

TENANT_POLICY = "rls_migrate_tenant"
BASELINE_POLICY = "rls_migrate_baseline"
ADMIN_POLICY = "rls_migrate_admin"


def tenant_match(ctx: PlanContext, entry: TenantTable) -> sql.Composed:
    """``col = (SELECT <current tenant>)``: the sub-select is an InitPlan, so the setting is
    read once per statement, and the comparison can use a tenant-leading index."""
    return sql.SQL("{} = (SELECT {})").format(sql.Identifier(entry.column), ctx.tenant_value())


def recorder(entry: TenantTable, operation: str) -> sql.Identifier:
    """``rls_migrate.observe_r_<table>`` / ``observe_w_<table>``: one function per table and
    operation, so pg_stat_user_functions counts violations per table for free."""
    return function_name(f"observe_{operation[0]}", entry.qname)


def observe_expression(ctx: PlanContext, entry: TenantTable, operation: str) -> sql.Composed:
    """True for every row; rows the enforced policy would reject call the recorder (the OR
    short-circuits: correct traffic never calls it)."""
    return sql.SQL("({}) OR {}({})").format(
        tenant_match(ctx, entry), recorder(entry, operation), sql.Identifier(entry.column))


def recorder_function(ctx: PlanContext, entry: TenantTable, operation: str) -> sql.Composed:
    """The recording function. It logs one stable LOG line per statement (clients never see
    LOG), keeps a sample row when the transaction can write, and always returns true.

    SECURITY DEFINER so any role can record into the private schema; ``session_user`` and
    the role captured by the policy's caller identify who ran the statement."""
    digest = hashlib.sha1(f"{entry.qname}:{operation}".encode()).hexdigest()[:16]
    marker = f"rls_migrate.seen_{digest}"  # per transaction: last statement recorded
    body = sql.SQL(
        "DECLARE\n"
        "  ctx text := current_setting({setting}, true);\n"
        "  kind text := CASE WHEN ctx IS NULL OR ctx = '' THEN 'no_context'"
        " ELSE 'wrong_tenant' END;\n"
        "  stamp text := statement_timestamp()::text;\n"
        "BEGIN\n"
        "  IF current_setting({marker}, true) IS NOT DISTINCT FROM stamp THEN RETURN true; END IF;\n"
        "  PERFORM set_config({marker}, stamp, true);\n"
        "  RAISE LOG 'rls_migrate violation %', json_build_object("
        "'table', {table}, 'op', {op}, 'kind', kind, 'role', current_user,"
        " 'session_user', session_user, 'app', current_setting('application_name'),"
        " 'row_tenant', row_tenant::text, 'context', ctx,"
        " 'statement', left(current_query(), 2000))::text;\n"
        "  IF current_setting('transaction_read_only') = 'off' AND NOT pg_is_in_recovery() THEN\n"
        "    BEGIN\n"
        "      INSERT INTO {samples} (table_name, operation, kind, role_name, application_name,"
        " statement, row_tenant, context)\n"
        "      VALUES ({table}, {op}, kind, current_user, current_setting('application_name'),"
        " left(current_query(), 2000), row_tenant::text, ctx);\n"
        "    EXCEPTION WHEN OTHERS THEN NULL;\n"
        "    END;\n"
        "  END IF;\n"
        "  RETURN true;\n"
        "END"
    ).format(setting=sql.Literal(ctx.playbook.tenant.setting), marker=sql.Literal(marker),
             table=sql.Literal(str(entry.qname)), op=sql.Literal(operation),
             samples=sql.Identifier(TOOLKIT_SCHEMA, "violation_samples"))
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}(row_tenant {type}) RETURNS boolean LANGUAGE plpgsql"
        " VOLATILE SECURITY DEFINER COST 10000 SET search_path = pg_catalog, pg_temp AS {body}"
    ).format(fn=recorder(entry, operation), type=sql.SQL(ctx.key_column_type()),
             body=sql.Literal(body.as_string(None)))


def tenant_policy_exists(entry: TenantTable) -> sql.Composed:
    return policy_exists_check(entry.qname, TENANT_POLICY)
