"""How a batch finds its end on a one-column integer key, on every major.

Where the keys are dense the batch ends ``size`` keys on (``lo + size``) without asking the
index; a gap or a sparse stretch hands the next batch back to the index, which counts
``size`` rows ahead and so also jumps the gap. The walk stays clean (consecutive ranges, the
rows counted are the rows filled) over dense keys, a gap of a million keys, a stretch with
one key in ten, and negative keys.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from test_backfill_resume import check_batches

from rls_migrate.catalog import Catalog
from rls_migrate.executor import Executor
from rls_migrate.journal import Journal
from rls_migrate.planner import build_plan
from rls_migrate.playbook import Playbook, parse_playbook
from rls_migrate.runner import apply_stage
from rls_migrate.stages.backfill_runner import _batch_end, _dense, run_backfill
from rls_migrate.steps import Step

APP_ROLE = "rlsm_keys_app"
PLAYBOOK = f"""
tenant: {{table: public.tenants}}
roles: {{app: {APP_ROLE}}}
options:
  backfill: {{batch_start_rows: 400, batch_min_rows: 400, batch_max_rows: 400}}
tables:
  public.tenants: {{strategy: root, column: id}}
  public.docs: {{strategy: direct, column: tenant_id}}
  public.notes:
    strategy: derive
    parent: {{table: public.docs, columns: [doc_id], ref_columns: [id]}}
"""
# (first key, last key, step): dense, after a gap of a million keys, one key in ten, and
# negative keys before all of them.
STRETCHES = ((-1_500, -1, 1), (1, 3_000, 1), (1_000_001, 1_002_000, 1),
             (2_000_000, 2_004_000, 10))


def build(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(
                sql.Identifier(APP_ROLE)))
        except psycopg.errors.DuplicateObject:
            pass  # roles are cluster-wide: an earlier test made it
        conn.execute("CREATE TABLE tenants (id bigint PRIMARY KEY)")
        conn.execute("CREATE TABLE docs (id integer PRIMARY KEY,"
                     " tenant_id bigint NOT NULL REFERENCES tenants)")
        conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY,"
                     " doc_id integer NOT NULL REFERENCES docs, body text)")
        conn.execute("INSERT INTO tenants SELECT g FROM generate_series(1, 7) g")
        conn.execute("INSERT INTO docs SELECT g, 1 + g % 7 FROM generate_series(1, 500) g")
        for first, last, step in STRETCHES:
            conn.execute("INSERT INTO notes SELECT g, 1 + abs(g) %% 500, 'note ' || g"
                         " FROM generate_series(%s::bigint, %s, %s) g", [first, last, step])
        conn.execute("ANALYZE")
        count = conn.execute("SELECT count(*) FROM notes").fetchone()
        assert count is not None
        return int(count[0])


def notes_step(dsn: str, playbook: Playbook) -> Step:
    with psycopg.connect(dsn) as conn:
        plan = build_plan(Catalog.load(conn), playbook, ["backfill"])
    return next(s for s in plan.stage("backfill") if s.id == "backfill:public.notes")


def test_integer_keys_end_batches_by_arithmetic_where_dense(empty_db: str) -> None:
    rows = build(empty_db)
    playbook = parse_playbook(PLAYBOOK)
    for stage in ("prepare", "add-column"):
        apply_stage(empty_db, playbook, stage)
    step = notes_step(empty_db, playbook)
    spec = step.backfill
    assert spec is not None and spec.integer_key

    with psycopg.connect(empty_db, autocommit=True) as conn, conn.cursor() as cur:
        top = ["2004000"]
        # Dense: the end is added, the index is not asked.
        assert _batch_end(cur, spec, ["100"], top, 300, dense=True) == (["400"], False, None)
        # Sparse (one key in ten): the index counts 300 rows ahead, 3,000 keys.
        assert _batch_end(cur, spec, ["2000000"], top, 300, dense=False) == (
            ["2003000"], False, 300)
        # Never past the pass's bound.
        assert _batch_end(cur, spec, ["2003990"], top, 300, dense=True) == (top, True, None)
        assert _dense(spec, ["100"], ["400"], 300) and not _dense(spec, ["0"], ["300"], 30)
        assert not _dense(spec, None, ["400"], 400)

    with psycopg.connect(empty_db, autocommit=True) as conn:
        result = run_backfill(Executor(conn, playbook.options, Journal(conn)), step)
        batches = conn.execute(
            "SELECT (lo->>0)::bigint, (hi->>0)::bigint, rows FROM rls_migrate.backfill_batches"
            " WHERE table_name = 'public.notes' AND lo IS NOT NULL ORDER BY batch_no"
        ).fetchall()
        unfilled = conn.execute("SELECT count(*) FROM notes n JOIN docs d ON d.id = n.doc_id"
                                " WHERE n.tenant_id IS DISTINCT FROM d.tenant_id").fetchone()
    assert unfilled == (0,)
    assert result.rows == rows
    walk = check_batches(empty_db, "public.notes")
    assert walk["rows_done"] == rows
    # Batches are 400 keys or rows (the sizer is pinned). From -1,500 the walk is dense: the
    # first two batches ask the index (the first has no lower bound to add to), every later
    # one adds 400 to its start, up to the batch that lands in the gap (2,899 -> 3,299, 101
    # rows); the next asks the index, which carries it over the gap in one go.
    ends = [int(b[1]) for b in batches]
    assert ends[:5] == [-701, -301, 99, 499, 899], ends
    assert [e for e in ends if 3_000 < e < 1_000_001] == [3_299], ends
    assert ends[ends.index(3_299) + 1] == 1_000_400, ends
    # One key in ten: every batch there asks the index for 400 rows, 4,000 keys.
    sparse = [b for b in batches if b[0] >= 2_000_000]
    assert sparse and all(b[1] - b[0] in (4_000, 3_990) or b[1] == 2_004_000
                          for b in sparse), sparse
    assert walk["batches"] == len(batches) + 1
    assert walk["batches"] < 30, walk
