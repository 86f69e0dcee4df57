"""The pytest plugin, used the way a user's test suite uses it (through ``pytester``), on
every major: fixtures scoped to a tenant (psycopg and SQLAlchemy), the isolation and
enforcement assertions passing on a protected table and failing with the reasons on a leaky
one, configuration from the ini file or the environment."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from rls_migrate import samples
from rls_migrate.testing import servers

pytest_plugins = ["pytester"]

# Version-agnostic (the toolkit's own logic over SQL every major runs alike): the core
# majors only, unless RLS_MIGRATE_TEST_ALL_MAJORS=1 (see tests/conftest.py).
pytestmark = pytest.mark.core_majors


APP = samples.APP_ROLE
MATCH = "tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::bigint)"
PLUGIN = "rls_migrate.testing.pytest_plugin"


def _schema(dsn: str) -> None:
    """``notes`` protected as the toolkit does it; ``legacy.notes`` without RLS."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        samples.ensure_roles(conn)
        conn.execute("CREATE SCHEMA legacy")
        for schema in ("public", "legacy"):
            conn.execute(f"CREATE TABLE {schema}.notes (id bigint GENERATED ALWAYS AS IDENTITY"
                         " PRIMARY KEY, tenant_id bigint NOT NULL, body text)")
            conn.execute(f"INSERT INTO {schema}.notes (tenant_id, body) SELECT 1 + n % 3,"
                         " 'note ' || n FROM generate_series(1, 30) n")
            conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {APP}")
            conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.notes TO {APP}")
        conn.execute("ALTER TABLE notes ENABLE ROW LEVEL SECURITY")
        conn.execute(f"CREATE POLICY tenant ON notes AS RESTRICTIVE TO {APP} USING ({MATCH})"
                     f" WITH CHECK ({MATCH})")
        conn.execute(f"CREATE POLICY app ON notes TO {APP} USING ({MATCH}) WITH CHECK ({MATCH})")


@pytest.fixture(scope="module")
def notes_factory(make_factory: Any) -> servers.DatabaseFactory:
    return make_factory(_schema, "plugin")  # type: ignore[no-any-return]


@pytest.fixture
def notes_db(notes_factory: servers.DatabaseFactory) -> Iterator[str]:
    dsn = notes_factory.create()
    yield dsn
    notes_factory.drop(servers.dbname_of(dsn))


def plugin_args() -> list[str]:
    """Load the plugin by name unless its ``pytest11`` entry point already does."""
    for entry in importlib.metadata.entry_points(group="pytest11"):
        if entry.value == PLUGIN:
            return ["-p", "no:cacheprovider"]
    return ["-p", PLUGIN, "-p", "no:cacheprovider"]


USER_TESTS = '''
import pytest
from sqlalchemy import text


def test_connection_sees_one_tenant(tenant_connection):
    conn = tenant_connection(1)
    assert {r[0] for r in conn.execute("SELECT tenant_id FROM notes")} == {1}
    other = tenant_connection(2)
    assert {r[0] for r in other.execute("SELECT tenant_id FROM notes")} == {2}


def test_session_stays_scoped_across_commits(tenant_session):
    session = tenant_session(3)
    assert {r[0] for r in session.execute(text("SELECT tenant_id FROM notes"))} == {3}
    session.commit()
    assert {r[0] for r in session.execute(text("SELECT tenant_id FROM notes"))} == {3}


def test_notes_are_isolated(rls):
    rls.assert_tenant_isolated("notes")
    rls.assert_tenant_isolated("public.notes", tenants=(2, 3))


def test_public_is_enforced(rls):
    rls.assert_rls_enforced("public")


def test_legacy_notes_leak(rls):
    rls.assert_tenant_isolated("legacy.notes")


def test_legacy_is_not_enforced(rls):
    rls.assert_rls_enforced("legacy")
'''


def test_fixtures_and_assertions_in_a_users_suite(pytester: pytest.Pytester,
                                                  notes_db: str) -> None:
    pytester.makeini(f"[pytest]\nrls_migrate_dsn = {notes_db}\nrls_migrate_app_role = {APP}\n")
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest(*plugin_args())
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines([
        "*legacy.notes is not tenant-isolated:*",
        "*probe-read: with tenant * context the application role reads * rows of tenant *",
        "*probe-insert: with tenant *'s context, a row of tenant * was not refused by*",
        "*check FAILED: 1 of 1 table(s) that hold tenant_id lack enforced RLS:*",
        "*legacy.notes (tenant_id): row-level security is not enabled*",
    ])


def test_environment_wins_and_a_missing_dsn_is_one_clear_error(
        pytester: pytest.Pytester, notes_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_user='''
def test_enforced(rls):
    rls.assert_rls_enforced("public")
''')
    monkeypatch.delenv("RLS_MIGRATE_DSN", raising=False)
    missing = pytester.runpytest(*plugin_args())
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["*rls-migrate plugin: no database: set rls_migrate_dsn*"])

    pytester.makeini("[pytest]\nrls_migrate_dsn = host=127.0.0.1 port=1\n")
    monkeypatch.setenv("RLS_MIGRATE_DSN", notes_db)
    monkeypatch.setenv("RLS_MIGRATE_APP_ROLE", APP)
    pytester.runpytest(*plugin_args()).assert_outcomes(passed=1)

    monkeypatch.setenv("RLS_MIGRATE_KEY_TYPE", "float")
    bad = pytester.runpytest(*plugin_args())
    assert bad.ret != 0
    bad.stderr.fnmatch_lines(["*rls-migrate plugin: invalid tenant key type 'float'*"])
