"""Tenant-scoped uniques (``tenant_unique``): a global ``UNIQUE (email)`` reveals that another
tenant has the value; it becomes ``UNIQUE (tenant, email)``, built concurrently and swapped in
by one short ``DROP CONSTRAINT, ADD CONSTRAINT ... USING INDEX``. Also the new ``(tenant, id)``
keys that tenant-consistent foreign keys reference."""

from __future__ import annotations

from psycopg import sql

from rls_migrate.catalog import QualifiedName
from rls_migrate.errors import PlaybookError
from rls_migrate.sqlcompose import as_text, compose, identifier
from rls_migrate.stages.common import (
    PlanContext,
    TenantTable,
    constraint_exists_check,
    object_name,
    regclass_literal,
)
from rls_migrate.stages.index.shapes import (
    KEY_SUFFIX,
    TENANT_UNIQUE_SUFFIX,
    IndexShape,
    is_ours,
    shape_of,
)
from rls_migrate.stages.index.tenant_index import (
    check_columns,
    create_step,
    drop_index_step,
    not_sql,
    replaced_name,
)
from rls_migrate.steps import Estimate, Lock, Step


def _both(a: sql.Composable, b: sql.Composable) -> sql.Composed:
    return compose("SELECT ({}) AND ({})", a, b)


def _set_lock_timeout(ms: float) -> sql.Composed:
    value = "0" if ms <= 0 else f"{max(1, round(ms))}ms"
    return compose("SELECT set_config('lock_timeout', {}, false)", sql.Literal(value))


def _do(body: sql.Composable) -> sql.Composed:
    """A DO block around composed statements (identifiers quoted by psycopg, then the whole
    body passed as one string literal)."""
    return compose("DO {}", sql.Literal(as_text(compose("BEGIN {} END", body))))


