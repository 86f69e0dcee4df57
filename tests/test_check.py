"""check, the CI guard, on every major: it passes on the migrated sample, fails naming the
table (and why) when one tenant table lacks enforced RLS, and finds tables by their tenant
column without a playbook."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from enforce_helpers import clone

from rls_migrate import samples
from rls_migrate.check import check
from rls_migrate.playbook import TablePlan, dump_playbook
from rls_migrate.testing import servers

APP = samples.APP_ROLE
MATCH = "tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::bigint)"


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from rls_migrate.cli import main

    capsys.readouterr()  # drop what the fixture's stage runs printed
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.out, out.err


def test_check_with_the_playbook(pg_server: servers.PostgresServer, make_factory: Any,
                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with clone(pg_server, make_factory, "enforce") as sample:
        path = tmp_path / "app.yaml"
        path.write_text(dump_playbook(sample.playbook))
        code, out, _ = run_main(capsys, "check", "--dsn", sample.dsn, "--playbook", str(path))
        assert code == 0, out
        assert out.startswith("check ok: 17 table(s)")

        with psycopg.connect(sample.dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE labels DISABLE ROW LEVEL SECURITY")
            # A table added since the migration, holding tenant data, not in the playbook.
            conn.execute("CREATE TABLE invoices (id bigint PRIMARY KEY, tenant_id bigint)")
        code, out, _ = run_main(capsys, "check", "--dsn", sample.dsn, "--playbook", str(path))
        assert code == 1
        assert "2 of 18 table(s)" in out
        assert "public.labels (account_id): row-level security is not enabled" in out
        assert ("public.invoices (tenant_id): not in the playbook: add it (rls-migrate init "
                "shows how it reaches the tenant) and run the stages, or mark it skip with a "
                "note saying why; row-level security is not enabled") in out

        code, out, _ = run_main(capsys, "check", "--dsn", sample.dsn, "--playbook", str(path),
                                "--format", "json")
        data = json.loads(out)
        assert code == 1 and data["ok"] is False
        assert [o["table"] for o in data["offenders"]] == ["public.invoices", "public.labels"]
        assert data["warnings"] == []


def test_check_finds_tenant_data_under_any_name(
        pg_server: servers.PostgresServer, make_factory: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Next month's tables: a foreign key to the root under another name, one to a tenant
    table, a quoted mixed-case integer column; and tables the playbook skips, with and
    without a note, that hold the toolkit's own tenant column."""
    with clone(pg_server, make_factory, "enforce") as sample:
        with psycopg.connect(sample.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE payouts (id bigint PRIMARY KEY,"
                         " company_id bigint REFERENCES accounts(id))")
            conn.execute('CREATE TABLE "IssueNote" (id integer PRIMARY KEY,'
                         ' "issueRef" bigint NOT NULL REFERENCES issues(id))')
            conn.execute("CREATE TABLE scratch (id int PRIMARY KEY, tenant_id bigint)")
            conn.execute("CREATE TABLE exports (id int PRIMARY KEY, tenant_id bigint)")
            conn.execute("CREATE TABLE currencies (code text PRIMARY KEY)")
        tables = dict(sample.playbook.tables)
        tables["public.scratch"] = TablePlan(strategy="skip",
                                             note="a staging copy the nightly job truncates")
        tables["public.exports"] = TablePlan(strategy="skip")
        path = tmp_path / "app.yaml"
        path.write_text(dump_playbook(sample.playbook.model_copy(update={"tables": tables})))
        code, out, err = run_main(capsys, "check", "--dsn", sample.dsn, "--playbook", str(path))
        assert code == 1 and not err, err
        assert out.startswith("check FAILED: 3 of 21 table(s)"), out
        assert "  public.payouts (company_id): not in the playbook" in out
        assert "checked because: holds the tenant key (foreign key payouts_company_id_fkey" in out
        assert '  public."IssueNote": not in the playbook' in out
        assert ('checked because: derived from the tenant through "issueRef" -> public.issues(id)'
                ' ("IssueNote" -> issues)') in out  # issues carries tenant_id since the migration
        assert "it has no tenant column, so no policy can filter it" in out
        assert ("  public.exports (tenant_id): row-level security is not enabled" in out)
        assert "the playbook has strategy skip, without a note saying why" in out
        assert "1 left out on purpose:" in out
        assert ("  WARNING public.scratch (tenant_id): row-level security is not enabled" in out)
        assert "(a staging copy the nightly job truncates)" in out
        assert "currencies" not in out

        # Without a playbook: the tenant table is enough to find them.
        code, out, _ = run_main(capsys, "check", "--dsn", sample.dsn, "--tenant-table",
                                "accounts", "--format", "json")
        data = json.loads(out)
        offenders = {o["table"] for o in data["offenders"]}
        assert {"public.payouts", 'public."IssueNote"', "public.scratch",
                "public.exports"} <= offenders
        assert "public.issues" not in offenders and "public.currencies" not in offenders

        # Bad input: one clear line, nothing checked.
        code, out, err = run_main(capsys, "check", "--dsn", sample.dsn, "--playbook", str(path),
                                  "--tenant-table", "accounts")
        assert code == 2 and not out and err.startswith("error: --tenant-table and --key go")
        code, out, err = run_main(capsys, "check", "--dsn", sample.dsn, "--tenant-table",
                                  "acounts")
        assert code == 2 and "tenant table public.acounts not found" in err, err
        assert "did you mean" in err


def _schema(dsn: str) -> None:
    """One table per way to get RLS wrong, and one right."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        samples.ensure_roles(conn)
        conn.execute("CREATE SCHEMA rls_migrate")
        conn.execute("CREATE FUNCTION rls_migrate.observe_r(bigint) RETURNS boolean"
                     " LANGUAGE sql AS 'SELECT true'")
        for name in ("good", "no_rls", "observing", "wide_open", "null_opens", "app_owned",
                     "no_policy", "forced_app_owned"):
            conn.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, tenant_id bigint)")
            if name != "no_rls":
                conn.execute(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY")
        conn.execute("CREATE TABLE shared (id bigint PRIMARY KEY, name text)")
        conn.execute(f"CREATE POLICY t ON good AS RESTRICTIVE TO {APP} USING ({MATCH})")
        conn.execute(f"CREATE POLICY p ON good TO {APP} USING ({MATCH})")
        conn.execute(f"CREATE POLICY t ON observing USING (({MATCH}) OR"
                     " rls_migrate.observe_r(tenant_id))")
        conn.execute("CREATE POLICY t ON wide_open USING (true)")
        conn.execute("CREATE POLICY t ON null_opens USING (current_setting('app.tenant_id',"
                     " true) IS NULL OR tenant_id = current_setting('app.tenant_id')::bigint)")
        for name in ("app_owned", "forced_app_owned"):
            conn.execute(f"CREATE POLICY t ON {name} USING ({MATCH})")
            conn.execute(f"ALTER TABLE {name} OWNER TO {APP}")
        conn.execute("ALTER TABLE forced_app_owned FORCE ROW LEVEL SECURITY")


def test_check_by_column_names_every_offender_and_why(empty_db: str) -> None:
    _schema(empty_db)
    result = check(empty_db, column="tenant_id", app_role=APP, schemas=["public"])
    assert result.checked == tuple(f"public.{n}" for n in sorted(
        ("good", "no_rls", "observing", "wide_open", "null_opens", "app_owned", "no_policy",
         "forced_app_owned")))
    why = {o.table.removeprefix("public."): " ".join(o.reasons) for o in result.offenders}
    assert set(why) == {"no_rls", "observing", "wide_open", "null_opens", "app_owned",
                        "no_policy"}
    assert "not enabled" in why["no_rls"]
    assert "observe mode" in why["observing"]
    assert "USING (true) admits every row" in why["wide_open"]
    assert "context is missing" in why["null_opens"]
    assert "owns it and RLS is not forced" in why["app_owned"]
    assert "no policy at all" in why["no_policy"]
    # Without the application role, ownership cannot be judged.
    assert "app_owned" not in {o.table.removeprefix("public.") for o in check(
        empty_db, column="tenant_id", schemas=["public"]).offenders}


def test_check_cli_without_playbook(empty_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    _schema(empty_db)
    code, out, err = run_main(capsys, "check", "--dsn", empty_db, "--schema", "public",
                              "--app-role", APP)
    assert code == 1 and not err
    assert out.startswith("check FAILED: 6 of 8 table(s) that hold tenant_id lack enforced")
    assert "  public.no_rls (tenant_id): row-level security is not enabled" in out
    code, out, _ = run_main(capsys, "check", "--dsn", empty_db, "--column", "org_id")
    assert code == 0 and "no table holds org_id" in out
    code, _, err = run_main(capsys, "check", "--dsn", "host=127.0.0.1 port=1 connect_timeout=2")
    assert code == 4 and err.startswith("error: cannot connect")


def test_check_column_in_identifier_syntax(empty_db: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`--column` takes a name as SQL writes it, like init: quoted keeps the case."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute('CREATE TABLE "Team" (id text PRIMARY KEY, "organisationId" integer)')
    for spelling in ('"organisationId"', "organisationId"):
        code, out, err = run_main(capsys, "check", "--dsn", empty_db, "--column", spelling)
        assert code == 1 and not err
        assert out.startswith("check FAILED: 1 of 1 table(s) that hold organisationId"), out
        assert '  public."Team" (organisationId): row-level security is not enabled' in out
    code, out, err = run_main(capsys, "check", "--dsn", empty_db, "--column", '"org')
    assert code == 2 and not out and err.startswith("error: --column: unterminated quoted name")
