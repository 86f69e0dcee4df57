"""The index stage on the sample database at a million comments: latency of typical
tenant-filtered queries before and after the stage, in the same run, and what the
application saw while the stage built its indexes.

Set-up: the sample SaaS database at scale 100 (1,000,000 comments, 2,000 tenants) with the
application's own ``comments (created_at)`` index (the "latest comments" feed), taken through
prepare .. constrain. The queries filter by tenant the way the RLS policy will (``tenant_id
= NULLIF(current_setting('app.tenant_id', true), '')::bigint``, context set per
transaction), for 20 tenants, and run before the index stage and after it (an admin feed
across tenants uses ``comments_created_at_idx`` beforehand, so the stage twins it). The baseline is
the "before" column: same server, same data, same queries.

While the stage runs, a 2-thread application workload (reads, inserts, updates as the
application role) keeps going; its latency is compared with a window of the same workload
before the stage.

    python -m benchmarks.index            # BENCH_INDEX_SCALE=100 by default
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from rls_migrate import samples
from rls_migrate.catalog import Catalog
from rls_migrate.demo import sample_playbook
from rls_migrate.playbook import Playbook
from rls_migrate.runner import apply_stage
from rls_migrate.testing import servers
from rls_migrate.workload import Workload

RESULTS = Path(__file__).parent / "results"
DATA_STAGES = ("prepare", "add-column", "backfill", "constrain")
TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::bigint"
QUERIES = {
    "latest 50 comments of a tenant (ORDER BY created_at DESC)":
        f"SELECT id, issue_id, created_at FROM comments WHERE tenant_id = {TENANT}"
        " ORDER BY created_at DESC LIMIT 50",
    "a tenant's first 50 comments by id":
        f"SELECT id, issue_id, body FROM comments WHERE tenant_id = {TENANT}"
        " ORDER BY id LIMIT 50",
    "count a tenant's comments":
        f"SELECT count(*) FROM comments WHERE tenant_id = {TENANT}",
}
TENANTS = 20
ROUNDS = 5  # executions per tenant and query: 100 per query and phase
WORKLOAD_WINDOW_S = 10.0


def playbook_for(dsn: str) -> Playbook:
    with psycopg.connect(dsn) as conn:
        playbook = sample_playbook(Catalog.load(conn))
    # VALIDATE CONSTRAINT runs in a transaction, so the executor gives it the DDL statement
    # timeout (5 s by default), which a scan of 400,000 audit_log rows can exceed on a busy
    # 2-core machine; it holds only SHARE UPDATE EXCLUSIVE, so a long one blocks nobody.
    options = playbook.options.model_copy(update={"ddl_statement_timeout": 600_000.0})
    return playbook.model_copy(update={"options": options})


def measure(dsn: str, tenants: list[int]) -> dict[str, dict[str, Any]]:
    """Median and p95 latency (ms) of each query over every tenant, after a warm-up."""
    out: dict[str, dict[str, Any]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE comments")
        for label, query in QUERIES.items():
            times: list[float] = []
            plan = ""
            for tenant in tenants:
                for i in range(ROUNDS + 1):
                    with conn.transaction():
                        conn.execute("SELECT set_config('app.tenant_id', %s, true)",
                                     [str(tenant)])
                        if not plan:
                            rows = conn.execute("EXPLAIN " + query).fetchall()  # constant
                            plan = "\n".join(r[0] for r in rows)
                        t0 = time.perf_counter()
                        conn.execute(query).fetchall()  # constant text
                        elapsed = (time.perf_counter() - t0) * 1000
                    if i:  # the first execution warms the cache
                        times.append(elapsed)
            times.sort()
            out[label] = {"median_ms": round(statistics.median(times), 3),
                          "p95_ms": round(times[int(len(times) * 0.95) - 1], 3),
                          "runs": len(times), "plan": plan}
    return out


def flush_statistics(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.info.server_version >= 150000:
            conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")


def workload_window(app_dsn: str, dsn: str, seconds: float) -> dict[str, Any]:
    with Workload(app_dsn, dsn, threads=2) as load:
        time.sleep(seconds)
    return load.stats.summary()


def main() -> None:
    scale = float(os.environ.get("BENCH_INDEX_SCALE", "100"))
    backend = servers.find_backends("embedded")[0]
    with servers.start_server(backend) as server:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_index")
        dsn = server.dsn("bench_index")
        app_dsn = server.dsn("bench_index", user=samples.APP_ROLE)
        t0 = time.perf_counter()
        counts = samples.load(dsn, scale=scale)
        load_s = time.perf_counter() - t0
        pb = playbook_for(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            # The application's own feed index, and the admin feed that uses it: the stage
            # sees it used and twins it.
            conn.execute("CREATE INDEX comments_created_at_idx ON comments (created_at)")
            for _ in range(5):
                conn.execute("SELECT id FROM comments ORDER BY created_at DESC LIMIT 50")
        t0 = time.perf_counter()
        for stage in DATA_STAGES:
            apply_stage(dsn, pb, stage)
        data_stages_s = time.perf_counter() - t0
        with psycopg.connect(dsn) as conn:
            tenants = [int(r[0]) for r in conn.execute(
                "SELECT id FROM accounts ORDER BY md5(id::text) LIMIT %s", [TENANTS])]
        before = measure(dsn, tenants)
        flush_statistics(dsn)

        baseline_load = workload_window(app_dsn, dsn, WORKLOAD_WINDOW_S)
        with Workload(app_dsn, dsn, threads=2) as load:
            t0 = time.perf_counter()
            result = apply_stage(dsn, pb, "index").result
            index_s = time.perf_counter() - t0
        during_load = load.stats.summary()
        after = measure(dsn, tenants)
        built = [o.step_id.split(":")[-1] for o in result.outcomes
                 if o.kind == "create_index" and o.outcome == "done"]
        report: dict[str, Any] = {
            "benchmark": "index", "postgres": server.major, "scale": scale,
            "python": sys.version.split()[0], "machine": platform.machine(),
            "rows": {"comments": counts["comments"], "accounts": counts["accounts"]},
            "load_s": round(load_s, 1), "data_stages_s": round(data_stages_s, 1),
            "index_stage_s": round(index_s, 1), "indexes_built": built,
            "queries": {label: {"before": before[label], "after": after[label],
                                "speedup": round(before[label]["median_ms"]
                                                 / max(after[label]["median_ms"], 1e-3), 1)}
                        for label in QUERIES},
            "workload": {"before_stage": baseline_load, "during_stage": during_load},
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "index.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"PostgreSQL {report['postgres']}, scale {scale:g}: {counts['comments']:,} comments,"
          f" {counts['accounts']:,} tenants; index stage {report['index_stage_s']} s"
          f" ({len(built)} concurrent builds)")
    print()
    print("| query (tenant context set) | before median ms | before p95 ms | after median ms |"
          " after p95 ms | speed-up |")
    print("|---|---|---|---|---|---|")
    for label, q in report["queries"].items():
        print(f"| {label} | {q['before']['median_ms']} | {q['before']['p95_ms']} |"
              f" {q['after']['median_ms']} | {q['after']['p95_ms']} | {q['speedup']}x |")
    print()
    print("| application workload (2 threads) | transactions | errors | p50 ms | p99 ms |"
          " max ms |")
    print("|---|---|---|---|---|---|")
    for label, w in (("before the stage (10 s)", baseline_load),
                     ("during the index stage", during_load)):
        print(f"| {label} | {w['transactions']} | {w['errors']} | {w['p50_ms']} |"
              f" {w['p99_ms']} | {w['max_ms']} |")


if __name__ == "__main__":
    main()
