"""Links that may be NULL (``ON DELETE SET NULL``, nullable columns) and one-to-one
owners (a tenant row points at this row through unique columns): the options a user
chooses between when a table reaches the tenant only through them."""

from __future__ import annotations

from rls_migrate.catalog import QualifiedName, Table, quote_ident
from rls_migrate.discover.model import TENANT_KINDS, Classification, Hop, Path
from rls_migrate.discover.names import plural
from rls_migrate.discover.state import Discovery


def sets_null(table: Table, hop: Hop) -> bool:
    """The link's foreign key is ``ON DELETE SET NULL``: deleting a parent leaves the row
    without one, by design."""
    return any(fk.name == hop.constraint and "ON DELETE SET NULL" in fk.definition
               for fk in table.foreign_keys)


def unique_in(table: Table, columns: tuple[str, ...]) -> bool:
    wanted = set(columns)
    if table.primary_key and set(table.primary_key) == wanted:
        return True
    if any(c.kind in ("p", "u") and set(c.columns) == wanted for c in table.constraints):
        return True
    return any(i.is_unique and i.is_valid and i.predicate is None
               and None not in i.columns and set(i.columns) == wanted for i in table.indexes)


def owners_of(state: Discovery, qname: QualifiedName) -> list[Hop]:
    """Reverse one-to-one links: a table that reaches the tenant (classified already)
    points at ``qname`` through unique columns, so each row of ``qname`` belongs to the
    one row that points at it."""
    found: list[Hop] = []
    for source, fk in state.referenced_by[qname]:
        owner = state.result.get(source)
        if owner is None or owner.kind not in TENANT_KINDS:
            continue
        if unique_in(state.nodes[source], fk.columns):
            found.append(Hop(qname, fk.ref_columns, source, fk.columns, None,
                             f"one-to-one: {source}({', '.join(fk.columns)}) is unique and "
                             f"references it by foreign key {quote_ident(fk.name)}",
                             reverse=True))
    return found


def nullable_todo(
    state: Discovery, table: Table, paths: list[Path], owners: list[Hop], hops: int,
    unresolved: list[str],
) -> Classification:
    """Reachable only through links that may be NULL: a TODO with every option (the
    nullable links, the owners that point at it) and what each means."""
    alternatives = [*paths, *((o,) + state.path_of(o.ref_table) for o in owners)]
    set_null = [str(p[0]) for p in paths if sets_null(table, p[0])]
    evidence = (f"reaches the tenant only through links that may be NULL "
                f"({', '.join(str(p[0]) for p in paths)}; "
                f"{plural(hops, 'hop')})")
    if set_null:
        evidence += f"; ON DELETE SET NULL: {', '.join(set_null)}"
    if owners:
        evidence += "; owned one-to-one by " + ", ".join(
            f"{o.ref_table}" for o in owners)
    notes = [*unresolved,
             "a row whose link is NULL gets no tenant from it: derive through the link "
             "(such rows then take the writer's tenant, or stay without one: nullable / "
             "orphans for the table)"
             + ("; or strategy owned with an option written '<-' (the row that points at "
                "it gives the tenant, also when it is written first)" if owners else
                "; or add the tenant column in the application, or skip the table")]
    return state.classification(table, "ambiguous", evidence, alternatives=alternatives,
                                notes=notes, links=[a[0] for a in alternatives])
