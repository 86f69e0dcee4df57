"""Discover the tenant graph: how every table of a :class:`~rls_migrate.catalog.Catalog`
relates to the tenant root.

Pure and offline: it reads the catalog snapshot only, in time linear in the number of
tables, columns and foreign keys (1,000 tables classify in milliseconds).

Each table that is not a partition gets one :class:`Classification`:

``root``
    the tenant table itself; ``column`` is its key.
``direct``
    carries the tenant key: a foreign key to ``root(key)`` (evidence ``foreign key <name>``),
    or, without a foreign key, a column named like the key (``<root singular>_<key>`` such as
    ``account_id``, ``tenant_id`` or the playbook's tenant column) whose type matches the
    key's (evidence says "name and type match, no foreign key").
``derived``
    reaches a root or direct table through foreign-key hops, child to parent. ``path`` is the
    shortest one (breadth-first search; a composite foreign key is one hop; self-references
    and cycles never make a path shorter, so they are never chosen).
``ambiguous``
    two or more shortest paths with *different first hops*: every one is in
    ``alternatives``, nothing is guessed. Also a table reachable only through links that may
    be NULL when that is by design: the link is ``ON DELETE SET NULL``, or a tenant row owns
    it one-to-one (a reverse one-to-one: ``Organisation.claimId -> OrganisationClaim.id``,
    unique): the options are the links and the owners (``Hop.reverse``, written
    ``id <- public."Organisation"("claimId")``, strategy ``owned``).

Links that may be NULL: a derived table prefers a NOT NULL link to a shorter nullable one;
a table whose only links may be NULL stays derived with a note and ``nullable_links`` (init
counts the rows without a link, :mod:`rls_migrate.linkcounts`, and writes a TODO when there
are any); a path through nullable links further up is noted.
``needs_hint``
    reaches no tenant by foreign key, yet looks like tenant data: a column without a foreign
    key that is named and typed like a tenant table's key (``audit_log.issue_id`` and
    ``issues.id``), a polymorphic ``<x>_type`` + ``<x>_id`` pair, a one-to-one row that a
    tenant table owns (the referencing columns are unique there), or a foreign key to another
    table that needs a hint. The candidate hints are in ``alternatives`` (first hop first).
``global``
    reaches no tenant and looks like reference data. Being *looked up* by tenant tables
    (``accounts.country_code -> countries``: many tenant rows point at one shared row) is
    what reference data is, so such tables stay global; only a one-to-one reference (unique
    columns on the tenant side) makes a referenced table tenant-owned (``needs_hint``).

Partitions are not classified on their own: they inherit their partitioned parent's
classification (``Classification.partitions``, :meth:`TenantGraph.classification_of`).
Views over tenant tables that would bypass RLS, and tables the application role owns (RLS does
not apply to the owner without ``FORCE``), are reported in ``TenantGraph.warnings``.

Example::

    graph = discover(catalog, "public.accounts", app_role="app_user")
    graph.tables[QualifiedName("public", "comments")].path   # (issue_id -> public.issues(id),
                                                             #  project_id -> public.projects(id))
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Literal

from rls_migrate.catalog import (
    Catalog,
    Column,
    ForeignKey,
    QualifiedName,
    Table,
    View,
    quote_ident,
)
from rls_migrate.errors import UsageError

Kind = Literal["root", "direct", "derived", "ambiguous", "needs_hint", "global"]
KINDS: tuple[Kind, ...] = ("root", "direct", "derived", "ambiguous", "needs_hint", "global")
TENANT_KINDS: frozenset[str] = frozenset({"root", "direct", "derived", "ambiguous"})
"""Kinds whose rows belong to a tenant by foreign keys or the key itself."""

SUPPORTED_KEY_TYPES = ("bigint", "integer", "smallint", "uuid", "text")
_INTEGER_OIDS = frozenset({20, 21, 23})  # int8, int2, int4: values compare across them
_MAX_POLYMORPHIC_OPTIONS = 8
_IRREGULAR = {"people": "person", "children": "child", "men": "man", "women": "woman",
              "data": "datum", "indices": "index", "media": "medium"}


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
_EdgeKey = tuple[tuple[str, ...], QualifiedName, tuple[str, ...]]  # columns, parent, ref columns


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


@dataclasses.dataclass
class _Hints:
    """What makes an unreached table look like tenant data, while it is being worked out."""

    alternatives: list[Path] = dataclasses.field(default_factory=list)
    reasons: list[str] = dataclasses.field(default_factory=list)  # for the evidence
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, path: Path) -> None:
        if all(str(alt[0]) != str(path[0]) for alt in self.alternatives):
            self.alternatives.append(path)


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


# --------------------------------------------------------------------------- names


def _norm(name: str) -> str:
    """Compare names ignoring case and separators: ``projectId`` = ``project_id``."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def singular_forms(name: str) -> set[str]:
    """Normalized singular guesses for a table name (``issues`` -> ``issue``,
    ``companies`` -> ``company``, ``addresses`` -> ``address``): all are kept because a
    wrong extra guess costs nothing when a column must also match by type."""
    word = _norm(name)
    forms = {word}
    if word in _IRREGULAR:
        forms.add(_IRREGULAR[word])
    if word.endswith("ies") and len(word) > 3:
        forms.add(word[:-3] + "y")
    if word.endswith("es") and len(word) > 2:
        forms.add(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 1:
        forms.add(word[:-1])
    return forms


def _reference_names(table: QualifiedName, key: str) -> set[str]:
    """Normalized column names that would reference ``table(key)``: ``issue_id``,
    ``issues_id``, ``issueId``."""
    return {form + _norm(key) for form in singular_forms(table.name)}


def _compatible(a: Column, b: Column) -> bool:
    return a.type_oid == b.type_oid or (a.type_oid in _INTEGER_OIDS and b.type_oid in _INTEGER_OIDS)


def _type_note(col: Column, key: Column) -> str:
    if col.type_oid == key.type_oid:
        return f"name and type ({key.type}) match"
    return f"name matches, type {col.type} is compatible with {key.type}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _path_text(path: Path) -> str:
    if not path:
        return ""
    names = [path[0].table.short] + [hop.ref_table.short for hop in path]
    return " -> ".join(names)


# --------------------------------------------------------------------------- discovery


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
    return _Discovery(catalog, root, key, tenant_column, app_role).run()


class _Discovery:
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
        self.root, self.key, self.key_col = _resolve_root(catalog, root, key)
        self.tenant_column = tenant_column
        # Partitions fold into their top-level partitioned table.
        self.top: dict[QualifiedName, QualifiedName] = {}
        for qname, table in catalog.tables.items():
            if table.is_partition:
                self.top[qname] = _top_parent(catalog, qname)
        self.nodes: dict[QualifiedName, Table] = {
            q: t for q, t in catalog.tables.items() if not t.is_partition}
        self.edges: dict[QualifiedName, list[Hop]] = {}
        self.notes: dict[QualifiedName, list[str]] = defaultdict(list)
        # Columns named like the tenant key but of another type: tenant data, most likely.
        self.key_mismatch: dict[QualifiedName, list[str]] = defaultdict(list)
        self.referenced_by: dict[QualifiedName, list[tuple[QualifiedName, ForeignKey]]] = (
            defaultdict(list))
        self.result: dict[QualifiedName, Classification] = {}

    # ------------------------------------------------------------------ graph

    def _build_edges(self) -> None:
        for qname, table in self.nodes.items():
            hops: dict[_EdgeKey, tuple[Hop, ForeignKey]] = {}
            exact: set[_EdgeKey] = set()
            self_refs: set[_EdgeKey] = set()
            for fk in table.foreign_keys:
                # A foreign key to a partitioned table is also stored once per partition
                # (clones with names of their own): fold those into the one to the parent.
                ref = self.top.get(fk.ref_table, fk.ref_table)
                if ref not in self.nodes:
                    self.notes[qname].append(
                        f"foreign key {quote_ident(fk.name)} references {fk.ref_table}, "
                        f"outside the schemas read: not followed")
                    continue
                ident = (fk.columns, ref, fk.ref_columns)
                if ref == qname:
                    if ident not in self_refs:
                        self_refs.add(ident)
                        self.notes[qname].append(
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
                self.referenced_by[hop.ref_table].append((qname, fk))
            self.edges[qname] = sorted(
                (hop for hop, _ in hops.values()),
                key=lambda h: (h.ref_table, h.columns, h.ref_columns))

    # ------------------------------------------------------------------ run

    def run(self) -> TenantGraph:
        self._build_edges()
        root_table = self.nodes[self.root]
        self.result[self.root] = Classification(
            self.root, "root", self.key,
            f"the tenant root (key {quote_ident(self.key)} {self.key_col.type})",
            notes=tuple(self.notes[self.root]) + _rls_notes(root_table),
            partitions=self._partitions(self.root), row_estimate=root_table.row_estimate)
        for qname, table in self.nodes.items():
            if qname != self.root:
                direct = self._direct(table)
                if direct is not None:
                    self.result[qname] = direct
        self._derive()
        self._unreached()
        ordered = self._ordered()
        views = self._views(ordered)
        warnings = self._warnings(ordered, views)
        return TenantGraph(
            root=self.root, key=self.key, key_type=self.key_col.type,
            tables=MappingProxyType(ordered), views=tuple(views), warnings=tuple(warnings),
            partition_parents=MappingProxyType(dict(self.top)))

    def _classification(
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
            (*self.notes[qname], *notes, *self.key_mismatch[qname], *_rls_notes(table),
             *_join_note(table)),
            self._partitions(qname), table.row_estimate, tuple(found.values()))

    def _partitions(self, qname: QualifiedName) -> tuple[QualifiedName, ...]:
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

    # ------------------------------------------------------------------ direct

    def _direct(self, table: Table) -> Classification | None:
        fk_to_key = [h for h in self.edges[table.qname]
                     if h.ref_table == self.root and h.ref_columns == (self.key,)]
        key_names = _reference_names(self.root, self.key) | {
            _norm(self.tenant_column), "tenantid"}
        if len(fk_to_key) == 1:
            hop = fk_to_key[0]
            return self._classification(
                table, "direct", f"{hop.evidence}: {hop}",
                column=hop.columns[0])
        if len(fk_to_key) > 1:
            # Two columns point at the tenant (owner_account_id, payer_account_id): a column
            # named like the key wins; otherwise the user decides.
            named = [h for h in fk_to_key if _norm(h.columns[0]) in key_names]
            if len(named) == 1:
                others = ", ".join(h.columns[0] for h in fk_to_key if h is not named[0])
                return self._classification(
                    table, "direct", f"{named[0].evidence}: {named[0]}",
                    column=named[0].columns[0],
                    notes=[f"also references the tenant through {others}: chosen "
                           f"{named[0].columns[0]} by its name"])
            return self._classification(
                table, "ambiguous",
                f"{len(fk_to_key)} foreign keys reference {self.root}({self.key}): "
                + ", ".join(h.columns[0] for h in fk_to_key),
                alternatives=[(h,) for h in fk_to_key],
                notes=["choose the column that holds the row's tenant (strategy direct with "
                       "that column)"])
        fk_columns = {c for h in self.edges[table.qname] for c in h.columns}
        fk_columns.update(c for fk in table.foreign_keys for c in fk.columns)
        matches: list[Column] = []
        mismatched: list[Column] = []
        for col in table.columns:
            if col.name in fk_columns or _norm(col.name) not in key_names:
                continue
            (matches if _compatible(col, self.key_col) else mismatched).append(col)
        if matches:
            # An exact name match first (the playbook column, then the conventional name).
            matches.sort(key=lambda c: (c.name != self.tenant_column, c.name))
            col = matches[0]
            notes = [f"{col.name} has no foreign key to {self.root}: nothing stops a value "
                     f"that names no tenant; consider adding one (NOT VALID, then VALIDATE)"]
            if len(matches) > 1:
                notes.append("other key-like columns: " + ", ".join(c.name for c in matches[1:]))
            return self._classification(
                table, "direct",
                f"column {quote_ident(col.name)}: {_type_note(col, self.key_col)} "
                f"{self.root}({quote_ident(self.key)}), no foreign key",
                column=col.name, notes=notes)
        for col in mismatched:
            self.key_mismatch[table.qname].append(
                f"column {col.name} is named like the tenant key but its type {col.type} "
                f"does not match {self.key_col.type}")
        return None

    # ------------------------------------------------------------------ derived

    def _derive(self) -> None:
        """Breadth-first from every table that carries the key, along foreign keys from
        parent to child: the first visit is at the shortest distance, so self-references
        and cycles end by themselves and never make a path."""
        children: dict[QualifiedName, list[Hop]] = defaultdict(list)
        for hops in self.edges.values():
            for hop in hops:
                children[hop.ref_table].append(hop)
        # Tables with two tenant-key columns (ambiguous) still carry the key: distance 0.
        dist: dict[QualifiedName, int] = dict.fromkeys(self.result, 0)
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
            table = self.nodes[qname]
            first = [h for h in self.edges[qname] if dist.get(h.ref_table) == dist[qname] - 1]
            paths = [(hop,) + self._path_of(hop.ref_table) for hop in first]
            unresolved = [f"the path continues through {hop.ref_table}, which is ambiguous: "
                          f"resolve it first" for hop in first
                          if self.result[hop.ref_table].kind == "ambiguous"]
            if len(first) > 1:
                self.result[qname] = self._classification(
                    table, "ambiguous",
                    f"{len(first)} different shortest paths of {_plural(dist[qname], 'hop')}: "
                    + "; ".join(f"{_path_text(p)} (first hop {p[0].evidence})"
                                for p in paths),
                    alternatives=paths,
                    notes=["choose one first hop as parent (strategy derive); on dirty data "
                           "the paths may disagree on the tenant", *unresolved])
                continue
            hop, path = first[0], paths[0]
            notes = list(unresolved)
            owners = self._owners(qname)
            if hop.nullable:
                # Rows whose link is NULL reach no tenant by it: a NOT NULL link that
                # reaches the tenant too (by a longer path) is the sure one; without one,
                # the user decides (the rows may belong to the row that points at them).
                sure = sorted((h for h in self.edges[qname]
                               if h.ref_table in dist and not h.nullable),
                              key=lambda h: (dist[h.ref_table], h.ref_table, h.columns))
                if sure:
                    notes.append(f"the shorter link {hop} may be NULL: derived through the NOT "
                                 f"NULL link {sure[0]} instead")
                    hop = sure[0]
                    path = (hop,) + self._path_of(hop.ref_table)
                elif owners or _sets_null(table, hop):
                    # Rows that lose or never had the link are the normal case here: the
                    # user decides.
                    self.result[qname] = self._nullable_todo(table, paths, owners, dist[qname],
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
            if path[-1].ref_table == self.root:
                notes.append(f"reaches {self.root} through {path[-1]}, not through its key")
            others = [h for h in self.edges[qname] if h is not hop and h.ref_table in dist]
            if others:
                notes.append("other foreign keys reach the tenant by longer paths: "
                             + ", ".join(str(h) for h in others))
            evidence = (f"shortest foreign-key path, {_plural(dist[qname], 'hop')}: "
                        f"{_path_text(path)}; first hop {hop.evidence}")
            self.result[qname] = self._classification(
                table, "derived", evidence, path=path, notes=notes)

    def _owners(self, qname: QualifiedName) -> list[Hop]:
        """Reverse one-to-one links: a table that reaches the tenant (classified already)
        points at ``qname`` through unique columns, so each row of ``qname`` belongs to the
        one row that points at it."""
        found: list[Hop] = []
        for source, fk in self.referenced_by[qname]:
            owner = self.result.get(source)
            if owner is None or owner.kind not in TENANT_KINDS:
                continue
            if _unique_in(self.nodes[source], fk.columns):
                found.append(Hop(qname, fk.ref_columns, source, fk.columns, None,
                                 f"one-to-one: {source}({', '.join(fk.columns)}) is unique and "
                                 f"references it by foreign key {quote_ident(fk.name)}",
                                 reverse=True))
        return found

    def _nullable_todo(self, table: Table, paths: list[Path], owners: list[Hop], hops: int,
                       unresolved: list[str]) -> Classification:
        """Reachable only through links that may be NULL: a TODO with every option (the
        nullable links, the owners that point at it) and what each means."""
        alternatives = [*paths, *((o,) + self._path_of(o.ref_table) for o in owners)]
        set_null = [str(p[0]) for p in paths if _sets_null(table, p[0])]
        evidence = (f"reaches the tenant only through links that may be NULL "
                    f"({', '.join(str(p[0]) for p in paths)}; "
                    f"{_plural(hops, 'hop')})")
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
        return self._classification(table, "ambiguous", evidence, alternatives=alternatives,
                                    notes=notes, links=[a[0] for a in alternatives])

    # ------------------------------------------------------------------ unreached

    def _unreached(self) -> None:
        tenant = set(self.result)
        rest = [q for q in self.nodes if q not in self.result]
        # Tenant tables by the names their keys would have in other tables.
        by_ref_name: dict[str, list[tuple[QualifiedName, Column]]] = defaultdict(list)
        for qname in sorted(tenant):
            pk = self._single_pk(qname)
            if pk is not None:
                for name in _reference_names(qname, pk.name):
                    by_ref_name[name].append((qname, pk))
        hints: dict[QualifiedName, _Hints] = {}
        for qname in rest:
            found = self._hint_candidates(self.nodes[qname], tenant, by_ref_name)
            if found.reasons:
                hints[qname] = found
        # A table with a foreign key to a table that needs a hint needs one too (that
        # foreign key): walk such keys backwards, each table once.
        children: dict[QualifiedName, list[Hop]] = defaultdict(list)
        for qname in rest:
            for hop in self.edges[qname]:
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
            table = self.nodes[qname]
            if qname in hints:
                found = hints[qname]
                self.result[qname] = self._classification(
                    table, "needs_hint",
                    "no foreign-key path to the tenant; " + "; ".join(found.reasons),
                    alternatives=found.alternatives, notes=found.notes,
                    links=[a[0] for a in found.alternatives if a[0].reverse])
                continue
            lookups = sorted({(q, fk.columns) for q, fk in self.referenced_by[qname]
                              if q in tenant})
            if lookups:
                shown = ", ".join(f"{q}({', '.join(quote_ident(c) for c in cols)})"
                                  for q, cols in lookups[:5])
                more = f" and {len(lookups) - 5} more" if len(lookups) > 5 else ""
                evidence = f"reaches no tenant; looked up by {shown}{more}: reference data"
            else:
                evidence = ("reaches no tenant, no tenant table references it and no column "
                            "looks like a tenant reference")
            self.result[qname] = self._classification(
                table, "global", evidence,
                notes=["confirm that every tenant may read all its rows (or skip the table)"])

    def _hint_candidates(
        self,
        table: Table,
        tenant: set[QualifiedName],
        by_ref_name: Mapping[str, list[tuple[QualifiedName, Column]]],
    ) -> _Hints:
        qname = table.qname
        found = _Hints()
        found.reasons.extend(self.key_mismatch.get(qname, ()))
        fk_columns = {c for fk in table.foreign_keys for c in fk.columns}
        columns = {c.name: c for c in table.columns}
        # 1. A column named like a tenant table's key, without a foreign key.
        for col in table.columns:
            if col.name in fk_columns:
                continue
            for target, pk in by_ref_name.get(_norm(col.name), ()):
                if target == qname:
                    continue
                if _compatible(col, pk):
                    hop = Hop(qname, (col.name,), target, (pk.name,), None,
                              f"{_type_note(col, pk)}, no foreign key")
                    found.add((hop,) + self._path_of(target))
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
        for name, id_col in _polymorphic_pairs(columns):
            targets = sorted(
                ((q, key) for q in tenant
                 if (key := self._single_pk(q)) is not None and _compatible(id_col, key)),
                key=lambda item: (len(self._path_of(item[0])), item[0]))
            found.reasons.append(f"polymorphic reference {name} + {id_col.name}")
            found.notes.append(
                f"polymorphic reference {name} + {id_col.name}: the parent table depends on "
                f"the row, so no single hint fits every row; add the tenant column in the "
                f"application (or split the table) unless one option covers every row")
            for target, key in targets[:_MAX_POLYMORPHIC_OPTIONS]:
                found.add((Hop(
                    qname, (id_col.name,), target, (key.name,), None,
                    f"polymorphic {name}, type {id_col.type} fits"),) + self._path_of(target))
            if len(targets) > _MAX_POLYMORPHIC_OPTIONS:
                found.notes.append(f"{len(targets) - _MAX_POLYMORPHIC_OPTIONS} more tenant "
                                   f"tables have a key of that type")
        # 3. A row a tenant table owns one-to-one (accounts.billing_profile_id UNIQUE).
        for source, fk in self.referenced_by[qname]:
            if source in tenant and _unique_in(self.nodes[source], fk.columns):
                hop = Hop(qname, fk.ref_columns, source, fk.columns, None,
                          f"one-to-one: {source}({', '.join(fk.columns)}) is unique and "
                          f"references it by foreign key {quote_ident(fk.name)}", reverse=True)
                found.add((hop,) + self._path_of(source))
                found.reasons.append(hop.evidence)
        return found

    def _single_pk(self, qname: QualifiedName) -> Column | None:
        table = self.nodes[qname]
        if table.primary_key and len(table.primary_key) == 1:
            return table.column(table.primary_key[0])
        return None

    def _path_of(self, qname: QualifiedName) -> Path:
        found = self.result.get(qname)
        return found.path if found is not None else ()

    # ------------------------------------------------------------------ output

    def _ordered(self) -> dict[QualifiedName, Classification]:
        """Root, direct, derived by depth, then what needs the user: parents before
        children, which is also the order the backfill runs in."""
        rank = {kind: i for i, kind in enumerate(KINDS)}
        items = sorted(self.result.values(),
                       key=lambda c: (rank[c.kind], len(c.path), c.table))
        return {c.table: c for c in items}

    def _views(self, tables: Mapping[QualifiedName, Classification]) -> list[ViewReport]:
        reports: list[ViewReport] = []
        views = self.catalog.views
        for qname, view in views.items():
            # Views over views: follow them down to the tables.
            under: set[QualifiedName] = set()
            seen = {qname}
            todo = list(view.depends_on)
            while todo:
                dep = todo.pop()
                if dep in seen:
                    continue
                seen.add(dep)
                if dep in views:
                    todo.extend(views[dep].depends_on)
                else:
                    top = self.top.get(dep, dep)
                    found = tables.get(top)
                    if found is not None and found.kind != "global":
                        under.add(top)
            if not under:
                continue
            bypasses, reason = self._view_bypasses(view, under)
            reports.append(ViewReport(qname, view.kind, view.owner, view.security_invoker,
                                      tuple(sorted(under)), bypasses, reason))
        return reports

    def _view_bypasses(self, view: View, under: set[QualifiedName]) -> tuple[bool, str]:
        if view.kind == "materialized":
            return True, ("a materialized view stores rows of every tenant and has no RLS: "
                          "revoke it from the application role or replace it")
        if view.security_invoker:
            return False, "security_invoker: RLS applies as the querying role"
        owner = self.catalog.roles.get(view.owner)
        memberships = self.catalog.role_memberships(view.owner)
        owns = sorted(q for q in under if self.nodes[q].owner in memberships)
        fix = ("ALTER VIEW ... SET (security_invoker = true)" if self.catalog.major >= 15
               else "security_invoker needs PostgreSQL 15: revoke the view from the "
                    "application role or replace it with a function")
        if owner is not None and (owner.superuser or owner.bypassrls):
            what = "a superuser" if owner.superuser else "a BYPASSRLS role"
            return True, f"runs with the rights of its owner {view.owner}, {what}: {fix}"
        if owns:
            return True, (f"runs with the rights of its owner {view.owner}, who owns "
                          f"{', '.join(map(str, owns))} (RLS does not apply to owners "
                          f"without FORCE): {fix}")
        return False, (f"runs with the rights of {view.owner}, which is subject to RLS: "
                       f"policies apply as that role")

    def _warnings(
        self, tables: Mapping[QualifiedName, Classification], views: list[ViewReport]
    ) -> list[Finding]:
        found: list[Finding] = []
        if self.key_col.type not in SUPPORTED_KEY_TYPES:
            found.append(Finding(
                "key_type_unsupported", str(self.root),
                f"the tenant key {self.root}({self.key}) is {self.key_col.type}; the toolkit "
                f"supports {', '.join(SUPPORTED_KEY_TYPES)}"))
        for report in views:
            if report.bypasses_rls:
                found.append(Finding(
                    "view_bypasses_rls", str(report.view),
                    f"{'materialized view' if report.kind == 'materialized' else 'view'} "
                    f"{report.view} reads tenant tables "
                    f"{', '.join(map(str, report.tenant_tables))} and would bypass RLS: "
                    f"{report.reason}"))
        role = self.app_role
        if role is None:
            return found
        info = self.catalog.roles.get(role)
        if info is None:
            found.append(Finding("app_role_missing", role,
                                 f"application role {role} does not exist in the database"))
            return found
        if info.superuser:
            # Owner or not, RLS never applies to it: one warning says it all.
            found.append(Finding("app_role_superuser", role,
                                 f"application role {role} is a superuser: RLS never applies "
                                 f"to it; connect the application as an ordinary role"))
            return found
        if info.bypassrls:
            found.append(Finding("app_role_bypassrls", role,
                                 f"application role {role} has BYPASSRLS: RLS never applies "
                                 f"to it (ALTER ROLE {quote_ident(role)} NOBYPASSRLS)"))
        owners = self.catalog.role_memberships(role)
        for qname, c in tables.items():
            table = self.nodes[qname]
            if c.kind != "global" and table.owner in owners:
                found.append(Finding(
                    "app_role_owns_table", str(qname),
                    f"{qname} is owned by {table.owner}"
                    + (f" (application role {role} is a member)" if table.owner != role
                       else " (the application role)")
                    + ": RLS does not apply to the owner unless FORCE ROW LEVEL SECURITY; "
                      "give the tables a separate owner, or set force_rls"))
        return found


def _resolve_root(
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


def _top_parent(catalog: Catalog, qname: QualifiedName) -> QualifiedName:
    seen = {qname}
    table = catalog.tables[qname]
    while table.partition_of is not None and table.partition_of in catalog.tables:
        qname = table.partition_of
        if qname in seen:  # cannot happen in PostgreSQL; never loop on a bad snapshot
            break
        seen.add(qname)
        table = catalog.tables[qname]
    return qname


def _polymorphic_pairs(columns: Mapping[str, Column]) -> list[tuple[str, Column]]:
    """(type column, id column) pairs: Rails' ``<x>_type`` + ``<x>_id``; Django's
    ``content_type_id`` + ``object_id`` (or ``object_pk``), also prefixed
    (``<x>_content_type_id`` + ``<x>_object_id`` or ``<x>_id``)."""
    pairs: list[tuple[str, Column]] = []
    for name in columns:
        if name.endswith("content_type_id"):
            prefix = name.removesuffix("content_type_id")
            names = [prefix + "object_id", prefix + "object_pk"]
            if prefix.rstrip("_"):
                names.append(prefix.rstrip("_") + "_id")
        elif name.endswith("_type"):
            names = [name.removesuffix("_type") + "_id"]
        else:
            continue
        id_col = next((columns[n] for n in names if n in columns), None)
        if id_col is not None:
            pairs.append((name, id_col))
    return pairs


def _sets_null(table: Table, hop: Hop) -> bool:
    """The link's foreign key is ``ON DELETE SET NULL``: deleting a parent leaves the row
    without one, by design."""
    return any(fk.name == hop.constraint and "ON DELETE SET NULL" in fk.definition
               for fk in table.foreign_keys)


def _unique_in(table: Table, columns: tuple[str, ...]) -> bool:
    wanted = set(columns)
    if table.primary_key and set(table.primary_key) == wanted:
        return True
    if any(c.kind in ("p", "u") and set(c.columns) == wanted for c in table.constraints):
        return True
    return any(i.is_unique and i.is_valid and i.predicate is None
               and None not in i.columns and set(i.columns) == wanted for i in table.indexes)


def _rls_notes(table: Table) -> tuple[str, ...]:
    if not table.rls_enabled and not table.policies:
        return ()
    state = "not enabled"
    if table.rls_enabled:
        state = "enabled and forced" if table.rls_forced else "enabled"
    count = len(table.policies)
    return (f"RLS is already {state} ({count} {'policy' if count == 1 else 'policies'})",)


def _join_note(table: Table) -> tuple[str, ...]:
    """A join table: its primary key is made of foreign-key columns only."""
    pk = table.primary_key
    if not pk or len(pk) < 2 or len(table.foreign_keys) < 2:
        return ()
    fk_cols = {c for fk in table.foreign_keys for c in fk.columns}
    return ("join table",) if set(pk) <= fk_cols else ()

