"""``rls-migrate alembic render``: the exact text it writes for a small schema (a snapshot),
string literals that are the plan's statements byte for byte (hostile names included), the
chain after the versions directory's head, clear errors, and the real thing on both
servers: ``alembic upgrade head`` of the rendered revisions gives the catalog ``apply``
gives, and ``alembic downgrade base`` gives the original back, data untouched."""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import io
import os
import re
import subprocess
import sys
import tokenize
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from plan_helpers import load_catalog, sample_factory, sample_playbook
from psycopg import sql

from rls_migrate import samples
from rls_migrate.alembic.render import (
    comment,
    heads,
    parse_stages,
    plan_revisions,
    py_str,
    py_str_lines,
    render_to_dir,
)
from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.errors import UsageError
from rls_migrate.planner import build_plan
from rls_migrate.playbook import Playbook, dump_playbook
from rls_migrate.runner import apply_stage, status
from rls_migrate.stages.common import PlanContext
from rls_migrate.steps import STAGES, as_string
from rls_migrate.testing import servers
from rls_migrate.testing.checksums import table_checksums

# Version-agnostic (the toolkit's own logic over SQL every major runs alike): the core
# majors only, unless RLS_MIGRATE_TEST_ALL_MAJORS=1 (see tests/conftest.py).
pytestmark = pytest.mark.core_majors


BIN = Path(sys.executable).parent
TASKS = 'Tasks: {x} %s "q"'
NOTES = "Notes\nDROP TABLE accounts; -- '"

ENV_PY = '''\
"""env.py as the README shows it: Alembic runs as the tables' owner, never with
BYPASSRLS; a statement a policy would filter fails instead of seeing part of the rows."""
import os

import psycopg
import sqlalchemy as sa
from alembic import context

import rls_migrate.alembic  # noqa: F401  (registers op.enable_rls & co. and autogenerate)

target_metadata = None


def run_migrations_online() -> None:
    url = os.environ["MIGRATIONS_DATABASE_URL"]  # the owner's DSN, not the application's
    engine = sa.create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(url, options="-c row_security=off"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url="postgresql+psycopg://", literal_binds=True,
                      transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
'''


def user_revision(rev: str, down: str | None) -> str:
    return (f'"""a user revision"""\nrevision = {rev!r}\ndown_revision = {down!r}\n\n\n'
            "def upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n")


