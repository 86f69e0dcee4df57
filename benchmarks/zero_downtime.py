"""Zero downtime, measured: the full rls-migrate runbook vs the textbook migration, each
under the same application workload on an embedded server, in one run.

Reports failed workload transactions, p50/p99/max latency, the longest stall (no
transaction finishing), the application's worst lock waits as the server measured them
(log_lock_waits: on a table, on a row), total time, and draws latency over time per stage
(benchmarks/results/zero_downtime.png). Target: 0 failed transactions and a worst lock wait of
about lock_timeout for rls-migrate, against the naive run's failures and stalls."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from rls_migrate.demo import DemoResult, run_demo

RESULTS = Path(__file__).parent / "results"


def chart(result: DemoResult, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=False)
    for ax, timeline, title in ((axes[0], result.timeline, "rls-migrate runbook"),
                                (axes[1], result.naive_timeline, "naive migration")):
        if not timeline:
            continue
        xs = [t for t, _ in timeline]
        ys = [ms for _, ms in timeline]
        ax.scatter(xs, ys, s=2, alpha=0.5)
        ax.set_yscale("log")
        ax.set_ylabel("transaction latency (ms)")
        ax.set_title(title)
        buckets: dict[int, int] = {}
        for t in xs:
            buckets[int(t * 4)] = buckets.get(int(t * 4), 0) + 1
        twin = ax.twinx()
        twin.plot([k / 4 for k in sorted(buckets)], [buckets[k] * 4 for k in sorted(buckets)],
                  color="tab:green", linewidth=1)
        twin.set_ylabel("transactions/s", color="tab:green")
    for name, start, end in result.stage_marks:
        axes[0].axvspan(start, end, alpha=0.08, color="tab:orange")
        axes[0].text(start, axes[0].get_ylim()[1], name, rotation=90, va="top", fontsize=7)
    axes[0].axhline(100, color="red", linewidth=0.8, linestyle="--")  # lock_timeout
    axes[-1].set_xlabel("seconds since the workload started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    scale = float(os.environ.get("BENCH_SCALE", "5"))
    threads = int(os.environ.get("BENCH_THREADS", "4"))
    with tempfile.TemporaryDirectory() as tmp:
        result = run_demo(scale=scale, keep=False, workdir=Path(tmp), echo=lambda s: None,
                          naive=True, live=False, threads=threads)
    assert result.naive is not None
    rows: list[dict[str, Any]] = []
    for name, w, waits in (("rls-migrate", result.workload, result.lock_waits),
                           ("naive", result.naive, result.naive.get("lock_waits", {}))):
        rows.append({"migration": name, "failed": w["errors"],
                     "lock_wait_table_ms": waits.get("relation"),
                     "lock_wait_row_ms": waits.get("row"),
                     "transactions": w["transactions"], "p50_ms": w["p50_ms"],
                     "p99_ms": w["p99_ms"], "max_ms": w["max_ms"],
                     "longest_stall_ms": w["longest_stall_ms"],
                     "total_s": result.total_s if name == "rls-migrate" else w["total_s"]})
    RESULTS.mkdir(exist_ok=True)
    png = RESULTS / "zero_downtime.png"
    drawn = chart(result, png)
    out = {"benchmark": "zero_downtime", "scale": scale, "threads": threads,
           "lock_timeout_ms": 100, "python": sys.version.split()[0],
           "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "stages_s": result.stages, "kill_switch_s": result.kill_switch_s,
           "gate_refused_forgotten_job": result.gate_refused, "verify_ok": result.verify_ok,
           "results": rows, "chart": png.name if drawn else None}
    (RESULTS / "zero_downtime.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"PostgreSQL 18 (embedded), sample scale {scale}, {threads} workload threads")
    print("| migration | failed tx | transactions | p50 ms | p99 ms | max ms | longest stall ms "
          "| worst lock wait, table / row ms | total s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['migration']} | {r['failed']} | {r['transactions']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['max_ms']} | {r['longest_stall_ms']} | "
              f"{r['lock_wait_table_ms']:.0f} / {r['lock_wait_row_ms']:.0f} | {r['total_s']} |")
    print("\nmax ms is the slowest workload transaction as the client saw it (CPU scheduling "
          "on a shared machine included); the lock waits are the server's own measure "
          "(log_lock_waits, waits over 10 ms; 0 = none that long).")


if __name__ == "__main__":
    main()
