"""The plan tells the truth about locks.

Every step of the sample plan runs on a real server, in stage order, on a fresh copy of the
sample database. For each one we read from ``pg_locks`` what PostgreSQL actually holds on the
step's table and compare it with the lock the step declares (the lock the plan prints, and
the one that decides whether the step runs under ``lock_timeout``):

* transactional steps: the statements run inside a transaction; before COMMIT we read our own
  backend's relation locks on the table and on the table's (already existing) indexes: an
  index lock blocks every query that plans against the table, so it counts;
* CONCURRENTLY steps (no transaction allowed): a second connection holds ROW EXCLUSIVE in an
  open transaction, so the build waits for it (a virtualxid wait) after taking its table
  lock; a third connection reads the builder's locks, then the blocker lets go.

While each step holds its locks, a probe connection tries a plain read and a no-op write on
the table with a tiny ``lock_timeout``: ACCESS EXCLUSIVE must block reads, SHARE and stronger
must block writes, and weaker locks must block neither (the plan's "blocks" column).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from plan_helpers import (
    Conn,
    backfill_params,
    execute,
    relation_locks,
    relation_oid,
    run_step,
    sample_factory,
    sample_plan,
    strongest,
)
from psycopg import sql

from rls_migrate.catalog import QualifiedName
from rls_migrate.steps import STAGES, Lock, Step
from rls_migrate.testing import servers

KINDS = (
    "add_column",
    "sync_trigger",
    "add_foreign_key",
    "backfill",
    "add_check",
    "validate_constraint",
    "set_not_null",
    "drop_check",
    "create_index",
    "create_index_on_only",
    "attach_index",
    "tenant_statistics",
    "observe_policy",
    "observe_write_truth",
    "enforce_policy",
)
"""Every kind of step that touches a table (prepare's schema step touches none)."""

PROBE_TIMEOUT = "1ms"  # lock_timeout only fires on a lock wait: no false "blocked"
WAIT_SECONDS = 15.0


@dataclasses.dataclass(frozen=True)
class Observation:
    step: Step
    table_lock: Lock  # strongest mode held on the step's table
    index_lock: Lock  # strongest mode held on the table's pre-existing indexes
    blocks_reads: bool
    blocks_writes: bool
    done_before: bool | None
    done_after: bool | None

    @property
    def taken(self) -> Lock:
        return max(self.table_lock, self.index_lock, key=lambda lock: lock.strength)


# --------------------------------------------------------------------------- probes


def _first_column(conn: Conn, oid: int) -> str:
    row = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum LIMIT 1", [oid]).fetchone()
    assert row is not None
    return str(row[0])


def _blocked(probe: Conn, statement: sql.Composable) -> bool:
    """Run ``statement`` in a transaction that is rolled back; True when it had to wait for a
    lock longer than PROBE_TIMEOUT."""
    try:
        with probe.transaction(force_rollback=True):
            probe.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(PROBE_TIMEOUT)))
            execute(probe, statement)
    except psycopg.errors.LockNotAvailable:
        return True
    return False


def _probe(probe: Conn, table: QualifiedName, column: str) -> tuple[bool, bool]:
    read = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT 1) AS s").format(table.ident)
    write = sql.SQL("UPDATE {t} SET {c} = {c} WHERE false").format(
        t=table.ident, c=sql.Identifier(column))
    return _blocked(probe, read), _blocked(probe, write)


def _done(conn: Conn, step: Step) -> bool | None:
    if step.done_check is None:
        return None
    row = execute(conn, step.done_check).fetchone()
    return bool(row and row[0])


def _index_oids(conn: Conn, oid: int) -> list[int]:
    return [int(r[0]) for r in conn.execute(
        "SELECT indexrelid FROM pg_index WHERE indrelid = %s", [oid]).fetchall()]


def _strongest_on(conn: Conn, pid: int, oids: list[int]) -> Lock:
    modes = [m for oid in oids for m in relation_locks(conn, pid, oid)]
    return strongest(modes)


# --------------------------------------------------------------------------- observing


def observe_in_transaction(conn: Conn, probe: Conn, step: Step) -> Observation:
    assert step.table is not None
    oid = relation_oid(conn, step.table)
    indexes = _index_oids(conn, oid)
    column = _first_column(conn, oid)
    pid = conn.info.backend_pid
    before = _done(conn, step)
    with conn.transaction():
        if step.backfill is not None:
            statement, params = backfill_params(conn, step)
            execute(conn, statement, params)
        else:
            for statement in step.statements:
                execute(conn, statement)
        table_lock = strongest(relation_locks(conn, pid, oid))
        index_lock = _strongest_on(conn, pid, indexes)
        reads, writes = _probe(probe, step.table, column)
    return Observation(step, table_lock, index_lock, reads, writes, before, _done(conn, step))


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def observe_concurrently(dsn: str, conn: Conn, probe: Conn, step: Step) -> Observation:
    """A CONCURRENTLY step, caught while it waits for an older transaction."""
    assert step.table is not None and not step.transactional
    oid = relation_oid(conn, step.table)
    indexes = _index_oids(conn, oid)
    column = _first_column(conn, oid)
    before = _done(conn, step)
    failure: list[BaseException] = []
    with psycopg.connect(dsn) as blocker, psycopg.connect(dsn, autocommit=True) as builder:
        blocker.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(
            step.table.ident))
        pid = builder.info.backend_pid

        def build() -> None:
            try:
                for statement in step.statements:
                    execute(builder, statement)
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)

        thread = threading.Thread(target=build, name=f"cic-{step.id}")
        thread.start()
        try:
            def waiting_for_blocker() -> bool:
                if failure:
                    raise AssertionError(f"{step.id} failed: {failure[0]}")
                row = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %s"
                    " AND locktype = 'virtualxid' AND NOT granted)", [pid]).fetchone()
                return bool(row and row[0])

            _wait_for(waiting_for_blocker, f"{step.id} to wait for the open transaction")
            table_lock = strongest(relation_locks(conn, pid, oid))
            index_lock = _strongest_on(conn, pid, indexes)
            reads, writes = _probe(probe, step.table, column)
        finally:
            blocker.rollback()
            thread.join(WAIT_SECONDS)
    assert not thread.is_alive(), f"{step.id} did not finish"
    assert not failure, f"{step.id} failed: {failure}"
    return Observation(step, table_lock, index_lock, reads, writes, before, _done(conn, step))


