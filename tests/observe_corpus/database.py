"""The corpus database: the sample SaaS database at a small scale taken through every stage
up to observe (the template the enforce and verify tests share, cloned in milliseconds), a
``security_invoker`` view of our own on top (the sample's ``open_issues`` is a plain view,
owned by the table owner, which RLS never filters); and the facts about a tenant that
patterns take their parameters from."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import enforce_helpers
import psycopg

from rls_migrate import samples
from rls_migrate.playbook import Playbook
from rls_migrate.runner import apply_stage
from rls_migrate.testing import servers

SCALE = enforce_helpers.SCALE
"""0.2: 4 tenants of skewed sizes, 2,000 comments, 400 issues."""

EXTRAS = (
    # A view the application reads as itself: the policies of issues and projects apply.
    "CREATE VIEW issue_board WITH (security_invoker = true) AS"
    " SELECT i.id, i.title, i.status, i.project_id, p.account_id, p.name AS project"
    " FROM issues i JOIN projects p ON p.id = i.project_id",
    f"GRANT SELECT ON issue_board TO {samples.APP_ROLE}",
)


def extras(major: int) -> tuple[str, ...]:
    """:data:`EXTRAS` as ``major`` can have them: before PostgreSQL 15 (no security_invoker)
    the view reads its tables as the application role by being owned by it."""
    if major >= 15:
        return EXTRAS
    plain = EXTRAS[0].replace(" WITH (security_invoker = true)", "")
    return (plain, f"ALTER VIEW issue_board OWNER TO {samples.APP_ROLE}", *EXTRAS[1:])


@dataclasses.dataclass(frozen=True)
class Tenant:
    """A tenant's own rows that patterns ask for, and another tenant's, for wrong paths."""

    id: int
    project: int  # its project with the most comments
    projects: tuple[int, ...]
    issue: int  # its issue with the most comments
    issues: tuple[int, ...]  # at most 12 (a psycopg list of small ints: smallint[])
    comment: int  # a top-level comment with the most replies
    user: int
    email: str
    user_name: str
    label: int
    labels: tuple[int, ...]
    labelled_issue: int  # an issue that has ``label``
    other: int  # another tenant
    other_project: int
    other_issue: int
    other_comment: int
    other_leaf_comment: int  # no replies, no attachments: a DELETE of it can succeed
    other_user: int
    other_email: str


def _one(conn: psycopg.Connection[Any], query: str, params: list[Any]) -> Any:
    row = conn.execute(query.encode(), params).fetchone()
    assert row is not None, (query, params)
    return row[0] if len(row) == 1 else row


def tenant_facts(dsn: str, tenant: int, other: int) -> Tenant:
    """Read as the owner (RLS does not apply to it)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        def project_of(t: int) -> int:
            return int(_one(conn, "SELECT i.project_id FROM issues i JOIN projects p ON p.id ="
                            " i.project_id JOIN comments c ON c.issue_id = i.id WHERE"
                            " p.account_id = %s GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
                            [t]))

        def issue_of(project: int) -> int:
            return int(_one(conn, "SELECT c.issue_id FROM comments c JOIN issues i ON i.id ="
                            " c.issue_id WHERE i.project_id = %s GROUP BY 1"
                            " ORDER BY count(*) DESC, 1 LIMIT 1", [project]))

        def comment_of(issue: int) -> int:
            return int(_one(conn, "SELECT p.id FROM comments p LEFT JOIN comments r ON"
                            " r.parent_id = p.id WHERE p.issue_id = %s AND p.parent_id IS NULL"
                            " GROUP BY 1 ORDER BY count(r.id) DESC, 1 LIMIT 1", [issue]))

        def user_of(t: int) -> tuple[int, str, str]:
            row = _one(conn, "SELECT id, email, name FROM users WHERE account_id = %s"
                       " ORDER BY id LIMIT 1", [t])
            return int(row[0]), str(row[1]), str(row[2])

        project, other_project = project_of(tenant), project_of(other)
        issue, other_issue = issue_of(project), issue_of(other_project)
        projects = tuple(r[0] for r in conn.execute(
            "SELECT id FROM projects WHERE account_id = %s ORDER BY id", [tenant]))
        issues = tuple(r[0] for r in conn.execute(
            "SELECT i.id FROM issues i JOIN projects p ON p.id = i.project_id"
            " WHERE p.account_id = %s ORDER BY i.id LIMIT 12", [tenant]))
        labels = tuple(r[0] for r in conn.execute(
            "SELECT id FROM labels WHERE account_id = %s ORDER BY id", [tenant]))
        labelled = _one(conn, "SELECT il.issue_id, il.label_id FROM issue_labels il"
                        " JOIN labels l ON l.id = il.label_id WHERE l.account_id = %s"
                        " ORDER BY 1, 2 LIMIT 1", [tenant])
        user, email, name = user_of(tenant)
        comment, other_comment = comment_of(issue), comment_of(other_issue)
        other_user, other_email, _ = user_of(other)
        leaf = int(_one(conn, "SELECT c.id FROM comments c JOIN issues i ON i.id = c.issue_id"
                        " JOIN projects p ON p.id = i.project_id WHERE p.account_id = %s"
                        " AND NOT EXISTS (SELECT 1 FROM comments r WHERE r.parent_id = c.id)"
                        " AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.comment_id ="
                        " c.id) ORDER BY c.id LIMIT 1", [other]))
    return Tenant(
        id=tenant, project=project, projects=projects, issue=issue, issues=issues,
        comment=comment, user=user, email=email, user_name=name,
        label=int(labelled[1]), labels=labels, labelled_issue=int(labelled[0]),
        other=other, other_project=other_project, other_issue=other_issue,
        other_comment=other_comment, other_leaf_comment=leaf, other_user=other_user, other_email=other_email)


