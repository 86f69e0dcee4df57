"""Cause A: "legacy" reads that reach a child table only through its parent. The child is
scanned (a hash, merge or nested-loop join, a recursive CTE, a semi- or anti-join), so the
observe policy meets other tenants' rows that the join discards afterwards. All correct: the
tenant's own project, issue or account id is the only filter."""

from __future__ import annotations

from observe_corpus import orm
from observe_corpus.database import Tenant
from observe_corpus.pattern import Pattern

CURSOR_BUG = (
    "not solvable with what PostgreSQL exposes: a server-side cursor declared with bound "
    "parameters runs its plan at FETCH, whose log entry carries no parameters (the DECLARE's "
    "are in no log entry, and pg_cursors has the query without them), so replay cannot run "
    "it: the gate stays closed, unconfirmable, and the report says why "
    "(rls_migrate.replay.CURSOR_WITH_PARAMETERS)")


def project(t: Tenant) -> dict[str, object]:
    return {"project": t.project}


def tenant(t: Tenant) -> dict[str, object]:
    return {"tenant": t.id}


JOINS = (
    Pattern("join_comments_of_project", "A-join",
            "SELECT c.id, c.body FROM comments c JOIN issues i ON i.id = c.issue_id"
            " WHERE i.project_id = %(project)s", project, orm=orm.comments_of_project),
    Pattern("join_comments_of_account", "A-join",
            "SELECT c.id, i.title FROM comments c JOIN issues i ON i.id = c.issue_id"
            " JOIN projects p ON p.id = i.project_id WHERE p.account_id = %(tenant)s",
            tenant, orm=orm.comments_of_account),
    Pattern("join_attachments_of_project", "A-join",
            "SELECT a.id, a.filename FROM attachments a JOIN comments c ON c.id = a.comment_id"
            " JOIN issues i ON i.id = c.issue_id WHERE i.project_id = %(project)s", project,
            orm=orm.attachments_of_project),
    Pattern("join_attachment_bytes_of_account", "A-join",
            "SELECT sum(a.size_bytes), count(*) FROM attachments a JOIN comments c"
            " ON c.id = a.comment_id JOIN issues i ON i.id = c.issue_id JOIN projects p"
            " ON p.id = i.project_id WHERE p.account_id = %(tenant)s", tenant),
    Pattern("join_comment_counts_left", "A-join",
            "SELECT i.id, count(c.id) FROM issues i LEFT JOIN comments c ON c.issue_id = i.id"
            " WHERE i.project_id = %(project)s GROUP BY i.id", project,
            orm=orm.comment_counts),
    Pattern("join_labels_of_project", "A-join",
            "SELECT il.issue_id, l.name FROM issue_labels il JOIN labels l ON l.id = il.label_id"
            " JOIN issues i ON i.id = il.issue_id WHERE i.project_id = %(project)s", project,
            orm=orm.labels_of_project),
    Pattern("join_project_notes", "A-join",
            'SELECT n.id, n."Body" FROM "Project Notes" n JOIN projects p ON p.id = n."projectId"'
            " WHERE p.account_id = %(tenant)s", tenant),
    Pattern("join_audit_trail_of_project", "A-join",
            "SELECT a.issue_id, a.action, a.at FROM audit_log a JOIN issues i ON i.id = a.issue_id"
            " WHERE i.project_id = %(project)s", project),
    Pattern("join_latest_comments_of_account", "A-join",
            "SELECT c.id, c.created_at FROM comments c JOIN issues i ON i.id = c.issue_id"
            " JOIN projects p ON p.id = i.project_id WHERE p.account_id = %(tenant)s"
            " ORDER BY c.created_at DESC, c.id DESC LIMIT 20", tenant),
    Pattern("join_merge_comments_of_project", "A-join",
            "SELECT c.id, i.id FROM comments c JOIN issues i ON i.id = c.issue_id"
            " WHERE i.project_id = %(project)s", project,
            # A merge join (an application that turned hash joins off for a report).
            before=("SET LOCAL enable_hashjoin = off", "SET LOCAL enable_nestloop = off")),
    Pattern("join_lateral_last_comment", "A-join",
            "SELECT i.id, last.body FROM issues i CROSS JOIN LATERAL (SELECT c.body FROM"
            " comments c WHERE c.issue_id = i.id ORDER BY c.id DESC LIMIT 1) last"
            " WHERE i.project_id = %(project)s", project),
    Pattern("join_union_activity", "A-join",
            "SELECT 'issue' AS kind, i.title AS text FROM issues i WHERE i.project_id ="
            " %(project)s UNION ALL SELECT 'comment', c.body FROM comments c JOIN issues i2"
            " ON i2.id = c.issue_id WHERE i2.project_id = %(project)s", project),
    Pattern("join_cte_materialized", "A-join",
            "WITH mine AS MATERIALIZED (SELECT id FROM issues WHERE project_id = %(project)s)"
            " SELECT c.id FROM comments c JOIN mine ON mine.id = c.issue_id", project),
    Pattern("join_selectinload_issue_comments", "A-join",
            "SELECT c.issue_id, c.id FROM comments c WHERE c.issue_id IN"
            " (SELECT id FROM issues WHERE project_id = %(project)s)", project,
            orm=orm.selectinload_issue_comments),
    Pattern("join_joinedload_issue_comments", "A-join",
            "SELECT i.id, c.id FROM issues i LEFT OUTER JOIN comments c ON i.id = c.issue_id"
            " WHERE i.project_id = %(project)s", project, orm=orm.joinedload_issue_comments),
    Pattern("join_selectinload_nested", "A-join",
            "SELECT p.id, i.id, c.id FROM projects p JOIN issues i ON i.project_id = p.id"
            " LEFT JOIN comments c ON c.issue_id = i.id WHERE p.account_id = %(tenant)s",
            tenant, orm=orm.selectinload_nested),
    Pattern("join_joinedload_comment_issue", "A-join",
            "SELECT c.id, i.title FROM comments c JOIN issues i ON i.id = c.issue_id"
            " WHERE c.issue_id IN (SELECT id FROM issues WHERE project_id = %(project)s)",
            project, orm=orm.joinedload_comment_issue),
    Pattern("join_lazyload_comments", "A-join",
            "SELECT c.id FROM comments c WHERE c.issue_id = %(issue)s",
            lambda t: {"issue": t.issue}, orm=orm.lazyload_comments),
    # A report streamed through a server-side cursor: the plan runs at the first FETCH.
    Pattern("join_streamed_comments_of_account", "A-join",
            "SELECT c.id, c.body FROM comments c JOIN issues i ON i.id = c.issue_id"
            " JOIN projects p ON p.id = i.project_id WHERE p.account_id = %(tenant)s",
            tenant, stream=True, known=CURSOR_BUG),
    Pattern("join_streamed_attachments", "A-join",
            "SELECT a.id, a.size_bytes FROM attachments a JOIN comments c ON c.id = a.comment_id"
            " JOIN issues i ON i.id = c.issue_id WHERE i.project_id = %(project)s", project,
            stream=True, known=CURSOR_BUG),
    Pattern("join_selectinload_labels", "A-join",
            "SELECT il.issue_id, l.id FROM issue_labels il JOIN labels l ON l.id = il.label_id"
            " WHERE il.issue_id IN (SELECT id FROM issues WHERE project_id = %(project)s)",
            project, orm=orm.selectinload_labels),
)

