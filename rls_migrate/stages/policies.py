"""The policy expressions and recording functions shared by observe, enforce and rollback.

Observe mode's tenant policy (``USING`` for reads, ``WITH CHECK`` for writes) is::

    col = (SELECT <tenant>) OR ((SELECT rls_migrate.observe_r_<t>(current_user)) IS NOT NULL)

Both sub-selects are uncorrelated, so PostgreSQL makes them InitPlans: evaluated lazily, the
first time a row needs them, then cached for the rest of the statement. Rows of the current
tenant never get past the comparison; the first row that fails it calls the recorder, and
every later row costs a comparison with the cached result. So there is **at most one recorder
call per statement, table and operation** (per execution of a plan: a function that runs a
query per row runs its plan, and so its InitPlans, each time), and a statement that scans
50,000 other-tenant rows (a hash join scanning a child, a generic plan) costs what it costs
enforced. The price: the recorder no longer sees the row, so a record holds the tenant
context (``no_context`` when none was set, else ``wrong_tenant``) but not the row's tenant;
``report --confirm`` replays the statement to find out what enforcement would change.

What the recorder leaves behind, per statement (read: ``USING``, write: ``WITH CHECK``):

* one server-log line at LOG level (clients never receive LOG), a JSON object after the
  fixed prefix :data:`LOG_PREFIX`, so any value in it (an ``application_name``, a statement
  with newlines) is escaped and cannot forge another line's shape::

      ... LOG:  rls_migrate violation {"v" : 2, "at" : "2026-...", "table" : "public.issues", ...}

  With ``log_parameter_max_length_on_error`` set for the session (observe sets it for the
  application role, see ``options.observe.capture_parameters``), the server adds the
  statement's bound parameters to that entry as ``CONTEXT: ... portal with parameters: $1 =
  '5'``: the evidence a replay needs;
* one row in ``rls_migrate.violation_samples`` when the transaction can write (not in a
  read-only transaction, not on a standby); it commits or rolls back with the application's
  transaction;
* a call counted in ``pg_stat_user_functions`` (``track_functions`` ``pl``): one per
  *statement*, not per row, which nothing rolls back.

The policy also reads a per-transaction setting, :data:`MODE_SETTING`, before it calls the
recorder:

* ``enforce``: no recorder, and rows of other tenants filtered exactly as the enforced
  policy will. Anyone may set it: it can only make the policy stricter. Replays use
  it, and so can a team's test suite (``SET LOCAL rls_migrate.mode = 'enforce'``);
* ``quiet``: answer as observe does without recording, honoured only for a session whose
  login role can use the ``rls_migrate`` schema (the operator replaying evidence; never the
  application role), so the application cannot hide its own violations.
"""

from __future__ import annotations

import hashlib
import re

from psycopg import sql

from rls_migrate.errors import PlaybookError
from rls_migrate.sqlcompose import as_text, compose, identifier
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
LOG_VERSION = 2
"""The ``v`` field of the log line: bumped whenever its keys change meaning (2: one record
per statement without the row's tenant, with the database's identity and read-only flag)."""
OPERATIONS = ("read", "write")
KINDS = ("no_context", "wrong_tenant")
STATEMENT_CHARS = 4000
"""Longest statement text kept in a sample or a log line (a longer one cannot be replayed)."""
MODE_SETTING = "rls_migrate.mode"
"""Per-transaction switch the recorders read: ``enforce`` filters, ``quiet`` (operators
only) answers as observe without recording."""
CANDIDATE_SETTING = "rls_migrate.candidate"
"""Set (transaction-local) by a recorder to the statement_timestamp() of the statement it
recorded: the write-truth triggers (:mod:`rls_migrate.stages.write_truth`) act only then."""
CALLER_SETTING = "rls_migrate.caller"
"""Set by a recorder to the role the policy saw (inside a SECURITY DEFINER trigger function,
current_user is the function's owner)."""

