"""Facts read off one table of the catalog: the tenant root and its key, the partitioned
table a partition folds into, and the notes every classification carries (RLS state, join table)."""

from __future__ import annotations

from rls_migrate.catalog import Catalog, Column, QualifiedName, Table
from rls_migrate.errors import UsageError


def resolve_root(
    catalog: Catalog, root: QualifiedName | str, key: str | None
) -> tuple[QualifiedName, str, Column]:
    try:
        qname = root if isinstance(root, QualifiedName) else QualifiedName.parse(root)
    except ValueError as exc:
        raise UsageError(f"tenant table: {exc}") from None
    table = catalog.tables.get(qname)
    if table is None:
        hint = catalog.suggest(str(root))
        raise UsageError(f"tenant table {qname} not found in the database"
                         + (f" (did you mean {', '.join(hint)}?)" if hint else ""))
    if table.is_partition:
        raise UsageError(f"tenant table {qname} is a partition of {table.partition_of}: "
                         f"name the partitioned table")
    if key is None:
        if not table.primary_key:
            raise UsageError(f"tenant table {qname} has no primary key: name its key column")
        if len(table.primary_key) != 1:
            raise UsageError(
                f"tenant table {qname} has a composite primary key "
                f"({', '.join(table.primary_key)}): name its key column")
        key = table.primary_key[0]
    col = table.column(key)
    if col is None:
        raise UsageError(f"tenant table {qname} has no column {key!r} "
                         f"(columns: {', '.join(table.column_names)})")
    return qname, key, col


def top_parent(catalog: Catalog, qname: QualifiedName) -> QualifiedName:
    seen = {qname}
    table = catalog.tables[qname]
    while table.partition_of is not None and table.partition_of in catalog.tables:
        qname = table.partition_of
        if qname in seen:  # cannot happen in PostgreSQL; never loop on a bad snapshot
            break
        seen.add(qname)
        table = catalog.tables[qname]
    return qname


def rls_notes(table: Table) -> tuple[str, ...]:
    if not table.rls_enabled and not table.policies:
        return ()
    state = "not enabled"
    if table.rls_enabled:
        state = "enabled and forced" if table.rls_forced else "enabled"
    count = len(table.policies)
    return (f"RLS is already {state} ({count} {'policy' if count == 1 else 'policies'})",)


def join_note(table: Table) -> tuple[str, ...]:
    """A join table: its primary key is made of foreign-key columns only."""
    pk = table.primary_key
    if not pk or len(pk) < 2 or len(table.foreign_keys) < 2:
        return ()
    fk_cols = {c for fk in table.foreign_keys for c in fk.columns}
    return ("join table",) if set(pk) <= fk_cols else ()
