"""A generic filler: synthetic rows for any schema, read from ``pg_catalog``, that respect its
foreign keys, its unique indexes and its tenants.

It knows no table. From the catalog it takes the columns (type, nullability, defaults,
identity, enum labels, length limits), the foreign keys, the unique indexes and primary keys;
from a :class:`FillSpec` only what a catalog cannot say: how many rows, the tenant root,
``_id`` columns that reference a table without a foreign key (Rails), how often a nullable
column is NULL, and a few columns whose values mean something (a polymorphic type, a content
type) through :data:`Generator` callbacks.

How rows are made:

* tables in foreign-key order (parents first); a cycle is broken at a nullable foreign key,
  which is inserted NULL and set by an ``UPDATE`` once its parent table is filled (the way
  ORMs write a cycle); a self-reference points at an earlier row of the same tenant;
* every row of a tenant table belongs to one tenant, drawn first; its tenant columns (those
  that reference the root) take that tenant and its parents are drawn among that tenant's
  rows, so the data is tenant-consistent as an application's is;
* a row referenced through a unique foreign key (a reverse one-to-one: Prisma's
  ``DocumentMeta``, inserted before the ``Envelope`` that points at it) is used once, and
  belongs to the tenant of the row that took it;
* serial and identity keys come from the database (``RETURNING *``); every other value is
  generated from the column's type, deterministically from the seed, unique where a unique
  index needs it.

Example::

    spec = FillSpec(root="accounts", rows={"accounts": 6, "inboxes": 12, ...})
    counts = fill(conn, spec)          # {table: rows}; the caller commits
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import random
import string
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

Conn = psycopg.Connection[Any]
Row = dict[str, Any]


@dataclasses.dataclass
class RowContext:
    """What a :data:`Generator` sees: the row so far, its tenant, the random generator and
    every row made so far (table -> rows)."""

    table: str
    row: Row
    tenant: Any
    rng: random.Random
    made: Mapping[str, Sequence[Row]]
    tenant_of: Callable[[str, Row], Any]

    def pick(self, table: str, *, same_tenant: bool = True) -> Row | None:
        """A random row of ``table`` (of this row's tenant unless told otherwise)."""
        rows = [r for r in self.made.get(table, ()) if not same_tenant
                or self.tenant_of(table, r) == self.tenant]
        return self.rng.choice(rows) if rows else None


Generator = Callable[[RowContext], Any]
"""Makes one column's value; called after the foreign keys and the tenant are set."""


@dataclasses.dataclass(frozen=True)
class FillSpec:
    """What the catalog cannot tell the filler. Column keys are ``(table, column)``."""

    root: str  # the tenant root table
    rows: Mapping[str, int]  # rows per table; tables not named get none
    root_key: str = "id"
    soft_refs: Mapping[tuple[str, str], tuple[str, str]] = dataclasses.field(
        default_factory=dict)  # (table, column) -> (table, column), no foreign key declared
    null_share: Mapping[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    polymorphic: Mapping[tuple[str, str], tuple[str, Mapping[Any, str]]] = dataclasses.field(
        default_factory=dict)  # (table, id column) -> (type column, {type value: table})
    generators: Mapping[tuple[str, str], Generator] = dataclasses.field(default_factory=dict)
    seed: int = 17
    default_null_share: float = 0.2  # nullable foreign keys and plain columns

    def __post_init__(self) -> None:
        if self.root not in self.rows:
            raise ValueError(f"FillSpec.rows must say how many {self.root} (the root) to make")


@dataclasses.dataclass(frozen=True)
class _Column:
    name: str
    type: str  # format_type()
    base: str  # the base type's name (typname), the element's for arrays
    is_array: bool
    enum_labels: tuple[str, ...]
    not_null: bool
    has_default: bool
    identity: bool
    generated: bool
    length: int | None  # varchar(n) / char(n)


@dataclasses.dataclass(frozen=True)
class _Ref:
    columns: tuple[str, ...]
    table: str
    ref_columns: tuple[str, ...]
    declared: bool  # a foreign key (False: a soft reference from the spec)


@dataclasses.dataclass
class _Table:
    name: str
    columns: dict[str, _Column]
    refs: list[_Ref]
    uniques: list[tuple[str, ...]]  # primary key and unique indexes (plain columns only)
    primary_key: tuple[str, ...]


_CATALOG = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
       coalesce(et.typname, t.typname), t.typcategory = 'A',
       coalesce(ARRAY(SELECT e.enumlabel::text FROM pg_enum e
                      WHERE e.enumtypid = coalesce(et.oid, t.oid) ORDER BY e.enumsortorder),
                '{}'),
       a.attnotnull, a.atthasdef, a.attidentity <> '', a.attgenerated <> '',
       CASE WHEN a.atttypmod > 4 AND coalesce(et.typname, t.typname) IN ('varchar', 'bpchar')
            THEN a.atttypmod - 4 END
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
 WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
 ORDER BY c.relname, a.attnum
"""

_FOREIGN_KEYS = """
SELECT c.relname, r.relname,
       ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(n, i)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i),
       ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY u(n, i)
             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.i)
  FROM pg_constraint k
  JOIN pg_class c ON c.oid = k.conrelid
  JOIN pg_class r ON r.oid = k.confrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE k.contype = 'f' AND n.nspname = %(schema)s
 ORDER BY c.relname, k.conname
