"""Security: nobody is let in.

* **Injection through tenant ids**, at every entry point that takes one: the context helpers
  (``normalize_tenant_id``, ``set_tenant``, ``tenant_transaction``,
  ``pooled_tenant_connection``), SQLAlchemy's ``tenant_session``, the pytest plugin
  (``assert_tenant_isolated``, and its fixtures in a pytest run of their own) and the CLI
  (``verify --tenants``). Integer and uuid keys refuse every crafted id before anything is
  sent; text keys take it as data (a bound parameter, read back byte for byte); the database
  is the same afterwards (checksums of every table).
* **Context leakage across pooled connections**: threads share a two-connection
  ``make_tenant_pool``; each checks out with a tenant and must see exactly that tenant, some
  misbehave (a session-level ``SET`` of another tenant) and checkouts without a tenant must
  see nothing: leaks found must be 0.
* **The application role cannot reach the toolkit**: as ``app_user``, every table of the
  ``rls_migrate`` schema refuses SELECT, INSERT, UPDATE, DELETE and TRUNCATE; its functions
  (the observe recorders) cannot be called by name with crafted arguments; and nothing turns
  the policies off: DISABLE / NO FORCE ROW LEVEL SECURITY, DROP / ALTER / CREATE POLICY,
  ``row_security = off``, SET ROLE, OWNER TO.
* **SECURITY DEFINER functions** of the toolkit pin ``search_path`` (``pg_proc.proconfig``)
  to trusted schemas, ``pg_temp`` last.
* **The observe log line cannot be forged**: a crafted ``application_name`` (JSON fragments,
  quotes, the line's own prefix) or statement text (newlines, comments ending in a JSON
  object that imitates a record) never makes ``report``'s log reader see a record that was
  not written.
"""

from __future__ import annotations

import collections
import importlib.metadata
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from enforce_helpers import Sample, clone
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.pq import TransactionStatus

from reliability.support import (
    StageTemplates,
    checksums,
    heavy_on_newest_only,
    report,
    write_playbook,
)
from rls_migrate import samples
from rls_migrate.context import (
    InvalidTenantId,
    make_tenant_pool,
    normalize_tenant_id,
    pooled_tenant_connection,
    set_tenant,
    tenant_transaction,
)
from rls_migrate.report import read_log
from rls_migrate.testing import servers
from rls_migrate.testing.faults import cli_command, cli_env, run_cli
from rls_migrate.testing.pytest_plugin import assert_tenant_isolated

PAYLOADS: tuple[object, ...] = (
    "1; DROP TABLE accounts; --", "1' OR '1'='1", "1) OR (1=1", "' OR 1=1 --",
    "1 UNION SELECT id FROM accounts", "$$; DROP TABLE accounts; $$", "1\x00",
    "\uff11", "\u0661", "0x1", "1e3", " 1", "1 ", "1\n; DROP TABLE accounts",
    "'; SET ROLE postgres; --", "\\'; DROP TABLE accounts; --", "%s", "%(x)s", "{0}",
    "NULL", "", "9" * 40, "-9223372036854775809", "1.0", "app.tenant_id",
    "00000000-0000-0000-0000-000000000001'; DROP TABLE accounts; --",
    "{00000000-0000-0000-0000-000000000001}", "x" * 1025, "\ud800",
    True, None, 1.5, [1], {"a": 1}, b"1", object(),
)
KEY_TYPES = ("bigint", "integer", "smallint", "uuid", "text")


@pytest.fixture
def enforced(pg_server: servers.PostgresServer,
             make_factory: Callable[..., servers.DatabaseFactory]) -> Iterator[Sample]:
    """A fresh copy of the sample with every stage applied (enforced): the enforce tests'
    template, shared when this process has built it already."""
    with clone(pg_server, make_factory, "enforce") as sample:
        yield sample


def app_dsn(dsn: str) -> str:
    return make_conninfo(dsn, user=samples.APP_ROLE)


