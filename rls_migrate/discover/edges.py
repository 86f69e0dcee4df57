"""The foreign-key graph: one :class:`Hop` per foreign key from child to parent, with
partition clones folded and self-references set aside."""

from __future__ import annotations

from rls_migrate.catalog import ForeignKey, QualifiedName, quote_ident
from rls_migrate.discover.model import Hop
from rls_migrate.discover.state import Discovery

_EdgeKey = tuple[tuple[str, ...], QualifiedName, tuple[str, ...]]  # columns, parent, ref columns


def build_edges(state: Discovery) -> None:
    for qname, table in state.nodes.items():
        hops: dict[_EdgeKey, tuple[Hop, ForeignKey]] = {}
        exact: set[_EdgeKey] = set()
        self_refs: set[_EdgeKey] = set()
        for fk in table.foreign_keys:
            # A foreign key to a partitioned table is also stored once per partition
            # (clones with names of their own): fold those into the one to the parent.
            ref = state.top.get(fk.ref_table, fk.ref_table)
            if ref not in state.nodes:
                state.notes[qname].append(
                    f"foreign key {quote_ident(fk.name)} references {fk.ref_table}, "
                    f"outside the schemas read: not followed")
                continue
            ident = (fk.columns, ref, fk.ref_columns)
            if ref == qname:
                if ident not in self_refs:
                    self_refs.add(ident)
                    state.notes[qname].append(
                        f"self-reference {quote_ident(fk.name)} ({', '.join(fk.columns)}) "
                        f"is not a path to the tenant (a tree's rows share its root's "
                        f"tenant)")
                continue
            if ident in exact or (ident in hops and fk.ref_table != ref):
                continue
            nullable = any(not c.not_null for c in table.columns if c.name in fk.columns)
            hops[ident] = (Hop(qname, fk.columns, ref, fk.ref_columns, fk.name,
                               f"foreign key {quote_ident(fk.name)}"
                               + (" (nullable)" if nullable else ""),
                               nullable=nullable), fk)
            if fk.ref_table == ref:
                exact.add(ident)
        for hop, fk in hops.values():
            state.referenced_by[hop.ref_table].append((qname, fk))
        state.edges[qname] = sorted(
            (hop for hop, _ in hops.values()),
            key=lambda h: (h.ref_table, h.columns, h.ref_columns))
