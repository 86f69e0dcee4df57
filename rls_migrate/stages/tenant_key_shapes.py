"""Tenant-leading primary keys for the two shapes a plain ``USING INDEX`` swap does not fit
(see :mod:`rls_migrate.stages.tenant_keys` for the plain one).

**A partitioned table.** PostgreSQL refuses ``ADD CONSTRAINT ... USING INDEX`` on a
partitioned table, but ``ADD PRIMARY KEY`` on one adopts, on each partition, a matching
index that already backs a constraint, instead of building one (and attaches it to the
parent's index). So, with the tenant column NOT NULL:

1. on each partition, ``CREATE UNIQUE INDEX CONCURRENTLY <partition pk>_rlsm_tenant
   (tenant, <pk columns>)`` (the partition key is already in the key: PostgreSQL demands it);
2. one short transaction (ACCESS EXCLUSIVE on the parent and every partition, catalog only,
   under lock_timeout): ``DROP CONSTRAINT <pk>`` on the parent (the partitions' inherited keys
   go with it), ``ADD CONSTRAINT <partition pk>_rlsm_tenant PRIMARY KEY USING INDEX`` on each
   partition, then ``ADD CONSTRAINT <pk>_rlsm_tenant PRIMARY KEY (tenant, ...)`` on the parent,
   which adopts the partitions' keys. A guard refuses when the partitions changed since the
   plan (a partition attached meanwhile would get its key built under the lock).

Rollback builds the old per-partition indexes concurrently and swaps back the same way, with
the original names. Not online, named in the plan instead: a partitioned table whose key other
tables reference (the composite foreign key needs the parent's new key before the swap, and the
old one must stay until then), or whose partitions are partitioned again or foreign.

**A table without a primary key** that has a NOT NULL unique key (``UNIQUE (id)``, or a unique
index without predicate or expression): ``CREATE UNIQUE INDEX CONCURRENTLY
<table>_pkey_rlsm_key (tenant, id)``, then ``ADD CONSTRAINT ... PRIMARY KEY USING INDEX`` (no
scan: every column is already NOT NULL). The unique key stays (foreign keys may reference it).
Rollback drops the primary key. Without such a key there is nothing to build a primary key
from: the plan names the table as a blocker.
"""

from __future__ import annotations

from psycopg import sql

from rls_migrate.catalog import QualifiedName, Table
from rls_migrate.sqlcompose import as_text, compose, identifier
from rls_migrate.stages.common import (
    TenantTable,
    columns_sql,
    exists_sql,
    object_name,
    regclass_literal,
)
from rls_migrate.steps import Estimate, Lock, Step

TENANT_SUFFIX = "_rlsm_tenant"
ADDED_SUFFIX = "_pkey_rlsm_key"


def set_lock_timeout(ms: float) -> sql.Composed:
    value = "0" if ms <= 0 else f"{max(1, round(ms))}ms"
    return compose("SELECT set_config('lock_timeout', {}, false)", sql.Literal(value))


def do_block(body: sql.Composable) -> sql.Composed:
    return compose("DO {}", sql.Literal(as_text(compose("BEGIN {} END", body))))


def index_ready(qname: QualifiedName, name: str) -> sql.Composed:
    return exists_sql(compose(
        "SELECT 1 FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
        " WHERE x.indrelid = {} AND c.relname = {} AND x.indisvalid AND x.indisunique",
        regclass_literal(qname), sql.Literal(name)))


def drop_invalid(qname: QualifiedName, name: str) -> sql.Composed:
    return do_block(compose(
        "IF EXISTS (SELECT 1 FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
        " WHERE x.indrelid = {t} AND c.relname = {n} AND NOT x.indisvalid)"
        " THEN DROP INDEX {i}; END IF;",
        t=regclass_literal(qname), n=sql.Literal(name), i=identifier(qname.schema, name)))


def not_null_guard(entry: TenantTable) -> sql.Composed:
    return do_block(compose(
        "IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {t} AND attname = {c}"
        " AND NOT attnotnull) THEN RAISE EXCEPTION {msg}; END IF;",
        t=regclass_literal(entry.qname), c=sql.Literal(entry.column),
        msg=sql.Literal(f"{entry.qname}.{entry.column} is nullable: apply the constrain stage "
                        "first")))


def tenant_name(qname: QualifiedName, name: str) -> str:
    return object_name("", QualifiedName(qname.schema, name), TENANT_SUFFIX)


def added_name(qname: QualifiedName) -> str:
    """The primary key added to a table that had none."""
    return object_name("", qname, ADDED_SUFFIX)


def replaced_name(qname: QualifiedName, name: str) -> str | None:
    """The name ``name`` was derived from (None when it was shortened with a hash)."""
    if not name.endswith(TENANT_SUFFIX):
        return None
    old = name[: -len(TENANT_SUFFIX)]
    return old if tenant_name(qname, old) == name else None


