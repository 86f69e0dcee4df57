"""What discovery returns: the tenant graph, one :class:`Classification` per table, the
:class:`Hop` steps of its paths, and the view reports and warnings found on the way."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

from rls_migrate.catalog import QualifiedName, quote_ident

Kind = Literal["root", "direct", "derived", "ambiguous", "needs_hint", "global"]
KINDS: tuple[Kind, ...] = ("root", "direct", "derived", "ambiguous", "needs_hint", "global")
TENANT_KINDS: frozenset[str] = frozenset({"root", "direct", "derived", "ambiguous"})
"""Kinds whose rows belong to a tenant by foreign keys or the key itself."""

SUPPORTED_KEY_TYPES = ("bigint", "integer", "smallint", "uuid", "text")


@dataclasses.dataclass(frozen=True)
class Hop:
    """One step from a child row to its parent row: ``columns -> ref_table(ref_columns)``.

    ``constraint`` names the foreign key; it is None for a hint inferred from names and types
    (then ``evidence`` says why it was proposed).
    """

    table: QualifiedName
    columns: tuple[str, ...]
    ref_table: QualifiedName
    ref_columns: tuple[str, ...]
    constraint: str | None
    evidence: str
    reverse: bool = False  # a reverse one-to-one: ref_table's ref_columns point at this row
    nullable: bool = False  # a column of the link may be NULL: such rows have no parent

    def __str__(self) -> str:
        # The playbook's syntax, so options can be pasted: ``parent:`` values, or for a row
        # its owner points at, ``owner:`` values (``id <- public."Envelope"("metaId")``).
        left = ", ".join(quote_ident(c) for c in self.columns)
        right = ", ".join(quote_ident(c) for c in self.ref_columns)
        return f"{left} {'<-' if self.reverse else '->'} {self.ref_table}({right})"

    @property
    def strategy(self) -> str:
        """The playbook strategy that follows this hop."""
        if self.reverse:
            return "owned"
        return "derive" if self.constraint is not None else "hint"


Path = tuple[Hop, ...]


@dataclasses.dataclass(frozen=True)
class Classification:
    """What discovery decided about one table, and why."""

    table: QualifiedName
    kind: Kind
    column: str | None  # root/direct: the column holding the tenant key
    evidence: str
    path: Path = ()  # derived: the shortest path, ending at a root or direct table
    alternatives: tuple[Path, ...] = ()  # ambiguous: every shortest path; needs_hint: hints
    notes: tuple[str, ...] = ()
    partitions: tuple[QualifiedName, ...] = ()  # every partition below a partitioned table
    row_estimate: int = 0
    nullable_links: tuple[Hop, ...] = ()  # links of its path or options that may be NULL

    @property
    def parent(self) -> Hop | None:
        """The first hop of the path (the playbook's ``parent``), for derived tables."""
        return self.path[0] if self.path else None

    @property
    def hops(self) -> int:
        return len(self.path)

    @property
    def options(self) -> tuple[Hop, ...]:
        """The first hop of each alternative: what a user chooses between."""
        return tuple(alt[0] for alt in self.alternatives if alt)

    @property
    def is_tenant(self) -> bool:
        return self.kind in TENANT_KINDS


@dataclasses.dataclass(frozen=True)
class ViewReport:
    """A view or materialized view over tenant tables, and whether it sidesteps RLS."""

    view: QualifiedName
    kind: str  # view | materialized
    owner: str
    security_invoker: bool
    tenant_tables: tuple[QualifiedName, ...]
    bypasses_rls: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class Finding:
    """A warning for the user: ``code`` is stable (for tests and renderers)."""

    code: str  # view_bypasses_rls | app_role_owns_table | app_role_missing | ...
    subject: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclasses.dataclass(frozen=True)
class TenantGraph:
    """Every non-partition table classified around the tenant root."""

    root: QualifiedName
    key: str
    key_type: str  # format_type() of the key column, e.g. "bigint"
    tables: Mapping[QualifiedName, Classification]  # root, direct, derived (by depth), ...
    views: tuple[ViewReport, ...]
    warnings: tuple[Finding, ...]
    partition_parents: Mapping[QualifiedName, QualifiedName]  # partition -> classified table

    def classification_of(self, qname: QualifiedName) -> Classification:
        """The classification of a table, or of the partitioned table a partition is in."""
        top = self.partition_parents.get(qname, qname)
        try:
            return self.tables[top]
        except KeyError:
            raise KeyError(f"no table {qname} in the tenant graph") from None

    def of_kind(self, *kinds: Kind) -> list[Classification]:
        return [c for c in self.tables.values() if c.kind in kinds]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        for c in self.tables.values():
            counts[c.kind] += 1
        return counts

    @property
    def tenant_tables(self) -> list[QualifiedName]:
        return [q for q, c in self.tables.items() if c.is_tenant]
