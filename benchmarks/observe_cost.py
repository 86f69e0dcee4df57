"""What observe mode costs the statements it cannot make cheap: "legacy" reads that scan other
tenants' rows, under no RLS, the enforced policy and observe mode, in the same run.

Issue 16 measured correct application statements 15x slower in observe mode than enforced:
statements that reach a child table only through its parent (``comments JOIN issues ...
WHERE issues.project_id = $1``) scan the child, so the observe policy meets every other
tenant's row, and a recorder call per such row is what it cost. This benchmark measures those
statements (the :data:`STATEMENTS`), all correct (they ask for the tenant's own rows only,
and return exactly the same rows in every mode, which is checked before timing):

* ``hash_join``: comments of one project, joined through ``issues`` (a hash join that scans
  ``comments``);
* ``join_2_hops``: comments of the tenant, joined through ``issues`` and ``projects``;
* ``recursive_cte``: the reply threads under one project's top-level comments (a recursive
  join that scans ``comments`` at every level);
* ``exists_parent``: a count of comments with ``EXISTS`` through the parent chain;
* ``lower_filter``: a user found by ``lower(email) = lower($1)`` (a non-leakproof filter:
  the policy runs before it, on every row).

Set-up: the sample SaaS database at each scale in ``BENCH_OBSERVE_SCALES`` (default ``5,100``:
50,000 and 1,000,000 comments), taken through prepare .. index once, then copied three times
(``CREATE DATABASE ... TEMPLATE``): ``none`` (no RLS), ``observe`` (``apply --stage observe``),
``enforced`` (``apply --stage enforce``) and ``enforced_plain`` (enforced, with the index
stage's tenant statistics dropped: what the policy costs without them), so every mode has the
same rows, indexes and statistics. Each statement runs as the application role with tenant 13's context set per
transaction (``set_config(..., true)``), bound parameters (extended protocol). Repetitions are
interleaved (statement by statement, the modes in a rotated order), after a warm-up;
reported: medians, the median of each repetition's ratio, and the ratio of the fastest runs
(on a shared machine a run is stretched by other processes, never shortened).

Observe mode cannot use a tenant index (its policy is true for every row), so where the
enforced policy turns a scan into a tenant-index lookup, observe is compared with that lookup;
observe / no RLS is the cost observe adds to the application's own plan.

Also counted: recorder calls per observed statement (``pg_stat_user_functions``), which is
what issue 16 asks to bring to at most one per statement, table and operation.

Target (issue 16): observe <= 1.25x enforced on each statement.

Writes (``writes`` part): what observe's write-truth triggers add to each deleted or updated
row (see :mod:`rls_migrate.stages.write_truth`), observe mode with them against observe mode
without them (a fourth copy, its triggers dropped), in rolled-back transactions, interleaved:
the tenant-scoped DELETE of the tenant's events and UPDATE of its comments (no recorder flags
them: every row pays the trigger's ``WHEN``, nothing else), a DELETE that scans every
tenant's events and the legacy UPDATE through ``issues`` (a hash join scanning every comment):
flagged, so their rows pay the ``WHEN``'s tenant comparison too, and the statement one
write-truth record. Reported: ms per statement, microseconds per changed row, the ratio.

    python -m benchmarks observe_cost
    BENCH_OBSERVE_SCALES=5 BENCH_OBSERVE_REPS=11 python -m benchmarks.observe_cost
    BENCH_OBSERVE_PARTS=writes BENCH_OBSERVE_SCALES=5 python -m benchmarks.observe_cost

Environment: BENCH_BACKEND (embedded | system), BENCH_OBSERVE_SCALES (5,100),
BENCH_OBSERVE_REPS (15 at scales up to 10, 7 above), BENCH_OBSERVE_TENANT (13),
BENCH_OBSERVE_PARTS (``reads,writes``; ``writes`` alone writes
``results/observe_write_cost.json`` and leaves ``observe_cost.json`` alone).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from rls_migrate import samples
from rls_migrate.catalog import Catalog
from rls_migrate.demo import sample_playbook
from rls_migrate.playbook import Playbook
from rls_migrate.runner import apply_stage
from rls_migrate.stages import write_truth
from rls_migrate.stages.common import PlanContext, with_partitions
from rls_migrate.testing import servers

RESULTS = Path(__file__).parent / "results"
MODES = ("none", "enforced_plain", "enforced", "observe")
"""``enforced_plain``: enforced without the index stage's tenant statistics (dropped), the
baseline of what they buy."""
BEFORE_OBSERVE = ("prepare", "add-column", "backfill", "constrain", "index")

STATEMENTS: dict[str, LiteralString] = {
    "hash_join":
        "SELECT c.id, c.body FROM comments c JOIN issues i ON i.id = c.issue_id"
        " WHERE i.project_id = %(project)s",
    "join_2_hops":
        "SELECT c.id, i.title FROM comments c JOIN issues i ON i.id = c.issue_id"
        " JOIN projects p ON p.id = i.project_id WHERE p.account_id = %(tenant)s",
    "recursive_cte":
        "WITH RECURSIVE thread AS ("
        " SELECT c.id, 1 AS depth FROM comments c JOIN issues i ON i.id = c.issue_id"
        " WHERE i.project_id = %(project)s AND c.parent_id IS NULL"
        " UNION ALL"
        " SELECT c.id, t.depth + 1 FROM comments c JOIN thread t ON c.parent_id = t.id"
        " WHERE t.depth < 4)"
        " SELECT id, depth FROM thread",
    "exists_parent":
        "SELECT count(*) FROM comments c WHERE EXISTS (SELECT 1 FROM issues i"
        " JOIN projects p ON p.id = i.project_id WHERE i.id = c.issue_id"
        " AND p.account_id = %(tenant)s)",
    "lower_filter":
        "SELECT id, name FROM users WHERE lower(email) = lower(%(email)s)",
}


WRITE_MODES = ("observe_no_wt", "observe")
"""Observe mode without and with the write-truth triggers."""

WRITES: dict[str, LiteralString] = {
    "delete_scoped":
        "DELETE FROM events WHERE account_id = %(tenant)s",
    "update_scoped":
        "UPDATE comments SET body = body WHERE tenant_id = %(tenant)s",
    "delete_scan":
        "DELETE FROM events WHERE account_id + 0 = %(tenant)s",
    "update_legacy":
        "UPDATE comments c SET body = c.body FROM issues i WHERE i.id = c.issue_id"
        " AND i.project_id = %(project)s",
}
"""Tenant-scoped (no recorder flags them) and scanning other tenants' rows (flagged: a
sequential scan of every tenant's events, a hash join scanning every comment). ``events``
(partitioned, nothing references it) for the deletes: a comment is referenced by its
replies and attachments."""


def playbook_for(dsn: str) -> Playbook:
    """init's playbook for the sample, decided as a person would. ``twin_min_scans`` out of
    reach: the index stage would otherwise twin whichever index the loading scanned."""
    with psycopg.connect(dsn) as conn:
        playbook = sample_playbook(Catalog.load(conn))
    opts = playbook.options
    options = opts.model_copy(update={
        "ddl_statement_timeout": 600_000.0,  # VALIDATE of a million rows on a busy machine
        "index": opts.index.model_copy(update={"twin_min_scans": 10**9}),
    })
    return playbook.model_copy(update={"options": options})


def parameters(dsn: str, tenant: int) -> dict[str, Any]:
    """The tenant's biggest project and one of its users' e-mail, in upper case (the
    application lower-cases it)."""
    with psycopg.connect(dsn) as conn:
        project = conn.execute(
            "SELECT i.project_id FROM issues i JOIN projects p ON p.id = i.project_id"
            " JOIN comments c ON c.issue_id = i.id WHERE p.account_id = %s"
            " GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1", [tenant]).fetchone()
        email = conn.execute("SELECT upper(email) FROM users WHERE account_id = %s"
                             " ORDER BY id LIMIT 1", [tenant]).fetchone()
    if project is None or email is None:
        raise RuntimeError(f"tenant {tenant} has no project with comments, or no user")
    return {"tenant": tenant, "project": int(project[0]), "email": str(email[0])}


def digest(rows: list[tuple[Any, ...]]) -> str:
    """Order-independent: the same rows in another order give the same digest."""
    return hashlib.sha256("\n".join(sorted(repr(r) for r in rows)).encode()).hexdigest()[:16]


def run_once(conn: psycopg.Connection[Any], statement: LiteralString, params: dict[str, Any]
             ) -> tuple[float, list[tuple[Any, ...]]]:
    """One application transaction: the tenant set, the statement; ms of the statement."""
    with conn.transaction():
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", [str(params["tenant"])])
        started = time.perf_counter()
        rows = conn.execute(statement, params).fetchall()
        elapsed = (time.perf_counter() - started) * 1000
    return elapsed, rows


def plan_shape(conn: psycopg.Connection[Any], statement: LiteralString, params: dict[str, Any]) -> str:
    """The plan's node types, outermost first (to show where the modes' plans differ)."""
    with conn.transaction():
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", [str(params["tenant"])])
        row = conn.execute("EXPLAIN (FORMAT JSON) " + statement, params).fetchone()
    assert row is not None
    nodes: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        label = node["Node Type"]
        if node.get("Relation Name"):
            label += f" {node['Relation Name']}"
        nodes.append(label)
        for child in node.get("Plans", []):
            walk(child)

    walk(row[0][0]["Plan"])
    return " > ".join(nodes)


def recorder_calls(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions"
                           " WHERE schemaname = 'rls_migrate'").fetchone()
    return int(row[0]) if row else 0


def flush(conn: psycopg.Connection[Any]) -> None:
    if conn.info.server_version >= 150000:
        conn.execute("SELECT pg_stat_force_next_flush()")


def drop_write_truth(dsn: str, playbook: Playbook) -> None:
    """Observe mode as it was before write-truth: its triggers and functions dropped."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ctx = PlanContext(Catalog.load(conn), playbook)
        for entry in (e for t in ctx.tenant_tables for e in with_partitions(ctx, t)):
            for statement in write_truth.remove(entry):
                conn.execute(statement)


