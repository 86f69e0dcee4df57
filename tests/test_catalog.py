"""The catalog snapshot on real servers: every hard case of the sample SaaS database, the
objects a rollout creates or trips over (policies, invalid indexes, publications), name
parsing, and a query count that does not grow with the number of tables."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rls_migrate import samples
from rls_migrate.catalog import Catalog, QualifiedName, split_qualified
from rls_migrate.testing import servers

Conn = psycopg.Connection[Any]


def q(name: str, schema: str = "public") -> QualifiedName:
    return QualifiedName(schema, name)


@pytest.fixture(scope="session")
def sample_factory(
    make_factory: Callable[..., servers.DatabaseFactory],
) -> servers.DatabaseFactory:
    return make_factory(lambda dsn: samples.load(dsn, scale=0.2), "sample")


@pytest.fixture
def sample_db(sample_factory: servers.DatabaseFactory) -> Iterator[str]:
    dsn = sample_factory.create()
    yield dsn
    sample_factory.drop(servers.dbname_of(dsn))


@pytest.fixture
def conn(sample_db: str) -> Iterator[Conn]:
    with psycopg.connect(sample_db, autocommit=True) as connection:
        yield connection


@pytest.fixture
def cat(conn: Conn) -> Catalog:
    return Catalog.load(conn)


# --------------------------------------------------------------------------- the sample DB


def test_sees_every_sample_table_view_and_the_server(cat: Catalog) -> None:
    expected = {q(t) for t in samples.SAMPLE_TABLES} | {q(p) for p in samples.EVENT_PARTITIONS}
    assert set(cat.tables) == expected
    assert set(cat.views) == {q(v) for v in samples.VIEWS}
    assert {t.qname for t in cat.user_tables} == {q(t) for t in samples.SAMPLE_TABLES}
    assert cat.current_user == "postgres"
    assert cat.database.startswith("sample_")
    assert cat.major >= 13
    assert cat.server_version_num // 10000 == cat.major
    assert cat.server_version.startswith(str(cat.major))
    assert cat.in_recovery is False
    assert cat.settings["track_functions"] == "pl"
    assert cat.settings["row_security"] == "on"
    # The sample's trigger function is a user function; plpgsql's own are extension objects.
    assert [(f.schema, f.name, f.language) for f in cat.functions] == [
        ("public", "touch_updated_at", "plpgsql")
    ]
    assert "plpgsql" in cat.extensions


def test_root_and_foreign_keys(cat: Catalog) -> None:
    accounts = cat.table(samples.TENANT_ROOT)
    assert accounts.primary_key == (samples.TENANT_KEY,)
    key = accounts.column(samples.TENANT_KEY)
    assert key is not None and key.type == "bigint" and key.identity and key.not_null
    assert [(fk.columns, fk.ref_table, fk.ref_columns) for fk in accounts.foreign_keys] == [
        (("country_code",), q("countries"), ("code",))
    ]
    for name in samples.DIRECT_TABLES:
        fks = cat.table(name).foreign_keys
        assert (("account_id",), q("accounts"), ("id",)) in [
            (fk.columns, fk.ref_table, fk.ref_columns) for fk in fks
        ], name
    assert {fk.table for fk in cat.referencing(q("accounts"))} >= {
        q(t) for t in samples.DIRECT_TABLES
    }
    assert all(fk.validated for t in cat.tables.values() for fk in t.foreign_keys)
    assert "REFERENCES accounts(id)" in cat.table("users").foreign_keys[0].definition


def test_composite_key_self_reference_and_quoted_names(cat: Catalog) -> None:
    issue_labels = cat.table("issue_labels")
    assert issue_labels.primary_key == ("issue_id", "label_id")
    assert sorted((fk.columns, fk.ref_table) for fk in issue_labels.foreign_keys) == [
        (("issue_id",), q("issues")),
        (("label_id",), q("labels")),
    ]
    comments = cat.table("comments")
    self_refs = [fk for fk in comments.foreign_keys if fk.ref_table == comments.qname]
    assert [(fk.columns, fk.ref_columns) for fk in self_refs] == [(("parent_id",), ("id",))]
    parent = comments.column("parent_id")
    assert parent is not None and not parent.not_null

    notes = cat.table('"Project Notes"')
    assert notes.qname == q("Project Notes")
    assert str(notes.qname) == 'public."Project Notes"'
    assert notes.qname.short == '"Project Notes"'
    assert notes.column_names == ("id", "projectId", "Body")
    assert [(fk.columns, fk.ref_table, fk.ref_columns) for fk in notes.foreign_keys] == [
        (("projectId",), q("projects"), ("id",))
    ]
    assert cat.find_table("Project Notes") is None  # unquoted blank: not a name
    assert cat.find_table("project_notes") is None
    assert cat.find_table("PUBLIC.ISSUES") is cat.table("issues")
    assert "public.issues" in cat.suggest("public.isues")
    with pytest.raises(KeyError, match="no table public.nope"):
        cat.table("nope")


def test_partitions_key_less_table_and_uuid_key(cat: Catalog) -> None:
    events = cat.table("events")
    assert events.is_partitioned and events.kind == "partitioned"
    assert events.partitions == tuple(q(p) for p in samples.EVENT_PARTITIONS)
    assert events.primary_key == ("id", "created_at")
    for index, name in enumerate(samples.EVENT_PARTITIONS, start=1):
        part = cat.table(name)
        assert part.is_partition and part.partition_of == q("events")
        assert not part.is_partitioned and part.partitions == ()
        assert part.partition_bound is not None
        assert part.partition_bound.startswith("FOR VALUES FROM ('2026-")
        assert f"2026-{index:02d}-01" in part.partition_bound
        # Partitions inherit the FK and get their own piece of the parent's primary key.
        assert [fk.ref_table for fk in part.foreign_keys] == [q("accounts")]
        assert [(i.parent_index, i.is_primary) for i in part.indexes] == [("events_pkey", True)]
    assert events.partition_of is None and events.partition_bound is None
    # The parent stores nothing itself: its size and estimate are its partitions'.
    assert events.size_bytes == sum(cat.table(p).size_bytes for p in samples.EVENT_PARTITIONS)
    assert events.size_bytes > 0
    assert events.row_estimate == samples.row_counts(0.2)["events"]

    audit = cat.table("audit_log")
    assert audit.primary_key is None
    assert audit.foreign_keys == () and audit.indexes == () and audit.constraints == ()
    assert audit.column_names == ("issue_id", "action", "at")

    attachments = cat.table("attachments")
    assert attachments.primary_key == ("id",)
    ident = attachments.column("id")
    assert ident is not None and ident.type == "uuid" and not ident.identity
    assert ident.default == "gen_random_uuid()"


def test_view_triggers_indexes_and_unique_email(cat: Catalog) -> None:
    view = cat.view("open_issues")
    assert (view.kind, view.security_invoker, view.security_barrier) == ("view", False, False)
    assert view.depends_on == (q("issues"),)
    assert view.owner == "postgres"
    assert "'open'" in view.definition

    for table in ("issues", "users"):
        triggers = cat.table(table).triggers
        assert [(t.name, t.timing, t.events, t.function, t.enabled) for t in triggers] == [
            (f"{table}_touch_updated_at", "BEFORE", ("UPDATE",), "public.touch_updated_at", "O")
        ]
        assert "FOR EACH ROW" in triggers[0].definition
    assert cat.table("comments").triggers == ()

    issues = cat.table("issues")
    idx = issues.index("issues_created_at_idx")
    assert idx is not None
    assert (idx.columns, idx.is_valid, idx.is_ready, idx.is_unique, idx.is_primary) == (
        ("created_at",), True, True, False, False)
    assert idx.method == "btree" and idx.predicate is None and idx.size_bytes > 0
    assert idx.definition.startswith("CREATE INDEX issues_created_at_idx ON public.issues")
    assert {i.name for i in issues.indexes} == {
        "issues_created_at_idx", "issues_pkey", "issues_project_id_idx"}

    users = cat.table("users")
    uniques = [c for c in users.constraints if c.kind == "u"]
    assert [(c.name, c.columns, c.index_name, c.validated) for c in uniques] == [
        ("users_email_key", ("email",), "users_email_key", True)
    ]
    email_idx = users.index("users_email_key")
    assert email_idx is not None and email_idx.is_unique and email_idx.columns == ("email",)
    # Global: no tenant column in the key.
    assert "account_id" not in email_idx.columns


def test_roles_owner_and_row_estimates(cat: Catalog) -> None:
    app = cat.role(samples.APP_ROLE)
    assert app is not None
    assert (app.superuser, app.bypassrls, app.login, app.createrole) == (False, False, True, False)
    admin = cat.role(samples.ADMIN_ROLE)
    assert admin is not None and not admin.superuser and not admin.bypassrls
    owner = cat.role("postgres")
    assert owner is not None and owner.superuser and owner.bypassrls
    assert not any(name.startswith("pg_") for name in cat.roles)

    assert {t.owner for t in cat.tables.values()} == {"postgres"}
    assert {t.qname for t in cat.owned_by("postgres")} == set(cat.tables)
    assert cat.owned_by(samples.APP_ROLE) == []
    assert cat.role_memberships(samples.APP_ROLE) == {samples.APP_ROLE}

    counts = samples.row_counts(0.2)
    for name in samples.SAMPLE_TABLES:
        table = cat.table(QualifiedName("public", name))
        # ANALYZE read every row of these small tables: the estimates are exact.
        assert table.row_estimate == counts[name], name
        assert table.size_bytes > 0, name
        assert table.rls_enabled is False and table.policies == ()
        assert table.replica_identity == "default"
    assert sum(cat.table(p).row_estimate for p in samples.EVENT_PARTITIONS) == counts["events"]
    assert all(cat.table(p).row_estimate > 0 for p in samples.EVENT_PARTITIONS)


# --------------------------------------------------------------------------- changes


def test_policies_and_rls_flags(conn: Conn) -> None:
    conn.execute(
        """
        ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
        ALTER TABLE projects FORCE ROW LEVEL SECURITY;
        CREATE POLICY tenant_isolation ON projects
            USING (account_id = current_setting('app.tenant_id')::bigint)
            WITH CHECK (account_id = current_setting('app.tenant_id')::bigint);
        CREATE POLICY app_reads ON projects AS RESTRICTIVE FOR SELECT TO app_user
            USING (name IS NOT NULL);
        ALTER TABLE labels ENABLE ROW LEVEL SECURITY;
        """
    )
    cat = Catalog.load(conn)
    projects = cat.table("projects")
    assert (projects.rls_enabled, projects.rls_forced) == (True, True)
    policies = {p.name: p for p in projects.policies}
    assert set(policies) == {"tenant_isolation", "app_reads"}
    iso = policies["tenant_isolation"]
    assert (iso.permissive, iso.command, iso.roles, iso.table) == (
        True, "ALL", ("public",), q("projects"))
    assert iso.using is not None and "current_setting('app.tenant_id'" in iso.using
    assert iso.with_check is not None and "account_id" in iso.with_check
    reads = policies["app_reads"]
    assert (reads.permissive, reads.command, reads.roles, reads.with_check) == (
        False, "SELECT", ("app_user",), None)
    assert reads.using == "(name IS NOT NULL)"

    labels = cat.table("labels")
    assert (labels.rls_enabled, labels.rls_forced, labels.policies) == (True, False, ())
    assert not cat.table("issues").rls_enabled


def test_failed_concurrent_index_is_seen_invalid(conn: Conn) -> None:
    # status has duplicates: the build fails and leaves an INVALID index behind.
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY issues_status_uniq ON issues (status)")
    cat = Catalog.load(conn)
    idx = cat.table("issues").index("issues_status_uniq")
    assert idx is not None
    assert (idx.is_valid, idx.is_unique, idx.columns) == (False, True, ("status",))
    valid = cat.table("issues").index("issues_created_at_idx")
    assert valid is not None and valid.is_valid


def test_unvalidated_constraints_and_trigger_kinds(conn: Conn) -> None:
    conn.execute(
        """
        ALTER TABLE audit_log ADD CONSTRAINT audit_issue_fk
            FOREIGN KEY (issue_id) REFERENCES issues NOT VALID;
        ALTER TABLE comments ADD CONSTRAINT body_not_empty CHECK (body <> '') NOT VALID;
        CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
        CREATE TRIGGER comments_changed AFTER INSERT OR UPDATE OR DELETE ON comments
            FOR EACH STATEMENT EXECUTE FUNCTION noop();
        CREATE TRIGGER comments_truncated AFTER TRUNCATE ON comments
            FOR EACH STATEMENT EXECUTE FUNCTION noop();
        ALTER TABLE comments DISABLE TRIGGER comments_truncated;
        """
    )
    cat = Catalog.load(conn)
    (fk,) = cat.table("audit_log").foreign_keys
    assert (fk.name, fk.columns, fk.ref_table, fk.validated) == (
        "audit_issue_fk", ("issue_id",), q("issues"), False)
    assert fk.definition.endswith("NOT VALID")
    check = {c.name: c for c in cat.table("comments").constraints}["body_not_empty"]
    assert (check.kind, check.validated, check.columns, check.index_name) == (
        "c", False, ("body",), None)
    triggers = {t.name: t for t in cat.table("comments").triggers}
    assert (triggers["comments_changed"].timing, triggers["comments_changed"].events) == (
        "AFTER", ("INSERT", "DELETE", "UPDATE"))
    assert (triggers["comments_truncated"].events, triggers["comments_truncated"].enabled) == (
        ("TRUNCATE",), "D")


def test_publications(conn: Conn) -> None:
    conn.execute("CREATE PUBLICATION rlsm_issues FOR TABLE issues, comments")
    conn.execute("CREATE PUBLICATION rlsm_empty")
    conn.execute("ALTER TABLE comments REPLICA IDENTITY FULL")
    cat = Catalog.load(conn)
    assert cat.publications == {"rlsm_issues": False, "rlsm_empty": False}
    assert cat.table("issues").publications == ("rlsm_issues",)
    assert cat.table("comments").publications == ("rlsm_issues",)
    assert cat.table("comments").replica_identity == "full"
    assert cat.table("users").publications == ()

    conn.execute("CREATE PUBLICATION rlsm_all FOR ALL TABLES")
    cat = Catalog.load(conn)
    assert cat.publications["rlsm_all"] is True
    assert cat.table("issues").publications == ("rlsm_all", "rlsm_issues")
    assert cat.table("users").publications == ("rlsm_all",)


def test_view_options_are_read_like_postgresql_reads_them(conn: Conn, cat: Catalog) -> None:
    if cat.major < 15:
        pytest.skip("security_invoker needs PostgreSQL 15")
    # Reloptions are stored as written; PostgreSQL's parse_bool accepts all of these.
    spellings = {"v_yes": "yes", "v_on": "on", "v_one": "1", "v_tr": "tr", "v_bare": None,
                 "v_no": "no", "v_off": "off", "v_zero": "0", "v_false": "false"}
    for view, value in spellings.items():
        option = "security_invoker" + (f" = {value}" if value else "")
        conn.execute(f"CREATE VIEW {view} WITH ({option}, security_barrier = y)"
                     " AS SELECT * FROM issues".encode())
    cat = Catalog.load(conn)
    seen = {name: cat.view(name).security_invoker for name in spellings}
    assert seen == {"v_yes": True, "v_on": True, "v_one": True, "v_tr": True, "v_bare": True,
                    "v_no": False, "v_off": False, "v_zero": False, "v_false": False}
    assert all(cat.view(name).security_barrier for name in spellings)


def test_non_ascii_names_fold_like_postgresql(empty_db: str) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE ÄBC (id int PRIMARY KEY)")  # unquoted: stored as Äbc
        cat = Catalog.load(conn)
    assert set(cat.tables) == {q("Äbc")}
    assert cat.table("ÄBC") is cat.table('"Äbc"')


def test_nested_partitions_add_up(empty_db: str) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE m (k int, d int) PARTITION BY LIST (k);
            CREATE TABLE m1 PARTITION OF m FOR VALUES IN (1) PARTITION BY RANGE (d);
            CREATE TABLE m1a PARTITION OF m1 FOR VALUES FROM (0) TO (100);
            CREATE TABLE m1b PARTITION OF m1 FOR VALUES FROM (100) TO (200);
            CREATE TABLE m2 PARTITION OF m FOR VALUES IN (2);
            INSERT INTO m SELECT 1 + i % 2, i % 200 FROM generate_series(1, 3000) i;
            """
        )
        unanalyzed = Catalog.load(conn)
        conn.execute("ANALYZE m")
        analyzed = Catalog.load(conn)
    for cat in (unanalyzed, analyzed):
        leaves = [cat.table(n) for n in ("m1a", "m1b", "m2")]
        assert cat.table("m").partitions == (q("m1"), q("m2"))
        assert cat.table("m1").partitions == (q("m1a"), q("m1b"))
        assert cat.table("m1").partition_of == q("m")
        assert cat.table("m").size_bytes == sum(t.size_bytes for t in leaves) > 0
    assert [analyzed.table(n).row_estimate for n in ("m", "m1", "m1a", "m1b", "m2")] == [
        3000, 1500, 750, 750, 1500]