def unique_key_for(table: Table) -> tuple[str, tuple[str, ...]] | None:
    """A NOT NULL unique key of a table without a primary key, to build one from: (its name,
    its columns); a unique constraint before a unique index, ``id`` before anything, the
    fewest columns first."""
    not_null = {c.name for c in table.columns if c.not_null}
    found: list[tuple[int, str, tuple[str, ...]]] = []
    constraint_of = {c.index_name: c for c in table.constraints if c.kind == "u"}
    for idx in table.indexes:
        columns = tuple(c for c in idx.columns if c is not None)
        if (not idx.is_unique or not idx.is_valid or idx.predicate or idx.parent_index
                or len(columns) != len(idx.columns) or not set(columns) <= not_null
                or idx.name.endswith(ADDED_SUFFIX)):
            continue
        con = constraint_of.get(idx.name)
        if con is not None and "DEFERRABLE" in con.definition \
                and "NOT DEFERRABLE" not in con.definition:
            continue
        rank = (0 if columns == ("id",) else 2) + (0 if con is not None else 1)
        found.append((rank * 100 + len(columns), con.name if con else idx.name, columns))
    if not found:
        return None
    _, name, columns = min(found)
    return name, columns


def partition_keys(table: Table, tables: dict[QualifiedName, Table], swapped: bool
                   ) -> tuple[list[tuple[QualifiedName, str]], str]:
    """Each partition with its original primary key's name, or ([], why not)."""
    out: list[tuple[QualifiedName, str]] = []
    for part in table.partitions:
        child = tables.get(part)
        if child is None or child.is_partitioned:
            return [], f"partition {part} is itself partitioned"
        con = next((c for c in child.constraints if c.kind == "p"), None)
        if con is None:
            return [], f"partition {part} has no primary key"
        name = con.name
        if swapped:
            name = replaced_name(part, con.name) or f"{part.name}_pkey"
        out.append((part, name))
    return out, ""


# --------------------------------------------------------------------------- steps


