"""Malformed playbooks: each gives the error it should (file, line, key path, what was
expected, a "did you mean" where one helps), from the library and from the real CLI, and
none of them touches the database."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from plan_helpers import load_catalog, sample_factory, schema_snapshot

from rls_migrate.catalog import Catalog
from rls_migrate.errors import PlaybookError
from rls_migrate.planner import build_plan
from rls_migrate.playbook import load_playbook, parse_playbook
from rls_migrate.testing import servers

CLI = str(Path(sys.executable).with_name("rls-migrate"))
NOWHERE = "host=127.0.0.1 port=1 dbname=nowhere connect_timeout=2"
"""A DSN nothing answers: shape errors must be reported before any connection."""

BASE = """\
version: 1
dsn_env: DATABASE_URL
tenant:
  table: public.accounts
  key: id
  key_type: bigint
  column: tenant_id
  setting: app.tenant_id
roles:
  app: app_user
  admin: [app_admin]
options:
  lock_timeout: 100ms
  retries: 3
  backfill:
    orphans: skip
tables:
  public.accounts: {strategy: root, column: id}
  public.users: {strategy: direct, column: account_id}
  public.projects: {strategy: direct, column: account_id}
  public.labels: {strategy: direct, column: account_id}
  public.events: {strategy: direct, column: account_id}
  public.issues: {strategy: derive, parent: "project_id -> public.projects(id)"}
  public.comments: {strategy: derive, parent: "issue_id -> public.issues(id)"}
  public.attachments: {strategy: derive, parent: "comment_id -> public.comments(id)"}
  public.issue_labels: {strategy: derive, parent: "label_id -> public.labels(id)"}
  public."Project Notes": {strategy: derive, parent: '"projectId" -> public.projects(id)'}
  public.audit_log: {strategy: hint, parent: "issue_id -> public.issues(id)"}
  public.countries: {strategy: global}
"""
"""The sample database's playbook, written by hand so that line numbers are known."""


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    old: str
    new: str
    expect: tuple[str, ...]  # fragments of the message, in order
    forbid: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        assert self.old in BASE, self.id
        return BASE.replace(self.old, self.new, 1)


ISSUES_PARENT = 'parent: "project_id -> public.projects(id)"'

SHAPE_CASES = (
    Case("bad-yaml", "tables:\n", "tables:\n  oops: : :\n",
         ("bad.yaml:18: not valid YAML: mapping values are not allowed here",)),
    Case("unclosed-flow-mapping", "{strategy: direct, column: account_id}",
         "{strategy: direct, column: account_id",
         ("not valid YAML: expected ',' or '}'",
          "(while parsing a flow mapping that starts at line 19)")),
    Case("duration-word", "lock_timeout: 100ms", "lock_timeout: fast",
         ("bad.yaml:13: options.lock_timeout: expected a duration like 100ms, 2s or 5min, "
          "got 'fast'",)),
    Case("negative-retries", "retries: 3", "retries: -1",
         ("bad.yaml:14: options.retries: ", "greater than or equal to 0")),
    Case("unknown-option", "  retries: 3\n", "  retries: 3\n  retry: 5\n",
         ("bad.yaml:15: options.retry: unknown key (expected one of: lock_timeout, ",
          "retries", "backfill, index, enforce, observe)")),
    Case("unknown-table-key", "{strategy: direct, column: account_id}",
         "{strategy: direct, colum: account_id}",
         ("bad.yaml:19: tables.public.users.colum: unknown key (expected one of: strategy, "
          "column, parent",)),
    Case("missing-tenant",
         "tenant:\n  table: public.accounts\n  key: id\n  key_type: bigint\n"
         "  column: tenant_id\n  setting: app.tenant_id\n", "",
         ("bad.yaml: tenant: required key is missing",)),
    Case("setting-without-dot", "setting: app.tenant_id", "setting: tenant_id",
         ("bad.yaml:8: tenant.setting: expected a custom setting name with a dot, like "
          "app.tenant_id, got 'tenant_id'",)),
    Case("dsn-in-dsn-env", "dsn_env: DATABASE_URL",
         "dsn_env: postgresql://app:s3cret@db.example.com/app",
         ("bad.yaml:2: dsn_env: expected the NAME of an environment variable (never a DSN)",),
         forbid=("s3cret", "db.example.com")),
    Case("parent-without-arrow", ISSUES_PARENT, 'parent: "project_id public.projects(id)"',
         ("bad.yaml:23: tables.public.issues.parent: expected 'column -> schema.table(column)'",
          "got 'project_id public.projects(id)'")),
)

CATALOG_CASES = (
    Case("unknown-table", "public.issues: {", "public.isues: {",
         ("bad.yaml does not match the database:",
          "tables.public.isues: no table public.isues in the database (did you mean "
          "public.issues")),
    Case("unknown-column", ISSUES_PARENT, 'parent: "project_idd -> public.projects(id)"',
         ("tables.public.issues.parent: table public.issues has no column 'project_idd' "
          "(did you mean project_id?)",)),
    Case("unknown-role", "app: app_user", "app: app_usr",
         ("roles.app: no role 'app_usr' in the database",)),
    Case("unresolved-todo", 'public.audit_log: {strategy: hint, parent: "issue_id -> '
         'public.issues(id)"}', 'public.audit_log: {strategy: TODO, note: "no foreign key"}',
         ("undecided (TODO) tables: 1; decide each one in the playbook:\n"
          "    - public.audit_log: no foreign key",)),
    Case("global-parent", "public.projects: {strategy: direct, column: account_id}",
         "public.projects: {strategy: global}",
         ("tables.public.issues.parent: public.projects is not tenant-scoped in this playbook",
          'tables.public."Project Notes".parent: public.projects is not tenant-scoped')),
)


