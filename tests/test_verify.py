"""verify on the migrated sample database, on every major: it passes once the view is
security_invoker, and catches each problem planted in a copy (structure, bypasses, lints),
with the live probe agreeing where a problem lets a tenant cross."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from enforce_helpers import Sample, clone
from psycopg import sql
from version_helpers import major_of, secure_view

from rls_migrate import samples
from rls_migrate.playbook import dump_playbook
from rls_migrate.runner import rollback_to
from rls_migrate.testing import servers
from rls_migrate.verify import ALL_RULES, VerifyReport, verify
from rls_migrate.verify.rules import RULES

APP = samples.APP_ROLE
PROBE_COLUMNS = ("read", "update", "delete", "insert", "move", "no-ctx")
# What the migrated sample keeps on purpose: reported, never failing.
EXPECTED_WARNINGS = {
    ("global-unique-constraint", "public.users"),
    ("cross-tenant-foreign-key", "public.comments"),
    ("cross-tenant-foreign-key", "public.issue_labels"),
    # audit_log is a hint whose orphans are skipped: nullable by the playbook, its rows
    # without a tenant reported.
    ("rows-without-tenant", "public.audit_log"),
}


@pytest.fixture
def enforced(pg_server: servers.PostgresServer, make_factory: Any) -> Iterator[Sample]:
    with clone(pg_server, make_factory, "enforce") as sample:
        yield sample


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from rls_migrate.cli import main; main()",
                           *args], capture_output=True, text=True, timeout=120)


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type, unused-ignore]


def failed(report: VerifyReport) -> set[tuple[str, str]]:
    return {(f.code, f.subject) for f in report.failures}


def test_passes_on_the_migrated_sample_once_the_view_is_fixed(
        enforced: Sample, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(dump_playbook(enforced.playbook))

    # As migrated, the view still reads issues with its owner's rights: verify fails on it,
    # structurally and in the probe, and on nothing else.
    before = run_cli("verify", str(path), "--dsn", enforced.dsn)
    assert before.returncode == 1, before.stderr
    assert "Traceback" not in before.stderr
    lines = [line for line in before.stdout.splitlines() if line.startswith("FAIL")]
    assert len(lines) == 2, before.stdout
    assert "view-bypasses-rls" in lines[1] or "view-bypasses-rls" in lines[0]
    assert any("probe-view-no-context" in line for line in lines)
    if major_of(enforced.dsn) >= 15:
        assert "security_invoker = true" in before.stdout
    else:
        assert "security_invoker needs PostgreSQL 15" in before.stdout

    secure_view(enforced.dsn)
    report = verify(enforced.dsn, enforced.playbook)
    assert report.ok, report.failures
    assert {(f.code, f.subject) for f in report.warnings} == EXPECTED_WARNINGS
    matrix = report.matrix()
    assert len(matrix) == 17
    for table, cells in matrix.items():
        for column in ("rls", "policy", "index", *PROBE_COLUMNS):
            assert cells.get(column) == "pass", (table, column, cells)
    assert report.probe_role == APP

    code, out, _ = run_main(capsys, "verify", str(path), "--dsn", enforced.dsn,
                            "--format", "json")
    assert code == 0, out[-2000:]
    data = json.loads(out)
    assert data["ok"] is True and data["summary"]["fail"] == 0
    assert data["tables"]["public.events_2026_03"]["insert"] == "pass"
    assert set(data["checks"]) == {r.code for r in ALL_RULES}


def _drop_policies(dsn: str) -> None:
    execute(dsn, *(f"DROP POLICY {p} ON labels" for p in (
        "rls_migrate_tenant", "rls_migrate_baseline", "rls_migrate_admin")))


def _app_owns(dsn: str) -> None:
    execute(dsn, f"ALTER TABLE labels OWNER TO {APP}")


def _view(dsn: str) -> None:
    execute(dsn, "CREATE VIEW label_names AS SELECT name FROM labels",
            f"GRANT SELECT ON label_names TO {APP}")


def _definer(dsn: str) -> None:
    execute(dsn, "CREATE FUNCTION label_count() RETURNS bigint LANGUAGE sql SECURITY DEFINER"
                 " AS 'SELECT count(*) FROM public.labels'")


def _no_index(dsn: str) -> None:
    execute(dsn, "DROP INDEX labels_account_id_rlsm_idx")


def _rls_off(dsn: str) -> None:
    execute(dsn, "ALTER TABLE labels DISABLE ROW LEVEL SECURITY")


def _null_context_opens(dsn: str) -> None:
    execute(dsn, "ALTER POLICY rls_migrate_tenant ON labels USING ("
                 "current_setting('app.tenant_id', true) IS NULL OR account_id ="
                 " current_setting('app.tenant_id', true)::bigint)")


def _second_permissive(dsn: str) -> None:
    execute(dsn, f"CREATE POLICY everything ON labels TO {APP} USING (true)")


def _tenantless_row(dsn: str) -> None:
    execute(dsn, "ALTER TABLE labels ALTER COLUMN account_id DROP NOT NULL",
            "UPDATE labels SET account_id = NULL WHERE id = (SELECT min(id) FROM labels)")


# plant -> (failures it must cause, warnings it must cause)
PLANTS: dict[str, tuple[Callable[[str], None], set[tuple[str, str]], set[tuple[str, str]]]] = {
    "table without policy": (_drop_policies, {("tenant-policy-missing", "public.labels")},
                             set()),
    "app role owns the table, not forced": (
        _app_owns, {("tenant-table-not-forced", "public.labels"),
                    ("probe-read", "public.labels"), ("probe-no-context", "public.labels")},
        set()),
    "view without security_invoker": (
        _view, {("view-bypasses-rls", "public.label_names"),
                ("probe-view-no-context", "public.label_names")}, set()),
    "SECURITY DEFINER function": (
        _definer, {("security-definer-function", "public.label_count()")}, set()),
    "missing tenant index": (_no_index, {("tenant-index-missing", "public.labels")}, set()),
    "RLS disabled": (_rls_off, {("tenant-table-rls-disabled", "public.labels"),
                                ("policy-rls-disabled", "public.labels"),
                                ("probe-read", "public.labels")}, set()),
    "missing context admits all": (
        _null_context_opens, {("missing-context-admits-all", "public.labels"),
                              ("tenant-policy-mismatch", "public.labels")},
        {("setting-read-per-row", "public.labels")}),
    "a row without a tenant": (
        _tenantless_row, set(), {("tenant-column-nullable", "public.labels"),
                                 ("rows-without-tenant", "public.labels")}),
    "second permissive policy": (
        _second_permissive, set(), {("multiple-permissive-policies", "public.labels"),
                                    ("permissive-policy-always-true", "public.labels")}),
}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_catches_each_planted_problem(enforced: Sample, plant: str) -> None:
    apply, must_fail, must_warn = PLANTS[plant]
    secure_view(enforced.dsn)
    apply(enforced.dsn)
    report = verify(enforced.dsn, enforced.playbook)
    assert must_fail <= failed(report), report.failures
    assert must_warn <= {(f.code, f.subject) for f in report.warnings}, report.warnings
    if not must_fail:
        assert report.ok, report.failures
    # Nothing but the planted table (or object) fails.
    planted = {subject for _, subject in must_fail | must_warn}
    assert {s for _, s in failed(report)} <= planted, report.failures


def test_bypassrls_app_role_is_caught(enforced: Sample, pg_server: servers.PostgresServer) -> None:
    """Roles are cluster-wide: the attribute is restored whatever happens."""
    secure_view(enforced.dsn)
    try:
        execute(pg_server.dsn(), f"ALTER ROLE {APP} BYPASSRLS")
        report = verify(enforced.dsn, enforced.playbook)
    finally:
        execute(pg_server.dsn(), f"ALTER ROLE {APP} NOBYPASSRLS")
    assert ("app-role-bypasses-rls", APP) in failed(report)
    assert ("probe-read", "public.issues") in failed(report)


def test_observe_mode_is_not_enforcement(enforced: Sample) -> None:
    """After the kill switch, every tenant policy records instead of hiding: verify says so
    for every table, and the probe sees tenant A read B's rows."""
    rollback_to(enforced.dsn, enforced.playbook, "observe")
    report = verify(enforced.dsn, enforced.playbook)
    mismatch = {s for c, s in failed(report) if c == "tenant-policy-mismatch"}
    assert len(mismatch) == 17
    assert "observe mode" in next(f.message for f in report.failures
                                  if f.code == "tenant-policy-mismatch")
    assert ("probe-read", "public.comments") in failed(report)