def accepted(value: object, key_type: str) -> bool:
    try:
        normalize_tenant_id(value, key_type)
    except InvalidTenantId:
        return False
    return True


# --------------------------------------------------------------------------- injection


def inject_through_helpers(dsn: str) -> collections.Counter[str]:
    """Every payload, every key type, through every psycopg helper; returns what happened."""
    seen: collections.Counter[str] = collections.Counter()
    with psycopg.connect(app_dsn(dsn)) as conn:
        for key_type in KEY_TYPES:
            for payload in PAYLOADS:
                if not accepted(payload, key_type):
                    # Refused before anything is sent: no transaction is even begun.
                    with pytest.raises(InvalidTenantId):
                        with tenant_transaction(conn, payload, key_type=key_type):
                            pass
                    assert conn.info.transaction_status == TransactionStatus.IDLE
                    with conn.transaction():
                        with pytest.raises(InvalidTenantId):
                            set_tenant(conn, payload, key_type=key_type)
                        # The transaction is intact: nothing reached the server.
                        assert conn.execute("SELECT 1").fetchone() == (1,)
                    seen["refused"] += 2
                    continue
                # Accepted (text keys, and clean numbers): data, read back exactly.
                value = normalize_tenant_id(payload, key_type)
                with tenant_transaction(conn, payload, key_type=key_type):
                    row = conn.execute("SELECT current_setting('app.tenant_id')").fetchone()
                    assert row == (value,)
                seen["stored as data"] += 1
    return seen


def inject_through_pool_and_plugin(dsn: str) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    with make_tenant_pool(app_dsn(dsn), min_size=1, max_size=1, open=True) as pool:
        for payload in PAYLOADS:
            if accepted(payload, "bigint"):
                continue
            with pytest.raises(InvalidTenantId):
                with pooled_tenant_connection(pool, payload):
                    pass
            with pytest.raises(InvalidTenantId):
                assert_tenant_isolated(dsn, "public.users", tenants=(payload, 2),
                                       column="account_id", app_role=samples.APP_ROLE)
            seen["refused"] += 2
    return seen


def inject_through_sqlalchemy(dsn: str) -> int:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from rls_migrate.sqlalchemy import install_tenant_listener, sqlalchemy_url, tenant_session

    engine = create_engine(sqlalchemy_url(app_dsn(dsn)))
    factory = sessionmaker(engine)
    install_tenant_listener(factory, key_type="bigint")
    refused = 0
    try:
        for payload in PAYLOADS:
            if accepted(payload, "bigint"):
                continue
            with pytest.raises(InvalidTenantId):
                with tenant_session(factory, payload):
                    pass
            refused += 1
    finally:
        engine.dispose()
    return refused


def test_injection_through_the_helpers(enforced: Sample,
                                       pg_server: servers.PostgresServer) -> None:
    before = checksums(enforced.dsn)
    seen = inject_through_helpers(enforced.dsn)
    seen.update(inject_through_pool_and_plugin(enforced.dsn))
    seen["refused"] += inject_through_sqlalchemy(enforced.dsn)
    assert checksums(enforced.dsn) == before
    assert seen["refused"] > 100 and seen["stored as data"] > 10, seen
    report(f"injection (helpers, pool, SQLAlchemy, plugin assertion) {pg_server.backend.name}: "
           f"{sum(seen.values())} attempts: {dict(seen)}; database unchanged")


