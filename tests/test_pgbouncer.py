"""Tenant context through PgBouncer in transaction mode (DESIGN §5).

PgBouncer hands each *transaction* to whichever server connection is free, so anything set
at session level travels to the next client of that server connection. These tests start a
real ``pgbouncer`` in front of the test server and show that:

* with :func:`tenant_transaction`, many clients switching tenants never see another
  tenant's rows, and a request without context sees nothing;
* a plain session-level ``SET`` does leak to another client (the control: the setup is able
  to show a leak, so the test above could fail).

Debian's ``pgbouncer`` package provides the binary (``apt-get install pgbouncer``); without
it the tests are skipped.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from rls_migrate.context import current_tenant, tenant_transaction
from rls_migrate.testing.servers import LOCAL_KINDS, UNPRIVILEGED_USER, PostgresServer

TENANTS = (1, 2, 3, 4)
ROWS_PER_TENANT = 3
THREADS = 16
REQUESTS_PER_THREAD = 50
SERVER_POOL_SIZE = 2

SCHEMA = """
DO $$
BEGIN
    CREATE ROLE ctx_app LOGIN NOSUPERUSER NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- roles are cluster-wide: another test made it already
END $$;
CREATE TABLE items (id serial PRIMARY KEY, tenant_id bigint NOT NULL, v text);
ALTER TABLE items ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON items
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::bigint);
GRANT SELECT ON items TO ctx_app;
"""
DATA = """
INSERT INTO items (tenant_id, v)
SELECT t, 't' || t || '-' || n FROM unnest(%s::bigint[]) t, generate_series(1, %s) n
ORDER BY t, n
"""


def _pgbouncer_binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    # /usr/sbin is not on every PATH (Debian installs pgbouncer there).
    for candidate in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> pwd.struct_passwd | None:
    """pgbouncer refuses to run as root: use the harness's unprivileged user."""
    if os.geteuid() != 0:
        return None
    for name in (UNPRIVILEGED_USER, "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.skip(f"running as root and neither {UNPRIVILEGED_USER} nor nobody exists")


@dataclass
class Bouncer:
    port: int
    log: Path

    def dsn(self, dbname: str = "ctx", user: str = "ctx_app") -> str:
        return make_conninfo(host="127.0.0.1", port=str(self.port), dbname=dbname, user=user,
                             connect_timeout="5")

    def connect(self, dbname: str = "ctx", **kwargs: Any) -> psycopg.Connection[Any]:
        # prepare_threshold=None: PgBouncer before 1.21 cannot route server-side prepared
        # statements in transaction mode.
        return psycopg.connect(self.dsn(dbname), prepare_threshold=None, **kwargs)


@contextlib.contextmanager
def run_pgbouncer(binary: str, server_dsn: str) -> Iterator[Bouncer]:
    target = conninfo_to_dict(server_dsn)
    user = _run_as()
    folder = Path(tempfile.mkdtemp(prefix="rls-migrate-pgbouncer-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        server = f"host={target['host']} port={target['port']} dbname={target['dbname']}"
        (folder / "userlist.txt").write_text('"ctx_app" ""\n"postgres" ""\n')
        port = _free_port()
        log = folder / "pgbouncer.log"
        ini = folder / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"ctx = {server}\n"
            # One server connection only: the control test's leak is then certain.
            f"ctx_single = {server} pool_size=1\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {folder / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {SERVER_POOL_SIZE}\n"
            "reserve_pool_size = 0\n"
            "max_client_conn = 100\n"
            f"logfile = {log}\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        if user is not None:
            for path in (folder, *folder.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
        proc = subprocess.Popen(
            [binary, str(ini)],
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(folder / "stderr.log").open("wb"),
        )
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                output = "\n".join(
                    p.read_text(errors="replace") for p in (folder / "stderr.log", log)
                    if p.exists()
                )
                raise RuntimeError(f"pgbouncer exited with {proc.returncode}:\n{output}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("pgbouncer did not listen within 10 s")
            time.sleep(0.05)
        yield Bouncer(port, log)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)  # immediate shutdown
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def bouncer(pg_server: PostgresServer, empty_db: str) -> Iterator[Bouncer]:
    binary = _pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install -y pgbouncer)")
    if pg_server.backend.kind not in LOCAL_KINDS:
        pytest.skip("the PgBouncer tests need a local trust-auth server")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(DATA, [list(TENANTS), ROWS_PER_TENANT])
    with run_pgbouncer(binary, empty_db) as running:
        yield running


def _expected(tenant: int) -> list[tuple[int, str]]:
    return [(tenant, f"t{tenant}-{n}") for n in range(1, ROWS_PER_TENANT + 1)]


def test_tenant_transaction_never_leaks_through_pgbouncer(bouncer: Bouncer) -> None:
    backends: set[int] = set()
    switches = 0
    lock = threading.Lock()

    def client(seed: int) -> int:
        nonlocal switches
        rng = random.Random(seed)
        requests = 0
        with bouncer.connect() as conn:
            last_pid = None
            for _ in range(REQUESTS_PER_THREAD):
                tenant = rng.choice([*TENANTS, None])
                if tenant is None:
                    # A request that forgot the context: sees nothing, even though other
                    # clients' transactions ran on the same server connections.
                    with conn.transaction():
                        assert current_tenant(conn) is None
                        assert conn.execute("SELECT tenant_id, v FROM items").fetchall() == []
                        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
                else:
                    with tenant_transaction(conn, tenant):
                        # Several statements: they must all land on the server connection
                        # that got set_config, and see that tenant only.
                        assert current_tenant(conn) == str(tenant)
                        rows = conn.execute("SELECT tenant_id, v FROM items ORDER BY id")
                        assert rows.fetchall() == _expected(tenant)
                        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
                        assert conn.execute(
                            "SELECT count(*) FROM items WHERE tenant_id <> %s", [tenant]
                        ).fetchone() == (0,)
                assert pid is not None
                with lock:
                    backends.add(pid[0])
                    switches += last_pid is not None and last_pid != pid[0]
                last_pid = pid[0]
                requests += 1
        return requests

    with ThreadPoolExecutor(THREADS) as pool:
        done = sum(pool.map(client, range(THREADS)))  # re-raises a thread's assertion
    assert done == THREADS * REQUESTS_PER_THREAD
    # The test means something only if clients really shared server connections, and one
    # client's transactions moved between them.
    assert len(backends) <= SERVER_POOL_SIZE < THREADS
    assert switches > 0, f"no client's transactions moved between {backends}"


def test_session_level_set_leaks_through_pgbouncer(bouncer: Bouncer) -> None:
    """Control: the mistake tenant_transaction() prevents, shown to leak here."""
    with bouncer.connect("ctx_single", autocommit=True) as careless, \
            bouncer.connect("ctx_single") as victim:
        careless.execute("SET app.tenant_id = '1'")  # session-level, outside any transaction
        with victim.transaction():
            leaked = victim.execute("SELECT tenant_id, v FROM items ORDER BY id").fetchall()
        assert leaked == _expected(1), "a session-level SET should travel to the next client"
        # Our helper sets the tenant in every transaction, so the leftover does not matter...
        with tenant_transaction(victim, 2):
            assert victim.execute("SELECT tenant_id, v FROM items ORDER BY id").fetchall() == (
                _expected(2)
            )
        # ...but a request without context still inherits it: context must never be set
        # at session level behind a transaction-mode pooler.
        with victim.transaction():
            assert current_tenant(victim) == "1"