def unique_steps(ctx: PlanContext, entry: TenantTable, wanted: tuple[str, ...],
                  notes: list[str]) -> list[Step]:
    """``tenant_unique``: the global unique on ``wanted`` becomes tenant-scoped. ``wanted``
    names columns, or one unique index or constraint by name (the way to name an expression
    or partial unique index: ``[index_users_on_lower_email]``)."""
    where = "tenant_unique"
    if len(wanted) == 1 and entry.table.column(wanted[0]) is None:
        named = _named_unique(entry, wanted[0], notes)
        if named is not None:
            return named
        constraint = next(c for c in entry.table.constraints
                          if c.kind == "u" and c.name == wanted[0])
        wanted = constraint.columns
    cols = tuple(c for c in wanted if c != entry.column)
    if not cols:
        raise PlaybookError(f"tables.{entry.qname}.{where}: name the columns that must be "
                            f"unique within a tenant, e.g. [email]")
    check_columns(entry, cols, where)
    table = entry.table
    if table.is_partitioned:
        raise PlaybookError(f"tables.{entry.qname}.{where}: not supported on a partitioned "
                            "table (a unique index there must include the partition key, and "
                            "ADD CONSTRAINT ... USING INDEX is refused)")
    if table.primary_key is not None and set(table.primary_key) == set(cols):
        raise PlaybookError(f"tables.{entry.qname}.{where}: ({', '.join(cols)}) is the "
                            "primary key; a tenant-scoped primary key is not supported")
    tenant_cols = (entry.column, *cols)
    risks: tuple[str, ...] = ()
    column = table.column(entry.column)
    if column is not None and not column.not_null:
        risks = (f"{entry.column} is nullable here: rows without a tenant are not checked "
                 "against each other",)
    ident = entry.ident
    by_name = {i.name: i for i in table.indexes}

    def same(columns: tuple[str | None, ...]) -> bool:
        return len(columns) == len(cols) and set(columns) == set(cols)

    old_con = next((c for c in table.constraints
                    if c.kind == "u" and same(c.columns) and not is_ours(c.name)), None)
    old_idx = next((i for i in table.indexes
                    if i.is_unique and not i.is_primary and i.is_valid and same(i.columns)
                    and i.predicate is None and not is_ours(i.name)
                    and not any(c.index_name == i.name for c in table.constraints)), None)
    ours_con = next((c for c in table.constraints
                     if c.kind == "u" and c.columns == tenant_cols
                     and c.name.endswith(TENANT_UNIQUE_SUFFIX)), None)
    ours_idx = next((i for i in table.indexes
                     if i.is_unique and i.columns == tenant_cols
                     and i.name.endswith(TENANT_UNIQUE_SUFFIX)
                     and not any(c.index_name == i.name for c in table.constraints)), None)

    if old_con is not None or (old_con is None and old_idx is None and ours_con is not None):
        # A UNIQUE constraint: swap it for the tenant-scoped one.
        if old_con is not None:
            old_name = old_con.name
            index = by_name.get(old_con.index_name or "")
            old_shape = shape_of(index) if index is not None else None
            deferrable = old_con.definition
        else:
            assert ours_con is not None
            replaced = replaced_name(entry.qname, ours_con.name, TENANT_UNIQUE_SUFFIX)
            index = by_name.get(ours_con.index_name or "")
            ours_shape = shape_of(index) if index is not None else None
            if replaced is None or ours_shape is None:
                notes.append(f"{entry.qname}: {ours_con.name} is tenant-scoped already; the "
                             "global unique it replaced cannot be read back from its name, so "
                             "a rollback keeps it tenant-scoped")
                return []
            old_name, old_shape, deferrable = replaced, ours_shape.without_leading(), \
                ours_con.definition
        if old_shape is None:
            notes.append(f"{entry.qname}: cannot read the index of {old_name}: left global")
            return []
        new = object_name("", QualifiedName(entry.qname.schema, old_name), TENANT_UNIQUE_SUFFIX)
        new_ident, old_ident = identifier(new), identifier(old_name)
        timing = deferrable_sql(deferrable)
        lock_ms = ctx.playbook.options.lock_timeout
        old_exists = constraint_exists_check(entry.qname, old_name)
        drop_invalid = _do(compose(
            "IF EXISTS (SELECT 1 FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
            " WHERE x.indrelid = {t} AND c.relname = {n} AND NOT x.indisvalid)"
            " THEN DROP INDEX {i}; END IF;",
            t=regclass_literal(entry.qname), n=sql.Literal(old_name),
            i=identifier(entry.qname.schema, old_name)))
        swap_back = _do(compose(
            "IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {t} AND conname = {n})"
            " THEN ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {new}, ADD CONSTRAINT {old}"
            " UNIQUE USING INDEX {old}{timing}; END IF;",
            t=regclass_literal(entry.qname), n=sql.Literal(old_name), table=ident,
            new=new_ident, old=old_ident, timing=timing))
        return [
            create_step(table, entry.qname, new, old_shape.leading(entry.column),
                         f"tenant_unique: {old_name} ({', '.join(cols)}) is global: an insert "
                         "reveals that another tenant already has the value", unique=True),
            Step(
                id=f"swap_unique:{entry.qname}:{new}",
                stage="index",
                kind="swap_unique",
                table=entry.qname,
                description=f"swap {old_name} for {new} UNIQUE ({', '.join(tenant_cols)}) in "
                            "one short transaction",
                statements=(compose(
                    "ALTER TABLE {} DROP CONSTRAINT {}, ADD CONSTRAINT {} UNIQUE USING INDEX "
                    "{}{}", ident, old_ident, new_ident, new_ident, timing),),
                lock=Lock.ACCESS_EXCLUSIVE,
                done_check=_both(constraint_exists_check(entry.qname, new), not_sql(old_exists)),
                # Back: build the global index again concurrently (no lock_timeout: a build
                # waits for older transactions and blocks no query meanwhile), then swap
                # under lock_timeout. Each part is skipped when already done, so a retry or
                # a rerun after a kill converges.
                inverse=(_set_lock_timeout(lock_ms), drop_invalid, _set_lock_timeout(0),
                         old_shape.create(old_name, entry.qname, unique=True),
                         _set_lock_timeout(lock_ms), swap_back),
                inverse_transactional=False,
                inverse_lock=Lock.ACCESS_EXCLUSIVE,
                estimate=Estimate(seconds=0.01),
                why="the unique index is built already: the swap only changes the catalog",
                risks=risks + (f"a rollback builds the global {old_name} again: it fails if "
                               "two tenants have the same value by then",),
            ),
        ]
    if old_idx is not None or ours_idx is not None:
        # A unique index without a constraint (Rails' add_index unique: true).
        if old_idx is not None:
            old_name, old_shape = old_idx.name, shape_of(old_idx)
        else:
            assert ours_idx is not None
            replaced = replaced_name(entry.qname, ours_idx.name, TENANT_UNIQUE_SUFFIX)
            ours_shape = shape_of(ours_idx)
            if replaced is None or ours_shape is None:
                return [create_step(table, entry.qname, ours_idx.name,
                                     ours_shape or IndexShape.of_columns(tenant_cols),
                                     "tenant_unique", unique=True)]
            old_name, old_shape = replaced, ours_shape.without_leading()
        if old_shape is None:
            notes.append(f"{entry.qname}: cannot read the definition of {old_name}: left global")
            return []
        new = object_name("", QualifiedName(entry.qname.schema, old_name), TENANT_UNIQUE_SUFFIX)
        return [
            create_step(table, entry.qname, new, old_shape.leading(entry.column),
                         f"tenant_unique: {old_name} ({', '.join(cols)}) is global",
                         unique=True),
            drop_index_step(entry, old_name, old_shape, unique=True,
                             why=f"{new} enforces uniqueness within each tenant now",
                             risks=risks + (f"a rollback builds the global {old_name} again: "
                                            "it fails if two tenants have the same value by "
                                            "then",)),
        ]
    # Nothing global to replace: a new tenant-scoped unique constraint.
    return key_steps(entry, tenant_cols, "tenant_unique: unique within each tenant",
                      risks=risks + ("the build fails if a tenant already has duplicates",))


