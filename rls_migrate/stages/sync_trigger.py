"""The sync trigger: how a row written after add-column gets its tenant, and keeps it.

Rules (a row of a derived, hint or owned table; ``col`` its tenant column):

1. An INSERT that names a tenant keeps it; an UPDATE that leaves the link as it was keeps
   the row's tenant.
2. A link that is NULL (a new row without a parent, ``ON DELETE SET NULL`` of the parent,
   an update of the link to NULL) names no parent: the row keeps the tenant it had, and a
   row that had none takes the writer's, from the tenant setting.
3. A link that names a parent: the parent's tenant, read with the trigger owner's rights
   (SECURITY DEFINER: a parent of another tenant is found even under enforced RLS, so the
   write is refused by the policy instead of linking across tenants). When the tenant
   setting names another tenant, the parent's is kept and the conflict is recorded (a LOG
   line and a sample in ``rls_migrate.sync_conflicts``, once per transaction and table):
   silently choosing either would hide a bug in the writer.
4. A parent that cannot be resolved (not written yet, an FK-less hint, a deferred foreign
   key) or has no tenant itself: the writer's tenant from the setting; without a setting,
   an INSERT stays empty (the backfill, or the preflight, finds it) and an UPDATE keeps
   the row's tenant.

Reverse one-to-one (``strategy: owned``): the row is owned by the row that points at it
(``Envelope.documentMetaId -> DocumentMeta.id``), which is often written after it. Rules
1-4 apply to the owned row itself (usually rule 4: the writer's tenant); in addition, an
AFTER trigger on the owner fills the owned row when the owner is written or re-pointed, and
records a conflict when the owned row carried another tenant (the owner's wins).

A tenant setting that does not cast to the column's type is treated as unset (and logged):
before enforcement the trigger must never fail a write the application made before.
"""

from __future__ import annotations

from psycopg import sql

from rls_migrate.catalog import QualifiedName
from rls_migrate.sqlcompose import as_text, compose, identifier, sep
from rls_migrate.stages.common import (
    PlanContext,
    TenantTable,
    _digest,
    cast_sql,
    object_name,
)

SYNC_TRIGGER_PREFIX = "rls_migrate_sync_"
OWNER_TRIGGER_PREFIX = "rls_migrate_owns_"
CONFLICTS_TABLE = identifier("rls_migrate", "sync_conflicts")


def sync_trigger_name(entry: TenantTable) -> str:
    return object_name(SYNC_TRIGGER_PREFIX, entry.qname)


def owner_trigger_name(entry: TenantTable) -> str:
    """The AFTER trigger on the owner of ``entry`` (a reverse one-to-one table)."""
    return object_name(OWNER_TRIGGER_PREFIX, entry.qname)


def _marker(qname: QualifiedName) -> sql.Literal:
    """The transaction-local setting that says a conflict of this table was sampled."""
    return sql.Literal(f"rls_migrate.sync_conflict_{_digest(str(qname), 12)}")


def _row_key(entry: TenantTable, row: str) -> sql.Composable:
    keys = entry.table.primary_key or ()
    if not keys:
        return sql.SQL("NULL::text")
    if row == "NEW":
        parts = [compose("NEW.{}::text", identifier(k)) for k in keys]
    else:
        parts = [compose("c.{}::text", identifier(k)) for k in keys]
    return compose("concat_ws(',', {})", sep(", ").join(parts))


