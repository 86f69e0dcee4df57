"""The distribution runbook: a psql script that turns the database into a Citus cluster's
schema, in an order Citus accepts, with what each call locks and copies, and its rollback.

    psql -v ON_ERROR_STOP=1 -f runbook.sql                 # distribute
    psql -v ON_ERROR_STOP=1 -v rollback=1 -f runbook.sql   # undo it: undistribute_table

Order: reference tables first (tenant tables point at them), then the tenant root, then every
tenant table after the tables its foreign keys point at (Citus refuses a foreign key to a
table that is not distributed or reference yet), colocated with the root so one tenant's rows
of every table live on the same node. The rollback runs the same list backwards: a table is
undistributed before the tables it points at.

Never run on Citus by this toolkit (it cannot be installed on its test machines): the script
is tested as text, and run on plain PostgreSQL against stand-in functions that record the
calls and check the order.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from rls_migrate.citus.readiness import DISTRIBUTED, REFERENCE, Readiness, TableReadiness

COPY_BYTES_PER_S = 50_000_000.0
"""A guess for the estimate in the comments: one coordinator copying to the shards."""


def _lit(value: str, conn: Any) -> str:
    return sql.Literal(value).as_string(conn)


def _size(size_bytes: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}"
    return f"{size_bytes} bytes"


def _copy_time(entry: TableReadiness) -> str:
    seconds = entry.size_bytes / COPY_BYTES_PER_S
    return "under a second" if seconds < 1 else f"about {seconds:.0f} s"


def _comment(text: str) -> str:
    return "-- " + " ".join(text.splitlines())


def distribute_call(entry: TableReadiness, conn: Any = None) -> str:
    """The ``SELECT create_*`` statement for one table (text, exactly quoted with ``conn``).
    Tables are named as ``regclass`` input (``public."Project Notes"``), the distribution
    column by its exact name."""
    table = _lit(str(entry.qname), conn)
    if entry.role == REFERENCE:
        return f"SELECT create_reference_table({table});"
    assert entry.role == DISTRIBUTED and entry.column is not None
    column = _lit(entry.column, conn)
    if entry.colocate_with is None:
        return f"SELECT create_distributed_table({table}, {column});"
    root = _lit(str(entry.colocate_with), conn)
    return f"SELECT create_distributed_table({table}, {column}, colocate_with => {root});"


def undistribute_call(entry: TableReadiness, conn: Any = None) -> str:
    return f"SELECT undistribute_table({_lit(str(entry.qname), conn)});"


def render_runbook(readiness: Readiness, conn: Any = None) -> str:
    steps = [t for t in readiness.tables if t.role in (DISTRIBUTED, REFERENCE)]
    out = [
        _comment(f"rls-migrate: Citus distribution runbook for {readiness.database} "
                 f"(read from PostgreSQL {readiness.server_version})"),
        "-- Generated from the catalog; never run on Citus by rls-migrate. Review it, then:",
        "--   psql -v ON_ERROR_STOP=1 -f runbook.sql                  distribute",
        "--   psql -v ON_ERROR_STOP=1 -v rollback=1 -f runbook.sql    undo (undistribute_table)",
        "-- Run it on the coordinator, with the citus extension created and the worker nodes",
        "-- added (citus_add_node), after every blocker of `rls-migrate plan --target citus`",
        "-- is fixed (the script stops at the first call Citus refuses).",
        "\\set ON_ERROR_STOP on",
    ]
    if not readiness.ready:
        out.append(_comment(
            f"WARNING: {readiness.blocking} blocker(s) left; the calls below for the tables "
            "that still have one will be refused: fix them first"))
    for problem in readiness.order_problems:
        out.append(_comment(f"WARNING: {problem}"))
    out += ["", "\\if :{?rollback}", "",
            "-- ===== rollback: undistribute_table, each table before the tables it points at",
            "-- Each call copies the table's rows back from the shards into a new local table",
            "-- and swaps it in: reads and writes of that table wait until it ends (plan a",
            "-- window for big tables). Tables linked by foreign keys to other distributed",
            "-- tables may need cascade_via_foreign_keys => true (it undistributes them all).",
            ""]
    for entry in reversed(steps):
        out += [_comment(f"{entry.qname}: {entry.role}, ~{entry.rows:,} rows, "
                         f"{_size(entry.size_bytes)}: copied back in {_copy_time(entry)}"),
                undistribute_call(entry, conn), ""]
    out += ["\\else", ""]
    for entry in steps:
        out += _distribute_comments(entry)
        out += [distribute_call(entry, conn), ""]
    if any(t.role == DISTRIBUTED for t in steps):
        out += [
            "-- Once the application runs on the cluster, free the copies the coordinator kept",
            "-- (create_* leaves the original rows in the local table, invisible to queries):",
        ]
        out += [_comment(f"SELECT truncate_local_data_after_distributing_table("
                         f"{_lit(str(t.qname), conn)});")
                for t in steps if t.role == DISTRIBUTED]
        out.append("")
    out += ["\\endif", ""]
    return "\n".join(out)


def _distribute_comments(entry: TableReadiness) -> list[str]:
    size = (f"~{entry.rows:,} rows, {_size(entry.size_bytes)}, copied in "
            f"{_copy_time(entry)} (estimate)")
    if entry.role == REFERENCE:
        lines = [f"{entry.qname}: reference table ({size})",
                 "copies every row to every node; writes to it wait while it copies (reads go "
                 "on); afterwards each write goes to every node"]
    elif entry.colocate_with is None:
        lines = [f"{entry.qname}: the tenant root, distributed by {entry.column} ({size})",
                 "creates the shards and copies the rows into them; writes to it wait while it "
                 "copies (reads go on); it starts the colocation group the tenant tables join"]
    else:
        lines = [f"{entry.qname}: distributed by {entry.column}, colocated with "
                 f"{entry.colocate_with} ({size})",
                 "copies the rows into shards placed like the root's: writes to it wait while "
                 "it copies (reads go on); its foreign keys are checked against the "
                 "colocated shards. Citus 11.2+: create_distributed_table_concurrently keeps "
                 "writes going (logical replication; needs a replica identity, cannot run in a "
                 "transaction block)"]
    for blocker in entry.blockers:
        if blocker.severity == "blocker":
            lines.append(f"BLOCKER: {blocker.message} -> {blocker.fix}")
    return [_comment(line) for line in lines]
