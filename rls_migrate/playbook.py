"""The playbook: the user-owned YAML file that says what the migration does.

It is validated twice: its shape with pydantic (errors name the file, the line, the key path
and what was expected), then against the live catalog (unknown tables and columns get a
"did you mean"). Decisions that ``init`` could not make are written as ``TODO`` and fail
validation with the list of what to decide.

Example::

    version: 1
    tenant:
      table: public.accounts
      key: id
      key_type: bigint
      column: tenant_id
      setting: app.tenant_id
    roles:
      app: app_user
    tables:
      public.users:    {strategy: direct, column: account_id}
      public.issues:   {strategy: derive, parent: "project_id -> public.projects(id)"}
      public.audit_log: {strategy: derive, parent: "issue_id -> public.issues(id)",
                         orphans: skip, nullable: true}
      public."DocumentMeta": {strategy: owned, owner: 'id <- public."Envelope"("documentMetaId")'}
      public.countries: {strategy: global}
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from rls_migrate.catalog import (
    QualifiedName,
    parse_column,
    quote_ident,
    split_qualified,
)
from rls_migrate.errors import PlaybookError
from rls_migrate.playbook_options import (
    BackfillOptions,
    EnforceOptions,
    IndexOptions,
    ObserveOptions,
    Options,
    Strict,
    parse_duration_ms,
)

# The options live in playbook_options; importers keep importing them from here too.
__all__ = [
    "KEY_TYPES",
    "TODO",
    "BackfillOptions",
    "EnforceOptions",
    "IndexOptions",
    "ObserveOptions",
    "Options",
    "ParentRef",
    "Playbook",
    "Roles",
    "Strict",
    "TablePlan",
    "Tenant",
    "dump_playbook",
    "load_playbook",
    "parse_duration_ms",
    "parse_playbook",
]

TODO = "TODO"
KEY_TYPES = ("bigint", "integer", "smallint", "uuid", "text")
_SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class ParentRef(Strict):
    """``child_columns -> schema.table(ref_columns)``: how a row finds its tenant."""

    columns: tuple[str, ...]
    table: str
    ref_columns: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> ParentRef:
        # DOTALL: a quoted identifier may hold a newline, and must not end the match early.
        match = re.match(r"^\s*(.+?)\s*->\s*(.+?)\s*\(\s*(.+?)\s*\)\s*$", text, re.DOTALL)
        if not match:
            raise ValueError(
                f"expected 'column -> schema.table(column)', e.g. "
                f"'project_id -> public.projects(id)', got {text!r}"
            )
        cols = tuple(_split_columns(match.group(1)))
        refs = tuple(_split_columns(match.group(3)))
        if len(cols) != len(refs):
            raise ValueError(f"{len(cols)} column(s) on the left but {len(refs)} on the right")
        QualifiedName.parse(match.group(2))
        return cls(columns=cols, table=match.group(2), ref_columns=refs)

    @model_validator(mode="after")
    def _columns_pair_up(self) -> ParentRef:
        # Written as a mapping, the pairing is not checked by parse(): check it here.
        if not self.columns:
            raise ValueError("'columns' is empty: name the child column(s) of the foreign key")
        if len(self.columns) != len(self.ref_columns):
            raise ValueError(f"{len(self.columns)} column(s) in 'columns' but "
                             f"{len(self.ref_columns)} in 'ref_columns': they pair up one to one")
        return self

    @property
    def qname(self) -> QualifiedName:
        return QualifiedName.parse(self.table)

    def __str__(self) -> str:
        left = ", ".join(quote_ident(c) for c in self.columns)
        right = ", ".join(quote_ident(c) for c in self.ref_columns)
        return f"{left} -> {self.qname}({right})"

    @classmethod
    def parse_owner(cls, text: str) -> ParentRef:
        """``id <- public."Envelope"("documentMetaId")``: this table's column(s), pointed at
        by the owner's column(s). Returned as the link the sync trigger and the backfill
        follow: ``columns`` on this table, ``table`` the owner, ``ref_columns`` the owner's."""
        match = re.match(r"^\s*(.+?)\s*<-\s*(.+?)\s*\(\s*(.+?)\s*\)\s*$", text, re.DOTALL)
        if not match:
            raise ValueError(
                f"expected 'column <- schema.owner_table(column)', e.g. "
                f"'id <- public.\"Envelope\"(\"documentMetaId\")' (this table's id, pointed "
                f"at by Envelope.documentMetaId), got {text!r}")
        cols = tuple(_split_columns(match.group(1)))
        refs = tuple(_split_columns(match.group(3)))
        if len(cols) != len(refs):
            raise ValueError(f"{len(cols)} column(s) on the left but {len(refs)} on the right")
        QualifiedName.parse(match.group(2))
        return cls(columns=cols, table=match.group(2), ref_columns=refs)

    def owner_text(self) -> str:
        left = ", ".join(quote_ident(c) for c in self.columns)
        right = ", ".join(quote_ident(c) for c in self.ref_columns)
        return f"{left} <- {self.qname}({right})"


