"""The index stage's tenant statistics, on every major: enforcement adds ``tenant_id = <the
tenant>`` to a legacy statement that filters on the link to the parent
(``issues.project_id = $1``); with the ``(project_id, tenant_id)`` dependencies statistics the
planner estimates the project's issues, without them it multiplies the two selectivities
and estimates one row (the misestimate behind nested loops 10-70x slower than no RLS:
``benchmarks/observe_cost.py``). Rollback drops them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from test_observe import ObserveDb, cloned_db

from rls_migrate import samples
from rls_migrate.catalog import Catalog
from rls_migrate.context import tenant_transaction
from rls_migrate.planner import build_plan
from rls_migrate.runner import apply_stage, rollback_to
from rls_migrate.testing import servers

TENANT = 3


@pytest.fixture
def db(pg_server: servers.PostgresServer,
       make_factory: Callable[..., servers.DatabaseFactory]) -> Iterator[ObserveDb]:
    with cloned_db(pg_server, make_factory) as clone:
        yield clone


def ours(db: ObserveDb) -> dict[str, set[tuple[str, ...]]]:
    """table -> the column sets of its statistics objects."""
    with db.owner() as conn:
        rows = conn.execute(
            "SELECT s.stxrelid::regclass::text, array_agg(a.attname ORDER BY a.attname)"
            " FROM pg_statistic_ext s JOIN pg_attribute a ON a.attrelid = s.stxrelid"
            " AND a.attnum = ANY(s.stxkeys) WHERE s.stxname LIKE '%rlsm_dep'"
            " GROUP BY s.oid, 1").fetchall()
    out: dict[str, set[tuple[str, ...]]] = {}
    for table, columns in rows:
        out.setdefault(table, set()).add(tuple(columns))
    return out


def estimated_and_actual(db: ObserveDb, project: int) -> tuple[int, int]:
    """The scan of issues in a legacy join, as the application sees it once enforced."""
    with db.app("legacy") as conn, tenant_transaction(conn, TENANT):
        plan: Any = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT c.id FROM comments c JOIN issues i"
            " ON i.id = c.issue_id WHERE i.project_id = %s", [project]).fetchone()
    scans = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Relation Name") == "issues":
            scans.append((int(node["Plan Rows"]), int(node["Actual Rows"])))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0][0]["Plan"])
    (scan,) = scans
    return scan


def test_the_planner_knows_the_tenant_follows_from_the_parent(db: ObserveDb) -> None:
    made = ours(db)
    assert made["issues"] == {("project_id", "tenant_id")}
    # the link to the parent, and to another comment (a tenant table too)
    assert made["comments"] == {("issue_id", "tenant_id"), ("parent_id", "tenant_id")}
    assert made["audit_log"] == {("issue_id", "tenant_id")}  # a playbook hint, no foreign key
    assert samples.TENANT_ROOT not in made and "users" not in made  # no parent but the root
    assert "events" not in made  # direct, and a partitioned table holds no rows itself

    db.observe()
    assert apply_stage(db.dsn, db.playbook, "enforce").result.failed == 0
    project = db.scalar("SELECT p.id FROM projects p JOIN issues i ON i.project_id = p.id"
                        " WHERE p.account_id = %s GROUP BY p.id ORDER BY count(*) DESC, p.id"
                        " LIMIT 1", [TENANT])
    estimated, actual = estimated_and_actual(db, project)
    assert actual >= 8 and estimated * 2 >= actual, (estimated, actual)

    with db.owner() as conn:  # without them: the selectivities multiplied
        conn.execute("DROP STATISTICS issues_project_id_rlsm_dep")
    estimated, actual = estimated_and_actual(db, project)
    assert estimated * 4 <= actual, (estimated, actual)

    again = apply_stage(db.dsn, db.playbook, "index").result
    # (the EXPLAINs used issues_project_id_idx: the stage twins it now too)
    assert [o.step_id for o in again.outcomes
            if o.outcome == "done" and o.kind == "tenant_statistics"] == [
        "tenant_statistics:public.issues"]
    assert ours(db) == made
    rollback_to(db.dsn, db.playbook, "constrain")
    assert ours(db) == {}


def test_the_option_turns_them_off(db: ObserveDb) -> None:
    index = db.playbook.options.index.model_copy(update={"tenant_statistics": False})
    playbook = db.playbook.model_copy(update={"options": db.playbook.options.model_copy(
        update={"index": index})})
    with psycopg.connect(db.dsn) as conn:
        plan = build_plan(Catalog.load(conn), playbook, ["index"])
    assert not [s for s in plan.stage("index") if s.kind == "tenant_statistics"]
