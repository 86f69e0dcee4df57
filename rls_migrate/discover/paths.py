"""Derived tables: the shortest foreign-key path from each table to one that carries the
tenant key (breadth-first), and which paths are ambiguous."""

from __future__ import annotations

from collections import defaultdict, deque

from rls_migrate.catalog import QualifiedName
from rls_migrate.discover.links import nullable_todo, owners_of, sets_null
from rls_migrate.discover.model import Hop
from rls_migrate.discover.names import path_text, plural
from rls_migrate.discover.state import Discovery


def derive(state: Discovery) -> None:
    """Breadth-first from every table that carries the key, along foreign keys from
    parent to child: the first visit is at the shortest distance, so self-references
    and cycles end by themselves and never make a path."""
    children: dict[QualifiedName, list[Hop]] = defaultdict(list)
    for hops in state.edges.values():
        for hop in hops:
            children[hop.ref_table].append(hop)
    # Tables with two tenant-key columns (ambiguous) still carry the key: distance 0.
    dist: dict[QualifiedName, int] = dict.fromkeys(state.result, 0)
    order: list[QualifiedName] = []
    queue = deque(sorted(dist))
    while queue:
        parent = queue.popleft()
        for hop in children[parent]:
            if hop.table not in dist:
                dist[hop.table] = dist[parent] + 1
                order.append(hop.table)
                queue.append(hop.table)
    for qname in order:  # nondecreasing distance: parents are classified first
        table = state.nodes[qname]
        first = [h for h in state.edges[qname] if dist.get(h.ref_table) == dist[qname] - 1]
        paths = [(hop,) + state.path_of(hop.ref_table) for hop in first]
        unresolved = [f"the path continues through {hop.ref_table}, which is ambiguous: "
                      f"resolve it first" for hop in first
                      if state.result[hop.ref_table].kind == "ambiguous"]
        if len(first) > 1:
            state.result[qname] = state.classification(
                table, "ambiguous",
                f"{len(first)} different shortest paths of {plural(dist[qname], 'hop')}: "
                + "; ".join(f"{path_text(p)} (first hop {p[0].evidence})"
                            for p in paths),
                alternatives=paths,
                notes=["choose one first hop as parent (strategy derive); on dirty data "
                       "the paths may disagree on the tenant", *unresolved])
            continue
        hop, path = first[0], paths[0]
        notes = list(unresolved)
        owners = owners_of(state, qname)
        if hop.nullable:
            # Rows whose link is NULL reach no tenant by it: a NOT NULL link that
            # reaches the tenant too (by a longer path) is the sure one; without one,
            # the user decides (the rows may belong to the row that points at them).
            sure = sorted((h for h in state.edges[qname]
                           if h.ref_table in dist and not h.nullable),
                          key=lambda h: (dist[h.ref_table], h.ref_table, h.columns))
            if sure:
                notes.append(f"the shorter link {hop} may be NULL: derived through the NOT "
                             f"NULL link {sure[0]} instead")
                hop = sure[0]
                path = (hop,) + state.path_of(hop.ref_table)
            elif owners or sets_null(table, hop):
                # Rows that lose or never had the link are the normal case here: the
                # user decides.
                state.result[qname] = nullable_todo(state, table, paths, owners, dist[qname],
                                                         unresolved)
                continue
            else:
                notes.append(f"the link {hop} may be NULL: a row without it gets no tenant "
                             f"from it (init counts such rows, and writes the table as TODO "
                             f"when there are any)")
        nullable_on_path = [h for h in path[1:] if h.nullable]
        if nullable_on_path:
            notes.append("the path goes through links that may be NULL ("
                         + ", ".join(str(h) for h in nullable_on_path)
                         + "): rows of those tables without a link have no tenant, and "
                           "nor do their rows here")
        for owner in owners:
            notes.append(f"also owned one-to-one by {owner.ref_table} ({owner}): if rows "
                         f"are written before their owner, strategy owned fits better")
        if path[-1].ref_table == state.root:
            notes.append(f"reaches {state.root} through {path[-1]}, not through its key")
        others = [h for h in state.edges[qname] if h is not hop and h.ref_table in dist]
        if others:
            notes.append("other foreign keys reach the tenant by longer paths: "
                         + ", ".join(str(h) for h in others))
        evidence = (f"shortest foreign-key path, {plural(dist[qname], 'hop')}: "
                    f"{path_text(path)}; first hop {hop.evidence}")
        state.result[qname] = state.classification(
            table, "derived", evidence, path=path, notes=notes)
