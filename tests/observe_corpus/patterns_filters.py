"""Causes B-D, views and the partitioned table: correct reads whose plan, filter or parameter
type makes the scan meet other tenants' rows (or not: some of these are index lookups that
a generic plan or a big tenant's statistics may turn into scans)."""

from __future__ import annotations

import datetime as dt

from observe_corpus import orm
from observe_corpus.database import Tenant
from observe_corpus.pattern import Pattern
from observe_corpus.patterns_joins import project, tenant

MARCH = {"since": dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
         "until": dt.datetime(2026, 4, 1, tzinfo=dt.UTC)}


def domain(t: Tenant) -> dict[str, object]:
    return {"domain": "%@" + t.email.split("@", 1)[1]}


PLAN_DEPENDENT = (
    Pattern("plan_latest_issues_of_project", "B-plan",
            "SELECT id, title FROM issues WHERE project_id = %(project)s"
            " ORDER BY id DESC LIMIT 5", project, orm=orm.latest_issues_of_project),
    Pattern("plan_issues_by_status", "B-plan",
            "SELECT id FROM issues WHERE project_id = %(project)s AND status = %(status)s",
            lambda t: {"project": t.project, "status": "open"}),
    Pattern("plan_comments_since", "B-plan",
            "SELECT c.id FROM comments c JOIN issues i ON i.id = c.issue_id"
            " WHERE i.project_id = %(project)s AND c.created_at >= %(since)s",
            lambda t: {"project": t.project, "since": dt.datetime(2025, 6, 1, tzinfo=dt.UTC)}),
    Pattern("plan_users_of_account", "B-plan",
            "SELECT id, email FROM users WHERE account_id = %(tenant)s ORDER BY id", tenant,
            orm=orm.users_of_account),
    Pattern("plan_projects_of_account", "B-plan",
            "SELECT id, name FROM projects WHERE account_id = %(tenant)s", tenant),
    Pattern("plan_issue_page", "B-plan",
            "SELECT id FROM issues WHERE project_id = %(project)s"
            " ORDER BY created_at DESC, id DESC LIMIT 10 OFFSET 3", project),
    Pattern("plan_issue_by_id_and_project", "B-plan",
            "SELECT id, title, status FROM issues WHERE id = %(issue)s"
            " AND project_id = %(project)s",
            lambda t: {"issue": t.issue, "project": t.project}, orm=orm.issue_get),
    Pattern("plan_count_issues_of_account", "B-plan",
            "SELECT count(*) FROM issues i WHERE i.project_id IN (SELECT id FROM projects"
            " WHERE account_id = %(tenant)s)", tenant),
)

LEAKPROOF = (
    Pattern("filter_lower_email", "C-leakproof",
            "SELECT id, name FROM users WHERE lower(email) = lower(%(email)s)",
            lambda t: {"email": t.email.upper()}, orm=orm.user_by_lower_email),
    Pattern("filter_email_domain_ilike", "C-leakproof",
            "SELECT id FROM users WHERE email ILIKE %(domain)s", domain,
            orm=orm.users_by_domain),
    Pattern("filter_name_ilike_in_account", "C-leakproof",
            "SELECT id FROM users WHERE account_id = %(tenant)s AND name ILIKE %(name)s",
            lambda t: {"tenant": t.id, "name": t.user_name.split()[0].lower() + "%"}),
    Pattern("filter_issue_title_ilike", "C-leakproof",
            "SELECT i.id FROM issues i WHERE i.project_id = %(project)s"
            " AND i.title ILIKE %(q)s", lambda t: {"project": t.project, "q": "%the%"}),
    Pattern("filter_comment_body_ilike", "C-leakproof",
            "SELECT c.id FROM comments c JOIN issues i ON i.id = c.issue_id"
            " WHERE i.project_id = %(project)s AND c.body ILIKE %(q)s",
            lambda t: {"project": t.project, "q": "%fix%"}, orm=orm.comment_search),
    Pattern("filter_events_json", "C-leakproof",
            "SELECT count(*) FROM events WHERE account_id = %(tenant)s"
            " AND (payload->>'ok')::boolean", tenant),
    Pattern("filter_labels_regex", "C-leakproof",
            "SELECT id, name FROM labels WHERE account_id = %(tenant)s AND name ~ %(re)s",
            lambda t: {"tenant": t.id, "re": "^(b|f)"}),
    Pattern("filter_issue_year_to_char", "C-leakproof",
            "SELECT id FROM issues WHERE project_id = %(project)s"
            " AND to_char(created_at, 'YYYY') = %(year)s",
            lambda t: {"project": t.project, "year": "2025"}),
)

ANY_ARRAYS = (
    # psycopg sends a list of small Python ints as smallint[] (``$1::int2[]``).
    Pattern("any_issues_by_ids", "D-any",
            "SELECT id, title FROM issues WHERE id = ANY(%(ids)s)",
            lambda t: {"ids": list(t.issues)}, orm=orm.issues_by_ids),
    Pattern("any_comments_of_issues", "D-any",
            "SELECT id FROM comments WHERE issue_id = ANY(%(ids)s)",
            lambda t: {"ids": list(t.issues)}),
    Pattern("any_labels_by_ids", "D-any",
            "SELECT id, name FROM labels WHERE id = ANY(%(ids)s)",
            lambda t: {"ids": list(t.labels)}),
    Pattern("any_issue_labels_of_issues", "D-any",
            "SELECT issue_id, label_id FROM issue_labels WHERE issue_id = ANY(%(ids)s)",
            lambda t: {"ids": list(t.issues)}),
    Pattern("any_projects_by_ids", "D-any",
            "SELECT id, name FROM projects WHERE id = ANY(%(ids)s)",
            lambda t: {"ids": list(t.projects)}),
    Pattern("any_issues_in_projects", "D-any",
            "SELECT count(*) FROM issues WHERE project_id = ANY(%(ids)s)",
            lambda t: {"ids": list(t.projects)}),
)

VIEWS = (
    Pattern("view_board_of_account", "view",
            "SELECT id, title FROM issue_board WHERE account_id = %(tenant)s", tenant,
            orm=orm.board_of_account),
    Pattern("view_board_status_counts", "view",
            "SELECT status, count(*) FROM issue_board WHERE account_id = %(tenant)s"
            " GROUP BY status", tenant),
    Pattern("view_board_of_project", "view",
            "SELECT id, project FROM issue_board WHERE project_id = %(project)s", project),
    Pattern("view_open_issues_plain", "view",
            "SELECT id, title FROM open_issues WHERE project_id = %(project)s", project),
)

PARTITIONS = (
    Pattern("partition_events_of_march", "partition",
            "SELECT id, kind FROM events WHERE account_id = %(tenant)s"
            " AND created_at >= %(since)s AND created_at < %(until)s",
            lambda t: {"tenant": t.id, **MARCH}, orm=orm.events_of_march),
    Pattern("partition_event_kinds", "partition",
            "SELECT kind, count(*) FROM events WHERE account_id = %(tenant)s GROUP BY kind",
            tenant),
    Pattern("partition_named_directly", "partition",
            "SELECT count(*) FROM events_2026_02 WHERE account_id = %(tenant)s", tenant),
    Pattern("partition_events_join_users", "partition",
            "SELECT e.kind, count(*) FROM events e JOIN users u ON u.account_id = e.account_id"
            " WHERE u.id = %(user)s GROUP BY e.kind", lambda t: {"user": t.user}),
)

PATTERNS = (*PLAN_DEPENDENT, *LEAKPROOF, *ANY_ARRAYS, *VIEWS, *PARTITIONS)
