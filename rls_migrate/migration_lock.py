"""Only one runner changes a database at a time: a session-level advisory lock
(:class:`MigrationLock`), the ``application_name`` a runner announces itself with, and who
holds the lock when a second runner is refused. A runner killed with ``kill -9`` frees the
lock with its session."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeAlias

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from rls_migrate.errors import ConcurrentRunner

Conn: TypeAlias = psycopg.Connection[Any]


def _lock_key(name: str) -> int:
    """A stable signed bigint for ``pg_advisory_lock``, derived from a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


MIGRATION_LOCK_KEY = _lock_key("rls_migrate")
"""The session advisory lock a runner holds while it changes the database."""
SCHEMA_UPGRADE_LOCK_KEY = _lock_key("rls_migrate.schema")
"""A different key, so a schema upgrade on a second connection never waits for the runner."""


def runner_name(command: str) -> str:
    """The ``application_name`` a runner announces itself with (at most 63 bytes, as the
    server keeps): ``rls-migrate apply pid=4242 host=deploy-1``."""
    name = f"rls-migrate {command} pid={os.getpid()} host={socket.gethostname()}"
    return name.encode()[:63].decode(errors="ignore")


def set_runner_name(conn: Conn, command: str) -> str:
    """Set this session's ``application_name`` to :func:`runner_name` (for pg_stat_activity,
    the server log, and the message another runner gets)."""
    name = runner_name(command)
    conn.execute("SELECT set_config('application_name', %s, false)", [name])
    return name


def lock_holder(conn: Conn, key: int = MIGRATION_LOCK_KEY) -> dict[str, Any] | None:
    """The session holding the advisory lock ``key`` in this database, other than ours."""
    # A bigint advisory key shows in pg_locks as classid = high half, objid = low half,
    # objsubid = 1.
    high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT l.pid, a.application_name, a.client_addr::text AS client_addr, "
            "       a.client_hostname, a.usename, a.backend_start, a.xact_start, a.state "
            "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "  AND l.classid::bigint = %s AND l.objid::bigint = %s "
            "  AND l.pid IS DISTINCT FROM pg_backend_pid() "
            "LIMIT 1",
            [high, low],
        )
        return cur.fetchone()


def describe_lock_holder(holder: Mapping[str, Any] | None) -> str:
    if holder is None:
        return "a session that has just gone (try again)"
    when = holder.get("backend_start")
    since = f", connected since {when:%Y-%m-%d %H:%M:%S %Z}" if when else ""
    client = holder.get("client_addr") or "the local socket"
    app = holder.get("application_name") or ""
    return (
        f"pid {holder['pid']} ({app!r}, user {holder.get('usename')!r}, from {client}"
        f"{since}, {holder.get('state') or 'state unknown'})"
    )


class MigrationLock:
    """Only one runner changes a database at a time.

    A session-level advisory lock on ``conn``: a second runner gets
    :class:`~rls_migrate.errors.ConcurrentRunner` naming the first, and a runner killed
    with ``kill -9`` frees the lock with its session. It needs a direct session (not
    PgBouncer in transaction mode, which would hand the lock to another client).

    Example::

        with MigrationLock(conn, command="apply"):
            executor.run(stage)
    """

    def __init__(
        self, conn: Conn, *, command: str | None = None, key: int = MIGRATION_LOCK_KEY
    ) -> None:
        self.conn = conn
        self.command = command
        self.key = key
        self.held = False

    def acquire(self) -> None:
        if self.command is not None:
            set_runner_name(self.conn, self.command)
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s::bigint)", [self.key]).fetchone()
        if row and row[0]:
            self.held = True
            return
        holder = lock_holder(self.conn, self.key)
        pid = holder["pid"] if holder else None
        remedy = (
            f" If that runner is dead but its session is not, end the session with "
            f"SELECT pg_terminate_backend({pid});" if pid else ""
        )
        raise ConcurrentRunner(
            f"another rls-migrate runner is working on database {self.conn.info.dbname!r}: "
            f"{describe_lock_holder(holder)}. Wait for it to finish (rls-migrate status "
            f"shows its progress).{remedy}"
        )

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self.conn.closed or self.conn.broken:
            return  # the session is gone, and its lock with it
        with contextlib.suppress(psycopg.Error):
            if self.conn.info.transaction_status == TransactionStatus.INERROR:
                self.conn.rollback()
            self.conn.execute("SELECT pg_advisory_unlock(%s::bigint)", [self.key])

    def __enter__(self) -> MigrationLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
