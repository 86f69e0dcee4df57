"""What a catalog snapshot is made of: schema-qualified names (parsed and quoted for
display), and one frozen value per relation, column, key, index, trigger, policy, view, role
and function. :mod:`rls_migrate.catalog` reads them from a database into a
:class:`~rls_migrate.catalog.Catalog` (and re-exports them: import them from either)."""

from __future__ import annotations

import dataclasses
import functools
import re

from psycopg import sql

_PLAIN_IDENT = re.compile(r"^[a-z_][a-z0-9_$]*$")


def quote_ident(name: str) -> str:
    """Quote an identifier for display only (SQL that runs uses ``sql.Identifier``)."""
    if _PLAIN_IDENT.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


@dataclasses.dataclass(frozen=True, order=True)
class QualifiedName:
    """A schema-qualified relation name."""

    schema: str
    name: str

    @classmethod
    def parse(cls, text: str, default_schema: str = "public") -> QualifiedName:
        """``public.issues``, ``issues``, ``"Project Notes"``, ``"my.schema"."t"``."""
        return _parse_qualified(text, default_schema)

    @functools.cached_property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return self._text

    @functools.cached_property
    def _text(self) -> str:
        # Once per name: a plan of 1,000 tables prints names tens of thousands of times.
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    @property
    def short(self) -> str:
        """Without the schema when it is ``public``."""
        return quote_ident(self.name) if self.schema == "public" else str(self)


@functools.lru_cache(maxsize=65536)
def _parse_qualified(text: str, default_schema: str) -> QualifiedName:
    # Cached: a plan looks the playbook's names up tens of thousands of times.
    parts = split_qualified(text)
    if len(parts) == 1:
        return QualifiedName(default_schema, parts[0])
    if len(parts) == 2:
        return QualifiedName(parts[0], parts[1])
    raise ValueError(f"not a table name: {text!r} (expected name or schema.name)")


def split_qualified(text: str) -> list[str]:
    """Split a possibly quoted, dot-separated name the way PostgreSQL reads it: quoted
    parts keep their case (``""`` is a quote), unquoted parts fold ASCII letters to lower
    case."""
    parts: list[str] = []
    current: list[str] = []
    seen_any = quoted = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            if seen_any:
                raise ValueError(f"quote in the middle of a name in {text!r}")
            j = i + 1
            while True:
                if j >= n:
                    raise ValueError(f"unterminated quoted name in {text!r}")
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        current.append('"')
                        j += 2
                        continue
                    break
                current.append(text[j])
                j += 1
            if j == i + 1:
                raise ValueError(f"zero-length quoted name in {text!r}")
            seen_any = quoted = True
            i = j + 1
        elif ch == ".":
            if not seen_any:
                raise ValueError(f"empty name part in {text!r}")
            parts.append("".join(current))
            current, seen_any, quoted = [], False, False
            i += 1
        elif ch.isspace() and not seen_any:
            i += 1
        elif ch.isspace():
            # trailing blanks after a part are ignored; blanks inside need quotes
            rest = text[i:].lstrip()
            if rest and not rest.startswith("."):
                raise ValueError(f"unquoted blank in name {text!r} (quote it)")
            i += len(text[i:]) - len(rest)
        else:
            if quoted:
                raise ValueError(f"text after a quoted name in {text!r}")
            # PostgreSQL folds only ASCII letters (in UTF-8 databases): ÄBC is "Äbc".
            current.append(ch.lower() if ch.isascii() else ch)
            seen_any = True
            i += 1
    if not seen_any:
        raise ValueError(f"empty name part in {text!r}")
    parts.append("".join(current))
    return parts


def parse_column(text: str) -> str:
    """A column name as the user wrote it: quoted as in SQL (``"organisationId"``, where
    ``""`` is a quote), or bare (``tenant_id``, ``organisationId``: taken as written, not
    folded, so a name copied from ``\\d`` works too). One syntax for every option and
    playbook key that names a column. Raises ValueError on a malformed quoted name."""
    stripped = text.strip()
    if not stripped.startswith('"'):
        return text  # as written: a bare name may itself end in a space ("trail ")
    parts = split_qualified(stripped)
    if len(parts) != 1:
        raise ValueError(f"expected one column name, got {text!r}")
    return parts[0]


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(), e.g. "bigint", "character(2)", "timestamp with time zone"
    type_oid: int
    not_null: bool
    default: str | None
    identity: bool
    generated: bool


