"""A hot standby of a local test server, streamed over loopback.

``pg_basebackup -R`` copies the primary's data folder and writes ``standby.signal`` and
``primary_conninfo``; the copy then starts on its own port with its own log file, replays
the primary's WAL, and answers read-only queries (``hot_standby``). Local servers allow
replication connections from 127.0.0.1 (see :data:`rls_migrate.testing.servers.HBA`).

Example::

    with start_standby(primary) as standby:
        standby.catch_up(primary)
        psycopg.connect(standby.dsn("app", user="app_user")).execute("SELECT ...")
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from rls_migrate.testing.servers import LocalServer, ServerUnavailable, _ensure_traversable


class StandbyServer(LocalServer):
    """A streaming hot standby of ``primary``; :meth:`stop` stops it and deletes its copy."""

    def __init__(self, primary: LocalServer, *, base_dir: Path | None = None) -> None:
        self.primary = primary
        super().__init__(primary.backend, base_dir=base_dir)

    def _initdb(self) -> None:
        """Instead of initdb: a base backup of the primary, configured as a standby."""
        _ensure_traversable(self.bindir)
        _ensure_traversable(self.root)
        self._chown(self.root)
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port),
                  "-U", "postgres", "-D", str(self.datadir), "-X", "stream", "-R",
                  "--checkpoint=fast", "--no-sync", timeout=120)
        # Later lines of postgresql.auto.conf win over the primary's copied ones.
        with (self.datadir / "postgresql.auto.conf").open("a") as fh:
            fh.write(f"port = {self.port}\n")
            fh.write(f"unix_socket_directories = '{self.root}'\n")
            fh.write("hot_standby = on\n")
            # Streaming starts after the copied WAL is replayed; a first failed attempt
            # would otherwise wait the default 5 s before the next one.
            fh.write("wal_retrieve_retry_interval = '100ms'\n")

    def catch_up(self, primary: LocalServer, timeout: float = 30.0) -> None:
        """Wait until the standby has replayed everything the primary has written so far.

        Local servers run with ``synchronous_commit = off``, so recent WAL may sit unflushed
        (and unsent) for a while: a transaction that commits synchronously flushes
        everything before its commit record, and its flush position is the target."""
        with psycopg.connect(primary.dsn(), autocommit=True) as conn:
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = on")
                conn.execute("SELECT pg_current_xact_id()")
            row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        assert row is not None
        target = row[0]
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            while True:
                done = conn.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target]).fetchone()
                if done and done[0]:
                    return
                if time.monotonic() > deadline:
                    raise ServerUnavailable(f"the standby did not replay up to {target} in "
                                            f"{timeout:.0f} s")
                time.sleep(0.05)


@contextlib.contextmanager
def start_standby(primary: LocalServer) -> Iterator[StandbyServer]:
    standby = StandbyServer(primary)
    try:
        yield standby
    finally:
        standby.stop()
