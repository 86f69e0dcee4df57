"""The index stage on the sample database, on every major: concurrent builds under an
application workload, indexes the planner uses, repair of builds killed mid-way, partitions,
tenant-scoped uniques and tenant-consistent foreign keys, and a rollback that leaves the
schema as it was.

Each test clones a template that already went through prepare .. constrain."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from plan_helpers import (
    execute,
    load_catalog,
    relation_locks,
    relation_oid,
    run_step,
    strongest,
)
from plan_helpers import sample_playbook as init_playbook

from rls_migrate import samples
from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.context import tenant_transaction
from rls_migrate.errors import PlaybookError, StepFailed
from rls_migrate.planner import build_plan
from rls_migrate.playbook import Playbook, dump_playbook
from rls_migrate.runner import apply_stage, rollback_to
from rls_migrate.stages.index.build_watcher import build_progress
from rls_migrate.stages.index.shapes import IndexShape
from rls_migrate.steps import Step
from rls_migrate.testing import servers
from rls_migrate.testing.checksums import table_checksums
from rls_migrate.workload import Workload

DATA_STAGES = ("prepare", "add-column", "backfill", "constrain")
WAIT_S = 30.0

_PLAYBOOKS: dict[float, Playbook] = {}


def base_playbook(dsn: str, scale: float) -> Playbook:
    """init's playbook for the pristine sample (built before the data stages: afterwards
    discovery would see the added tenant columns as existing keys)."""
    if scale not in _PLAYBOOKS:
        _PLAYBOOKS[scale] = init_playbook(load_catalog(dsn))
    return _PLAYBOOKS[scale]


def staged(scale: float) -> Callable[[str], None]:
    def setup(dsn: str) -> None:
        samples.load(dsn, scale=scale)
        playbook = base_playbook(dsn, scale)
        for stage in DATA_STAGES:
            apply_stage(dsn, playbook, stage)
    return setup


@pytest.fixture(scope="module")
def small_factory(make_factory):  # type: ignore[no-untyped-def]
    return make_factory(staged(0.2), "indexsmall")


@pytest.fixture(scope="module")
def scale1_factory(make_factory):  # type: ignore[no-untyped-def]
    return make_factory(staged(1.0), "indexscale1")


def _fresh(factory: servers.DatabaseFactory) -> Iterator[str]:
    dsn = factory.create()
    yield dsn
    factory.drop(servers.dbname_of(dsn))


@pytest.fixture
def small_db(small_factory: servers.DatabaseFactory) -> Iterator[str]:
    yield from _fresh(small_factory)


@pytest.fixture
def scale1_db(scale1_factory: servers.DatabaseFactory) -> Iterator[str]:
    yield from _fresh(scale1_factory)


def playbook(scale: float, *, unique: bool = False, fks: bool = False,
             drop_replaced: bool = False, extra: bool = False,
             index_options: dict[str, Any] | None = None) -> Playbook:
    """The sample playbook with the index stage's opt-in features."""
    data = _PLAYBOOKS[scale].model_dump()
    tables = data["tables"]
    if unique:
        tables["public.users"]["tenant_unique"] = [["email"]]
    if drop_replaced:
        tables["public.issues"]["drop_replaced_indexes"] = True
    if extra:
        tables["public.comments"]["extra_indexes"] = [["created_at"]]
    data["options"]["index"]["tenant_foreign_keys"] = fks
    data["options"]["index"].update(index_options or {})
    # Validated anew: model_copy would keep the old playbook's table lookup cache.
    return Playbook.model_validate(data)


def schema_of(dsn: str) -> dict[str, Any]:
    """Indexes (with validity), constraints and foreign keys of every table."""
    with psycopg.connect(dsn) as conn:
        catalog = Catalog.load(conn)
    return {str(q): {"indexes": sorted((i.name, i.definition, i.is_valid) for i in t.indexes),
                     "constraints": sorted((c.name, c.definition, c.validated)
                                           for c in t.constraints),
                     "foreign_keys": sorted((f.name, f.definition, f.validated)
                                            for f in t.foreign_keys)}
            for q, t in catalog.tables.items()}


