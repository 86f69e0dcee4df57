"""``init``'s playbook writer: the generated YAML parses, says why, leaves TODOs where a
person must decide, and matches the database once they are decided."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psycopg
import pytest
import yaml
from plan_helpers import load_catalog, q
from psycopg import sql

from rls_migrate import samples
from rls_migrate.catalog import Catalog, QualifiedName, Role
from rls_migrate.discover import discover
from rls_migrate.errors import PlaybookError, UsageError
from rls_migrate.init import build_playbook_yaml, guess_app_role, write_playbook
from rls_migrate.playbook import Playbook, parse_playbook
from rls_migrate.playbook_check import check_against_catalog
from rls_migrate.testing import servers

AUDIT_HINT = "issue_id -> public.issues(id)"


@pytest.fixture(scope="module")
def sample_catalog(make_factory: Callable[..., servers.DatabaseFactory]) -> Iterator[Catalog]:
    factory = make_factory(lambda dsn: samples.load(dsn, scale=0.05, seed=11), prefix="init")
    dsn = factory.create()
    yield load_catalog(dsn)
    factory.drop(servers.dbname_of(dsn))


@pytest.fixture(scope="module")
def sample_yaml(sample_catalog: Catalog) -> str:
    graph = discover(sample_catalog, samples.TENANT_ROOT, app_role=samples.APP_ROLE)
    return build_playbook_yaml(graph, sample_catalog, app_role=samples.APP_ROLE)


def comment_text(text: str) -> str:
    """The comments of a playbook as one line (wrapping may split a phrase)."""
    return " ".join(line.strip().lstrip("#").strip() for line in text.splitlines()
                    if line.lstrip().startswith("#"))


def resolve(text: str, table: str, plan: dict[str, Any]) -> str:
    """The playbook with one table's entry replaced, as a user would edit it."""
    data = yaml.safe_load(text)
    data["tables"][table] = plan
    return yaml.safe_dump(data, sort_keys=False)


# --------------------------------------------------------------------------- the sample DB


def test_sample_playbook_parses_with_every_decision(sample_yaml: str) -> None:
    playbook = parse_playbook(sample_yaml)
    assert playbook.tenant.table == "public.accounts"
    assert (playbook.tenant.key, playbook.tenant.key_type) == ("id", "bigint")
    assert (playbook.tenant.column, playbook.tenant.setting) == ("tenant_id", "app.tenant_id")
    assert playbook.roles.app == samples.APP_ROLE
    assert playbook.dsn_env == "DATABASE_URL"
    assert playbook.schemas == ("public",)
    names = {name for name, _ in playbook.table_plans()}
    assert names == {q(t) for t in samples.SAMPLE_TABLES}  # partitions are not listed

    def plan(name: str) -> Any:
        found = playbook.plan_for(q(name))
        assert found is not None, name
        return found

    assert (plan("accounts").strategy, plan("accounts").column) == ("root", "id")
    for name in samples.DIRECT_TABLES:
        assert (plan(name).strategy, plan(name).column) == ("direct", "account_id"), name
    for name, via in samples.DERIVED_TABLES.items():
        assert plan(name).strategy == "derive", name
        assert plan(name).parent.qname == q(via[0]), name
    assert str(plan("comments").parent) == "issue_id -> public.issues(id)"
    assert str(plan("issue_labels").parent) == "label_id -> public.labels(id)"
    assert plan("Project Notes").parent.columns == ("projectId",)
    for name in samples.GLOBAL_TABLES:
        assert plan(name).strategy == "global"
    audit = plan("audit_log")
    assert audit.strategy == "TODO"
    assert audit.options == (AUDIT_HINT,)
    assert audit.note and "strategy hint" in audit.note


def test_sample_playbook_explains_each_decision(sample_yaml: str) -> None:
    text = comment_text(sample_yaml)
    assert "foreign key users_account_id_fkey: account_id -> public.accounts(id)" in text
    assert "3 hops: attachments -> comments -> issues -> projects" in text
    assert "self-reference comments_parent_id_fkey" in text
    assert "looked up by public.accounts(country_code)" in text
    assert "name and type (bigint) match, no foreign key" in text  # audit_log's candidate
    assert "partitioned: its partitions follow it" in text
    assert "rows: ~" in text
    assert "view public.open_issues reads tenant tables public.issues" in text
    assert "decide the 1 TODO entry" in text
    # A table name that needs quotes is a quoted YAML key.
    assert "'public.\"Project Notes\"':" in sample_yaml