def prepare_databases(server: servers.LocalServer, scale: float,
                      modes: tuple[str, ...] = MODES) -> dict[str, Any]:
    """Load the sample at ``scale``, run prepare .. index, copy it per mode and apply the
    mode's stages. Returns timings and the owner DSN of each mode's database."""
    src = f"bench_observe_{str(scale).replace('.', '_')}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(src)))
    dsn = server.dsn(src)
    t0 = time.perf_counter()
    counts = samples.load(dsn, scale=scale)
    load_s = time.perf_counter() - t0
    playbook = playbook_for(dsn)
    t0 = time.perf_counter()
    for stage in BEFORE_OBSERVE:
        result = apply_stage(dsn, playbook, stage).result
        assert result.failed == 0, (stage, result)
    stages_s = time.perf_counter() - t0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    dsns: dict[str, str] = {}
    t0 = time.perf_counter()
    for mode in modes:
        name = f"{src}_{mode}"
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(src)))
        dsns[mode] = server.dsn(name)
    copy_s = time.perf_counter() - t0
    for mode in ("observe", "enforced", "enforced_plain", "observe_no_wt"):
        if mode in dsns:
            assert apply_stage(dsns[mode], playbook, "observe").result.failed == 0
    for mode in ("enforced", "enforced_plain"):
        if mode in dsns:
            assert apply_stage(dsns[mode], playbook, "enforce").result.failed == 0
    if "enforced_plain" in dsns:
        with psycopg.connect(dsns["enforced_plain"], autocommit=True) as conn:
            for schema, name in conn.execute(
                    "SELECT stxnamespace::regnamespace::text, stxname FROM pg_statistic_ext"
                    " WHERE stxname LIKE '%rlsm_dep'").fetchall():
                conn.execute(sql.SQL("DROP STATISTICS {}").format(sql.Identifier(schema, name)))
    if "observe_no_wt" in dsns:
        drop_write_truth(dsns["observe_no_wt"], playbook)
    return {"counts": counts, "load_s": round(load_s, 1), "stages_s": round(stages_s, 1),
            "copy_s": round(copy_s, 1), "dsns": dsns, "source": src}


