"""``discover()``: the phases in order, from the foreign-key graph to the finished
:class:`TenantGraph`."""

from __future__ import annotations

from types import MappingProxyType

from rls_migrate.catalog import Catalog, QualifiedName, quote_ident
from rls_migrate.discover.direct import classify_direct
from rls_migrate.discover.edges import build_edges
from rls_migrate.discover.exposure import findings, view_reports
from rls_migrate.discover.hints import classify_unreached
from rls_migrate.discover.model import KINDS, Classification, TenantGraph
from rls_migrate.discover.paths import derive
from rls_migrate.discover.state import Discovery
from rls_migrate.discover.tables import rls_notes


def discover(
    catalog: Catalog,
    root: QualifiedName | str,
    *,
    key: str | None = None,
    tenant_column: str = "tenant_id",
    app_role: str | None = None,
) -> TenantGraph:
    """Classify every non-partition table of ``catalog`` around the tenant ``root``.

    ``key`` defaults to the root's single-column primary key. ``tenant_column`` (the
    playbook's column) is one of the names a direct table's key column may have. With
    ``app_role``, tables it owns and its dangerous attributes are warned about.
    Raises :class:`UsageError` when the root or its key cannot be found.
    """
    return _run(Discovery(catalog, root, key, tenant_column, app_role))


def _run(state: Discovery) -> TenantGraph:
    build_edges(state)
    root_table = state.nodes[state.root]
    state.result[state.root] = Classification(
        state.root, "root", state.key,
        f"the tenant root (key {quote_ident(state.key)} {state.key_col.type})",
        notes=tuple(state.notes[state.root]) + rls_notes(root_table),
        partitions=state.partitions(state.root), row_estimate=root_table.row_estimate)
    for qname, table in state.nodes.items():
        if qname != state.root:
            direct = classify_direct(state, table)
            if direct is not None:
                state.result[qname] = direct
    derive(state)
    classify_unreached(state)
    tables = _ordered(state)
    views = view_reports(state, tables)
    warnings = findings(state, tables, views)
    return TenantGraph(
        root=state.root, key=state.key, key_type=state.key_col.type,
        tables=MappingProxyType(tables), views=tuple(views), warnings=tuple(warnings),
        partition_parents=MappingProxyType(dict(state.top)))


def _ordered(state: Discovery) -> dict[QualifiedName, Classification]:
    """Root, direct, derived by depth, then what needs the user: parents before
    children, which is also the order the backfill runs in."""
    rank = {kind: i for i, kind in enumerate(KINDS)}
    items = sorted(state.result.values(),
                   key=lambda c: (rank[c.kind], len(c.path), c.table))
    return {c.table: c for c in items}
