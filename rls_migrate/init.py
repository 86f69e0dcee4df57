"""``init``: turn a discovered :class:`~rls_migrate.discover.TenantGraph` into a first,
commented playbook.

Every entry carries a comment saying why it was decided (the evidence, the path, the row
estimate); what discovery could not decide is written as ``strategy: TODO`` with the options
it found, so the playbook fails validation until a person decides. The text always parses
with :func:`rls_migrate.playbook.parse_playbook` (checked before it is returned).

Example::

    graph = discover(catalog, "public.accounts", app_role="app_user")
    text = build_playbook_yaml(graph, catalog, app_role="app_user")
    write_playbook("playbooks/app.yaml", text)
"""

from __future__ import annotations

import os
import re
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.discover import Classification, Kind, TenantGraph
from rls_migrate.errors import PlaybookError, UsageError
from rls_migrate.linkcounts import LinkCount
from rls_migrate.playbook import KEY_TYPES, TODO, Options, parse_playbook

_WIDTH = 100
_PLAIN_KEY = re.compile(r"^[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*$")
_PLAIN_VALUE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")

_SECTIONS: dict[Kind, str] = {
    "root": "the tenant root",
    "direct": "direct: tables that carry the tenant key already",
    "derived": "derive: tables that reach the tenant through foreign keys (parents first)",
    "ambiguous": "TODO: more than one way reaches the tenant: choose one",
    "needs_hint": "TODO: no foreign key reaches the tenant: give a hint, or mark global/skip",
    "global": "global: reference data shared by every tenant (confirm each one)",
}


def build_playbook_yaml(
    graph: TenantGraph,
    catalog: Catalog,
    *,
    app_role: str | None,
    dsn_env: str = "DATABASE_URL",
    column: str = "tenant_id",
    setting: str = "app.tenant_id",
    link_counts: Mapping[QualifiedName, Sequence[LinkCount]] | None = None,
) -> str:
    """The commented playbook YAML for ``graph``.

    ``link_counts`` (:func:`rls_migrate.linkcounts.count_links`) adds, to each table whose
    links may leave rows without a tenant, how many rows that is.

    ``app_role`` is the role the application connects as; without it the only plausible
    login role is guessed, or ``app: TODO`` is written with the candidates in a comment.
    Raises :class:`UsageError` when the result would not be a valid playbook (an
    unsupported key type, a malformed setting or variable name).
    """
    if graph.key_type not in KEY_TYPES:
        raise UsageError(
            f"the tenant key {graph.root}({graph.key}) is {graph.key_type}; supported key "
            f"types: {', '.join(KEY_TYPES)}")
    out = _Writer()
    counted = link_counts or {}
    # A derived table whose only link may be NULL, and is NULL in some rows today: those rows
    # would get no tenant. Not discovery's call (it reads no data): a TODO with the counts.
    empty_links = {q for q, c in graph.tables.items()
                   if c.kind == "derived" and c.parent is not None and c.parent.nullable
                   and any(n.hop == c.parent and (n.without or 0) > 0
                           for n in counted.get(q, ()))}
    _header(out, graph, catalog, len(empty_links))
    out.line("version: 1")
    out.comment("the environment variable that holds the DSN (a playbook never holds one)")
    out.line(f"dsn_env: {_scalar(dsn_env)}")
    schemas = sorted({q.schema for q in graph.tables})
    out.line("schemas: [" + ", ".join(_scalar(s) for s in schemas) + "]")
    out.blank()
    out.line("tenant:")
    out.line(f"  table: {_scalar(str(graph.root))}")
    out.line(f"  key: {_scalar(graph.key)}")
    out.line(f"  key_type: {graph.key_type}")
    out.comment("the column that derived tables get (direct tables keep theirs)", 2)
    out.line(f"  column: {_scalar(column)}")
    out.comment("the per-transaction setting policies read: "
                f"SET LOCAL {setting} = '<tenant {graph.key}>'", 2)
    out.line(f"  setting: {_scalar(setting)}")
    out.blank()
    _roles(out, graph, catalog, app_role)
    out.blank()
    defaults = Options()
    out.comment(f"options: the defaults apply (lock_timeout {defaults.lock_timeout:g}ms with "
                f"{defaults.retries} retries, backfill batches of about "
                f"{defaults.backfill.batch_target:g}ms, {defaults.index.concurrency} index "
                f"build(s) at a time); override them under an options: key")
    out.blank()
    out.line("tables:")
    owned = {f.subject for f in graph.warnings if f.code == "app_role_owns_table"}
    kind: Kind | None = None
    for qname, entry in graph.tables.items():
        if entry.kind != kind:
            if kind is not None:
                out.blank()
            kind = entry.kind
            out.comment(f"---- {_SECTIONS[kind]} ", 2, rule=True)
        _table(out, graph, catalog, entry, column, owned_by_app=str(qname) in owned,
               app_role=app_role, counts=counted.get(qname, ()),
               undecided=qname in empty_links)
    text = out.text()
    try:
        parse_playbook(text, "<generated playbook>")
    except PlaybookError as exc:
        raise UsageError(f"cannot write a valid playbook: {exc.message}") from None
    return text


