"""backfill: fill the tenant column of derived tables in short keyset batches.

Parents before children, so each batch is one join with the parent. Each batch is its own
transaction and writes its checkpoint in that same transaction: a run killed at any point
resumes after the last committed batch and never applies a batch twice. The loop is bounded
by the largest key present when the table's backfill starts (later rows are filled by the
sync trigger), so it ends even under a heavy insert load. Batch size adapts to a target
duration (default 200 ms).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from rls_migrate.catalog import QualifiedName
from rls_migrate.errors import PlaybookError, StepFailed
from rls_migrate.playbook import Options
from rls_migrate.stages.common import (
    TOOLKIT_SCHEMA,
    PlanContext,
    TenantTable,
    regclass_text,
    rows_estimate,
    triggers_firing_on_update,
)
from rls_migrate.steps import BackfillSpec, Lock, Query, StagePlan, Step

SAMPLE_SIZE = 10


def _key_expr(columns: Sequence[str], alias: str) -> sql.Composable:
    parts = [sql.Identifier(alias, c) for c in columns]
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("({})").format(sql.SQL(", ").join(parts))


def _params(types: Sequence[str]) -> sql.Composable:
    parts = [sql.SQL("%s::{}").format(sql.SQL(t)) for t in types]
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("({})").format(sql.SQL(", ").join(parts))


def _key_text(columns: Sequence[str], alias: str) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(alias, c))
                              for c in columns)


def build_spec(ctx: PlanContext, entry: TenantTable) -> BackfillSpec:
    assert entry.parent is not None and entry.parent_column is not None
    table = entry.table
    t = entry.ident
    col = sql.Identifier(entry.column)
    parent = entry.parent.qname.ident
    match = sql.SQL(" AND ").join(
        sql.SQL("p.{} = c.{}").format(sql.Identifier(r), sql.Identifier(c))
        for c, r in zip(entry.parent.columns, entry.parent.ref_columns, strict=True))
    fill = sql.SQL("UPDATE {t} AS c SET {col} = p.{pcol} FROM {parent} AS p WHERE {match}").format(
        t=t, col=col, pcol=sql.Identifier(entry.parent_column), parent=parent, match=match)
    no_parent = sql.SQL("NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE {match})").format(
        parent=parent, match=match)
    ahead: Query
    first_ahead: Query
    max_key: Query
    sample_key: Query
    batch: Query
    first: Query
    if table.primary_key:
        keys = table.primary_key
        types = [table.column(k).type for k in keys]  # type: ignore[union-attr]
        kc = _key_expr(keys, "c")
        lo, hi = _params(types), _params(types)
        order = sql.SQL(", ").join(sql.Identifier("c", k) for k in keys)
        batch = sql.SQL("{fill} AND {kc} > {lo} AND {kc} <= {hi} AND c.{col} IS NULL").format(
            fill=fill, kc=kc, lo=lo, hi=hi, col=col)
        first = sql.SQL("{fill} AND {kc} <= {hi} AND c.{col} IS NULL").format(
            fill=fill, kc=kc, hi=hi, col=col)
        ahead = sql.SQL(
            "SELECT {txt} FROM {t} AS c WHERE {kc} > {lo} AND {kc} <= {mx}"
            " ORDER BY {order} OFFSET %s LIMIT 1").format(
            txt=_key_text(keys, "c"), t=t, kc=kc, lo=lo, mx=_params(types), order=order)
        first_ahead = sql.SQL(
            "SELECT {txt} FROM {t} AS c WHERE {kc} <= {mx} ORDER BY {order} OFFSET %s LIMIT 1"
        ).format(txt=_key_text(keys, "c"), t=t, kc=kc, mx=_params(types), order=order)
        max_key = sql.SQL("SELECT {txt} FROM {t} AS c ORDER BY {desc} LIMIT 1").format(
            txt=_key_text(keys, "c"), t=t,
            desc=sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier("c", k))
                                    for k in keys))
        sample_key = sql.SQL("concat_ws(',', {})").format(_key_text(keys, "c"))
        uses_ctid = False
    else:
        if table.is_partitioned:
            raise PlaybookError(f"{entry.qname}: a partitioned table without a primary key "
                                "cannot be backfilled in batches; add a primary key first")
        keys = ("ctid",)
        ctid = sql.SQL("c.ctid")

        batch = sql.SQL("{fill} AND {ctid} >= %s::tid AND {ctid} < %s::tid AND c.{col} IS NULL"
                        ).format(fill=fill, ctid=ctid, col=col)
        first = batch
        # ctid batches count pages: the "key ahead" is simply lo + n pages.
        ahead = sql.SQL("SELECT (%s::bigint + %s::bigint)::text")
        first_ahead = sql.SQL("SELECT %s::bigint::text")
        max_key = sql.SQL(
            "SELECT (pg_relation_size({reg}) / current_setting('block_size')::bigint + 1)::text"
        ).format(reg=sql.Literal(regclass_text(entry.qname)))
        sample_key = sql.SQL("c.ctid::text")
        uses_ctid = True
    remaining = sql.SQL("SELECT count(*) FROM {t} AS c WHERE c.{col} IS NULL").format(t=t, col=col)
    orphans = sql.SQL(
        "SELECT count(*), (array_agg({key}))[1:{n}] FROM {t} AS c WHERE c.{col} IS NULL"
        " AND {no_parent}").format(key=sample_key, n=sql.Literal(SAMPLE_SIZE), t=t, col=col,
                                   no_parent=no_parent)
    conflicts = sql.SQL(
        "SELECT count(*), (array_agg({key}))[1:{n}] FROM {t} AS c JOIN {parent} AS p ON {match}"
        " WHERE c.{col} IS DISTINCT FROM p.{pcol}").format(
        key=sample_key, n=sql.Literal(SAMPLE_SIZE), t=t, parent=parent, match=match, col=col,
        pcol=sql.Identifier(entry.parent_column))
    return BackfillSpec(
        table=entry.qname, key_columns=tuple(keys), uses_ctid=uses_ctid, column=entry.column,
        parent=entry.parent.qname, batch_sql=batch, first_batch_sql=first, next_key_sql=ahead,
        first_next_key_sql=first_ahead, max_key_sql=max_key, remaining_sql=remaining,
        single_statement_sql=sql.SQL("{} AND c.{} IS NULL").format(fill, col),
        orphans_sql=orphans, conflicts_sql=conflicts)


def plan(ctx: PlanContext) -> StagePlan:
    steps: list[Step] = []
    notes: list[str] = []
    for entry in ctx.tenant_tables:
        if not entry.added:
            continue
        spec = build_spec(ctx, entry)
        risks: list[str] = []
        fired = triggers_firing_on_update(entry.table, entry.column)
        if fired and ctx.playbook.options.backfill.user_triggers == "fire":
            risks.append(f"user trigger(s) {', '.join(fired)} fire once per backfilled row "
                         "(e.g. updated_at changes)")
        elif fired:
            risks.append(f"user trigger(s) {', '.join(fired)} are skipped by the backfill "
                         "(session_replication_role = replica in each batch: needs a superuser "
                         "or, on PostgreSQL 15+, GRANT SET ON PARAMETER session_replication_role)")
        if entry.table.publications:
            risks.append(f"publication(s) {', '.join(entry.table.publications)}: logical "
                         "replication consumers see every backfilled row as an UPDATE")
        if spec.uses_ctid:
            risks.append("no primary key: batches walk physical pages (ctid ranges)")
        if entry.strategy == "hint":
            risks.append("no foreign key backs the parent link (hint): rows whose parent is "
                         "gone cannot get a tenant (orphans)")
        est = rows_estimate(entry.table)
        wal = entry.table.size_bytes
        if wal:
            risks.append(f"about {wal // 1_000_000 or 1} MB of WAL (every row is rewritten once)")
        steps.append(Step(
            id=f"backfill:{entry.qname}",
            stage="backfill",
            kind="backfill",
            table=entry.qname,
            description=f"fill {entry.column} from {entry.parent.qname if entry.parent else ''} in "
                        f"keyset batches of ~{ctx.playbook.options.backfill.batch_target:.0f} ms "
                        f"on ({', '.join(spec.key_columns)})",
            statements=(spec.batch_sql,),
            lock=Lock.ROW_EXCLUSIVE,
            done_check=sql.SQL("SELECT NOT EXISTS ({})").format(sql.SQL(
                "SELECT 1 FROM {} AS c WHERE c.{} IS NULL").format(
                    entry.ident, sql.Identifier(entry.column))),
            estimate=est,
            risks=tuple(risks),
            why="each batch is its own short transaction: row locks last milliseconds",
            backfill=spec,
        ))
    if not steps:
        notes.append("nothing to backfill")
    return StagePlan("backfill", tuple(steps), tuple(notes))


# --------------------------------------------------------------------------- running


@dataclasses.dataclass
class BackfillResult:
    table: QualifiedName
    rows: int = 0
    batches: int = 0
    resumed: bool = False
    batch_ms: list[float] = dataclasses.field(default_factory=list)
    orphans: int = 0
    orphan_sample: list[str] = dataclasses.field(default_factory=list)
    conflicts: int = 0
    conflict_sample: list[str] = dataclasses.field(default_factory=list)


ProgressCallback = Callable[[QualifiedName, int, int], None]


def _checkpoint_table(name: str) -> sql.Identifier:
    return sql.Identifier(TOOLKIT_SCHEMA, name)


def _replica_lag_ms(conn: psycopg.Connection[Any]) -> float:
    row = conn.execute(
        "SELECT COALESCE(max(EXTRACT(epoch FROM replay_lag)) * 1000, 0)::float8"
        " FROM pg_stat_replication").fetchone()
    return float(row[0]) if row else 0.0


def _wraparound_vacuum(conn: psycopg.Connection[Any], qname: QualifiedName) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_progress_vacuum v JOIN pg_stat_activity a"
        " USING (pid) WHERE v.relid = %s::regclass AND a.query LIKE %s)",
        [regclass_text(qname), "%to prevent wraparound%"]).fetchone()
    return bool(row and row[0])


def run_backfill(
    conn: psycopg.Connection[Any],
    spec: BackfillSpec,
    options: Options,
    *,
    log: Callable[..., None] | None = None,
    progress: ProgressCallback | None = None,
    sleep: Callable[[float], None] = time.sleep,
    total_estimate: int = 0,
) -> BackfillResult:
    """Run (or resume) the backfill of one table. ``conn`` must be in autocommit mode: each
    batch opens its own transaction."""
    opts = options.backfill
    result = BackfillResult(spec.table)
    say = log or (lambda *a, **k: None)
    name = str(spec.table)
    ckpt = conn.execute(
        sql.SQL("SELECT last_key, max_key, rows_done, batches, finished FROM {}"
                " WHERE table_name = %s").format(_checkpoint_table("backfill_checkpoint")),
        [name]).fetchone()
    if ckpt is None:
        row = conn.execute(spec.max_key_sql).fetchone()
        max_key: list[str] | None = list(row) if row else None
        conn.execute(
            sql.SQL("INSERT INTO {} (table_name, last_key, max_key, rows_done, batches, finished,"
                    " updated_at) VALUES (%s, NULL, %s, 0, 0, %s, now())"
                    " ON CONFLICT (table_name) DO NOTHING").format(
                _checkpoint_table("backfill_checkpoint")),
            [name, json.dumps(max_key), max_key is None])
        last_key: list[str] | None = None
        finished = max_key is None
    else:
        last_key = ckpt[0]
        max_key = ckpt[1]
        result.rows, result.batches = int(ckpt[2]), int(ckpt[3])
        finished = bool(ckpt[4])
        result.resumed = True
        say("backfill resuming", table=name, batches=result.batches, rows=result.rows)
    size = opts.batch_start_rows if not spec.uses_ctid else max(opts.batch_start_rows // 50, 1)
    max_size = opts.batch_max_rows if not spec.uses_ctid else max(opts.batch_max_rows // 20, 1)
    min_size = opts.batch_min_rows if not spec.uses_ctid else 1
    batch_timeout_ms = max(options.ddl_statement_timeout, opts.batch_target * 25)
    while not finished and max_key is not None:
        _wait_until_safe(conn, spec.table, options, say, sleep)
        # Where this batch ends: ``size`` keys ahead, or the bound taken at the start.
        if spec.uses_ctid:
            lo_page = int(last_key[0]) if last_key else 0
            hi_page = min(lo_page + size, int(max_key[0]))
            hi: list[str] = [str(hi_page)]
            last = hi_page >= int(max_key[0])
            params: list[object] = [f"({lo_page},0)", f"({hi_page},0)"]
            statement = spec.batch_sql
        else:
            if last_key is None:
                row = conn.execute(spec.first_next_key_sql, [*max_key, size - 1]).fetchone()
            else:
                row = conn.execute(spec.next_key_sql, [*last_key, *max_key, size - 1]).fetchone()
            if row is None:
                hi, last = list(max_key), True
            else:
                hi, last = list(row), list(row) == list(max_key)
            if last_key is None:
                params, statement = [*hi], spec.first_batch_sql
            else:
                params, statement = [*last_key, *hi], spec.batch_sql
        rows, elapsed_ms = _run_batch(conn, spec, statement, params, result.batches + 1,
                                      last_key, hi, last, options, batch_timeout_ms, say, sleep)
        result.rows += rows
        result.batches += 1
        result.batch_ms.append(elapsed_ms)
        last_key = hi
        finished = last
        if progress:
            progress(spec.table, result.rows, total_estimate)
        if elapsed_ms > 0:
            factor = min(max(opts.batch_target / elapsed_ms, 0.5), 2.0)
            size = int(min(max(size * factor, min_size), max_size))
        if opts.pause and not finished:
            sleep(opts.pause / 1000)
    _inspect(conn, spec, result)
    if result.orphans:
        _record_anomaly(conn, name, "orphan", result.orphans, result.orphan_sample)
    if result.conflicts:
        _record_anomaly(conn, name, "conflict", result.conflicts, result.conflict_sample)
    if result.orphans and opts.orphans == "stop":
        raise StepFailed(
            f"backfill of {spec.table}: {result.orphans} row(s) have no parent in {spec.parent}, "
            f"so no tenant (sample keys: {', '.join(result.orphan_sample)}). Fix or delete them, "
            "or set options.backfill.orphans: skip to leave them empty (they become invisible "
            "to every tenant once policies are enforced, and constrain skips NOT NULL)")
    return result


def _wait_until_safe(
    conn: psycopg.Connection[Any],
    table: QualifiedName,
    options: Options,
    say: Callable[..., None],
    sleep: Callable[[float], None],
) -> None:
    bound = options.backfill.max_replica_lag
    waited = 0.0
    while True:
        reasons = []
        if bound is not None:
            lag = _replica_lag_ms(conn)
            if lag > bound:
                reasons.append(f"replica replay lag {lag:.0f} ms > {bound:.0f} ms")
        if _wraparound_vacuum(conn, table):
            reasons.append("an anti-wraparound autovacuum is running on the table")
        if not reasons:
            return
        if waited == 0.0:
            say("backfill paused", table=str(table), reasons=reasons)
        sleep(0.5)
        waited += 0.5


def _run_batch(
    conn: psycopg.Connection[Any],
    spec: BackfillSpec,
    statement: Query,
    params: list[object],
    batch_no: int,
    lo: list[str] | None,
    hi: list[str],
    last: bool,
    options: Options,
    timeout_ms: float,
    say: Callable[..., None],
    sleep: Callable[[float], None],
) -> tuple[int, float]:
    """One batch, its batch record and its checkpoint, in one transaction; retried on lock
    timeouts with jittered backoff (the timeouts are set again on every attempt)."""
    import random

    name = str(spec.table)
    for attempt in range(options.retries + 1):
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true),"
                             " set_config('statement_timeout', %s, true)",
                             [f"{int(options.lock_timeout)}ms", f"{int(timeout_ms)}ms"])
                if options.backfill.user_triggers == "skip":
                    # User triggers (updated_at!) must not see the backfill as a change.
                    _skip_user_triggers(conn, spec)
                started = time.perf_counter()
                cur = conn.execute(statement, params)
                rows = cur.rowcount
                elapsed_ms = (time.perf_counter() - started) * 1000
                conn.execute(
                    sql.SQL("INSERT INTO {} (table_name, batch_no, lo, hi, rows, duration_ms, at)"
                            " VALUES (%s, %s, %s, %s, %s, %s, now())").format(
                        _checkpoint_table("backfill_batches")),
                    [name, batch_no, json.dumps(lo), json.dumps(hi), rows, elapsed_ms])
                conn.execute(
                    sql.SQL("UPDATE {} SET last_key = %s, rows_done = rows_done + %s,"
                            " batches = %s, finished = %s, updated_at = now()"
                            " WHERE table_name = %s").format(
                        _checkpoint_table("backfill_checkpoint")),
                    [json.dumps(hi), rows, batch_no, last, name])
            return rows, elapsed_ms
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected,
                psycopg.errors.QueryCanceled) as exc:
            if attempt >= options.retries:
                raise StepFailed(
                    f"backfill of {spec.table}: batch {batch_no} could not get its row locks "
                    f"within lock_timeout after {attempt + 1} attempts ({type(exc).__name__})"
                ) from None
            delay = min(options.backoff_initial * 2 ** attempt, options.backoff_max)
            say("backfill batch retry", table=name, batch=batch_no, attempt=attempt + 1,
                error=type(exc).__name__)
            sleep(random.uniform(0, delay) / 1000)
    raise AssertionError("unreachable")


def _skip_user_triggers(conn: psycopg.Connection[Any], spec: BackfillSpec) -> None:
    try:
        conn.execute("SELECT set_config('session_replication_role', 'replica', true)")
    except psycopg.errors.InsufficientPrivilege:
        raise StepFailed(
            f"backfill of {spec.table}: skipping user triggers needs the right to set "
            "session_replication_role (a superuser, or on PostgreSQL 15+ "
            "GRANT SET ON PARAMETER session_replication_role TO <migration role>); or set "
            "options.backfill.user_triggers: fire to let them run (updated_at columns change)"
        ) from None


def _inspect(conn: psycopg.Connection[Any], spec: BackfillSpec, result: BackfillResult) -> None:
    if spec.orphans_sql is not None:
        row = conn.execute(spec.orphans_sql).fetchone()
        if row:
            result.orphans = int(row[0])
            result.orphan_sample = [str(k) for k in (row[1] or [])]
    if spec.conflicts_sql is not None:
        row = conn.execute(spec.conflicts_sql).fetchone()
        if row:
            result.conflicts = int(row[0])
            result.conflict_sample = [str(k) for k in (row[1] or [])]


def _record_anomaly(
    conn: psycopg.Connection[Any], table: str, kind: str, count: int, sample: list[str]
) -> None:
    conn.execute(
        sql.SQL("INSERT INTO {} (table_name, kind, count, sample, found_at)"
                " VALUES (%s, %s, %s, %s, now()) ON CONFLICT (table_name, kind) DO UPDATE"
                " SET count = EXCLUDED.count, sample = EXCLUDED.sample,"
                " found_at = EXCLUDED.found_at").format(_checkpoint_table("anomalies")),
        [table, kind, count, json.dumps(sample)])