def test_sample_playbook_matches_the_database_once_the_todo_is_decided(
    sample_yaml: str, sample_catalog: Catalog
) -> None:
    with pytest.raises(PlaybookError) as raised:
        check_against_catalog(parse_playbook(sample_yaml), sample_catalog)
    assert "undecided (TODO) tables: 1; decide each one in the playbook:\n" \
        "    - public.audit_log: " in raised.value.message
    assert AUDIT_HINT in raised.value.message

    decided = resolve(sample_yaml, "public.audit_log", {"strategy": "hint", "parent": AUDIT_HINT})
    playbook = parse_playbook(decided)
    check_against_catalog(playbook, sample_catalog)  # raises on any mismatch
    assert playbook.tenant_column(q("audit_log")) == "tenant_id"


def test_sample_app_role_is_left_to_decide_when_several_fit(sample_catalog: Catalog) -> None:
    graph = discover(sample_catalog, "public.accounts")
    text = build_playbook_yaml(graph, sample_catalog, app_role=None)
    playbook = parse_playbook(text)
    assert playbook.roles.app == "TODO"
    guess, candidates = guess_app_role(graph, sample_catalog)
    assert guess is None
    assert {samples.APP_ROLE, samples.ADMIN_ROLE} <= set(candidates)
    assert sample_catalog.current_user not in candidates  # the owner and superuser
    assert ("could not guess it: candidates (login, no superuser, no BYPASSRLS, own no "
            f"table): {', '.join(candidates)}") in comment_text(text)


def test_one_plausible_role_is_guessed(sample_catalog: Catalog) -> None:
    roles = {
        "owner": Role("owner", True, True, True, True, True, ()),
        "web": Role("web", False, False, True, False, True, ()),
        "group_only": Role("group_only", False, False, False, False, True, ()),
        "etl": Role("etl", False, True, True, False, True, ()),
    }
    tables = {qname: dataclasses.replace(t, owner="owner")
              for qname, t in sample_catalog.tables.items()}
    catalog = dataclasses.replace(sample_catalog, roles=MappingProxyType(roles),
                                  tables=MappingProxyType(tables), current_user="owner")
    graph = discover(catalog, "public.accounts")
    assert guess_app_role(graph, catalog) == ("web", ["web"])
    text = build_playbook_yaml(graph, catalog, app_role=None)
    assert parse_playbook(text).roles.app == "web"
    assert "guessed: the only login role" in comment_text(text)


def test_options_reach_the_playbook(sample_catalog: Catalog) -> None:
    graph = discover(sample_catalog, "public.accounts", tenant_column="org_id")
    text = build_playbook_yaml(graph, sample_catalog, app_role="app_user", dsn_env="APP_DSN",
                               column="org_id", setting="acme.org")
    playbook = parse_playbook(text)
    assert (playbook.dsn_env, playbook.tenant.column, playbook.tenant.setting) == (
        "APP_DSN", "org_id", "acme.org")
    with pytest.raises(UsageError, match="tenant.setting"):
        build_playbook_yaml(graph, sample_catalog, app_role="app_user", setting="nodot")
    with pytest.raises(UsageError, match="dsn_env"):
        build_playbook_yaml(graph, sample_catalog, app_role="app_user",
                            dsn_env="postgresql://u:p@h/db")


# --------------------------------------------------------------------------- small schemas


def test_ambiguous_table_is_a_todo_with_both_options(empty_db: str) -> None:
    catalog = load_catalog(empty_db, """
        CREATE TABLE accounts (id uuid PRIMARY KEY);
        CREATE TABLE users (id bigint PRIMARY KEY, account_id uuid REFERENCES accounts);
        CREATE TABLE projects (id bigint PRIMARY KEY, account_id uuid REFERENCES accounts);
        CREATE TABLE tasks (id bigint PRIMARY KEY, project_id bigint REFERENCES projects,
                            owner_id bigint REFERENCES users);
        CREATE TABLE transfers (id bigint PRIMARY KEY, src uuid REFERENCES accounts,
                                dst uuid REFERENCES accounts);
    """)
    graph = discover(catalog, "accounts")
    text = build_playbook_yaml(graph, catalog, app_role=catalog.current_user)
    playbook = parse_playbook(text)
    assert playbook.tenant.key_type == "uuid"
    tasks = playbook.plan_for(q("tasks"))
    assert tasks is not None and tasks.strategy == "TODO"
    assert set(tasks.options) == {"project_id -> public.projects(id)",
                                  "owner_id -> public.users(id)"}
    assert tasks.note and "strategy derive" in tasks.note
    transfers = playbook.plan_for(q("transfers"))
    assert transfers is not None and transfers.strategy == "TODO"
    assert transfers.note and "strategy direct" in transfers.note
    # One line per TODO and per option, not one long line.
    with pytest.raises(PlaybookError, match=r"(?s)\n    - public\.tasks: [^\n]*\n        option: "
                                            r"[^\n]*\n.*\n    - public\.transfers: "):
        check_against_catalog(playbook, catalog)
    decided = resolve(text, "public.tasks",
                      {"strategy": "derive", "parent": "project_id -> public.projects(id)"})
    decided = resolve(decided, "public.transfers", {"strategy": "direct", "column": "src"})
    check_against_catalog(parse_playbook(decided), catalog)