def write_playbook(path: str | Path, text: str, force: bool = False) -> Path:
    """Write ``text`` to ``path`` (folders included). An existing file is the user's work:
    it is kept unless ``force``, and then replaced atomically."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder: give the playbook's file name, e.g. "
                         f"{path / 'app.yaml'}")
    if path.exists() and not force:
        raise UsageError(
            f"{path} already exists: it may hold decisions you made; pass --force to "
            f"overwrite it, or choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: cannot create {path.parent} "
                         f"({exc.strerror or exc})") from None
    try:
        if not force:
            # "x": never replace a file that appeared since the check above.
            with path.open("x", encoding="utf-8") as handle:
                handle.write(text)
            return path
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except FileExistsError:
        raise UsageError(f"{path} already exists: pass --force to overwrite it") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def guess_app_role(graph: TenantGraph, catalog: Catalog) -> tuple[str | None, list[str]]:
    """The application role when exactly one role fits, and every candidate.

    A candidate can log in, is neither superuser nor ``BYPASSRLS`` (RLS would not apply to
    it), owns none of the classified tables, and is not the role ``init`` connected as
    (usually the owner or a migration role).
    """
    owners = {catalog.tables[q].owner for q in graph.tables}
    candidates = sorted(
        role.name for role in catalog.roles.values()
        if role.login and not role.superuser and not role.bypassrls
        and role.name != catalog.current_user
        and not (catalog.role_memberships(role.name) & owners))
    return (candidates[0] if len(candidates) == 1 else None), candidates


# --------------------------------------------------------------------------- sections


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, text: str) -> None:
        self.lines.append(text)

    def blank(self) -> None:
        if self.lines and self.lines[-1]:
            self.lines.append("")

    def comment(self, text: str, indent: int = 0, *, rule: bool = False,
                hang: int = 0) -> None:
        """``# text`` wrapped at the page width; names may hold newlines: never let one
        end the comment and start YAML."""
        text = _one_line(text)
        prefix = " " * indent + "# "
        if rule:
            self.lines.append((prefix + text).ljust(_WIDTH, "-"))
            return
        wrapped = textwrap.wrap(text, _WIDTH - len(prefix), subsequent_indent=" " * hang,
                                break_long_words=False, break_on_hyphens=False) or [""]
        self.lines.extend((prefix + part).rstrip() for part in wrapped)

    def text(self) -> str:
        while self.lines and not self.lines[-1]:
            self.lines.pop()
        return "\n".join(self.lines) + "\n"


def _header(out: _Writer, graph: TenantGraph, catalog: Catalog, empty_links: int = 0) -> None:
    counts = graph.counts()
    undecided = counts["ambiguous"] + counts["needs_hint"] + empty_links
    out.comment(f"rls-migrate playbook for database {catalog.database} (PostgreSQL "
                f"{catalog.server_version}), written by `rls-migrate init`.")
    out.comment(f"Tenant root {graph.root}, key {graph.key} ({graph.key_type}). "
                f"{len(graph.tables)} tables: {counts['root']} root, {counts['direct']} direct, "
                f"{counts['derived']} derived, {counts['ambiguous']} ambiguous, "
                f"{counts['needs_hint']} needing a hint, {counts['global']} global.")
    out.comment("Each entry says why it was classified so. Next: "
                + (f"decide the {undecided} TODO "
                   f"{'entry' if undecided == 1 else 'entries'}, " if undecided else "")
                + ("confirm the global tables, " if counts["global"] else "")
                + "then run `rls-migrate plan <this file>`.")
    if graph.warnings:
        out.comment("")
        out.comment("Warnings:")
        for finding in graph.warnings:
            out.comment(f"  - {finding.message}", hang=4)
    out.blank()


def _roles(out: _Writer, graph: TenantGraph, catalog: Catalog, app_role: str | None) -> None:
    guess, candidates = guess_app_role(graph, catalog)
    out.line("roles:")
    out.comment("the role the application connects as: RLS applies to it", 2)
    if app_role is not None:
        if app_role not in catalog.roles:
            out.comment(f"{app_role} does not exist in the database yet", 2)
        out.line(f"  app: {_scalar(app_role)}")
    elif guess is not None:
        out.comment("guessed: the only login role that is neither superuser nor BYPASSRLS "
                    "and owns no table; confirm it", 2)
        out.line(f"  app: {_scalar(guess)}")
    else:
        out.comment("could not guess it: "
                    + (f"candidates (login, no superuser, no BYPASSRLS, own no table): "
                       f"{', '.join(candidates)}" if candidates else
                       "no login role is free of superuser, BYPASSRLS and table ownership"),
                    2)
        out.line(f"  app: {TODO}")
    admins = plausible_admins(graph, catalog, app_role or guess)
    out.comment("roles that keep seeing every row (admin tools, reports)"
                + (", e.g. those with privileges on these tables:" if admins else
                   ": no other login role has privileges on these tables yet; e.g.:"), 2)
    out.comment(f"admin: [{', '.join(_scalar(a) for a in admins) or 'reporting_role'}]", 2)


def plausible_admins(graph: TenantGraph, catalog: Catalog, app: str | None) -> list[str]:
    """Login roles, other than the application's and the one init connected as, that have
    been granted privileges on a tenant table (directly or through a role they are a
    member of): the admin tools and reports that may need to keep seeing every row. A
    cluster's unrelated roles (another database's application, monitoring) are left out."""
    granted: set[str] = set()
    for qname, entry in graph.tables.items():
        if entry.is_tenant:
            granted.update(catalog.tables[qname].grantees)
    return sorted(
        role.name for role in catalog.roles.values()
        if role.login and not role.superuser and role.name not in (app, catalog.current_user)
        and catalog.role_memberships(role.name) & granted)


def _table(
    out: _Writer,
    graph: TenantGraph,
    catalog: Catalog,
    entry: Classification,
    column: str,
    *,
    owned_by_app: bool,
    app_role: str | None,
    counts: Sequence[LinkCount] = (),
    undecided: bool = False,
) -> None:
    table = catalog.tables[entry.table]
    kind = entry.kind
    out.comment(entry.evidence, 2, hang=2)
    details: list[str] = []
    if kind == "derived" and len(entry.path) > 1:
        details.append("path: " + ", then ".join(str(hop) for hop in entry.path))
    for number, alt in enumerate(entry.alternatives, start=1):
        via = ", then ".join(str(hop) for hop in alt[1:])
        why = "" if alt[0].evidence in entry.evidence else f" ({alt[0].evidence})"
        details.append(f"option {number}, strategy {alt[0].strategy}: {alt[0]}{why}"
                       + (f", then {via}" if via else ""))
    details.extend(f"rows: {c.text()}" for c in counts)
    details.extend(entry.notes)
    if entry.partitions:
        names = [p.short for p in entry.partitions]
        shown = ", ".join(names[:4]) + (f" ... ({len(names)} in all)" if len(names) > 4 else "")
        details.append(f"partitioned: its partitions follow it ({shown})")
    if kind in ("derived", "ambiguous", "needs_hint") and table.column(column) is not None:
        details.append(f"already has a column {column}: the add-column stage would take it "
                       f"for the tenant column; check its meaning and type")
    if owned_by_app:
        details.append(f"owned by the application role{f' {app_role}' if app_role else ''}: "
                       f"RLS does not apply to it here without force_rls: true")
    details.append(_rows(entry.row_estimate, kind))
    for detail in details:
        out.comment("  " + detail, 2, hang=4)
    out.line(f"  {_key(str(entry.table))}:")
    if kind in ("root", "direct"):
        assert entry.column is not None
        out.line(f"    strategy: {kind}")
        out.line(f"    column: {_scalar(entry.column)}")
    elif kind == "derived" and undecided:
        assert entry.parent is not None
        out.line(f"    strategy: {TODO}")
        out.line("    options:")
        out.line(f"      - {_quoted(str(entry.parent))}")
        note = (f"its only link to the tenant is NULL in some rows "
                f"({'; '.join(c.text() for c in counts)}): strategy derive with parent: "
                f"<the option> (those rows get no tenant from it: nullable / orphans for the "
                f"table), or add the tenant column in the application, or skip")
        out.line(f"    note: {_quoted(note)}")
    elif kind == "derived":
        assert entry.parent is not None
        out.line("    strategy: derive")
        out.line(f"    parent: {_quoted(str(entry.parent))}")
    elif kind == "global":
        out.line("    strategy: global")
    else:
        out.line(f"    strategy: {TODO}")
        if entry.options:
            out.line("    options:")
            for hop in entry.options:
                out.line(f"      - {_quoted(str(hop))}")
        note = _todo_note(entry, graph)
        if counts:
            note += " (" + "; ".join(c.text() for c in counts) + ")"
        out.line(f"    note: {_quoted(note)}")


def _todo_note(entry: Classification, graph: TenantGraph) -> str:
    nullable_todo = entry.kind == "ambiguous" and bool(entry.nullable_links) and all(
        h.nullable or h.reverse for h in entry.options)
    if any(h.reverse for h in entry.options) or nullable_todo:
        owned = ("strategy owned with owner: <an option written with '<-'> (the row that "
                 "points at it gives the tenant, even when this row is written first)")
        derive = ("strategy derive with parent: <an option written with '->'> (rows whose "
                  "link is NULL get no tenant from it)")
        if not any(h.reverse for h in entry.options):
            return f"every link to the tenant may be NULL: {derive}, or add the tenant " \
                   "column in the application, or skip"
        if all(h.reverse for h in entry.options):
            return f"owned one-to-one by the row that points at it: {owned}; or global/skip"
        return f"two ways: {owned}; or {derive}"
    if entry.kind == "ambiguous":
        if all(h.ref_table == graph.root and h.ref_columns == (graph.key,)
               for h in entry.options):
            return ("several columns reference the tenant: use strategy direct with the "
                    "column that holds the row's tenant")
        return ("several shortest paths reach the tenant: use strategy derive with one "
                "option as parent")
    if entry.options and all(h.constraint is not None for h in entry.options):
        return ("it references tables that need a hint: once they are decided, use strategy "
                "derive with one option as parent, or strategy global (shared) or skip")
    if entry.options:
        return ("no foreign key reaches the tenant: use strategy hint with one option as "
                "parent (derive for an option that is a foreign key), or strategy global "
                "(shared) or skip")
    return ("no foreign key reaches the tenant and no column points to a tenant table: add "
            "the tenant column in the application, or use strategy global or skip")


def _rows(estimate: int, kind: Kind) -> str:
    if estimate <= 0:
        return "rows: none estimated (empty, or never analyzed)"
    text = f"rows: ~{estimate:,} (planner estimate)"
    if kind == "derived":
        text += ", each one filled by the backfill in batches"
    return text


# --------------------------------------------------------------------------- YAML scalars


def _one_line(text: str) -> str:
    """Control characters (newlines included) as visible escapes."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _quoted(text: str) -> str:
    """A YAML quoted scalar: single-quoted where it can be (a name's double quotes stay
    as they are, easy to edit by hand: ``'id -> public."Organisation"(id)'``), double-quoted
    with escapes when the text holds control characters."""
    style = "'" if text.isprintable() else '"'
    dumped: str = yaml.safe_dump(text, default_style=style, allow_unicode=True, width=1 << 30)
    return dumped.rstrip("\n").removesuffix("\n...").rstrip("\n")


def _plain_ok(text: str) -> bool:
    # YAML 1.1 reads some bare words as booleans or null (on, yes, no, null): round-trip.
    try:
        return bool(yaml.safe_load(text) == text)
    except yaml.YAMLError:
        return False


def _scalar(text: str) -> str:
    return text if _PLAIN_VALUE.match(text) and _plain_ok(text) else _quoted(text)


def _key(text: str) -> str:
    return text if _PLAIN_KEY.match(text) and _plain_ok(text) else _quoted(text)
