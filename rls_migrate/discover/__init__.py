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

The package, one module per idea: ``model`` (the result types), ``names`` (matching names
and types), ``tables`` (root, partitions, per-table notes), ``state`` (what a run shares),
``edges`` (the foreign-key graph), ``direct``, ``paths`` (derived, shortest paths),
``links`` (nullable links, one-to-one owners), ``polymorphic``, ``hints`` (needs_hint),
``reference`` (global), ``exposure`` (views and warnings), ``run`` (the phases in order).

Example::

    graph = discover(catalog, "public.accounts", app_role="app_user")
    graph.tables[QualifiedName("public", "comments")].path   # (issue_id -> public.issues(id),
                                                             #  project_id -> public.projects(id))
"""

from __future__ import annotations

from rls_migrate.discover.model import (
    KINDS,
    SUPPORTED_KEY_TYPES,
    TENANT_KINDS,
    Classification,
    Finding,
    Hop,
    Kind,
    Path,
    TenantGraph,
    ViewReport,
)
from rls_migrate.discover.names import singular_forms
from rls_migrate.discover.run import discover

__all__ = [
    "KINDS",
    "SUPPORTED_KEY_TYPES",
    "TENANT_KINDS",
    "Classification",
    "Finding",
    "Hop",
    "Kind",
    "Path",
    "TenantGraph",
    "ViewReport",
    "discover",
    "singular_forms",
]
