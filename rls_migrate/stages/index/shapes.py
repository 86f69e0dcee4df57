"""Index shapes: an index definition taken apart so that a tenant-leading twin keeps its sort
orders, operator classes and predicate, and a dropped index can be built again exactly; and
the names this stage gives what it builds (found again by name on a rerun or a rollback)."""

from __future__ import annotations

import dataclasses
import re

from psycopg import sql

from rls_migrate.catalog import Index, QualifiedName
from rls_migrate.sqlcompose import compose, identifier, sep
from rls_migrate.sqltext import scan
from rls_migrate.stages.common import columns_sql

INDEX_SUFFIX = "_rlsm_idx"
"""Tenant indexes, twins (``<old name>_rlsm_idx``) and extra indexes."""
TENANT_UNIQUE_SUFFIX = "_rlsm_tenant"
"""A tenant-scoped unique that replaced ``<old name>``; composite foreign keys too."""
KEY_SUFFIX = "_rlsm_key"
"""A new tenant-scoped unique (a parent's ``(tenant, id)``, or a tenant_unique with nothing
global to replace)."""
_OURS = re.compile(r"_rlsm_(idx|tenant|key)$")


def is_ours(name: str) -> bool:
    return bool(_OURS.search(name))


@dataclasses.dataclass(frozen=True)
class IndexShape:
    """An index definition taken apart: method, keys, and what follows the keys (INCLUDE,
    NULLS NOT DISTINCT, WITH, WHERE), so a twin keeps sort orders, operator classes and
    predicates, and a dropped index can be built again exactly.

    ``keys`` hold the server's own text (``pg_get_indexdef``), or identifiers this module
    added; ``columns`` are the key columns when every key is a bare column."""

    method: str
    keys: tuple[sql.Composable, ...]
    columns: tuple[str, ...] | None
    tail: str = ""

    @classmethod
    def of_columns(cls, columns: tuple[str, ...]) -> IndexShape:
        return cls("btree", tuple(identifier(c) for c in columns), columns)

    @classmethod
    def parse(cls, definition: str) -> IndexShape | None:
        """``CREATE INDEX i ON s.t USING btree (a, b DESC) WHERE (x > 0)`` -> its parts;
        None when the text does not have that form."""
        using = _find_top_level(definition, " USING ")
        if using < 0:
            return None
        rest = definition[using + len(" USING "):]
        method, _, _ = rest.partition(" (")
        start = using + len(" USING ") + len(method) + 1
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", method) or definition[start:start + 1] != "(":
            return None
        end = _matching_paren(definition, start)
        if end < 0:
            return None
        texts = [k.strip() for k in _split_top_level(definition[start + 1:end])]
        names = [_bare_identifier(k) for k in texts]
        columns = None if any(n is None for n in names) else tuple(n for n in names if n)
        # Server text, like format_type() elsewhere: it comes from the catalog, never from a
        # user, and is already quoted where needed.
        return cls(method, tuple(sql.SQL(k) for k in texts), columns,
                   definition[end + 1:].strip())

    @property
    def is_plain(self) -> bool:
        return self.columns is not None and self.method == "btree" and not self.tail

    def leading(self, column: str) -> IndexShape:
        """The same index with ``column`` in front: the tenant-leading twin."""
        return dataclasses.replace(
            self, keys=(identifier(column), *self.keys),
            columns=None if self.columns is None else (column, *self.columns))

    def without_leading(self) -> IndexShape:
        """The index a twin was made from."""
        return dataclasses.replace(self, keys=self.keys[1:],
                                   columns=None if self.columns is None else self.columns[1:])

    def create(self, name: str, table: QualifiedName, *, unique: bool = False,
               concurrently: bool = True, only: bool = False) -> sql.Composed:
        head = compose("CREATE {kind}{conc} IF NOT EXISTS {name} ON {only}{table}",
                       kind=sql.SQL("UNIQUE INDEX" if unique else "INDEX"),
                       conc=sql.SQL(" CONCURRENTLY" if concurrently else ""),
                       name=identifier(name), only=sql.SQL("ONLY " if only else ""),
                       table=table.ident)
        if self.is_plain:
            assert self.columns is not None
            return compose("{} ({})", head, columns_sql(self.columns))
        tail = sql.SQL(" " + self.tail) if self.tail else sql.SQL("")
        return compose("{} USING {} ({}){}", head, identifier(self.method),
                       sep(", ").join(self.keys), tail)

    def describe(self) -> str:
        if self.columns is not None:
            return ", ".join(self.columns)
        return ", ".join(k.as_string(None) for k in self.keys)


def _find_top_level(text: str, needle: str) -> int:
    for i, _, depth in scan(text):
        if depth == 0 and text.startswith(needle, i):
            return i
    return -1


def _matching_paren(text: str, start: int) -> int:
    for i, ch, depth in scan(text):
        if i > start and ch == ")" and depth == 0:
            return i
    return -1


def _split_top_level(text: str) -> list[str]:
    parts, last = [], 0
    for i, ch, depth in scan(text):
        if ch == "," and depth == 0:
            parts.append(text[last:i])
            last = i + 1
    parts.append(text[last:])
    return parts


def _bare_identifier(text: str) -> str | None:
    """The column name when ``text`` is nothing but a (possibly quoted) identifier."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", text):
        return text
    if len(text) >= 2 and text[0] == text[-1] == '"' and '"' not in text[1:-1].replace('""', ""):
        return text[1:-1].replace('""', '"')
    return None


def shape_of(index: Index) -> IndexShape | None:
    return IndexShape.parse(index.definition)
