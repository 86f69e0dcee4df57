"""The live probe: the application role tries to cross tenants, and must fail every time.

Per tenant table (and per partition, queried directly), in one transaction that is always
rolled back, as the application role (``SET LOCAL ROLE`` on the verifier's connection, or a
connection of the application's own):

1. with tenant **B**'s context, read a few of B's rows (their keys, and one whole row);
2. with tenant **A**'s context: read B's rows by key and any row that is not A's
   (``probe-read``), update them (``probe-update``), delete them (``probe-delete``), insert a
   copy of B's row (``probe-insert``), and move one of A's rows into B (``probe-move``);
3. with no context (the setting set to ``''``, as a pooled connection has it after a
   transaction that set it): read anything, insert B's row (``probe-no-context``).

Each attempt runs in a savepoint; writes must touch no row or be refused by row-level
security (a write refused by privileges counts as refused, and says so). A write that fails
*after* RLS let it through (a duplicate key, a foreign key) is a failure: RLS did not stop
it, and the error itself tells A about B's rows. Views whose every table is a tenant table
must read empty with no context (``probe-view-no-context``).

Tenants A and B are picked per table from its rows, by the verifier's own connection. That
connection must read the table unfiltered (superuser, BYPASSRLS, or owner without FORCE):
``row_security_active()`` says whether it does, and when it does not, the probe says so
instead of probing an empty picture (``probe-setup``); give the tenants explicitly then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.types.json import Jsonb

from rls_migrate.catalog import QualifiedName, Table
from rls_migrate.sqlcompose import compose, for_params
from rls_migrate.stages.common import regclass_text
from rls_migrate.verify.model import Finding, Rule

Conn = psycopg.Connection[Any]
SAMPLE_ROWS = 3


def _rule(code: str, column: str | None, summary: str, doc: str) -> Rule:
    return Rule(code, "error", summary, doc, column=column)


READ = _rule("probe-read", "read", "tenant A reads tenant B's rows (or rows of no tenant)",
             "Problem: with tenant A's context, the application role reads rows of another "
             "tenant (by key, or any row whose tenant column is not A).\n\nSolution: the "
             "table's tenant policy is missing, not enforced, or bypassed (owner without "
             "FORCE, BYPASSRLS): see the structural checks for the same table.")
UPDATE = _rule("probe-update", "update", "tenant A updates tenant B's rows",
               "Problem: with tenant A's context, an UPDATE of tenant B's rows by key touched "
               "rows.\n\nSolution: as for probe-read; the USING expression decides which rows "
               "an UPDATE can reach.")
DELETE = _rule("probe-delete", "delete", "tenant A deletes tenant B's rows",
               "Problem: with tenant A's context, a DELETE of tenant B's rows by key touched "
               "rows (or failed on a foreign key, which means it reached them).\n\nSolution: "
               "as for probe-read.")
INSERT = _rule("probe-insert", "insert", "tenant A inserts a row into tenant B",
               "Problem: with tenant A's context, inserting a copy of a tenant B row was not "
               "refused by row-level security: it succeeded, or failed later (a duplicate "
               "key: an error that itself reveals B's row).\n\nSolution: the tenant policy "
               "needs WITH CHECK (tenant_col = <current tenant>): apply --stage enforce.")
MOVE = _rule("probe-move", "move", "tenant A moves its row into tenant B",
             "Problem: with tenant A's context, an UPDATE that sets the tenant column of one "
             "of A's rows to B was not refused.\n\nSolution: WITH CHECK on the tenant policy, "
             "as for probe-insert.")
NO_CONTEXT = _rule("probe-no-context", "no-ctx", "with no tenant context, rows are visible "
                   "or writable",
                   "Problem: with the tenant setting empty (a code path that forgot to set "
                   "it, or a pooled connection after a transaction that did), the "
                   "application role reads rows or inserts one.\n\nSolution: policies must "
                   "read the setting as NULLIF(current_setting('app.tenant_id', true), '') so "
                   "a missing context matches nothing; see missing-context-admits-all.")
VIEW = _rule("probe-view-no-context", None, "a view over tenant tables returns rows with no "
             "tenant context",
             "Problem: as the application role with no context, a view over tenant tables "
             "returns rows: it reads its tables with its owner's rights.\n\nSolution: "
             "ALTER VIEW v SET (security_invoker = true) (PostgreSQL 15+; before 15, give "
             "the view an owner that RLS applies to); see view-bypasses-rls.")
SETUP = _rule("probe-setup", None, "the probe could not run",
              "Problem: the probe could not act as the application role (the verifier "
              "cannot SET ROLE to it), or could not pick two tenants for a table because the "
              "verifier's own reads are filtered by RLS (FORCE ROW LEVEL SECURITY on a table "
              "it owns, without BYPASSRLS): it reports that rather than probing an empty "
              "picture.\n\nSolution: run verify as a superuser or a role with BYPASSRLS, pass "
              "--app-dsn for the application role's own connection, or --tenants A,B.")

PROBE_RULES: tuple[Rule, ...] = (READ, UPDATE, DELETE, INSERT, MOVE, NO_CONTEXT, VIEW, SETUP)


class ProbeSetupError(Exception):
    """The probe cannot act as the application role."""


@dataclasses.dataclass(frozen=True)
class ProbeTarget:
    """A table to probe: its tenant column and type, the key that identifies a row (the
    primary key, else ``(tableoid, ctid)``), and the columns an INSERT may name."""

    qname: QualifiedName
    column: str
    column_type: str
    key_columns: tuple[str, ...]
    insert_columns: tuple[str, ...]

    @classmethod
    def of(cls, table: Table, column: str) -> ProbeTarget:
        col = table.column(column)
        if col is None:
            raise ValueError(f"{table.qname} has no column {column!r}")
        return cls(table.qname, column, col.type, table.primary_key or (),
                   tuple(c.name for c in table.columns if not c.generated))


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    setting: str
    role: str | None  # SET LOCAL ROLE to it; None: the connection is the application's own
    statement_timeout_ms: int = 5000
    lock_timeout_ms: int = 1000


@dataclasses.dataclass(frozen=True)
class Unprobeable:
    status: str  # fail | skip
    message: str


# --------------------------------------------------------------------------- SQL pieces


def _typed(target: ProbeTarget) -> sql.Composed:
    return compose("CAST(%s AS {})", sql.SQL(target.column_type))


def _set_context(conn: Conn, setting: str, value: str) -> None:
    conn.execute("SELECT set_config(%s, %s, true)", [setting, value])


def _begin(conn: Conn, settings: ProbeSettings) -> None:
    """Inside the probe's transaction: short timeouts, then the application role."""
    conn.execute("SELECT set_config('statement_timeout', %s, true),"
                 " set_config('lock_timeout', %s, true)",
                 [f"{settings.statement_timeout_ms}ms", f"{settings.lock_timeout_ms}ms"])
    if settings.role is not None:
        conn.execute(compose("SET LOCAL ROLE {}", sql.Identifier(settings.role)))