"""

_UNIQUES = """
SELECT c.relname, i.indisprimary,
       ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY u(n, o)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.n ORDER BY u.o)
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE i.indisunique AND n.nspname = %(schema)s AND 0 <> ALL (i.indkey::int2[])
 ORDER BY c.relname, i.indexrelid
"""


def read_tables(conn: Conn, spec: FillSpec, schema: str = "public") -> dict[str, _Table]:
    """The schema's tables as the filler needs them (three catalog queries)."""
    tables: dict[str, _Table] = {}
    params = {"schema": schema}
    for (table, name, typ, base, is_array, labels, not_null, has_default, identity,
         generated, length) in conn.execute(_CATALOG, params).fetchall():
        entry = tables.setdefault(table, _Table(table, {}, [], [], ()))
        entry.columns[name] = _Column(name, typ, base, is_array, tuple(labels), not_null,
                                      has_default, identity, generated, length)
    for table, ref, cols, ref_cols in conn.execute(_FOREIGN_KEYS, params).fetchall():
        tables[table].refs.append(_Ref(tuple(cols), ref, tuple(ref_cols), True))
    for (table, column), (ref, ref_column) in spec.soft_refs.items():
        if table not in tables or column not in tables[table].columns:
            raise ValueError(f"soft reference {table}.{column}: no such column")
        tables[table].refs.append(_Ref((column,), ref, (ref_column,), False))
    for table, primary, cols in conn.execute(_UNIQUES, params).fetchall():
        tables[table].uniques.append(tuple(cols))
        if primary:
            tables[table].primary_key = tuple(cols)
    return tables


def _order(tables: Mapping[str, _Table], wanted: Sequence[str],
           polymorphic: Mapping[tuple[str, str], tuple[str, Mapping[Any, str]]]
           ) -> tuple[list[str], set[tuple[str, tuple[str, ...]]]]:
    """Parents first. A cycle is broken at nullable references, which are deferred: inserted
    NULL and set once the parent is filled. Returns the order and the deferred references."""
    order: list[str] = []
    # A self-reference points at an earlier row: set once the table's rows exist.
    deferred = {(t, r.columns) for t in wanted for r in tables[t].refs if r.table == t}
    left = [t for t in sorted(tables) if t in wanted]
    while left:
        ready = [t for t in left if all(
            r.table == t or r.table in order or r.table not in left
            or (t, r.columns) in deferred for r in tables[t].refs) and all(
            target in order or target not in left for (table, _), (_, targets)
            in polymorphic.items() if table == t for target in targets.values())]
        if ready:
            order.extend(ready)
            left = [t for t in left if t not in ready]
            continue
        # A cycle: defer the nullable references of a table that is ready but for them.
        for t in left:
            waits = [r for r in tables[t].refs if r.table in left and r.table != t
                     and (t, r.columns) not in deferred]
            if waits and all(not tables[t].columns[c].not_null
                             for r in waits for c in r.columns):
                deferred.update((t, r.columns) for r in waits)
                break
        else:
            raise ValueError(f"foreign-key cycle without a nullable link among {left}")
    return order, deferred