def _named_unique(entry: TenantTable, name: str, notes: list[str]) -> list[Step] | None:
    """``tenant_unique: [<index name>]``: that unique index (partial and expression ones
    included: its predicate and expressions are kept) is built again led by the tenant
    column, and the global one dropped, both concurrently. None when ``name`` is a UNIQUE
    constraint (handled by its columns); an error when it names nothing unique."""
    table = entry.table
    if any(c.kind == "u" and c.name == name for c in table.constraints):
        return None
    where = f"tables.{entry.qname}.tenant_unique"
    if table.is_partitioned:
        raise PlaybookError(f"{where}: not supported on a partitioned table (a unique index "
                            "there must include the partition key)")
    by_name = {i.name: i for i in table.indexes}
    new = object_name("", QualifiedName(entry.qname.schema, name), TENANT_UNIQUE_SUFFIX)
    old, ours = by_name.get(name), by_name.get(new)
    if old is not None and (not old.is_unique or old.is_primary):
        what = "the primary key" if old.is_primary else "not a unique index"
        raise PlaybookError(f"{where}: {name} is {what}; name the columns, or a unique index "
                            "or constraint")
    if old is None and (ours is None or not ours.is_unique):
        import difflib

        uniques = [i.name for i in table.indexes if i.is_unique and not i.is_primary]
        hint = difflib.get_close_matches(name, [*uniques, *table.column_names], n=3,
                                         cutoff=0.5)
        raise PlaybookError(f"{where}: table {entry.qname} has no column, unique index or "
                            f"unique constraint {name!r}"
                            + (f" (did you mean {', '.join(hint)}?)" if hint else ""))
    if old is not None and entry.column in old.columns:
        notes.append(f"{entry.qname}: {name} holds {entry.column} already: tenant-scoped")
        return []
    if old is not None:
        shape = shape_of(old)
    else:
        assert ours is not None
        found = shape_of(ours)
        shape = found.without_leading() if found is not None else None
    if shape is None:
        notes.append(f"{entry.qname}: cannot read the definition of {name}: left global")
        return []
    risks: tuple[str, ...] = ()
    column = table.column(entry.column)
    if column is not None and not column.not_null:
        risks = (f"{entry.column} is nullable here: rows without a tenant are not checked "
                 "against each other",)
    return [
        create_step(table, entry.qname, new, shape.leading(entry.column),
                    f"tenant_unique: {name} is global: an insert reveals that another tenant "
                    "already has the value", unique=True),
        drop_index_step(entry, name, shape, unique=True,
                        why=f"{new} enforces uniqueness within each tenant now",
                        risks=risks + (f"a rollback builds the global {name} again: it fails "
                                       "if two tenants have the same value by then",)),
    ]


def deferrable_sql(definition: str) -> sql.SQL:
    if "INITIALLY DEFERRED" in definition:
        return sql.SQL(" DEFERRABLE INITIALLY DEFERRED")
    if "DEFERRABLE" in definition and "NOT DEFERRABLE" not in definition:
        return sql.SQL(" DEFERRABLE")
    return sql.SQL("")


def key_name(entry: TenantTable, columns: tuple[str, ...]) -> str:
    return object_name("", entry.qname, "_" + "_".join(columns) + KEY_SUFFIX)


def add_key_step(entry: TenantTable, name: str, columns: tuple[str, ...], why: str,
                  risks: tuple[str, ...] = ()) -> Step:
    ident = identifier(name)
    return Step(
        id=f"tenant_key:{entry.qname}:{name}",
        stage="index",
        kind="add_unique_constraint",
        table=entry.qname,
        description=f"UNIQUE ({', '.join(columns)}) USING INDEX {name} (built already: a "
                    "catalog change)",
        statements=(compose("ALTER TABLE {} ADD CONSTRAINT {} UNIQUE USING INDEX {}",
                            entry.ident, ident, ident),),
        lock=Lock.ACCESS_EXCLUSIVE,
        done_check=constraint_exists_check(entry.qname, name),
        inverse=(compose("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}", entry.ident, ident),),
        inverse_lock=Lock.ACCESS_EXCLUSIVE,
        estimate=Estimate(seconds=0.01),
        why=why,
        risks=risks,
    )


def key_steps(entry: TenantTable, columns: tuple[str, ...], why: str,
               risks: tuple[str, ...] = ()) -> list[Step]:
    name = key_name(entry, columns)
    return [create_step(entry.table, entry.qname, name, IndexShape.of_columns(columns),
                         why, unique=True),
            add_key_step(entry, name, columns, why, risks)]
