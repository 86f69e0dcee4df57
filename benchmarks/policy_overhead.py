"""What a tenant policy costs an OLTP workload: no RLS, observe mode, the enforced policy, and
the patterns the literature warns about, measured in the same run on the same data.

Every variant gets its own copy of the ``items`` table (same rows, same indexes) with its own
policies, so variants can be interleaved transaction by transaction instead of run one after
the other: on a shared 2-core machine, throughput drifts by 10 % and more between identical
runs, and interleaving puts every variant under the same conditions.

Workload (a pgbench custom script run as the application role, prepared statements, the
tenant set per transaction with ``set_config(..., true)``): a point read, a 10-row range read
and a point update, each with the tenant filter the application already has. Variants
(the baseline is ``none``, no RLS at all):

* ``rls_true``: RLS enabled with one policy ``USING (true)``: what row-level security costs
  before any policy does anything, the floor for every variant below;
* ``observe``: the toolkit's observe policy (``col = (SELECT tenant) OR (record(...) IS NOT
  NULL)``) and recorder functions, as ``apply --stage observe`` creates them;
* ``observe_per_row``: the same with the setting read per row (no sub-select);
* ``enforced``: the toolkit's enforced expression ``col = (SELECT <tenant>)`` (an InitPlan:
  the setting is read once per statement);
* ``enforced_per_row``: ``col = NULLIF(current_setting(...), '')::bigint``, per row;
* ``naive_no_nullif``: ``col = current_setting('app.tenant_id')::bigint`` (no NULLIF, no
  missing_ok: it fails in a session without the setting, and on ``''``);
* ``naive_subquery``: a correlated ``EXISTS`` on a membership table.

Three measurements, each repeated over rounds (medians reported):

* **end to end, interleaved**: one pgbench run per round picks a random variant for every
  transaction; ``pgbench -r`` gives each variant's statement latencies, plus the common
  ``BEGIN``/``set_config``/``END``: the per-transaction latency of each variant;
* **end to end, separate runs**: TPS of a pgbench run per variant, the variants in a rotated
  order each round, and each round's ratio to ``none``;
* **server side**: pg_stat_statements ``mean_exec_time`` of each statement during the
  interleaved runs, and a PL/pgSQL loop run as the application role that alternates between
  the variants every 20 queries (no client, no network; the 10th percentile of the batches).

And once, **a big tenant's scan**: where the setting is read per row. Two tenants of
100,000 rows each: a count over one tenant is a sequential scan whatever the policy, so
``enforced_per_row`` reads the setting 200,000 times and ``enforced`` (the InitPlan) once;
compared with no RLS and the application's own ``WHERE tenant_id = 1`` (median of 15).

Targets (issue [observe]): end to end, observe <= 3 % and enforced <= 1 % slower than no RLS;
server side, observe within 10 % of the enforced policy.

Environment: BENCH_BACKEND (embedded | system), BENCH_ROUNDS (5), BENCH_SECONDS (8, the
interleaved run; separate runs take a quarter each), BENCH_CLIENTS (2), BENCH_TENANTS (1000),
BENCH_ROWS (100 per tenant).
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.playbook import parse_playbook
from rls_migrate.stages.common import PlanContext, TenantTable
from rls_migrate.stages.policies import (
    observe_expression,
    recorder,
    recorder_function,
    recorder_signature,
    tenant_match,
)
from rls_migrate.testing import servers

RESULTS = Path(__file__).parent / "results"
APP = "bench_app"
VARIANTS = ("none", "rls_true", "observe", "observe_per_row", "enforced", "enforced_per_row",
            "naive_no_nullif", "naive_subquery")
STATEMENTS = ("point", "range", "update")


def table(variant: str) -> str:
    return f"items_{variant}"


PLAYBOOK = f"""
version: 1
tenant: {{table: public.accounts, key: id, key_type: bigint, column: tenant_id,
          setting: app.tenant_id}}
roles: {{app: {APP}}}
tables:
  public.accounts: {{strategy: root, column: id}}
  public.memberships: {{strategy: global}}
