"""Lock waits read from the server log: the parser against lines the server writes, and a
real wait on a real server."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from rls_migrate import lockwaits
from rls_migrate.testing import servers

LINES = """\
2026-11-23 15:08:53.803 UTC [12931] app_user@saas LOG:  process 12931 still waiting for ShareLock on transaction 8283 after 10.154 ms
2026-11-23 15:08:53.816 UTC [12931] app_user@saas LOG:  process 12931 acquired ShareLock on transaction 8283 after 22.952 ms
2026-11-23 15:08:53.900 UTC [12932] app_user@saas LOG:  process 12932 acquired RowExclusiveLock on relation 16385 of database 5 after 98.001 ms at character 22
2026-11-23 15:08:53.901 UTC [12933] postgres@saas LOG:  process 12933 acquired AccessExclusiveLock on relation 16385 of database 5 after 12.000 ms
2026-11-23 15:08:53.902 UTC [12934] app_user@other LOG:  process 12934 acquired ShareLock on tuple (0,1) of relation 16385 of database 6 after 11.500 ms
2026-11-23 15:08:53.903 UTC [12935] app_user@saas STATEMENT:  SELECT 'process 1 acquired ShareLock on relation 1 of database 1 after 999.000 ms'
"""


def test_parse_picks_granted_waits_by_user_and_database() -> None:
    waits = lockwaits.parse(LINES, user="app_user", database="saas")
    assert [(w.mode, w.kind, w.ms) for w in waits] == [
        ("ShareLock", "row", 22.952), ("RowExclusiveLock", "relation", 98.001)]
    assert len(lockwaits.parse(LINES)) == 4
    assert lockwaits.parse(LINES, database="other")[0].kind == "row"


def test_a_real_wait_is_logged_and_read(empty_db: str, pg_server: servers.PostgresServer) -> None:
    if not isinstance(pg_server, servers.LocalServer) or pg_server.log_path is None:
        pytest.skip("needs the server's log file")
    dbname = servers.dbname_of(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        lockwaits.log_lock_waits(conn, dbname)
        conn.execute("CREATE TABLE t (id int)")
    offset = pg_server.log_path.stat().st_size
    with psycopg.connect(empty_db) as holder:
        holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        waiter = threading.Thread(target=lambda: psycopg.connect(empty_db, autocommit=True)
                                  .execute("SELECT count(*) FROM t"))
        waiter.start()
        time.sleep(0.15)
        holder.rollback()
        waiter.join(10)
    time.sleep(0.3)  # the log is written asynchronously
    waits = lockwaits.parse(lockwaits.read_since(pg_server.log_path, offset), database=dbname)
    assert [w.mode for w in waits] == ["AccessShareLock"]
    assert waits[0].kind == "relation" and 100 <= waits[0].ms < 5000
