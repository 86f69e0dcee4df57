"""The data preflight: which rows will be (or are) without a tenant, per table, with counts
and sample keys, before anything depends on them.

Per tenant table:

* **NULL keys**: rows whose tenant column is NULL now (a direct table's own nullable
  ``account_id``; a derived table's column after add-column);
* **NULL links**: rows of a derived or hint table whose link to the parent is NULL (an
  optional relation, ``ON DELETE SET NULL``): no parent gives them a tenant;
* **orphans**: rows whose link names no row carrying a tenant, followed up the whole chain
  to the tenant (a parent that is gone, a parent without a tenant itself); for an owned
  table, rows no owner points at;
* **sync conflicts** the sync triggers recorded (a writer whose tenant setting disagreed
  with the parent).

``plan`` lists them in Risks (``--no-preflight`` skips the scans) (every table, not only the first with orphans). Before the
backfill, a table whose ``orphans`` is ``stop`` and that has rows no parent gives a tenant
refuses the stage up front; before constrain, a table that is to get NOT NULL and still has
rows without a tenant refuses the stage up front: one error with every such table's counts
and sample keys, nothing executed (instead of a raw 23514 halfway through).

Each table is one scan (reads only) (the chain to the tenant probed by index per row); small
tables are counted together, up to 250 in one statement (:func:`_batches`), each statement
under :data:`STATEMENT_TIMEOUT_MS`: a table that takes longer is reported as not checked
(a batch that does is counted again table by table). A table with no page has no row and
is not scanned. Sample keys are read only for tables that have such rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql

from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.errors import GateClosed
from rls_migrate.playbook import Playbook
from rls_migrate.sqlcompose import SqlText, compose, sep
from rls_migrate.stages.common import PlanContext, TenantTable, comparable, regclass_text
from rls_migrate.steps import Plan

SAMPLE_SIZE = 5
_KINDS = ("null_keys", "null_links", "orphans")
STATEMENT_TIMEOUT_MS = 120_000
"""Per table. A preflight that cannot finish in this time reports the table as unchecked."""
EMPTY_LOCK_TIMEOUT_MS = 1_000
"""How long the check for empty tables waits for a table's lock (see :func:`_empty_now`)."""


@dataclasses.dataclass(frozen=True)
class TableFindings:
    """Rows without a tenant in one table. ``null_keys`` is None when the tenant column does
    not exist yet (before add-column); counts are None when the table was not checked."""

    table: QualifiedName
    column: str
    strategy: str
    parent: QualifiedName | None
    link: tuple[str, ...]
    null_keys: int | None = None
    null_key_sample: tuple[str, ...] = ()
    null_links: int | None = None
    null_link_sample: tuple[str, ...] = ()
    orphans: int | None = None
    orphan_sample: tuple[str, ...] = ()
    sync_conflicts: int = 0
    sync_conflict_sample: tuple[str, ...] = ()
    unchecked: str | None = None  # why the table was not checked

    @property
    def without_tenant(self) -> int:
        """Rows that get (or have) no tenant: NULL links and orphans of a derived table, the
        NULL keys of a direct one."""
        if self.strategy in ("direct", "root"):
            return self.null_keys or 0
        return (self.null_links or 0) + (self.orphans or 0)


def _key_text(entry: TenantTable, alias: str) -> sql.Composable:
    keys = entry.table.primary_key
    if not keys:
        return compose("{}.ctid::text", sql.Identifier(alias))
    return compose("concat_ws(',', {})", sep(", ").join(
        compose("{}::text", sql.Identifier(alias, k)) for k in keys))


def _resolved(ctx: PlanContext, entry: TenantTable, depth: int,
              column_exists: frozenset[QualifiedName]) -> sql.Composable:
    """The tenant the row ``a<depth>`` of ``entry`` has or would get, as text: its own
    column where it exists and is filled, else its parent's, up the chain."""
    alias = f"a{depth}"
    own = compose("({})::text", sql.Identifier(alias, entry.column))
    if entry.parent is None or entry.strategy in ("direct", "root"):
        return own
    parent = ctx.tenant_table(entry.parent.qname)
    if parent is None:
        return own if entry.qname in column_exists else sql.SQL("NULL::text")
    palias = f"a{depth + 1}"
    match = []
    for (child_col, ref_col), (mine, theirs) in zip(
            zip(entry.parent.columns, entry.parent.ref_columns, strict=True),
            ctx.link_types(entry), strict=True):
        child: sql.Composable = sql.Identifier(alias, child_col)
        if not comparable(mine, theirs) and theirs is not None:
            child = compose("({})::{}", child, sql.SQL(theirs))
        match.append(compose("{} = {}", sql.Identifier(palias, ref_col), child))
    via = compose("(SELECT {} FROM {} AS {} WHERE {} LIMIT 1)",
                  _resolved(ctx, parent, depth + 1, column_exists), parent.ident,
                  sql.Identifier(palias), sep(" AND ").join(match))
    if entry.qname in column_exists:
        return compose("COALESCE({}, {})", own, via)
    return via