@pytest.mark.reliability
def test_injection_through_the_cli(enforced: Sample, pg_server: servers.PostgresServer,
                                   tmp_path: Path) -> None:
    """``verify --tenants`` is the CLI argument that takes tenant ids."""
    heavy_on_newest_only(pg_server)
    path = write_playbook(enforced.playbook, tmp_path / "app.yaml")
    before = checksums(enforced.dsn)
    crafted = ["1; DROP TABLE accounts; --,2", "1' OR '1'='1,2", "1,2) OR (1=1",
               "$$; DROP TABLE accounts; $$,2", "1,2; DELETE FROM users"]
    codes = []
    for tenants in crafted:
        done = run_cli(cli_command("verify", str(path), "--dsn", enforced.dsn, "--tenants",
                                   tenants, "--format", "json"), timeout=120)
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        assert done.returncode in (1, 2), done.stderr
        codes.append(done.returncode)
    assert checksums(enforced.dsn) == before
    report(f"injection (CLI verify --tenants) {pg_server.backend.name}: {len(crafted)} "
           f"attempts, exit codes {sorted(set(codes))}, database unchanged")


PLUGIN_TEST = '''
import pytest
from rls_migrate.context import InvalidTenantId

PAYLOADS = {payloads!r}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_tenant_connection(tenant_connection, payload):
    with pytest.raises(InvalidTenantId):
        tenant_connection(payload)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_tenant_session(tenant_session, payload):
    with pytest.raises(InvalidTenantId):
        tenant_session(payload)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_rls_fixture(rls, payload):
    with pytest.raises(InvalidTenantId):
        rls.assert_tenant_isolated("public.users", tenants=(payload, 2), column="account_id")


def test_a_clean_id_still_works(tenant_connection):
    conn = tenant_connection(1)
    assert {{r[0] for r in conn.execute("SELECT account_id FROM users")}} == {{1}}
'''


@pytest.mark.reliability
def test_injection_through_the_pytest_plugin(enforced: Sample, tmp_path: Path,
                                             pg_server: servers.PostgresServer) -> None:
    """The plugin's fixtures, in a pytest run of their own, as a user's suite has them."""
    payloads = [p for p in PAYLOADS if isinstance(p, str) and not accepted(p, "bigint")
                and "\x00" not in p and not any(0xD800 <= ord(c) <= 0xDFFF for c in p)]
    (tmp_path / "test_isolation.py").write_text(PLUGIN_TEST.format(payloads=payloads))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    before = checksums(enforced.dsn)
    # Installed, the plugin registers itself (entry point pytest11); else ask for it.
    registered = any(e.value == "rls_migrate.testing.pytest_plugin"
                     for e in importlib.metadata.entry_points(group="pytest11"))
    plugin = [] if registered else ["-p", "rls_migrate.testing.pytest_plugin"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *plugin, "-q", "-p", "no:cacheprovider",
         "test_isolation.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=cli_env({"RLS_MIGRATE_DSN": enforced.dsn,
                     "RLS_MIGRATE_APP_ROLE": samples.APP_ROLE}))
    expected = 3 * len(payloads) + 1
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"{expected} passed" in done.stdout, done.stdout[-3000:]
    assert checksums(enforced.dsn) == before
    report(f"injection (pytest plugin fixtures) {pg_server.backend.name}: "
           f"{3 * len(payloads)} attempts refused")


# --------------------------------------------------------------------------- pooled context


def hammer_the_pool(dsn: str, *, threads: int, iterations: int, seed: int) -> dict[str, int]:
    """Threads over a two-connection pool; returns the counts, ``leaks`` among them."""
    tenants = (1, 2, 3, 4)
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def note(key: str, n: int = 1) -> None:
        with lock:
            counts[key] += n

    with make_tenant_pool(app_dsn(dsn), min_size=2, max_size=2, open=True,
                          timeout=30) as pool:
        def work(n: int) -> None:
            rng = random.Random(seed + n)
            try:
                for _ in range(iterations):
                    action = rng.random()
                    if action < 0.2:
                        # A checkout without a tenant (a forgotten code path): sees nothing.
                        with pool.connection() as conn:
                            row = conn.execute("SELECT NULLIF(current_setting('app.tenant_id',"
                                               " true), ''), (SELECT count(*) FROM users)"
                                               ).fetchone()
                            conn.rollback()
                        note("checkouts without tenant")
                        if row != (None, 0):
                            note("leaks")
                        continue
                    tenant = rng.choice(tenants)
                    with pooled_tenant_connection(pool, tenant) as conn:
                        row = conn.execute(
                            "SELECT current_setting('app.tenant_id'),"
                            " (SELECT array_agg(DISTINCT account_id) FROM users),"
                            " (SELECT count(*) FROM comments WHERE tenant_id <> %s)",
                            [tenant]).fetchone()
                        assert row is not None
                        if row[0] != str(tenant) or set(row[1] or []) - {tenant} or row[2]:
                            note("leaks")
                        if action > 0.85:
                            # Misbehaving code: a session-level SET of another tenant, which
                            # outlives the transaction on this pooled connection.
                            other = rng.choice([t for t in tenants if t != tenant])
                            conn.execute(sql.SQL("SET app.tenant_id = {}").format(
                                sql.Literal(str(other))))
                            note("session-level SETs")
                    note("tenant checkouts")
            except BaseException as exc:  # collected, asserted by the caller
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=300)
    assert errors == []
    return dict(counts)