class _Filler:
    def __init__(self, conn: Conn, spec: FillSpec, tables: dict[str, _Table]) -> None:
        self.conn, self.spec, self.tables = conn, spec, tables
        self.rng = random.Random(spec.seed)
        self.made: dict[str, list[Row]] = defaultdict(list)
        self.tenant: dict[tuple[str, int], Any] = {}  # (table, id(row)) -> tenant
        self.used: dict[tuple[str, tuple[str, ...]], set[tuple[Any, ...]]] = defaultdict(set)
        self.seen: dict[tuple[str, tuple[str, ...]], set[tuple[Any, ...]]] = defaultdict(set)
        self.counter = 0
        self.by_tenant: dict[tuple[str, Any], list[Row]] = defaultdict(list)  # tenant tables
        self.tenant_tables = self._tenant_tables()

    # ------------------------------------------------------------------ tenancy

    def _tenant_tables(self) -> set[str]:
        """Tables whose rows belong to a tenant through a NOT NULL reference chain to the
        root (a fixed point); the rest are global or owned one-to-one."""
        scoped = {self.spec.root}
        changed = True
        while changed:
            changed = False
            for name, table in self.tables.items():
                if name in scoped:
                    continue
                if any(r.table in scoped and r.table != name for r in table.refs):
                    scoped.add(name)
                    changed = True
        return scoped

    def tenant_of(self, table: str, row: Row) -> Any:
        return self.tenant.get((table, id(row)))

    def _candidates(self, ref: _Ref, tenant: Any) -> list[Row]:
        if ref.table in self.tenant_tables:
            return self.by_tenant.get((ref.table, tenant), [])
        rows = self.made.get(ref.table, [])
        # Global or one-to-one owned rows: any that no other tenant has taken.
        return [r for r in rows if self.tenant_of(ref.table, r) in (None, tenant)]

    # ------------------------------------------------------------------ values

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def value(self, table: str, col: _Column, unique: bool) -> Any:
        rng, n = self.rng, self._next()
        base = col.base
        if col.enum_labels:
            label = rng.choice(col.enum_labels)
            return [label] if col.is_array else label
        if col.is_array:
            return []
        if base in ("int2", "int4", "int8"):
            return n if unique else rng.randint(1, 30_000 if base == "int2" else 1_000_000)
        if base in ("numeric", "float4", "float8"):
            return decimal.Decimal(rng.randint(0, 1_000_000)) / 100
        if base == "bool":
            return rng.random() < 0.5
        if base == "uuid":
            return uuid.UUID(int=rng.getrandbits(128), version=4)
        if base in ("timestamp", "timestamptz"):
            start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
            value = start + dt.timedelta(seconds=rng.randint(0, 360 * 86_400),
                                         milliseconds=rng.randint(0, 999))
            return value if base == "timestamptz" else value.replace(tzinfo=None)
        if base == "date":
            return dt.date(2025, 1, 1) + dt.timedelta(days=rng.randint(0, 360))
        if base in ("json", "jsonb"):
            return json.dumps({"k": rng.randint(0, 9), "n": n})
        if base == "inet":
            return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        if base == "bytea":
            return rng.randbytes(8)
        if base in ("text", "varchar", "bpchar", "citext"):
            if unique:
                text = f"{n}-{col.name}"  # the number first: a length limit keeps it
            else:
                text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))
            return text[: col.length] if col.length else text
        raise ValueError(f"{table}.{col.name}: the filler cannot make a {col.type}")

    def _key_text(self) -> str:
        """A text primary key the application makes: a cuid (Prisma) by default."""
        return "c" + "".join(self.rng.choice(string.ascii_lowercase + string.digits)
                             for _ in range(24))

    # ------------------------------------------------------------------ rows

    def make_row(self, name: str, deferred: set[tuple[str, tuple[str, ...]]]) -> Row | None:
        table, spec, rng = self.tables[name], self.spec, self.rng
        roots = [r[spec.root_key] for r in self.made.get(spec.root, [])]
        # No tenant yet for a table filled before the root (a cycle through the root).
        tenant = rng.choice(roots) if roots and name in self.tenant_tables \
            and name != spec.root else None
        row: Row = {}
        owned = self._parents(table, row, tenant, deferred)
        if owned is None:
            return None
        for (poly_table, id_column), (type_column, targets) in spec.polymorphic.items():
            if poly_table == name:
                found = self._polymorphic(table, row, tenant, id_column, type_column, targets)
                if found is False:
                    return None
                tenant = tenant if tenant is not None else found
        self._values(table, row)
        for (gen_table, gen_column), generate in spec.generators.items():
            if gen_table == name:
                row[gen_column] = generate(RowContext(name, row, tenant, rng, self.made,
                                                      self.tenant_of))
        keys = [(u, tuple(row[c] for c in u)) for u in table.uniques if all(c in row for c in u)]
        if any(None not in key and key in self.seen[(name, u)] for u, key in keys):
            return None  # a duplicate: the caller draws again
        for u, key in keys:
            self.seen[(name, u)].add(key)
        for ref in table.refs:
            if self._unique(table, ref.columns) and all(row.get(c) is not None
                                                        for c in ref.columns):
                self.used[(ref.table, ref.ref_columns)].add(tuple(row[c] for c in ref.columns))
        for ref, parent in owned:
            self.tenant[(ref.table, id(parent))] = tenant
        row["__tenant__"] = tenant
        return row

    def _parents(self, table: _Table, row: Row, tenant: Any,
                 deferred: set[tuple[str, tuple[str, ...]]]) -> list[tuple[_Ref, Row]] | None:
        """Set every reference of ``row`` to a parent of its tenant (or NULL where nullable);
        the one-to-one rows it takes, or None when a required parent is missing."""
        spec, rng = self.spec, self.rng
        owned: list[tuple[_Ref, Row]] = []
        for ref in table.refs:
            if any(c in row for c in ref.columns):
                continue
            if (table.name, ref.columns) in deferred:  # set by an UPDATE once its rows exist
                row.update(dict.fromkeys(ref.columns))
                continue
            nullable = all(not table.columns[c].not_null for c in ref.columns)
            share = spec.null_share.get((table.name, ref.columns[0]), spec.default_null_share)
            parent: Row | None = None
            if not (nullable and rng.random() < share):
                candidates = self._candidates(ref, tenant)
                if self._unique(table, ref.columns):
                    used = self.used[(ref.table, ref.ref_columns)]
                    candidates = [r for r in candidates
                                  if tuple(r[c] for c in ref.ref_columns) not in used]
                if candidates:
                    parent = rng.choice(candidates)
                elif not nullable:
                    return None  # no parent left for this tenant: no row
            for column, ref_column in zip(ref.columns, ref.ref_columns, strict=True):
                row[column] = None if parent is None else parent[ref_column]
            if parent is not None and ref.table not in self.tenant_tables \
                    and self._unique(table, ref.columns):
                owned.append((ref, parent))
        return owned

    def _polymorphic(self, table: _Table, row: Row, tenant: Any, id_column: str,
                     type_column: str, targets: Mapping[Any, str]) -> Any:
        """Point a ``*_type`` + ``*_id`` pair at a row of the tenant (any row when the row
        has no tenant yet); returns that row's tenant, False when there is none."""
        kind = self.rng.choice(sorted(targets))
        rows = self.made.get(targets[kind], [])
        if tenant is not None:
            rows = [r for r in rows if self.tenant_of(targets[kind], r) == tenant]
        if not rows:
            return False
        target = self.rng.choice(rows)
        key = target["id"]  # a text object id (Django's admin log) holds its text
        row[type_column] = kind
        row[id_column] = str(key) if table.columns[id_column].base in (
            "text", "varchar") else key
        return self.tenant_of(targets[kind], target)

    def _values(self, table: _Table, row: Row) -> None:
        """Every other column from its type (NULL sometimes where nullable)."""
        spec = self.spec
        for col in table.columns.values():
            if col.name in row or col.generated or (table.name, col.name) in spec.generators:
                continue
            if col.identity or (col.has_default and col.name in table.primary_key):
                continue  # the database makes it
            unique = any(col.name in u for u in table.uniques)
            share = spec.null_share.get((table.name, col.name), spec.default_null_share)
            if not col.not_null and not unique and self.rng.random() < share:
                row[col.name] = None
            elif col.name in table.primary_key and col.base in ("text", "varchar"):
                row[col.name] = self._key_text()
            else:
                row[col.name] = self.value(table.name, col, unique)

    def _unique(self, table: _Table, columns: tuple[str, ...]) -> bool:
        return any(set(u) <= set(columns) for u in table.uniques)

    def insert(self, name: str, rows: list[Row]) -> None:
        table = self.tables[name]
        columns = [c for c in table.columns if c in rows[0]]
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING *").format(
            sql.Identifier(name), sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(columns)))
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.executemany(query, [[r[c] for c in columns] for r in rows], returning=True)
            for row in rows:
                stored = cur.fetchone()
                assert stored is not None
                tenant = row["__tenant__"]
                if name == self.spec.root:
                    tenant = stored[self.spec.root_key]
                self.made[name].append(stored)
                self.tenant[(name, id(stored))] = tenant
                self.by_tenant[(name, tenant)].append(stored)
                cur.nextset()

    def set_deferred(self, name: str, columns: tuple[str, ...]) -> None:
        """Fill a reference that a cycle made insert NULL, as the ORM does next."""
        table = self.tables[name]
        ref = next(r for r in table.refs if r.columns == columns)
        share = self.spec.null_share.get((name, columns[0]), self.spec.default_null_share)
        pk = table.primary_key
        for index, row in enumerate(self.made[name]):
            if self.rng.random() < share:
                continue
            candidates = self._candidates(ref, self.tenant_of(name, row))
            if ref.table == name:  # a self-reference: an earlier row (no loops)
                earlier = {id(r) for r in self.made[name][:index]}
                candidates = [r for r in candidates if id(r) in earlier]
            if not candidates:
                continue
            parent = self.rng.choice(candidates)
            self.conn.execute(
                sql.SQL("UPDATE {} SET {} WHERE {}").format(
                    sql.Identifier(name),
                    sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c))
                                       for c in columns),
                    sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c))
                                          for c in pk)),
                [*(parent[c] for c in ref.ref_columns), *(row[c] for c in pk)])
            for col, ref_col in zip(columns, ref.ref_columns, strict=True):
                row[col] = parent[ref_col]