def invalid_indexes(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
            " WHERE NOT x.indisvalid AND c.relnamespace = 'public'::regnamespace").fetchall()]


def use_created_at_index(dsn: str) -> None:
    """What the application does: the latest issues, through issues_created_at_idx (so the
    planner sees it used and twins it)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(3):
            conn.execute("SELECT id FROM issues ORDER BY created_at DESC LIMIT 5").fetchall()
        scans = conn.execute("SELECT idx_scan FROM pg_stat_user_indexes"
                             " WHERE indexrelname = 'issues_created_at_idx'").fetchone()
        if conn.info.server_version >= 150000:
            conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")  # statistics are flushed when the backend goes idle
    assert scans is not None


def explain(conn: psycopg.Connection[Any], query: str, tenant: int) -> str:
    """The plan of ``query`` in a transaction with the tenant context set, the way the
    policy will filter: by ``NULLIF(current_setting(...), '')::bigint``."""
    with tenant_transaction(conn, tenant):
        rows = conn.execute("EXPLAIN (FORMAT JSON) " + query).fetchone()  # constant text
    assert rows is not None
    return json.dumps(rows[0])


TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::bigint"
LATEST_BY_ID = f"SELECT * FROM comments WHERE tenant_id = {TENANT} ORDER BY id LIMIT 10"
LATEST_BY_TIME = (f"SELECT * FROM comments WHERE tenant_id = {TENANT}"
                  " ORDER BY created_at DESC LIMIT 50")


class Recorder:
    """A progress display that remembers what it was told."""

    def __init__(self) -> None:
        self.advances: list[tuple[str, float, float | None]] = []
        self.lock = threading.Lock()

    def stage_started(self, stage: str, total: int) -> None: ...

    def step_started(self, step: Step) -> None: ...

    def step_advance(self, step: Step, completed: float, total: float | None) -> None:
        with self.lock:
            self.advances.append((step.id, completed, total))

    def step_finished(self, step: Step, outcome: str) -> None: ...

    def stage_finished(self, stage: str) -> None: ...


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- the stage


@pytest.mark.core_majors  # load; the other tests here run the steps on every major
def test_stage_under_load_uses_indexes_and_rolls_back(
    scale1_db: str, pg_server: servers.PostgresServer
) -> None:
    """Every feature on, at scale 1, with the application running: no workload transaction
    fails, the planner uses the new indexes, a rerun does nothing, and rolling back (under
    load too) leaves indexes and constraints exactly as they were."""
    use_created_at_index(scale1_db)
    pb = playbook(1.0, unique=True, fks=True, drop_replaced=True, extra=True)
    before = schema_of(scale1_db)
    with psycopg.connect(scale1_db, autocommit=True) as conn:
        conn.execute("ANALYZE")
        seq_before = explain(conn, LATEST_BY_ID, 3)
    assert "rlsm" not in seq_before
    app_dsn = pg_server.dsn(servers.dbname_of(scale1_db), user=samples.APP_ROLE)
    progress = Recorder()
    with Workload(app_dsn, scale1_db, threads=2, think_ms=2) as load:
        result = apply_stage(scale1_db, pb, "index", progress=progress).result
    stats = load.stats.summary()
    assert stats["errors"] == 0, stats["error_samples"]
    assert stats["transactions"] > 20
    assert result.failed == 0 and result.done == len(result.outcomes)
    kinds = {o.kind for o in result.outcomes}
    assert kinds >= {"create_index", "create_index_on_only", "attach_index", "drop_index",
                     "swap_unique", "add_unique_constraint", "add_foreign_key",
                     "validate_constraint"}
    builds = [o for o in result.outcomes if o.kind == "create_index"]
    assert {(step_id, done, total) for step_id, done, total in progress.advances
            if done == 100.0} >= {(o.step_id, 100.0, 100.0) for o in builds}
    assert invalid_indexes(scale1_db) == []

    with psycopg.connect(scale1_db, autocommit=True) as conn:
        # Partitioned events: one index per partition, attached, and the parent valid.
        attached = conn.execute(
            "SELECT p.indisvalid, count(i.inhrelid), count(*) FILTER (WHERE x.indisvalid)"
            " FROM pg_class pc JOIN pg_index p ON p.indexrelid = pc.oid"
            " LEFT JOIN pg_inherits i ON i.inhparent = pc.oid"
            " LEFT JOIN pg_index x ON x.indexrelid = i.inhrelid"
            " WHERE pc.relname = 'events_account_id_rlsm_idx' GROUP BY p.indisvalid").fetchone()
        assert attached == (True, len(samples.EVENT_PARTITIONS), len(samples.EVENT_PARTITIONS))
        conn.execute("ANALYZE")
        assert "comments_tenant_id_rlsm_idx" in explain(conn, LATEST_BY_ID, 3)
        assert "comments_created_at_rlsm_idx" in explain(conn, LATEST_BY_TIME, 3)
        old = conn.execute("SELECT to_regclass('public.issues_created_at_idx')").fetchone()
        assert old == (None,), "drop_replaced_indexes dropped the twinned index"

    again = apply_stage(scale1_db, pb, "index").result
    assert again.done == 0 and again.skipped == len(again.outcomes)

    with Workload(app_dsn, scale1_db, threads=2, think_ms=2) as load:
        rollback_to(scale1_db, pb, "constrain")
    assert load.stats.errors == 0, load.stats.error_samples
    assert schema_of(scale1_db) == before


def test_unique_swap_and_composite_keys_keep_rows_and_refuse_cross_tenant_rows(
    small_db: str,
) -> None:
    pb = playbook(0.2, unique=True, fks=True)
    before = schema_of(small_db)
    with psycopg.connect(small_db) as conn:
        rows_before = table_checksums(conn, exclude_columns=())
    result = apply_stage(small_db, pb, "index").result
    assert result.failed == 0
    with psycopg.connect(small_db, autocommit=True) as conn:
        assert table_checksums(conn, exclude_columns=()) == rows_before
        email, tenant, other = _user_and_other_tenant(conn)
        # The same email in another tenant is fine now; twice in one tenant is not.
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO users (account_id, email) VALUES (%s, %s)", [other, email])
        with pytest.raises(psycopg.errors.UniqueViolation, match="users_email_key_rlsm_tenant"):
            conn.execute("INSERT INTO users (account_id, email) VALUES (%s, %s)", [tenant, email])
        issue_a, label_a, label_b = conn.execute(
            "SELECT i.id, la.id, lb.id FROM issues i, labels la, labels lb"
            " WHERE la.account_id = i.tenant_id AND lb.account_id <> i.tenant_id"
            " AND NOT EXISTS (SELECT 1 FROM issue_labels x WHERE x.issue_id = i.id)"
            " ORDER BY i.id, la.id, lb.id LIMIT 1").fetchone() or (None, None, None)
        assert issue_a is not None
        with conn.transaction(force_rollback=True):  # same tenant: accepted
            conn.execute("INSERT INTO issue_labels (issue_id, label_id) VALUES (%s, %s)",
                         [issue_a, label_a])
        with pytest.raises(psycopg.errors.ForeignKeyViolation,
                           match="issue_labels_issue_id_fkey_rlsm_tenant"):
            conn.execute("INSERT INTO issue_labels (issue_id, label_id) VALUES (%s, %s)",
                         [issue_a, label_b])
        # A reply whose parent comment belongs to another tenant.
        issue, foreign_parent = conn.execute(
            "SELECT c.issue_id, p.id FROM comments c JOIN comments p ON p.tenant_id <> c.tenant_id"
            " ORDER BY c.id, p.id LIMIT 1").fetchone() or (None, None)
        with pytest.raises(psycopg.errors.ForeignKeyViolation,
                           match="comments_parent_id_fkey_rlsm_tenant"):
            conn.execute("INSERT INTO comments (issue_id, parent_id, body) VALUES (%s, %s, 'x')",
                         [issue, foreign_parent])

    rollback_to(small_db, pb, "constrain")
    assert schema_of(small_db) == before
    with psycopg.connect(small_db, autocommit=True) as conn:
        assert table_checksums(conn, exclude_columns=()) == rows_before
        with pytest.raises(psycopg.errors.UniqueViolation, match="users_email_key"):
            conn.execute("INSERT INTO users (account_id, email) VALUES (%s, %s)", [other, email])


def _user_and_other_tenant(conn: psycopg.Connection[Any]) -> tuple[str, int, int]:
    row = conn.execute(
        "SELECT u.email, u.account_id, (SELECT min(a.id) FROM accounts a"
        " WHERE a.id <> u.account_id) FROM users u ORDER BY u.id LIMIT 1").fetchone()
    assert row is not None
    return str(row[0]), int(row[1]), int(row[2])


def test_new_step_kinds_take_the_locks_they_declare(small_db: str) -> None:
    """What pg_locks shows for the steps this stage adds that can run in a transaction (the
    executor decides lock_timeout from the declared lock): the strongest mode held on the
    step's table and its indexes."""
    pb = playbook(0.2, unique=True, fks=True)
    plan = build_plan(load_catalog(small_db), pb, ["index"]).stage("index")
    seen: dict[str, set[str]] = {}
    with psycopg.connect(small_db, autocommit=True) as conn:
        for step in plan.steps:
            # VALIDATE runs outside a step transaction (no DDL statement timeout on its
            # scan), but it can run inside one to read its locks.
            in_txn = step.transactional or step.kind == "validate_constraint"
            if not in_txn or step.table is None:
                run_step(conn, step)
                continue
            indexes = _index_oids(conn, step.table)
            with conn.transaction():
                for statement in step.statements:
                    execute(conn, statement)
                held = _held_on(conn, step.table, indexes)
            assert strongest(held) == step.lock, (step.id, held)
            seen.setdefault(step.kind, set()).add(step.lock.label)
    assert seen == {"create_index_on_only": {"SHARE"}, "attach_index": {"ACCESS EXCLUSIVE"},
                    "swap_unique": {"ACCESS EXCLUSIVE"},
                    "add_unique_constraint": {"ACCESS EXCLUSIVE"},
                    "add_foreign_key": {"SHARE ROW EXCLUSIVE"},
                    "validate_constraint": {"SHARE UPDATE EXCLUSIVE"},
                    "tenant_statistics": {"SHARE UPDATE EXCLUSIVE"},
                    "pin_index_usage": {"none"}}


