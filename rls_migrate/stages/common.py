"""What every stage planner shares: the tenant tables in dependency order, object names,
and the SQL fragments that read the tenant context."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, LiteralString, TypeVar

from psycopg import sql

from rls_migrate.catalog import Catalog, Column, Index, QualifiedName, Table, quote_ident
from rls_migrate.errors import PlaybookError
from rls_migrate.playbook import ParentRef, Playbook, TablePlan
from rls_migrate.sqlcompose import compose, identifier, sep
from rls_migrate.sqltext import scan
from rls_migrate.steps import Estimate

T = TypeVar("T")

TOOLKIT_SCHEMA = "rls_migrate"
MAX_IDENT = 63
# Throughput assumed for estimates when nothing better is known (rows per second).
ESTIMATED_BACKFILL_ROWS_PER_S = 50_000.0
ESTIMATED_INDEX_BYTES_PER_S = 40_000_000.0


@dataclasses.dataclass(frozen=True)
class GlobalUnique:
    """A uniqueness that spans tenants: a UNIQUE constraint, or a unique index without one
    (Rails' ``add_index ..., unique: true`` and Prisma's ``@unique`` emit ``CREATE UNIQUE
    INDEX``), partial and expression ones included. ``keys`` is the key as the server prints
    it (``slug``, ``lower(email)``); ``columns`` the bare columns among them."""

    name: str
    what: str  # "constraint" | "index"
    keys: tuple[str, ...]
    columns: tuple[str, ...]
    predicate: str | None

    @property
    def plain(self) -> bool:
        """Bare columns, no predicate: ``tenant_unique`` can name it by its columns."""
        return self.predicate is None and len(self.columns) == len(self.keys)

    @property
    def suggestion(self) -> str:
        """What ``tenant_unique`` takes for it: its columns, or its name (expression or
        partial indexes)."""
        return ", ".join(quote_ident(c) for c in self.columns) if self.plain else \
            quote_ident(self.name)

    def __str__(self) -> str:
        kind = "UNIQUE" if self.what == "constraint" else "unique index"
        where = f" WHERE {self.predicate}" if self.predicate else ""
        return f"{quote_ident(self.name)} {kind} ({', '.join(self.keys)}){where}"


def index_keys(index: Index) -> tuple[str, ...]:
    """The key list of an index as ``pg_get_indexdef`` prints it (expressions included,
    INCLUDE columns not): ``CREATE UNIQUE INDEX i ON t USING btree (lower(email), org)``
    -> ``("lower(email)", "org")``. Falls back to the key columns when the text has another
    form."""
    text = index.definition
    start = -1
    for i, ch, depth in scan(text):
        if depth == 0 and ch == "(" and text[:i].rstrip().rsplit(" ", 2)[-2:-1] == ["USING"]:
            start = i
            break
    if start >= 0:
        parts: list[str] = []
        last = start + 1
        for i, ch, depth in scan(text):
            if i <= start:
                continue
            if depth == 1 and ch == ",":
                parts.append(text[last:i].strip())
                last = i + 1
            elif depth == 0 and ch == ")":
                parts.append(text[last:i].strip())
                return tuple(parts)
    return tuple(c if c is not None else "<expression>" for c in index.columns)


def global_uniques(table: Table, column: str,
                   scoped_by: Sequence[tuple[str, ...]] = ()) -> list[GlobalUnique]:
    """Unique constraints and unique indexes of ``table`` whose key does not hold the tenant
    ``column``: they span tenants, so an insert reveals that another tenant already has the
    value. Primary keys, indexes of a partition (its parent's are reported) and the
    toolkit's own tenant-scoped ones are left out; an index that is not valid yet but ready
    counts (inserts check it already). So is a key that holds every column of a link in
    ``scoped_by`` (foreign keys to tenant tables): ``UNIQUE (team_id, name)`` is unique
    within a team, so within its tenant; a one-to-one link column likewise."""
    found: list[GlobalUnique] = []
    backing = {c.index_name for c in table.constraints if c.index_name}

    def scoped(columns: Sequence[str | None]) -> bool:
        return column in columns or any(set(link) <= set(columns) for link in scoped_by)

    for con in table.constraints:
        if con.kind == "u" and not scoped(con.columns):
            found.append(GlobalUnique(con.name, "constraint",
                                      tuple(quote_ident(c) for c in con.columns),
                                      con.columns, None))
    for idx in table.indexes:
        if (not idx.is_unique or idx.is_primary or not idx.is_ready or idx.parent_index
                or idx.name in backing or scoped(idx.columns)):
            continue
        found.append(GlobalUnique(idx.name, "index", index_keys(idx),
                                  tuple(c for c in idx.columns if c is not None),
                                  idx.predicate))
    return found


@dataclasses.dataclass(frozen=True)
class TenantTable:
    """A table the migration protects, with where its tenant key comes from."""

    qname: QualifiedName
    table: Table
    plan: TablePlan
    column: str  # the column that holds the tenant key (existing or added)
    added: bool  # the toolkit adds and fills ``column``
    # Where the tenant comes from: the parent (derive, hint) or, for an owned table, the
    # owner that points at it (``columns`` on this table, ``ref_columns`` on the owner).
    parent: ParentRef | None
    parent_column: str | None  # the tenant column on the parent (owner) table

    @property
    def owned(self) -> bool:
        """A reverse one-to-one row: its tenant comes from the row that points at it."""
        return self.plan.strategy == "owned"

    @property
    def ident(self) -> sql.Identifier:
        return self.qname.ident

    @property
    def strategy(self) -> str:
        return self.plan.strategy

    @property
    def global_uniques(self) -> list[GlobalUnique]:
        """Unique constraints and unique indexes without the tenant column (see
        :func:`global_uniques`)."""
        return global_uniques(self.table, self.column)


@dataclasses.dataclass(frozen=True)
class PlanContext:
    catalog: Catalog
    playbook: Playbook

    @property
    def key_type(self) -> str:
        return self.playbook.tenant.key_type

    @functools.cached_property
    def memo(self) -> dict[tuple[object, ...], Any]:
        """What stages build alike from this context, built once (observe and enforce
        install the same recorder functions)."""
        return {}

    def once(self, key: tuple[object, ...], build: Callable[[], T]) -> T:
        """``build()``, built once per plan under ``key``: what two stages build alike is then
        one object (observe's statements and the kill switch's), rendered once too."""
        memo = self.memo
        if key in memo:
            return memo[key]  # type: ignore[no-any-return]
        found = memo[key] = build()
        return found

    @functools.cached_property
    def root(self) -> QualifiedName:
        return self.playbook.tenant.qname

    @functools.cached_property
    def tenant_tables(self) -> tuple[TenantTable, ...]:
        """Tenant-scoped tables, parents before children (the backfill order)."""
        entries: dict[QualifiedName, TenantTable] = {}
        for qname, plan in self.playbook.table_plans():
            if plan.strategy in ("global", "skip", "TODO"):
                continue
            table = self.catalog.tables.get(qname)
            if table is None:
                raise PlaybookError(f"tables.{qname}: no such table in the database")
            column = self.playbook.tenant_column(qname)
            assert column is not None
            parent_column = None
            link = plan.link
            if link is not None:
                parent_column = self.playbook.tenant_column(link.qname)
            entries[qname] = TenantTable(
                qname, table, plan, column, plan.strategy in ("derive", "hint", "owned"), link,
                parent_column)
        return tuple(_parents_first(entries))

    @functools.cached_property
    def _tenant_tables_by_name(self) -> dict[QualifiedName, TenantTable]:
        return {entry.qname: entry for entry in self.tenant_tables}

    def tenant_table(self, qname: QualifiedName) -> TenantTable | None:
        return self._tenant_tables_by_name.get(qname)

    def global_uniques(self, entry: TenantTable) -> list[GlobalUnique]:
        """:func:`global_uniques` of ``entry``, less those scoped by a link to a tenant
        table; none for the root (its uniques are about the tenants themselves: a
        subdomain or a URL is global by design)."""
        if entry.strategy == "root":
            return []
        tenant = self._tenant_tables_by_name
        links = [fk.columns for fk in entry.table.foreign_keys
                 if fk.ref_table in tenant or self._top(fk.ref_table) in tenant]
        return global_uniques(entry.table, entry.column, links)

    def _top(self, qname: QualifiedName) -> QualifiedName:
        table = self.catalog.tables.get(qname)
        while table is not None and table.partition_of is not None:
            qname = table.partition_of
            table = self.catalog.tables.get(qname)
        return qname

    def tenant_value(self) -> sql.Composed:
        """The current tenant, read so that an unset or reset setting gives NULL:
        ``NULLIF(current_setting('app.tenant_id', true), '')::bigint``."""
        return current_tenant_sql(self.playbook.tenant.setting, self.key_type)

    def key_column_type(self) -> str:
        return self._key_column_type

    @functools.cached_property
    def _key_column_type(self) -> str:
        root = self.catalog.tables.get(self.root)
        col = root.column(self.playbook.tenant.key) if root else None
        return col.type if col else self.key_type

    def tenant_type(self, entry: TenantTable) -> str:
        """The SQL type of ``entry``'s tenant column as the catalog has it; for a column the
        toolkit has yet to add, the root key's type (what add-column gives it). A Rails
        ``account_id bigint`` under an ``accounts.id integer`` root keeps its bigint."""
        column = entry.table.column(entry.column)
        return column.type if column is not None else self.key_column_type()

    def parent_tenant_type(self, entry: TenantTable) -> str:
        """The type of the tenant column on ``entry``'s parent (the row it takes its tenant
        from)."""
        assert entry.parent is not None
        parent = self.tenant_table(entry.parent.qname)
        if parent is None:
            return self.key_column_type()
        return self.tenant_type(parent)

    def parent_tenant_sql(self, entry: TenantTable) -> sql.Composable:
        """``p.<parent's tenant column>``, cast to ``entry``'s tenant type where the two
        differ (``(p.account_id)::integer`` for a bigint parent under an integer root)."""
        assert entry.parent_column is not None
        return cast_sql(compose("p.{}", identifier(entry.parent_column)),
                        self.parent_tenant_type(entry), self.tenant_type(entry))

    def parent_match(self, entry: TenantTable, child: str) -> sql.Composed:
        """:func:`parent_match` with the child's link columns cast to the parent's types
        where PostgreSQL has no operator between the two (a text link to a uuid key)."""
        return parent_match(entry, child, self.link_types(entry))

    def link_types(self, entry: TenantTable) -> list[tuple[str | None, str | None]]:
        """(child column type, parent column type) for each column pair of the parent link."""
        assert entry.parent is not None
        parent = self.catalog.tables.get(entry.parent.qname)
        out: list[tuple[str | None, str | None]] = []
        for child_col, ref_col in zip(entry.parent.columns, entry.parent.ref_columns,
                                      strict=True):
            mine = entry.table.column(child_col)
            theirs = parent.column(ref_col) if parent is not None else None
            out.append((mine.type if mine else None, theirs.type if theirs else None))
        return out


def with_partitions(ctx: PlanContext, entry: TenantTable) -> list[TenantTable]:
    """``entry`` and, for a partitioned table, every partition below it. A query that names a
    partition directly uses the partition's own RLS settings, not the parent's: each one
    needs the policies too."""
    out = [entry]
    todo = list(entry.table.partitions)
    while todo:
        part = todo.pop(0)
        table = ctx.catalog.tables.get(part)
        if table is None:
            continue
        out.append(dataclasses.replace(entry, qname=part, table=table))
        todo.extend(table.partitions)
    return out


def current_tenant_sql(setting: str, key_type: str) -> sql.Composed:
    return compose("NULLIF(current_setting({}, true), '')::{}",
        sql.Literal(setting), sql.SQL(_type_sql(key_type)))


def _type_sql(key_type: str) -> str:
    allowed = {"bigint", "integer", "smallint", "uuid", "text"}
    if key_type not in allowed:
        raise PlaybookError(f"tenant.key_type: expected one of {sorted(allowed)}, got {key_type!r}")
    return key_type


_INTEGERS = frozenset({"smallint", "integer", "bigint"})
_NUMBERS = _INTEGERS | {"numeric", "real", "double precision"}
_STRINGS = frozenset({"text", "character varying", "character", "name", "citext"})


def _base_type(type_text: str) -> str:
    return type_text.split("(", 1)[0].strip()


def comparable(left: str | None, right: str | None) -> bool:
    """Whether PostgreSQL compares values of these two types without a cast (integer with
    bigint, varchar with text); an unknown type counts as comparable (nothing to cast)."""
    if left is None or right is None or left == right:
        return True
    a, b = _base_type(left), _base_type(right)
    return a == b or {a, b} <= _NUMBERS or {a, b} <= _STRINGS


def cast_sql(expr: sql.Composable, from_type: str, to_type: str) -> sql.Composable:
    """``expr::to_type`` where the types differ (an explicit cast, so that a text key under
    an integer root or an integer under a bigint one reads as the column it lands in)."""
    if from_type == to_type:
        return expr
    return compose("({})::{}", expr, sql.SQL(to_type))


def type_sql(column: Column) -> sql.SQL:
    """A column's type as SQL. ``format_type`` output comes from the server's catalog and is
    already quoted where needed."""
    return sql.SQL(column.type)


def _parents_first(entries: dict[QualifiedName, TenantTable]) -> list[TenantTable]:
    ordered: list[TenantTable] = []
    state: dict[QualifiedName, int] = {}

    def visit(qname: QualifiedName, trail: tuple[QualifiedName, ...]) -> None:
        if state.get(qname) == 2:
            return
        if state.get(qname) == 1:
            cycle = " -> ".join(str(q) for q in (*trail, qname))
            raise PlaybookError(f"tenant parents form a cycle: {cycle}")
        state[qname] = 1
        entry = entries[qname]
        if entry.parent is not None and entry.parent.qname in entries:
            visit(entry.parent.qname, (*trail, qname))
        state[qname] = 2
        ordered.append(entry)

    for qname in sorted(entries):
        visit(qname, ())
    return ordered


@functools.lru_cache(maxsize=65536)
def object_name(prefix: str, qname: QualifiedName, suffix: str = "") -> str:
    """A deterministic name that fits PostgreSQL's 63 bytes, e.g. ``comments_tenant_idx``.

    Long or non-ASCII names are shortened and made unique with a hash of the full name; so
    is a suffix that would leave the table's name no room (it may carry a 63-byte column
    name): a name PostgreSQL truncated would no longer be the one the done checks and the
    rollback look for."""
    base = f"{prefix}{qname.name}{suffix}"
    if len(base.encode()) <= MAX_IDENT and base.isascii():
        return base
    if not suffix.isascii() or len(prefix) + len(suffix) > MAX_IDENT // 2:
        tail = _ascii_word(suffix)[-16:].lstrip("_")
        suffix = f"_{_digest(suffix, 6)}_{tail}"
    digest = _digest(f"{qname.schema}.{qname.name}", 8)
    stem = _ascii_word(qname.name)
    room = MAX_IDENT - len(prefix) - len(suffix) - len(digest) - 1
    return f"{prefix}{stem[:max(room, 0)]}_{digest}{suffix}"


def _ascii_word(text: str) -> str:
    stem = text.encode("ascii", "ignore").decode()
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in stem)


def _digest(text: str, size: int) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:size]


@functools.lru_cache(maxsize=65536)
def function_name(kind: str, qname: QualifiedName) -> sql.Identifier:
    """A toolkit function for one table, in the ``rls_migrate`` schema."""
    return identifier(TOOLKIT_SCHEMA, object_name(f"{kind}_", qname))


def columns_sql(columns: Sequence[str], alias: str | None = None) -> sql.Composed:
    if alias:
        return sep(", ").join(identifier(alias, c) for c in columns)
    return sep(", ").join(identifier(c) for c in columns)


def exists_sql(query: sql.Composable) -> sql.Composed:
    return compose("SELECT EXISTS ({})", query)


def regclass_literal(qname: QualifiedName) -> sql.Composed:
    """``'schema.table'::regclass`` with the name quoted for regclass input."""
    return compose("{}::regclass", sql.Literal(regclass_text(qname)))


@functools.lru_cache(maxsize=65536)
def regclass_text(qname: QualifiedName) -> str:
    """The quoted ``"schema"."table"`` text that ``::regclass`` accepts for any name."""

    def q(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    return f"{q(qname.schema)}.{q(qname.name)}"


def column_exists_check(qname: QualifiedName, column: str) -> sql.Composed:
    return exists_sql(compose("SELECT 1 FROM pg_attribute WHERE attrelid = {} AND attname = {} AND NOT attisdropped", regclass_literal(qname), sql.Literal(column)))


def column_not_null_check(qname: QualifiedName, column: str) -> sql.Composed:
    return exists_sql(compose("SELECT 1 FROM pg_attribute WHERE attrelid = {} AND attname = {} AND attnotnull", regclass_literal(qname), sql.Literal(column)))


def constraint_exists_check(qname: QualifiedName, name: str, validated: bool = False) -> sql.Composed:
    query = compose("SELECT 1 FROM pg_constraint WHERE conrelid = {} AND conname = {}",
        regclass_literal(qname), sql.Literal(name))
    if validated:
        query = compose("{} AND convalidated", query)
    return exists_sql(query)


def trigger_exists_check(qname: QualifiedName, name: str) -> sql.Composed:
    return exists_sql(compose("SELECT 1 FROM pg_trigger WHERE tgrelid = {} AND tgname = {}", regclass_literal(qname), sql.Literal(name)))


def index_valid_check(qname: QualifiedName, name: str) -> sql.Composed:
    return exists_sql(compose("SELECT 1 FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
        " WHERE x.indrelid = {} AND c.relname = {} AND x.indisvalid", regclass_literal(qname), sql.Literal(name)))


def policy_exists_check(qname: QualifiedName, name: str) -> sql.Composed:
    return exists_sql(compose("SELECT 1 FROM pg_policy WHERE polrelid = {} AND polname = {}", regclass_literal(qname), sql.Literal(name)))


def rows_estimate(table: Table) -> Estimate:
    seconds = table.row_estimate / ESTIMATED_BACKFILL_ROWS_PER_S
    return Estimate(rows=table.row_estimate, bytes=table.size_bytes, seconds=round(seconds, 2))


def triggers_firing_on_update(table: Table, column: str) -> list[str]:
    """User triggers that fire on an UPDATE of ``column`` (every UPDATE trigger without a
    column list does): the backfill makes each of them run once per row."""
    fired = []
    for trig in table.triggers:
        if "UPDATE" not in trig.events or trig.enabled == "D":
            continue
        if trig.name.startswith("rls_migrate_"):
            continue
        if " UPDATE OF " in trig.definition and column not in trig.definition:
            continue
        fired.append(trig.name)
    return fired


def parent_match(entry: TenantTable, child: str,
                 link_types: Sequence[tuple[str | None, str | None]] | None = None
                 ) -> sql.Composed:
    """``p.<ref> = <child>.<fk> AND ...``: how a row finds its parent ``p``. ``child`` is
    ``NEW`` (in the sync trigger) or ``c`` (the backfill's alias for the table). With
    ``link_types``, a child column whose type PostgreSQL cannot compare with the parent's is
    cast to the parent's type (the parent side stays bare: its index is what finds it)."""
    assert entry.parent is not None
    template: LiteralString = "p.{} = NEW.{}" if child == "NEW" else "p.{} = c.{}"
    cast_template: LiteralString = ("p.{} = (NEW.{})::{}" if child == "NEW"
                                    else "p.{} = (c.{})::{}")
    types = list(link_types) if link_types is not None else [(None, None)] * len(
        entry.parent.columns)
    parts = []
    for (c, r), (mine, theirs) in zip(zip(entry.parent.columns, entry.parent.ref_columns,
                                          strict=True), types, strict=True):
        if comparable(mine, theirs) or theirs is None:
            parts.append(compose(template, identifier(r), identifier(c)))
        else:
            parts.append(compose(cast_template, identifier(r), identifier(c),
                                 sql.SQL(theirs)))
    return sep(" AND ").join(parts)
