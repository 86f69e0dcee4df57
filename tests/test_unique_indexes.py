"""Unique indexes (``CREATE UNIQUE INDEX``, as Rails and Prisma emit; partial and expression
ones too) are global uniques like UNIQUE constraints: plan lists them in its risks and verify
reports them, on every major, on a Rails-shaped schema that is not the sample (an integer
root key, bigint tenant columns, no constraint behind the uniques, quoted mixed-case names)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from rls_migrate import samples
from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.errors import PlaybookError
from rls_migrate.planner import build_plan
from rls_migrate.playbook import parse_playbook
from rls_migrate.stages.common import global_uniques
from rls_migrate.verify.model import VerifyContext
from rls_migrate.verify.rules import global_unique_constraint

APP = samples.APP_ROLE
CURRENT = "NULLIF(current_setting('app.tenant_id', true), '')::bigint"

SCHEMA = f"""
CREATE TABLE accounts (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE articles (id bigserial PRIMARY KEY, account_id bigint NOT NULL,
                       slug text NOT NULL, title text NOT NULL, deleted_at timestamptz);
CREATE UNIQUE INDEX index_articles_on_slug ON articles (slug);
CREATE UNIQUE INDEX index_articles_on_lower_title ON articles (lower(title))
    WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX index_articles_on_account_id_and_id ON articles (account_id, id);
CREATE TABLE "Document" (id text PRIMARY KEY, "accountId" bigint NOT NULL
                         REFERENCES accounts(id), "externalId" text);
CREATE UNIQUE INDEX "Document_externalId_key" ON "Document" ("externalId");
CREATE UNIQUE INDEX index_accounts_on_name ON accounts (name);
CREATE TABLE teams (id bigserial PRIMARY KEY, account_id bigint NOT NULL REFERENCES accounts,
                    url text NOT NULL);
CREATE UNIQUE INDEX index_teams_on_url ON teams (url);
CREATE TABLE tags (id bigserial PRIMARY KEY, team_id bigint NOT NULL REFERENCES teams,
                   name text NOT NULL);
CREATE UNIQUE INDEX index_tags_on_team_id_and_name ON tags (team_id, name);
ALTER TABLE articles ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant ON articles USING (account_id = {CURRENT})
    WITH CHECK (account_id = {CURRENT});
GRANT SELECT, INSERT ON articles TO {APP};
GRANT USAGE ON SEQUENCE articles_id_seq TO {APP};
INSERT INTO accounts VALUES (1, 'one'), (2, 'two');
INSERT INTO articles (account_id, slug, title) VALUES (1, 'welcome', 'Welcome');
"""

PLAYBOOK = f"""
version: 1
tenant: {{table: public.accounts, key: id, key_type: integer}}
roles: {{app: {APP}}}
tables:
  public.accounts: {{strategy: root, column: id}}
  public.articles: {{strategy: direct, column: account_id}}
  'public."Document"': {{strategy: direct, column: '"accountId"'}}  # SQL's syntax
  public.teams: {{strategy: direct, column: account_id}}
  public.tags: {{strategy: derive, parent: team_id -> public.teams(id)}}
"""


@pytest.fixture
def catalog(empty_db: str) -> Catalog:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        samples.ensure_roles(conn)
        conn.execute(SCHEMA)  # type: ignore[arg-type, unused-ignore]
        return Catalog.load(conn)


def test_unique_indexes_are_global_uniques(catalog: Catalog) -> None:
    articles = catalog.table("public.articles")
    found = {u.name: u for u in global_uniques(articles, "account_id")}
    # The one that holds the tenant column is tenant-scoped already.
    assert sorted(found) == ["index_articles_on_lower_title", "index_articles_on_slug"]
    assert str(found["index_articles_on_slug"]) == "index_articles_on_slug unique index (slug)"
    partial = found["index_articles_on_lower_title"]
    assert partial.keys == ("lower(title)",) and partial.columns == ()
    assert partial.predicate == "(deleted_at IS NULL)"
    assert partial.suggestion == "index_articles_on_lower_title"
    document = catalog.table('public."Document"')
    (doc,) = global_uniques(document, "accountId")
    assert (doc.keys, doc.suggestion) == (('"externalId"',), '"externalId"')


def test_plan_and_verify_report_them(empty_db: str, catalog: Catalog) -> None:
    playbook = parse_playbook(PLAYBOOK)
    plan = build_plan(catalog, playbook, ["observe"])
    risks = [r for r in plan.risks if "is global" in r]
    assert any(r.startswith("public.articles: index_articles_on_slug unique index (slug) is "
                            "global") and "tenant_unique: [[slug]]" in r for r in risks), risks
    assert any("index_articles_on_lower_title unique index (lower(title)) WHERE (deleted_at "
               "IS NULL)" in r for r in risks), risks
    assert any(r.startswith('public."Document": "Document_externalId_key" unique index '
                            '("externalId") is global') and 'tenant_unique: [["externalId"]]' in r
               for r in risks), risks
    assert not any("index_articles_on_account_id_and_id" in r for r in risks)
    # Unique within a tenant-scoped parent (a team): within the tenant too, not a risk; nor
    # is the root's own (a tenant's name is global by design). A team's URL is.
    assert not any("index_tags_on_team_id_and_name" in r or "index_accounts_on_name" in r
                   for r in risks), risks
    assert any(r.startswith("public.teams: index_teams_on_url unique index (url)")
               for r in risks), risks

    # As tenant 2, under RLS, another tenant's slug collides: the unique index reveals it.
    with psycopg.connect(empty_db) as conn:
        conn.execute(f"SET ROLE {APP}")
        conn.execute("SELECT set_config('app.tenant_id', '2', true)")
        assert conn.execute("SELECT count(*) FROM articles").fetchone() == (0,)
        with pytest.raises(psycopg.errors.UniqueViolation, match="index_articles_on_slug"):
            conn.execute("INSERT INTO articles (account_id, slug, title)"
                         " VALUES (2, 'welcome', 'Hello')")

    # ... and verify says so, naming the index and what to write in the playbook.
    findings = {f.subject: f for f in global_unique_constraint.check(
        VerifyContext(catalog, playbook))}
    article = findings[str(QualifiedName("public", "articles"))]
    assert article.status == "warn"
    assert "index_articles_on_slug unique index (slug)" in article.message
    assert "tenant_unique: [[slug]]" in article.message
    assert "tenant_unique: [[index_articles_on_lower_title]]" in article.message
    assert findings['public."Document"'].status == "warn"
    assert findings["public.accounts"].status == "pass"


def test_playbook_columns_in_sql_syntax() -> None:
    playbook = parse_playbook(PLAYBOOK)
    plan = playbook.plan_for(QualifiedName("public", "Document"))
    assert plan is not None and plan.column == "accountId"
    with pytest.raises(PlaybookError, match="unterminated quoted name"):
        parse_playbook(PLAYBOOK.replace("""'"accountId"'""", """'"accountId'"""))


def test_constraint_backed_index_is_reported_once(empty_db: str) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, tenant_id int, email text UNIQUE)")
        table = Catalog.load(conn).table("public.t")
    uniques: list[Any] = global_uniques(table, "tenant_id")
    assert [(u.name, u.what) for u in uniques] == [("t_email_key", "constraint")]


def test_tenant_unique_on_unique_indexes_and_rollback(empty_db: str, catalog: Catalog) -> None:
    """tenant_unique by columns (a plain unique index) and by name (a partial expression
    index, a quoted one): the index stage builds them tenant-led, keeping the predicate and
    the expression, drops the global ones; tenant 2 can then use tenant 1's slug; a rollback
    builds the global ones again exactly."""
    from rls_migrate.runner import apply_stage, rollback_to

    text = PLAYBOOK.replace(
        "public.articles: {strategy: direct, column: account_id}",
        "public.articles: {strategy: direct, column: account_id, tenant_unique: "
        "[[slug], [index_articles_on_lower_title]]}").replace(
        "{strategy: direct, column: '\"accountId\"'}",
        "{strategy: direct, column: accountId, tenant_unique: ['\"Document_externalId_key\"']}")
    playbook = parse_playbook(text)

    def definitions() -> dict[str, str]:
        with psycopg.connect(empty_db) as conn:
            rows = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname ="
                                " 'public' AND indexdef LIKE 'CREATE UNIQUE%'").fetchall()
        return dict(rows)

    before = definitions()
    for stage in ("prepare", "add-column", "backfill", "constrain", "index"):
        result = apply_stage(empty_db, playbook, stage).result
        assert result.failed == 0, (stage, result)
    after = definitions()
    assert "index_articles_on_slug" not in after
    assert "index_articles_on_lower_title" not in after
    assert "Document_externalId_key" not in after
    assert after["index_articles_on_lower_title_rlsm_tenant"] == (
        "CREATE UNIQUE INDEX index_articles_on_lower_title_rlsm_tenant ON public.articles "
        "USING btree (account_id, lower(title)) WHERE (deleted_at IS NULL)")
    assert "(account_id, slug)" in after["index_articles_on_slug_rlsm_tenant"]
    assert '("accountId", "externalId")' in after["Document_externalId_key_rlsm_tenant"]

    with psycopg.connect(empty_db) as conn:
        assert not [u for u in global_uniques(Catalog.load(conn).table("public.articles"),
                                              "account_id")]
        conn.execute(f"SET ROLE {APP}")
        conn.execute("SELECT set_config('app.tenant_id', '2', false)")
        conn.execute("INSERT INTO articles (account_id, slug, title)"
                     " VALUES (2, 'welcome', 'Welcome')")  # tenant 1's slug: no collision
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO articles (account_id, slug, title)"
                         " VALUES (2, 'welcome', 'Other')")
        conn.rollback()

    rollback_to(empty_db, playbook, "constrain")
    assert definitions() == before



def test_tenant_unique_naming_nothing_unique_is_one_clear_error(catalog: Catalog) -> None:
    for wanted, message in (
            ("[index_articles_on_slgu]", r"tables\.public\.articles\.tenant_unique: table "
             r"public\.articles has no column, unique index or unique constraint "
             r"'index_articles_on_slgu' \(did you mean index_articles_on_slug"),
            ("[articles_pkey]", r"articles_pkey is the primary key")):
        playbook = parse_playbook(PLAYBOOK.replace(
            "public.articles: {strategy: direct, column: account_id}",
            f"public.articles: {{strategy: direct, column: account_id, tenant_unique: {wanted}}}"))
        with pytest.raises(PlaybookError, match=message):
            build_plan(catalog, playbook, ["index"])