def _record_conflict(entry: TenantTable, row_key: sql.Composable, found: sql.Composable,
                     setting: sql.Composable, source: sql.Literal) -> sql.Composed:
    """PL/pgSQL that logs a conflict and samples it, once per transaction and table (a
    writer that conflicts on every row must not write a log line or a sample per row)."""
    marker = _marker(entry.qname)
    table = sql.Literal(str(entry.qname))
    return compose(
        "IF current_setting({marker}, true) IS DISTINCT FROM 'on' THEN\n"
        "        PERFORM set_config({marker}, 'on', true);\n"
        "        RAISE LOG 'rls_migrate sync_conflict table=% key=% kept=% other=% source=%',"
        " {table}, {key}, {found}, {setting}, {source};\n"
        "        INSERT INTO {conflicts} (table_name, row_key, kept_tenant, other_tenant,"
        " source, session_role, application_name)\n"
        "        VALUES ({table}, {key}, ({found})::text, ({setting})::text, {source},"
        " session_user, current_setting('application_name', true));\n"
        "      END IF;",
        table=table, key=row_key, found=found, setting=setting, source=source, marker=marker,
        conflicts=CONFLICTS_TABLE)


def sync_function_body(ctx: PlanContext, entry: TenantTable) -> sql.Composed:
    """PL/pgSQL of the BEFORE INSERT OR UPDATE OF <link> trigger (the module's rules 1-4)."""
    assert entry.parent is not None and entry.parent_column is not None
    col = identifier(entry.column)
    ctype = sql.SQL(ctx.tenant_type(entry))
    new_fk = sep(", ").join(compose("NEW.{}", identifier(c))
                                for c in entry.parent.columns)
    old_fk = sep(", ").join(compose("OLD.{}", identifier(c))
                                for c in entry.parent.columns)
    link_null = sep(" OR ").join(compose("NEW.{} IS NULL", identifier(c))
                                     for c in entry.parent.columns)
    setting = sql.Literal(ctx.playbook.tenant.setting)
    record = _record_conflict(entry, _row_key(entry, "NEW"), sql.SQL("rlsm_found"),
                              sql.SQL("rlsm_setting"), sql.Literal("setting"))
    return compose(
        "#variable_conflict use_column\n"
        "DECLARE\n"
        "  rlsm_found {ctype};\n"
        "  rlsm_from_setting {ctype};\n"
        "  rlsm_setting text := NULLIF(current_setting({setting}, true), '');\n"
        "BEGIN\n"
        "  IF TG_OP = 'INSERT' AND NEW.{col} IS NOT NULL THEN RETURN NEW; END IF;\n"
        "  IF TG_OP = 'UPDATE' AND ROW({new_fk}) IS NOT DISTINCT FROM ROW({old_fk})\n"
        "     AND NEW.{col} IS NOT NULL THEN RETURN NEW; END IF;\n"
        "  IF rlsm_setting IS NOT NULL THEN\n"
        "    BEGIN\n"
        "      rlsm_from_setting := rlsm_setting::{ctype};\n"
        "    EXCEPTION WHEN OTHERS THEN\n"
        "      RAISE LOG 'rls_migrate sync: tenant setting % is not a %: ignored', "
        "rlsm_setting, {ctype_text};\n"
        "    END;\n"
        "  END IF;\n"
        "  IF {link_null} THEN\n"
        "    -- No parent to ask (a new row without one, ON DELETE SET NULL, an update to\n"
        "    -- NULL): keep the row's tenant; a row without one takes the writer's.\n"
        "    IF TG_OP = 'UPDATE' THEN NEW.{col} := COALESCE(NEW.{col}, OLD.{col}); END IF;\n"
        "    NEW.{col} := COALESCE(NEW.{col}, rlsm_from_setting);\n"
        "    RETURN NEW;\n"
        "  END IF;\n"
        "  SELECT {pcol} INTO rlsm_found FROM {parent} AS p WHERE {match};\n"
        "  IF rlsm_found IS NULL THEN\n"
        "    -- The parent is not there (yet), or has no tenant: the writer's tenant.\n"
        "    NEW.{col} := COALESCE(rlsm_from_setting, NEW.{col});\n"
        "    RETURN NEW;\n"
        "  END IF;\n"
        "  IF rlsm_setting IS NOT NULL AND rlsm_from_setting IS DISTINCT FROM rlsm_found THEN\n"
        "      {record}\n"
        "  END IF;\n"
        "  NEW.{col} := rlsm_found;\n"
        "  RETURN NEW;\n"
        "END",
        ctype=ctype, ctype_text=sql.Literal(ctx.tenant_type(entry)), setting=setting, col=col,
        new_fk=new_fk, old_fk=old_fk, link_null=link_null, pcol=ctx.parent_tenant_sql(entry),
        parent=entry.parent.qname.ident, match=ctx.parent_match(entry, "NEW"), record=record)