def check_role(conn: Conn, settings: ProbeSettings) -> None:
    """Raise :class:`ProbeSetupError` when the probe cannot act as the application role."""
    try:
        with conn.transaction(force_rollback=True):
            _begin(conn, settings)
    except psycopg.Error as exc:
        who = conn.execute("SELECT current_user").fetchone()
        raise ProbeSetupError(
            f"the probe runs as the application role, and {who[0] if who else '?'!r} cannot "
            f"SET ROLE {settings.role}: {_first_line(exc)} (pass --app-dsn with the "
            "application's own credentials, or run verify as a member of that role)"
        ) from None


def _rows_sql(target: ProbeTarget) -> sql.Composed:
    """A few rows of one tenant, whole (JSON) and by physical address."""
    return compose("SELECT to_jsonb(t), t.tableoid::int8, t.ctid::text FROM {} AS t"
                   " WHERE t.{} = {} LIMIT {}", target.qname.ident, sql.Identifier(target.column),
                   _typed(target), sql.Literal(SAMPLE_ROWS))


def _keys(target: ProbeTarget, rows: Sequence[tuple[Any, ...]]) -> tuple[sql.Composed, list[Any]]:
    """A predicate matching exactly ``rows`` (from :func:`_rows_sql`) and its parameters."""
    if target.key_columns:
        keys = sql.SQL(", ").join(sql.Identifier(c) for c in target.key_columns)
        return (compose("({}) IN (SELECT {} FROM jsonb_populate_recordset(NULL::{}, %s))",
                        keys, keys, target.qname.ident), [Jsonb([r[0] for r in rows])])
    return (sql.SQL("(tableoid, ctid) IN (SELECT * FROM unnest(%s::oid[], %s::tid[]))")
            .format(), [[r[1] for r in rows], [r[2] for r in rows]])