""" + "".join(f"  public.{table(v)}: {{strategy: direct, column: tenant_id}}\n"
              for v in VARIANTS)


def statements(variant: str) -> dict[str, str]:
    name = table(variant)
    return {
        "point": f"SELECT payload FROM {name} WHERE tenant_id = :t AND id = :id;",
        "range": f"SELECT id, payload FROM {name} WHERE tenant_id = :t ORDER BY id DESC LIMIT 10;",
        "update": f"UPDATE {name} SET hits = hits + 1 WHERE tenant_id = :t AND id = :id;",
    }


def script(variants: tuple[str, ...], tenants: int, rows: int) -> str:
    """A pgbench script: one transaction of a random variant among ``variants``."""
    lines = [f"\\set v random(1, {len(variants)})", f"\\set t random(1, {tenants})",
             f"\\set i random(1, {rows})", f"\\set id (:t - 1) * {rows} + :i", "BEGIN;",
             "SELECT set_config('app.tenant_id', :t::text, true),"
             " set_config('app.user_id', :t::text, true);"]
    for n, variant in enumerate(variants, 1):
        if len(variants) > 1:
            lines.append(f"\\{'if' if n == 1 else 'elif'} :v = {n}")
        lines += statements(variant).values()
    if len(variants) > 1:
        lines.append("\\endif")
    lines.append("END;")
    return "\n".join(lines) + "\n"


def setup(dsn: str, tenants: int, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {})"
                             " THEN CREATE ROLE {} LOGIN; END IF; END $$").format(
            sql.Literal(APP), sql.Identifier(APP)))
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("CREATE SCHEMA rls_migrate")
        conn.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, name text)")
        conn.execute("INSERT INTO accounts SELECT g, 'tenant ' || g FROM generate_series(1, %s) g",
                     [tenants])
        conn.execute("CREATE TABLE memberships (user_id bigint, tenant_id bigint,"
                     " PRIMARY KEY (user_id, tenant_id))")
        conn.execute("INSERT INTO memberships SELECT g, g FROM generate_series(1, %s) g",
                     [tenants])
        conn.execute(sql.SQL("GRANT SELECT ON accounts, memberships TO {}").format(
            sql.Identifier(APP)))
        for variant in VARIANTS:
            name = sql.Identifier(table(variant))
            conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, tenant_id bigint NOT"
                                 " NULL, payload text, hits int NOT NULL DEFAULT 0)").format(name))
            conn.execute(sql.SQL("INSERT INTO {} (id, tenant_id, payload) SELECT g,"
                                 " (g - 1) / %s + 1, md5(g::text) FROM generate_series(1, %s) g"
                                 ).format(name), [rows, tenants * rows])
            conn.execute(sql.SQL("CREATE INDEX ON {} (tenant_id, id)").format(name))
            conn.execute(sql.SQL("GRANT SELECT, UPDATE ON {} TO {}").format(
                name, sql.Identifier(APP)))
        conn.execute("VACUUM ANALYZE")
        catalog = Catalog.load(conn)
    ctx = PlanContext(catalog, parse_playbook(PLAYBOOK, "benchmark"))
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        for variant in VARIANTS:
            entry = entry_of(ctx, variant)
            if variant.startswith("observe"):  # the toolkit's own recorders
                for op in ("read", "write"):
                    conn.execute(recorder_function(ctx, entry, op))
                    conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO PUBLIC").format(
                        recorder_signature(ctx, entry, op)))
            for statement in policy_sql(ctx, variant):
                conn.execute(statement)


def entry_of(ctx: PlanContext, variant: str) -> TenantTable:
    entry = ctx.tenant_table(QualifiedName("public", table(variant)))
    assert entry is not None
    return entry


def policy_sql(ctx: PlanContext, variant: str) -> list[sql.Composed]:
    """The policies of a variant, and ENABLE ROW LEVEL SECURITY (nothing for ``none``)."""
    if variant == "none":
        return []
    entry = entry_of(ctx, variant)
    name = sql.Identifier(table(variant))
    app = sql.Identifier(APP)
    per_row = sql.SQL("tenant_id = {}").format(ctx.tenant_value())

    def permissive(expr: sql.Composable) -> list[sql.Composed]:
        return [sql.SQL("CREATE POLICY tenant ON {} FOR ALL TO {} USING ({}) WITH CHECK ({})"
                        ).format(name, app, expr, expr)]

    if variant == "rls_true":
        policies = permissive(sql.SQL("true"))
    elif variant == "enforced":
        policies = permissive(tenant_match(ctx, entry))
    elif variant == "enforced_per_row":
        policies = permissive(per_row)
    elif variant == "naive_no_nullif":
        policies = permissive(sql.SQL("tenant_id = current_setting('app.tenant_id')::bigint"))
    elif variant == "naive_subquery":
        policies = permissive(sql.SQL(
            "EXISTS (SELECT 1 FROM memberships m WHERE m.tenant_id = {}.tenant_id"
            " AND m.user_id = current_setting('app.user_id')::bigint)").format(name))
    else:
        if variant == "observe":
            read, write = (observe_expression(ctx, entry, "read"),
                           observe_expression(ctx, entry, "write"))
        else:
            read, write = (sql.SQL("({}) OR ({}(tenant_id, current_user) IS NOT NULL)").format(
                per_row, recorder(entry, op)) for op in ("read", "write"))
        policies = [
            sql.SQL("CREATE POLICY baseline ON {} AS PERMISSIVE FOR ALL TO PUBLIC USING (true)"
                    " WITH CHECK (true)").format(name),
            sql.SQL("CREATE POLICY tenant ON {} AS RESTRICTIVE FOR ALL TO {} USING ({})"
                    " WITH CHECK ({})").format(name, app, read, write)]
    return [*policies, sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(name)]


def check_results(app_dsn: str) -> dict[str, list[int]]:
    """Before timing anything: every variant returns what it should."""
    out: dict[str, list[int]] = {}
    with psycopg.connect(app_dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT set_config('app.tenant_id', '7', true),"
                     " set_config('app.user_id', '7', true)")
        for variant in VARIANTS:
            row = conn.execute(sql.SQL("SELECT count(*), count(*) FILTER (WHERE tenant_id = 7)"
                                       " FROM {}").format(sql.Identifier(table(variant)))
                               ).fetchone()
            assert row is not None
            out[variant] = [int(row[0]), int(row[1])]
    assert out["none"] == out["rls_true"] == out["observe"] == out["observe_per_row"]
    own = out["none"][1]
    for variant in ("enforced", "enforced_per_row", "naive_no_nullif", "naive_subquery"):
        assert out[variant] == [own, own], (variant, out[variant])
    return out


def pgbench(server: servers.LocalServer, path: Path, clients: int, seconds: float,
            report_latencies: bool = False) -> str:
    args = [str(server.bindir / "pgbench"), "-h", "127.0.0.1", "-p", str(server.port), "-U",
            APP, "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
            "-T", str(max(1, round(seconds))), "-f", str(path)]
    if report_latencies:
        args.append("-r")
    result = subprocess.run([*args, "bench_policy"], capture_output=True, text=True,
                            timeout=seconds * 5 + 60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def tps_of(output: str) -> float:
    match = re.search(r"tps = ([\d.]+) \((?:without initial connection time|excluding)", output)
    if not match:
        raise RuntimeError(f"no tps in pgbench output: {output[-2000:]}")
    return float(match.group(1))


def latencies_of(output: str) -> tuple[float, dict[str, dict[str, float]]]:
    """``pgbench -r``: (common ms per transaction, variant -> statement -> ms)."""
    common = 0.0
    per: dict[str, dict[str, float]] = {v: {} for v in VARIANTS}
    for line in output.splitlines():
        match = re.match(r"\s+([\d.]+)\s+\d+\s+(.*)$", line) or re.match(
            r"\s+([\d.]+)\s+(.*)$", line)
        if not match:
            continue
        ms, command = float(match.group(1)), match.group(2).strip()
        if command.startswith(("BEGIN", "END", "SELECT set_config")):
            common += ms
            continue
        for variant in VARIANTS:
            for name, text in statements(variant).items():
                if command == text.rstrip(";") or command == text:
                    per[variant][name] = ms
    return common, per


def server_means(owner_dsn: str) -> dict[str, dict[str, float]]:
    """Mean server execution time per statement and variant (µs) since the last reset."""
    heads = {"point": "SELECT payload FROM {} ", "range": "SELECT id, payload FROM {} ",
             "update": "UPDATE {} SET "}
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query, mean_exec_time FROM pg_stat_statements WHERE dbid ="
            " (SELECT oid FROM pg_database WHERE datname = current_database())").fetchall()
    out: dict[str, dict[str, float]] = {v: {} for v in VARIANTS}
    for query, mean in rows:
        for variant in VARIANTS:
            for name, head in heads.items():
                if str(query).startswith(head.format(table(variant))):
                    out[variant][name] = float(mean) * 1000
    return out


LOOP_QUERIES = {
    "point": "PERFORM payload FROM {t} WHERE tenant_id = 7 AND id = base + 1 + i % {rows}",
    "range": "PERFORM id, payload FROM {t} WHERE tenant_id = 7 ORDER BY id DESC LIMIT 10",
    # A filter over every row of the tenant: where reading the setting per row adds up.
    "scan": "PERFORM count(*) FROM {t} WHERE tenant_id = 7 AND hits >= 0",
}


def loop_block(rows: int, batches: int, per_batch: int) -> str:
    """A DO block that alternates between the variants every ``per_batch`` queries of each
    kind (the order rotates each batch) and leaves each batch's µs per query in a setting."""
    arms = []
    for n, variant in enumerate(VARIANTS):
        arm = [f"{'IF' if n == 0 else 'ELSIF'} v = {n} THEN"]
        for kind, query in LOOP_QUERIES.items():
            arm += [
                "  t0 := clock_timestamp();",
                f"  FOR i IN 1..{per_batch} LOOP",
                f"    {query.format(t=table(variant), rows=rows)};",
                "  END LOOP;",
                f"  us := extract(epoch FROM clock_timestamp() - t0) * 1e6 / {per_batch};",
                f"  out := jsonb_set(out, ARRAY['{variant}', '{kind}'],"
                f" (out #> ARRAY['{variant}', '{kind}']) || to_jsonb(us));"]
        arms.append("\n".join(arm) + "\n")
    empty = "jsonb_build_object(" + ", ".join(f"'{k}', '[]'::jsonb" for k in LOOP_QUERIES) + ")"
    init = ", ".join(f"'{v}', {empty}" for v in VARIANTS)
    return (
        "DO $$\nDECLARE\n  t0 timestamptz;\n  us float8;\n  v int;\n"
        f"  base bigint := 6 * {rows};\n  out jsonb := jsonb_build_object({init});\n"
        "BEGIN\n"
        "  PERFORM set_config('app.tenant_id', '7', true);\n"
        "  PERFORM set_config('app.user_id', '7', true);\n"
        f"  FOR b IN 1..{batches} LOOP\n"
        f"    FOR j IN 0..{len(VARIANTS) - 1} LOOP\n"
        f"      v := (j + b) % {len(VARIANTS)};\n"
        + "".join(arms) + "      END IF;\n    END LOOP;\n  END LOOP;\n"
        "  PERFORM set_config('bench.loop', out::text, false);\n"
        "END $$")