def biggest_and_smallest(dsn: str) -> tuple[int, int]:
    """The tenants with the most and the fewest comments (among those with any)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT tenant_id FROM comments GROUP BY 1"
                            " ORDER BY count(*) DESC, 1").fetchall()
    assert len(rows) >= 2
    return int(rows[0][0]), int(rows[-1][0])


@dataclasses.dataclass(frozen=True)
class CorpusDb:
    server: servers.PostgresServer
    dsn: str  # the owner (superuser)
    playbook: Playbook

    @property
    def name(self) -> str:
        return servers.dbname_of(self.dsn)

    def app_dsn(self) -> str:
        return self.server.dsn(self.name, user=samples.APP_ROLE)

    def apply(self, stage: str, force: bool = False) -> None:
        assert apply_stage(self.dsn, self.playbook, stage, force=force).result.failed == 0


@contextlib.contextmanager
def observed(server: servers.PostgresServer,
             make_factory: Callable[..., servers.DatabaseFactory]) -> Iterator[CorpusDb]:
    """A fresh clone of the sample database in observe mode (the template the enforce and
    verify tests share), with :data:`EXTRAS` added, nothing recorded yet."""
    with enforce_helpers.clone(server, make_factory, "observe") as sample:
        with psycopg.connect(sample.dsn, autocommit=True) as conn:
            for statement in extras(server.major):
                conn.execute(statement.encode())
        playbook = with_server_log(sample.playbook, server)
        # Observe again: what it sets per database (the application role's parameter
        # logging, ALTER ROLE ... IN DATABASE) is keyed by the database's OID, which a clone
        # does not keep; every other step is already done.
        assert apply_stage(sample.dsn, playbook, "observe").result.failed == 0
        yield CorpusDb(server, sample.dsn, playbook)


def with_server_log(playbook: Playbook, server: servers.PostgresServer) -> Playbook:
    """The playbook with the server's log file as observe evidence
    (``options.observe.logs``), where this version reads logs and this process can read the
    file, as an operator would configure it."""
    log_path = getattr(server, "log_path", None)
    observe = getattr(playbook.options, "observe", None)
    if log_path is None or observe is None or "logs" not in type(observe).model_fields:
        return playbook
    options = playbook.options.model_copy(update={
        "observe": observe.model_copy(update={"logs": (str(log_path),)})})
    return playbook.model_copy(update={"options": options})