def test_schema_filters_and_the_toolkit_schema(empty_db: str) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE a (id int);
            CREATE SCHEMA other; CREATE TABLE other.b (id int);
            CREATE SCHEMA rls_migrate; CREATE TABLE rls_migrate.journal (id int);
            CREATE TEMP TABLE scratch (id int);
            """
        )
        assert set(Catalog.load(conn).tables) == {q("a"), q("b", "other")}
        assert set(Catalog.load(conn, include_toolkit_schema=True).tables) == {
            q("a"), q("b", "other"), q("journal", "rls_migrate")}
        assert set(Catalog.load(conn, schemas=["other"]).tables) == {q("b", "other")}


# --------------------------------------------------------------------------- query count


def chain_ddl(n: int) -> bytes:
    """``n`` tables, each with a primary key, a foreign key to the one before, an index and
    a unique constraint: one script, run in one go."""
    lines = ["CREATE TABLE t0000 (id bigint PRIMARY KEY, code int UNIQUE, parent_id bigint);"]
    for i in range(1, n):
        lines.append(
            f"CREATE TABLE t{i:04d} (id bigint PRIMARY KEY, code int UNIQUE,"
            f" parent_id bigint REFERENCES t{i - 1:04d});"
            f" CREATE INDEX t{i:04d}_parent_idx ON t{i:04d} (parent_id);"
        )
    return "\n".join(lines).encode()


@pytest.mark.core_majors  # scale
def test_query_count_does_not_grow_with_table_count(
    empty_factory: servers.DatabaseFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    small_dsn, big_dsn = empty_factory.create(), empty_factory.create()
    try:
        with psycopg.connect(small_dsn, autocommit=True) as conn:
            conn.execute(chain_ddl(10))
            small = Catalog.load(conn)
        with psycopg.connect(big_dsn, autocommit=True) as conn:
            conn.execute(chain_ddl(1_000))
            started = time.perf_counter()
            big = Catalog.load(conn)
            elapsed = time.perf_counter() - started
    finally:
        empty_factory.drop(servers.dbname_of(small_dsn))
        empty_factory.drop(servers.dbname_of(big_dsn))

    assert (len(small.tables), len(big.tables)) == (10, 1_000)
    assert small.queries_run == big.queries_run
    last = big.table("t0999")
    assert [(fk.columns, fk.ref_table) for fk in last.foreign_keys] == [
        (("parent_id",), q("t0998"))]
    assert {i.name for i in last.indexes} == {"t0999_pkey", "t0999_code_key", "t0999_parent_idx"}
    assert sum(len(t.foreign_keys) for t in big.tables.values()) == 999
    assert len(big.referencing(q("t0000"))) == 1
    with capsys.disabled():
        print(f"\nCatalog.load: 1,000 tables in {elapsed:.2f} s, {big.queries_run} queries "
              f"(PostgreSQL {big.major})")
    assert elapsed < 30, f"loading 1,000 tables took {elapsed:.1f} s"


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("issues", q("issues")),
        ("Issues", q("issues")),
        ("public.issues", q("issues")),
        ("APP.Issues", q("issues", "app")),
        ('"Project Notes"', q("Project Notes")),
        ('public."Project Notes"', q("Project Notes")),
        ('"my.schema"."t"', q("t", "my.schema")),
        ('"MixedCase"', q("MixedCase")),
        ('"a""b"', q('a"b')),
        ('""""', q('"')),
        ("  public . issues  ", q("issues")),
        ('"with space".x', q("x", "with space")),
        ("t$1", q("t$1")),
        ("ÄBC", q("Äbc")),
    ],
)
def test_parse(text: str, expected: QualifiedName) -> None:
    assert QualifiedName.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty name part"),
        ("   ", "empty name part"),
        (".", "empty name part"),
        (".issues", "empty name part"),
        ("public.", "empty name part"),
        ("a..b", "empty name part"),
        ('"open', "unterminated"),
        ('public."open', "unterminated"),
        ("Project Notes", "unquoted blank"),
        ('""', "zero-length"),
        ('public.""', "zero-length"),
        ('"a"b', "after a quoted name"),
        ('a"b"', "quote in the middle"),
        ("a.b.c", "not a table name"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QualifiedName.parse(text)


def test_split_qualified_and_display() -> None:
    assert split_qualified("a.b.c") == ["a", "b", "c"]
    assert split_qualified('"A"."B"') == ["A", "B"]
    assert QualifiedName.parse("x", default_schema="app") == q("x", "app")
    assert str(q("issues")) == "public.issues"
    assert str(q('a"b', "My Schema")) == '"My Schema"."a""b"'
    assert q("issues").short == "issues"
    assert q("t", "app").short == "app.t"


@given(schema=st.text(min_size=1, max_size=12), name=st.text(min_size=1, max_size=12))
def test_display_round_trips(schema: str, name: str) -> None:
    qname = QualifiedName(schema, name)
    assert QualifiedName.parse(str(qname)) == qname
    assert QualifiedName.parse(qname.short, default_schema=schema) == qname


def test_parse_column_quoted_unquoted_and_as_written() -> None:
    from rls_migrate.catalog import parse_column

    assert parse_column('"organisationId"') == "organisationId"
    assert parse_column('"a""b"') == 'a"b'
    assert parse_column("organisationId") == "organisationId"  # bare: not folded
    assert parse_column("trail ") == "trail "  # bare: a trailing space is part of the name
    with pytest.raises(ValueError, match="one column name"):
        parse_column('"s"."t"')
