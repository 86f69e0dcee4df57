"""Retiring the sync triggers (``options.index.sync_triggers``), planned with the index stage.

add-column's sync trigger fills the tenant column of rows the application inserts without
it. Citus refuses triggers on distributed tables, and once the application writes the tenant
itself the trigger has nothing left to do. Whether it does is a fact to measure, not assume:

* ``watch``: a second trigger, ``rls_migrate_probe_<table>``, fires before the sync trigger
  (triggers fire in name order) only for rows that arrive without the tenant
  (``WHEN (NEW.tenant IS NULL)``), and counts them with ``nextval`` on a sequence of its own
  (immediate, outside the application's transaction, no row lock, no statistics delay). Two
  more sequences record when the watch began and the table's insert counter then;
* ``drop``: in one short transaction, a check reads the counts and refuses (the step fails
  with the numbers) unless the watch ran at least ``options.index.sync_watch_min``, rows were
  inserted meanwhile, and none arrived without the tenant; then the sync trigger, its
  function and the watch go, and for an owned table (``strategy: owned``) the owner trigger
  on the owning table too (it gives the owned row its owner's tenant: the same job, proven
  unneeded by the same count). Once retired (journaled), add-column's done checks count
  them as done: a rerun of add-column does not put them back. A refusal because rows still arrive without the tenant starts
  the watch over (``setval`` is not rolled back with the failed step): once the application
  is fixed, the next attempt after the window proves it. Rollback puts the sync trigger back
  exactly as add-column made it.

With the tenant written by the application, a row moved to another parent keeps its tenant;
a composite foreign key (``tenant_primary_keys``) refuses a move into another tenant.
"""

from __future__ import annotations

from psycopg import sql

from rls_migrate.sqlcompose import compose, identifier
from rls_migrate.stages import add_column
from rls_migrate.stages.common import (
    TOOLKIT_SCHEMA,
    PlanContext,
    TenantTable,
    function_name,
    object_name,
    regclass_literal,
    trigger_exists_check,
)
from rls_migrate.stages.sync_trigger import owner_trigger_name, sync_trigger_name
from rls_migrate.steps import Estimate, Lock, Step

PROBE_PREFIX = "rls_migrate_probe_"


def probe_trigger_name(entry: TenantTable) -> str:
    return object_name(PROBE_PREFIX, entry.qname)


def probe_sequence(entry: TenantTable, kind: str = "missing") -> sql.Identifier:
    """The watch's counters, sequences because ``nextval``/``setval`` are immediate and outside
    any transaction: ``missing`` counts rows without the tenant, ``since`` holds the watch's
    start (epoch seconds), ``base`` the table's insert counter then."""
    return identifier(TOOLKIT_SCHEMA, object_name(f"{kind}_", entry.qname))


def _seq_text(entry: TenantTable, kind: str) -> sql.Literal:
    return sql.Literal(probe_sequence(entry, kind).as_string(None))


def _restart(entry: TenantTable) -> sql.Composed:
    """SQL statements (for a PL/pgSQL body) that start the watch over from now."""
    return compose(
        "PERFORM setval({since}, floor(extract(epoch FROM now()))::bigint, true),"
        " setval({base}, {ins}, true), setval({missing}, 0, true);",
        since=_seq_text(entry, "since"), base=_seq_text(entry, "base"),
        missing=_seq_text(entry, "missing"), ins=_inserted_sql(entry))


def _inserted_sql(entry: TenantTable) -> sql.Composed:
    return compose("coalesce((SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = {}), 0)",
                   regclass_literal(entry.qname))


def _do(body: sql.Composable, declare: str = "") -> sql.Composed:
    text = compose("{}BEGIN {} END", sql.SQL(declare), body).as_string(None)
    return compose("DO {}", sql.Literal(text))