def _insert_sql(target: ProbeTarget) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in target.insert_columns)
    return compose("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM"
                   " jsonb_populate_record(NULL::{}, %s)", target.qname.ident, cols, cols,
                   target.qname.ident)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _attempt(conn: Conn, statement: sql.Composed, params: Sequence[Any]) -> tuple[int, Exception | None]:
    """Run a write in a savepoint that is always rolled back (so one attempt never changes
    what the next one sees): (rows it touched, or -1, and the error it raised)."""
    try:
        with conn.transaction(force_rollback=True):
            cur = conn.execute(for_params(statement), params)
            return cur.rowcount, None
    except psycopg.Error as exc:
        return -1, exc


def _refused(exc: Exception | None) -> str | None:
    """How a write was refused, if it was by row-level security or by privileges."""
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return ("refused by row-level security" if "row-level security" in str(exc)
                else f"refused by privileges ({_first_line(exc)})")
    return None


# --------------------------------------------------------------------------- tenants


def pick_tenants(conn: Conn, target: ProbeTarget,
                 root: tuple[QualifiedName, str, str] | None = None) -> tuple[str, str] | Unprobeable:
    """Two tenants for ``target``: B has rows in it, A is another tenant (with rows here
    when there is one, else from the tenant root ``(table, key, key type)``), as text.

    ``conn`` must read the table unfiltered; when RLS filters it, the answer says so."""
    ident, col = target.qname.ident, sql.Identifier(target.column)
    with conn.transaction(force_rollback=True):
        active = conn.execute("SELECT row_security_active(%s::regclass), current_user",
                              [regclass_text(target.qname)]).fetchone()
        assert active is not None
        if active[0]:
            return Unprobeable("fail", (
                f"{active[1]!r} is itself subject to row-level security on {target.qname} "
                "(neither a superuser nor BYPASSRLS, and not an owner without FORCE ROW LEVEL "
                "SECURITY): it cannot tell which tenants have rows, and would probe a "
                "filtered picture. Run verify as a superuser or a BYPASSRLS role, or pass "
                "--tenants A,B"))
        row = conn.execute(compose("SELECT {}::text FROM {} WHERE {} IS NOT NULL LIMIT 1",
                                   col, ident, col)).fetchone()
        if row is None:
            return Unprobeable("skip", "no row with a tenant: nothing to probe")
        b = str(row[0])
        row = conn.execute(for_params(compose(
            "SELECT {}::text FROM {} WHERE {} IS NOT NULL AND {} <> {} LIMIT 1",
            col, ident, col, col, _typed(target))), [b]).fetchone()
        if row is None and root is not None:
            table, key, key_type = root
            row = conn.execute(for_params(compose(
                "SELECT {}::text FROM {} WHERE {} <> CAST(%s AS {}) LIMIT 1",
                sql.Identifier(key), table.ident, sql.Identifier(key), sql.SQL(key_type))),
                [b]).fetchone()
        if row is None:
            return Unprobeable("skip", "only one tenant: nobody to cross into")
        return str(row[0]), b