def loop_us(app_dsn: str, rows: int, batches: int = 150, per_batch: int = 20
            ) -> dict[str, dict[str, float]]:
    """µs per query of each variant and query kind in the interleaved PL/pgSQL loop: the
    10th percentile of the batches. A batch takes a fraction of a millisecond; on a busy
    machine many are stretched by time slices lost to other processes, never shortened, so
    the low percentile is the undisturbed cost and the median is not."""
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        conn.execute(loop_block(rows, batches, per_batch).encode())
        row = conn.execute("SELECT current_setting('bench.loop')").fetchone()
    assert row is not None
    data = json.loads(row[0])
    # The first batch of each variant plans its statements: left out.
    return {v: {k: statistics.quantiles(data[v][k][1:], n=10)[0] for k in LOOP_QUERIES}
            for v in VARIANTS}


def big_tenant_scan(owner_dsn: str, app_dsn: str, repeats: int = 15) -> dict[str, float]:
    """ms per count(*) over a tenant with half the table's rows (a sequential scan)."""
    kinds = {"none": None, "enforced": "(SELECT NULLIF(current_setting('app.tenant_id', true),"
             " '')::bigint)", "enforced_per_row": "NULLIF(current_setting('app.tenant_id', true),"
             " '')::bigint"}
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        for kind, value in kinds.items():
            name = sql.Identifier(f"big_{kind}")
            conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, tenant_id bigint NOT"
                                 " NULL, payload text)").format(name))
            conn.execute(sql.SQL("INSERT INTO {} SELECT g, g % 2 + 1, md5(g::text) FROM"
                                 " generate_series(1, 200000) g").format(name))
            conn.execute(sql.SQL("CREATE INDEX ON {} (tenant_id, id)").format(name))
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(name, sql.Identifier(APP)))
            if value is not None:
                conn.execute(sql.SQL("CREATE POLICY tenant ON {} TO {} USING (tenant_id = {})"
                                     ).format(name, sql.Identifier(APP), sql.SQL(value)))
                conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(name))
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(name))
    times: dict[str, list[float]] = {k: [] for k in kinds}
    with psycopg.connect(app_dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT set_config('app.tenant_id', '1', true)")
        for _ in range(repeats):
            for kind in kinds:
                where = sql.SQL(" WHERE tenant_id = 1" if kind == "none" else "")
                started = time.perf_counter()
                row = conn.execute(sql.SQL("SELECT count(*) FROM {}{}").format(
                    sql.Identifier(f"big_{kind}"), where)).fetchone()
                times[kind].append((time.perf_counter() - started) * 1000)
                assert row == (100000,), (kind, row)
    return {k: round(statistics.median(v), 2) for k, v in times.items()}


def recorder_calls(owner_dsn: str) -> int:
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions"
                           " WHERE schemaname = 'rls_migrate'").fetchone()
    return int(row[0]) if row else 0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def slower(value: float, base: float) -> float:
    """How much slower ``value`` (a time) is than ``base``, in %."""
    return (value / base - 1) * 100


