"""Correct writes: upserts, ``UPDATE ... FROM``, ``DELETE ... USING``, ``INSERT ... SELECT``
through a parent. Each leaves the database as it found it (updates write the values already
there; a delete removes what ``before`` inserted; an insert is undone by ``after``, by the
tenant column the migration added), so every pass and mode sees the same data. RETURNING
lists no generated value (ids, ``updated_at``): those differ from run to run whatever the
policy."""

from __future__ import annotations

from observe_corpus import orm
from observe_corpus.database import Tenant
from observe_corpus.pattern import Pattern
from observe_corpus.patterns_joins import project, tenant


def user(t: Tenant) -> dict[str, object]:
    return {"tenant": t.id, "email": t.email, "name": t.user_name}


UPSERTS = (
    Pattern("upsert_user_by_email", "upsert",
            "INSERT INTO users (account_id, email, name) VALUES (%(tenant)s, %(email)s,"
            " %(name)s) ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name"
            " RETURNING email, name", user, orm=orm.upsert_user),
    Pattern("upsert_label_do_nothing", "upsert",
            "INSERT INTO issue_labels (issue_id, label_id) VALUES (%(issue)s, %(label)s)"
            " ON CONFLICT DO NOTHING RETURNING issue_id",
            lambda t: {"issue": t.labelled_issue, "label": t.label}),
    Pattern("upsert_labels_select_through_parent", "upsert",
            "INSERT INTO issue_labels (issue_id, label_id) SELECT il.issue_id, il.label_id"
            " FROM issue_labels il JOIN issues i ON i.id = il.issue_id"
            " WHERE i.project_id = %(project)s ON CONFLICT (issue_id, label_id)"
            " DO UPDATE SET label_id = EXCLUDED.label_id RETURNING issue_id, label_id",
            project),
    Pattern("upsert_event_new_row", "upsert",
            "INSERT INTO events (account_id, kind, payload, created_at) VALUES (%(tenant)s,"
            " 'corpus', '{}', '2026-03-15') ON CONFLICT DO NOTHING RETURNING account_id, kind",
            tenant, after=("DELETE FROM events WHERE account_id = %(tenant)s"
                           " AND kind = 'corpus'",)),
)

UPDATES = (
    Pattern("update_from_comments_of_project", "update-from",
            "UPDATE comments c SET body = c.body FROM issues i WHERE i.id = c.issue_id"
            " AND i.project_id = %(project)s RETURNING c.id", project,
            orm=orm.update_from_comments),
    Pattern("update_from_issues_of_account", "update-from",
            "UPDATE issues i SET status = i.status FROM projects p WHERE p.id = i.project_id"
            " AND p.account_id = %(tenant)s AND i.status = 'open' RETURNING i.id", tenant),
    Pattern("update_where_in_subquery", "update-from",
            "UPDATE comments SET body = body WHERE issue_id IN (SELECT id FROM issues"
            " WHERE project_id = %(project)s) RETURNING id", project),
    Pattern("update_attachments_three_hops", "update-from",
            "UPDATE attachments a SET size_bytes = a.size_bytes FROM comments c, issues i"
            " WHERE c.id = a.comment_id AND i.id = c.issue_id AND i.project_id = %(project)s"
            " RETURNING a.id", project),
    # A counter bumped through the parent chain (not idempotent: ``after`` takes it back).
    Pattern("update_counter_through_parent", "update-from",
            "UPDATE attachments a SET size_bytes = a.size_bytes + 1 FROM comments c, issues i"
            " WHERE c.id = a.comment_id AND i.id = c.issue_id AND i.project_id = %(project)s"
            " RETURNING a.id, a.size_bytes",
            lambda t: {"project": t.project, "tenant": t.id},
            after=("UPDATE attachments SET size_bytes = size_bytes - 1"
                   " WHERE tenant_id = %(tenant)s AND comment_id IN (SELECT id FROM comments"
                   " WHERE tenant_id = %(tenant)s AND issue_id IN (SELECT id FROM issues"
                   " WHERE tenant_id = %(tenant)s AND project_id = %(project)s))",)),
    Pattern("update_issue_by_id", "update-from",
            "UPDATE issues SET title = title WHERE id = %(issue)s RETURNING id, title",
            lambda t: {"issue": t.issue}, orm=orm.update_issue_by_id),
)

DELETES = (
    # The rows go at commit: replay finds nothing to delete, observed or enforced; the
    # write-truth triggers saw that every row it deleted was the tenant's own. LIKE is not
    # leakproof, so the policy sees every comment the hash join scans.
    Pattern("delete_drafts_of_project", "delete",
            "DELETE FROM comments c USING issues i WHERE i.id = c.issue_id"
            " AND i.project_id = %(project)s AND c.body LIKE 'corpus-draft%%' RETURNING c.body",
            lambda t: {"project": t.project, "issue": t.issue},
            before=("INSERT INTO comments (issue_id, body, created_at)"
                    " VALUES (%(issue)s, 'corpus-draft', '2026-01-01')",)),
    Pattern("delete_using_parent", "delete",
            "DELETE FROM comments c USING issues i WHERE i.id = c.issue_id"
            " AND i.project_id = %(project)s AND c.body = 'corpus-temp' RETURNING c.body",
            lambda t: {"project": t.project, "issue": t.issue},
            before=("INSERT INTO comments (issue_id, body, created_at)"
                    " VALUES (%(issue)s, 'corpus-temp', '2026-01-01')",),
            orm=orm.delete_using_parent),
    Pattern("delete_where_exists", "delete",
            "DELETE FROM labels l WHERE l.name = 'corpus-temp' AND EXISTS (SELECT 1"
            " FROM projects p WHERE p.account_id = l.account_id AND p.id = %(project)s)"
            " RETURNING l.name",
            lambda t: {"project": t.project, "tenant": t.id},
            before=("INSERT INTO labels (account_id, name) VALUES (%(tenant)s, 'corpus-temp')",)),
    Pattern("delete_in_subquery", "delete",
            "DELETE FROM comments WHERE body = 'corpus-temp' AND issue_id IN (SELECT id FROM"
            " issues WHERE project_id = %(project)s) RETURNING body",
            lambda t: {"project": t.project, "issue": t.issue},
            before=("INSERT INTO comments (issue_id, body, created_at)"
                    " VALUES (%(issue)s, 'corpus-temp', '2026-01-01')",)),
)

INSERTS = (
    Pattern("insert_select_through_parent", "insert",
            "INSERT INTO comments (issue_id, body, created_at) SELECT i.id, 'corpus-bulk',"
            " '2026-01-01' FROM issues i WHERE i.project_id = %(project)s"
            " RETURNING issue_id, body", lambda t: {"project": t.project, "tenant": t.id},
            after=("DELETE FROM comments WHERE tenant_id = %(tenant)s"
                   " AND body = 'corpus-bulk'",)),
    Pattern("insert_child_values", "insert",
            "INSERT INTO comments (issue_id, body, created_at) VALUES (%(issue)s,"
            " 'corpus-one', '2026-01-01') RETURNING issue_id, body, tenant_id",
            lambda t: {"issue": t.issue, "tenant": t.id},
            after=("DELETE FROM comments WHERE tenant_id = %(tenant)s"
                   " AND body = 'corpus-one'",), orm=orm.insert_comment),
)

PATTERNS = (*UPSERTS, *UPDATES, *DELETES, *INSERTS)
