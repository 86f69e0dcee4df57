"""Direct tables: those that carry the tenant key, by a foreign key to the root or by a
column named and typed like the key."""

from __future__ import annotations

from rls_migrate.catalog import Column, Table, quote_ident
from rls_migrate.discover.model import Classification
from rls_migrate.discover.names import compatible, norm, reference_names, type_note
from rls_migrate.discover.state import Discovery


def classify_direct(state: Discovery, table: Table) -> Classification | None:
    fk_to_key = [h for h in state.edges[table.qname]
                 if h.ref_table == state.root and h.ref_columns == (state.key,)]
    key_names = reference_names(state.root, state.key) | {
        norm(state.tenant_column), "tenantid"}
    if len(fk_to_key) == 1:
        hop = fk_to_key[0]
        return state.classification(
            table, "direct", f"{hop.evidence}: {hop}",
            column=hop.columns[0])
    if len(fk_to_key) > 1:
        # Two columns point at the tenant (owner_account_id, payer_account_id): a column
        # named like the key wins; otherwise the user decides.
        named = [h for h in fk_to_key if norm(h.columns[0]) in key_names]
        if len(named) == 1:
            others = ", ".join(h.columns[0] for h in fk_to_key if h is not named[0])
            return state.classification(
                table, "direct", f"{named[0].evidence}: {named[0]}",
                column=named[0].columns[0],
                notes=[f"also references the tenant through {others}: chosen "
                       f"{named[0].columns[0]} by its name"])
        return state.classification(
            table, "ambiguous",
            f"{len(fk_to_key)} foreign keys reference {state.root}({state.key}): "
            + ", ".join(h.columns[0] for h in fk_to_key),
            alternatives=[(h,) for h in fk_to_key],
            notes=["choose the column that holds the row's tenant (strategy direct with "
                   "that column)"])
    fk_columns = {c for h in state.edges[table.qname] for c in h.columns}
    fk_columns.update(c for fk in table.foreign_keys for c in fk.columns)
    matches: list[Column] = []
    mismatched: list[Column] = []
    for col in table.columns:
        if col.name in fk_columns or norm(col.name) not in key_names:
            continue
        (matches if compatible(col, state.key_col) else mismatched).append(col)
    if matches:
        # An exact name match first (the playbook column, then the conventional name).
        matches.sort(key=lambda c: (c.name != state.tenant_column, c.name))
        col = matches[0]
        notes = [f"{col.name} has no foreign key to {state.root}: nothing stops a value "
                 f"that names no tenant; consider adding one (NOT VALID, then VALIDATE)"]
        if len(matches) > 1:
            notes.append("other key-like columns: " + ", ".join(c.name for c in matches[1:]))
        return state.classification(
            table, "direct",
            f"column {quote_ident(col.name)}: {type_note(col, state.key_col)} "
            f"{state.root}({quote_ident(state.key)}), no foreign key",
            column=col.name, notes=notes)
    for col in mismatched:
        state.key_mismatch[table.qname].append(
            f"column {col.name} is named like the tenant key but its type {col.type} "
            f"does not match {state.key_col.type}")
    return None
