"""Tenant-graph discovery on real catalogs: the sample SaaS database and small schemas made
for one hard case each (ambiguity, FK-less keys, cycles, composite keys, ownership)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from plan_helpers import load_catalog, q
from psycopg import sql

from rls_migrate import samples
from rls_migrate.catalog import Catalog
from rls_migrate.discover import TenantGraph, discover
from rls_migrate.errors import UsageError
from rls_migrate.playbook import ParentRef
from rls_migrate.testing import servers


@pytest.fixture(scope="module")
def sample_catalog(make_factory: Callable[..., servers.DatabaseFactory]) -> Iterator[Catalog]:
    factory = make_factory(lambda dsn: samples.load(dsn, scale=0.05, seed=7), prefix="disc")
    dsn = factory.create()
    yield load_catalog(dsn)
    factory.drop(servers.dbname_of(dsn))


@pytest.fixture(scope="module")
def sample_graph(sample_catalog: Catalog) -> TenantGraph:
    return discover(sample_catalog, samples.TENANT_ROOT, app_role=samples.APP_ROLE)


ROOT_DDL = """
CREATE TABLE accounts (id bigint PRIMARY KEY, name text);
CREATE TABLE users (id bigint PRIMARY KEY, account_id bigint REFERENCES accounts);
CREATE TABLE projects (id bigint PRIMARY KEY, account_id bigint NOT NULL REFERENCES accounts);
"""


# --------------------------------------------------------------------------- the sample DB


def test_sample_root_and_direct_tables(sample_graph: TenantGraph) -> None:
    root = sample_graph.tables[q(samples.TENANT_ROOT)]
    assert (root.kind, root.column) == ("root", samples.TENANT_KEY)
    assert (sample_graph.key, sample_graph.key_type) == ("id", "bigint")
    for name in samples.DIRECT_TABLES:
        entry = sample_graph.tables[q(name)]
        assert (entry.kind, entry.column) == ("direct", "account_id"), name
        assert entry.evidence.startswith(f"foreign key {name}_account_id_fkey"), entry.evidence


def test_sample_derived_tables_follow_the_shortest_path(sample_graph: TenantGraph) -> None:
    for name, via in samples.DERIVED_TABLES.items():
        entry = sample_graph.tables[q(name)]
        assert entry.kind == "derived", (name, entry.evidence)
        assert tuple(hop.ref_table for hop in entry.path) == tuple(q(v) for v in via), name
        assert entry.path[-1].ref_table.name in samples.DIRECT_TABLES
    assert [len(sample_graph.tables[q(n)].path) for n in ("issues", "comments", "attachments")] \
        == [1, 2, 3]
    assert str(sample_graph.tables[q("issues")].parent) == "project_id -> public.projects(id)"
    assert str(sample_graph.tables[q("comments")].parent) == "issue_id -> public.issues(id)"
    attachments = sample_graph.tables[q("attachments")]
    assert [str(h) for h in attachments.path] == [
        "comment_id -> public.comments(id)", "issue_id -> public.issues(id)",
        "project_id -> public.projects(id)"]
    # The join table: via labels (1 hop), not via issues (2 hops).
    labels_link = sample_graph.tables[q("issue_labels")]
    assert str(labels_link.parent) == "label_id -> public.labels(id)"
    assert "join table" in labels_link.notes
    assert any("longer paths: issue_id -> public.issues(id)" in n for n in labels_link.notes)
    notes = sample_graph.tables[q("Project Notes")]
    assert str(notes.parent) == '"projectId" -> public.projects(id)'
    # The hop text is the playbook's ParentRef syntax.
    parsed = ParentRef.parse(str(notes.parent))
    assert (parsed.columns, parsed.qname, parsed.ref_columns) == (
        ("projectId",), q("projects"), ("id",))


def test_sample_self_reference_is_never_the_path(sample_graph: TenantGraph) -> None:
    comments = sample_graph.tables[q("comments")]
    assert all(hop.ref_table != q("comments") for hop in comments.path)
    assert any("self-reference comments_parent_id_fkey" in note for note in comments.notes)


def test_sample_global_and_hint_tables(sample_graph: TenantGraph) -> None:
    for name in samples.GLOBAL_TABLES:
        entry = sample_graph.tables[q(name)]
        assert entry.kind == "global", entry.evidence
        # countries is looked up by the root: reference data, not tenant data.
        assert "looked up by public.accounts(country_code)" in entry.evidence
    for name in samples.HINT_TABLES:
        entry = sample_graph.tables[q(name)]
        assert entry.kind == "needs_hint", entry.evidence
        assert [str(h) for h in entry.options] == ["issue_id -> public.issues(id)"]
        assert entry.options[0].constraint is None
        assert "name and type (bigint) match, no foreign key" in entry.options[0].evidence
        # The alternative is a full path: the hint, then issues' own path.
        assert [h.ref_table for h in entry.alternatives[0]] == [q("issues"), q("projects")]


def test_sample_every_table_classified_once_and_partitions_inherit(
    sample_graph: TenantGraph, sample_catalog: Catalog
) -> None:
    assert set(sample_graph.tables) == {q(name) for name in samples.SAMPLE_TABLES}
    for part in samples.EVENT_PARTITIONS:
        assert q(part) in sample_catalog.tables
        assert q(part) not in sample_graph.tables
        assert sample_graph.classification_of(q(part)).table == q("events")
    events = sample_graph.tables[q("events")]
    assert events.partitions == tuple(q(p) for p in samples.EVENT_PARTITIONS)
    assert events.row_estimate == sum(
        sample_catalog.tables[q(p)].row_estimate for p in samples.EVENT_PARTITIONS)
    assert sample_graph.counts() == {"root": 1, "direct": 4, "derived": 5, "ambiguous": 0,
                                     "needs_hint": 1, "global": 1}
    # Parents come before children (the backfill order).
    order = list(sample_graph.tables)
    for qname, entry in sample_graph.tables.items():
        if entry.parent is not None:
            assert order.index(entry.parent.ref_table) < order.index(qname)


def test_sample_view_that_bypasses_rls_is_flagged(sample_graph: TenantGraph) -> None:
    (report,) = sample_graph.views
    assert report.view == q("open_issues")
    assert report.tenant_tables == (q("issues"),)
    assert report.bypasses_rls and not report.security_invoker
    findings = [f for f in sample_graph.warnings if f.code == "view_bypasses_rls"]
    assert [f.subject for f in findings] == ["public.open_issues"]
    assert "security_invoker" in findings[0].message


def test_sample_app_role_that_owns_nothing_is_not_warned(sample_graph: TenantGraph) -> None:
    assert not [f for f in sample_graph.warnings if f.code.startswith("app_role")]


def test_sample_owner_as_app_role_is_warned(sample_catalog: Catalog) -> None:
    owner = sample_catalog.current_user  # the superuser that created every table
    graph = discover(sample_catalog, "public.accounts", app_role=owner)
    findings = [f for f in graph.warnings if f.code.startswith("app_role")]
    # A superuser bypasses RLS whatever it owns: one warning, not one per table.
    assert findings[0].code == "app_role_superuser"
    assert "app_role_owns_table" not in {f.code for f in findings}
    missing = discover(sample_catalog, "public.accounts", app_role="no_such_role_x")
    assert [f.code for f in missing.warnings if f.code.startswith("app_role")] == [
        "app_role_missing"]


# --------------------------------------------------------------------------- small schemas


def test_two_equal_shortest_paths_are_ambiguous(empty_db: str) -> None:
    catalog = load_catalog(empty_db, ROOT_DDL + """
        CREATE TABLE tasks (id bigint PRIMARY KEY,
                            project_id bigint REFERENCES projects,
                            reporter_id bigint REFERENCES users);
        CREATE TABLE task_notes (id bigint PRIMARY KEY, task_id bigint REFERENCES tasks);
        CREATE TABLE reviews (id bigint PRIMARY KEY,
                              author_id bigint REFERENCES users,
                              editor_id bigint REFERENCES users);
    """)
    graph = discover(catalog, "accounts")
    tasks = graph.tables[q("tasks")]
    assert tasks.kind == "ambiguous"
    assert tasks.path == ()
    assert sorted(str(h) for h in tasks.options) == [
        "project_id -> public.projects(id)", "reporter_id -> public.users(id)"]
    assert "2 different shortest paths of 1 hop" in tasks.evidence
    # Two keys to the same parent table are two different first hops as well.
    reviews = graph.tables[q("reviews")]
    assert reviews.kind == "ambiguous"
    assert sorted(str(h) for h in reviews.options) == [
        "author_id -> public.users(id)", "editor_id -> public.users(id)"]
    # A child of an ambiguous table has one first hop but says where the path is undecided.
    notes = graph.tables[q("task_notes")]
    assert notes.kind == "derived"
    assert str(notes.parent) == "task_id -> public.tasks(id)"
    assert any("public.tasks, which is ambiguous" in n for n in notes.notes)


def test_two_tenant_key_columns_are_ambiguous_unless_one_is_named_like_the_key(
    empty_db: str,
) -> None:
    catalog = load_catalog(empty_db, ROOT_DDL + """
        CREATE TABLE transfers (id bigint PRIMARY KEY,
                                from_account bigint REFERENCES accounts,
                                to_account bigint REFERENCES accounts);
        CREATE TABLE invoices (id bigint PRIMARY KEY,
                               account_id bigint REFERENCES accounts,
                               billed_to bigint REFERENCES accounts);
    """)
    graph = discover(catalog, "accounts")
    transfers = graph.tables[q("transfers")]
    assert transfers.kind == "ambiguous"
    assert sorted(str(h) for h in transfers.options) == [
        "from_account -> public.accounts(id)", "to_account -> public.accounts(id)"]
    invoices = graph.tables[q("invoices")]
    assert (invoices.kind, invoices.column) == ("direct", "account_id")
    assert any("billed_to" in n for n in invoices.notes)


def test_name_and_type_match_without_foreign_key_is_direct(empty_db: str) -> None:
    catalog = load_catalog(empty_db, ROOT_DDL + """
        CREATE TABLE orders (id bigint PRIMARY KEY, account_id bigint NOT NULL);
        CREATE TABLE sessions (id bigint PRIMARY KEY, tenant_id integer);
        CREATE TABLE jobs (id bigint PRIMARY KEY, org_ref bigint);
        CREATE TABLE tags (id bigint PRIMARY KEY, account_id text);
        CREATE TABLE order_lines (id bigint PRIMARY KEY, order_id bigint REFERENCES orders);
    """)
    graph = discover(catalog, "accounts", tenant_column="org_ref")
    orders = graph.tables[q("orders")]
    assert (orders.kind, orders.column) == ("direct", "account_id")
    assert "name and type (bigint) match" in orders.evidence
    assert orders.evidence.endswith("no foreign key")
    sessions = graph.tables[q("sessions")]
    assert (sessions.kind, sessions.column) == ("direct", "tenant_id")
    assert "type integer is compatible with bigint" in sessions.evidence
    jobs = graph.tables[q("jobs")]  # the playbook's own column name
    assert (jobs.kind, jobs.column) == ("direct", "org_ref")
    # Named like the key, typed otherwise: not direct, but not shared data either.
    tags = graph.tables[q("tags")]
    assert tags.kind == "needs_hint"
    assert any("type text does not match bigint" in n for n in tags.notes)
    # A child of an FK-less direct table derives through it.
    assert str(graph.tables[q("order_lines")].parent) == "order_id -> public.orders(id)"


def test_cycles_and_self_references_terminate(empty_db: str) -> None:
    catalog = load_catalog(empty_db, ROOT_DDL + """
        CREATE TABLE folders (id bigint PRIMARY KEY, parent_id bigint REFERENCES folders,
                              project_id bigint REFERENCES projects);
        CREATE TABLE docs (id bigint PRIMARY KEY, folder_id bigint REFERENCES folders,
                           latest_rev bigint);
        CREATE TABLE revs (id bigint PRIMARY KEY, doc_id bigint REFERENCES docs);
        ALTER TABLE docs ADD FOREIGN KEY (latest_rev) REFERENCES revs;
        CREATE TABLE ping (id bigint PRIMARY KEY, pong_id bigint);
        CREATE TABLE pong (id bigint PRIMARY KEY, ping_id bigint REFERENCES ping);
        ALTER TABLE ping ADD FOREIGN KEY (pong_id) REFERENCES pong;
        CREATE TABLE categories (id bigint PRIMARY KEY, parent_id bigint REFERENCES categories);
    """)
    started = time.perf_counter()
    graph = discover(catalog, "accounts")
    assert time.perf_counter() - started < 5
    assert [str(h) for h in graph.tables[q("folders")].path] == [
        "project_id -> public.projects(id)"]
    # docs <-> revs is a cycle: docs takes the way out through folders, revs through docs.
    assert [h.ref_table for h in graph.tables[q("docs")].path] == [q("folders"), q("projects")]
    assert [h.ref_table for h in graph.tables[q("revs")].path] == [
        q("docs"), q("folders"), q("projects")]
    # A cycle and a tree that reach no tenant end as global, without looping.
    assert graph.tables[q("ping")].kind == "global"
    assert graph.tables[q("pong")].kind == "global"
    assert graph.tables[q("categories")].kind == "global"


def test_composite_foreign_key_is_one_hop(empty_db: str) -> None:
    catalog = load_catalog(empty_db, ROOT_DDL + """
        CREATE TABLE orders (id bigint PRIMARY KEY, account_id bigint REFERENCES accounts);
        CREATE TABLE order_lines (order_id bigint REFERENCES orders, line_no int,
                                  PRIMARY KEY (order_id, line_no));
        CREATE TABLE line_notes (id bigint PRIMARY KEY, order_id bigint, line_no int,
                                 FOREIGN KEY (order_id, line_no) REFERENCES order_lines);
    """)
    graph = discover(catalog, "accounts")
    notes = graph.tables[q("line_notes")]
    assert notes.kind == "derived"
    assert len(notes.path) == 2
    hop = notes.path[0]
    assert (hop.columns, hop.ref_table, hop.ref_columns) == (
        ("order_id", "line_no"), q("order_lines"), ("order_id", "line_no"))
    parsed = ParentRef.parse(str(hop))
    assert parsed.columns == ("order_id", "line_no")
    assert parsed.ref_columns == ("order_id", "line_no")


def test_foreign_key_to_a_partitioned_table_is_one_hop(empty_db: str) -> None:
    # PostgreSQL also stores one clone of such a key per partition: they must not look
    # like more first hops (which would make the table ambiguous).
    catalog = load_catalog(empty_db, ROOT_DDL + """
        CREATE TABLE events (id bigint, at timestamptz, account_id bigint REFERENCES accounts,
                             PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
        CREATE TABLE events_a PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
        CREATE TABLE events_b PARTITION OF events FOR VALUES FROM ('2026-02-01') TO ('2026-03-01')
            PARTITION BY RANGE (at);
        CREATE TABLE events_b1 PARTITION OF events_b
            FOR VALUES FROM ('2026-02-01') TO ('2026-02-15');
        CREATE TABLE event_tags (event_id bigint, event_at timestamptz, tag text,
                                 FOREIGN KEY (event_id, event_at) REFERENCES events);
    """)
    assert len(catalog.tables[q("event_tags")].foreign_keys) > 1  # the clones are there
    graph = discover(catalog, "accounts")
    tags = graph.tables[q("event_tags")]
    assert tags.kind == "derived", tags.evidence
    assert [h.ref_table for h in tags.path] == [q("events")]
    events = graph.tables[q("events")]
    assert set(events.partitions) == {q("events_a"), q("events_b"), q("events_b1")}
    assert graph.classification_of(q("events_b1")).table == q("events")


def test_hint_candidates_one_to_one_polymorphic_and_chained(empty_db: str) -> None:
    catalog = load_catalog(empty_db, """
        CREATE TABLE countries (code char(2) PRIMARY KEY);
        CREATE TABLE billing_profiles (id bigint PRIMARY KEY, iban text);
        CREATE TABLE accounts (id bigint PRIMARY KEY,
                               country_code char(2) REFERENCES countries,
                               billing_profile_id bigint UNIQUE REFERENCES billing_profiles);
        CREATE TABLE issues (id bigint PRIMARY KEY, account_id bigint REFERENCES accounts);
        CREATE TABLE audit (id bigint PRIMARY KEY, issue_id bigint, what text);
        CREATE TABLE audit_details (id bigint PRIMARY KEY, audit_id bigint REFERENCES audit);
        CREATE TABLE likes (id bigint PRIMARY KEY, subject_type text, subject_id bigint);
        CREATE TABLE settings (key text PRIMARY KEY, value text);
    """)
    graph = discover(catalog, "accounts")
    assert graph.tables[q("countries")].kind == "global"
    assert graph.tables[q("settings")].kind == "global"
    assert "no tenant table references it" in graph.tables[q("settings")].evidence
    # Referenced one-to-one (unique column) by the root: the tenant's own row.
    billing = graph.tables[q("billing_profiles")]
    assert billing.kind == "needs_hint"
    assert [str(h) for h in billing.options] == ["id <- public.accounts(billing_profile_id)"]
    assert "one-to-one" in billing.options[0].evidence
    assert [str(h) for h in graph.tables[q("audit")].options] == [
        "issue_id -> public.issues(id)"]
    details = graph.tables[q("audit_details")]
    assert details.kind == "needs_hint"
    assert [str(h) for h in details.options] == ["audit_id -> public.audit(id)"]
    likes = graph.tables[q("likes")]
    assert likes.kind == "needs_hint"
    assert any("polymorphic reference subject_type + subject_id" in n for n in likes.notes)
    assert {h.ref_table for h in likes.options} == {q("accounts"), q("issues")}


def test_table_owned_by_the_app_role_is_warned(empty_db: str) -> None:
    role = f"rlsm_app_{uuid.uuid4().hex[:8]}"
    other = f"rlsm_view_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(empty_db, autocommit=True) as conn:
        for name in (role, other):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        try:
            conn.execute(ROOT_DDL.encode())
            conn.execute(b"CREATE TABLE countries (code text PRIMARY KEY)")
            conn.execute(b"CREATE VIEW project_names AS SELECT id, account_id FROM projects")
            # security_invoker needs PostgreSQL 15: before it, the same safe view is one
            # whose owner RLS applies to (account_names below).
            invoker = conn.info.server_version >= 150000
            if invoker:
                conn.execute(b"CREATE VIEW user_ids WITH (security_invoker = true) AS "
                             b"SELECT id FROM users")
            conn.execute(b"CREATE MATERIALIZED VIEW account_counts AS "
                         b"SELECT account_id, count(*) FROM users GROUP BY 1")
            conn.execute(b"CREATE VIEW country_codes AS SELECT code FROM countries")
            conn.execute(b"CREATE VIEW account_names AS SELECT id, name FROM accounts")
            for stmt in ("ALTER TABLE projects OWNER TO {}", "ALTER TABLE countries OWNER TO {}"):
                conn.execute(sql.SQL(stmt).format(sql.Identifier(role)))
            # A view owned by a role that is subject to RLS does not bypass it.
            conn.execute(sql.SQL("ALTER VIEW account_names OWNER TO {}").format(
                sql.Identifier(other)))
            catalog = Catalog.load(conn)
        finally:
            # Roles are cluster-wide: hand their objects back, then drop them.
            for stmt in ("REASSIGN OWNED BY {}, {} TO CURRENT_USER", "DROP OWNED BY {}, {}"):
                conn.execute(sql.SQL(stmt).format(sql.Identifier(role), sql.Identifier(other)))
            conn.execute(sql.SQL("DROP ROLE {}, {}").format(
                sql.Identifier(role), sql.Identifier(other)))
    graph = discover(catalog, "accounts", app_role=role)
    owned = [f for f in graph.warnings if f.code == "app_role_owns_table"]
    assert [f.subject for f in owned] == ["public.projects"]  # countries is global
    assert "FORCE ROW LEVEL SECURITY" in owned[0].message
    assert not [f for f in graph.warnings if f.code in ("app_role_superuser",
                                                        "app_role_bypassrls")]
    views = {str(v.view): v for v in graph.views}
    assert set(views) == {"public.project_names", "public.account_counts",
                          "public.account_names"} | ({"public.user_ids"} if invoker else set())
    # country_codes reads global data only
    assert views["public.project_names"].bypasses_rls
    if invoker:
        assert not views["public.user_ids"].bypasses_rls
    else:
        assert "security_invoker needs PostgreSQL 15" in views["public.project_names"].reason
    assert views["public.account_counts"].bypasses_rls
    assert "materialized" in views["public.account_counts"].reason
    assert not views["public.account_names"].bypasses_rls
    flagged = {f.subject for f in graph.warnings if f.code == "view_bypasses_rls"}
    assert flagged == {"public.project_names", "public.account_counts"}


def test_root_and_key_errors(empty_db: str) -> None:
    catalog = load_catalog(empty_db, ROOT_DDL + """
        CREATE TABLE orgs (region text, num int, PRIMARY KEY (region, num));
        CREATE TABLE members (id bigint PRIMARY KEY, org_num int, region text,
                              FOREIGN KEY (region, org_num) REFERENCES orgs);
    """)
    with pytest.raises(UsageError, match=r"public\.acounts not found.*did you mean.*accounts"):
        discover(catalog, "acounts")
    with pytest.raises(UsageError, match="composite primary key"):
        discover(catalog, "orgs")
    with pytest.raises(UsageError, match="has no column 'nope'"):
        discover(catalog, "accounts", key="nope")
    # An explicit key: orgs(num), integer, which the toolkit supports.
    graph = discover(catalog, "orgs", key="num")
    assert (graph.key, graph.key_type) == ("num", "integer")
    assert graph.tables[q("members")].kind == "derived"  # composite FK, not to (num) alone


# --------------------------------------------------------------------------- scale


def _generated_schema(direct: int = 200, derived: int = 799) -> str:
    """1 root, ``direct`` tables with account_id, ``derived`` tables in chains of up to 4
    hops below them (each chain link also has a self-reference)."""
    lines = ["CREATE TABLE accounts (id bigint PRIMARY KEY);"]
    for i in range(direct):
        lines.append(f"CREATE TABLE d{i} (id bigint PRIMARY KEY, "
                     f"account_id bigint REFERENCES accounts);")
    for j in range(derived):
        parent = f"d{j % direct}" if j % 4 == 0 else f"c{j - 1}"
        lines.append(f"CREATE TABLE c{j} (id bigint PRIMARY KEY, "
                     f"parent_id bigint REFERENCES {parent}, "
                     f"self_id bigint REFERENCES c{j});")
    return "\n".join(lines)


@pytest.mark.core_majors  # scale
def test_thousand_tables_classify_fast(empty_db: str) -> None:
    catalog = load_catalog(empty_db, "BEGIN;\n" + _generated_schema() + "\nCOMMIT;")
    assert len(catalog.tables) == 1000
    started = time.perf_counter()
    graph = discover(catalog, "accounts")
    elapsed = time.perf_counter() - started
    print(f"classified {len(graph.tables)} tables in {elapsed * 1000:.1f} ms")
    assert elapsed < 5  # a sanity bound; it takes milliseconds
    assert graph.counts() == {"root": 1, "direct": 200, "derived": 799, "ambiguous": 0,
                              "needs_hint": 0, "global": 0}
    assert len(graph.tables[q("c0")].path) == 1
    assert [h.ref_table.name for h in graph.tables[q("c3")].path] == ["c2", "c1", "c0", "d0"]
    assert max(len(c.path) for c in graph.tables.values()) == 4

