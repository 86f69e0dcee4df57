"""Write-truth: whose rows a recorded DELETE or UPDATE really changed, seen when it changed them.

A recording is a candidate, judged by replay (:mod:`rls_migrate.replay`). Replay cannot judge
a DELETE or UPDATE whose rows are gone by then: a committed delete replays 0 rows observed
and 0 enforced, whether it deleted its own tenant's rows (a correct legacy delete through a
parent) or another tenant's (an IDOR delete). The truth is only there while the rows are
being changed, so observe mode installs, on every tenant table and partition, two triggers:

* ``rls_migrate_wt_row``: ``AFTER UPDATE OR DELETE FOR EACH ROW WHEN (<this statement was
  recorded> AND OLD.<tenant column> IS DISTINCT FROM <the current tenant>)``. The ``WHEN``
  is evaluated by the executor without a function call: a row of a statement the recorders
  did not flag costs reading a setting and comparing it; only another tenant's row of a
  flagged statement calls the function, which notes that row's tenant in a
  transaction-local setting. Not on a partitioned table itself (PostgreSQL would clone it
  to every partition, beside the partitions' own);
* ``rls_migrate_wt_stmt``: ``AFTER UPDATE OR DELETE FOR EACH STATEMENT WHEN (<this statement
  was recorded>)``: one record per flagged statement and table, saying whether any changed
  row belonged to another tenant: a LOG line ``rls_migrate write-truth {json}`` (the shape
  of the recorders' lines) and a row in ``rls_migrate.write_truth`` (gone if the transaction
  rolls back; the LOG line stays).

"This statement was recorded": the recorders set ``rls_migrate.candidate`` to the
statement's ``statement_timestamp()`` (transaction-local), and the role the policy saw in
``rls_migrate.caller``. A statement no recorder flagged (tenant-scoped, or by a role RLS
does not apply to) records nothing. Statements are linked to their recordings by backend
pid and time: a recording made at ``at`` by pid P belongs to the write-truth record of P
with ``statement_at <= at <= its own at``.

Why not a statement trigger with a transition table (``REFERENCING OLD TABLE``): PostgreSQL
copies every changed row into it for every statement, flagged or not, and refuses one on a
partition; in a quick trial (a 400,000-row table, a tenant-scoped DELETE of 20,000 rows,
PostgreSQL 18) it cost 2.3x the delete, the row trigger with ``WHEN`` 1.3x.
``benchmarks/observe_cost.py`` measures the row trigger on the sample database: about 0.4 us
per changed row, 1.3 us in a flagged statement.

The statement function is SECURITY DEFINER with a pinned ``search_path`` and
``lock_timeout`` (it writes into the private schema), and catches every error: it never
raises to the application. The row function changes one setting and touches no table.
CREATE TRIGGER takes SHARE ROW EXCLUSIVE (writes wait, reads go on), under lock_timeout with
retries; DROP TRIGGER (rollback, enforce) takes ACCESS EXCLUSIVE.
"""

from __future__ import annotations

from psycopg import sql

from rls_migrate.sqlcompose import as_text, compose, identifier
from rls_migrate.stages.common import (
    TOOLKIT_SCHEMA,
    PlanContext,
    TenantTable,
    function_name,
    regclass_literal,
)
from rls_migrate.stages.policies import (
    CALLER_SETTING,
    CANDIDATE_SETTING,
    DATABASE_IDENTITY,
    STATEMENT_CHARS,
    TENANT_POLICY,
    tenant_value,
)
from rls_migrate.steps import Estimate, Later, Lock, Step

LOG_PREFIX = "rls_migrate write-truth "
"""What every write-truth log message starts with; a JSON object follows on the same line."""
LOG_VERSION = 1
TABLE = "write_truth"
FOREIGN_SETTING = "rls_migrate.wt_foreign"
"""``<statement_timestamp> <tenant>`` of the first other tenant's row the statement changed."""
ROW_TRIGGER = "rls_migrate_wt_row"
STATEMENT_TRIGGER = "rls_migrate_wt_stmt"
OPERATIONS = ("delete", "update")


def row_function(entry: TenantTable) -> sql.Identifier:
    return function_name("wt_row", entry.qname)


def statement_function(entry: TenantTable) -> sql.Identifier:
    return function_name("wt_stmt", entry.qname)


