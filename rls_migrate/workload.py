"""A realistic application workload on the sample SaaS database, for the demo, the zero-
downtime benchmark and load tests.

Several threads connect as the application role and run short per-tenant transactions with
the tenant context set per transaction (reads of a project's issues, new comments, status
updates, comment re-parenting inside the tenant, new events), and record every transaction's
latency and every error. An optional "forgotten" code path (a nightly report) runs without
any tenant context, the way real cron jobs do, until :meth:`Workload.fix_forgotten_job` is
called. With ``legacy_queries``, the application also runs the statements an existing app
has before it knows about tenant columns: comments scoped only through their issue's project
(a hash join that scans every tenant's comments; the planner's choice for a big tenant, set
here so the run is deterministic) and an ``EXISTS`` through the parent. They are correct:
observe records them, and replay shows them harmless.

Example::

    with Workload(app_dsn, threads=4) as load:
        run_the_migration()
    print(load.stats.summary())
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import psycopg

from rls_migrate.context import set_tenant

EVENT_DAY = dt.datetime(2026, 3, 15, tzinfo=dt.UTC)  # inside the sample's event partitions


@dataclasses.dataclass
class WorkloadStats:
    transactions: int = 0
    errors: int = 0
    error_samples: list[str] = dataclasses.field(default_factory=list)
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    # (seconds since start, latency ms) of every transaction, for charts over time.
    timeline: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    forgotten_runs: int = 0
    started: float = dataclasses.field(default_factory=time.perf_counter)
    finished: float | None = None

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]

    @property
    def worst_ms(self) -> float:
        return max(self.latencies_ms, default=0.0)

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    def longest_stall_ms(self) -> float:
        """The longest time with no transaction finishing (a whole-workload stall)."""
        ends = sorted(t for t, _ in self.timeline)
        if len(ends) < 2:
            return 0.0
        return max(b - a for a, b in zip(ends, ends[1:], strict=False)) * 1000

    def summary(self) -> dict[str, Any]:
        return {
            "transactions": self.transactions,
            "errors": self.errors,
            "tps": round(self.transactions / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(self.percentile(0.50), 2),
            "p99_ms": round(self.percentile(0.99), 2),
            "max_ms": round(self.worst_ms, 2),
            "longest_stall_ms": round(self.longest_stall_ms(), 1),
            "forgotten_job_runs": self.forgotten_runs,
            "error_samples": self.error_samples[:5],
        }


@dataclasses.dataclass(frozen=True)
class TenantData:
    tenant: int
    projects: tuple[int, ...]
    issues: tuple[int, ...]


def load_tenants(owner_dsn: str) -> list[TenantData]:
    """Each tenant's project and issue ids (read once, as the owner)."""
    with psycopg.connect(owner_dsn) as conn:
        rows = conn.execute(
            "SELECT p.account_id, array_agg(DISTINCT p.id), array_agg(i.id)"
            " FROM projects p JOIN issues i ON i.project_id = p.id GROUP BY p.account_id"
            " ORDER BY 1").fetchall()
    return [TenantData(int(r[0]), tuple(r[1]), tuple(r[2])) for r in rows if r[2]]