def test_hostile_names_are_quoted(empty_db: str) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(b'CREATE SCHEMA "Sales"')
        conn.execute(b'CREATE TABLE "Sales"."Accounts" (id bigint PRIMARY KEY)')
        weird = 'odd "name"\nwith: yaml # stuff'
        conn.execute(sql.SQL(
            'CREATE TABLE "Sales".{} ("on" bigint REFERENCES "Sales"."Accounts", '
            '"tenant_id" text)').format(sql.Identifier(weird)))
        conn.execute(sql.SQL(
            'CREATE TABLE "Sales".yes (id bigint PRIMARY KEY, {} bigint REFERENCES '
            '"Sales"."Accounts")').format(sql.Identifier("null")))
        conn.execute(b'CREATE TABLE "Sales".child (id bigint PRIMARY KEY, '
                     b'"Yes Id" bigint REFERENCES "Sales".yes)')
        catalog = Catalog.load(conn)
    graph = discover(catalog, QualifiedName("Sales", "Accounts"))
    text = build_playbook_yaml(graph, catalog, app_role=catalog.current_user)
    playbook = parse_playbook(text)
    check_against_catalog(playbook, catalog)  # every name resolves back to the database
    assert playbook.schemas == ("Sales",)
    odd = playbook.plan_for(QualifiedName("Sales", weird))
    assert odd is not None and (odd.strategy, odd.column) == ("direct", "on")
    yes = playbook.plan_for(QualifiedName("Sales", "yes"))
    assert yes is not None and yes.column == "null"
    child = playbook.plan_for(QualifiedName("Sales", "child"))
    assert child is not None and child.parent is not None
    assert child.parent.columns == ("Yes Id",)
    # The newline in the table name did not end a comment and start YAML.
    assert all(not line.startswith("with: yaml") for line in text.splitlines())


def test_unsupported_key_type_is_refused(empty_db: str) -> None:
    catalog = load_catalog(empty_db, "CREATE TABLE accounts (id numeric PRIMARY KEY);")
    graph = discover(catalog, "accounts")
    assert [f.code for f in graph.warnings] == ["key_type_unsupported"]
    with pytest.raises(UsageError, match="numeric; supported key types: bigint"):
        build_playbook_yaml(graph, catalog, app_role="app")


# --------------------------------------------------------------------------- writing


def test_write_playbook_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "playbooks" / "app.yaml"
    assert write_playbook(target, "version: 1\n") == target  # the folder is created
    assert target.read_text() == "version: 1\n"
    with pytest.raises(UsageError, match=r"app\.yaml already exists.*--force"):
        write_playbook(target, "other\n")
    assert target.read_text() == "version: 1\n"
    write_playbook(target, "replaced\n", force=True)
    assert target.read_text() == "replaced\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["app.yaml"]  # no temp left
    with pytest.raises(UsageError, match="is a folder"):
        write_playbook(tmp_path, "x\n", force=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="cannot write"):
        write_playbook(tmp_path / "file" / "app.yaml", "x\n")  # a file where a folder must be


def test_written_playbook_loads(tmp_path: Path, sample_yaml: str) -> None:
    from rls_migrate.playbook import load_playbook

    path = write_playbook(tmp_path / "app.yaml", sample_yaml)
    assert isinstance(load_playbook(path), Playbook)


def test_admin_example_lists_roles_with_privileges_only(empty_db: str) -> None:
    """The commented admin: example names login roles granted privileges on the tenant
    tables (directly or through a group), not the cluster's unrelated roles."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        samples.ensure_roles(conn)
        for role in ("rlsm_t_reporter", "rlsm_t_support", "rlsm_t_other_app"):
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'rlsm_t_readers'"
                            ).fetchone():
            conn.execute("CREATE ROLE rlsm_t_readers NOLOGIN")
        conn.execute("GRANT rlsm_t_readers TO rlsm_t_support")
        conn.execute("CREATE TABLE accounts (id bigint PRIMARY KEY)")
        conn.execute("CREATE TABLE invoices (id bigint PRIMARY KEY,"
                     " account_id bigint NOT NULL REFERENCES accounts)")
        conn.execute(f"GRANT SELECT, INSERT ON accounts, invoices TO {samples.APP_ROLE}")
        conn.execute("GRANT SELECT ON invoices TO rlsm_t_reporter")
        conn.execute("GRANT SELECT ON accounts TO rlsm_t_readers")
        catalog = Catalog.load(conn)
    graph = discover(catalog, "accounts")
    text = build_playbook_yaml(graph, catalog, app_role=samples.APP_ROLE)
    assert "  # admin: [rlsm_t_reporter, rlsm_t_support]" in text
    assert "rlsm_t_other_app" not in text
    assert catalog.table("public.invoices").grantees == (samples.APP_ROLE, "rlsm_t_reporter")