RECURSIVE = (
    Pattern("recursive_thread_of_issue", "A-recursive",
            "WITH RECURSIVE t AS (SELECT id, 1 AS depth FROM comments WHERE issue_id = %(issue)s"
            " AND parent_id IS NULL UNION ALL SELECT c.id, t.depth + 1 FROM comments c JOIN t"
            " ON c.parent_id = t.id) SELECT id, depth FROM t", lambda t: {"issue": t.issue},
            orm=orm.thread_of_issue),
    Pattern("recursive_threads_of_project", "A-recursive",
            "WITH RECURSIVE t AS (SELECT c.id, 1 AS depth FROM comments c JOIN issues i"
            " ON i.id = c.issue_id WHERE i.project_id = %(project)s AND c.parent_id IS NULL"
            " UNION ALL SELECT c.id, t.depth + 1 FROM comments c JOIN t ON c.parent_id = t.id)"
            " SELECT depth, count(*) FROM t GROUP BY depth", project),
    Pattern("recursive_replies_of_comment", "A-recursive",
            "WITH RECURSIVE t AS (SELECT id, body FROM comments WHERE id = %(comment)s"
            " UNION ALL SELECT c.id, c.body FROM comments c JOIN t ON c.parent_id = t.id)"
            " SELECT id, body FROM t", lambda t: {"comment": t.comment}),
    Pattern("recursive_ancestors", "A-recursive",
            "WITH RECURSIVE up AS (SELECT c.id, c.parent_id FROM comments c WHERE c.parent_id"
            " IS NOT NULL AND c.issue_id = %(issue)s UNION SELECT c.id, c.parent_id FROM"
            " comments c JOIN up ON c.id = up.parent_id) SELECT id FROM up",
            lambda t: {"issue": t.issue}),
)