def test_no_context_leaks_across_pooled_connections(enforced: Sample,
                                                    pg_server: servers.PostgresServer) -> None:
    counts = hammer_the_pool(enforced.dsn, threads=6, iterations=40, seed=11)
    assert counts.get("leaks", 0) == 0, counts
    assert counts["session-level SETs"] > 0 and counts["checkouts without tenant"] > 0
    report(f"pooled context {pg_server.backend.name}: {counts}")


@pytest.mark.reliability
def test_no_context_leaks_across_pooled_connections_long(enforced: Sample,
                                                         pg_server: servers.PostgresServer
                                                         ) -> None:
    counts = hammer_the_pool(enforced.dsn, threads=12, iterations=250, seed=29)
    assert counts.get("leaks", 0) == 0, counts
    report(f"pooled context (long) {pg_server.backend.name}: {counts}")


# --------------------------------------------------------------------------- the toolkit's own


def toolkit_relations(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT c.relname, a.attname FROM pg_class c JOIN pg_attribute a"
        " ON a.attrelid = c.oid AND a.attnum = 1"
        " WHERE c.relnamespace = 'rls_migrate'::regnamespace AND c.relkind IN ('r', 'p')"
        " ORDER BY 1").fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def toolkit_functions(conn: psycopg.Connection[Any]) -> list[tuple[str, str, bool, Any]]:
    """(name, signature, SECURITY DEFINER, proconfig) of the toolkit's functions: in its
    schema, or named rls_migrate_* elsewhere (trigger functions)."""
    rows = conn.execute(
        "SELECT p.proname, pg_get_function_identity_arguments(p.oid), p.prosecdef,"
        " p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'rls_migrate' OR p.proname LIKE 'rls\\_migrate\\_%'"
        " ORDER BY 1").fetchall()
    return [(str(r[0]), str(r[1]), bool(r[2]), r[3]) for r in rows]


def refused(conn: psycopg.Connection[Any], statement: sql.SQL | sql.Composed,
            params: list[Any] | None = None) -> bool:
    """Whether the statement fails for lack of a privilege (in a savepoint)."""
    try:
        with conn.transaction():
            conn.execute(statement, params)
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.InvalidSchemaName):
        return True
    return False


