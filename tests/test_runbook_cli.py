"""The runbook commands as a person sees them, on every major: honest counts (prepare on a
fresh database is done, not already done; a rollback says how many steps it undid),
``rollback --yes`` like ``apply``, ``--force`` warned about, ``status`` readable (the last
error as a line, whole table names, the tables the playbook leaves out), and the
``rls_migrate`` schema removed on request after ``rollback --to none``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from enforce_helpers import as_role, clone

from rls_migrate import samples
from rls_migrate.playbook import TablePlan, dump_playbook
from rls_migrate.testing import servers

# Version-agnostic (the toolkit's own logic over SQL every major runs alike): the core
# majors only, unless RLS_MIGRATE_TEST_ALL_MAJORS=1 (see tests/conftest.py).
pytestmark = pytest.mark.core_majors


APP = samples.APP_ROLE
JSON = ("--log-format", "json")  # structured log lines on stderr, so the warnings can be read


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from rls_migrate.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.out, out.err


def schema_exists(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regnamespace('rls_migrate') IS NOT NULL").fetchone()
    return bool(row and row[0])


def test_prepare_on_a_fresh_database_is_done(
        empty_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        samples.ensure_roles(conn)
        conn.execute("CREATE TABLE accounts (id bigint PRIMARY KEY)")
    path = tmp_path / "app.yaml"
    path.write_text(f"version: 1\ntenant: {{table: accounts}}\nroles: {{app: {APP}}}\n"
                    "tables:\n  public.accounts: {strategy: root, column: id}\n")
    code, out, err = run_main(capsys, *JSON, "apply", str(path), "--stage", "prepare", "--dsn",
                              empty_db, "--yes")
    assert code == 0, err
    assert "prepare: 1 done, 0 failed" in out, out
    assert "(created)" in out
    code, out, _ = run_main(capsys, *JSON, "apply", str(path), "--stage", "prepare", "--dsn",
                            empty_db, "--yes")
    assert code == 0 and "prepare: 0 done, 1 already done, 0 failed" in out, out
    code, _, err = run_main(capsys, *JSON, "apply", str(path), "--stage", "prepare", "--dsn",
                            empty_db, "--yes", "--force")
    assert code == 0 and "note: --force changed nothing: stage prepare has no gate" in err


def test_force_rollback_status_and_drop_schema(
        pg_server: servers.PostgresServer, make_factory: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    with clone(pg_server, make_factory, "observe") as sample:
        tables = dict(sample.playbook.tables)
        tables["public.countries"] = TablePlan(strategy="skip", note="shared reference data")
        path = tmp_path / "app.yaml"
        path.write_text(dump_playbook(sample.playbook.model_copy(update={"tables": tables})))
        dsn = sample.dsn
        with psycopg.connect(dsn) as conn, as_role(conn, APP):
            conn.execute("SELECT count(*) FROM issues").fetchone()  # no tenant: recorded

        code, out, err = run_main(capsys, *JSON, "apply", str(path), "--stage", "enforce", "--dsn",
                                  dsn, "--force", "--yes")
        assert code == 0, err
        assert "WARNING: --force overrode the enforce gate (" in err, err
        assert '"event": "gate.forced"' in err and '"level": "warning"' in err

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute('CREATE TABLE "A very long table name that must not be cut at all" '
                         "(id bigint PRIMARY KEY)")
        code, out, err = run_main(capsys, "status", str(path), "--dsn", dsn)
        assert code == 0, err
        assert "public.issues" in out and "not migrated: public.countries (strategy skip: " \
            "shared reference data)" in out
        assert "…" not in out and "datetime(" not in out and "{" not in out

        code, out, err = run_main(capsys, *JSON, "rollback", str(path), "--to", "observe",
                                  "--dsn", dsn,
                                  "--yes")
        assert code == 0, err
        undone = [line for line in out.splitlines() if line.startswith("rollback enforce:")]
        assert undone and undone[0].startswith("rollback enforce: "), out
        count = int(undone[0].split(": ")[1].split(" undone")[0])
        assert count > 0 and "already done" not in out

        code, out, err = run_main(capsys, "rollback", str(path), "--to", "observe",
                                  "--drop-schema", "--dsn", dsn, "--yes")
        assert code == 2 and not out and err.startswith("error: --drop-schema goes with --to none")

        # A policy outside the schema still calling a toolkit function: refused, unchanged.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE keeper (id int)")
            conn.execute("CREATE FUNCTION rls_migrate.keep() RETURNS boolean LANGUAGE sql"
                         " AS 'SELECT true'")
            conn.execute("CREATE POLICY keeper_p ON keeper USING (rls_migrate.keep())")
        code, out, err = run_main(capsys, *JSON, "rollback", str(path), "--to", "none",
                                  "--dsn", dsn,
                                  "--drop-schema", "--yes")
        assert code != 0 and "--drop-schema: not dropped (nothing changed)" in err, err
        assert "policy keeper_p on table keeper" in err
        assert schema_exists(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE keeper")
        code, out, err = run_main(capsys, *JSON, "rollback", str(path), "--to", "none",
                                  "--dsn", dsn,
                                  "--drop-schema", "--yes")
        assert code == 0, err
        assert "drop_schema:rls_migrate" in out and not schema_exists(dsn)
        with psycopg.connect(dsn) as conn:
            left = conn.execute("SELECT count(*) FROM pg_policy").fetchone()
        assert left == (0,)