def _index_oids(conn: psycopg.Connection[Any], table: QualifiedName) -> list[int]:
    return [int(r[0]) for r in conn.execute(
        "SELECT indexrelid FROM pg_index WHERE indrelid = %s",
        [relation_oid(conn, table)]).fetchall()]


def _held_on(conn: psycopg.Connection[Any], table: QualifiedName,
             indexes: list[int]) -> list[str]:
    """Modes our backend holds on ``table`` and on its indexes that existed before the
    step (an index lock blocks every query that plans against the table, so it counts; the
    index a step creates blocks nobody)."""
    modes = relation_locks(conn, conn.info.backend_pid, relation_oid(conn, table))
    for oid in indexes:
        modes += relation_locks(conn, conn.info.backend_pid, oid)
    # ROW SHARE (a self-referencing key's check) is weaker than anything declared here.
    return [m for m in modes if m != "RowShareLock"]


# --------------------------------------------------------------------------- repair


def _block_writes_on(dsn: str, table: str) -> psycopg.Connection[Any]:
    """An open transaction holding ROW EXCLUSIVE: a concurrent build on ``table`` waits for
    it (phase 'waiting for writers before build'), its INVALID index already created."""
    blocker = psycopg.connect(dsn)
    blocker.execute(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE")  # constant name
    return blocker


def _waiting_build(conn: psycopg.Connection[Any], table: str) -> int | None:
    row = conn.execute("SELECT pid FROM pg_stat_progress_create_index"
                       " WHERE relid = to_regclass(%s)", [table]).fetchone()
    return None if row is None else int(row[0])


def _validity(dsn: str, name: str) -> bool | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT x.indisvalid FROM pg_index x JOIN pg_class c"
                           " ON c.oid = x.indexrelid WHERE c.relname = %s", [name]).fetchone()
    return None if row is None else bool(row[0])


