"""Tables no foreign-key path reaches: those that look like tenant data get candidate
hints (``needs_hint``); the rest are reference data (:mod:`rls_migrate.discover.reference`)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict, deque
from collections.abc import Mapping

from rls_migrate.catalog import Column, QualifiedName, Table, quote_ident
from rls_migrate.discover.links import unique_in
from rls_migrate.discover.model import Hop, Path
from rls_migrate.discover.names import compatible, norm, reference_names, type_note
from rls_migrate.discover.polymorphic import MAX_POLYMORPHIC_OPTIONS, polymorphic_pairs
from rls_migrate.discover.reference import classify_global
from rls_migrate.discover.state import Discovery


@dataclasses.dataclass
class _Hints:
    """What makes an unreached table look like tenant data, while it is being worked out."""

    alternatives: list[Path] = dataclasses.field(default_factory=list)
    reasons: list[str] = dataclasses.field(default_factory=list)  # for the evidence
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, path: Path) -> None:
        if all(str(alt[0]) != str(path[0]) for alt in self.alternatives):
            self.alternatives.append(path)


def classify_unreached(state: Discovery) -> None:
    tenant = set(state.result)
    rest = [q for q in state.nodes if q not in state.result]
    # Tenant tables by the names their keys would have in other tables.
    by_ref_name: dict[str, list[tuple[QualifiedName, Column]]] = defaultdict(list)
    for qname in sorted(tenant):
        pk = state.single_pk(qname)
        if pk is not None:
            for name in reference_names(qname, pk.name):
                by_ref_name[name].append((qname, pk))
    hints: dict[QualifiedName, _Hints] = {}
    for qname in rest:
        found = _hint_candidates(state, state.nodes[qname], tenant, by_ref_name)
        if found.reasons:
            hints[qname] = found
    # A table with a foreign key to a table that needs a hint needs one too (that
    # foreign key): walk such keys backwards, each table once.
    children: dict[QualifiedName, list[Hop]] = defaultdict(list)
    for qname in rest:
        for hop in state.edges[qname]:
            children[hop.ref_table].append(hop)
    queue = deque(sorted(hints))
    seen = set(queue)
    while queue:
        parent = queue.popleft()
        for hop in children[parent]:
            found = hints.setdefault(hop.table, _Hints())
            found.add((hop,))
            found.reasons.append(f"references {parent}, which needs a hint (derive from "
                                 f"it once that is decided)")
            if hop.table not in seen:
                seen.add(hop.table)
                queue.append(hop.table)
    for qname in rest:
        table = state.nodes[qname]
        if qname in hints:
            found = hints[qname]
            state.result[qname] = state.classification(
                table, "needs_hint",
                "no foreign-key path to the tenant; " + "; ".join(found.reasons),
                alternatives=found.alternatives, notes=found.notes,
                links=[a[0] for a in found.alternatives if a[0].reverse])
            continue
        state.result[qname] = classify_global(state, table, tenant)


def _hint_candidates(
    state: Discovery,
    table: Table,
    tenant: set[QualifiedName],
    by_ref_name: Mapping[str, list[tuple[QualifiedName, Column]]],
) -> _Hints:
    qname = table.qname
    found = _Hints()
    found.reasons.extend(state.key_mismatch.get(qname, ()))
    fk_columns = {c for fk in table.foreign_keys for c in fk.columns}
    columns = {c.name: c for c in table.columns}
    # 1. A column named like a tenant table's key, without a foreign key.
    for col in table.columns:
        if col.name in fk_columns:
            continue
        for target, pk in by_ref_name.get(norm(col.name), ()):
            if target == qname:
                continue
            if compatible(col, pk):
                hop = Hop(qname, (col.name,), target, (pk.name,), None,
                          f"{type_note(col, pk)}, no foreign key")
                found.add((hop,) + state.path_of(target))
                found.reasons.append(
                    f"{quote_ident(col.name)} looks like a reference to {target}"
                    f"({quote_ident(pk.name)}): {hop.evidence}")
            else:
                found.reasons.append(
                    f"{quote_ident(col.name)} is named like a reference to {target}"
                    f"({quote_ident(pk.name)}) but its type {col.type} differs from "
                    f"{pk.type}")
    # 2. Polymorphic pairs: the parent table is chosen per row by <x>_type (Rails), or
    # by a content type (Django's generic relations: content_type_id + object_id).
    for name, id_col in polymorphic_pairs(columns):
        targets = sorted(
            ((q, key) for q in tenant
             if (key := state.single_pk(q)) is not None and compatible(id_col, key)),
            key=lambda item: (len(state.path_of(item[0])), item[0]))
        found.reasons.append(f"polymorphic reference {name} + {id_col.name}")
        found.notes.append(
            f"polymorphic reference {name} + {id_col.name}: the parent table depends on "
            f"the row, so no single hint fits every row; add the tenant column in the "
            f"application (or split the table) unless one option covers every row")
        for target, key in targets[:MAX_POLYMORPHIC_OPTIONS]:
            found.add((Hop(
                qname, (id_col.name,), target, (key.name,), None,
                f"polymorphic {name}, type {id_col.type} fits"),) + state.path_of(target))
        if len(targets) > MAX_POLYMORPHIC_OPTIONS:
            found.notes.append(f"{len(targets) - MAX_POLYMORPHIC_OPTIONS} more tenant "
                               f"tables have a key of that type")
    # 3. A row a tenant table owns one-to-one (accounts.billing_profile_id UNIQUE).
    for source, fk in state.referenced_by[qname]:
        if source in tenant and unique_in(state.nodes[source], fk.columns):
            hop = Hop(qname, fk.ref_columns, source, fk.columns, None,
                      f"one-to-one: {source}({', '.join(fk.columns)}) is unique and "
                      f"references it by foreign key {quote_ident(fk.name)}", reverse=True)
            found.add((hop,) + state.path_of(source))
            found.reasons.append(hop.evidence)
    return found
