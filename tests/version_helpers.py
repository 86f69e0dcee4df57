"""What the tests do differently on older PostgreSQL majors (the toolkit supports 13+; the
suite runs on 18, 16, 15 and 14)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

from rls_migrate import samples


def major_of(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.info.server_version // 10000


def secure_view(dsn: str, view: str = "open_issues", *, role: str = samples.APP_ROLE) -> None:
    """Make a view over tenant tables respect RLS, as the toolkit advises: security_invoker
    on PostgreSQL 15+; before 15 (no such option), an owner that RLS applies to."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.info.server_version >= 150000:
            conn.execute(sql.SQL("ALTER VIEW {} SET (security_invoker = true)").format(
                sql.Identifier(view)))
        else:
            conn.execute(sql.SQL("ALTER VIEW {} OWNER TO {}").format(
                sql.Identifier(view), sql.Identifier(role)))


def flush_stats(conn: psycopg.Connection[Any]) -> None:
    """Ask the session to flush its statistics as soon as it is idle (PostgreSQL 15+).
    Before 15 a backend sends them at the end of a transaction at most every 500 ms, and
    when it disconnects: callers wait for the counters (``wait_for``) after closing."""
    if conn.info.server_version >= 150000:
        conn.execute("SELECT pg_stat_force_next_flush()")
    else:
        time.sleep(0.55)  # the next transaction end reports (PGSTAT_STAT_INTERVAL is 500 ms)