_INTEGERS = frozenset({"smallint", "integer", "bigint"})
_TEXTS = re.compile(r"^(text|character varying(\(\d+\))?|varchar(\(\d+\))?|citext|name)$")
_INTEGER_TEXT = r"^\s*[-+]?[0-9]{1,18}\s*$"
_UUID_TEXT = (r"^\s*\{?[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
              r"[0-9a-fA-F]{12}\}?\s*$")


DATABASE_IDENTITY = sql.SQL(
    "  BEGIN\n"
    "    dbid := (SELECT system_identifier::text FROM pg_control_system()) || '/'"
    " || (SELECT oid::text FROM pg_database WHERE datname = current_database());\n"
    "  EXCEPTION WHEN OTHERS THEN\n"
    "    dbid := NULL;\n"
    "  END;\n")
"""PL/pgSQL that sets ``dbid`` to the database's identity (system identifier / OID) for a
log line, NULL where the role may not read it: a report then never mixes the lines of a
dropped and recreated database of the same name. Used by every function that logs evidence."""

def column_type(ctx: PlanContext, entry: TenantTable) -> str:
    """The tenant column's type as the catalog has it (``format_type``); a column the
    toolkit adds gets the root key's type."""
    column = entry.table.column(entry.column)
    return column.type if column is not None else ctx.key_column_type()


def tenant_value(ctx: PlanContext, entry: TenantTable) -> sql.Composed:
    """The current tenant, typed for ``entry``'s own tenant column, so the comparison uses
    that column's index and never errors on a value the root itself accepts.

    The setting is read as ``tenant.key_type`` (what the root's policy reads; a malformed
    setting fails there too), then: the integer types compare with each other directly
    (``integer = bigint`` is indexable); a text-like column compares with the text; a
    ``uuid`` or integer column under a ``text`` key casts only values that have that shape
    (others match no row instead of raising an error in every query)."""
    key = ctx.key_type
    col = column_type(ctx, entry)
    setting = ctx.playbook.tenant.setting
    value = ctx.tenant_value()
    if col == key or (col in _INTEGERS and key in _INTEGERS):
        return value
    if _TEXTS.match(col):
        return compose("({})::text", value)
    raw = compose("NULLIF(current_setting({}, true), '')", sql.Literal(setting))
    if key == "text" and col in _INTEGERS:
        return compose("CASE WHEN {raw} ~ {shape} THEN ({raw})::bigint END",
            raw=raw, shape=sql.Literal(_INTEGER_TEXT))
    if key == "text" and col == "uuid":
        return compose("CASE WHEN {raw} ~ {shape} THEN ({raw})::uuid END",
            raw=raw, shape=sql.Literal(_UUID_TEXT))
    check_tenant_type(ctx, entry)
    return compose("({})::{}", value, sql.SQL(col))


def check_tenant_type(ctx: PlanContext, entry: TenantTable) -> None:
    """Refuse a tenant column no tenant value can match. Stages call it while planning:
    their statements are built later, when first read (see :class:`~rls_migrate.steps.Later`),
    and a bad playbook must fail ``plan`` in every format, before anything runs."""
    key = ctx.key_type
    col = column_type(ctx, entry)
    if (key == "uuid" and col in _INTEGERS) or (key in _INTEGERS and col == "uuid"):
        raise PlaybookError(
            f"tables.{entry.qname}: its tenant column {entry.column} is {col}, but the tenant "
            f"key ({ctx.playbook.tenant.key}) is {key}: no tenant value can match both; "
            "convert the column, or correct tenant.key_type")


def tenant_match(ctx: PlanContext, entry: TenantTable) -> sql.Composed:
    """``col = (SELECT <current tenant>)``: the sub-select is an InitPlan, so the setting is
    read once per statement, and the comparison can use a tenant-leading index."""
    return compose("{} = (SELECT {})", identifier(entry.column),
                                              tenant_value(ctx, entry))


