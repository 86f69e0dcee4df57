"""The policy expressions and recording functions shared by observe, enforce and rollback.

Observe mode's tenant policy is ``col = (SELECT <tenant>) OR (record(col, current_user) IS
NOT NULL)``: true for every row, and the recorder runs only for rows the enforced policy
would reject (the OR short-circuits). What the recorder leaves behind, per statement, table
and operation (read: ``USING``, write: ``WITH CHECK``):

* one server-log line at LOG level (clients never receive LOG), a JSON object after the
  fixed prefix :data:`LOG_PREFIX`, so any value in it (an ``application_name``, a statement
  with newlines) is escaped and cannot forge another line's shape::

      ... LOG:  rls_migrate violation {"v" : 1, "at" : "2026-...", "table" : "public.issues", ...}

* one row in ``rls_migrate.violation_samples`` when the transaction can write (not in a
  read-only transaction, not on a standby); it commits or rolls back with the application's
  transaction;
* a call counted in ``pg_stat_user_functions`` for every rejected row (``track_functions``
  ``pl``), which nothing rolls back.

The log line and the counter survive what the sample row does not (a rollback, a read-only
transaction, a hot standby); ``report`` reads the samples and the counters, and server log
files given with ``--log``.
"""

from __future__ import annotations

import hashlib

from psycopg import sql

from rls_migrate.stages.common import (
    TOOLKIT_SCHEMA,
    PlanContext,
    TenantTable,
    function_name,
    object_name,
    policy_exists_check,
)

TENANT_POLICY = "rls_migrate_tenant"
BASELINE_POLICY = "rls_migrate_baseline"
ADMIN_POLICY = "rls_migrate_admin"

SAMPLES_TABLE = "violation_samples"
LOG_PREFIX = "rls_migrate violation "
"""What every recorded log message starts with; a JSON object follows on the same line."""
LOG_VERSION = 1
"""The ``v`` field of the log line: bumped whenever its keys change meaning."""
OPERATIONS = ("read", "write")
KINDS = ("no_context", "wrong_tenant")
STATEMENT_CHARS = 2000
"""Longest statement text kept in a sample or a log line."""


def tenant_match(ctx: PlanContext, entry: TenantTable) -> sql.Composed:
    """``col = (SELECT <current tenant>)``: the sub-select is an InitPlan, so the setting is
    read once per statement, and the comparison can use a tenant-leading index."""
    return sql.SQL("{} = (SELECT {})").format(sql.Identifier(entry.column), ctx.tenant_value())


def recorder(entry: TenantTable, operation: str) -> sql.Identifier:
    """``rls_migrate.observe_r_<table>`` / ``observe_w_<table>``: one function per table and
    operation, so pg_stat_user_functions counts violations per table for free."""
    return function_name(f"observe_{operation[0]}", entry.qname)


def recorder_name(entry: TenantTable, operation: str) -> str:
    """The recorder's name inside ``rls_migrate`` (``pg_stat_user_functions.funcname``)."""
    return object_name(f"observe_{operation[0]}_", entry.qname)


def recorder_signature(ctx: PlanContext, entry: TenantTable, operation: str) -> sql.Composed:
    """``rls_migrate.observe_r_x(bigint, name)``, for GRANT and DROP FUNCTION."""
    return sql.SQL("{}({}, name)").format(recorder(entry, operation),
                                          sql.SQL(ctx.key_column_type()))


def observe_expression(ctx: PlanContext, entry: TenantTable, operation: str) -> sql.Composed:
    """True for every row; rows the enforced policy would reject call the recorder (the OR
    short-circuits: correct traffic never calls it).

    ``current_user`` is passed in because inside the SECURITY DEFINER recorder it is the
    function's owner. ``IS NOT NULL`` (always true: the recorder returns true) is there for
    the planner: it estimates a bare boolean function as keeping a third of the rows, which
    would shrink row estimates and could change plans; ``IS NOT NULL`` is estimated at
    99.5 %, so observe mode keeps the estimates of no RLS at all."""
    return sql.SQL("({}) OR ({}({}, current_user) IS NOT NULL)").format(
        tenant_match(ctx, entry), recorder(entry, operation), sql.Identifier(entry.column))


def observe_enables_rls(entry: TenantTable) -> bool:
    """Whether observe turns RLS on for this table (and so adds the permissive baseline, and
    rollback turns RLS off again): RLS is off today, or our baseline policy shows that an
    earlier observe run turned it on. A table that already had RLS keeps its own policies
    deciding what is visible; the tenant policy only records."""
    return not entry.table.rls_enabled or any(
        p.name == BASELINE_POLICY for p in entry.table.policies)


