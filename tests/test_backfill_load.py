"""The data stages under an application workload, on every major.

* Zero downtime: while four threads work as the application role (inserting issues,
  comments and attachments, moving comments to another issue of the same tenant, reading),
  add-column -> backfill -> constrain run through ``apply_stage``; not one application
  transaction fails, every row (those written during the run too) ends with its parent's
  tenant, and every other column of the rows that existed before is unchanged.
* Termination: under an insert load faster than the backfill, the backfill still ends (each
  pass is bounded by the largest key present when it starts) and the rows inserted meanwhile
  carry their key through the sync trigger.

The unmarked tests are the reduced versions (scale 0.2, a few seconds); the
``reliability`` ones run the same scenarios longer on a bigger database.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from rls_migrate import samples
from rls_migrate.catalog import Catalog
from rls_migrate.context import tenant_transaction
from rls_migrate.demo import sample_playbook
from rls_migrate.journal import Journal, load_checkpoint
from rls_migrate.playbook import Playbook
from rls_migrate.runner import apply_stage
from rls_migrate.testing import servers
from rls_migrate.testing.checksums import table_checksums

Conn = psycopg.Connection[Any]
# Version-agnostic (the toolkit's own logic over SQL every major runs alike): the core
# majors only, unless RLS_MIGRATE_TEST_ALL_MAJORS=1 (see tests/conftest.py).
pytestmark = pytest.mark.core_majors


WORKLOAD_TABLES = ("issues", "comments", "attachments")

# Every derived table of the sample, and the join that gives each row its true tenant.
TRUE_TENANT = {
    "issues": "SELECT count(*) FROM issues i JOIN projects p ON p.id = i.project_id"
              " WHERE i.tenant_id IS DISTINCT FROM p.account_id",
    "comments": "SELECT count(*) FROM comments c JOIN issues i ON i.id = c.issue_id"
                " JOIN projects p ON p.id = i.project_id"
                " WHERE c.tenant_id IS DISTINCT FROM p.account_id",
    "attachments": "SELECT count(*) FROM attachments a JOIN comments c ON c.id = a.comment_id"
                   " JOIN issues i ON i.id = c.issue_id JOIN projects p ON p.id = i.project_id"
                   " WHERE a.tenant_id IS DISTINCT FROM p.account_id",
    "issue_labels": "SELECT count(*) FROM issue_labels il JOIN labels l ON l.id = il.label_id"
                    " WHERE il.tenant_id IS DISTINCT FROM l.account_id",
    "Project Notes": 'SELECT count(*) FROM "Project Notes" n JOIN projects p'
                     ' ON p.id = n."projectId" WHERE n.tenant_id IS DISTINCT FROM p.account_id',
}

_FACTORIES: dict[tuple[str, float], servers.DatabaseFactory] = {}


@pytest.fixture
def db_at(
    pg_server: servers.PostgresServer, make_factory: Callable[..., servers.DatabaseFactory]
) -> Iterator[Callable[[float], str]]:
    """``db_at(scale)``: a fresh sample database, dropped after the test. One template per
    server and scale, built when first asked for, so the reliability scale costs nothing in
    the normal run."""
    made: list[tuple[servers.DatabaseFactory, str]] = []

    def create(scale: float) -> str:
        key = (pg_server.dsn(), scale)
        if key not in _FACTORIES:
            _FACTORIES[key] = make_factory(
                lambda dsn: samples.load(dsn, scale=scale), f"bf{str(scale).replace('.', '')}")
        dsn = _FACTORIES[key].create()
        made.append((_FACTORIES[key], dsn))
        return dsn

    yield create
    for factory, dsn in made:
        factory.drop(servers.dbname_of(dsn))


def playbook_for(dsn: str, **backfill: Any) -> Playbook:
    """init's playbook for the sample with audit_log decided (orphans skipped) and the
    given ``options.backfill`` overrides."""
    with psycopg.connect(dsn) as conn:
        playbook = sample_playbook(Catalog.load(conn))
    options = playbook.options.model_copy(update={
        "backfill": playbook.options.backfill.model_copy(update={"orphans": "skip",
                                                                 **backfill})})
    return playbook.model_copy(update={"options": options})


def app_dsn(dsn: str) -> str:
    return make_conninfo(dsn, user=samples.APP_ROLE)


def wrong_tenants(dsn: str) -> dict[str, int]:
    """Rows whose key is missing or differs from the tenant their parents give them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        out = {}
        for table, query in TRUE_TENANT.items():
            row = conn.execute(query.encode()).fetchone()  # fixed test SQL, no input
            assert row is not None
            out[table] = int(row[0])
        return out


