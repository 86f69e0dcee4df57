"""`plan` at scale: catalog snapshot + discovery + planning of every stage on generated
schemas of 100, 1,000 and 5,000 tables (root, direct tables and chains of derived tables,
each with a primary key, a foreign key and a secondary index), on an embedded server.

`plan_total_s` is what `rls-migrate plan` does in-process (catalog, playbook, planning);
`cli_text_s` is the command itself, end to end, as a user runs it (a new process: imports,
connection, catalog, playbook, planning, the text report on stdout); `init_s` is discovery
plus writing the playbook. The baseline is the catalog read alone, so the JSON shows what planning adds on top of it.
Target (issue [plan]): under 2 s for 1,000 tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from rls_migrate.catalog import Catalog
from rls_migrate.discover import discover
from rls_migrate.init import build_playbook_yaml
from rls_migrate.planner import build_plan
from rls_migrate.playbook import parse_playbook
from rls_migrate.testing import servers

RESULTS = Path(__file__).parent / "results"


def schema_sql(tables: int) -> str:
    """One root, a fifth direct tables, the rest derived chains of depth up to 4."""
    out = ["CREATE TABLE accounts (id bigint PRIMARY KEY, name text);"]
    direct = max(tables // 5, 1)
    for i in range(direct):
        out.append(f"CREATE TABLE d{i} (id bigint PRIMARY KEY, account_id bigint NOT NULL"
                   f" REFERENCES accounts, created_at timestamptz);"
                   f" CREATE INDEX ON d{i} (created_at);")
    for j in range(tables - 1 - direct):
        parent = f"d{j % direct}" if j % 4 == 0 else f"c{j - 1}"
        out.append(f"CREATE TABLE c{j} (id bigint PRIMARY KEY, parent_id bigint REFERENCES"
                   f" {parent}, created_at timestamptz); CREATE INDEX ON c{j} (created_at);")
    return "\n".join(out)


def measure(dsn: str, tables: int, rounds: int = 3) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        lines = schema_sql(tables).splitlines()
        for start in range(0, len(lines), 200):  # one transaction per chunk: lock table size
            conn.execute("\n".join(lines[start:start + 200]).encode())
        conn.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_app')"
                     " THEN CREATE ROLE bench_app; END IF; END $$")
        catalog = Catalog.load(conn)
        t0 = time.perf_counter()
        graph = discover(catalog, "accounts", app_role="bench_app")
        text = build_playbook_yaml(graph, catalog, app_role="bench_app")
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
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "rls_migrate", "plan", str(path), "--dsn",
                               dsn], capture_output=True, text=True, timeout=600, check=False)
        cli_text_s = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"rls-migrate plan failed: {done.stderr[-2000:]}")
    return {"tables": tables, "steps": len(plan.steps), "catalog_queries": catalog.queries_run,
            "catalog_s": min(catalog_s), "plan_total_s": min(plan_s), "cli_text_s": cli_text_s,
            "init_s": init_s,
            "planning_over_catalog": round(min(plan_s) / min(catalog_s), 2)}


def main() -> None:
    backend = servers.find_backends("embedded")[0]
    with servers.start_server(backend) as server:
        rows = []
        sizes = os.environ.get("BENCH_PLAN_SIZES", "100,1000,5000")
        for n in (int(s) for s in sizes.split(",")):
            dbname = f"bench_{n}"
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {dbname}")
            rows.append(measure(server.dsn(dbname), n))
            print(json.dumps(rows[-1]))
        result = {"benchmark": "plan_scale", "postgres": server.major,
                  "python": sys.version.split()[0], "machine": platform.machine(),
                  "results": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "plan_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| tables | steps | catalog queries | catalog s | plan total s (in-process) "
          "| `rls-migrate plan` s (end to end) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tables']} | {r['steps']} | {r['catalog_queries']} | {r['catalog_s']:.3f} |"
              f" {r['plan_total_s']:.3f} | {r['cli_text_s']:.2f} |")


if __name__ == "__main__":
    main()
