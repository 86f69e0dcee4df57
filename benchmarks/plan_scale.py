"""`plan` at scale: catalog snapshot + discovery + planning of every stage on generated
schemas of 100, 1,000 and 5,000 tables (root, direct tables and chains of derived tables,
each with a primary key, a foreign key and a secondary index), on an embedded server.

Then the derived-heavy schema of issue 18 (one root, 49 direct tables, 950 tables reaching
the root through chains of foreign keys) on every local major: `rls-migrate plan` end to end
in each format (text, markdown, json, sql), the median and the slowest of a few runs, and the
size of what it writes. Target: every format under 2 s.

Knobs: ``BENCH_PLAN_SIZES`` (default ``100,1000,5000``; empty: the derived-heavy schema
alone, the other rows kept), ``BENCH_PLAN_BACKENDS`` (default ``embedded,system``),
``BENCH_PLAN_BASELINE`` (a git revision, e.g. ``main``: also run that revision's code in the
same rounds, alternating, and say whether its output is byte-identical).

`plan_total_s` is what `rls-migrate plan` does in-process (catalog, playbook, planning);
`cli_text_s` is the command itself, end to end, as a user runs it (a new process: imports,
connection, catalog, playbook, planning, the text report on stdout); `init_s` is discovery
plus writing the playbook. The baseline is the catalog read alone, so the JSON shows what planning adds on top of it.
Target (issue [plan]): under 2 s for 1,000 tables."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from rls_migrate.catalog import Catalog
from rls_migrate.discover import discover
from rls_migrate.init import build_playbook_yaml
from rls_migrate.planner import build_plan
from rls_migrate.playbook import parse_playbook
from rls_migrate.testing import servers

RESULTS = Path(__file__).parent / "results"


FORMATS = ("text", "markdown", "json", "sql")
DERIVED_HEAVY = (1000, 49)
"""Tables and direct tables of the derived-heavy schema (the rest are derived)."""


def schema_sql(tables: int, direct: int | None = None) -> str:
    """One root, ``direct`` direct tables (default: a fifth), the rest derived chains of depth
    up to 4."""
    out = ["CREATE TABLE accounts (id bigint PRIMARY KEY, name text);"]
    direct = max(tables // 5, 1) if direct is None else direct
    for i in range(direct):
        out.append(f"CREATE TABLE d{i} (id bigint PRIMARY KEY, account_id bigint NOT NULL"
                   f" REFERENCES accounts, created_at timestamptz);"
                   f" CREATE INDEX ON d{i} (created_at);")
    for j in range(tables - 1 - direct):
        parent = f"d{j % direct}" if j % 4 == 0 else f"c{j - 1}"
        out.append(f"CREATE TABLE c{j} (id bigint PRIMARY KEY, parent_id bigint REFERENCES"
                   f" {parent}, created_at timestamptz); CREATE INDEX ON c{j} (created_at);")
    return "\n".join(out)


def create_schema(conn: psycopg.Connection[Any], tables: int, direct: int | None = None) -> None:
    lines = schema_sql(tables, direct).splitlines()
    for start in range(0, len(lines), 200):  # one transaction per chunk: lock table size
        conn.execute("\n".join(lines[start:start + 200]).encode())
    conn.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_app')"
                 " THEN CREATE ROLE bench_app; END IF; END $$")


def playbook_text(catalog: Catalog) -> str:
    graph = discover(catalog, "accounts", app_role="bench_app")
    return build_playbook_yaml(graph, catalog, app_role="bench_app")


def run_plan(dsn: str, playbook: Path, fmt: str, *options: str,
             source: Path | None = None) -> tuple[float, float, int, str]:
    """``rls-migrate plan`` as a user runs it: seconds from process start to exit, the CPU
    seconds the process used (user + system: what a busy machine does not inflate as much),
    the bytes it wrote on stdout and their digest. ``source``: run the rls_migrate found
    there instead (the baseline)."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rls_migrate", "plan", str(playbook), "--dsn",
                           dsn, "--format", fmt, *options], capture_output=True, timeout=600,
                          check=False, env=env, cwd=playbook.parent)  # not the checkout's
                          # directory: `-m` would import rls_migrate from there first
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"rls-migrate plan failed: {done.stderr[-2000:]!r}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, len(done.stdout), hashlib.sha256(done.stdout).hexdigest()