def rows_checksum(conn: Conn, table: str, exclude: tuple[str, ...], where: sql.Composable,
                  params: list[Any]) -> str:
    """``rows:md5`` of the rows matching ``where``, over every column but ``exclude``."""
    columns = [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
        " AND NOT attisdropped AND NOT (attname = ANY(%s)) ORDER BY attnum",
        [sql.Identifier(table).as_string(conn), list(exclude)]).fetchall()]
    row = conn.execute(sql.SQL(
        "SELECT count(*), md5(coalesce(string_agg(h, '' ORDER BY h), ''))"
        " FROM (SELECT md5(ROW({cols})::text) AS h FROM {t} AS t WHERE {where}) AS s").format(
        cols=sql.SQL(", ").join(sql.Identifier("t", c) for c in columns),
        t=sql.Identifier(table), where=where), params).fetchone()
    assert row is not None
    return f"{row[0]}:{row[1]}"


# --------------------------------------------------------------------------- the workload


class Workload:
    """Application threads, each on its own connection as ``app_user``, every transaction
    with its tenant set. Errors are collected, never raised: the test asserts there are
    none. Comments only move between issues of the same tenant, so every row's true tenant
    stays what the parents say."""

    def __init__(self, dsn: str, threads: int = 4, seed: int = 7) -> None:
        self.dsn = app_dsn(dsn)
        self.threads = threads
        self.seed = seed
        self.errors: list[str] = []
        self.ops: Counter[str] = Counter()
        self.max_ms = 0.0
        self.moved: set[int] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            self.projects: dict[int, list[int]] = {}
            for account, project in conn.execute("SELECT account_id, id FROM projects"):
                self.projects.setdefault(account, []).append(project)
            self.issues: dict[int, list[int]] = {}
            for account, issue in conn.execute(
                    "SELECT p.account_id, i.id FROM issues i JOIN projects p"
                    " ON p.id = i.project_id ORDER BY i.id"):
                self.issues.setdefault(account, []).append(issue)
            self.comments = [tuple(r) for r in conn.execute(
                "SELECT c.id, p.account_id FROM comments c JOIN issues i ON i.id = c.issue_id"
                " JOIN projects p ON p.id = i.project_id ORDER BY c.id")]
        self.accounts = sorted(self.issues)

    def __enter__(self) -> Workload:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _run(self, n: int) -> None:
        rng = random.Random(self.seed * 100 + n)
        try:
            conn = psycopg.connect(self.dsn, autocommit=True,
                                   application_name=f"workload-{n}")
        except psycopg.Error as exc:
            self._error(f"connect: {exc}")
            return
        with conn:
            while not self._stop.is_set():
                kind = rng.choices(("insert", "move", "read"), weights=(4, 3, 3))[0]
                started = time.perf_counter()
                try:
                    getattr(self, f"_{kind}")(conn, rng)
                except psycopg.Error as exc:
                    self._error(f"{kind}: {type(exc).__name__}: {exc}")
                    continue
                ms = (time.perf_counter() - started) * 1000
                with self._lock:
                    self.ops[kind] += 1
                    self.max_ms = max(self.max_ms, ms)

    def _error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    def _insert(self, conn: Conn, rng: random.Random) -> None:
        """A new issue with two comments (one on an older issue) and an attachment."""
        account = rng.choice(self.accounts)
        with tenant_transaction(conn, account):
            row = conn.execute(
                "INSERT INTO issues (project_id, title, status, created_at)"
                " VALUES (%s, 'from the workload', 'open', now()) RETURNING id",
                [rng.choice(self.projects[account])]).fetchone()
            assert row is not None
            older = rng.choice(self.issues[account])
            ids = [r[0] for r in conn.execute(
                "INSERT INTO comments (issue_id, body, created_at)"
                " VALUES (%s, 'new', now()), (%s, 'reply', now()) RETURNING id",
                [row[0], older]).fetchall()]
            conn.execute(
                "INSERT INTO attachments (comment_id, filename, size_bytes)"
                " VALUES (%s, 'trace.log', 42)", [rng.choice(ids)])

    def _move(self, conn: Conn, rng: random.Random) -> None:
        """Re-parent an existing comment to another issue of the same tenant."""
        comment, account = rng.choice(self.comments)
        with tenant_transaction(conn, account):
            conn.execute("UPDATE comments SET issue_id = %s WHERE id = %s",
                         [rng.choice(self.issues[account]), comment])
        with self._lock:
            self.moved.add(int(comment))

    def _read(self, conn: Conn, rng: random.Random) -> None:
        account = rng.choice(self.accounts)
        with tenant_transaction(conn, account):
            conn.execute(
                "SELECT count(*), max(c.created_at) FROM comments c JOIN issues i"
                " ON i.id = c.issue_id WHERE i.project_id = ANY(%s)",
                [self.projects[account]]).fetchone()


# --------------------------------------------------------------------------- zero downtime