def recorder(entry: TenantTable, operation: str) -> sql.Identifier:
    """``rls_migrate.observe_r_<table>`` / ``observe_w_<table>``: one function per table and
    operation, so pg_stat_user_functions counts violating statements per table for free."""
    return function_name(f"observe_{operation[0]}", entry.qname)


def recorder_name(entry: TenantTable, operation: str) -> str:
    """The recorder's name inside ``rls_migrate`` (``pg_stat_user_functions.funcname``)."""
    return object_name(f"observe_{operation[0]}_", entry.qname)


def recorder_signature(ctx: PlanContext, entry: TenantTable, operation: str) -> sql.Composed:
    """``rls_migrate.observe_r_x(name)``, for GRANT and DROP FUNCTION."""
    return compose("{}(name)", recorder(entry, operation))


def legacy_recorder_signature(ctx: PlanContext, entry: TenantTable,
                              operation: str) -> sql.Composed:
    """The signature earlier versions gave the recorder (``(<root key type>, name)``, called
    once per row): dropped when observe or the kill switch installs the current one."""
    return compose("{}({}, name)", recorder(entry, operation),
                                          sql.SQL(ctx.key_column_type()))


def observe_expression(ctx: PlanContext, entry: TenantTable, operation: str) -> sql.Composed:
    """:func:`build_observe_expression`, built once per plan (observe's policy and the kill
    switch's)."""
    return ctx.once(("observe_expression", entry.qname, operation),
                    lambda: build_observe_expression(ctx, entry, operation))


def build_observe_expression(ctx: PlanContext, entry: TenantTable,
                             operation: str) -> sql.Composed:
    """True for every row (unless :data:`MODE_SETTING` is ``enforce``); the first row the
    enforced policy would reject calls the recorder, once per statement (an InitPlan).

    The mode is read here, not in the recorder, so a replay (``enforce``, or an operator's
    ``quiet``) never calls it and never counts in pg_stat_user_functions. ``current_user`` is
    passed in because inside the SECURITY DEFINER recorder it is the function's owner.
    ``nullif(num_nonnulls(x), 0) IS NOT NULL`` is ``x IS NOT NULL`` for the planner's sake:

    * ``IS NOT NULL`` is estimated at 99.5 % (a bare boolean at a third of the rows, which
      would shrink row estimates and could change plans), so observe keeps the estimates of
      no RLS at all;
    * an InitPlan's result costs nothing per row, so without the two cheap C functions the
      policy would cost the same as a user's ``account_id = $1``, and PostgreSQL, which runs
      cheap leakproof user quals first only when they are cheaper than the policy, would run
      the policy first, and record every other tenant's row that the user's own filter was
      about to drop."""
    record = compose("{}(current_user)", recorder(entry, operation))
    return compose(
        "({match}) OR (nullif(num_nonnulls((SELECT CASE current_setting({mode}, true)"
        " WHEN 'enforce' THEN NULL::boolean"
        " WHEN 'quiet' THEN has_schema_privilege(session_user, {schema}, 'USAGE') OR {record}"
        " ELSE {record} END)), 0) IS NOT NULL)",
        match=tenant_match(ctx, entry), mode=sql.Literal(MODE_SETTING),
        schema=sql.Literal(TOOLKIT_SCHEMA), record=record)


def observe_enables_rls(entry: TenantTable) -> bool:
    """Whether observe turns RLS on for this table (and so adds the permissive baseline, and
    rollback turns RLS off again): RLS is off today, or our baseline policy shows that an
    earlier observe run turned it on. A table that already had RLS keeps its own policies
    deciding what is visible; the tenant policy only records."""
    return not entry.table.rls_enabled or any(
        p.name == BASELINE_POLICY for p in entry.table.policies)


