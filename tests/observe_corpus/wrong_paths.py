"""Code paths that enforcement breaks: each reads, changes or creates rows the application
must not, or finds nothing once enforced. Observe mode must record every one of them, and the
gate must confirm it and refuse to enforce.

Each path is a function of an autocommit application connection (its ``application_name``
is ``wrong/<name>``) and the tenant's facts; it commits what it writes, as the application
would, and returns what it saw. The test runs every path on two clones of the same database,
one observing and one enforced, and checks that the enforced one returns something else or
fails."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, LiteralString

import psycopg

from observe_corpus.database import Tenant
from observe_corpus.pattern import Rows
from rls_migrate.context import set_tenant

Conn = psycopg.Connection[Any]


@dataclasses.dataclass(frozen=True)
class WrongPath:
    name: str
    why: str
    run: Callable[[Conn, Tenant], Rows]
    known: str | None = None  # a reported bug that lets this path through the gate today


def _in_tenant(sql: LiteralString, params: Callable[[Tenant], dict[str, Any]],
               as_tenant: Callable[[Tenant], int | None] = lambda t: t.id
               ) -> Callable[[Conn, Tenant], Rows]:
    """One committed transaction: the context ``as_tenant`` gives (None: none at all, as a
    cron job that never sets it), then ``sql``."""
    def run(conn: Conn, t: Tenant) -> Rows:
        with conn.transaction():
            tenant = as_tenant(t)
            if tenant is not None:
                set_tenant(conn, tenant)
            cur = conn.execute(sql, params(t))
            return cur.fetchall() if cur.description else [(cur.rowcount,)]
    return run


def _shared_statement(conn: Conn, t: Tenant) -> Rows:
    """The statement of the correct pattern ``join_comments_of_project``, run correctly
    (its own project) and then with another tenant's project: the real violation must not
    hide among the harmless samples of the same statement."""
    sql: LiteralString = ("SELECT c.id, c.body FROM comments c JOIN issues i"
                          " ON i.id = c.issue_id WHERE i.project_id = %(project)s")
    out: Rows = []
    for project in (t.project, t.project, t.other_project):
        with conn.transaction():
            set_tenant(conn, t.id)
            out += conn.execute(sql, {"project": project}).fetchall()
    return out


NO_CONTEXT: Callable[[Tenant], int | None] = lambda t: None  # noqa: E731


WRONG_PATHS = (
    WrongPath("no_context_count", "a report that never sets the tenant",
              _in_tenant("SELECT count(*) FROM comments", lambda t: {}, NO_CONTEXT)),
    WrongPath("nightly_job_update", "a nightly job that closes stale issues, no context",
              _in_tenant("UPDATE issues SET status = status WHERE project_id = %(p)s"
                         " RETURNING id", lambda t: {"p": t.other_project}, NO_CONTEXT)),
    WrongPath("nightly_partition_no_context", "a job reading a partition, no context",
              _in_tenant("SELECT count(*) FROM events_2026_01", lambda t: {}, NO_CONTEXT)),
    WrongPath("other_tenant_id", "asks for another tenant's projects by its id",
              _in_tenant("SELECT id, name FROM projects WHERE account_id = %(o)s",
                         lambda t: {"o": t.other})),
    WrongPath("idor_read", "reads another tenant's issue by id (IDOR)",
              _in_tenant("SELECT id, title FROM issues WHERE id = %(i)s",
                         lambda t: {"i": t.other_issue})),
    WrongPath("idor_update", "updates another tenant's issue by id (IDOR)",
              _in_tenant("UPDATE issues SET title = title || '!' WHERE id = %(i)s"
                         " RETURNING id", lambda t: {"i": t.other_issue})),
    WrongPath("idor_delete", "deletes another tenant's comment by id (IDOR)",
              _in_tenant("DELETE FROM comments WHERE id = %(c)s RETURNING id",
                         lambda t: {"c": t.other_leaf_comment})),
    WrongPath("cross_tenant_insert", "inserts a row for another tenant",
              _in_tenant("INSERT INTO projects (account_id, name) VALUES (%(o)s, 'misfiled')"
                         " RETURNING account_id, name", lambda t: {"o": t.other})),
    WrongPath("cross_tenant_upsert", "upserts onto another tenant's user (ON CONFLICT)",
              _in_tenant("INSERT INTO users (account_id, email, name) VALUES (%(t)s, %(e)s,"
                         " 'hijacked') ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name"
                         " RETURNING id, name", lambda t: {"t": t.id, "e": t.other_email})),
    WrongPath("child_under_other_parent", "a comment on another tenant's issue",
              _in_tenant("INSERT INTO comments (issue_id, body, created_at) VALUES (%(i)s,"
                         " 'misfiled', '2026-01-01') RETURNING issue_id, body",
                         lambda t: {"i": t.other_issue})),
    WrongPath("move_row_to_other_tenant", "moves its own user to another tenant",
              _in_tenant("UPDATE users SET account_id = %(o)s WHERE id = %(u)s RETURNING id",
                         lambda t: {"o": t.other, "u": t.user})),
    WrongPath("stale_context", "a pooled connection still carries the previous tenant",
              _in_tenant("SELECT id FROM issues WHERE project_id = %(p)s",
                         lambda t: {"p": t.project}, lambda t: t.other)),
    WrongPath("aggregate_across_tenants", "an admin page counting every tenant's projects",
              _in_tenant("SELECT account_id, count(*) FROM projects GROUP BY 1",
                         lambda t: {})),
    WrongPath("view_other_tenant", "another tenant's board through the security_invoker view",
              _in_tenant("SELECT id FROM issue_board WHERE account_id = %(o)s",
                         lambda t: {"o": t.other})),
    WrongPath("shared_statement", "a correct statement, once with another tenant's project",
              _shared_statement),
)

MIN_WRONG_PATHS = 10