def old_row_bounds(dsn: str) -> dict[str, Any]:
    """Which rows exist before the workload starts."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT (SELECT max(id) FROM issues), (SELECT max(id) FROM comments),"
                           " (SELECT array_agg(id) FROM attachments)").fetchone()
    assert row is not None
    return {"issue": row[0], "comment": row[1], "attachments": row[2]}


def old_rows(dsn: str, bounds: dict[str, Any]) -> dict[str, Any]:
    """What must not change in the rows that existed before the workload (tenant_id left
    out): checksums of old issues and attachments (the workload only inserts there), and per
    old comment a hash of every column but issue_id, plus its issue_id (which the
    workload's moves change)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        comments = {int(r[0]): (r[1], int(r[2])) for r in conn.execute(
            "SELECT id, md5(ROW(id, parent_id, body, created_at)::text), issue_id"
            " FROM comments WHERE id <= %s", [bounds["comment"]])}
        return {
            "issues": rows_checksum(conn, "issues", ("tenant_id",), sql.SQL("t.id <= %s"),
                                    [bounds["issue"]]),
            "attachments": rows_checksum(conn, "attachments", ("tenant_id",),
                                         sql.SQL("t.id = ANY(%s)"), [bounds["attachments"]]),
            "comments": comments,
        }


def run_stages_under_load(dsn: str, playbook: Playbook, *, settle_s: float) -> Workload:
    """add-column -> backfill -> constrain (after prepare) while the workload runs; checks
    everything the zero-downtime promise says and returns the workload for its numbers."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        untouched_before = {t: s for t, s in table_checksums(conn).items()
                            if t not in WORKLOAD_TABLES}
    bounds = old_row_bounds(dsn)
    before = old_rows(dsn, bounds)
    apply_stage(dsn, playbook, "prepare")
    workload = Workload(dsn)
    with workload:
        time.sleep(settle_s)  # the workload runs before the first DDL...
        for stage in ("add-column", "backfill", "constrain"):
            result = apply_stage(dsn, playbook, stage).result
            assert result.failed == 0, stage
        time.sleep(settle_s)  # ...and after the last one
    assert workload.errors == [], workload.errors[:5]
    assert all(workload.ops[k] > 0 for k in ("insert", "move", "read")), workload.ops

    # Every row, old or written during the run, carries the tenant its parents give it.
    assert wrong_tenants(dsn) == dict.fromkeys(TRUE_TENANT, 0)
    with psycopg.connect(dsn, autocommit=True) as conn:
        written = conn.execute("SELECT count(*) FROM comments WHERE id > %s",
                               [bounds["comment"]]).fetchone()
        not_null = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attname = 'tenant_id' AND attnotnull"
            " AND attrelid IN ('issues'::regclass, 'comments'::regclass,"
            " 'attachments'::regclass)").fetchone()
        untouched_after = {t: s for t, s in table_checksums(conn).items()
                           if t not in WORKLOAD_TABLES}
    assert written is not None and written[0] > 0, "no comment was written during the run"
    assert not_null == (3,), "constrain made the key NOT NULL"

    # Nothing else changed: tables the workload does not touch, whole; old rows of the
    # others, column by column (issue_id of the moved comments aside).
    assert untouched_after == untouched_before
    after = old_rows(dsn, bounds)
    assert after["issues"] == before["issues"], "updated_at must not fire for the backfill"
    assert after["attachments"] == before["attachments"]
    assert set(after["comments"]) == set(before["comments"])
    for cid, (digest, issue) in before["comments"].items():
        assert after["comments"][cid][0] == digest, cid
        if cid not in workload.moved:
            assert after["comments"][cid][1] == issue, cid
    return workload


@pytest.mark.core_majors  # load
def test_zero_downtime_under_load(db_at: Callable[[float], str]) -> None:
    dsn = db_at(0.2)
    # Small batches with a pause, so the backfill overlaps the workload for a while.
    playbook = playbook_for(dsn, batch_start_rows=100, batch_min_rows=50, batch_max_rows=100,
                            pause=5.0)
    workload = run_stages_under_load(dsn, playbook, settle_s=0.3)
    print(f"workload: {dict(workload.ops)}, slowest transaction {workload.max_ms:.0f} ms")


@pytest.mark.reliability
def test_zero_downtime_under_load_long(db_at: Callable[[float], str]) -> None:
    dsn = db_at(2.0)
    playbook = playbook_for(dsn, batch_start_rows=200, batch_min_rows=100,
                            batch_max_rows=300, pause=5.0)
    workload = run_stages_under_load(dsn, playbook, settle_s=1.0)
    print(f"workload: {dict(workload.ops)}, slowest transaction {workload.max_ms:.0f} ms")


# --------------------------------------------------------------------------- termination


class InsertLoad:
    """Threads inserting comments as fast as they can (``rows`` per statement), each
    transaction with its tenant set."""

    def __init__(self, dsn: str, threads: int, rows: int) -> None:
        self.dsn = app_dsn(dsn)
        self.rows = rows
        self.errors: list[str] = []
        self.inserted = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        with psycopg.connect(dsn, autocommit=True) as conn:
            self.issues = [tuple(r) for r in conn.execute(
                "SELECT i.id, p.account_id FROM issues i JOIN projects p"
                " ON p.id = i.project_id")]
        self._workers = [threading.Thread(target=self._run, args=(n,), daemon=True)
                         for n in range(threads)]

    def __enter__(self) -> InsertLoad:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _run(self, n: int) -> None:
        rng = random.Random(n)
        with psycopg.connect(self.dsn, autocommit=True, application_name=f"load-{n}") as conn:
            while not self._stop.is_set():
                issue, account = rng.choice(self.issues)
                try:
                    with tenant_transaction(conn, account):
                        conn.execute("INSERT INTO comments (issue_id, body, created_at)"
                                     " SELECT %s, 'load', now() FROM generate_series(1, %s)",
                                     [issue, self.rows])
                except psycopg.Error as exc:
                    with self._lock:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    self.inserted += self.rows


def wait_for_step(dsn: str, step_id: str, runner: threading.Thread, timeout_s: float) -> bool:
    """Poll the journal until ``step_id`` is done; False when the runner died or time ran
    out first."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True) as conn:
        journal = Journal(conn)
        while journal.step_status(step_id) != "done":
            if not runner.is_alive() or time.monotonic() > deadline:
                return False
            time.sleep(0.01)
    return True