def attack_as_app(dsn: str) -> dict[str, int]:
    """Everything the application role might try against the toolkit and the policies;
    every attempt must be refused. Returns the counts."""
    ident = sql.Identifier
    tried: collections.Counter[str] = collections.Counter()
    with psycopg.connect(dsn, autocommit=True) as owner:
        relations = toolkit_relations(owner)
        functions = toolkit_functions(owner)
        assert owner.execute("SELECT has_schema_privilege(%s, 'rls_migrate', 'USAGE')",
                             [samples.APP_ROLE]).fetchone() == (False,)
    assert relations, "no toolkit table to attack"
    statement: sql.SQL | sql.Composed
    with psycopg.connect(app_dsn(dsn)) as conn:
        for table, first in relations:
            t = ident("rls_migrate", table)
            for statement in (
                sql.SQL("SELECT * FROM {}").format(t),
                sql.SQL("INSERT INTO {} DEFAULT VALUES").format(t),
                sql.SQL("UPDATE {} SET {} = {}").format(t, ident(first), ident(first)),
                sql.SQL("DELETE FROM {}").format(t),
                sql.SQL("TRUNCATE {}").format(t),
                sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(t),
            ):
                assert refused(conn, statement), statement.as_string(conn)
                tried["toolkit tables"] += 1
        for name, args, _, _ in functions:
            crafted = ["1", "' OR 1=1; --", "00000000-0000-0000-0000-000000000001"]
            for value in crafted:
                call = sql.SQL("SELECT {}({})").format(
                    ident("rls_migrate", name),
                    sql.SQL(", ").join(sql.Literal(value) for _ in (args.split(",")
                                                                    if args else [])))
                assert refused(conn, call), call.as_string(conn)
                tried["toolkit functions"] += 1
            assert refused(conn, sql.SQL("SELECT {}::regproc").format(
                sql.Literal(ident("rls_migrate", name).as_string(conn))))
            tried["toolkit functions"] += 1
        tenant_tables = [str(r[0]) for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relrowsecurity"
            " AND relnamespace = 'public'::regnamespace ORDER BY 1").fetchall()]
        assert tenant_tables, "no table has RLS"
        for table in tenant_tables:
            t = ident("public", table)
            for statement in (
                sql.SQL("ALTER TABLE {} DISABLE ROW LEVEL SECURITY").format(t),
                sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(t),
                sql.SQL("DROP POLICY rls_migrate_tenant ON {}").format(t),
                sql.SQL("ALTER POLICY rls_migrate_tenant ON {} USING (true)").format(t),
                sql.SQL("CREATE POLICY mine ON {} USING (true)").format(t),
                sql.SQL("ALTER TABLE {} OWNER TO {}").format(t, ident(samples.APP_ROLE)),
            ):
                assert refused(conn, statement), statement.as_string(conn)
                tried["policies"] += 1
        for statement in (sql.SQL("SET ROLE postgres"),
                          sql.SQL("SET SESSION AUTHORIZATION postgres"),
                          sql.SQL("ALTER ROLE {} BYPASSRLS").format(ident(samples.APP_ROLE))):
            assert refused(conn, statement), statement.as_string(conn)
            tried["roles"] += 1
        # row_security = off does not bypass RLS for a role without BYPASSRLS: it errors.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            with conn.transaction():
                conn.execute("SET LOCAL row_security = off")
                conn.execute("SELECT count(*) FROM users")
        tried["policies"] += 1
        conn.rollback()
    return dict(tried)


def test_app_role_cannot_reach_the_toolkit_or_the_policies(
        enforced: Sample, pg_server: servers.PostgresServer) -> None:
    tried = attack_as_app(enforced.dsn)
    report(f"app role attacks (enforced) {pg_server.backend.name}: {tried}, all refused")


@pytest.mark.reliability
def test_app_role_cannot_call_the_recorders_in_observe_mode(
        pg_server: servers.PostgresServer,
        make_factory: Callable[..., servers.DatabaseFactory]) -> None:
    with clone(pg_server, make_factory, "observe") as observed:
        tried = attack_as_app(observed.dsn)
        assert tried["toolkit functions"] > 0, "no recorder function to call"
    report(f"app role attacks (observe) {pg_server.backend.name}: {tried}, all refused")