EXISTS = (
    Pattern("exists_issue_of_project", "A-exists",
            "SELECT count(*) FROM comments c WHERE EXISTS (SELECT 1 FROM issues i"
            " WHERE i.id = c.issue_id AND i.project_id = %(project)s)", project,
            orm=orm.exists_issue_of_project),
    Pattern("exists_account_two_levels", "A-exists",
            "SELECT c.id FROM comments c WHERE EXISTS (SELECT 1 FROM issues i JOIN projects p"
            " ON p.id = i.project_id WHERE i.id = c.issue_id AND p.account_id = %(tenant)s)",
            tenant),
    Pattern("in_subquery_issues", "A-exists",
            "SELECT c.id FROM comments c WHERE c.issue_id IN (SELECT id FROM issues"
            " WHERE project_id = %(project)s)", project, orm=orm.in_subquery_issues),
    Pattern("in_subquery_three_levels", "A-exists",
            "SELECT a.id FROM attachments a WHERE a.comment_id IN (SELECT c.id FROM comments c"
            " WHERE c.issue_id IN (SELECT i.id FROM issues i JOIN projects p ON p.id ="
            " i.project_id WHERE p.account_id = %(tenant)s))", tenant),
    Pattern("not_exists_uncommented", "A-exists",
            "SELECT i.id FROM issues i WHERE i.project_id = %(project)s AND NOT EXISTS"
            " (SELECT 1 FROM comments c WHERE c.issue_id = i.id)", project,
            orm=orm.not_exists_uncommented),
    Pattern("exists_label_on_issue", "A-exists",
            "SELECT i.id FROM issues i WHERE i.project_id = %(project)s AND EXISTS (SELECT 1"
            " FROM issue_labels il WHERE il.issue_id = i.id AND il.label_id = %(label)s)",
            lambda t: {"project": t.project, "label": t.label}),
    Pattern("in_users_of_project_account", "A-exists",
            "SELECT u.id, u.name FROM users u WHERE u.account_id IN (SELECT p.account_id"
            " FROM projects p WHERE p.id = %(project)s)", project),
    Pattern("exists_note_of_project", "A-exists",
            'SELECT p.id FROM projects p WHERE p.account_id = %(tenant)s AND EXISTS (SELECT 1'
            ' FROM "Project Notes" n WHERE n."projectId" = p.id)', tenant),
)

PATTERNS = (*JOINS, *RECURSIVE, *EXISTS)