def _flagged() -> sql.Composed:
    """True in a statement a recorder flagged (the candidate marker holds its start). The
    marker is empty (or unset) in every transaction no recorder ran in: that test first
    spares most rows formatting ``statement_timestamp()`` (0.87 -> 0.42 us a row, measured
    on the expression alone)."""
    return compose("coalesce(current_setting({name}, true), '') <> ''"
                   " AND current_setting({name}, true) = statement_timestamp()::text",
                   name=sql.Literal(CANDIDATE_SETTING))


def row_function_sql(entry: TenantTable) -> sql.Composed:
    body = compose(
        "DECLARE\n"
        "  stamp text := statement_timestamp()::text;\n"
        "BEGIN\n"
        "  IF coalesce(left(current_setting({foreign}, true), length(stamp) + 1), '')"
        " <> stamp || ' ' THEN\n"
        "    PERFORM set_config({foreign}, stamp || ' ' || coalesce(OLD.{col}::text, ''),"
        " true);\n"
        "  END IF;\n"
        "  RETURN NULL;\n"
        "END", foreign=sql.Literal(FOREIGN_SETTING), col=identifier(entry.column))
    return compose(
        "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql VOLATILE"
        " SET search_path = pg_catalog, pg_temp AS {body}",
        fn=row_function(entry), body=sql.Literal(as_text(body)))


def statement_function_sql(ctx: PlanContext, entry: TenantTable) -> sql.Composed:
    body = compose(
        "DECLARE\n"
        "  stamp text := statement_timestamp()::text;\n"
        "  mark text;\n"
        "  found boolean;\n"
        "  tenant text;\n"
        "  ctx text;\n"
        "  kind text;\n"
        "  caller text;\n"
        "  app text;\n"
        "  stmt text;\n"
        "  xid bigint;\n"
        "  dbid text;\n"
        "  seen_at timestamptz := clock_timestamp();\n"
        "BEGIN\n"
        "  mark := current_setting({foreign}, true);\n"
        "  found := coalesce(left(mark, length(stamp) + 1) = stamp || ' ', false);\n"
        "  IF found THEN\n"
        "    tenant := nullif(substr(mark, length(stamp) + 2), '');\n"
        "  END IF;\n"
        "  ctx := current_setting({setting}, true);\n"
        "  kind := CASE WHEN coalesce(ctx, '') = '' THEN 'no_context' ELSE 'wrong_tenant' END;\n"
        "  caller := nullif(current_setting({caller}, true), '');\n"
        "  app := current_setting('application_name');\n"
        "  stmt := left(current_query(), {chars});\n"
        "  xid := txid_current_if_assigned();\n"
        "{database_identity}"
        "  RAISE LOG {message}, json_build_object('v', {version}, 'at', seen_at,"
        " 'statement_at', statement_timestamp(), 'table', {table}, 'op', lower(TG_OP),"
        " 'foreign', found, 'row_tenant', tenant, 'kind', kind, 'db', current_database(),"
        " 'dbid', dbid, 'role', caller, 'session_user', session_user, 'app', app,"
        " 'pid', pg_backend_pid(), 'xid', xid, 'context', ctx, 'statement', stmt)::text;\n"
        "  BEGIN\n"
        "    INSERT INTO {samples} (at, statement_at, pid, xid, table_name, operation,"
        " foreign_rows, row_tenant, kind, context, role_name, session_role, application_name,"
        " statement)\n"
        "    VALUES (seen_at, statement_timestamp(), pg_backend_pid(), xid, {table},"
        " lower(TG_OP), found, tenant, kind, ctx, caller, session_user, app, stmt);\n"
        "  EXCEPTION WHEN OTHERS THEN\n"
        "    NULL;  -- the log line holds the evidence\n"
        "  END;\n"
        "  RETURN NULL;\n"
        "EXCEPTION WHEN OTHERS THEN\n"
        "  RETURN NULL;  -- never an error for the application\n"
        "END",
        foreign=sql.Literal(FOREIGN_SETTING), setting=sql.Literal(ctx.playbook.tenant.setting),
        caller=sql.Literal(CALLER_SETTING), chars=sql.Literal(STATEMENT_CHARS),
        message=sql.Literal(LOG_PREFIX + "%"), version=sql.Literal(LOG_VERSION),
        table=sql.Literal(str(entry.qname)), database_identity=DATABASE_IDENTITY,
        samples=identifier(TOOLKIT_SCHEMA, TABLE))
    return compose(
        "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql VOLATILE"
        " SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '50ms'"
        " AS {body}", fn=statement_function(entry), body=sql.Literal(as_text(body)))


def has_row_trigger(entry: TenantTable) -> bool:
    """A partitioned table's rows live in its partitions, which get their own."""
    return not entry.table.is_partitioned


