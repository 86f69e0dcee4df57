"""The sessions holding locks on a table, from ``pg_locks`` and ``pg_stat_activity``: named in
the message of a step that gave up waiting for its lock, so that the operator knows whom to
wait for or to end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.rows import dict_row

from rls_migrate.catalog import QualifiedName
from rls_migrate.steps import Lock

# pg_locks modes each mode conflicts with (PostgreSQL docs, "Table-Level Lock Modes").
_ALL_MODES = frozenset({
    "AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
    "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock",
})
_CONFLICTS: dict[str, frozenset[str]] = {
    "AccessShareLock": frozenset({"AccessExclusiveLock"}),
    "RowShareLock": frozenset({"ExclusiveLock", "AccessExclusiveLock"}),
    "RowExclusiveLock": frozenset(
        {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}),
    "ShareUpdateExclusiveLock": frozenset(
        {"ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock",
         "AccessExclusiveLock"}),
    "ShareLock": frozenset(
        {"RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareRowExclusiveLock",
         "ExclusiveLock", "AccessExclusiveLock"}),
    "ShareRowExclusiveLock": _ALL_MODES - {"AccessShareLock", "RowShareLock"},
    "ExclusiveLock": _ALL_MODES - {"AccessShareLock"},
    "AccessExclusiveLock": _ALL_MODES,
}


def lock_holders(
    conn: psycopg.Connection[Any], table_qname: QualifiedName | str, *,
    conflicting_with: Lock | None = None,
) -> list[dict[str, Any]]:
    """Sessions other than ours holding a granted lock on ``table_qname``, oldest
    transaction first: pid, mode, application_name, usename, client_addr, state,
    xact_age_ms, query. With ``conflicting_with``, only the locks that conflict with it
    (all of them if none does: a step may take more than it declares)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT l.pid, l.mode, l.virtualtransaction, a.application_name, a.usename, "
            "       a.client_addr::text AS client_addr, a.state, a.backend_start, "
            "       extract(epoch FROM clock_timestamp() - a.xact_start) * 1000 "
            "         AS xact_age_ms, "
            "       left(a.query, 200) AS query "
            "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'relation' AND l.granted "
            "  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "  AND l.relation = to_regclass(%s) "
            "  AND l.pid IS DISTINCT FROM pg_backend_pid() "
            "ORDER BY a.xact_start NULLS LAST, l.pid",
            [str(table_qname)],
        )
        holders = cur.fetchall()
    if conflicting_with is not None and conflicting_with is not Lock.NONE:
        wanted = _CONFLICTS.get(conflicting_with.pg_mode, _ALL_MODES)
        conflicting = [h for h in holders if h["mode"] in wanted]
        if conflicting:
            return conflicting
    return holders


def describe_holder(holder: Mapping[str, Any]) -> str:
    """``pid 4242 ('worker', user 'app', idle in transaction, transaction open 12.3 s,
    holds AccessShareLock): 'SELECT ...'``."""
    if holder.get("pid") is None:
        return (f"a prepared transaction ({holder.get('virtualtransaction')}, "
                f"holds {holder.get('mode')}): see pg_prepared_xacts")
    age = holder.get("xact_age_ms")
    open_for = f", transaction open {float(age) / 1000:.1f} s" if age is not None else ""
    query = holder.get("query") or ""
    return (
        f"pid {holder['pid']} ({holder.get('application_name') or ''!r}, "
        f"user {holder.get('usename')!r}, {holder.get('state') or 'state unknown'}{open_for}, "
        f"holds {holder.get('mode')}): {query[:120]!r}"
    )
