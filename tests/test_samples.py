"""The sample multi-tenant database and the table checksums, on real PostgreSQL servers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from rls_migrate import samples
from rls_migrate.testing import servers
from rls_migrate.testing.checksums import table_checksums

# Version-agnostic (the toolkit's own logic over SQL every major runs alike): the core
# majors only, unless RLS_MIGRATE_TEST_ALL_MAJORS=1 (see tests/conftest.py).
pytestmark = pytest.mark.core_majors


SCALE = 0.2
SEED = 42


@pytest.fixture(scope="session")
def sample_factory(
    make_factory: Callable[..., servers.DatabaseFactory],
) -> servers.DatabaseFactory:
    return make_factory(lambda dsn: samples.load(dsn, SCALE, SEED), prefix="samples")


@pytest.fixture
def sample_db(sample_factory: servers.DatabaseFactory) -> Iterator[str]:
    dsn = sample_factory.create()
    yield dsn
    sample_factory.drop(servers.dbname_of(dsn))


@pytest.fixture
def conn(sample_db: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(sample_db, autocommit=True) as connection:
        yield connection


def scalar(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def table(name: str) -> sql.Identifier:
    return sql.Identifier("public", name)


# --------------------------------------------------------------------------- sizes, load


def test_row_counts_follow_the_scale() -> None:
    one = samples.row_counts(1)
    assert one["accounts"] == 20
    assert one["countries"] == 20
    assert one["comments"] == 10_000
    assert max(one, key=lambda t: one[t]) == "comments"
    assert samples.row_counts(100)["comments"] >= 1_000_000
    tiny = samples.row_counts(0.001)
    assert tiny["accounts"] == 3
    assert all(count > 0 for count in tiny.values())
    assert set(one) == set(samples.SAMPLE_TABLES)
    with pytest.raises(ValueError):
        samples.row_counts(0)


def test_load_writes_the_expected_rows(empty_db: str) -> None:
    counts = samples.load(empty_db, SCALE, SEED)
    assert counts == samples.row_counts(SCALE)
    with psycopg.connect(empty_db) as conn:
        for name in samples.SAMPLE_TABLES:
            assert scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(table(name))) == (
                counts[name]
            ), name
        # ANALYZE ran: the planner knows the sizes.
        assert scalar(conn, "SELECT reltuples FROM pg_class WHERE oid = 'comments'::regclass") == (
            counts["comments"]
        )


def test_tiny_scale_still_has_every_case(empty_db: str) -> None:
    samples.load(empty_db, 0.001, 1)
    with psycopg.connect(empty_db) as conn:
        assert scalar(conn, "SELECT count(*) FROM accounts") == 3
        # Every tenant has rows in every direct table and in issues.
        for query in (
            "SELECT count(DISTINCT account_id) FROM users",
            "SELECT count(DISTINCT account_id) FROM projects",
            "SELECT count(DISTINCT account_id) FROM labels",
            "SELECT count(DISTINCT account_id) FROM events",
            "SELECT count(DISTINCT p.account_id) FROM issues i JOIN projects p "
            "ON p.id = i.project_id",
        ):
            assert scalar(conn, query) == 3, query
        orphans = scalar(
            conn,
            "SELECT count(*) FROM audit_log a "
            "WHERE NOT EXISTS (SELECT FROM issues i WHERE i.id = a.issue_id)",
        )
        assert orphans >= 3


def test_same_seed_same_data_other_seed_other_data(
    sample_db: str, empty_factory: servers.DatabaseFactory
) -> None:
    again, other = empty_factory.create(), empty_factory.create()
    try:
        samples.load(again, SCALE, SEED)
        samples.load(other, SCALE, SEED + 1)
        sums = []
        for dsn in (sample_db, again, other):
            with psycopg.connect(dsn) as conn:
                sums.append(table_checksums(conn, exclude_columns=()))
        assert sums[0] == sums[1]
        changed = {name for name in sums[0] if sums[0][name] != sums[2][name]}
        # Reference data and the fixed label set do not depend on the seed; the rest does.
        assert changed == set(samples.SAMPLE_TABLES) - {"countries", "labels"}
    finally:
        for dsn in (again, other):
            empty_factory.drop(servers.dbname_of(dsn))


def test_invalid_scale_is_refused(empty_db: str) -> None:
    with pytest.raises(ValueError, match="scale"):
        samples.load(empty_db, -1)


# --------------------------------------------------------------------------- the hard cases


FOREIGN_KEYS = """
SELECT c.conrelid::regclass::text, c.confrelid::regclass::text,
       array_agg(a.attname::text ORDER BY a.attnum)
  FROM pg_constraint c
  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
 WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
   AND NOT EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = c.conrelid)
 GROUP BY 1, 2, c.conname