def recorder_function(ctx: PlanContext, entry: TenantTable, operation: str) -> sql.Composed:
    """The recording function: a stable LOG line and a sample row once per statement, table
    and operation, and always ``true``.

    * The transaction-local marker (``set_config(..., true)``, allowed in read-only
      transactions and on standbys) holds the statement's start time: later rows of the
      same statement return at once, and are only counted by pg_stat_user_functions.
    * The sample row is written only where writing can work (not read-only, not in
      recovery), inside its own exception block, so a missing or locked sample table never
      turns into an error for the application; ``lock_timeout`` bounds that wait.
    * SECURITY DEFINER, so a role without any privilege on the private schema can still
      record; ``search_path`` is pinned because of that. The caller's ``current_user`` comes
      in as ``caller``; ``session_user`` is the login role.
    * PARALLEL UNSAFE (the default) because ``set_config`` and the exception block are not
      allowed in parallel mode: statements on observed tables run without parallel workers.
    * COST 1: the planner cannot know the OR short-circuits, and a high cost charged to
      every row would change plans compared to no RLS.
    """
    digest = hashlib.sha1(f"{entry.qname}:{operation}".encode()).hexdigest()[:16]
    marker = f"rls_migrate.seen_{digest}"  # per transaction: the last statement recorded
    # The backend-status snapshot is cached per transaction: clear it, or a second statement
    # of the same transaction would read the first one's query id.
    query_id = (sql.SQL("(SELECT a.query_id FROM pg_stat_clear_snapshot() c,"
                        " pg_stat_get_activity(pg_backend_pid()) a)")
                if ctx.catalog.major >= 14 else sql.SQL("NULL::bigint"))
    body = sql.SQL(
        "DECLARE\n"
        "  stamp text := statement_timestamp()::text;\n"
        "  seen_at timestamptz;\n"
        "  ctx text;\n"
        "  kind text;\n"
        "  app text;\n"
        "  stmt text;\n"
        "  qid bigint;\n"
        "BEGIN\n"
        "  IF current_setting({marker}, true) IS NOT DISTINCT FROM stamp THEN\n"
        "    RETURN true;\n"
        "  END IF;\n"
        "  PERFORM set_config({marker}, stamp, true);\n"
        "  seen_at := clock_timestamp();\n"
        "  ctx := current_setting({setting}, true);\n"
        "  kind := CASE WHEN coalesce(ctx, '') = '' THEN 'no_context' ELSE 'wrong_tenant' END;\n"
        "  app := current_setting('application_name');\n"
        "  stmt := left(current_query(), {chars});\n"
        "  qid := {query_id};\n"
        "  RAISE LOG {message}, json_build_object('v', {version}, 'at', seen_at, 'table', {table},"
        " 'op', {op}, 'kind', kind, 'db', current_database(), 'role', caller,"
        " 'session_user', session_user,"
        " 'app', app, 'pid', pg_backend_pid(), 'row_tenant', row_tenant::text,"
        " 'context', ctx, 'query_id', qid, 'statement', stmt)::text;\n"
        "  IF current_setting('transaction_read_only') = 'off' AND NOT pg_is_in_recovery() THEN\n"
        "    BEGIN\n"
        "      INSERT INTO {samples} (at, table_name, operation, kind, role_name, session_role,"
        " application_name, pid, statement, query_id, row_tenant, context)\n"
        "      VALUES (seen_at, {table}, {op}, kind, caller, session_user, app, pg_backend_pid(),"
        " stmt, qid, row_tenant::text, ctx);\n"
        "    EXCEPTION WHEN OTHERS THEN\n"
        "      NULL;  -- the log line and the counter still hold the evidence\n"
        "    END;\n"
        "  END IF;\n"
        "  RETURN true;\n"
        "END"
    ).format(setting=sql.Literal(ctx.playbook.tenant.setting), marker=sql.Literal(marker),
             chars=sql.Literal(STATEMENT_CHARS), query_id=query_id,
             message=sql.Literal(LOG_PREFIX + "%"), version=sql.Literal(LOG_VERSION),
             table=sql.Literal(str(entry.qname)), op=sql.Literal(operation),
             samples=sql.Identifier(TOOLKIT_SCHEMA, SAMPLES_TABLE))
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}(row_tenant {type}, caller name) RETURNS boolean"
        " LANGUAGE plpgsql VOLATILE SECURITY DEFINER COST 1"
        " SET search_path = pg_catalog, pg_temp SET lock_timeout = '50ms' AS {body}"
    ).format(fn=recorder(entry, operation), type=sql.SQL(ctx.key_column_type()),
             body=sql.Literal(body.as_string(None)))


def tenant_policy_exists(entry: TenantTable) -> sql.Composed:
    return policy_exists_check(entry.qname, TENANT_POLICY)
