"""Replication: a streaming hot standby on loopback (pg_basebackup), PostgreSQL 18.

* The backfill pauses while the standby's replay lag exceeds
  ``options.backfill.max_replica_lag`` and resumes after: mid-run, replay is paused on the
  standby (``pg_wal_replay_pause()``) while a heartbeat keeps WAL flowing, as production
  traffic would; once the primary reports the lag above the bound, no batch commits until
  replay resumes, and then the backfill runs to the end.
* Observe mode works on the standby: the application's reads there (as ``app_user``, with
  and without a tenant) return what they return on the primary, nothing reaches the client,
  and the would-be violation is logged in the standby's own server log, where ``report
  --log`` reads it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from enforce_helpers import configure
from psycopg.conninfo import make_conninfo

from reliability.support import StageTemplates, report, write_playbook
from rls_migrate import samples
from rls_migrate.context import tenant_transaction
from rls_migrate.report import read_log
from rls_migrate.testing import servers
from rls_migrate.testing.faults import cli_command, cli_env
from rls_migrate.testing.replica import StandbyServer

pytestmark = pytest.mark.reliability

MAX_LAG_MS = 300.0


def replay_lag_ms(conn: psycopg.Connection[Any]) -> float:
    row = conn.execute("SELECT COALESCE(max(EXTRACT(epoch FROM replay_lag)) * 1000, 0)::float8"
                       " FROM pg_stat_replication").fetchone()
    return float(row[0]) if row else 0.0


def batches(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM rls_migrate.backfill_batches").fetchone()
    return int(row[0]) if row else 0


class Heartbeat:
    """WAL every 50 ms on the primary (a table in the ``postgres`` database), so the
    standby keeps reporting its positions, as it does under real traffic."""

    def __init__(self, server: servers.LocalServer) -> None:
        self.dsn = server.dsn()
        self._stop = threading.Event()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS rel_heartbeat (at timestamptz)")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.wait(0.05):
                conn.execute("INSERT INTO rel_heartbeat VALUES (clock_timestamp())")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_backfill_pauses_while_the_replica_lags(fault_templates: StageTemplates,
                                                fault_server: servers.LocalServer,
                                                fault_standby: StandbyServer,
                                                tmp_path: Path) -> None:
    playbook = configure(fault_templates.playbook,
                         backfill={"max_replica_lag": MAX_LAG_MS, "pause": 5.0})
    path = write_playbook(playbook, tmp_path / "lag.yaml")
    with fault_templates.cloned("backfill") as dsn, Heartbeat(fault_server), \
            psycopg.connect(dsn, autocommit=True) as primary, \
            psycopg.connect(fault_standby.dsn(), autocommit=True) as standby:
        fault_standby.catch_up(fault_server)
        command = cli_command("--log-format", "json", "apply", str(path), "--stage",
                              "backfill", "--yes", "--dsn", dsn)
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=cli_env())
        try:
            wait_for(lambda: batches(primary) >= 3 or proc.poll() is not None, 60,
                     "the first batches")
            assert proc.poll() is None, "the backfill ended before the replica could lag"
            standby.execute("SELECT pg_wal_replay_pause()")
            wait_for(lambda: replay_lag_ms(primary) > MAX_LAG_MS, 30, "the replica to lag")
            # A batch in flight may finish, and the check runs before each batch.
            time.sleep(0.7)
            paused_at = batches(primary)
            time.sleep(1.5)
            held = batches(primary)
            lag = replay_lag_ms(primary)
            assert proc.poll() is None, "the backfill ended while the replica lagged"
            assert held == paused_at, f"{held - paused_at} batches committed while the " \
                                      f"replica lagged {lag:.0f} ms > {MAX_LAG_MS:.0f} ms"
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-3000:]
        final = batches(primary)
        assert final > held
        events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        paused = [e for e in events if e.get("event") == "backfill.paused"]
        assert any("replica replay lag" in r for e in paused for r in e.get("reasons", [])), \
            paused
        assert any(e.get("event") == "backfill.resumed" for e in events)
        left = primary.execute("SELECT count(*) FROM comments WHERE tenant_id IS NULL"
                               ).fetchone()
        assert left == (0,)
    report(f"replication PG{fault_server.major}: the backfill held at {held} batches for "
           f"1.5 s while replay lag was {lag:.0f} ms > max_replica_lag {MAX_LAG_MS:.0f} ms, "
           f"resumed after replay resumed, finished with {final} batches")


def test_observe_mode_works_on_the_standby(fault_templates: StageTemplates,
                                           fault_server: servers.LocalServer,
                                           fault_standby: StandbyServer) -> None:
    assert fault_standby.log_path is not None
    with fault_templates.cloned("enforce") as dsn:  # observe applied
        fault_standby.catch_up(fault_server)
        replica = fault_standby.dsn(servers.dbname_of(dsn), user=samples.APP_ROLE)
        start = fault_standby.log_path.stat().st_size
        results = {}
        for where, target in (("primary", make_conninfo(dsn, user=samples.APP_ROLE)),
                              ("standby", replica)):
            notices: list[Any] = []
            with psycopg.connect(target, autocommit=True,
                                 application_name=f"rel-observe-{where}") as conn:
                conn.add_notice_handler(notices.append)
                no_tenant = conn.execute("SELECT count(*) FROM users").fetchone()
                with tenant_transaction(conn, 1):
                    one = conn.execute("SELECT count(*) FROM issues").fetchone()
                recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            assert notices == []
            results[where] = (no_tenant, one, recovery)
        assert results["standby"][:2] == results["primary"][:2]
        assert results["standby"][2] == (True,)
        time.sleep(0.3)
        part = fault_standby.log_path.parent / "standby-part.log"
        with fault_standby.log_path.open("rb") as fh:
            fh.seek(start)
            part.write_bytes(fh.read())
        logged = [v for v in read_log(part) if v.application_name == "rel-observe-standby"]
        part.unlink()
    assert {(v.table, v.kind) for v in logged} >= {("public.users", "no_context")}, logged
    report(f"replication PG{fault_server.major}: observe mode on the standby: reads as "
           f"{samples.APP_ROLE} unchanged {results['standby'][:2]}, {len(logged)} violation "
           "line(s) in the standby's log")