def test_terminated_build_leaves_an_invalid_index_that_the_next_run_repairs(
    small_db: str,
) -> None:
    """The build's backend is terminated while it waits; the stage fails with one clear
    error, the INVALID index stays, the plan reports it, and the next run drops it
    concurrently and builds it again. Meanwhile the progress display got the build's
    phase from pg_stat_progress_create_index."""
    pb = playbook(0.2)
    step_id = "create_index:public.comments:comments_tenant_id_rlsm_idx"
    progress = Recorder()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            apply_stage(small_db, pb, "index", progress=progress)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    blocker = _block_writes_on(small_db, "comments")
    runner = threading.Thread(target=run)
    try:
        runner.start()
        with psycopg.connect(small_db, autocommit=True) as conn:
            pid = wait_for("the build to wait", lambda: _waiting_build(conn, "comments"))
            # The watcher polls while the build waits: 'waiting for writers' is 0 %.
            wait_for("progress", lambda: any(a[0] == step_id for a in progress.advances))
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        runner.join(WAIT_S)
    finally:
        blocker.rollback()
        blocker.close()
    assert not runner.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], StepFailed), errors
    assert step_id in str(errors[0])
    assert (step_id, 0.0, 100.0) in progress.advances
    assert _validity(small_db, "comments_tenant_id_rlsm_idx") is False
    notes = build_plan(load_catalog(small_db), pb, ["index"]).stage("index").notes
    assert any("comments_tenant_id_rlsm_idx is INVALID" in n for n in notes)

    result = apply_stage(small_db, pb, "index").result
    assert result.outcome(step_id).outcome == "done"
    assert _validity(small_db, "comments_tenant_id_rlsm_idx") is True
    assert invalid_indexes(small_db) == []


