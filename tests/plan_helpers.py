"""Shared helpers for the plan tests: the sample database, the playbook a person would write
for it (init's output with its TODO decided), running steps plainly, and reading locks.

Not a test module: the test modules import what they need and define their own fixtures
around :func:`load_sample` (templates are cloned, so every test gets a fresh database).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from rls_migrate import demo, samples
from rls_migrate.catalog import Catalog, QualifiedName, Table
from rls_migrate.discover import discover
from rls_migrate.init import build_playbook_yaml
from rls_migrate.planner import build_plan
from rls_migrate.playbook import Playbook
from rls_migrate.steps import Lock, Plan, Step
from rls_migrate.testing import servers

SCALE = 0.2
SEED = 42

Conn = psycopg.Connection[Any]


def q(name: str) -> QualifiedName:
    return QualifiedName("public", name)


def load_sample(dsn: str) -> None:
    """Template setup: the sample SaaS database at a small scale."""
    samples.load(dsn, scale=SCALE, seed=SEED)


_FACTORIES: dict[str, servers.DatabaseFactory] = {}


def sample_factory(
    server: servers.PostgresServer, make_factory: Callable[..., servers.DatabaseFactory]
) -> servers.DatabaseFactory:
    """One sample template per running server, shared by every plan test module of this
    process (``make_factory`` drops it at the end of the session)."""
    key = server.dsn()
    if key not in _FACTORIES:
        _FACTORIES[key] = make_factory(load_sample, prefix="plan")
    return _FACTORIES[key]


def load_catalog(dsn: str, ddl: str = "") -> Catalog:
    """The catalog of ``dsn``, after running ``ddl`` (several statements, no parameters)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if ddl:
            # Bytes: the DDL is built at run time, and psycopg wants a literal string.
            conn.execute(ddl.encode())
        return Catalog.load(conn)


def init_yaml(catalog: Catalog) -> str:
    """What ``rls-migrate init`` writes for the sample database (with its TODO)."""
    graph = discover(catalog, samples.TENANT_ROOT, app_role=samples.APP_ROLE)
    return build_playbook_yaml(graph, catalog, app_role=samples.APP_ROLE)


def sample_playbook(catalog: Catalog) -> Playbook:
    """init's playbook with the decision a person makes: audit_log is a hint, orphans are
    skipped."""
    return demo.sample_playbook(catalog)


def sample_plan(dsn: str, stages: list[str] | None = None) -> tuple[Catalog, Playbook, Plan]:
    catalog = load_catalog(dsn)
    playbook = sample_playbook(catalog)
    return catalog, playbook, build_plan(catalog, playbook, stages)


# --------------------------------------------------------------------------- running steps


def execute(conn: Conn, statement: sql.Composable, params: list[object] | None = None) -> Any:
    """Run a planned statement (steps hold ``sql.Composable``; every one must be a complete
    statement psycopg can execute)."""
    assert isinstance(statement, sql.SQL | sql.Composed), statement
    return conn.execute(statement, params)


def backfill_params(conn: Conn, step: Step) -> tuple[sql.Composable, list[object]]:
    """One batch that covers the whole table: the batch statement ``apply`` runs, with
    bounds from the spec's own queries."""
    spec = step.backfill
    assert spec is not None
    row = conn.execute(spec.max_key_sql).fetchone()
    assert row is not None, f"{step.table} is empty"
    if spec.uses_ctid:
        return spec.batch_sql, ["(0,0)", f"({int(row[0])},0)"]
    return spec.first_batch_sql, list(row) * spec.range_uses


def run_step(conn: Conn, step: Step) -> None:
    """Run one step plainly (``conn`` in autocommit): transactional steps in one transaction,
    CONCURRENTLY statements one by one outside any, backfills as one full batch."""
    if step.backfill is not None:
        with conn.transaction():
            statement, params = backfill_params(conn, step)
            execute(conn, statement, params)
    elif step.transactional:
        with conn.transaction():
            for statement in step.statements:
                execute(conn, statement)
    else:
        for statement in step.statements:
            execute(conn, statement)


# --------------------------------------------------------------------------- locks

LOCK_BY_MODE = {lock.pg_mode: lock for lock in Lock if lock is not Lock.NONE}


def relation_oid(conn: Conn, qname: QualifiedName) -> int:
    row = conn.execute("SELECT %s::regclass::oid", [_regclass(qname)]).fetchone()
    assert row is not None
    return int(row[0])


def _regclass(qname: QualifiedName) -> str:
    return sql.Identifier(qname.schema, qname.name).as_string(None)


def relation_locks(conn: Conn, pid: int, oid: int, granted: bool = True) -> list[str]:
    """The modes ``pid`` holds (or waits for) on relation ``oid``."""
    rows = conn.execute(
        "SELECT mode FROM pg_locks WHERE locktype = 'relation' AND pid = %s AND relation = %s"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND granted = %s",
        [pid, oid, granted]).fetchall()
    return [str(r[0]) for r in rows]


def strongest(modes: list[str]) -> Lock:
    """The strongest of some ``pg_locks.mode`` values (Lock.NONE for none)."""
    locks = [LOCK_BY_MODE[m] for m in modes]
    return max(locks, key=lambda lock: lock.strength, default=Lock.NONE)


# --------------------------------------------------------------------------- snapshots

def _stable_table(table: Table) -> Table:
    indexes = tuple(dataclasses.replace(i, scans=None, size_bytes=0) for i in table.indexes)
    return dataclasses.replace(table, indexes=indexes, row_estimate=0, size_bytes=0,
                               seq_scans=None, n_dead_tup=None)


def schema_snapshot(dsn: str) -> dict[str, Any]:
    """Everything about the database's schema that a plan could change (statistics left
    out), including the toolkit's schema, which must not appear."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        catalog = Catalog.load(conn, include_toolkit_schema=True)
        schemas = [r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace ORDER BY nspname").fetchall()]
    return {
        "schemas": schemas,
        "tables": {str(k): _stable_table(t) for k, t in catalog.tables.items()},
        "views": dict(catalog.views),
        "functions": catalog.functions,
        "roles": dict(catalog.roles),
    }


StepSql = tuple[list[str], list[str], str | None, list[str | None] | None]


def all_sql(plan: Plan, order: Callable[[list[Step]], list[Step]]) -> dict[str, StepSql]:
    """Every statement, inverse, done check and backfill statement of ``plan`` as text,
    read step by step in the given order."""
    out: dict[str, StepSql] = {}
    for s in order(plan.steps):
        spec = s.backfill
        out[s.id] = (
            [x.as_string(None) for x in s.statements], [x.as_string(None) for x in s.inverse],
            s.done_check.as_string(None) if s.done_check is not None else None,
            None if spec is None else [query.as_string(None) if query is not None else None for query in (
                spec.batch_sql, spec.first_batch_sql, spec.next_key_sql, spec.max_key_sql,
                spec.remaining_sql, spec.single_statement_sql, spec.orphans_sql,
                spec.conflicts_sql)])
    return out