def main() -> None:
    kind = os.environ.get("BENCH_BACKEND", "embedded")
    rounds = int(os.environ.get("BENCH_ROUNDS", 5))
    seconds = float(os.environ.get("BENCH_SECONDS", 8))
    clients = int(os.environ.get("BENCH_CLIENTS", 2))
    tenants = int(os.environ.get("BENCH_TENANTS", 1000))
    rows = int(os.environ.get("BENCH_ROWS", 100))
    backend = servers.find_backends(kind)[0]
    with servers.start_server(backend, settings={"shared_buffers": "'256MB'"}) as server:
        assert isinstance(server, servers.LocalServer)
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_policy")
            version = conn.execute("SHOW server_version").fetchone()
        owner = server.dsn("bench_policy")
        app = server.dsn("bench_policy", user=APP)
        setup(owner, tenants, rows)
        seen = check_results(app)
        big_scan = big_tenant_scan(owner, app)
        workdir = Path(tempfile.mkdtemp(prefix="bench-policy-"))
        workdir.chmod(0o755)
        mixed = workdir / "mixed.sql"
        mixed.write_text(script(VARIANTS, tenants, rows))
        single = {}
        for variant in VARIANTS:
            single[variant] = workdir / f"{variant}.sql"
            single[variant].write_text(script((variant,), tenants, rows))

        txn_ms: dict[str, list[float]] = {v: [] for v in VARIANTS}
        stmt_ms: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
        srv_us: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
        loop: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
        tps: dict[str, list[float]] = {v: [] for v in VARIANTS}
        ratio: dict[str, list[float]] = {v: [] for v in VARIANTS}
        calls_before = recorder_calls(owner)
        started = time.perf_counter()
        for r in range(rounds):
            with psycopg.connect(owner, autocommit=True) as conn:
                conn.execute("SELECT pg_stat_statements_reset()")
            common, per = latencies_of(pgbench(server, mixed, clients, seconds, True))
            for variant in VARIANTS:
                txn_ms[variant].append(common + sum(per[variant].values()))
                for name, ms in per[variant].items():
                    stmt_ms[variant].setdefault(name, []).append(ms)
            for variant, means in server_means(owner).items():
                for name, us in means.items():
                    srv_us[variant].setdefault(name, []).append(us)
            for variant, kinds in loop_us(app, rows).items():
                for name, us in kinds.items():
                    loop[variant].setdefault(name, []).append(us)
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
            this_round = {v: tps_of(pgbench(server, single[v], clients, seconds / 4))
                          for v in order}
            for variant in VARIANTS:
                tps[variant].append(this_round[variant])
                ratio[variant].append(this_round["none"] / this_round[variant])
            print(f"round {r + 1}/{rounds}: transaction ms " + ", ".join(
                f"{v} {txn_ms[v][-1]:.3f}" for v in VARIANTS), flush=True)
        time.sleep(1)  # let the backends' function statistics arrive
        calls_on_correct_traffic = recorder_calls(owner) - calls_before
        elapsed = time.perf_counter() - started
        major = server.major

    base_txn = median(txn_ms["none"])
    summary: dict[str, Any] = {}
    for variant in VARIANTS:
        summary[variant] = {
            "txn_ms": round(median(txn_ms[variant]), 4),
            "txn_slower_pct": round(slower(median(txn_ms[variant]), base_txn), 2),
            "statement_ms": {k: round(median(v), 4) for k, v in stmt_ms[variant].items()},
            "tps_separate_runs": round(median(tps[variant]), 1),
            "tps_slower_pct": round((median(ratio[variant]) - 1) * 100, 2),
            "server_us": {k: round(median(v), 2) for k, v in srv_us[variant].items()},
            "loop_us": {k: round(median(v), 2) for k, v in loop[variant].items()},
            "loop_slower_pct": {k: round(slower(median(v), median(loop["none"][k])), 1)
                                for k, v in loop[variant].items()},
        }

    def server_total(variant: str) -> float:
        return float(sum(summary[variant]["server_us"].values()))

    def loop_oltp(variant: str) -> float:  # the statements of the OLTP workload
        return float(summary[variant]["loop_us"]["point"] + summary[variant]["loop_us"]["range"])

    targets = {
        "observe_end_to_end_pct": summary["observe"]["txn_slower_pct"], "observe_max_pct": 3.0,
        "enforced_end_to_end_pct": summary["enforced"]["txn_slower_pct"],
        "enforced_max_pct": 1.0,
        # Any policy at all costs this much: no expression can bring a variant below it.
        "rls_true_end_to_end_pct": summary["rls_true"]["txn_slower_pct"],
        "observe_vs_enforced_server_pct": round(slower(server_total("observe"),
                                                       server_total("enforced")), 2),
        "observe_vs_enforced_loop_pct": round(slower(loop_oltp("observe"),
                                                     loop_oltp("enforced")), 2),
        "observe_vs_enforced_max_pct": 10.0,
    }
    result = {
        "benchmark": "policy_overhead", "postgres": major,
        "server_version": version[0] if version else None, "python": sys.version.split()[0],
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "scale": {"tenants": tenants, "rows_per_tenant": rows, "rows_per_variant": tenants * rows},
        "clients": clients, "seconds_interleaved": seconds, "seconds_separate": seconds / 4,
        "rounds": rounds, "elapsed_s": round(elapsed, 1),
        "checks": {"count_and_own_rows_seen_by_tenant_7": seen,
                   "recorder_calls_on_correct_traffic": calls_on_correct_traffic},
        "variants": summary, "targets": targets, "big_tenant_scan_ms": big_scan,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "policy_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"PostgreSQL {result['server_version']} ({backend.name}), {tenants} tenants x {rows} "
          f"rows = {tenants * rows:,} rows per variant, pgbench -M prepared -c {clients}, "
          f"{rounds} rounds, medians; load average {result['load_average']:.1f} on "
          f"{os.cpu_count()} cores; recorder calls on correct traffic: "
          f"{calls_on_correct_traffic}")
    print()
    print("| variant | transaction ms (interleaved) | vs no RLS | TPS (separate runs) | vs no RLS "
          "| server µs point / range / update (pg_stat_statements) "
          "| PL/pgSQL µs point / range / 100-row scan | vs no RLS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant in VARIANTS:
        s = summary[variant]
        srv = " / ".join(f"{s['server_us'].get(k, float('nan')):.1f}" for k in STATEMENTS)
        lp = " / ".join(f"{s['loop_us'][k]:.2f}" for k in LOOP_QUERIES)
        lps = " / ".join(f"{s['loop_slower_pct'][k]:+.0f} %" for k in LOOP_QUERIES)
        print(f"| {variant} | {s['txn_ms']:.3f} | {s['txn_slower_pct']:+.1f} % "
              f"| {s['tps_separate_runs']:,.0f} | {s['tps_slower_pct']:+.1f} % | {srv} "
              f"| {lp} | {lps} |")
    print()
    print(f"a big tenant's scan (100,000 of 200,000 rows, sequential): no RLS "
          f"{big_scan['none']:.1f} ms, enforced (InitPlan) {big_scan['enforced']:.1f} ms, "
          f"enforced_per_row {big_scan['enforced_per_row']:.1f} ms")
    print(f"targets: end to end observe {targets['observe_end_to_end_pct']:+.1f} % (<= 3 %), "
          f"enforced {targets['enforced_end_to_end_pct']:+.1f} % (<= 1 %), with RLS itself (USING "
          f"(true)) at {targets['rls_true_end_to_end_pct']:+.1f} %; server side observe "
          f"vs enforced {targets['observe_vs_enforced_server_pct']:+.1f} % (pg_stat_statements),"
          f" {targets['observe_vs_enforced_loop_pct']:+.1f} % (loop) (<= 10 %)")


if __name__ == "__main__":
    main()