def partition_builds(entry: TenantTable, parts: list[tuple[QualifiedName, str]],
                     columns: tuple[str, ...], tables: dict[QualifiedName, Table]) -> list[Step]:
    steps = []
    for part, old in parts:
        name = tenant_name(part, old)
        idx = identifier(part.schema, name)
        child = tables.get(part)
        size = child.size_bytes if child is not None else 0
        steps.append(Step(
            id=f"create_index:{part}:{name}",
            stage="index",
            kind="create_index",
            table=part,
            description=f"CREATE UNIQUE INDEX CONCURRENTLY {name} ({', '.join(columns)}) on "
                        f"partition {part}: its tenant-leading primary key, built before the "
                        "swap",
            statements=(compose("DROP INDEX CONCURRENTLY IF EXISTS {}", idx),
                        compose("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})",
                                identifier(name), part.ident, columns_sql(columns))),
            lock=Lock.SHARE_UPDATE_EXCLUSIVE,
            transactional=False,
            done_check=index_ready(part, name),
            inverse=(compose("DROP INDEX CONCURRENTLY IF EXISTS {}", idx),),
            inverse_transactional=False,
            inverse_lock=Lock.SHARE_UPDATE_EXCLUSIVE,
            estimate=Estimate(rows=child.row_estimate if child else 0, bytes=size // 3),
            why=f"{entry.qname} is partitioned: its primary key is made of its partitions' ones",
        ))
    return steps


def _partition_swap_sql(entry: TenantTable, drop: str, add: str, columns: tuple[str, ...],
                        parts: list[tuple[QualifiedName, str]]) -> list[sql.Composed]:
    """Drop ``drop`` on the parent, make each partition's index its primary key, add ``add``
    on the parent (it adopts them). ``parts``: (partition, index/constraint name)."""
    out = [compose("ALTER TABLE {} DROP CONSTRAINT {}", entry.ident, identifier(drop))]
    out += [compose("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}", part.ident,
                    identifier(name), identifier(name)) for part, name in parts]
    out.append(compose("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})", entry.ident,
                       identifier(add), columns_sql(columns)))
    return out


def partitioned_swap_step(entry: TenantTable, old_name: str, old_columns: tuple[str, ...],
                          parts: list[tuple[QualifiedName, str]], lock_ms: float) -> Step:
    new_name = tenant_name(entry.qname, old_name)
    new_columns = (entry.column, *old_columns)
    new_parts = [(p, tenant_name(p, n)) for p, n in parts]
    guard = do_block(compose(
        "IF (SELECT count(*) FROM pg_inherits WHERE inhparent = {t}) <> {n} THEN"
        " RAISE EXCEPTION {msg}; END IF;",
        t=regclass_literal(entry.qname), n=sql.Literal(len(parts)),
        msg=sql.Literal(f"{entry.qname}: its partitions changed since the plan: apply the index "
                        "stage again (it builds the new partitions' indexes first)")))
    forward = [not_null_guard(entry), guard,
               *_partition_swap_sql(entry, old_name, new_name, new_columns, new_parts)]
    swap_back = do_block(compose(
        "IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {t} AND conname = {n}) THEN"
        " {body}; END IF;", t=regclass_literal(entry.qname), n=sql.Literal(new_name),
        body=sql.SQL("; ").join(_partition_swap_sql(entry, new_name, old_name, old_columns,
                                                    parts))))
    inverse: list[sql.Composable] = [set_lock_timeout(lock_ms)]
    inverse += [drop_invalid(p, n) for p, n in parts]
    inverse.append(set_lock_timeout(0))
    inverse += [compose("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})",
                        identifier(n), p.ident, columns_sql(old_columns)) for p, n in parts]
    inverse += [set_lock_timeout(lock_ms), swap_back]
    return Step(
        id=f"swap_primary_key:{entry.qname}:{new_name}",
        stage="index",
        kind="swap_primary_key",
        table=entry.qname,
        description=f"swap {old_name} ({', '.join(old_columns)}) for {new_name} PRIMARY KEY "
                    f"({', '.join(new_columns)}) on the partitioned {entry.qname} and its "
                    f"{len(parts)} partition(s), in one short transaction",
        statements=tuple(forward),
        # ACCESS EXCLUSIVE on the parent and on every partition, for a catalog change: each
        # partition's key is the index built before, the parent's adopts them.
        lock=Lock.ACCESS_EXCLUSIVE,
        done_check=exists_sql(compose(
            "SELECT 1 FROM pg_constraint WHERE conrelid = {} AND conname = {}",
            regclass_literal(entry.qname), sql.Literal(new_name))),
        inverse=tuple(inverse),
        inverse_transactional=False,
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        estimate=Estimate(seconds=0.01 * (1 + len(parts))),
        why="Citus needs the distribution column in every primary key; a partitioned table's "
            "key is its partitions' keys, each built concurrently before",
        risks=(f"a rollback builds the old key ({', '.join(old_columns)}) again on every "
               "partition: it fails if two tenants have the same value by then",
               "locks every partition at once (briefly): a long query on any one of them "
               "makes the swap wait up to lock_timeout and retry"),
    )


def added_build(entry: TenantTable, columns: tuple[str, ...]) -> Step:
    name = added_name(entry.qname)
    idx = identifier(entry.qname.schema, name)
    new_columns = (entry.column, *columns)
    return Step(
        id=f"create_index:{entry.qname}:{name}",
        stage="index",
        kind="create_index",
        table=entry.qname,
        description=f"CREATE UNIQUE INDEX CONCURRENTLY {name} ({', '.join(new_columns)}): the "
                    "primary key this table lacks, built before it is added",
        statements=(compose("DROP INDEX CONCURRENTLY IF EXISTS {}", idx),
                    compose("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})",
                            identifier(name), entry.ident, columns_sql(new_columns))),
        lock=Lock.SHARE_UPDATE_EXCLUSIVE,
        transactional=False,
        done_check=index_ready(entry.qname, name),
        inverse=(compose("DROP INDEX CONCURRENTLY IF EXISTS {}", idx),),
        inverse_transactional=False,
        inverse_lock=Lock.SHARE_UPDATE_EXCLUSIVE,
        estimate=Estimate(rows=entry.table.row_estimate, bytes=entry.table.size_bytes // 3),
        why="Citus moves shards by logical replication, which needs a replica identity: a "
            "primary key holding the distribution column",
    )


def added_key_step(entry: TenantTable, source: str, columns: tuple[str, ...]) -> Step:
    name = added_name(entry.qname)
    return Step(
        id=f"add_primary_key:{entry.qname}:{name}",
        stage="index",
        kind="add_primary_key",
        table=entry.qname,
        description=f"ADD CONSTRAINT {name} PRIMARY KEY USING INDEX {name} "
                    f"({entry.column}, {', '.join(columns)}), from the NOT NULL unique "
                    f"{source}",
        statements=(not_null_guard(entry),
                    compose("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}",
                            entry.ident, identifier(name), identifier(name))),
        lock=Lock.ACCESS_EXCLUSIVE,
        done_check=exists_sql(compose(
            "SELECT 1 FROM pg_constraint WHERE conrelid = {} AND conname = {}",
            regclass_literal(entry.qname), sql.Literal(name))),
        inverse=(compose("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}", entry.ident,
                         identifier(name)),),
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        estimate=Estimate(seconds=0.01),
        why="the index is built and every column NOT NULL: adding the key only changes the "
            "catalog",
        risks=("the replica identity (default) becomes the new key: logical replication "
               "subscribers see it",) if entry.table.publications else (),
    )