def test_probe_with_the_apps_own_connection_and_given_tenants(
        enforced: Sample, pg_server: servers.PostgresServer) -> None:
    secure_view(enforced.dsn)
    app_dsn = pg_server.dsn(enforced.dbname, user=APP)
    report = verify(enforced.dsn, enforced.playbook, app_dsn=app_dsn, tenants=["3", "4"])
    assert report.ok, report.failures
    assert report.tenants == ("3", "4") and report.probe_role == APP
    # A verifier that is itself filtered (not owner, no BYPASSRLS) says so per table.
    filtered = verify(pg_server.dsn(enforced.dbname, user=samples.ADMIN_ROLE),
                      enforced.playbook, app_dsn=app_dsn)
    setup = [f for f in filtered.failures if f.code == "probe-setup"]
    assert len(setup) == 17 and "row-level security" in setup[0].message


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The console entry point in process (exit code, stdout, stderr)."""
    from rls_migrate.cli import main

    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.out, out.err


def test_cli_lists_and_explains_checks_and_refuses_bad_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "verify", "--list")
    assert code == 0
    assert {line.split()[0] for line in out.splitlines()} == {r.code for r in ALL_RULES}
    for rule in RULES:
        assert "Problem:" in rule.doc and "Solution:" in rule.doc, rule.code
    code, out, _ = run_main(capsys, "verify", "--explain", "view-bypasses-rls")
    assert code == 0 and "security_invoker" in out and out.count("view-bypasses-rls") == 1
    code, _, err = run_main(capsys, "verify", "--explain", "no-such-check")
    assert code == 2 and err.startswith("error: no verify check")
    code, _, err = run_main(capsys, "verify")
    assert code == 2 and "PLAYBOOK" in err
    code, _, err = run_main(capsys, "verify", str(tmp_path / "missing.yaml"),
                            "--dsn", "host=127.0.0.1 port=1")
    assert code == 2 and "cannot read the playbook" in err


def test_without_the_probe_only_the_catalog_is_read(enforced: Sample) -> None:
    report = verify(enforced.dsn, enforced.playbook, probe=False)
    probe_codes = {r.code for r in ALL_RULES if r.check is None}
    assert report.probe_role is None
    assert not [f for f in report.findings if f.code in probe_codes]
    assert failed(report) == {("view-bypasses-rls", "public.open_issues")}


def test_view_owned_by_a_role_rls_applies_to_passes(enforced: Sample) -> None:
    """Before PostgreSQL 15 (no security_invoker) the way to a safe view is its owner: one
    that RLS applies to. verify accepts it on every major, and the probe agrees."""
    execute(enforced.dsn, f"ALTER VIEW open_issues OWNER TO {APP}")
    report = verify(enforced.dsn, enforced.playbook)
    assert report.ok, report.failures
    view = [f for f in report.findings if f.code == "view-bypasses-rls"]
    assert [f.subject for f in view] == ["public.open_issues"]
    assert f"its owner '{APP}' is subject to RLS" in view[0].message


def test_rows_without_a_tenant_are_seen_by_admin_roles_only(enforced: Sample) -> None:
    """audit_log is kept nullable (a hint whose orphans are skipped): after enforce its rows
    without a tenant are invisible to the application under any tenant, seen by the admin
    role, and counted by verify."""
    with psycopg.connect(enforced.dsn) as conn:
        row = conn.execute("SELECT count(*) FROM audit_log WHERE tenant_id IS NULL").fetchone()
        assert row is not None and row[0] > 0
        orphans = int(row[0])

        def seen(role: str, tenant: str | None) -> int:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                if tenant is not None:
                    conn.execute("SELECT set_config('app.tenant_id', %s, true)", [tenant])
                got = conn.execute("SELECT count(*) FROM audit_log WHERE tenant_id IS NULL"
                                   ).fetchone()
            return int(got[0]) if got else -1

        assert [seen(APP, t) for t in ("1", "2", None)] == [0, 0, 0]
        assert seen(samples.ADMIN_ROLE, None) == orphans
    report = verify(enforced.dsn, enforced.playbook, probe=False)
    [finding] = [f for f in report.findings
                 if f.code == "rows-without-tenant" and f.subject == "public.audit_log"]
    assert finding.status == "warn"
    assert finding.message.startswith(f"{orphans} row(s) without a tenant, kept nullable")
    assert samples.ADMIN_ROLE in finding.message