def measure(server: servers.LocalServer, dsns: dict[str, str], params: dict[str, Any],
            reps: int) -> dict[str, Any]:
    apps = {m: psycopg.connect(server.dsn(servers.dbname_of(dsns[m]), user=samples.APP_ROLE),
                               autocommit=True, application_name=f"bench-{m}")
            for m in MODES}
    try:
        results: dict[str, Any] = {}
        for name, statement in STATEMENTS.items():
            # Ground truth first: a correct statement returns the same rows in every mode.
            seen = {m: run_once(apps[m], statement, params)[1] for m in MODES}
            digests = {m: (len(rows), digest(rows)) for m, rows in seen.items()}
            if len(set(digests.values())) != 1:
                raise AssertionError(f"{name}: the modes return different rows: {digests}")
            results[name] = {"rows": digests["none"][0],
                             "plans": {m: plan_shape(apps[m], statement, params)
                                       for m in MODES},
                             "ms": {m: [] for m in MODES}}
        calls_before = recorder_calls(dsns["observe"])
        for rep in range(reps + 1):  # the first round warms caches and is left out
            for name, statement in STATEMENTS.items():
                order = MODES[rep % len(MODES):] + MODES[:rep % len(MODES)]
                for mode in order:
                    ms, _ = run_once(apps[mode], statement, params)
                    if rep:
                        results[name]["ms"][mode].append(ms)
        flush(apps["observe"])
        time.sleep(1.0)  # the statistics collector
        calls = recorder_calls(dsns["observe"]) - calls_before
        observed_statements = (reps + 1) * len(STATEMENTS)
        for r in results.values():
            ms = r["ms"]
            r["median_ms"] = {m: round(statistics.median(ms[m]), 3) for m in MODES}
            # On a shared machine a run is stretched by time slices lost to other processes,
            # never shortened: the fastest run is the undisturbed cost.
            r["best_ms"] = {m: round(min(ms[m]), 3) for m in MODES}
            r["best_observe_vs_enforced"] = round(r["best_ms"]["observe"]
                                                  / r["best_ms"]["enforced"], 2)
            r["best_observe_vs_none"] = round(r["best_ms"]["observe"] / r["best_ms"]["none"], 2)
            r["observe_vs_enforced"] = round(statistics.median(
                [o / e for o, e in zip(ms["observe"], ms["enforced"], strict=True)]), 2)
            r["plain_vs_none"] = round(statistics.median(
                [e / n for e, n in zip(ms["enforced_plain"], ms["none"], strict=True)]), 2)
            r["enforced_vs_none"] = round(statistics.median(
                [e / n for e, n in zip(ms["enforced"], ms["none"], strict=True)]), 2)
            r["observe_vs_none"] = round(statistics.median(
                [o / n for o, n in zip(ms["observe"], ms["none"], strict=True)]), 2)
        return {"statements": results, "recorder_calls": calls,
                "observed_statements": observed_statements}
    finally:
        for conn in apps.values():
            conn.close()