def owner_function_body(ctx: PlanContext, entry: TenantTable) -> sql.Composed:
    """PL/pgSQL of the AFTER INSERT OR UPDATE trigger on the owner of a reverse one-to-one
    table: the owned row takes the owner's tenant (rule "owned" of the module)."""
    assert entry.parent is not None and entry.parent_column is not None
    owner = ctx.tenant_table(entry.parent.qname)
    assert owner is not None
    col = identifier(entry.column)
    # NEW here is the owner's row: its link columns are the parent ref's ref_columns.
    owner_tenant = cast_sql(compose("NEW.{}", identifier(entry.parent_column)),
                            ctx.tenant_type(owner), ctx.tenant_type(entry))
    link_null = sep(" OR ").join(compose("NEW.{} IS NULL", identifier(r))
                                     for r in entry.parent.ref_columns)
    match = sep(" AND ").join(
        compose("c.{} = NEW.{}", identifier(c), identifier(r))
        for c, r in zip(entry.parent.columns, entry.parent.ref_columns, strict=True))
    record = _record_conflict(entry, sql.SQL("rlsm_key"), sql.SQL("rlsm_tenant"),
                              sql.SQL("rlsm_had"), sql.Literal("owner"))
    return compose(
        "#variable_conflict use_column\n"
        "DECLARE\n"
        "  rlsm_tenant {ctype} := {owner_tenant};\n"
        "  rlsm_had {ctype};\n"
        "  rlsm_key text;\n"
        "BEGIN\n"
        "  IF rlsm_tenant IS NULL OR {link_null} THEN RETURN NULL; END IF;\n"
        "  SELECT c.{col}, {key} INTO rlsm_had, rlsm_key FROM {owned} AS c WHERE {match}"
        " FOR UPDATE;\n"
        "  IF NOT FOUND OR rlsm_had IS NOT DISTINCT FROM rlsm_tenant THEN RETURN NULL; END IF;\n"
        "  IF rlsm_had IS NOT NULL THEN\n"
        "      {record}\n"
        "  END IF;\n"
        "  UPDATE {owned} AS c SET {col} = rlsm_tenant WHERE {match};\n"
        "  RETURN NULL;\n"
        "END",
        ctype=sql.SQL(ctx.tenant_type(entry)), owner_tenant=owner_tenant, link_null=link_null,
        col=col, key=_row_key(entry, "c"), owned=entry.ident, match=match, record=record)


def create_function(fn: sql.Identifier, body: str) -> sql.Composed:
    """``CREATE OR REPLACE FUNCTION`` of a trigger function whose PL/pgSQL is ``body`` (see
    :func:`body_text`): SECURITY DEFINER (the parent and owned rows are read and written with
    the migration role's rights, whatever tenant the writer's policies show), with a fixed
    search_path (everything in the body is schema-qualified)."""
    return compose("CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql"
                   " SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body}",
                   fn=fn, body=sql.Literal(body))


def function_current_check(fn: sql.Identifier, body: str) -> sql.Composed:
    """True when ``fn`` exists with exactly this body and SECURITY DEFINER: a function
    an older toolkit created is replaced by a rerun."""
    return compose("SELECT EXISTS (SELECT 1 FROM pg_proc WHERE oid = to_regprocedure({})"
                   " AND prosrc = {} AND prosecdef)",
                   sql.Literal(as_text(fn) + "()"), sql.Literal(body))


def body_text(body: sql.Composed) -> str:
    """A function body as the text both :func:`create_function` and
    :func:`function_current_check` quote (rendered once for the two)."""
    return as_text(body)