def _session_capture(ctx: PlanContext) -> sql.Composable:
    """A session that started before observe set ``log_parameter_max_length_on_error`` for
    the application role (a pooled connection) logs no parameters: the first recording turns
    it on for the session, so its later statements carry them. Session-level, undone if the
    transaction rolls back; a refusal (a non-superuser owner) is ignored."""
    size = ctx.playbook.options.observe.capture_parameters
    if not size:
        return sql.SQL("")
    return compose(
        "  IF current_setting('log_parameter_max_length_on_error') = '0' THEN\n"
        "    BEGIN\n"
        "      PERFORM set_config('log_parameter_max_length_on_error', {}, false);\n"
        "    EXCEPTION WHEN OTHERS THEN\n"
        "      NULL;\n"
        "    END;\n"
        "  END IF;\n", sql.Literal(str(size)))


def recorder_function(ctx: PlanContext, entry: TenantTable, operation: str) -> sql.Composed:
    """:func:`build_recorder_function`, built once per plan (observe and enforce both
    install it)."""
    return ctx.once(("recorder_function", entry.qname, operation),
                    lambda: build_recorder_function(ctx, entry, operation))


def build_recorder_function(ctx: PlanContext, entry: TenantTable, operation: str
                            ) -> sql.Composed:
    """The recording function: a stable LOG line and a sample row once per statement, table
    and operation, and always ``true``.

    * It runs once per statement already (an InitPlan); the transaction-local marker
      (``set_config(..., true)``, allowed in read-only transactions and on standbys) holding
      the statement's start time also keeps a statement that runs the plan several times (a
      function called per row) to one record.
    * The sample row is written only where writing can work (not read-only, not in
      recovery), inside its own exception block, so a missing or locked sample table never
      turns into an error for the application; ``lock_timeout`` bounds that wait.
    * SECURITY DEFINER, so a role without any privilege on the private schema can still
      record; ``search_path`` is pinned because of that. The caller's ``current_user`` comes
      in as ``caller``; ``session_user`` is the login role.
    * The database's identity (system identifier and OID) goes into the log line, so a
      report never mixes the lines of a dropped and recreated database of the same name.
    * PARALLEL UNSAFE (the default) because ``set_config`` and the exception block are not
      allowed in parallel mode: statements on observed tables run without parallel workers.
    """
    digest = hashlib.sha1(f"{entry.qname}:{operation}".encode()).hexdigest()[:16]
    marker = f"rls_migrate.seen_{digest}"  # per transaction: the last statement recorded
    # The backend-status snapshot is cached per transaction: clear it, or a second statement
    # of the same transaction would read the first one's query id.
    query_id = (sql.SQL("(SELECT a.query_id FROM pg_stat_clear_snapshot() c,"
                        " pg_stat_get_activity(pg_backend_pid()) a)")
                if ctx.catalog.major >= 14 else sql.SQL("NULL::bigint"))
    body = compose(
        "DECLARE\n"
        "  stamp text;\n"
        "  seen_at timestamptz;\n"
        "  ctx text;\n"
        "  kind text;\n"
        "  app text;\n"
        "  stmt text;\n"
        "  qid bigint;\n"
        "  ro boolean;\n"
        "  standby boolean;\n"
        "  dbid text;\n"
        "  declared text;\n"
        "BEGIN\n"
        "  stamp := statement_timestamp()::text;\n"
        "  IF current_setting({marker}, true) IS NOT DISTINCT FROM stamp THEN\n"
        "    RETURN true;\n"
        "  END IF;\n"
        "  PERFORM set_config({marker}, stamp, true);\n"
        "  -- For the write-truth triggers: this statement was recorded, by this role.\n"
        "  PERFORM set_config({candidate}, stamp, true);\n"
        "  PERFORM set_config({caller_setting}, caller, true);\n"
        "  seen_at := clock_timestamp();\n"
        "  ctx := current_setting({setting}, true);\n"
        "  kind := CASE WHEN coalesce(ctx, '') = '' THEN 'no_context' ELSE 'wrong_tenant' END;\n"
        "  app := current_setting('application_name');\n"
        "  stmt := current_query();\n"
        "  IF stmt ~* '^\\s*(FETCH|MOVE)\\M' THEN\n"
        "    -- A server-side cursor's plan runs at FETCH: record the query it was declared\n"
        "    -- for (pg_cursors: this session's), not the FETCH.\n"
        "    SELECT c.statement INTO declared FROM pg_cursors c\n"
        "     WHERE position(c.name IN stmt) > 0 ORDER BY length(c.name) DESC LIMIT 1;\n"
        "    stmt := coalesce(declared, stmt);\n"
        "  END IF;\n"
        "  stmt := left(stmt, {chars});\n"
        "  qid := {query_id};\n"
        "  ro := current_setting('transaction_read_only') = 'on';\n"
        "  standby := pg_is_in_recovery();\n"
        "{database_identity}"
        "  RAISE LOG {message}, json_build_object('v', {version}, 'at', seen_at, 'table', {table},"
        " 'op', {op}, 'kind', kind, 'db', current_database(), 'dbid', dbid, 'role', caller,"
        " 'session_user', session_user, 'app', app, 'pid', pg_backend_pid(),"
        " 'context', ctx, 'query_id', qid, 'read_only', ro OR standby, 'statement', stmt)::text;\n"
        "{capture}"
        "  IF NOT ro AND NOT standby THEN\n"
        "    BEGIN\n"
        "      INSERT INTO {samples} (at, table_name, operation, kind, role_name, session_role,"
        " application_name, pid, statement, query_id, context, read_only)\n"
        "      VALUES (seen_at, {table}, {op}, kind, caller, session_user, app, pg_backend_pid(),"
        " stmt, qid, ctx, false);\n"
        "    EXCEPTION WHEN OTHERS THEN\n"
        "      NULL;  -- the log line and the counter still hold the evidence\n"
        "    END;\n"
        "  END IF;\n"
        "  RETURN true;\n"
        "END",
        candidate=sql.Literal(CANDIDATE_SETTING), caller_setting=sql.Literal(CALLER_SETTING),
        database_identity=DATABASE_IDENTITY,
        capture=_session_capture(ctx), setting=sql.Literal(ctx.playbook.tenant.setting),
        marker=sql.Literal(marker), chars=sql.Literal(STATEMENT_CHARS), query_id=query_id,
        message=sql.Literal(LOG_PREFIX + "%"), version=sql.Literal(LOG_VERSION),
        table=sql.Literal(str(entry.qname)), op=sql.Literal(operation),
        samples=identifier(TOOLKIT_SCHEMA, SAMPLES_TABLE))
    return compose(
        "CREATE OR REPLACE FUNCTION {fn}(caller name) RETURNS boolean"
        " LANGUAGE plpgsql VOLATILE SECURITY DEFINER COST 1"
        " SET search_path = pg_catalog, pg_temp SET lock_timeout = '50ms' AS {body}"
    , fn=recorder(entry, operation), body=sql.Literal(as_text(body)))


def install_recorders(ctx: PlanContext, entry: TenantTable) -> list[sql.Composable]:
    """Both recorders of a table, callable by everyone (policies run as the querying
    role), and the per-row recorders of earlier versions gone."""

    def build() -> tuple[sql.Composable, ...]:
        out: list[sql.Composable] = []
        for operation in OPERATIONS:
            out += [recorder_function(ctx, entry, operation),
                    compose("GRANT EXECUTE ON FUNCTION {} TO PUBLIC",
                        recorder_signature(ctx, entry, operation))]
        return tuple(out)

    return list(ctx.once(("install_recorders", entry.qname), build))


def drop_legacy_recorders(ctx: PlanContext, entry: TenantTable) -> list[sql.Composable]:
    """After the policy stopped calling them (a function a policy uses cannot be dropped)."""
    return list(ctx.once(("drop_legacy_recorders", entry.qname), lambda: tuple(
        compose("DROP FUNCTION IF EXISTS {}", legacy_recorder_signature(ctx, entry, operation))
        for operation in OPERATIONS)))


def tenant_policy_exists(entry: TenantTable) -> sql.Composed:
    return policy_exists_check(entry.qname, TENANT_POLICY)