def run_write(conn: psycopg.Connection[Any], statement: LiteralString, params: dict[str, Any]
              ) -> tuple[float, int]:
    """One application transaction, rolled back: ms of the statement, rows it changed."""
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", [str(params["tenant"])])
        started = time.perf_counter()
        rows = conn.execute(statement, params).rowcount
        elapsed = (time.perf_counter() - started) * 1000
    return elapsed, rows


def write_truth_rows(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM rls_migrate.write_truth").fetchone()
    return int(row[0]) if row else 0


def measure_writes(server: servers.LocalServer, dsns: dict[str, str], params: dict[str, Any],
                   reps: int) -> dict[str, Any]:
    """Each of :data:`WRITES` in observe mode without and with write-truth, interleaved."""
    apps = {m: psycopg.connect(server.dsn(servers.dbname_of(dsns[m]), user=samples.APP_ROLE),
                               autocommit=True, application_name=f"bench-{m}")
            for m in WRITE_MODES}
    try:
        results: dict[str, Any] = {n: {"ms": {m: [] for m in WRITE_MODES}, "rows": None}
                                   for n in WRITES}
        for rep in range(reps + 1):  # the first round warms caches and is left out
            for name, statement in WRITES.items():
                order = WRITE_MODES[rep % 2:] + WRITE_MODES[:rep % 2]
                for mode in order:
                    ms, rows = run_write(apps[mode], statement, params)
                    r = results[name]
                    if r["rows"] not in (None, rows):
                        raise AssertionError(f"{name}: {rows} rows in {mode}, {r['rows']} before")
                    r["rows"] = rows
                    if rep:
                        r["ms"][mode].append(ms)
        for r in results.values():
            ms = r["ms"]
            r["median_ms"] = {m: round(statistics.median(ms[m]), 3) for m in WRITE_MODES}
            r["us_per_row"] = {m: round(statistics.median(ms[m]) * 1000 / max(r["rows"], 1), 2)
                               for m in WRITE_MODES}
            r["with_vs_without"] = round(statistics.median(
                [w / o for w, o in zip(ms["observe"], ms["observe_no_wt"], strict=True)]), 2)
            r["best_with_vs_without"] = round(min(ms["observe"]) / min(ms["observe_no_wt"]), 2)
        # Rolled back: the records of the flagged statements are gone with them, as designed.
        return {"statements": results, "write_truth_rows_left": write_truth_rows(
            dsns["observe"])}
    finally:
        for conn in apps.values():
            conn.close()


def other_tenant_rows(dsn: str, tenant: int) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {t: int(conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE tenant_id <> %s"
                                            ).format(sql.Identifier(t)), [tenant]
                                    ).fetchone()[0])  # type: ignore[index]
                for t in ("comments", "issues")}