def assert_message(message: str, case: Case) -> None:
    position = 0
    for fragment in case.expect:
        found = message.find(fragment, position)
        assert found >= 0, f"{fragment!r} not in (or out of order in):\n{message}"
        position = found + len(fragment)
    for secret in case.forbid:
        assert secret not in message


@dataclasses.dataclass(frozen=True)
class Db:
    dsn: str
    catalog: Catalog


@pytest.fixture(scope="module")
def db(
    pg_server: servers.PostgresServer, make_factory: Callable[..., servers.DatabaseFactory]
) -> Iterator[Db]:
    factory = sample_factory(pg_server, make_factory)
    dsn = factory.create()
    yield Db(dsn, load_catalog(dsn))
    factory.drop(servers.dbname_of(dsn))


def run_cli(tmp_path: Path, text: str, dsn: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "bad.yaml").write_text(text)
    return subprocess.run([CLI, "plan", "bad.yaml", "--dsn", dsn], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def assert_one_error(result: subprocess.CompletedProcess[str], case: Case) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: "), result.stderr
    assert len(lines) <= 6 and not any(line.startswith("error: ") for line in lines[1:])
    assert_message(result.stderr, case)


# --------------------------------------------------------------------------- controls


def test_the_base_playbook_is_valid(db: Db) -> None:
    plan = build_plan(db.catalog, parse_playbook(BASE, "bad.yaml"), source="bad.yaml")
    assert len(plan.steps) > 50


def test_the_base_playbook_plans_from_the_cli(tmp_path: Path, db: Db) -> None:
    result = run_cli(tmp_path, BASE, db.dsn)
    assert result.returncode == 0, result.stderr
    assert "== enforce:" in result.stdout


# --------------------------------------------------------------------------- the library


@pytest.mark.parametrize("case", SHAPE_CASES, ids=lambda c: c.id)
def test_shape_error_from_the_library(case: Case) -> None:
    with pytest.raises(PlaybookError) as info:
        parse_playbook(case.text, "bad.yaml")
    assert_message(info.value.message, case)
    assert info.value.exit_code == 2


def test_load_playbook_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(BASE.replace("lock_timeout: 100ms", "lock_timeout: fast"))
    with pytest.raises(PlaybookError, match="^" + re.escape(f"{path}:13: options.lock_timeout: ")):
        load_playbook(path)
    with pytest.raises(PlaybookError, match="cannot read the playbook"):
        load_playbook(tmp_path / "missing.yaml")


@pytest.mark.parametrize("case", CATALOG_CASES, ids=lambda c: c.id)
def test_catalog_error_from_the_library(db: Db, case: Case) -> None:
    playbook = parse_playbook(case.text, "bad.yaml")  # the shape is fine
    with pytest.raises(PlaybookError) as info:
        build_plan(db.catalog, playbook, source="bad.yaml")
    assert info.value.message.startswith("bad.yaml does not match the database:\n  ")
    assert_message(info.value.message, case)


# --------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("case", SHAPE_CASES, ids=lambda c: c.id)
def test_shape_error_from_the_cli_before_connecting(tmp_path: Path, case: Case) -> None:
    # Nothing listens at NOWHERE: a connection attempt would fail with exit code 4.
    assert_one_error(run_cli(tmp_path, case.text, NOWHERE), case)


@pytest.mark.core_majors  # CLI error paths, version-agnostic
@pytest.mark.parametrize("case", CATALOG_CASES, ids=lambda c: c.id)
def test_catalog_error_from_the_cli_touches_nothing(tmp_path: Path, db: Db, case: Case) -> None:
    before = schema_snapshot(db.dsn)
    assert "rls_migrate" not in before["schemas"]
    assert_one_error(run_cli(tmp_path, case.text, db.dsn), case)
    assert schema_snapshot(db.dsn) == before


# --------------------------------------------------------------------------- types


UUID_KEY = Case("uuid-key-over-bigint-columns", "key_type: bigint", "key_type: uuid",
                ("tables.public.projects: its tenant column account_id is bigint, but the tenant "
                 "key (id) is uuid: no tenant value can match both",))


@pytest.mark.core_majors
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_tenant_column_no_tenant_value_matches_fails_plan_in_every_format(
        tmp_path: Path, db: Db, fmt: str) -> None:
    """Statements are built when first read (text never reads them): the type check runs
    while planning, so the text report refuses the playbook as the json one does."""
    (tmp_path / "bad.yaml").write_text(UUID_KEY.text)
    result = subprocess.run([CLI, "plan", "bad.yaml", "--dsn", db.dsn, "--format", fmt],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert_one_error(result, UUID_KEY)
    # With -o, the plan is written as it renders, to a file renamed into place at the end:
    # a failure leaves neither the file nor a part of it.
    result = subprocess.run([CLI, "plan", "bad.yaml", "--dsn", db.dsn, "--format", fmt,
                             "-o", "plan.out"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert_one_error(result, UUID_KEY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