def backfill_under_inserts(dsn: str, playbook: Playbook, *, threads: int,
                           rows: int) -> dict[str, int]:
    """The backfill stage with ``threads`` inserting comments from the moment issues are
    filled until comments are; returns what happened to comments: rows the backfill
    filled, and rows inserted above its bound meanwhile."""
    for stage in ("prepare", "add-column"):
        apply_stage(dsn, playbook, stage)
    outcome: dict[str, Any] = {}

    def backfill() -> None:
        try:
            outcome["result"] = apply_stage(dsn, playbook, "backfill").result
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    runner = threading.Thread(target=backfill, daemon=True)
    runner.start()
    assert wait_for_step(dsn, "backfill:public.issues", runner, 60), outcome
    with InsertLoad(dsn, threads, rows) as load:
        ended = wait_for_step(dsn, "backfill:public.comments", runner, 120)
        with psycopg.connect(dsn, autocommit=True) as conn:
            ckpt = load_checkpoint(conn, "public.comments")
            above = conn.execute(
                "SELECT count(*) FROM comments WHERE id > %s",
                [int(ckpt.max_key[0]) if ckpt and ckpt.max_key else 0]).fetchone()
    runner.join(timeout=120)
    assert ended, f"the comments backfill did not end under the insert load: {outcome}"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].failed == 0
    assert load.errors == [], load.errors[:5]
    assert ckpt is not None and ckpt.finished and ckpt.max_key is not None
    with psycopg.connect(dsn, autocommit=True) as conn:
        last = conn.execute(
            "SELECT hi FROM rls_migrate.backfill_batches WHERE table_name = 'public.comments'"
            " ORDER BY batch_no DESC LIMIT 1").fetchone()
    # Bounded: the last batch ended at the bound read when the pass started...
    assert last is not None and list(last[0]) == list(ckpt.max_key)
    # ...while rows kept arriving above it, and got their key from the sync trigger.
    assert above is not None and above[0] > 0
    assert wrong_tenants(dsn)["comments"] == 0
    print(f"comments: backfill filled {ckpt.rows_done} row(s); {above[0]} inserted above its "
          f"bound meanwhile ({load.inserted} in all)")
    return {"filled": int(ckpt.rows_done), "above_bound": int(above[0])}


def test_backfill_ends_under_insert_load(db_at: Callable[[float], str]) -> None:
    dsn = db_at(0.2)
    playbook = playbook_for(dsn, batch_start_rows=50, batch_min_rows=50, batch_max_rows=50,
                            pause=10.0)
    backfill_under_inserts(dsn, playbook, threads=2, rows=20)


@pytest.mark.reliability
def test_backfill_ends_under_faster_insert_load(db_at: Callable[[float], str]) -> None:
    dsn = db_at(2.0)
    # At most 50 rows per 20 ms: slower than three threads inserting 100 rows a statement.
    playbook = playbook_for(dsn, batch_start_rows=50, batch_min_rows=50, batch_max_rows=50,
                            pause=20.0)
    seen = backfill_under_inserts(dsn, playbook, threads=3, rows=100)
    assert seen["above_bound"] > seen["filled"], seen