def baseline_source(into: Path) -> Path | None:
    """``BENCH_PLAN_BASELINE`` (a git revision, e.g. ``main``): that revision's code, run in
    the same rounds as this one (alternating, so both see the same machine)."""
    ref = os.environ.get("BENCH_PLAN_BASELINE")
    if not ref:
        return None
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", ref, "rls_migrate"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def measure(dsn: str, tables: int, rounds: int = 3) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_schema(conn, tables)
        catalog = Catalog.load(conn)
        t0 = time.perf_counter()
        text = playbook_text(catalog)
        init_s = time.perf_counter() - t0
        catalog_s, plan_s = [], []
        for _ in range(rounds):
            # What `rls-migrate plan` does: read the catalog, read the playbook, plan.
            t0 = time.perf_counter()
            catalog = Catalog.load(conn)
            t1 = time.perf_counter()
            plan = build_plan(catalog, parse_playbook(text))
            t2 = time.perf_counter()
            catalog_s.append(t1 - t0)
            plan_s.append(t2 - t0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "app.yaml"
        path.write_text(text)
        cli_text_s = run_plan(dsn, path, "text")[0]
    return {"tables": tables, "steps": len(plan.steps), "catalog_queries": catalog.queries_run,
            "catalog_s": min(catalog_s), "plan_total_s": min(plan_s), "cli_text_s": cli_text_s,
            "init_s": init_s,
            "planning_over_catalog": round(min(plan_s) / min(catalog_s), 2)}


def _summary(runs: list[tuple[float, float, int, str]]) -> dict[str, Any]:
    seconds = sorted(r[0] for r in runs)
    return {"median_s": round(statistics.median(seconds), 3), "max_s": round(seconds[-1], 3),
            "cpu_median_s": round(statistics.median(r[1] for r in runs), 3),
            "bytes": runs[0][2]}


def measure_formats(dsn: str, rounds: int = 3) -> dict[str, Any]:
    """The derived-heavy schema: every format end to end, ``rounds`` times each; the floor
    (``--stage prepare --no-preflight``: interpreter, imports, connection, catalog, almost no
    planning) and, with ``BENCH_PLAN_BASELINE``, the baseline revision in the same rounds."""
    tables, direct = DERIVED_HEAVY
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_schema(conn, tables, direct)
        text = playbook_text(Catalog.load(conn))
    out: dict[str, Any] = {"tables": tables, "direct": direct,
                           "derived": tables - 1 - direct, "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "app.yaml"
        path.write_text(text)
        base_dir = Path(tmp) / "baseline"
        base_dir.mkdir()
        baseline = baseline_source(base_dir)
        run_plan(dsn, path, "text")  # warm the server's and the OS's caches
        out["floor"] = _summary([run_plan(dsn, path, "text", "--stage", "prepare",
                                          "--no-preflight") for _ in range(rounds)])
        for fmt in FORMATS:
            runs, base_runs = [], []
            for _ in range(rounds):
                runs.append(run_plan(dsn, path, fmt))
                if baseline is not None:
                    base_runs.append(run_plan(dsn, path, fmt, source=baseline))
            out[fmt] = _summary(runs)
            if base_runs:
                base = _summary(base_runs)
                out[fmt]["baseline"] = {
                    "revision": os.environ["BENCH_PLAN_BASELINE"], **base,
                    "same_output": base_runs[0][3] == runs[0][3],
                    "speedup_wall": round(base["median_s"] / out[fmt]["median_s"], 2),
                    "speedup_cpu": round(base["cpu_median_s"] / out[fmt]["cpu_median_s"], 2)}
    out["load_after"] = os.getloadavg()[0]
    return out


def derived_heavy() -> list[dict[str, Any]]:
    """The derived-heavy schema on every local major (embedded and system servers)."""
    rows = []
    kinds = os.environ.get("BENCH_PLAN_BACKENDS", "embedded,system")
    for backend in servers.find_backends(kinds):
        with servers.start_server(backend) as server:
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench_derived")
            row = {"postgres": server.major,
                   **measure_formats(server.dsn("bench_derived"))}
            print(json.dumps(row))
            rows.append(row)
    return rows


def main() -> None:
    backend = servers.find_backends("embedded")[0]
    with servers.start_server(backend) as server:
        rows = []
        # BENCH_PLAN_SIZES= (empty) measures the derived-heavy schema alone and keeps the
        # previous results of the other sizes.
        sizes = os.environ.get("BENCH_PLAN_SIZES", "100,1000,5000")
        if not sizes and (RESULTS / "plan_scale.json").exists():
            rows = json.loads((RESULTS / "plan_scale.json").read_text())["results"]
        for n in (int(s) for s in sizes.split(",") if s):
            dbname = f"bench_{n}"
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {dbname}")
            rows.append(measure(server.dsn(dbname), n))
            print(json.dumps(rows[-1]))
        result: dict[str, Any] = {
            "benchmark": "plan_scale", "postgres": server.major,
            "python": sys.version.split()[0], "machine": platform.machine(),
            "cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "results": rows}
    result["derived_heavy"] = heavy = derived_heavy()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "plan_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| tables | steps | catalog queries | catalog s | plan total s (in-process) "
          "| `rls-migrate plan` s (end to end) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tables']} | {r['steps']} | {r['catalog_queries']} | {r['catalog_s']:.3f} |"
              f" {r['plan_total_s']:.3f} | {r['cli_text_s']:.2f} |")
    print()
    print("Derived-heavy, 1,000 tables (1 root, 49 direct, 950 derived): `rls-migrate plan`"
          " end to end, median (slowest) of 3, CPU seconds, output size")
    print()
    print("| PostgreSQL | " + " | ".join(FORMATS) + " |")
    print("|---" * (len(FORMATS) + 1) + "|")
    for h in heavy:
        print(f"| {h['postgres']} | " + " | ".join(
            f"{h[f]['median_s']:.2f} s ({h[f]['max_s']:.2f}), cpu {h[f]['cpu_median_s']:.2f} s,"
            f" {h[f]['bytes'] / 1e6:.1f} MB"
            for f in FORMATS) + " |")
        if all("baseline" in h[f] for f in FORMATS):
            b = {f: h[f]["baseline"] for f in FORMATS}
            print(f"| {h['postgres']}, baseline {b['text']['revision']} | " + " | ".join(
                f"{b[f]['median_s']:.2f} s, cpu {b[f]['cpu_median_s']:.2f} s"
                f" ({'same output' if b[f]['same_output'] else 'OUTPUT DIFFERS'})"
                for f in FORMATS) + " |")
        print(f"\nFloor (`--stage prepare --no-preflight`: interpreter, imports, connection,"
              f" catalog): {h['floor']['median_s']:.2f} s, cpu {h['floor']['cpu_median_s']:.2f}"
              f" s; load average {h['load_before']:.1f} before, {h['load_after']:.1f} after")


if __name__ == "__main__":
    main()