def watch_step(ctx: PlanContext, entry: TenantTable) -> Step:
    fn = function_name("probe", entry.qname)
    seq = probe_sequence(entry)
    trigger = probe_trigger_name(entry)
    sync = sync_trigger_name(entry)
    return Step(
        id=f"watch_sync:{entry.qname}",
        stage="index",
        kind="watch_sync_trigger",
        table=entry.qname,
        description=f"trigger {trigger}: counts rows that arrive without {entry.column} (the "
                    f"sync trigger {sync} fills them)",
        statements=(
            *(compose("CREATE SEQUENCE IF NOT EXISTS {} MINVALUE 0", probe_sequence(entry, k))
              for k in ("missing", "since", "base")),
            _do(_restart(entry)),
            # SECURITY DEFINER: it fires in the application's inserts, and the application
            # role has no rights on the toolkit's schema (nor should it).
            compose("CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql"
                    " SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body}", fn=fn,
                    body=sql.Literal(compose("BEGIN PERFORM nextval({}); RETURN NEW; END",
                                             sql.Literal(seq.as_string(None))).as_string(None))),
            compose("DROP TRIGGER IF EXISTS {} ON {}", identifier(trigger), entry.ident),
            compose("CREATE TRIGGER {} BEFORE INSERT ON {} FOR EACH ROW WHEN (NEW.{} IS NULL)"
                    " EXECUTE FUNCTION {}()", identifier(trigger), entry.ident,
                    identifier(entry.column), fn),
        ),
        lock=Lock.SHARE_ROW_EXCLUSIVE,
        # Done once watching, and for good once the sync trigger is gone (drop mode).
        done_check=compose("SELECT ({}) OR NOT ({})", trigger_exists_check(entry.qname, trigger),
                           trigger_exists_check(entry.qname, sync)),
        inverse=(compose("DROP TRIGGER IF EXISTS {} ON {}", identifier(trigger), entry.ident),
                 compose("DROP FUNCTION IF EXISTS {}()", fn),
                 *(compose("DROP SEQUENCE IF EXISTS {}", probe_sequence(entry, k))
                   for k in ("missing", "since", "base"))),
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        estimate=Estimate(seconds=0.01),
        why="Citus refuses triggers on distributed tables: the sync trigger can go once the "
            "application writes the tenant itself, and this counts whether it does",
        risks=("one more BEFORE INSERT trigger; it runs only for rows without the tenant",),
    )


def _readings(entry: TenantTable) -> sql.Composed:
    """``since, inserted, missing, watched_s``: the watch's numbers, as a query."""
    return compose(
        "SELECT to_timestamp(s.last_value), {ins} - b.last_value,"
        " CASE WHEN m.is_called THEN m.last_value ELSE 0 END,"
        " extract(epoch FROM now()) - s.last_value"
        " FROM {since} s, {base} b, {missing} m",
        ins=_inserted_sql(entry), since=probe_sequence(entry, "since"),
        base=probe_sequence(entry, "base"), missing=probe_sequence(entry, "missing"))