"""


def test_foreign_key_graph(conn: psycopg.Connection[Any]) -> None:
    edges = {(child, parent, tuple(cols)) for child, parent, cols in conn.execute(FOREIGN_KEYS)}
    assert edges == {
        ("accounts", "countries", ("country_code",)),
        ("users", "accounts", ("account_id",)),
        ("projects", "accounts", ("account_id",)),
        ("labels", "accounts", ("account_id",)),
        ("events", "accounts", ("account_id",)),
        ("issues", "projects", ("project_id",)),
        ("issue_labels", "issues", ("issue_id",)),
        ("issue_labels", "labels", ("label_id",)),
        ("comments", "issues", ("issue_id",)),
        ("comments", "comments", ("parent_id",)),
        ("attachments", "comments", ("comment_id",)),
        ('"Project Notes"', "projects", ("projectId",)),
    }
    # The constants describe exactly this graph: every shortest path to the tenant root.
    parents: dict[str, set[str]] = {}
    for child, parent, _ in edges:
        if child != parent:
            parents.setdefault(child.strip('"'), set()).add(parent)

    def shortest_paths(name: str) -> list[tuple[str, ...]]:
        paths: list[tuple[str, ...]] = [(name,)]
        while paths:
            done = [p for p in paths if p[-1] == samples.TENANT_ROOT]
            if done:
                return done
            paths = [(*p, q) for p in paths for q in sorted(parents.get(p[-1], ()))]
        return []

    for name in samples.DIRECT_TABLES:
        assert shortest_paths(name) == [(name, samples.TENANT_ROOT)]
    for name, path in samples.DERIVED_TABLES.items():
        assert shortest_paths(name) == [(name, *path, samples.TENANT_ROOT)], name
    for name in (*samples.GLOBAL_TABLES, *samples.HINT_TABLES):
        assert shortest_paths(name) == [], name
    listed = {samples.TENANT_ROOT, *samples.DIRECT_TABLES, *samples.DERIVED_TABLES,
              *samples.GLOBAL_TABLES, *samples.HINT_TABLES}
    assert listed == set(samples.SAMPLE_TABLES)


def test_partitioned_events(conn: psycopg.Connection[Any]) -> None:
    assert scalar(conn, "SELECT relkind FROM pg_class WHERE oid = 'events'::regclass") == "p"
    partitions = [
        row[0]
        for row in conn.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits "
            "WHERE inhparent = 'events'::regclass ORDER BY 1"
        )
    ]
    assert tuple(partitions) == samples.EVENT_PARTITIONS
    for name in partitions:
        assert scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(table(name))) > 0, name
    pk = scalar(
        conn,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'events'::regclass AND contype = 'p'",
    )
    assert pk == "PRIMARY KEY (id, created_at)"


def test_table_without_keys_has_orphans(conn: psycopg.Connection[Any]) -> None:
    assert scalar(
        conn,
        "SELECT count(*) FROM pg_constraint "
        "WHERE conrelid = 'audit_log'::regclass AND contype IN ('p', 'u', 'f')",
    ) == 0  # (PostgreSQL 18 lists NOT NULL constraints there too: contype 'n')
    total = scalar(conn, "SELECT count(*) FROM audit_log")
    orphans = scalar(
        conn,
        "SELECT count(*) FROM audit_log a "
        "WHERE NOT EXISTS (SELECT FROM issues i WHERE i.id = a.issue_id)",
    )
    assert 3 <= orphans <= max(3, total * 0.02)
    # The orphans point at ids the sequence has used already (deleted issues), so new
    # issues cannot adopt them.
    assert scalar(conn, "SELECT max(issue_id) FROM audit_log") <= scalar(
        conn, "SELECT last_value FROM issues_id_seq"
    )


def test_uuid_quoted_and_global_unique(conn: psycopg.Connection[Any]) -> None:
    assert scalar(
        conn,
        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_constraint c "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
        "WHERE c.conrelid = 'attachments'::regclass AND c.contype = 'p'",
    ) == "uuid"
    assert scalar(conn, "SELECT count(DISTINCT id) FROM attachments") == scalar(
        conn, "SELECT count(*) FROM attachments"
    )
    columns = [
        row[0]
        for row in conn.execute(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attnum > 0 ORDER BY attnum",
            ['public."Project Notes"'],
        )
    ]
    assert columns == ["id", "projectId", "Body"]
    uniques = [
        row[0]
        for row in conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'users'::regclass AND contype = 'u'"
        )
    ]
    assert uniques == ["UNIQUE (email)"]


def test_indexes(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
        "WHERE indrelid IN ('projects'::regclass, 'issues'::regclass) AND NOT indisprimary"
    ).fetchall()
    found = {name: definition.split(" USING btree ")[1] for name, definition in rows}
    assert found == {
        "projects_created_at_idx": "(created_at)",
        "issues_created_at_idx": "(created_at)",
        "issues_project_id_idx": "(project_id)",
    }


def test_view_and_triggers(conn: psycopg.Connection[Any]) -> None:
    options = scalar(conn, "SELECT reloptions FROM pg_class WHERE oid = 'open_issues'::regclass")
    assert not options or not any("security_invoker" in o for o in options)
    assert scalar(conn, "SELECT count(*) FROM open_issues") == scalar(
        conn, "SELECT count(*) FROM issues WHERE status = 'open'"
    ) > 0
    triggers = {
        (row[0], row[1])
        for row in conn.execute(
            "SELECT tgrelid::regclass::text, tgname::text FROM pg_trigger WHERE NOT tgisinternal"
        )
    }
    assert triggers == {("issues", "issues_touch_updated_at"), ("users", "users_touch_updated_at")}
    with conn.transaction(force_rollback=True):
        before = scalar(conn, "SELECT updated_at FROM issues ORDER BY id LIMIT 1")
        after = scalar(
            conn,
            "UPDATE issues SET title = title WHERE id = (SELECT min(id) FROM issues) "
            "RETURNING updated_at",
        )
        assert after != before
        assert after == scalar(conn, "SELECT now()")


def test_threaded_comments_and_same_account_labels(conn: psycopg.Connection[Any]) -> None:
    replies = scalar(conn, "SELECT count(*) FROM comments WHERE parent_id IS NOT NULL")
    assert replies > 0
    assert scalar(
        conn,
        "SELECT count(*) FROM comments c JOIN comments p ON p.id = c.parent_id "
        "WHERE p.issue_id <> c.issue_id OR p.created_at >= c.created_at",
    ) == 0
    assert scalar(
        conn,
        "SELECT count(*) FROM issue_labels il JOIN labels l ON l.id = il.label_id "
        "JOIN issues i ON i.id = il.issue_id JOIN projects p ON p.id = i.project_id "
        "WHERE p.account_id <> l.account_id",
    ) == 0
    assert scalar(conn, "SELECT count(*) FROM issue_labels") > 0


def test_events_spread_over_the_months(conn: psycopg.Connection[Any]) -> None:
    first = scalar(conn, "SELECT min(created_at) FROM events")
    last = scalar(conn, "SELECT max(created_at) FROM events")
    assert first >= dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert last < dt.datetime(2026, 7, 1, tzinfo=dt.UTC)


# --------------------------------------------------------------------------- roles


def test_app_role_reads_everything_and_owns_nothing(sample_db: str) -> None:
    with psycopg.connect(sample_db, autocommit=True) as conn:
        for role in (samples.APP_ROLE, samples.ADMIN_ROLE):
            flags = conn.execute(
                "SELECT rolcanlogin, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s",
                [role],
            ).fetchone()
            assert flags == (True, False, False), role
            assert scalar(
                conn,
                "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
                "WHERE r.rolname = %s",
                [role],
            ) == 0
        samples.ensure_roles(conn)  # idempotent
    with psycopg.connect(sample_db, user=samples.APP_ROLE, autocommit=True) as app:
        assert scalar(app, "SELECT current_user") == samples.APP_ROLE
        for name in (*samples.SAMPLE_TABLES, *samples.EVENT_PARTITIONS, *samples.VIEWS):
            assert scalar(app, sql.SQL("SELECT count(*) FROM {}").format(table(name))) > 0, name
        # Sequences are past the generated ids: the application can insert.
        with app.transaction(force_rollback=True):
            account = scalar(
                app, "INSERT INTO accounts (name, plan) VALUES ('New', 'free') RETURNING id"
            )
            user = scalar(
                app,
                "INSERT INTO users (account_id, email) VALUES (%s, 'new@example.com') "
                "RETURNING id",
                [account],
            )
            project = scalar(
                app, "INSERT INTO projects (account_id, name) VALUES (%s, 'p') RETURNING id",
                [account],
            )
            issue = scalar(
                app, "INSERT INTO issues (project_id, title) VALUES (%s, 't') RETURNING id",
                [project],
            )
            comment = scalar(
                app, "INSERT INTO comments (issue_id, body) VALUES (%s, 'b') RETURNING id",
                [issue],
            )
            app.execute("INSERT INTO attachments (comment_id) VALUES (%s)", [comment])
            label = scalar(
                app, "INSERT INTO labels (account_id, name) VALUES (%s, 'l') RETURNING id",
                [account],
            )
            app.execute("INSERT INTO issue_labels VALUES (%s, %s)", [issue, label])
            app.execute(
                'INSERT INTO "Project Notes" ("projectId", "Body") VALUES (%s, %s)',
                [project, "note"],
            )
            app.execute(
                "INSERT INTO events (account_id, kind, created_at) "
                "VALUES (%s, 'login', '2026-03-01T00:00:00Z')",
                [account],
            )
            assert min(account, user, project, issue, comment, label) > 1


# --------------------------------------------------------------------------- checksums


def test_checksums_cover_every_table_and_see_changes(conn: psycopg.Connection[Any]) -> None:
    before = table_checksums(conn)
    assert set(before) == set(samples.SAMPLE_TABLES)  # parents only, no partitions
    counts = samples.row_counts(SCALE)
    assert {name: int(value.split(":")[0]) for name, value in before.items()} == counts
    assert table_checksums(conn) == before

    body = scalar(conn, "SELECT body FROM comments WHERE id = 5")
    conn.execute("UPDATE comments SET body = body || '!' WHERE id = 5")
    changed = table_checksums(conn)
    assert {n for n in before if before[n] != changed[n]} == {"comments"}
    # Back to the same values: same checksum, although the row moved on disk.
    conn.execute("UPDATE comments SET body = %s WHERE id = 5", [body])
    assert table_checksums(conn) == before

    conn.execute("UPDATE events SET payload = payload || '{\"x\": 1}' WHERE id = 1")
    assert table_checksums(conn)["events"] != before["events"]
    conn.execute("UPDATE events SET payload = payload - 'x' WHERE id = 1")
    conn.execute('DELETE FROM "Project Notes" WHERE id = 1')
    after = table_checksums(conn)
    assert {n for n in before if before[n] != after[n]} == {"Project Notes"}


def test_checksums_ignore_an_added_tenant_id(conn: psycopg.Connection[Any]) -> None:
    before = table_checksums(conn)
    everything = table_checksums(conn, exclude_columns=())
    assert everything == before  # no table has a tenant_id yet
    conn.execute("ALTER TABLE comments ADD COLUMN tenant_id bigint")
    conn.execute(
        "UPDATE comments c SET tenant_id = p.account_id FROM issues i, projects p "
        "WHERE i.id = c.issue_id AND p.id = i.project_id"
    )
    conn.execute("ALTER TABLE events ADD COLUMN tenant_id bigint")
    conn.execute("UPDATE events SET tenant_id = account_id")
    conn.execute('ALTER TABLE "Project Notes" ADD COLUMN tenant_id bigint')
    conn.execute(
        'UPDATE "Project Notes" n SET tenant_id = p.account_id FROM projects p '
        'WHERE p.id = n."projectId"'
    )
    assert table_checksums(conn) == before
    with_tenant = table_checksums(conn, exclude_columns=())
    assert {n for n in before if before[n] != with_tenant[n]} == {
        "comments", "events", "Project Notes"
    }
    # Dropped columns are not columns.
    conn.execute("ALTER TABLE comments ADD COLUMN scratch int DEFAULT 7")
    conn.execute("ALTER TABLE comments DROP COLUMN scratch")
    assert table_checksums(conn) == before


def test_checksums_do_not_depend_on_session_settings(conn: psycopg.Connection[Any]) -> None:
    before = table_checksums(conn)
    conn.execute("SET TimeZone = 'Asia/Tokyo'")
    conn.execute("SET DateStyle = 'SQL, DMY'")
    assert table_checksums(conn) == before
    # The session's own settings are left as they were.
    assert scalar(conn, "SHOW TimeZone") == "Asia/Tokyo"
    assert scalar(conn, "SHOW DateStyle") == "SQL, DMY"
    with conn.transaction():
        assert table_checksums(conn) == before
        assert scalar(conn, "SHOW TimeZone") == "Asia/Tokyo"


def test_checksums_of_another_schema(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE SCHEMA other")
    conn.execute("CREATE TABLE other.t (tenant_id int)")  # only excluded columns
    conn.execute("INSERT INTO other.t VALUES (1), (2)")
    sums = table_checksums(conn, schema="other")
    assert list(sums) == ["t"] and sums["t"].startswith("2:")
    conn.execute("CREATE SCHEMA rls_migrate")
    conn.execute("CREATE TABLE rls_migrate.journal (id int)")
    assert "journal" not in table_checksums(conn)
    assert table_checksums(conn, schema="rls_migrate") == {}