def observe_plan(dsn: str) -> list[Observation]:
    """Run the whole sample plan in stage order, observing every step that has a table."""
    _, _, plan = sample_plan(dsn)
    assert [s.name for s in plan.stages] == list(STAGES)
    observations = []
    with psycopg.connect(dsn, autocommit=True) as conn, \
            psycopg.connect(dsn, autocommit=True) as probe:
        for step in plan.steps:
            if step.table is None or step.kind == "pin_index_usage":
                run_step(conn, step)  # the usage pin reads a literal: it touches no table
            elif step.transactional:
                observations.append(observe_in_transaction(conn, probe, step))
            else:
                observations.append(observe_concurrently(dsn, conn, probe, step))
    return observations


_CACHE: dict[str, list[Observation]] = {}


@pytest.fixture(scope="module")
def observations(
    pg_server: servers.PostgresServer,
    make_factory: Callable[..., servers.DatabaseFactory],
) -> list[Observation]:
    """One observed run per server, kept for the whole session (pytest may set a module
    fixture up again when tests of the two servers interleave)."""
    key = pg_server.backend.name
    if key not in _CACHE:
        factory = sample_factory(pg_server, make_factory)
        dsn = factory.create()
        try:
            _CACHE[key] = observe_plan(dsn)
        finally:
            factory.drop(servers.dbname_of(dsn))
    return _CACHE[key]


def _of_kind(observations: list[Observation], kind: str) -> list[Observation]:
    found = [o for o in observations if o.step.kind == kind]
    assert found, f"the sample plan has no {kind} step"
    return found


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", KINDS)
def test_declared_lock_is_the_lock_postgres_takes(
    observations: list[Observation], kind: str
) -> None:
    wrong = [f"{o.step.id}: declares {o.step.lock.pg_mode}, takes {o.taken.pg_mode} "
             f"(table {o.table_lock.pg_mode}, indexes {o.index_lock.pg_mode})"
             for o in _of_kind(observations, kind) if o.taken is not o.step.lock]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("kind", KINDS)
def test_what_the_lock_blocks_is_what_waits(observations: list[Observation], kind: str) -> None:
    """The plan's "blocks" column: ACCESS EXCLUSIVE stops reads, SHARE and up stop writes,
    and nothing weaker stops either."""
    wrong = []
    for o in _of_kind(observations, kind):
        lock = o.step.lock
        expected = (lock is Lock.ACCESS_EXCLUSIVE, lock.is_strong)
        if (o.blocks_reads, o.blocks_writes) != expected:
            wrong.append(f"{o.step.id} ({lock.label}): reads blocked {o.blocks_reads}, "
                         f"writes blocked {o.blocks_writes}; expected {expected}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("kind", KINDS)
def test_done_check_flips_when_the_step_runs(observations: list[Observation], kind: str) -> None:
    for o in _of_kind(observations, kind):
        assert o.done_before is False, f"{o.step.id}: done before it ran"
        if o.step.kind == "backfill" and o.step.table == QualifiedName("public", "audit_log"):
            # Orphans (issue_id names a deleted issue) stay empty: skipped by the playbook.
            assert o.done_after is False
            continue
        assert o.done_after is True, f"{o.step.id}: not done after it ran"


def test_every_table_step_kind_is_checked(observations: list[Observation]) -> None:
    assert {o.step.kind for o in observations} == set(KINDS)


def test_concurrent_builds_run_outside_transactions(observations: list[Observation]) -> None:
    builds = _of_kind(observations, "create_index")
    assert len(builds) >= 7  # 6 partitions of events plus the ordinary tables
    for o in builds:
        assert not o.step.transactional, o.step.id
        assert o.table_lock is Lock.SHARE_UPDATE_EXCLUSIVE, o.step.id
        assert (o.blocks_reads, o.blocks_writes) == (False, False), o.step.id


def test_attach_blocks_the_partition_through_its_index(
    observations: list[Observation],
) -> None:
    """ATTACH takes only ACCESS SHARE on the partition, but ACCESS EXCLUSIVE on the index it
    attaches, which every query on the partition opens: it must be declared (and queued)
    as ACCESS EXCLUSIVE."""
    attaches = _of_kind(observations, "attach_index")
    assert len(attaches) == 6
    for o in attaches:
        assert o.table_lock is Lock.ACCESS_SHARE, o.step.id
        assert o.index_lock is Lock.ACCESS_EXCLUSIVE, o.step.id
        assert o.step.lock is Lock.ACCESS_EXCLUSIVE and o.step.needs_lock_timeout
