"""The real command line, run as a subprocess: version and help, ``doctor`` on the sample
database, one clear ``error:`` line and exit code for every way of not reaching the database,
DSN resolution from the environment (the demo end to end: tests/test_demo.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from rls_migrate import __version__, samples
from rls_migrate.connect import DSN_VARIABLES, MIN_SERVER_VERSION, connect
from rls_migrate.errors import ServerTooOld
from rls_migrate.testing import servers

# Version-agnostic (the toolkit's own logic over SQL every major runs alike): the core
# majors only, unless RLS_MIGRATE_TEST_ALL_MAJORS=1 (see tests/conftest.py).
pytestmark = pytest.mark.core_majors


CONSOLE_SCRIPT = shutil.which("rls-migrate") or str(Path(sys.executable).parent / "rls-migrate")
RIGHT_PASSWORD = "correct horse battery staple"


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without DSN variables or libpq's PG* defaults."""
    env = {k: v for k, v in os.environ.items()
           if k not in DSN_VARIABLES and not k.startswith("PG")}
    env.update(variables)
    return env


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m rls_migrate ARGS`` in a clean environment."""
    return subprocess.run(
        [sys.executable, "-m", "rls_migrate", *args], capture_output=True, text=True,
        env=env if env is not None else clean_env(), timeout=timeout,
    )


def assert_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The run failed with ``code`` and said why in one ``error:`` line, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def free_port() -> int:
    return servers._free_port()


def server_version(dsn: str) -> tuple[str, int]:
    with psycopg.connect(dsn) as conn:
        return str(conn.info.parameter_status("server_version")), conn.info.server_version


@pytest.fixture(scope="module")
def sample_dsn(make_factory: Callable[..., servers.DatabaseFactory]) -> Iterator[str]:
    """One sample database per server for the whole module: doctor only reads it."""
    factory = make_factory(lambda dsn: samples.load(dsn, scale=0.05), "cli")
    dsn = factory.create()
    yield dsn
    factory.drop(servers.dbname_of(dsn))


# --------------------------------------------------------------------------- basics


def test_version_from_console_script_and_module() -> None:
    assert Path(CONSOLE_SCRIPT).exists(), CONSOLE_SCRIPT
    script = subprocess.run([CONSOLE_SCRIPT, "--version"], capture_output=True, text=True,
                            env=clean_env(), timeout=60)
    module = run("--version")
    for result in (script, module):
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"rls-migrate, version {__version__}"
        assert result.stderr == ""


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: rls-migrate [OPTIONS] COMMAND")
    commands = re.findall(r"^  (\w[\w-]*)\s", result.stdout.split("Commands:")[1], re.M)
    assert {"doctor", "init", "plan", "demo"} <= set(commands)
    assert "prepare -> add-column -> backfill" in result.stdout

    doctor = run("doctor", "-h")
    assert doctor.returncode == 0 and "--app-role ROLE" in doctor.stdout
    assert "--dsn DSN" in doctor.stdout

    unknown = run("frobnicate")
    assert unknown.returncode == 2
    assert "No such command 'frobnicate'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


# --------------------------------------------------------------------------- doctor


def test_doctor_on_the_sample_database(sample_dsn: str) -> None:
    version, _ = server_version(sample_dsn)
    result = run("doctor", "--dsn", sample_dsn)
    assert result.returncode == 0, result.stderr
    assert f"ok    server     PostgreSQL {version}" in result.stdout
    # The connecting role is postgres: a warning when it only runs the migration.
    assert re.search(r"^WARN  role\s+'postgres' is a superuser and owns \d+ table\(s\): RLS "
                     r"never applies to it\. The application must connect as a role without "
                     r"SUPERUSER that owns no table \(fine for running the migration itself\)",
                     result.stdout, re.M), result.stdout
    assert "BLOCK" not in result.stdout
    # report --log reads the server's log files: doctor says whether there are any.
    assert re.search(r"^(WARN  logs\s+logging_collector = off .*report --log|ok    logs\s+"
                     r"logging_collector = on: log files in )", result.stdout, re.M)

    app = run("doctor", "--dsn", sample_dsn, "--app-role", samples.APP_ROLE)
    assert app.returncode == 0, app.stderr
    lines = app.stdout.splitlines()
    assert "ok    role       the application role 'app_user': LOGIN" in lines
    # The role doctor connected as is judged too: right for migrating, never for the app.
    assert any(re.match(r"WARN  connection connected as 'postgres', a superuser "
                        r"and the owner of \d+ table\(s\): RLS does not apply", line)
               for line in lines), app.stdout
    assert not any(f"'{samples.APP_ROLE}' is a superuser" in line for line in lines)
    assert not any("BYPASSRLS" in line for line in lines)
    assert "ok    settings   track_functions = pl" in lines
    assert any(line.startswith("WARN  views") and "open_issues" in line for line in lines)
    assert "BLOCK" not in app.stdout


def test_doctor_blocks_a_superuser_application_role(sample_dsn: str) -> None:
    result = run("doctor", "--dsn", sample_dsn, "--app-role", "postgres")
    assert result.returncode == 1
    assert re.search(r"^BLOCK role\s+'postgres' is a superuser and owns \d+ table\(s\): "
                     r"RLS never applies",
                     result.stdout, re.M), result.stdout
    assert re.search(r"^BLOCK role\s+'postgres' has BYPASSRLS", result.stdout, re.M)
    assert result.stderr == ""

    missing = run("doctor", "--dsn", sample_dsn, "--app-role", "no_such_role")
    assert missing.returncode == 1
    assert "BLOCK role       the application role 'no_such_role' does not exist" in (
        missing.stdout)


# --------------------------------------------------------------------------- cannot connect


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("host=127.0.0.1 port=notaport", 'invalid integer value "notaport"'),
        ("postgresql://[bad", "the DSN is not a valid connection string"),
        ("postgresql://app:s3cr3t-pw@[bad/db", "the DSN is not a valid connection string"),
        ("postgresql://app:s3cr3t pw@db/app", "the DSN is not a valid connection string"),
        ("host=db user=app password=s3cr3t-pw =oops", "invalid connection option"),
    ],
)
def test_wrong_dsn_syntax(dsn: str, expected: str) -> None:
    line = assert_error_line(run("doctor", "--dsn", dsn), 4)
    assert expected in line
    # libpq quotes the text it cannot parse: never the password.
    assert "s3cr3t" not in line


def test_unreachable_server() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    result = run("doctor", "--dsn", f"host=127.0.0.1 port={port} user=postgres dbname=app")
    line = assert_error_line(result, 4)
    assert f"cannot connect to postgres@127.0.0.1:{port}/app" in line
    assert "server running" in line
    assert time.monotonic() - started < 30


def test_bad_password(pg_server: servers.PostgresServer) -> None:
    role = sql.Identifier(servers.PASSWORD_ROLE)
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        # Roles are cluster-wide: create it once, and (re)set its password every time.
        try:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        except psycopg.errors.DuplicateObject:
            pass
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
            role, sql.Literal(RIGHT_PASSWORD)))

    # The harness authenticates this role by scram over TCP: the right password works ...
    right = pg_server.dsn("postgres", user=servers.PASSWORD_ROLE, password=RIGHT_PASSWORD)
    ok = run("doctor", "--dsn", right)
    assert ok.returncode == 0, ok.stderr
    assert f"the connecting role '{servers.PASSWORD_ROLE}'" in ok.stdout

    # ... and a wrong one is one clear line.
    wrong = pg_server.dsn("postgres", user=servers.PASSWORD_ROLE, password="wrong-guess")
    line = assert_error_line(run("doctor", "--dsn", wrong), 4)
    assert f'password authentication failed for user "{servers.PASSWORD_ROLE}"' in line
    assert "(check the user and password)" in line
    assert "wrong-guess" not in line


def test_database_does_not_exist(pg_server: servers.PostgresServer) -> None:
    result = run("doctor", "--dsn", pg_server.dsn("rlsm_no_such_db"))
    line = assert_error_line(result, 4)
    assert 'database "rlsm_no_such_db" does not exist' in line
    assert "(check the database name)" in line


def test_server_too_old(pg_server: servers.PostgresServer) -> None:
    # The CLI maps ServerTooOld to exit 4 like any connection failure (cli.main), but no
    # server older than PostgreSQL 13 can run here (the oldest we have is 15), so the check
    # is exercised through the library with a minimum above the real server's version.
    dsn = pg_server.dsn()
    shown, number = server_version(dsn)
    app_name = f"rlsm-too-old-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ServerTooOld) as too_old:
        connect(dsn, min_version=number + 10_000, application_name=app_name)
    needed = number // 10_000 + 1
    assert str(too_old.value) == (
        f"PostgreSQL {shown} is too old: rls-migrate needs PostgreSQL {needed} or newer")
    assert too_old.value.exit_code == 4

    # The refused connection was closed, not leaked.
    def leaked() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity"
                               " WHERE application_name = %s", [app_name]).fetchone()
            assert row is not None
            return int(row[0])

    deadline = time.monotonic() + 5
    while leaked() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leaked() == 0

    # The real minimum is PostgreSQL 13, which every server here passes.
    assert MIN_SERVER_VERSION == 130_000
    with connect(dsn) as conn:
        assert conn.info.server_version >= MIN_SERVER_VERSION


# --------------------------------------------------------------------------- DSN resolution


def test_no_dsn_at_all() -> None:
    line = assert_error_line(run("doctor"), 2)
    assert "no database to connect to" in line
    assert "--dsn" in line and "RLS_MIGRATE_DSN" in line and "DATABASE_URL" in line


def test_dsn_from_the_environment(sample_dsn: str) -> None:
    version, _ = server_version(sample_dsn)
    nowhere = f"host=127.0.0.1 port={free_port()} user=postgres"

    from_ours = run("doctor", env=clean_env(RLS_MIGRATE_DSN=sample_dsn, DATABASE_URL=nowhere))
    assert from_ours.returncode == 0, from_ours.stderr
    assert f"PostgreSQL {version}" in from_ours.stdout

    from_database_url = run("doctor", env=clean_env(DATABASE_URL=sample_dsn))
    assert from_database_url.returncode == 0, from_database_url.stderr

    option_wins = run("doctor", "--dsn", nowhere, env=clean_env(RLS_MIGRATE_DSN=sample_dsn))
    assert_error_line(option_wins, 4)