def alembic_env(root: Path) -> Path:
    """A throwaway Alembic project: alembic.ini, env.py and an empty versions directory."""
    (root / "versions").mkdir(parents=True)
    (root / "env.py").write_text(ENV_PY)
    (root / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s\npath_separator = os\n")
    return root / "versions"


def run(*args: str, dsn: str | None = None, timeout: float = 180
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.pop("DATABASE_URL", None)
    env.pop("RLS_MIGRATE_DSN", None)
    if dsn is not None:
        env["MIGRATIONS_DATABASE_URL"] = dsn
    return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=timeout)


def alembic(root: Path, dsn: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    result = run(str(BIN / "alembic"), "-c", str(root / "alembic.ini"), *args, dsn=dsn)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def render_cli(playbook: Path, versions: Path, dsn: str, *extra: str
               ) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "rls_migrate", "alembic", "render", str(playbook),
               "--versions-dir", str(versions), "--dsn", dsn, *extra)


# --------------------------------------------------------------------------- a small schema


def load_small(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        samples.ensure_roles(conn)
        conn.execute("CREATE TABLE accounts (id bigint PRIMARY KEY)")
        conn.execute("CREATE TABLE projects (id bigint PRIMARY KEY,"
                     " account_id bigint NOT NULL REFERENCES accounts)")
        for name in (TASKS, NOTES):
            conn.execute(sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY,"
                " project_id bigint NOT NULL REFERENCES projects, title text)"
            ).format(sql.Identifier(name)))
        conn.execute("INSERT INTO accounts SELECT g FROM generate_series(1, 3) g")
        conn.execute("INSERT INTO projects SELECT g, g % 3 + 1 FROM generate_series(1, 6) g")
        for name in (TASKS, NOTES):
            conn.execute(sql.SQL(
                "INSERT INTO {} SELECT g, g % 6 + 1, 't' || g FROM generate_series(1, 50) g"
            ).format(sql.Identifier(name)))


def small_playbook(notes: str = "derive") -> Playbook:
    derive = {"strategy": "derive", "parent": "project_id -> public.projects(id)"}
    return Playbook.model_validate({
        "tenant": {"table": "public.accounts", "key": "id"},
        "roles": {"app": samples.APP_ROLE},
        "tables": {
            "public.accounts": {"strategy": "root", "column": "id"},
            "public.projects": {"strategy": "direct", "column": "account_id"},
            str(QualifiedName("public", TASKS)): derive,
            str(QualifiedName("public", NOTES)): derive if notes == "derive" else
            {"strategy": notes},
        },
    })


@pytest.fixture(scope="module")
def small_factory(make_factory: Callable[..., servers.DatabaseFactory]
                  ) -> servers.DatabaseFactory:
    return make_factory(load_small, "alembicsmall")


@pytest.fixture
def small_db(small_factory: servers.DatabaseFactory) -> Iterator[str]:
    dsn = small_factory.create()
    yield dsn
    small_factory.drop(servers.dbname_of(dsn))


# --------------------------------------------------------------------------- Python text


@pytest.mark.parametrize("text", [
    "plain", "it's", 'say "hi"', "both ' and \"", "back\\slash \\' \\\"", 'end"""',
    "line\nbreak\r\nand\ttab", "\x00\x1b\u2028\u2029\x85", "ünïcode ✓", "",
    "a " * 80 + "end", "x" * 300,
])
def test_literals_and_comments_are_exact_and_inert(text: str) -> None:
    assert ast.literal_eval(py_str(text)) == text
    pieces = py_str_lines(text, "    ")
    assert all(len(p) <= 100 or " " not in text for p in pieces)
    assert ast.literal_eval("(" + "\n".join(pieces) + ")") == text
    lines = comment(text)
    assert all(line.startswith("    #") and "\n" not in line for line in lines)
    # Whatever the text, the comment block compiles to nothing.
    assert ast.parse("\n".join(line.strip() for line in lines)).body == []


# --------------------------------------------------------------------------- snapshot

SNAPSHOT_ADD_COLUMN = (Path(__file__).parent / "snapshots" / "alembic_add_column_revision.txt"
                       ).read_text()
"""The add-column revision of the small database (a file: the sync functions' bodies hold
every kind of quote)."""

SNAPSHOT_BACKFILL_UPGRADE = '''\
def upgrade() -> None:
    # ===== stage backfill: fill the tenant columns in short batches
    # note: a batch holds the row locks of the rows it fills until it commits: an application
    # write to one of them waits up to a batch (options.backfill.batch_target 200 ms), longer
    # than lock_timeout (100 ms); lower batch_target where that matters

    # backfill:public."Tasks: {x} %s ""q""": fill tenant_id from public.projects in keyset
    # batches of ~200 ms on (id)
    # lock: row locks only, one short batch transaction at a time (ROW EXCLUSIVE)
    # why: each batch is its own short transaction: row locks last milliseconds
    # risk: about 1 MB of WAL (every row is rewritten once)
    op.backfill_tenant_column(
        'Tasks: {x} %s "q"',
        "tenant_id",
        schema="public",
        parent="project_id -> public.projects(id)",
        parent_column="account_id",
        batch_target=200.0,
        batch_start_rows=1000,
        batch_max_rows=50000,
        pause=0.0,
        max_replica_lag=None,
        user_triggers="skip",
        orphans="stop",
        options=OPTIONS,
    )


def downgrade() -> None:
    # ===== undo stage backfill
    # backfill:public."Tasks: {x} %s ""q""": the filled values stay (harmless; the add-column
    # downgrade drops the column when rendered with --drop-columns)
    pass
'''


def _render_small(dsn: str, playbook: Playbook, stages: list[str] | None,
                  **kwargs: Any) -> list[Any]:
    ids = iter(str(n) * 12 for n in range(1, 10))
    with psycopg.connect(dsn, autocommit=True) as conn:
        catalog = Catalog.load(conn)
        plan = build_plan(catalog, playbook, stages)
        revisions, _ = plan_revisions(
            PlanContext(catalog, playbook), plan, conn, down_revision="0001",
            source="playbooks/app.yaml", new_id=lambda: next(ids),
            now=lambda: dt.datetime(2026, 1, 2, 3, 4, 5), **kwargs)
    return revisions


def test_rendered_revisions_snapshot(small_db: str) -> None:
    revisions = _render_small(small_db, small_playbook(notes="skip"), ["add-column", "backfill"])
    texts = [re.sub(r"^# database: .*$", "# database: DATABASE", r.text, flags=re.M)
             for r in revisions]
    assert [r.filename for r in revisions] == [
        "111111111111_rls_migrate_add_column.py", "222222222222_rls_migrate_backfill.py"]
    assert texts[0] == SNAPSHOT_ADD_COLUMN
    assert texts[1].split("def upgrade", 1)[1] == SNAPSHOT_BACKFILL_UPGRADE.split(
        "def upgrade", 1)[1]
    assert 'down_revision = "111111111111"' in texts[1]


def _calls(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``op.<name>(...)`` calls of ``upgrade`` and ``downgrade``: (name, literal kwargs)."""
    out = []
    for node in ast.walk(ast.parse(text)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "op"):
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords
                      if k.arg and not (isinstance(k.value, ast.Name))}
            kwargs["args"] = [ast.literal_eval(a) for a in node.args]
            out.append((node.func.attr, kwargs))
    return out


def test_rendered_literals_are_the_plan_statements(small_db: str) -> None:
    """Every stage, every step: the literals in the files are the plan's statements, done
    checks and inverses exactly, hostile names (quotes, braces, %s, a line break and SQL
    after it) included, and the comments carrying those names stay comments."""
    playbook = small_playbook()
    revisions = _render_small(small_db, playbook, None, drop_columns=True)
    with psycopg.connect(small_db, autocommit=True) as conn:
        plan = build_plan(Catalog.load(conn), playbook)
        runs = [(s.id, s.render(conn), as_string(s.done_check, conn) if s.done_check else None)
                for s in plan.steps if s.kind not in ("backfill", "upgrade_schema")]
        undos = [(s.id, [as_string(i, conn) for i in s.inverse])
                 for stage in reversed(plan.stages) for s in reversed(stage.steps)
                 if s.inverse and s.kind not in ("backfill", "upgrade_schema")]
    calls = [c for r in revisions for c in _calls(r.text)]
    assert [(c["args"][0], c["statements"], c.get("done_check")) for n, c in calls
            if n == "run_rls_step"] == runs
    undone = [(c["args"][0], c["statements"]) for r in revisions
              for n, c in _calls(r.text) if n == "undo_rls_step"]
    assert sorted(undone) == sorted(undos)
    backfills = [c for n, c in calls if n == "backfill_tenant_column"]
    assert [b["args"][0] for b in backfills] == [NOTES, TASKS]
    assert [n for n, _ in calls].count("upgrade_rls_migrate_schema") == 1
    for revision in revisions:
        compile(revision.text, revision.filename, "exec")
        # The name's second line ("DROP TABLE accounts; --") is only ever inside a comment
        # or a string literal, never code.
        tokens = tokenize.generate_tokens(io.StringIO(revision.text).readline)
        holders = {t.type for t in tokens if "DROP TABLE accounts" in t.string}
        assert holders <= {tokenize.COMMENT, tokenize.STRING}, holders


# --------------------------------------------------------------------------- CLI


def _render_lib(dsn: str, playbook: Playbook, versions: Path, stages: list[str] | None,
                **kwargs: Any) -> list[tuple[Path, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        catalog = Catalog.load(conn)
        plan = build_plan(catalog, playbook, stages)
        written, _ = render_to_dir(conn, catalog, playbook, plan, versions, **kwargs)
    return written


@pytest.mark.core_majors  # CLI input checks
def test_render_chains_after_the_head_and_refuses_bad_input(small_db: str, tmp_path: Path) -> None:
    root = tmp_path / "app"
    versions = alembic_env(root)
    (versions / "0001_users.py").write_text(user_revision("u1", None))
    (versions / "0002_orders.py").write_text(user_revision("u2", "u1"))
    playbook_file = tmp_path / "app.yaml"
    playbook = small_playbook()
    playbook_file.write_text(dump_playbook(playbook))

    first = render_cli(playbook_file, versions, small_db, "--stages", "add-column,prepare")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 2 and "(prepare: 1 step(s), revises u2)" in lines[0], lines
    assert "(add-column: 6 step(s), revises " in lines[1]
    prepare_rev, add_column_rev = (Path(line.split()[1]).name.split("_")[0] for line in lines)
    assert heads(versions) == [add_column_rev]
    [(path, second)] = _render_lib(small_db, playbook, versions, ["constrain", "index"],
                                   single=True)
    assert second.down_revision == add_column_rev and second.stages == ("constrain", "index")
    assert heads(versions) == [second.revision] and path.exists()

    # Offline (--sql): the script a DBA can read, each step in its own transaction.
    output = alembic(root, None, "upgrade", f"{prepare_rev}:{second.revision}", "--sql").stdout
    script = "\n".join(line for line in output.splitlines() if line)
    assert "BEGIN;\nSET LOCAL lock_timeout = '100ms';\nALTER TABLE" in script
    assert 'ADD COLUMN IF NOT EXISTS "tenant_id" bigint;' in script
    assert "VALIDATE CONSTRAINT" in script and "CREATE INDEX CONCURRENTLY" in script

    (versions / "0003_branch.py").write_text(user_revision("b1", "u1"))
    with pytest.raises(UsageError) as two_heads:
        _render_lib(small_db, playbook, versions, None)
    assert str(two_heads.value) == (
        f"{versions} has 2 heads ({', '.join(sorted(['b1', second.revision]))}): merge them "
        "first (alembic merge heads) or pick one with --down-revision")
    with pytest.raises(UsageError, match=r"--stages: unknown stage\(s\) 'frobnicate'"):
        parse_stages("index, frobnicate")
    assert parse_stages("enforce,prepare") == ["prepare", "enforce"]
    with pytest.raises(UsageError, match="no such directory"):
        _render_lib(small_db, playbook, tmp_path / "nowhere", None)
    assert len(list(versions.glob("*.py"))) == 6, "nothing written by a refused render"
    [(_, branch)] = _render_lib(small_db, playbook, versions, ["observe"], down_revision="b1")
    assert branch.down_revision == "b1"


# --------------------------------------------------------------------------- the real thing


@dataclasses.dataclass(frozen=True)
class Shape:
    columns: tuple[Any, ...]
    constraints: tuple[Any, ...]
    indexes: tuple[Any, ...]
    policies: tuple[Any, ...]
    triggers: tuple[Any, ...]
    rls: tuple[bool, bool]


def shape(dsn: str) -> dict[str, Any]:
    """Tables, columns, constraints, indexes, policies, triggers and the toolkit's
    functions: what a migration changes (statistics left out)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        catalog = Catalog.load(conn, include_toolkit_schema=True)
    out: dict[str, Any] = {
        str(q): Shape(
            tuple((c.name, c.type, c.not_null) for c in t.columns),
            tuple(sorted((c.name, c.kind, c.definition, c.validated) for c in t.constraints))
            + tuple(sorted((f.name, f.definition, f.validated) for f in t.foreign_keys)),
            tuple(sorted((i.name, i.definition, i.is_valid) for i in t.indexes)),
            tuple(sorted((p.name, p.permissive, p.command, p.roles, p.using, p.with_check)
                         for p in t.policies)),
            tuple(sorted((g.name, g.definition) for g in t.triggers)),
            (t.rls_enabled, t.rls_forced))
        for q, t in catalog.tables.items()
        if q.schema != "rls_migrate" and q.name != "alembic_version"}
    out["functions"] = sorted((f.schema, f.name, f.signature) for f in catalog.functions)
    return out


def data(dsn: str, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Checksums of every table's rows but the Alembic version table."""
    with psycopg.connect(dsn) as conn:
        sums = table_checksums(conn, exclude_columns=exclude)
    sums.pop("alembic_version", None)
    return sums


def test_rendered_revisions_upgrade_like_apply_and_downgrade_cleanly(
    pg_server: servers.PostgresServer,
    make_factory: Callable[..., servers.DatabaseFactory],
    tmp_path: Path,
) -> None:
    factory = sample_factory(pg_server, make_factory)
    by_alembic, by_apply = factory.create(), factory.create()
    try:
        playbook = sample_playbook(load_catalog(by_alembic))
        root = tmp_path / "app"
        versions = alembic_env(root)
        written = _render_lib(by_alembic, playbook, versions, None, drop_columns=True)
        assert [rev.stages for _, rev in written] == [(stage,) for stage in STAGES]

        original, before = shape(by_alembic), data(by_alembic)
        # `apply` ran the first stages already: Alembic finds them done and goes on.
        for stage in ("prepare", "add-column"):
            apply_stage(by_alembic, playbook, stage)
        alembic(root, by_alembic, "upgrade", "head")
        for stage in STAGES:
            assert apply_stage(by_apply, playbook, stage, force=True).result.failed == 0

        assert shape(by_alembic) == shape(by_apply)
        assert data(by_alembic, exclude=("tenant_id",)) == before
        with psycopg.connect(by_alembic) as conn:
            entries = conn.execute(
                "SELECT count(*) FILTER (WHERE outcome = 'skipped'), count(*)"
                " FROM rls_migrate.journal WHERE stage = 'add-column'").fetchone()
        assert entries is not None and entries[0] >= 18, entries  # apply's, then Alembic's
        matrix = status(by_alembic, playbook)["matrix"]
        assert all(state == "done" for cells in matrix.values() for state in cells.values()), (
            matrix)

        alembic(root, by_alembic, "downgrade", "base")
        assert shape(by_alembic) == original
        assert data(by_alembic) == before
    finally:
        for dsn in (by_alembic, by_apply):
            factory.drop(servers.dbname_of(dsn))


def test_rendered_constrain_refuses_rows_without_a_tenant_with_counts(
        small_db: str, tmp_path: Path) -> None:
    """A revision's constrain refuses, before its first statement, while rows have no
    tenant: the count and sample keys, instead of VALIDATE's raw 23514."""
    root = tmp_path / "app"
    versions = alembic_env(root)
    written = _render_lib(small_db, small_playbook(),
                          versions, ["prepare", "add-column", "backfill", "constrain"])
    backfill = next(rev for _, rev in written if rev.stages == ("backfill",))
    alembic(root, small_db, "upgrade", backfill.revision)
    with psycopg.connect(small_db, autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {} SET tenant_id = NULL WHERE id IN (7, 8)").format(
            sql.Identifier(TASKS)))
    failed = run(str(BIN / "alembic"), "-c", str(root / "alembic.ini"), "upgrade", "head",
                 dsn=small_db)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr  # alembic prints "FAILED: ..." on stdout
    assert "refused, nothing executed: 2 row(s) of" in output, output[-3000:]
    assert "have tenant_id NULL (sample keys: 7, 8)" in output
    with psycopg.connect(small_db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE"
                            " '%rlsm_not_null'").fetchone() == (0,)