def test_security_definer_functions_pin_search_path(
        enforced: Sample, pg_server: servers.PostgresServer) -> None:
    """Enforced: the observe recorders stay (the kill switch goes back to them)."""
    checked = 0
    with psycopg.connect(enforced.dsn) as conn:
        for name, args, definer, config in toolkit_functions(conn):
            if not definer:
                continue
            paths = [c.split("=", 1)[1] for c in (config or [])
                     if c.startswith("search_path=")]
            assert paths, f"{name}({args}): SECURITY DEFINER without a search_path"
            schemas = [s.strip().strip('"') for s in paths[0].split(",")]
            assert set(schemas) <= {"pg_catalog", "pg_temp", "rls_migrate"}, (name, schemas)
            assert "pg_temp" not in schemas or schemas[-1] == "pg_temp", (name, schemas)
            checked += 1
    assert checked > 0, "no SECURITY DEFINER function to check"
    report(f"SECURITY DEFINER functions {pg_server.backend.name}: {checked} checked, every "
           "one pins search_path")


# --------------------------------------------------------------------------- the log line


FORGED = ('{"v": 1, "at": "2026-01-01T00:00:00+00:00", "table": "public.forged", "op": "read",'
          ' "kind": "no_context", "role": "x", "app": "forger", "pid": 1, "statement": "s"}')


def violations_logged(server: servers.LocalServer, dsn: str, *,
                      application_names: list[str], statements: list[str]) -> list[Any]:
    """Run each statement once per application_name as the application with no tenant (a
    would-be violation each), then read the server log as ``report --log`` does."""
    assert server.log_path is not None
    start = server.log_path.stat().st_size
    for name in application_names:
        with psycopg.connect(app_dsn(dsn), autocommit=True, application_name=name) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type, unused-ignore]
    time.sleep(0.3)  # the logging collector writes asynchronously
    part = server.log_path.parent / f"part-{uuid.uuid4().hex[:6]}.log"
    with server.log_path.open("rb") as fh:
        fh.seek(start)
        part.write_bytes(fh.read())
    try:
        return list(read_log(part))
    finally:
        part.unlink()


@pytest.mark.reliability
def test_a_crafted_application_name_cannot_forge_a_record(
        fault_templates: StageTemplates, fault_server: servers.LocalServer) -> None:
    """Even with ``%a`` (application_name) in log_line_prefix, where the crafted name
    lands in front of every line of the session."""
    names = [FORGED, f"rls_migrate violation {FORGED}", 'x", "table": "public.forged", "v": 1',
             "evil\nrls_migrate violation {}", "'; DROP TABLE users; --"]
    with psycopg.connect(fault_server.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('log_line_prefix')").fetchone()
        assert row is not None
        conn.execute("ALTER SYSTEM SET log_line_prefix = '%m [%p] %a %q%u@%d '")
        conn.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(0.3)
        with fault_templates.cloned("enforce") as observed:
            found = violations_logged(fault_server, observed, application_names=names,
                                      statements=["SELECT count(*) FROM users"])
    finally:
        with psycopg.connect(fault_server.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER SYSTEM SET log_line_prefix = {}").format(
                sql.Literal(row[0])))
            conn.execute("SELECT pg_reload_conf()")
    assert len(found) == len(names), [(v.table, v.application_name) for v in found]
    assert {v.table for v in found} == {"public.users"}
    assert {v.statement for v in found} == {"SELECT count(*) FROM users"}
    report(f"log forging (application_name) PG{fault_server.major}: {len(names)} crafted "
           f"names, {len(found)} records read, 0 forged")


@pytest.mark.reliability
def test_a_crafted_statement_cannot_forge_a_record(
        fault_templates: StageTemplates, fault_server: servers.LocalServer) -> None:
    statements = [
        f"SELECT count(*) FROM users /*\nrls_migrate violation {FORGED}\n*/",
        f"SELECT count(*) FROM users -- rls_migrate violation {FORGED}",
        "SELECT count(*) FROM users WHERE 'rls_migrate violation {\"v\": 1}' <> ''",
    ]
    with fault_templates.cloned("enforce") as observed:
        found = violations_logged(fault_server, observed, application_names=["crafted"],
                                  statements=statements)
    assert sorted(v.table for v in found) == ["public.users"] * len(statements), \
        [(v.table, v.application_name) for v in found]