def install(ctx: PlanContext, entry: TenantTable) -> list[sql.Composable]:
    """The functions and both triggers (the row trigger only where rows live); built once
    per plan (observe installs them, the kill switch puts them back)."""
    return list(ctx.once(("write_truth.install", entry.qname),
                         lambda: tuple(_install(ctx, entry))))


def _install(ctx: PlanContext, entry: TenantTable) -> list[sql.Composable]:
    ident = entry.ident
    out: list[sql.Composable] = [statement_function_sql(ctx, entry)]
    if has_row_trigger(entry):
        # The marker first: the tenant comparison (a cast of the setting) then runs only in
        # statements whose policy already evaluated it without error, never for a role RLS
        # does not apply to (an owner's maintenance with a stray setting must not fail).
        out += [
            row_function_sql(entry),
            compose("DROP TRIGGER IF EXISTS {} ON {}", identifier(ROW_TRIGGER), ident),
            compose("CREATE TRIGGER {} AFTER UPDATE OR DELETE ON {} FOR EACH ROW"
                    " WHEN ({flagged} AND OLD.{col} IS DISTINCT FROM {tenant})"
                    " EXECUTE FUNCTION {fn}()", identifier(ROW_TRIGGER), ident,
                    flagged=_flagged(), col=identifier(entry.column),
                    tenant=tenant_value(ctx, entry), fn=row_function(entry)),
        ]
    out += [
        compose("DROP TRIGGER IF EXISTS {} ON {}", identifier(STATEMENT_TRIGGER), ident),
        compose("CREATE TRIGGER {} AFTER UPDATE OR DELETE ON {} FOR EACH STATEMENT"
                " WHEN ({}) EXECUTE FUNCTION {}()", identifier(STATEMENT_TRIGGER), ident,
                _flagged(), statement_function(entry)),
    ]
    return out


def remove(entry: TenantTable) -> list[sql.Composed]:
    ident = entry.ident
    return [
        compose("DROP TRIGGER IF EXISTS {} ON {}", identifier(ROW_TRIGGER), ident),
        compose("DROP TRIGGER IF EXISTS {} ON {}", identifier(STATEMENT_TRIGGER), ident),
        compose("DROP FUNCTION IF EXISTS {}()", row_function(entry)),
        compose("DROP FUNCTION IF EXISTS {}()", statement_function(entry)),
    ]


def installed_check(entry: TenantTable) -> sql.Composed:
    """Both triggers are there, or the table is enforced already (its tenant policy calls
    no recorder: enforce dropped them, and nothing would flag a statement)."""
    names = [STATEMENT_TRIGGER] + ([ROW_TRIGGER] if has_row_trigger(entry) else [])
    table = regclass_literal(entry.qname)
    return compose(
        "SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = {table} AND tgname = ANY({names}))"
        " = {n} OR EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = {table}"
        " AND p.polname = {policy} AND NOT EXISTS (SELECT 1 FROM pg_depend d"
        " JOIN pg_proc f ON f.oid = d.refobjid JOIN pg_namespace n ON n.oid = f.pronamespace"
        " WHERE d.classid = 'pg_policy'::regclass AND d.objid = p.oid"
        " AND d.refclassid = 'pg_proc'::regclass AND n.nspname = {schema}))",
        table=table, names=sql.Literal(names), n=sql.Literal(len(names)),
        policy=sql.Literal(TENANT_POLICY), schema=sql.Literal(TOOLKIT_SCHEMA))


def step(ctx: PlanContext, entry: TenantTable) -> Step:
    return Step(
        id=f"observe-writes:{entry.qname}",
        stage="observe",
        kind="observe_write_truth",
        table=entry.qname,
        description="write-truth triggers: a recorded UPDATE or DELETE notes whether it "
                    "changed another tenant's row" + ("" if has_row_trigger(entry) else
                                                     " (statement trigger only: the rows "
                                                     "live in the partitions)"),
        statements=Later(lambda: tuple(install(ctx, entry))),
        lock=Lock.SHARE_ROW_EXCLUSIVE,
        done_check=Later(lambda: installed_check(entry)),
        inverse=Later(lambda: tuple(remove(entry))),
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        estimate=Estimate(seconds=0.01),
        why="replay cannot judge a DELETE or UPDATE whose rows are gone; the rows' tenants "
            "at write time can",
    )


__all__ = ["CALLER_SETTING", "CANDIDATE_SETTING", "LOG_PREFIX", "TABLE", "install", "remove",
           "step"]