# --------------------------------------------------------------------------- the probe


def probe_table(conn: Conn, target: ProbeTarget, tenant_a: str, tenant_b: str,
                settings: ProbeSettings, *, picked: bool = True) -> list[Finding]:
    """Every probe on one table (see the module docstring); nothing it does is kept.
    ``picked``: the tenants come from the table's rows (so B must see some of its own)."""
    name = str(target.qname)
    ident, col = target.qname.ident, sql.Identifier(target.column)
    typed = _typed(target)
    out: list[Finding] = []
    with conn.transaction(force_rollback=True):
        _begin(conn, settings)
        _set_context(conn, settings.setting, tenant_b)
        b_rows = conn.execute(for_params(_rows_sql(target)), [tenant_b]).fetchall()
        if not b_rows:
            if picked:
                return [READ.problem(name, f"tenant {tenant_b} has rows here but does not see "
                                     "them with its own context set: the policy hides them "
                                     f"(wrong setting name or type? {settings.setting})")]
            return [Finding(c.code, "skip", name, message=f"tenant {tenant_b} has no row here")
                    for c in (READ, UPDATE, DELETE, INSERT, MOVE, NO_CONTEXT)]
        keys, key_params = _keys(target, b_rows)
        b_row = Jsonb(b_rows[0][0])

        _set_context(conn, settings.setting, tenant_a)
        a_rows = conn.execute(for_params(_rows_sql(target)), [tenant_a]).fetchall()
        seen = conn.execute(for_params(compose("SELECT count(*) FROM {} WHERE {}", ident, keys)),
                            key_params).fetchone()
        other = conn.execute(for_params(compose(
            "SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} IS DISTINCT FROM {} LIMIT 1) AS s",
            ident, col, typed)), [tenant_a]).fetchone()
        seen_n, other_n = (seen[0] if seen else 0), (other[0] if other else 0)
        if seen_n or other_n:
            out.append(READ.problem(name, f"with tenant {tenant_a}'s context the application "
                                    f"role reads {seen_n} of {len(b_rows)} rows of tenant "
                                    f"{tenant_b}" + (" and rows of other tenants (or of none)"
                                                     if other_n else "")))
        else:
            out.append(READ.ok(name, message=f"tenant {tenant_a} reads none of tenant "
                                             f"{tenant_b}'s rows"))

        for rule, statement, verb in (
            (UPDATE, compose("UPDATE {} SET {} = {} WHERE {}", ident, col, col, keys), "updates"),
            (DELETE, compose("DELETE FROM {} WHERE {}", ident, keys), "deletes"),
        ):
            count, error = _attempt(conn, statement, key_params)
            how = _refused(error)
            if error is None and count == 0:
                out.append(rule.ok(name, message="no row of the other tenant reached"))
            elif how is not None:
                out.append(rule.ok(name, message=how))
            elif error is None:
                out.append(rule.problem(name, f"with tenant {tenant_a}'s context the "
                                        f"application role {verb} {count} row(s) of tenant "
                                        f"{tenant_b}"))
            else:
                out.append(rule.problem(name, f"the {verb[:-1]} of tenant {tenant_b}'s rows "
                                        f"reached them and failed later: {_first_line(error)}"))

        out.append(_insert_finding(conn, target, b_row, INSERT, name,
                                   f"with tenant {tenant_a}'s context, a row of tenant "
                                   f"{tenant_b}"))

        if a_rows:
            a_keys, a_params = _keys(target, a_rows[:1])
            count, error = _attempt(conn, compose("UPDATE {} SET {} = {} WHERE {}", ident, col,
                                                  typed, a_keys), [tenant_b, *a_params])
            how = _refused(error)
            if how is not None:
                out.append(MOVE.ok(name, message=how))
            elif error is None and count == 0:
                out.append(MOVE.ok(name, message="no row moved"))
            elif error is None:
                out.append(MOVE.problem(name, f"tenant {tenant_a} moved its row into tenant "
                                        f"{tenant_b}"))
            else:
                out.append(MOVE.problem(name, f"moving tenant {tenant_a}'s row into tenant "
                                        f"{tenant_b} was not refused by RLS; it failed later: "
                                        f"{_first_line(error)}"))
        else:
            out.append(MOVE.skip(name, f"tenant {tenant_a} has no row here to move"))

        _set_context(conn, settings.setting, "")
        visible = conn.execute(compose("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT 1) AS s",
                                       ident)).fetchone()
        if visible and visible[0]:
            out.append(NO_CONTEXT.problem(name, "with no tenant context the application role "
                                          "reads rows"))
        else:
            insert = _insert_finding(conn, target, b_row, NO_CONTEXT, name,
                                     "with no tenant context, a row")
            out.append(insert if insert.status != "pass" else NO_CONTEXT.ok(
                name, message="reads nothing; " + insert.message))
    return out