def main() -> None:
    kind = os.environ.get("BENCH_BACKEND", "embedded")
    scales = [float(s) for s in os.environ.get("BENCH_OBSERVE_SCALES", "5,100").split(",")]
    tenant = int(os.environ.get("BENCH_OBSERVE_TENANT", "13"))
    parts = {p.strip() for p in os.environ.get("BENCH_OBSERVE_PARTS", "reads,writes").split(",")}
    backend = servers.find_backends(kind)[0]
    report: dict[str, Any] = {"benchmark": "observe_cost", "python": sys.version.split()[0],
                              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                              "tenant": tenant, "scales": {}}
    with servers.start_server(backend, settings={"shared_buffers": "'512MB'"}) as server:
        assert isinstance(server, servers.LocalServer)
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        report["postgres"] = f"{version[0] if version else '?'} ({backend.name})"
        for scale in scales:
            reps = int(os.environ.get("BENCH_OBSERVE_REPS", 15 if scale <= 10 else 7))
            modes = (MODES if "reads" in parts else ("none", "observe")) + (
                ("observe_no_wt",) if "writes" in parts else ())
            made = prepare_databases(server, scale, modes)
            params = parameters(made["dsns"]["none"], tenant)
            t0 = time.perf_counter()
            measured = measure(server, made["dsns"], params, reps) if "reads" in parts else {}
            if "writes" in parts:
                measured["writes"] = measure_writes(server, made["dsns"], params, reps)
            report["scales"][str(scale)] = {
                "comments": made["counts"]["comments"], "tenants": made["counts"]["accounts"],
                "other_tenant_rows": other_tenant_rows(made["dsns"]["none"], tenant),
                "load_s": made["load_s"], "stages_s": made["stages_s"],
                "copy_s": made["copy_s"], "measure_s": round(time.perf_counter() - t0, 1),
                "repetitions": reps, "params": params, **measured}
            print(f"scale {scale:g} done: load {made['load_s']} s, stages {made['stages_s']}"
                  f" s, copies {made['copy_s']} s", flush=True)
        report["load_average"] = round(os.getloadavg()[0], 1)
    RESULTS.mkdir(exist_ok=True)
    name = "observe_cost.json" if "reads" in parts else "observe_write_cost.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2) + "\n")
    if "reads" not in parts:
        print(f"PostgreSQL {report['postgres']}, as {samples.APP_ROLE} with tenant {tenant}"
              f" set; load average {report['load_average']} on {os.cpu_count()} cores")
    if "writes" in parts:
        print_writes(report)
    if "reads" in parts:
        print_reads(report, tenant)


