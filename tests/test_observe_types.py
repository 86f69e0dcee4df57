"""Observe and enforce on tenant columns whose type differs from the root key's (issue 17
item 1): a Rails-style ``accounts.id integer`` with ``account_id bigint`` and ``smallint``
columns, and a ``text`` root key (cuid-like and uuid-shaped values) with ``uuid`` and
``varchar`` tenant columns. Observe used to crash with ``function
rls_migrate.observe_r_account_users(bigint, name) does not exist``; now every statement runs,
records what it should, and enforce filters with each column's own type."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from rls_migrate.playbook import Playbook, parse_playbook
from rls_migrate.runner import apply_stage

APP = "typed_app"
STAGES = ("prepare", "add-column", "backfill", "constrain", "index", "observe")
ORG_A = "7c0f6f0e-3d7b-4f59-9a53-1f0e6b1c2a10"
ORG_B = "0b6c1f4e-8a2d-4c9e-b1f3-5d7e9a0c4b21"
CUID = "ckz9x1abc0000qwerty"

INTEGERS = f"""
CREATE TABLE accounts (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE account_users (id bigserial PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts (id), email text NOT NULL);
CREATE TABLE tags (id serial PRIMARY KEY, account_id smallint NOT NULL, name text NOT NULL);
INSERT INTO accounts SELECT g, 'a' || g FROM generate_series(1, 3) g;
INSERT INTO account_users (account_id, email)
    SELECT 1 + g % 3, 'u' || g || '@x' FROM generate_series(1, 300) g;
INSERT INTO tags (account_id, name) SELECT 1 + g % 3, 't' || g FROM generate_series(1, 90) g;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {APP};
"""
INTEGER_PLAYBOOK = f"""
tenant: {{table: public.accounts, key: id, key_type: bigint}}
roles: {{app: {APP}}}
tables:
  public.accounts: {{strategy: root, column: id}}
  public.account_users: {{strategy: direct, column: account_id}}
  public.tags: {{strategy: direct, column: account_id}}
"""

TEXTS = f"""
CREATE TABLE orgs (id text PRIMARY KEY, name text NOT NULL);
CREATE TABLE members (id serial PRIMARY KEY, org_id uuid NOT NULL, name text NOT NULL);
CREATE TABLE docs (id serial PRIMARY KEY,
    org_id varchar(40) NOT NULL REFERENCES orgs (id), title text NOT NULL);
INSERT INTO orgs VALUES ('{ORG_A}', 'a'), ('{ORG_B}', 'b'), ('{CUID}', 'cuid');
INSERT INTO members (org_id, name) SELECT (ARRAY['{ORG_A}', '{ORG_B}'])[1 + g % 2]::uuid,
    'm' || g FROM generate_series(1, 40) g;
INSERT INTO docs (org_id, title) SELECT (ARRAY['{ORG_A}', '{ORG_B}', '{CUID}'])[1 + g % 3],
    'd' || g FROM generate_series(1, 60) g;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {APP};
"""
TEXT_PLAYBOOK = f"""
tenant: {{table: public.orgs, key: id, key_type: text}}
roles: {{app: {APP}}}
tables:
  public.orgs: {{strategy: root, column: id}}
  public.members: {{strategy: direct, column: org_id}}
  public.docs: {{strategy: direct, column: org_id}}
"""


def setup(dsn: str, schema: str, playbook: str) -> Playbook:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DO $$BEGIN CREATE ROLE {APP} LOGIN; EXCEPTION WHEN duplicate_object"
                     " THEN NULL; END$$")
        conn.execute(schema)  # type: ignore[arg-type, unused-ignore]
    parsed = parse_playbook(playbook)
    for stage in STAGES:
        assert apply_stage(dsn, parsed, stage).result.failed == 0, stage
    return parsed


def app_dsn(dsn: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, user=APP)


def counts(dsn: str, tenant: str | None, queries: list[str]) -> list[Any]:
    with psycopg.connect(app_dsn(dsn)) as conn:
        if tenant is not None:
            conn.execute("SELECT set_config('app.tenant_id', %s, true)", [tenant])
        out = [conn.execute(q).fetchone() for q in queries]  # type: ignore[arg-type, unused-ignore]
        conn.commit()  # the samples commit with the application's transaction
    return [row[0] if row else None for row in out]


def recorded(dsn: str) -> set[tuple[str, str, str]]:
    with psycopg.connect(dsn) as conn:
        return {(str(t), str(o), str(k)) for t, o, k in conn.execute(
            "SELECT table_name, operation, kind FROM rls_migrate.violation_samples").fetchall()}


@pytest.mark.parametrize("kind", ["integers", "texts"])
def test_observe_and_enforce_with_column_types_unlike_the_root_key(empty_db: str,
                                                                   kind: str) -> None:
    if kind == "integers":
        playbook = setup(empty_db, INTEGERS, INTEGER_PLAYBOOK)
        queries = ["SELECT count(*) FROM account_users", "SELECT count(*) FROM tags"]
        own = ["SELECT count(*) FROM account_users WHERE account_id = 2",
               "SELECT count(*) FROM tags WHERE account_id = 2"]
        tenant, everything, mine = "2", [300, 90], [100, 30]
        stranger = "7"  # no such account: sees nothing once enforced, no error
    else:
        playbook = setup(empty_db, TEXTS, TEXT_PLAYBOOK)
        queries = ["SELECT count(*) FROM members", "SELECT count(*) FROM docs"]
        own = [f"SELECT count(*) FROM members WHERE org_id = '{ORG_A}'",
               f"SELECT count(*) FROM docs WHERE org_id = '{ORG_A}'"]
        tenant, everything, mine = ORG_A, [40, 60], [20, 20]
        stranger = CUID  # a tenant whose key is no uuid: members match no row, docs do

    # Observe: every statement runs and returns what it returned before.
    assert counts(empty_db, tenant, queries) == everything
    assert counts(empty_db, tenant, own) == mine
    assert counts(empty_db, stranger, queries) == everything
    assert counts(empty_db, None, queries) == everything
    tables = {t for t, _, _ in recorded(empty_db)}
    assert len(tables) == 2 and {k for _, _, k in recorded(empty_db)} == {
        "wrong_tenant", "no_context"}

    assert apply_stage(empty_db, playbook, "enforce", force=True).result.failed == 0
    assert counts(empty_db, tenant, queries) == mine
    assert counts(empty_db, None, queries) == [0, 0]
    expected_stranger = [0, 0] if kind == "integers" else [0, 20]
    assert counts(empty_db, stranger, queries) == expected_stranger
    with psycopg.connect(app_dsn(empty_db)) as conn:  # writes are checked with the same types
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", [tenant])
        table, column = ("tags", "account_id") if kind == "integers" else ("docs", "org_id")
        other = "1" if kind == "integers" else ORG_B
        extra = "" if kind == "integers" else ", title"
        values = "" if kind == "integers" else ", 'x'"
        name = "name" if kind == "integers" else None
        cols = f"{column}, {name}" if name else f"{column}{extra}"
        vals = "%s, 'x'" if name else f"%s{values}"
        conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({vals})",  # type: ignore[arg-type, unused-ignore]
                     [tenant])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({vals})",  # type: ignore[arg-type, unused-ignore]
                         [other])
    # The kill switch puts observe back with the same typed expressions.
    from rls_migrate.runner import rollback_to
    rollback_to(empty_db, playbook, "observe")
    assert counts(empty_db, tenant, queries) == everything