def _insert_finding(conn: Conn, target: ProbeTarget, row: Jsonb, rule: Rule, name: str,
                    what: str) -> Finding:
    count, error = _attempt(conn, _insert_sql(target), [row])
    how = _refused(error)
    if how is not None:
        return rule.ok(name, message=f"insert {how}")
    if error is None:
        return rule.problem(name, f"{what} was inserted")
    return rule.problem(name, f"{what} was not refused by row-level security; it failed "
                        f"later, which reveals the other tenant's row: {_first_line(error)}")


def probe_view(conn: Conn, view: QualifiedName, settings: ProbeSettings) -> Finding:
    """A view over tenant tables only must read empty with no tenant context."""
    name = str(view)
    try:
        with conn.transaction(force_rollback=True):
            _begin(conn, settings)
            _set_context(conn, settings.setting, "")
            row = conn.execute(compose("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT 1) AS s",
                                       view.ident)).fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        return VIEW.skip(name, f"the application role cannot read it: {_first_line(exc)}",
                         "view")
    if row and row[0]:
        return VIEW.problem(name, "with no tenant context the application role reads rows "
                            "through it: it reads its tables with its owner's rights", "view")
    return VIEW.ok(name, "view", "reads nothing with no tenant context")


def probe_all(
    verifier: Conn,
    targets: Sequence[ProbeTarget],
    views: Sequence[QualifiedName],
    settings: ProbeSettings,
    *,
    probe_conn: Conn | None = None,
    tenants: tuple[str, str] | None = None,
    root: tuple[QualifiedName, str, str] | None = None,
) -> Iterator[Finding]:
    """Probe every target and view. ``verifier`` picks the tenants; the probe itself runs
    on ``probe_conn`` (the application's own connection) or on ``verifier`` with
    ``SET LOCAL ROLE settings.role``."""
    conn = probe_conn if probe_conn is not None else verifier
    try:
        check_role(conn, settings)
    except ProbeSetupError as exc:
        yield SETUP.problem(settings.role or "application role", str(exc), "role")
        return
    for target in targets:
        name = str(target.qname)
        if tenants is not None:
            a, b = tenants
            picked = False
        else:
            choice = pick_tenants(verifier, target, root)
            if isinstance(choice, Unprobeable):
                if choice.status == "fail":
                    yield SETUP.problem(name, choice.message)
                else:
                    yield from (Finding(r.code, "skip", name, message=choice.message)
                                for r in (READ, UPDATE, DELETE, INSERT, MOVE, NO_CONTEXT))
                continue
            a, b = choice
            picked = True
        try:
            yield from probe_table(conn, target, a, b, settings, picked=picked)
        except psycopg.Error as exc:
            yield SETUP.problem(name, f"the probe failed: {_first_line(exc)}")
    for view in views:
        yield probe_view(conn, view, settings)