def print_writes(report: dict[str, Any]) -> None:
    print()
    print("| scale (comments) | statement | rows changed | without write-truth ms | with ms "
          "| us per row without, with | with / without | best of runs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for scale, s in report["scales"].items():
        for name, r in s["writes"]["statements"].items():
            m, u = r["median_ms"], r["us_per_row"]
            print(f"| {float(scale):g} ({s['comments']:,}) | {name} | {r['rows']:,} "
                  f"| {m['observe_no_wt']:.2f} | {m['observe']:.2f} "
                  f"| {u['observe_no_wt']:.2f}, {u['observe']:.2f} "
                  f"| **{r['with_vs_without']:.2f}x** | {r['best_with_vs_without']:.2f}x |")


def print_reads(report: dict[str, Any], tenant: int) -> None:
    print(f"PostgreSQL {report['postgres']}, as {samples.APP_ROLE} with tenant {tenant} set,"
          f" bound parameters; interleaved repetitions, medians; load average"
          f" {report['load_average']} on {os.cpu_count()} cores")
    print()
    print("| scale (comments) | statement | rows | no RLS ms | enforced without tenant "
          "statistics ms | enforced ms | observe ms | observe / enforced | observe / no RLS "
          "| enforced without statistics / no RLS | enforced / no RLS "
          "| best of runs: observe / enforced, observe / no RLS |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scale, s in report["scales"].items():
        for name, r in s["statements"].items():
            m = r["median_ms"]
            print(f"| {float(scale):g} ({s['comments']:,}) | {name} | {r['rows']:,} "
                  f"| {m['none']:.2f} | {m['enforced_plain']:.2f} | {m['enforced']:.2f} "
                  f"| {m['observe']:.2f} | **{r['observe_vs_enforced']:.2f}x** "
                  f"| {r['observe_vs_none']:.2f}x | {r['plain_vs_none']:.2f}x "
                  f"| {r['enforced_vs_none']:.2f}x | {r['best_observe_vs_enforced']:.2f}x, "
                  f"{r['best_observe_vs_none']:.2f}x |")
    print()
    for scale, s in report["scales"].items():
        print(f"scale {float(scale):g}: recorder calls {s['recorder_calls']:,} in "
              f"{s['observed_statements']} observed statements "
              f"({s['recorder_calls'] / max(s['observed_statements'], 1):,.1f} per statement;"
              f" other tenants' rows: {s['other_tenant_rows']['comments']:,} comments); load "
              f"{s['load_s']} s, stages prepare..index {s['stages_s']} s")
    worst = max((r["observe_vs_enforced"] for s in report["scales"].values()
                 for r in s["statements"].values()), default=float("nan"))
    print(f"target: observe <= 1.25x enforced on each statement; worst {worst:.2f}x")


if __name__ == "__main__":
    main()