class Workload:
    """Background application traffic; a context manager that stops and joins on exit."""

    def __init__(
        self,
        app_dsn: str,
        owner_dsn: str,
        *,
        threads: int = 4,
        setting: str = "app.tenant_id",
        forgotten_job: bool = False,
        forgotten_every_s: float = 0.5,
        legacy_queries: bool = False,
        think_ms: float = 1.0,
        seed: int = 7,
    ) -> None:
        self.app_dsn = app_dsn
        self.tenants = load_tenants(owner_dsn)
        if not self.tenants:
            raise ValueError("the sample database has no tenant with issues")
        self.threads = threads
        self.setting = setting
        self.forgotten_job = forgotten_job
        self.forgotten_every_s = forgotten_every_s
        self.legacy_queries = legacy_queries
        self.think_ms = think_ms
        self.seed = seed
        self.stats = WorkloadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._fixed = threading.Event()
        self._workers: list[threading.Thread] = []

    # -- control

    def start(self) -> Workload:
        self.stats = WorkloadStats()
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True,
                                      name=f"workload-{n}")
            worker.start()
            self._workers.append(worker)
        if self.forgotten_job:
            job = threading.Thread(target=self._nightly, daemon=True, name="nightly-report")
            job.start()
            self._workers.append(job)
        return self

    def stop(self) -> WorkloadStats:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)
        self._workers.clear()
        self.stats.finished = time.perf_counter()
        return self.stats

    def fix_forgotten_job(self) -> None:
        """The team fixed the nightly job: from now on it sets the tenant context."""
        self._fixed.set()

    def __enter__(self) -> Workload:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- traffic

    def _record(self, started: float, error: BaseException | None) -> None:
        now = time.perf_counter()
        latency = (now - started) * 1000
        with self._lock:
            self.stats.transactions += 1
            self.stats.latencies_ms.append(latency)
            self.stats.timeline.append((now - self.stats.started, latency))
            if error is not None:
                self.stats.errors += 1
                if len(self.stats.error_samples) < 20:
                    self.stats.error_samples.append(f"{type(error).__name__}: {error}".strip())

    def _connections(self, name: str) -> Iterator[psycopg.Connection[Any]]:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.app_dsn, application_name=name) as conn:
                    yield conn
                    return
            except psycopg.OperationalError:
                time.sleep(0.05)

    def _run(self, n: int) -> None:
        rng = random.Random(self.seed + n)
        for conn in self._connections(f"saas-app-{n}"):
            while not self._stop.is_set():
                data = rng.choice(self.tenants)
                started = time.perf_counter()
                error: BaseException | None = None
                try:
                    with conn.transaction():
                        set_tenant(conn, data.tenant, setting=self.setting)
                        self._one_request(conn, rng, data)
                except psycopg.Error as exc:
                    error = exc
                self._record(started, error)
                if self.think_ms:
                    time.sleep(self.think_ms / 1000)

    def _one_request(self, conn: psycopg.Connection[Any], rng: random.Random,
                     data: TenantData) -> None:
        kind = rng.random()
        if self.legacy_queries and kind < 0.08:
            self._legacy_request(conn, rng, data, hash_join=kind < 0.04)
            return
        if kind < 0.45:
            conn.execute(
                "SELECT i.id, i.title, i.status FROM issues i JOIN projects p"
                " ON p.id = i.project_id WHERE p.account_id = %s AND p.id = %s"
                " ORDER BY i.created_at DESC LIMIT 20",
                [data.tenant, rng.choice(data.projects)]).fetchall()
        elif kind < 0.70:
            conn.execute(
                "INSERT INTO comments (issue_id, body, created_at) VALUES (%s, %s, now())",
                [rng.choice(data.issues), f"comment {rng.random():.6f}"])
        elif kind < 0.85:
            conn.execute("UPDATE issues SET status = %s WHERE id = %s",
                         [rng.choice(("open", "closed", "in_progress")),
                          rng.choice(data.issues)])
        elif kind < 0.93:
            # Re-parent one of this tenant's comments to another issue of the same tenant.
            conn.execute(
                "UPDATE comments SET issue_id = %s WHERE id = (SELECT c.id FROM comments c"
                " WHERE c.issue_id = %s ORDER BY c.id LIMIT 1)",
                [rng.choice(data.issues), rng.choice(data.issues)])
        else:
            conn.execute(
                "INSERT INTO events (account_id, kind, payload, created_at)"
                " VALUES (%s, 'page_view', '{}'::jsonb, %s)",
                [data.tenant, EVENT_DAY + dt.timedelta(seconds=rng.randrange(86_400))])

    @staticmethod
    def _legacy_request(conn: psycopg.Connection[Any], rng: random.Random, data: TenantData,
                        *, hash_join: bool) -> None:
        """A correct statement that scopes a child only through its parent."""
        project = rng.choice(data.projects)
        if hash_join:
            conn.execute("SET LOCAL enable_nestloop = off")
            conn.execute("SET LOCAL enable_mergejoin = off")
            conn.execute(
                "SELECT c.id, c.body FROM comments c JOIN issues i ON i.id = c.issue_id"
                " WHERE i.project_id = %s ORDER BY c.id DESC LIMIT 50", [project]).fetchall()
        else:
            conn.execute(
                "SELECT count(*) FROM comments c WHERE EXISTS (SELECT 1 FROM issues i"
                " WHERE i.id = c.issue_id AND i.project_id = %s)", [project]).fetchone()

    def _nightly(self) -> None:
        """The forgotten code path: a report over every tenant's comments, run without
        context until the team fixes it. The fixed job sets the context and filters by the
        tenant column (the migration added it): a query that relies on RLS alone to filter
        would still read other tenants' rows in observe mode, and be reported."""
        for conn in self._connections("nightly-report"):
            while not self._stop.is_set():
                started = time.perf_counter()
                error: BaseException | None = None
                try:
                    if self._fixed.is_set():
                        for data in self.tenants[:3]:
                            with conn.transaction():
                                set_tenant(conn, data.tenant, setting=self.setting)
                                conn.execute("SELECT count(*) FROM comments WHERE tenant_id = %s",
                                             [data.tenant]).fetchone()
                    else:
                        with conn.transaction():
                            conn.execute("SELECT count(*) FROM comments").fetchone()
                except psycopg.Error as exc:
                    error = exc
                self._record(started, error)
                with self._lock:
                    self.stats.forgotten_runs += 1
                self._stop.wait(self.forgotten_every_s)