def drop_step(ctx: PlanContext, entry: TenantTable, recreate: tuple[sql.Composable, ...],
              owner_recreate: tuple[sql.Composable, ...] = ()) -> Step:
    fn = function_name("probe", entry.qname)
    trigger = probe_trigger_name(entry)
    sync = sync_trigger_name(entry)
    sync_fn = function_name("sync", entry.qname)
    min_s = ctx.playbook.options.index.sync_watch_min / 1000.0
    table = str(entry.qname)
    proof = _do(compose(
        "IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = {t} AND tgname = {sync})"
        " THEN RETURN; END IF;"
        " IF to_regclass({missing}) IS NULL OR NOT EXISTS (SELECT 1 FROM pg_trigger"
        " WHERE tgrelid = {t} AND tgname = {probe}) THEN RAISE EXCEPTION '%', {nowatch}; END IF;"
        " {readings} INTO since, inserted, missing, watched;"
        " IF missing > 0 THEN {restart} RAISE EXCEPTION '% row(s) inserted into % since % arrived"
        " without %: the application does not write it yet (the sync trigger stays; the watch"
        " starts over now)', missing, {tab}, since, {col}; END IF;"
        " IF watched < {min_s} THEN RAISE EXCEPTION 'watched % for % s of the % s needed"
        " (options.index.sync_watch_min): apply the index stage again later', {tab},"
        " round(watched::numeric, 1), {min_s}; END IF;"
        " IF inserted < 1 THEN RAISE EXCEPTION 'no row inserted into % since %: nothing proves"
        " the application writes % (the sync trigger stays)', {tab}, since, {col};"
        " END IF;",
        t=regclass_literal(entry.qname), sync=sql.Literal(sync), probe=sql.Literal(trigger),
        missing=_seq_text(entry, "missing"), readings=_readings(entry),
        restart=_restart(entry), tab=sql.Literal(table), col=sql.Literal(entry.column),
        min_s=sql.Literal(min_s),
        nowatch=sql.Literal(f"{table} has no watch on its sync trigger: apply the index stage "
                            "with options.index.sync_triggers: watch first, let the "
                            "application run, then drop")),
        declare="DECLARE since timestamptz; missing bigint; inserted bigint; watched float8; ")
    owner_drops: tuple[sql.Composable, ...] = ()
    done = compose("SELECT NOT ({})", trigger_exists_check(entry.qname, sync))
    also = ""
    if owner_recreate and entry.parent is not None:
        owner, owner_trigger = entry.parent.qname, owner_trigger_name(entry)
        owner_drops = (
            compose("DROP TRIGGER IF EXISTS {} ON {}", identifier(owner_trigger),
                    owner.ident),
            compose("DROP FUNCTION IF EXISTS {}()", function_name("owns", entry.qname)))
        done = compose("SELECT NOT ({}) AND NOT ({})", trigger_exists_check(entry.qname, sync),
                       trigger_exists_check(owner, owner_trigger))
        also = f" and the owner trigger {owner_trigger} on {owner}"
    return Step(
        id=f"drop_sync:{entry.qname}",
        stage="index",
        kind="drop_sync_trigger",
        table=entry.qname,
        description=f"drop the sync trigger {sync}{also} once its watch proves the "
                    f"application writes {entry.column} (refused otherwise, with the count)",
        statements=(
            proof,
            compose("DROP TRIGGER IF EXISTS {} ON {}", identifier(sync), entry.ident),
            compose("DROP FUNCTION IF EXISTS {}()", sync_fn),
            compose("DROP TRIGGER IF EXISTS {} ON {}", identifier(trigger), entry.ident),
            compose("DROP FUNCTION IF EXISTS {}()", fn),
            *(compose("DROP SEQUENCE IF EXISTS {}", probe_sequence(entry, k))
              for k in ("missing", "since", "base")),
            *owner_drops,
        ),
        # ACCESS EXCLUSIVE on the table (and, for an owned table, on its owner), briefly.
        lock=Lock.ACCESS_EXCLUSIVE,
        done_check=done,
        # Back: the triggers exactly as add-column creates them (the watch step's own
        # inverse has nothing left to drop).
        inverse=(*recreate, *owner_recreate),
        inverse_lock=Lock.SHARE_ROW_EXCLUSIVE,
        estimate=Estimate(seconds=0.01),
        why="Citus refuses triggers on distributed tables",
    )


def sync_steps(ctx: PlanContext, notes: list[str]) -> list[Step]:
    mode = ctx.playbook.options.index.sync_triggers
    if mode == "keep":
        return []
    creates = {step.id: step.statements for step in add_column.plan(ctx).steps}
    watches: list[Step] = []
    drops: list[Step] = []
    for entry in ctx.tenant_tables:
        sync = creates.get(f"sync_trigger:{entry.qname}")
        if not entry.added or sync is None:
            continue
        watches.append(watch_step(ctx, entry))
        if mode == "drop":
            drops.append(drop_step(ctx, entry, sync,
                                   creates.get(f"owner_trigger:{entry.qname}", ())))
    steps = watches + drops
    if mode == "watch" and steps:
        notes.append("sync_triggers: watch: `rls-migrate plan --target citus` shows, per table, "
                     "how many rows arrived without the tenant since; set sync_triggers: drop "
                     "once none do")
    return steps


def watch_readings_sql(ctx: PlanContext) -> list[tuple[TenantTable, sql.Composed]]:
    """Per watched table, the query of its watch's numbers (since, rows inserted since, rows
    without the tenant, seconds watched), for the readiness report."""
    return [(entry, _readings(entry)) for entry in ctx.tenant_tables
            if entry.added and any(t.name == probe_trigger_name(entry)
                                   for t in entry.table.triggers)]