@dataclasses.dataclass(frozen=True)
class ForeignKey:
    name: str
    table: QualifiedName
    columns: tuple[str, ...]
    ref_table: QualifiedName
    ref_columns: tuple[str, ...]
    validated: bool
    definition: str


@dataclasses.dataclass(frozen=True)
class Constraint:
    """A primary key, unique, check or exclusion constraint (foreign keys: ForeignKey)."""

    name: str
    kind: str  # p | u | c | x
    columns: tuple[str, ...]
    validated: bool
    definition: str
    index_name: str | None


@dataclasses.dataclass(frozen=True)
class Index:
    name: str
    table: QualifiedName
    columns: tuple[str | None, ...]  # None where the key is an expression
    is_unique: bool
    is_primary: bool
    is_valid: bool
    is_ready: bool
    predicate: str | None
    definition: str
    method: str
    scans: int | None  # pg_stat_user_indexes.idx_scan
    size_bytes: int
    parent_index: str | None  # for an index on a partition: the partitioned index's name


@dataclasses.dataclass(frozen=True)
class Trigger:
    name: str
    table: QualifiedName
    function: str
    enabled: str  # O origin, D disabled, R replica, A always
    timing: str  # BEFORE | AFTER | INSTEAD OF
    events: tuple[str, ...]  # INSERT, UPDATE, DELETE, TRUNCATE
    definition: str


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    table: QualifiedName
    permissive: bool
    command: str  # ALL | SELECT | INSERT | UPDATE | DELETE
    roles: tuple[str, ...]  # "public" for PUBLIC
    using: str | None
    with_check: str | None

    @property
    def expressions(self) -> tuple[str, ...]:
        """``USING`` and ``WITH CHECK``, those the policy has."""
        return tuple(e for e in (self.using, self.with_check) if e is not None)


@dataclasses.dataclass(frozen=True)
class Table:
    qname: QualifiedName
    kind: str  # "table" | "partitioned"
    owner: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] | None
    foreign_keys: tuple[ForeignKey, ...]
    constraints: tuple[Constraint, ...]
    indexes: tuple[Index, ...]
    triggers: tuple[Trigger, ...]
    policies: tuple[Policy, ...]
    rls_enabled: bool
    rls_forced: bool
    row_estimate: int
    size_bytes: int
    partition_of: QualifiedName | None
    partition_bound: str | None
    partitions: tuple[QualifiedName, ...]
    replica_identity: str
    publications: tuple[str, ...]
    seq_scans: int | None
    n_dead_tup: int | None
    grantees: tuple[str, ...] = ()  # roles granted a privilege on it (not the owner, not PUBLIC)

    @property
    def is_partition(self) -> bool:
        return self.partition_of is not None

    @property
    def is_partitioned(self) -> bool:
        return self.kind == "partitioned"

    def column(self, name: str) -> Column | None:
        for col in self.columns:
            if col.name == name:
                return col
        return None

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def index(self, name: str) -> Index | None:
        for idx in self.indexes:
            if idx.name == name:
                return idx
        return None

    @property
    def user_triggers(self) -> tuple[Trigger, ...]:
        return self.triggers


@dataclasses.dataclass(frozen=True)
class View:
    qname: QualifiedName
    kind: str  # "view" | "materialized"
    owner: str
    security_invoker: bool
    security_barrier: bool
    definition: str
    depends_on: tuple[QualifiedName, ...]


@dataclasses.dataclass(frozen=True)
class Role:
    name: str
    superuser: bool
    bypassrls: bool
    login: bool
    createrole: bool
    inherit: bool
    member_of: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Function:
    schema: str
    name: str
    signature: str
    owner: str
    language: str
    security_definer: bool
    config: tuple[str, ...]  # proconfig, e.g. ("search_path=pg_catalog",)
    source: str

    @property
    def pinned_search_path(self) -> bool:
        return any(c.startswith("search_path=") for c in self.config)
