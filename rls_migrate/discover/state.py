"""The state one discovery run shares between its phases: the catalog's tables without
partitions, the foreign-key edges, the notes gathered and the classifications decided so far."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from rls_migrate.catalog import Catalog, Column, ForeignKey, QualifiedName, Table
from rls_migrate.discover.model import Classification, Hop, Kind, Path
from rls_migrate.discover.tables import join_note, resolve_root, rls_notes, top_parent


class Discovery:
    """What one discovery run knows so far; each phase module reads and adds to it."""


    def __init__(
        self,
        catalog: Catalog,
        root: QualifiedName | str,
        key: str | None,
        tenant_column: str,
        app_role: str | None,
    ) -> None:
        self.catalog = catalog
        self.app_role = app_role
        self.root, self.key, self.key_col = resolve_root(catalog, root, key)
        self.tenant_column = tenant_column
        # Partitions fold into their top-level partitioned table.
        self.top: dict[QualifiedName, QualifiedName] = {}
        for qname, table in catalog.tables.items():
            if table.is_partition:
                self.top[qname] = top_parent(catalog, qname)
        self.nodes: dict[QualifiedName, Table] = {
            q: t for q, t in catalog.tables.items() if not t.is_partition}
        self.edges: dict[QualifiedName, list[Hop]] = {}
        self.notes: dict[QualifiedName, list[str]] = defaultdict(list)
        # Columns named like the tenant key but of another type: tenant data, most likely.
        self.key_mismatch: dict[QualifiedName, list[str]] = defaultdict(list)
        self.referenced_by: dict[QualifiedName, list[tuple[QualifiedName, ForeignKey]]] = (
            defaultdict(list))
        self.result: dict[QualifiedName, Classification] = {}

    def classification(
        self, table: Table, kind: Kind, evidence: str, *, column: str | None = None,
        path: Path = (), alternatives: Sequence[Path] = (), notes: Iterable[str] = (),
        links: Iterable[Hop] = (),
    ) -> Classification:
        """``links``: first hops whose rows without a tenant init should count (the path's
        own first hop is counted when it may be NULL)."""
        qname = table.qname
        counted = [*path[:1], *links] if path and path[0].nullable else list(links)
        found = {str(h): h for h in counted}
        return Classification(
            qname, kind, column, evidence, path, tuple(alternatives),
            (*self.notes[qname], *notes, *self.key_mismatch[qname], *rls_notes(table),
             *join_note(table)),
            self.partitions(qname), table.row_estimate, tuple(found.values()))

    def partitions(self, qname: QualifiedName) -> tuple[QualifiedName, ...]:
        table = self.nodes.get(qname) or self.catalog.tables[qname]
        found: list[QualifiedName] = []
        todo = list(table.partitions)
        while todo:
            part = todo.pop(0)
            found.append(part)
            child = self.catalog.tables.get(part)
            if child is not None:
                todo.extend(child.partitions)
        return tuple(found)

    def single_pk(self, qname: QualifiedName) -> Column | None:
        table = self.nodes[qname]
        if table.primary_key and len(table.primary_key) == 1:
            return table.column(table.primary_key[0])
        return None

    def path_of(self, qname: QualifiedName) -> Path:
        found = self.result.get(qname)
        return found.path if found is not None else ()
