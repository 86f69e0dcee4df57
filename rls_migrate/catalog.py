"""One immutable snapshot of a database, read in a fixed number of catalog queries.

Everything the planner needs (tables, columns, keys, foreign keys, indexes with validity and
usage, constraints, triggers, policies, RLS flags, partitions, views and their options,
roles, functions, publications, sizes, server version and settings) is read here once, so
planning works offline and ``plan`` costs the same dozen queries on 10 tables or 10,000.

Example::

    with psycopg.connect(dsn) as conn:
        cat = Catalog.load(conn)
    issues = cat.table("public.issues")
    [fk.ref_table for fk in issues.foreign_keys]     # [QualifiedName('public', 'projects')]
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from rls_migrate.catalog_types import (
    Column,
    Constraint,
    ForeignKey,
    Function,
    Index,
    Policy,
    QualifiedName,
    Role,
    Table,
    Trigger,
    View,
    parse_column,
    quote_ident,
    split_qualified,
)

# What a snapshot is made of lives in catalog_types; importers keep importing it from here.
__all__ = [
    "Catalog",
    "Column",
    "Constraint",
    "ForeignKey",
    "Function",
    "Index",
    "parse_column",
    "Policy",
    "QualifiedName",
    "quote_ident",
    "Role",
    "SETTINGS",
    "split_qualified",
    "SYSTEM_SCHEMAS",
    "Table",
    "TOOLKIT_SCHEMA",
    "Trigger",
    "View",
]

TOOLKIT_SCHEMA = "rls_migrate"
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
SETTINGS = (
    "server_version",
    "server_version_num",
    "track_functions",
    "shared_preload_libraries",
    "log_min_messages",
    "lock_timeout",
    "statement_timeout",
    "deadlock_timeout",
    "max_replication_slots",
    "wal_level",
    "row_security",
    "default_transaction_read_only",
    "logging_collector",
    "log_destination",
    "log_directory",
)

@dataclasses.dataclass(frozen=True)
class Catalog:
    """The snapshot. Look relations up with :meth:`table` / :meth:`view`."""

    database: str
    current_user: str
    server_version: str
    server_version_num: int
    in_recovery: bool
    settings: Mapping[str, str]
    extensions: Mapping[str, str]
    tables: Mapping[QualifiedName, Table]
    views: Mapping[QualifiedName, View]
    roles: Mapping[str, Role]
    functions: tuple[Function, ...]
    publications: Mapping[str, bool]  # name -> FOR ALL TABLES
    queries_run: int
    usage_pins: Mapping[QualifiedName, Mapping[str, int | None]] = dataclasses.field(
        default_factory=dict)
    """Per table, the index usage (``idx_scan`` by index name) the index stage decided its
    twins from, as the journal recorded it when the stage first ran (see
    :mod:`rls_migrate.stages.index.usage`); empty without a journal."""
    retired_sync: frozenset[QualifiedName] = frozenset()
    """Tables whose sync trigger the index stage retired (``drop_sync:<table>`` done in the
    journal, see :mod:`rls_migrate.stages.sync_retire`): add-column does not create it again."""

    @property
    def major(self) -> int:
        return self.server_version_num // 10000

    def table(self, name: str | QualifiedName) -> Table:
        qname = name if isinstance(name, QualifiedName) else QualifiedName.parse(name)
        try:
            return self.tables[qname]
        except KeyError:
            raise KeyError(f"no table {qname} in the catalog") from None

    def find_table(self, name: str | QualifiedName) -> Table | None:
        try:
            return self.table(name)
        except (KeyError, ValueError):
            return None

    def view(self, name: str | QualifiedName) -> View:
        qname = name if isinstance(name, QualifiedName) else QualifiedName.parse(name)
        return self.views[qname]

    def role(self, name: str) -> Role | None:
        return self.roles.get(name)

    def role_memberships(self, name: str) -> set[str]:
        """Every role ``name`` is a member of, directly or not (itself included)."""
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            role = self.roles.get(current)
            if role:
                todo.extend(role.member_of)
        return seen

    def owned_by(self, role: str) -> list[Table]:
        """Tables whose owner is ``role`` or a role it is a member of (it can act as owner)."""
        roles = self.role_memberships(role)
        return [t for t in self.tables.values() if t.owner in roles]

    @property
    def user_tables(self) -> list[Table]:
        """Tables to plan: ordinary and partitioned parents, not the partitions."""
        return [t for t in self.tables.values() if not t.is_partition]

    def referencing(self, qname: QualifiedName) -> list[ForeignKey]:
        """Foreign keys that point at ``qname``."""
        return [fk for t in self.tables.values() for fk in t.foreign_keys if fk.ref_table == qname]

    def suggest(self, name: str, limit: int = 3) -> list[str]:
        """Table names close to ``name``, for "did you mean" messages."""
        import difflib

        candidates = {str(q): q for q in self.tables} | {q.short: q for q in self.tables}
        return difflib.get_close_matches(name, list(candidates), n=limit, cutoff=0.6)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        conn: psycopg.Connection[Any],
        *,
        schemas: Sequence[str] | None = None,
        include_toolkit_schema: bool = False,
    ) -> Catalog:
        """Read the snapshot with a fixed number of queries (``queries_run``).

        ``schemas`` limits tables and views to those schemas; by default every schema but
        the system ones and (unless asked) the toolkit's own ``rls_migrate``.
        """
        return _Loader(conn, schemas, include_toolkit_schema).load()


class _Loader:
    def __init__(
        self,
        conn: psycopg.Connection[Any],
        schemas: Sequence[str] | None,
        include_toolkit_schema: bool,
    ) -> None:
        self.conn = conn
        self.queries = 0
        excluded = list(SYSTEM_SCHEMAS)
        if not include_toolkit_schema:
            excluded.append(TOOLKIT_SCHEMA)
        self.excluded = excluded
        self.schemas = list(schemas) if schemas else None

    def fetch(self, query: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
        self.queries += 1
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def _schema_params(self) -> list[object]:
        """Parameters of the schema filter: excluded schemas, then the wanted list twice."""
        return [self.excluded, self.schemas, self.schemas]

    def load(self) -> Catalog:
        conn = self.conn
        info = self.fetch(
            "SELECT current_database() AS db, current_user AS usr, pg_is_in_recovery() AS rec,"
            " (SELECT json_object_agg(name, setting) FROM pg_settings WHERE name = ANY(%s))"
            " AS settings, (SELECT count(*) = 2 FROM pg_class c JOIN pg_namespace n"
            "  ON n.oid = c.relnamespace WHERE n.nspname = 'rls_migrate'"
            "  AND c.relname IN ('journal', 'step_state') AND has_schema_privilege(n.oid,"
            "  'USAGE') AND has_table_privilege(c.oid, 'SELECT')) AS journal",
            [list(SETTINGS)],
        )[0]
        extensions = {r["extname"]: r["extversion"] for r in self.fetch(
            "SELECT extname, extversion FROM pg_extension")}
        roles = {
            r["rolname"]: Role(r["rolname"], r["rolsuper"], r["rolbypassrls"], r["rolcanlogin"],
                               r["rolcreaterole"], r["rolinherit"], tuple(r["member_of"]))
            for r in self.fetch(
                "SELECT r.rolname, r.rolsuper, r.rolbypassrls, r.rolcanlogin, r.rolcreaterole,"
                " r.rolinherit, COALESCE(array_agg(g.rolname ORDER BY g.rolname)"
                " FILTER (WHERE g.rolname IS NOT NULL), '{}') AS member_of"
                " FROM pg_roles r LEFT JOIN pg_auth_members m ON m.member = r.oid"
                " LEFT JOIN pg_roles g ON g.oid = m.roleid"
                " WHERE r.rolname NOT LIKE 'pg\\_%%' GROUP BY r.oid, r.rolname, r.rolsuper,"
                " r.rolbypassrls, r.rolcanlogin, r.rolcreaterole, r.rolinherit")
        }
        rels = self.fetch(
            "SELECT c.oid, n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner) AS owner,"
            " c.relrowsecurity, c.relforcerowsecurity, c.reltuples::bigint AS reltuples,"
            " CASE WHEN c.relkind IN ('r','p','m') THEN pg_total_relation_size(c.oid) END AS size,"
            " c.relreplident, c.reloptions, c.relispartition,"
            " pn.nspname AS parent_schema, pc.relname AS parent_name,"
            " pg_get_expr(c.relpartbound, c.oid) AS bound,"
            " CASE WHEN c.relkind IN ('v','m') THEN pg_get_viewdef(c.oid) END AS viewdef,"
            " s.seq_scan, s.n_dead_tup,"
            " ARRAY(SELECT DISTINCT pg_get_userbyid(a.grantee) FROM aclexplode(c.relacl) a"
            "  WHERE a.grantee <> 0 AND a.grantee <> c.relowner ORDER BY 1) AS grantees"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND c.relispartition"
            " LEFT JOIN pg_class pc ON pc.oid = i.inhparent"
            " LEFT JOIN pg_namespace pn ON pn.oid = pc.relnamespace"
            " LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
            " WHERE c.relkind IN ('r','p','v','m') AND"
            " n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_temp%%'"
            " AND n.nspname NOT LIKE 'pg\\_toast%%' AND (%s::text[] IS NULL OR n.nspname = ANY(%s))"
            " ORDER BY n.nspname, c.relname",
            self._schema_params(),
        )
        oids = [r["oid"] for r in rels]
        by_oid = {r["oid"]: QualifiedName(r["nspname"], r["relname"]) for r in rels}

        columns: dict[int, list[Column]] = defaultdict(list)
        for r in self.fetch(
            "SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod) AS type,"
            " a.atttypid, a.attnotnull, pg_get_expr(d.adbin, d.adrelid) AS def,"
            " a.attidentity <> '' AS ident, a.attgenerated <> '' AS gen"
            " FROM pg_attribute a LEFT JOIN pg_attrdef d"
            "  ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
            " WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped"
            " ORDER BY a.attrelid, a.attnum",
            [oids],
        ):
            columns[r["attrelid"]].append(Column(
                r["attname"], r["type"], r["atttypid"], r["attnotnull"], r["def"], r["ident"],
                r["gen"]))

        fks: dict[int, list[ForeignKey]] = defaultdict(list)
        constraints: dict[int, list[Constraint]] = defaultdict(list)
        pkeys: dict[int, tuple[str, ...]] = {}
        for r in self.fetch(
            "SELECT con.conrelid, con.conname, con.contype, con.convalidated,"
            " pg_get_constraintdef(con.oid) AS def, con.confrelid,"
            " rn.nspname AS ref_schema, rc.relname AS ref_name, ic.relname AS index_name,"
            " ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o)"
            "  JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n"
            "  ORDER BY k.o) AS cols,"
            " ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o)"
            "  JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n"
            "  ORDER BY k.o) AS refcols"
            " FROM pg_constraint con"
            " LEFT JOIN pg_class rc ON rc.oid = con.confrelid"
            " LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace"
            " LEFT JOIN pg_class ic ON ic.oid = con.conindid AND con.contype IN ('p','u','x')"
            " WHERE con.conrelid = ANY(%s) AND con.contype IN ('p','u','f','c','x')"
            " ORDER BY con.conrelid, con.conname",
            [oids],
        ):
            rel = r["conrelid"]
            if r["contype"] == "f":
                fks[rel].append(ForeignKey(
                    r["conname"], by_oid[rel], tuple(r["cols"]),
                    QualifiedName(r["ref_schema"], r["ref_name"]), tuple(r["refcols"]),
                    r["convalidated"], r["def"]))
            else:
                constraints[rel].append(Constraint(
                    r["conname"], r["contype"], tuple(r["cols"]), r["convalidated"], r["def"],
                    r["index_name"]))
                if r["contype"] == "p":
                    pkeys[rel] = tuple(r["cols"])

        indexes: dict[int, list[Index]] = defaultdict(list)
        for r in self.fetch(
            "SELECT x.indrelid, ic.relname, x.indisunique, x.indisprimary, x.indisvalid,"
            " x.indisready, pg_get_expr(x.indpred, x.indrelid) AS pred,"
            " pg_get_indexdef(x.indexrelid) AS def, am.amname, s.idx_scan,"
            " pg_relation_size(x.indexrelid) AS size, pic.relname AS parent_index,"
            " ARRAY(SELECT a.attname FROM unnest(x.indkey::int2[]) WITH ORDINALITY k(n, o)"
            "  LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n"
            "  WHERE k.o <= x.indnkeyatts ORDER BY k.o) AS cols"
            " FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid"
            " JOIN pg_am am ON am.oid = ic.relam"
            " LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = x.indexrelid"
            " LEFT JOIN pg_inherits ii ON ii.inhrelid = x.indexrelid"
            " LEFT JOIN pg_class pic ON pic.oid = ii.inhparent"
            " WHERE x.indrelid = ANY(%s) ORDER BY x.indrelid, ic.relname",
            [oids],
        ):
            indexes[r["indrelid"]].append(Index(
                r["relname"], by_oid[r["indrelid"]], tuple(r["cols"]), r["indisunique"],
                r["indisprimary"], r["indisvalid"], r["indisready"], r["pred"], r["def"],
                r["amname"], r["idx_scan"], r["size"] or 0, r["parent_index"]))

        triggers: dict[int, list[Trigger]] = defaultdict(list)
        for r in self.fetch(
            "SELECT t.tgrelid, t.tgname, p.proname, pn.nspname AS fschema, t.tgenabled,"
            " t.tgtype, pg_get_triggerdef(t.oid) AS def"
            " FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
            " JOIN pg_namespace pn ON pn.oid = p.pronamespace"
            " WHERE t.tgrelid = ANY(%s) AND NOT t.tgisinternal ORDER BY t.tgrelid, t.tgname",
            [oids],
        ):
            tgtype = int(r["tgtype"])
            timing = "INSTEAD OF" if tgtype & 64 else ("BEFORE" if tgtype & 2 else "AFTER")
            events = tuple(name for bit, name in ((4, "INSERT"), (8, "DELETE"), (16, "UPDATE"),
                                                   (32, "TRUNCATE")) if tgtype & bit)
            triggers[r["tgrelid"]].append(Trigger(
                r["tgname"], by_oid[r["tgrelid"]], f"{r['fschema']}.{r['proname']}",
                r["tgenabled"], timing, events, r["def"]))

        policies: dict[int, list[Policy]] = defaultdict(list)
        commands = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}
        for r in self.fetch(
            "SELECT p.polrelid, p.polname, p.polpermissive, p.polcmd,"
            " ARRAY(SELECT CASE WHEN rid = 0 THEN 'public' ELSE pg_get_userbyid(rid) END"
            "  FROM unnest(p.polroles) rid) AS roles,"
            " pg_get_expr(p.polqual, p.polrelid) AS using_expr,"
            " pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr"
            " FROM pg_policy p WHERE p.polrelid = ANY(%s) ORDER BY p.polrelid, p.polname",
            [oids],
        ):
            policies[r["polrelid"]].append(Policy(
                r["polname"], by_oid[r["polrelid"]], r["polpermissive"], commands[r["polcmd"]],
                tuple(r["roles"]), r["using_expr"], r["check_expr"]))

        view_deps: dict[int, set[QualifiedName]] = defaultdict(set)
        for r in self.fetch(
            "SELECT DISTINCT rw.ev_class, d.refobjid FROM pg_rewrite rw"
            " JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid"
            "  AND d.refclassid = 'pg_class'::regclass"
            " WHERE rw.ev_class = ANY(%s) AND d.refobjid <> rw.ev_class",
            [oids],
        ):
            if r["refobjid"] in by_oid:
                view_deps[r["ev_class"]].add(by_oid[r["refobjid"]])

        pubs: dict[int, list[str]] = defaultdict(list)
        publications: dict[str, bool] = {}
        for r in self.fetch(
            "SELECT p.pubname, p.puballtables, c.oid AS relid FROM pg_publication p"
            " LEFT JOIN pg_publication_tables pt ON pt.pubname = p.pubname"
            " LEFT JOIN pg_namespace n ON n.nspname = pt.schemaname"
            " LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename"
        ):
            publications[r["pubname"]] = r["puballtables"]
            if r["relid"] is not None:
                pubs[r["relid"]].append(r["pubname"])

        functions = tuple(
            Function(r["nspname"], r["proname"], r["sig"], r["owner"], r["lanname"],
                     r["prosecdef"], tuple(r["proconfig"] or ()), r["prosrc"] or "")
            for r in self.fetch(
                "SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid) AS sig,"
                " pg_get_userbyid(p.proowner) AS owner, l.lanname, p.prosecdef, p.proconfig,"
                " p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " JOIN pg_language l ON l.oid = p.prolang"
                " WHERE p.prokind = 'f' AND"
                " n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_temp%%'"
                " AND n.nspname NOT LIKE 'pg\\_toast%%' AND (%s::text[] IS NULL OR n.nspname = ANY(%s))"
                " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass"
                "  AND d.objid = p.oid AND d.deptype = 'e') ORDER BY 1, 2",
                self._schema_params(),
            )
        )

        partitions: dict[QualifiedName, list[QualifiedName]] = defaultdict(list)
        for r in rels:
            if r["parent_name"]:
                partitions[QualifiedName(r["parent_schema"], r["parent_name"])].append(
                    by_oid[r["oid"]])

        tables: dict[QualifiedName, Table] = {}
        views: dict[QualifiedName, View] = {}
        for r in rels:
            qname = by_oid[r["oid"]]
            options = _reloptions(r["reloptions"])
            if r["relkind"] in ("v", "m"):
                views[qname] = View(
                    qname, "view" if r["relkind"] == "v" else "materialized", r["owner"],
                    _bool_option(options.get("security_invoker")),
                    _bool_option(options.get("security_barrier")),
                    r["viewdef"] or "", tuple(sorted(view_deps.get(r["oid"], ()))))
                continue
            oid = r["oid"]
            parent = (QualifiedName(r["parent_schema"], r["parent_name"])
                      if r["parent_name"] else None)
            tables[qname] = Table(
                qname=qname,
                kind="partitioned" if r["relkind"] == "p" else "table",
                owner=r["owner"],
                columns=tuple(columns.get(oid, ())),
                primary_key=pkeys.get(oid),
                foreign_keys=tuple(fks.get(oid, ())),
                constraints=tuple(constraints.get(oid, ())),
                indexes=tuple(indexes.get(oid, ())),
                triggers=tuple(triggers.get(oid, ())),
                policies=tuple(policies.get(oid, ())),
                rls_enabled=r["relrowsecurity"],
                rls_forced=r["relforcerowsecurity"],
                row_estimate=max(int(r["reltuples"] or 0), 0),
                size_bytes=int(r["size"] or 0),
                partition_of=parent,
                partition_bound=r["bound"],
                partitions=tuple(partitions.get(qname, ())),
                replica_identity={"d": "default", "n": "nothing", "f": "full",
                                  "i": "index"}[r["relreplident"]],
                publications=tuple(sorted(set(pubs.get(oid, ())))),
                seq_scans=r["seq_scan"],
                n_dead_tup=r["n_dead_tup"],
                grantees=tuple(r["grantees"] or ()),
            )
        # A partitioned parent stores nothing: its size is the sum of its partitions' (also
        # once ANALYZE gave it an estimate of its own), and so is its estimate until then.
        def totals(table: Table) -> tuple[int, int]:
            if not table.is_partitioned:
                return table.row_estimate, table.size_bytes
            parts = [totals(tables[p]) for p in table.partitions if p in tables]
            return sum(rows for rows, _ in parts), sum(size for _, size in parts)

        for qname, table in list(tables.items()):
            if table.is_partitioned:
                rows, size = totals(table)
                tables[qname] = dataclasses.replace(
                    table, row_estimate=table.row_estimate or rows, size_bytes=size)
        settings = dict(info["settings"] or {})
        usage_pins = self._usage_pins() if info["journal"] else {}
        retired_sync = frozenset(
            QualifiedName.parse(r["table_name"]) for r in self.fetch(
                "SELECT table_name FROM rls_migrate.step_state WHERE step_id LIKE 'drop_sync:%%'"
                " AND status = 'done' AND table_name IS NOT NULL")) if info["journal"] \
            else frozenset()
        del conn
        return Catalog(
            database=info["db"],
            current_user=info["usr"],
            server_version=settings.get("server_version", ""),
            server_version_num=int(settings.get("server_version_num", "0")),
            in_recovery=info["rec"],
            settings=settings,
            extensions=extensions,
            tables=tables,
            views=views,
            roles=roles,
            functions=functions,
            publications=publications,
            queries_run=self.queries,
            usage_pins=usage_pins,
            retired_sync=retired_sync,
        )

    def _usage_pins(self) -> dict[QualifiedName, Mapping[str, int | None]]:
        """The latest ``pin_index_usage`` outcome of each table whose step is done."""
        pins: dict[QualifiedName, Mapping[str, int | None]] = {}
        for r in self.fetch(
            "SELECT DISTINCT ON (j.step_id) j.table_name, j.details -> 'usage' AS usage"
            " FROM rls_migrate.journal j JOIN rls_migrate.step_state s"
            " ON s.step_id = j.step_id AND s.status = 'done'"
            " WHERE j.step_id LIKE 'pin_index_usage:%%' AND j.outcome = 'done'"
            " AND j.table_name IS NOT NULL ORDER BY j.step_id, j.id DESC"):
            if isinstance(r["usage"], dict):
                pins[QualifiedName.parse(r["table_name"])] = {
                    str(k): None if v is None else int(v) for k, v in r["usage"].items()}
        return pins


def _reloptions(options: Iterable[str] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for opt in options or ():
        key, _, value = opt.partition("=")
        result[key] = value.lower()
    return result


def _bool_option(value: str | None) -> bool:
    """A boolean reloption as PostgreSQL's ``parse_bool`` reads it: stored as written, so
    ``security_invoker = yes`` is ``yes`` (and ``tr``, ``y``, ``on``, ``1`` are true too)."""
    if not value:
        return False
    return "true".startswith(value) or "yes".startswith(value) or value in ("on", "1")