def _link_null(entry: TenantTable, alias: str) -> sql.Composable:
    if entry.parent is None or entry.owned or entry.strategy in ("direct", "root"):
        return sql.SQL("false")
    return sep(" OR ").join(compose("{} IS NULL", sql.Identifier(alias, c))
                                for c in entry.parent.columns)


def _kinds(entry: TenantTable) -> tuple[str, ...]:
    """The kinds of rows without a tenant ``entry`` can have (see :func:`_conditions`)."""
    return ("null_keys",) if entry.strategy in ("direct", "root") else _KINDS


def _conditions(ctx: PlanContext, entry: TenantTable,
                column_exists: frozenset[QualifiedName]) -> dict[str, sql.Composable]:
    """Per kind of row without a tenant (null keys; for a derived table also null links
    and orphans), the condition that finds it in ``entry`` (as ``a0``)."""
    own = sql.Identifier("a0", entry.column)
    null_key = compose("{} IS NULL", own) if entry.qname in column_exists else sql.SQL("false")
    if entry.strategy in ("direct", "root"):
        return {"null_keys": null_key}
    resolved = _resolved(ctx, entry, 0, column_exists)
    link_null = _link_null(entry, "a0")
    return {
        "null_keys": null_key,
        "null_links": compose("({}) AND {} IS NULL", link_null, resolved),
        "orphans": compose("NOT ({}) AND {} IS NULL", link_null, resolved),
    }


def _sample_query(entry: TenantTable, condition: sql.Composable) -> sql.Composed:
    return compose("SELECT {} FROM {} AS {} WHERE {} LIMIT {}", _key_text(entry, "a0"),
                   entry.ident, sql.Identifier("a0"), condition, sql.Literal(SAMPLE_SIZE))


def _columns_present(conn: psycopg.Connection[Any], ctx: PlanContext
                     ) -> frozenset[QualifiedName]:
    """Tenant tables whose tenant column exists now (live, not from the catalog snapshot:
    the gate runs right after other stages changed it), in one query."""
    entries = list(ctx.tenant_tables)
    if not entries:
        return frozenset()
    rows = conn.execute(
        "SELECT w.i FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS w(rel, col, i)"
        " WHERE EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = to_regclass(w.rel)"
        " AND a.attname = w.col AND NOT a.attisdropped)",
        [[regclass_text(e.qname) for e in entries], [e.column for e in entries]]).fetchall()
    return frozenset(entries[int(r[0]) - 1].qname for r in rows)


def _empty_now(conn: psycopg.Connection[Any], entries: list[TenantTable]
               ) -> frozenset[QualifiedName]:
    """Tables that have no rows now, known without reading them: a heap table whose main
    fork has no page holds no row (a row cannot exist without a page; an uncommitted insert
    has extended the file already), in one query. Partitioned tables, tables with
    inheritance children and other access methods are not judged here: they are counted.

    Reading a table's size takes its ACCESS SHARE lock: a table locked by another session
    (a migration's ACCESS EXCLUSIVE) would hold the whole query up, so it waits at most
    :data:`EMPTY_LOCK_TIMEOUT_MS`, and then no table is judged empty (all are counted,
    each under the statement timeout, as without this check)."""
    if not entries:
        return frozenset()
    try:
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true)",
                         [str(EMPTY_LOCK_TIMEOUT_MS)])
            rows = conn.execute(
                "SELECT w.i FROM unnest(%s::text[]) WITH ORDINALITY AS w(rel, i)"
                " JOIN pg_class c ON c.oid = to_regclass(w.rel)"
                " JOIN pg_am am ON am.oid = c.relam"
                " WHERE c.relkind = 'r' AND am.amname = 'heap' AND NOT c.relhassubclass"
                " AND pg_relation_size(c.oid) = 0",
                [[regclass_text(e.qname) for e in entries]]).fetchall()
    except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
        return frozenset()
    return frozenset(entries[int(r[0]) - 1].qname for r in rows)


def _not_null_now(conn: psycopg.Connection[Any], entry: TenantTable) -> bool:
    row = conn.execute(
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = to_regclass(%s)"
        " AND attname = %s AND NOT attisdropped",
        [regclass_text(entry.qname), entry.column]).fetchone()
    return bool(row and row[0])