def _split_columns(text: str) -> list[str]:
    out = []
    for part in _split_outside_quotes(text, ","):
        names = split_qualified(part.strip())
        if len(names) != 1:
            raise ValueError(f"expected a column name, got {part.strip()!r}")
        out.append(names[0])
    return out


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def _column_name(value: Any) -> Any:
    """A column as SQL writes it: ``'"accountId"'`` is the column accountId; a bare name is
    taken as written (so playbooks written before quoting was accepted load unchanged)."""
    return parse_column(value) if isinstance(value, str) else value


class TablePlan(Strict):
    """What to do with one table."""

    strategy: Literal["root", "direct", "derive", "hint", "owned", "global", "skip", "TODO"]
    column: str | None = Field(
        default=None, description="direct/root: the existing column that holds the tenant key"
    )
    parent: ParentRef | None = Field(
        default=None, description="derive/hint: the parent row that gives the tenant"
    )
    owner: ParentRef | None = Field(
        default=None,
        description="owned: the row that owns this one points at it (a reverse one-to-one), "
                    "'id <- public.\"Envelope\"(\"documentMetaId\")'")
    orphans: Literal["stop", "skip"] | None = Field(
        default=None, description="rows without a parent carrying a tenant: stop the "
                                  "backfill, or skip them (default: options.backfill.orphans)")
    nullable: bool | None = Field(
        default=None, description="true: constrain keeps the tenant column nullable (rows "
                                  "without a tenant: invisible to tenants, seen by admin roles)")
    options: tuple[str, ...] = Field(default=(), description="alternatives init found (TODO)")
    tenant_unique: tuple[tuple[str, ...], ...] = Field(
        default=(), description="unique constraints to make tenant-scoped (index stage)"
    )
    extra_indexes: tuple[tuple[str, ...], ...] = Field(
        default=(), description="extra tenant-leading indexes: column lists after the tenant"
    )
    skip_indexes: tuple[str, ...] = Field(
        default=(), description="existing indexes not to twin with a tenant-leading copy"
    )
    drop_replaced_indexes: bool = False
    force_rls: bool | None = None
    note: str | None = None

    @field_validator("column", mode="before")
    @classmethod
    def _column_name(cls, value: Any) -> Any:
        return _column_name(value)

    @field_validator("parent", mode="before")
    @classmethod
    def _parse_parent(cls, value: Any) -> Any:
        if isinstance(value, str):
            return ParentRef.parse(value)
        return value

    @field_validator("owner", mode="before")
    @classmethod
    def _parse_owner(cls, value: Any) -> Any:
        if isinstance(value, str):
            return ParentRef.parse_owner(value)
        return value

    @field_validator("tenant_unique", "extra_indexes", mode="before")
    @classmethod
    def _column_lists(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(tuple(_split_columns(v)) if isinstance(v, str) else tuple(v)
                         for v in value)
        return value

    @model_validator(mode="after")
    def _fields_match_strategy(self) -> TablePlan:
        if self.strategy in ("derive", "hint") and self.parent is None:
            raise ValueError(f"strategy {self.strategy} needs 'parent: column -> table(column)'")
        if self.strategy in ("direct", "root") and not self.column:
            raise ValueError(f"strategy {self.strategy} needs 'column' (the tenant key column)")
        if self.strategy not in ("derive", "hint") and self.parent is not None:
            raise ValueError(f"'parent' only goes with strategy derive or hint, not {self.strategy}"
                             + ("; an owned table names its 'owner'" if self.strategy == "owned"
                                else ""))
        if self.strategy == "owned" and self.owner is None:
            raise ValueError("strategy owned needs 'owner: column <- owner_table(column)', e.g. "
                             "'id <- public.\"Envelope\"(\"documentMetaId\")'")
        if self.strategy != "owned" and self.owner is not None:
            raise ValueError(f"'owner' only goes with strategy owned, not {self.strategy}")
        if self.strategy not in ("derive", "hint", "owned", "direct") and (
                self.orphans is not None or self.nullable is not None):
            key = "orphans" if self.orphans is not None else "nullable"
            raise ValueError(f"'{key}' only goes with strategy direct, derive, hint or owned, "
                             f"not {self.strategy}")
        if self.strategy == "direct" and self.orphans is not None:
            raise ValueError("'orphans' only goes with strategy derive, hint or owned (a direct "
                             "table carries its key: its NULL keys are kept with nullable: true)")
        return self

    @property
    def link(self) -> ParentRef | None:
        """Where the row finds the row that gives its tenant: ``parent`` (derive, hint), or
        ``owner`` (owned; ``columns`` are this table's, ``ref_columns`` the owner's)."""
        return self.owner if self.strategy == "owned" else self.parent


class Tenant(Strict):
    table: str = Field(description="the tenant root table, e.g. public.accounts")
    key: str = Field(default="id", description="the root's key column")
    key_type: Literal["bigint", "integer", "smallint", "uuid", "text"] = "bigint"
    column: str = Field(default="tenant_id", description="the column added to derived tables")
    setting: str = Field(default="app.tenant_id", description="the per-transaction setting")

    @field_validator("key", "column", mode="before")
    @classmethod
    def _column_names(cls, value: Any) -> Any:
        return _column_name(value)

    @field_validator("setting")
    @classmethod
    def _setting(cls, value: str) -> str:
        if not _SETTING.match(value):
            raise ValueError(
                f"expected a custom setting name with a dot, like app.tenant_id, got {value!r}")
        return value

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        QualifiedName.parse(value)
        return value

    @property
    def qname(self) -> QualifiedName:
        return QualifiedName.parse(self.table)


class Roles(Strict):
    app: str = Field(description="the role the application connects as (RLS applies to it)")
    owner: str | None = Field(default=None, description="the tables' owner; default: as found")
    admin: tuple[str, ...] = Field(default=(), description="roles that keep seeing every row")
    admin_mode: Literal["policy", "bypassrls"] = "policy"
    migration_bypassrls: bool = Field(
        default=False, description="the toolkit's own role has BYPASSRLS (data stages after FORCE)"
    )

    @field_validator("admin", mode="before")
    @classmethod
    def _admins(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value


class Playbook(Strict):
    version: Literal[1] = 1
    dsn_env: str = Field(default="DATABASE_URL", description="environment variable with the DSN")
    schemas: tuple[str, ...] = Field(default=("public",), description="schemas to migrate")
    tenant: Tenant
    roles: Roles
    options: Options = Options()
    tables: dict[str, TablePlan]

    @field_validator("dsn_env")
    @classmethod
    def _dsn_env(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
            # Never echo what looks like a DSN: it may hold a password, and this message
            # ends up in terminals and CI logs.
            got = ("what looks like a connection string (not shown: it may hold a password)"
                   if "://" in value or "=" in value or "@" in value else repr(value))
            raise ValueError(
                f"expected the NAME of an environment variable (never a DSN), got {got}")
        return value

    @field_validator("tables")
    @classmethod
    def _table_names(cls, value: dict[str, TablePlan]) -> dict[str, TablePlan]:
        for name in value:
            QualifiedName.parse(name)
        return value

    _by_name: tuple[dict[str, TablePlan], dict[QualifiedName, TablePlan]] | None = PrivateAttr(
        default=None)

    def _plans(self) -> dict[QualifiedName, TablePlan]:
        # Parsed once: planners look tables up thousands of times on big schemas. Keyed by
        # the tables mapping itself, because model_copy(update={"tables": ...}) copies the
        # private cache along with the model.
        # Read from pydantic's private dict directly: ``self._by_name`` goes through
        # BaseModel.__getattr__, a tenth of planning's time at 1,000 tables.
        private = self.__pydantic_private__
        cached = private.get("_by_name") if private is not None else None
        if cached is None or cached[0] is not self.tables:
            cached = self._by_name = (
                self.tables, {QualifiedName.parse(n): p for n, p in self.tables.items()})
        return cached[1]

    def table_plans(self) -> Iterator[tuple[QualifiedName, TablePlan]]:
        yield from self._plans().items()

    def plan_for(self, qname: QualifiedName) -> TablePlan | None:
        return self._plans().get(qname)

    def tenant_column(self, qname: QualifiedName) -> str | None:
        """The column that holds the tenant key on ``qname`` after the migration."""
        plan = self.plan_for(qname)
        if plan is None or plan.strategy in ("global", "skip", TODO):
            return None
        if plan.strategy in ("direct", "root"):
            return plan.column
        return self.tenant.column

    def orphans_for(self, qname: QualifiedName) -> str:
        """``stop`` or ``skip``: the table's own ``orphans:``, else options.backfill.orphans."""
        plan = self.plan_for(qname)
        if plan is not None and plan.orphans is not None:
            return plan.orphans
        return self.options.backfill.orphans

    def keeps_nullable(self, qname: QualifiedName) -> bool:
        """Whether constrain leaves the tenant column of ``qname`` nullable: the table's
        ``nullable:``; unset, a hint table whose orphans are skipped (no foreign key
        guarantees it a parent) stays nullable, everything else gets NOT NULL."""
        plan = self.plan_for(qname)
        if plan is None:
            return False
        if plan.nullable is not None:
            return plan.nullable
        return plan.strategy == "hint" and self.orphans_for(qname) == "skip"

    @property
    def todos(self) -> list[str]:
        return [f"{name}: {plan.note or 'decide a strategy'}"
                + (f" (options: {'; '.join(plan.options)})" if plan.options else "")
                for name, plan in self.tables.items() if plan.strategy == TODO]


# ---------------------------------------------------------------------- loading


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    lines: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise PlaybookError(
                f"line {key_node.start_mark.line + 1}: key {key!r} appears twice")
        mapping[key] = loader.construct_object(value_node, deep=True)
        lines[key] = key_node.start_mark.line + 1
    return _Lined(mapping, lines)


class _Lined(dict[Any, Any]):
    """A dict that knows the line of each key."""

    def __init__(self, data: Mapping[Any, Any], lines: Mapping[Any, int]) -> None:
        super().__init__(data)
        self.lines = dict(lines)


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


class _FastLineLoader(getattr(yaml, "CSafeLoader", _LineLoader)):  # type: ignore[misc]
    """libyaml's parser with the same line-remembering constructor: a big playbook parses
    several times faster. Its error texts differ, so errors are re-read with _LineLoader."""


_FastLineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _line_of(data: Any, loc: tuple[int | str, ...]) -> int | None:
    line = None
    node = data
    for part in loc:
        if isinstance(node, _Lined) and part in node:
            line = node.lines.get(part, line)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            break
    return line


def _plain(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data


def load_playbook(path: str | Path) -> Playbook:
    """Read and validate a playbook file's shape; raises :class:`PlaybookError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlaybookError(f"{path}: cannot read the playbook: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise PlaybookError(f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                            f"at offset {exc.start}): save the playbook as UTF-8") from None
    return parse_playbook(text, str(path))


def parse_playbook(text: str, source: str = "<playbook>") -> Playbook:
    try:
        try:
            data = yaml.load(text, Loader=_FastLineLoader)
        except yaml.YAMLError:
            data = yaml.load(text, Loader=_LineLoader)  # the precise message and line  # a SafeLoader subclass
    except PlaybookError as exc:
        raise PlaybookError(f"{source}: {exc.message}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        # An unclosed [ or { is noticed lines later: say where it was opened.
        context, opened = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and opened is not None and (mark is None or opened.line != mark.line):
            problem += f" ({context} that starts at line {opened.line + 1})"
        raise PlaybookError(f"{source}{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise PlaybookError(
            f"{source}: expected a mapping with tenant, roles and tables at the top, "
            f"got {type(data).__name__}")
    try:
        return Playbook.model_validate(_plain(data))
    except ValidationError as exc:
        raise PlaybookError(_format_validation(exc, data, source)) from None


def _format_validation(exc: ValidationError, data: Any, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        # pydantic appends the tagged/function name for some validators; drop non-keys
        keys = tuple(p for p in loc if not (isinstance(p, str) and "[" in p))
        line = _line_of(data, keys)
        where = f"{source}:{line}" if line else source
        path = ".".join(str(p) for p in keys) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(keys[:-1])
            msg = "unknown key" + (f" (expected one of: {', '.join(allowed)})" if allowed else "")
        elif err["type"] == "missing":
            msg = "required key is missing"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"{where}: {path}: {msg}")
    return "invalid playbook:\n  " + "\n  ".join(lines) if len(lines) > 1 else lines[0]


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model accepts at ``loc`` (for "unknown key" messages)."""
    import typing

    model: Any = Playbook
    parts = iter(loc)
    for part in parts:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        if typing.get_origin(annotation) is dict:
            # The next part is the dict's key (a table name), not a field.
            model = typing.get_args(annotation)[1]
            if next(parts, None) is None:
                return []
            continue
        model = annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def dump_playbook(playbook: Playbook) -> str:
    """Plain YAML of a playbook (``init`` writes its own commented version)."""
    return yaml.safe_dump(playbook.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