def test_sigkill_of_the_runner_mid_build_converges(small_db: str, tmp_path: Path) -> None:
    """``kill -9`` of ``rls-migrate apply --stage index`` while a build runs: the server
    notices the dead client (client_connection_check_interval, set for builds) and stops
    the build, which leaves an INVALID index and frees the migration lock; the next run
    repairs it."""
    path = tmp_path / "app.yaml"
    path.write_text(dump_playbook(playbook(0.2)))
    blocker = _block_writes_on(small_db, "comments")
    cli = [sys.executable, "-c", "from rls_migrate.cli import main; main()"]
    proc = subprocess.Popen([*cli, "apply", str(path), "--stage", "index", "--yes",
                             "--dsn", small_db], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        with psycopg.connect(small_db, autocommit=True) as conn:
            pid = wait_for("the build to wait", lambda: _waiting_build(conn, "comments"))
            proc.send_signal(signal.SIGKILL)
            proc.wait(WAIT_S)

            def gone() -> bool:
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                   [pid]).fetchone()
                return row == (0,)

            if conn.info.server_version >= 140000:
                wait_for("the orphaned build to stop", gone, timeout=10)
            else:  # no client check before PostgreSQL 14: end it as an operator would
                conn.execute("SELECT pg_terminate_backend(%s)", [pid])
                wait_for("the orphaned build to stop", gone, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        blocker.rollback()
        blocker.close()
    assert _validity(small_db, "comments_tenant_id_rlsm_idx") is False
    result = apply_stage(small_db, playbook(0.2), "index").result
    assert result.failed == 0
    assert _validity(small_db, "comments_tenant_id_rlsm_idx") is True
    assert invalid_indexes(small_db) == []


# --------------------------------------------------------------------------- planning


def test_twins_keep_order_include_and_predicate_and_replan_stably(small_db: str) -> None:
    """A twin is the original with the tenant in front: sort order, INCLUDE columns and
    the predicate stay. After the stage dropped the original (drop_replaced_indexes), the
    plan is the same, so a rollback builds the original back exactly."""
    with psycopg.connect(small_db, autocommit=True) as conn:
        conn.execute("CREATE INDEX \"Open Issues\" ON issues (created_at DESC NULLS LAST,"
                     " title text_pattern_ops) INCLUDE (status) WHERE status <> 'closed'")
    pb = playbook(0.2, drop_replaced=True, index_options={"twin_min_scans": 0})
    before = schema_of(small_db)
    original = dict((n, d) for n, d, _ in before["public.issues"]["indexes"])["Open Issues"]
    plan = build_plan(load_catalog(small_db), pb, ["index"]).stage("index")
    assert apply_stage(small_db, pb, "index").result.failed == 0
    after = dict((n, d) for n, d, _ in schema_of(small_db)["public.issues"]["indexes"])
    assert "Open Issues" not in after
    assert after["Open Issues_rlsm_idx"] == original.replace(
        '"Open Issues"', '"Open Issues_rlsm_idx"').replace(
        "(created_at DESC", "(tenant_id, created_at DESC")
    replanned = build_plan(load_catalog(small_db), pb, ["index"]).stage("index")
    assert [s.id for s in replanned.steps] == [s.id for s in plan.steps]
    rollback_to(small_db, pb, "constrain")
    assert schema_of(small_db) == before


def test_playbook_mistakes_and_foreign_invalid_indexes_are_reported(small_db: str) -> None:
    catalog_pb = playbook(0.2)
    data = catalog_pb.model_dump()
    data["tables"]["public.users"]["tenant_unique"] = [["emial"]]
    with pytest.raises(PlaybookError, match=r"tables.public.users.tenant_unique: .*'emial'"
                                            r" \(did you mean email\?\)"):
        build_plan(load_catalog(small_db), Playbook.model_validate(data), ["index"])
    data["tables"]["public.users"]["tenant_unique"] = []
    data["tables"]["public.events"]["tenant_unique"] = [["kind"]]
    with pytest.raises(PlaybookError, match="not supported on a partitioned table"):
        build_plan(load_catalog(small_db), Playbook.model_validate(data), ["index"])
    with psycopg.connect(small_db, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY issues_status_key ON issues (status)")
    notes = build_plan(load_catalog(small_db), catalog_pb, ["index"]).stage("index").notes
    assert any(n.startswith("public.issues: issues_status_key is INVALID and not ours")
               for n in notes), notes


def test_index_shape_and_progress_arithmetic() -> None:
    shape = IndexShape.parse(
        'CREATE UNIQUE INDEX "a(b" ON public."t, u" USING btree (lower(x), "Y""z" DESC)'
        " INCLUDE (w) WHERE (note <> 'a, (b')")
    assert shape is not None and shape.columns is None
    assert [k.as_string(None) for k in shape.keys] == ["lower(x)", '"Y""z" DESC']
    assert shape.tail == "INCLUDE (w) WHERE (note <> 'a, (b')"
    twin = shape.leading("tenant_id")
    assert twin.create("t_idx", QualifiedName("public", "t")).as_string(None) == (
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "t_idx" ON "public"."t" USING "btree" '
        "(\"tenant_id\", lower(x), \"Y\"\"z\" DESC) INCLUDE (w) WHERE (note <> 'a, (b')")
    assert twin.without_leading() == shape
    plain = IndexShape.parse('CREATE INDEX i ON public.t USING btree (a, "B c")')
    assert plain is not None and plain.columns == ("a", "B c") and plain.is_plain
    steps = [build_progress("building index: scanning table", 50, 100, 0, 0),
             build_progress("building index: loading tuples in tree", 0, 0, 10, 10),
             build_progress("index validation: scanning table", 100, 100, 0, 0),
             build_progress("waiting for old snapshots", 0, 0, 0, 0)]
    assert steps == [22.5, 70.0, 95.0, 95.0]