def sync_conflicts(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Per table: how many conflicts the sync triggers sampled, and the latest few."""
    row = conn.execute("SELECT to_regclass('rls_migrate.sync_conflicts') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return {}
    out = {}
    for name, count, sample in conn.execute(
            "SELECT table_name, count(*), (array_agg(concat(coalesce(row_key, '?'), ': kept ',"
            " kept_tenant, ', not ', other_tenant, ' (', source, ')') ORDER BY at DESC))[1:%s]"
            " FROM rls_migrate.sync_conflicts GROUP BY table_name", [SAMPLE_SIZE]).fetchall():
        out[str(name)] = (int(count), tuple(str(s) for s in sample or ()))
    return out


def run_preflight(conn: psycopg.Connection[Any], ctx: PlanContext,
                  tables: frozenset[QualifiedName] | None = None) -> list[TableFindings]:
    """Count and sample the rows without a tenant in every tenant table (or ``tables``),
    parents first. Read-only; each table under :data:`STATEMENT_TIMEOUT_MS`."""
    with _session_timeout(conn):
        return _findings(conn, ctx, tables)


@contextlib.contextmanager
def _session_timeout(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """In autocommit, :data:`STATEMENT_TIMEOUT_MS` set once for the session (and restored):
    each table's queries then run as plain statements, one round trip each, instead of a
    transaction of four round trips. Otherwise each table gets its own transaction (see
    :func:`_under_timeout`)."""
    if not conn.autocommit:
        yield
        return
    row = conn.execute("SELECT current_setting('statement_timeout'),"
                       " set_config('statement_timeout', %s, false)",
                       [str(STATEMENT_TIMEOUT_MS)]).fetchone()
    try:
        yield
    finally:
        if row is not None and not conn.broken:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", [row[0]])


@contextlib.contextmanager
def _under_timeout(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """One table's queries under :data:`STATEMENT_TIMEOUT_MS`: already so for the session in
    autocommit (:func:`_session_timeout`), else in a transaction of their own."""
    if conn.autocommit:
        yield
        return
    with conn.transaction():
        conn.execute("SELECT set_config('statement_timeout', %s, true)",
                     [str(STATEMENT_TIMEOUT_MS)])
        yield


BATCH_TABLES = 250
"""At most this many tables counted by one statement."""
BATCH_BYTES = 64 << 20
"""At most this much data (the catalog's size of table, indexes and TOAST) counted by one
statement; a table larger than :data:`ALONE_BYTES` gets a statement of its own."""
ALONE_BYTES = 8 << 20


def _batches(entries: list[TenantTable]) -> list[list[TenantTable]]:
    """Small tables together (a statement that counts 250 tables instead of 250 round
    trips: a schema of 1,000 mostly empty tables is counted in four), large ones alone, so
    a batch stays far below :data:`STATEMENT_TIMEOUT_MS` (a batch that does not is retried
    table by table)."""
    out: list[list[TenantTable]] = []
    batch: list[TenantTable] = []
    size = 0
    for entry in entries:
        bytes_ = entry.table.size_bytes
        if bytes_ > ALONE_BYTES:
            out.append([entry])
            continue
        if batch and (len(batch) >= BATCH_TABLES or size + bytes_ > BATCH_BYTES):
            out.append(batch)
            batch, size = [], 0
        batch.append(entry)
        size += bytes_
    if batch:
        out.append(batch)
    return out


def _count_batch(conn: psycopg.Connection[Any], batch: list[TenantTable],
                 conditions: dict[QualifiedName, dict[str, sql.Composable]],
                 text: SqlText) -> dict[QualifiedName, dict[str, int]]:
    """The counts of every table of ``batch``, in one statement (``UNION ALL`` of one
    aggregate per table; a direct table's missing kinds are NULL). Rendered with
    :class:`SqlText` (each identifier quoted once): psycopg's own rendering of 250 tables'
    chains took longer than the server's counting."""
    selects = []
    for i, entry in enumerate(batch):
        columns: list[sql.Composable] = [compose("count(*) FILTER (WHERE {})", condition)
                   for condition in conditions[entry.qname].values()]
        columns += [sql.SQL("NULL::bigint")] * (len(_KINDS) - len(columns))
        selects.append(compose("SELECT {}, {} FROM {} AS {}", sql.Literal(i),
                               sep(", ").join(columns), entry.ident, sql.Identifier("a0")))
    with _under_timeout(conn):
        query = text(sep(" UNION ALL ").join(selects)).encode(conn.info.encoding)
        rows = conn.execute(query).fetchall()
    out = {}
    for row in rows:
        entry = batch[int(row[0])]
        out[entry.qname] = {kind: int(n) for kind, n in
                            zip(conditions[entry.qname], row[1:], strict=False)}
    return out


def _findings(conn: psycopg.Connection[Any], ctx: PlanContext,
              tables: frozenset[QualifiedName] | None) -> list[TableFindings]:
    present = _columns_present(conn, ctx)
    conflicts = sync_conflicts(conn)
    bases: dict[QualifiedName, TableFindings] = {}
    checked: list[TenantTable] = []
    for entry in ctx.tenant_tables:
        if tables is not None and entry.qname not in tables:
            continue
        bases[entry.qname] = base = TableFindings(
            entry.qname, entry.column, entry.strategy,
            entry.parent.qname if entry.parent else None,
            entry.parent.columns if entry.parent else (),
            sync_conflicts=conflicts.get(str(entry.qname), (0, ()))[0],
            sync_conflict_sample=conflicts.get(str(entry.qname), (0, ()))[1])
        if entry.strategy in ("direct", "root") and entry.qname not in present:
            bases[entry.qname] = dataclasses.replace(
                base, unchecked="its tenant column is missing")
            continue
        checked.append(entry)
    counted: dict[QualifiedName, dict[str, int]] = {}
    timed_out = f"not checked: longer than {STATEMENT_TIMEOUT_MS / 1000:g} s"
    empty = _empty_now(conn, checked)
    conditions: dict[QualifiedName, dict[str, sql.Composable]] = {}
    for entry in checked:
        if entry.qname in empty:
            counted[entry.qname] = dict.fromkeys(_kinds(entry), 0)
        else:
            conditions[entry.qname] = _conditions(ctx, entry, present)
    checked = [e for e in checked if e.qname not in empty]
    text = SqlText(conn)
    for batch in _batches(checked):
        try:
            counted.update(_count_batch(conn, batch, conditions, text))
        except psycopg.errors.QueryCanceled:
            if len(batch) == 1:
                bases[batch[0].qname] = dataclasses.replace(bases[batch[0].qname],
                                                            unchecked=timed_out)
                continue
            # Each table again on its own, under its own timeout: only the slow ones are
            # reported unchecked.
            for entry in batch:
                try:
                    counted.update(_count_batch(conn, [entry], conditions, text))
                except psycopg.errors.QueryCanceled:
                    bases[entry.qname] = dataclasses.replace(bases[entry.qname],
                                                             unchecked=timed_out)
    findings = []
    for qname, base in bases.items():
        counts = counted.get(qname)
        if counts is None:
            findings.append(base)
            continue
        table = ctx.tenant_table(qname)
        assert table is not None
        values: dict[str, Any] = {}
        try:
            with _under_timeout(conn):
                for kind, count in counts.items():
                    values[kind] = count
                    sample: tuple[str, ...] = ()
                    if count:
                        sample = tuple(str(r[0]) for r in conn.execute(
                            _sample_query(table, conditions[qname][kind])))
                    values[f"{kind[:-1]}_sample"] = sample
        except psycopg.errors.QueryCanceled:
            findings.append(dataclasses.replace(base, unchecked=timed_out))
            continue
        if qname not in present:
            values.pop("null_keys", None)
            values.pop("null_key_sample", None)
        findings.append(dataclasses.replace(base, **values))
    return findings


# --------------------------------------------------------------------------- words


def _sample(keys: tuple[str, ...]) -> str:
    return f" (sample keys: {', '.join(keys)})" if keys else ""


def describe(finding: TableFindings, playbook: Playbook) -> list[str]:
    """One line per kind of row without a tenant, saying what happens to it."""
    name = finding.table
    nullable = playbook.keeps_nullable(name)
    fate = ("they stay without a tenant (nullable): invisible to every tenant, seen by admin "
            "roles" if nullable else
            f"constrain refuses NOT NULL while they remain: fix or delete them, or set "
            f"tables.{name}.nullable: true")
    lines = []
    if finding.unchecked:
        return [f"{name}: preflight {finding.unchecked}"]
    if finding.strategy in ("direct", "root"):
        if finding.null_keys:
            lines.append(f"{name}: {finding.null_keys} row(s) with a NULL tenant key "
                         f"{finding.column}{_sample(finding.null_key_sample)}; {fate}")
    else:
        skip = playbook.orphans_for(name) == "skip"
        backfill = ("the backfill leaves them empty (orphans: skip)" if skip else
                    f"the backfill stops on them (orphans: stop; set tables.{name}.orphans: "
                    "skip to leave them empty)")
        if finding.null_links:
            lines.append(
                f"{name}: {finding.null_links} row(s) whose link "
                f"({', '.join(finding.link)}) is NULL get no tenant from {finding.parent}"
                f"{_sample(finding.null_link_sample)}; {backfill}; {fate}")
        if finding.orphans:
            what = (f"no row of {finding.parent} points at them" if finding.strategy == "owned"
                    else f"their link names no row of {finding.parent} that has a tenant")
            lines.append(f"{name}: {finding.orphans} orphan row(s): {what}"
                         f"{_sample(finding.orphan_sample)}; {backfill}; {fate}")
    if finding.sync_conflicts:
        lines.append(
            f"{name}: the sync trigger recorded {finding.sync_conflicts} write(s) whose tenant "
            f"setting named another tenant than the parent's (the parent's was kept)"
            f"{_sample(finding.sync_conflict_sample)}: see rls_migrate.sync_conflicts")
    return lines


def risks(findings: list[TableFindings], playbook: Playbook) -> list[str]:
    return [line for f in findings for line in describe(f, playbook)]


def preflight_risks(conn: psycopg.Connection[Any], catalog: Catalog,
                    playbook: Playbook) -> list[str]:
    """The preflight's findings as the plan's risk lines."""
    return risks(run_preflight(conn, PlanContext(catalog, playbook)), playbook)


def with_preflight(conn: psycopg.Connection[Any], catalog: Catalog, playbook: Playbook,
                   plan: Plan) -> Plan:
    """``plan`` with the preflight's findings appended to its risks."""
    found = preflight_risks(conn, catalog, playbook)
    return dataclasses.replace(plan, risks=(*plan.risks, *found))


# --------------------------------------------------------------------------- gates


def backfill_refusal(findings: list[TableFindings], playbook: Playbook) -> str | None:
    """The error for tables whose ``orphans`` is ``stop`` and that have rows no parent
    gives a tenant, or None."""
    stops = [f for f in findings if f.strategy not in ("direct", "root")
             and playbook.orphans_for(f.table) == "stop" and f.without_tenant]
    if not stops:
        return None
    lines = [line for f in stops for line in describe(f, playbook)]
    return ("backfill refused, nothing executed: rows in " + str(len(stops)) + " table(s) "
            "can get no tenant from a parent and their orphans policy is stop:\n  "
            + "\n  ".join(lines))


def constrain_refusal(findings: list[TableFindings], playbook: Playbook) -> str | None:
    """The error for tables that are to get NOT NULL and still have rows without a tenant,
    or None."""
    blocked = [f for f in findings if not playbook.keeps_nullable(f.table) and not f.unchecked
               and (f.null_keys or 0) > 0]
    if not blocked:
        return None
    lines = []
    for f in blocked:
        detail = describe(f, playbook)
        if f.strategy not in ("direct", "root"):
            rest = (f.null_keys or 0) - f.without_tenant
            if rest > 0:
                detail.append(f"{f.table}: {rest} row(s) still without {f.column} although a "
                              f"parent has one: run the backfill stage again")
            detail.insert(0, f"{f.table}: {f.null_keys} row(s) with {f.column} NULL"
                             f"{_sample(f.null_key_sample)}")
        lines += detail
    return ("constrain refused, nothing executed: NOT NULL cannot be added while rows have no "
            f"tenant ({len(blocked)} table(s)):\n  " + "\n  ".join(lines))


def _gate(stage: str) -> Any:
    def gate(conn: psycopg.Connection[Any], playbook: Playbook, force: bool
             ) -> dict[str, Any] | None:
        catalog = Catalog.load(conn, schemas=playbook.schemas)
        ctx = PlanContext(catalog, playbook)
        if stage == "backfill":
            wanted = frozenset(e.qname for e in ctx.tenant_tables if e.added
                               and playbook.orphans_for(e.qname) == "stop")
        else:
            # A column already NOT NULL (constrain ran, or the application's own) has no
            # NULL to find: not scanned again.
            wanted = frozenset(e.qname for e in ctx.tenant_tables
                               if not playbook.keeps_nullable(e.qname)
                               and not _not_null_now(conn, e))
        if not wanted:
            return None
        findings = run_preflight(conn, ctx, wanted)
        refusal = (backfill_refusal if stage == "backfill" else constrain_refusal)(
            findings, playbook)
        if refusal is not None:
            # --force cannot help: the statements would fail on these rows anyway.
            raise GateClosed(refusal)
        return None

    return gate


def register_gates() -> None:
    """The backfill and constrain gates (runner calls this once)."""
    from rls_migrate.runner import GATES

    GATES.setdefault("backfill", _gate("backfill"))
    GATES.setdefault("constrain", _gate("constrain"))