_WORDS = ("alpha", "billing", "invoice", "urgent", "hello", "refund", "contract", "draft",
          "signed", "team", "support", "renewal", "onboarding", "export", "report", "ticket")


def fill(conn: Conn, spec: FillSpec, schema: str = "public") -> dict[str, int]:
    """Fill the tables ``spec.rows`` names; returns {table: rows made}. Runs in the
    connection's transaction (the caller commits)."""
    tables = read_tables(conn, spec, schema)
    unknown = sorted(set(spec.rows) - set(tables))
    if unknown:
        raise ValueError(f"FillSpec.rows names tables that do not exist: {unknown}")
    order, deferred = _order(tables, list(spec.rows), spec.polymorphic)
    filler = _Filler(conn, spec, tables)
    for name in sorted(set(tables) - set(spec.rows)):
        # Rows that were there before (Django's content types): parents like any other.
        with conn.cursor(row_factory=dict_row) as cur:
            filler.made[name] = cur.execute(
                sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, name))).fetchall()
        for row in filler.made[name]:
            filler.by_tenant[(name, None)].append(row)
    counts: dict[str, int] = {}
    for name in order:
        rows: list[Row] = []
        attempts = 0
        while len(rows) < spec.rows[name] and attempts < spec.rows[name] * 20:
            attempts += 1
            made = filler.make_row(name, deferred)
            if made is not None:
                rows.append(made)
        if rows:
            filler.insert(name, rows)
        counts[name] = len(rows)
    for name, columns in sorted(deferred):
        if name in counts and tables[name].primary_key:
            filler.set_deferred(name, columns)
    return counts
