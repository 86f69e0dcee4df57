"""The whole runbook on schemas shaped like real applications' (``tests/real_schemas/``), on
every major: init, the playbook an engineer of the app commits, every stage, the app's
writes in observe mode and after enforce with the tenant set, verify, check, and rollback to
none, with checksums of every original column (:mod:`real_schemas.runbook`); and the two
ways a leak comes back unnoticed: a unique index across tenants, a table added next month."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import yaml
from plan_helpers import all_sql
from real_schemas import runbook
from real_schemas.agree import disagreements
from real_schemas.corpus import SCHEMAS, clone

from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.check import check_catalog
from rls_migrate.errors import RlsMigrateError
from rls_migrate.planner import build_plan
from rls_migrate.playbook import load_playbook, parse_playbook
from rls_migrate.preflight import with_preflight
from rls_migrate.runner import apply_stage
from rls_migrate.testing import servers

RUNBOOK = sorted(SCHEMAS)


@pytest.mark.parametrize("name", RUNBOOK)
def test_runbook(name: str, pg_server: servers.PostgresServer, make_factory: Any) -> None:
    schema = SCHEMAS[name]
    outcome = runbook.Outcome(name)
    with clone(pg_server, make_factory, schema) as dsn:
        try:
            runbook.run(dsn, schema, outcome)
        except BaseException as exc:
            exc.add_note(f"{name}: passed {', '.join(outcome.passed) or 'nothing'}")
            raise


@pytest.mark.core_majors  # the plan's SQL, not the server, is under test
@pytest.mark.parametrize("name", RUNBOOK)
def test_step_sql_is_the_same_whenever_it_is_read(
        name: str, pg_server: servers.PostgresServer, make_factory: Any) -> None:
    """Steps build their SQL when first read (``plan`` in text form reads none): on schemas
    we did not design, every statement, inverse, done check and backfill statement is the
    same read forward or backward through the plan."""
    schema = SCHEMAS[name]
    with clone(pg_server, make_factory, schema) as dsn, psycopg.connect(dsn) as conn:
        catalog = Catalog.load(conn)
    playbook = load_playbook(schema.playbook_path)
    forward = all_sql(build_plan(catalog, playbook, source=name), list)
    backward = all_sql(build_plan(catalog, playbook, source=name),
                       lambda steps: list(reversed(steps)))
    assert forward == backward
    assert len(forward) > 20 and all(statements for statements, *_ in forward.values())


@pytest.mark.parametrize("name", sorted(n for n, s in SCHEMAS.items() if s.global_uniques))
def test_plan_names_unique_indexes_that_span_tenants(
        name: str, pg_server: servers.PostgresServer, make_factory: Any) -> None:
    """Rails and Prisma make uniqueness a ``CREATE UNIQUE INDEX``: the plan's risks name
    the ones that span tenants, as they name unique constraints."""
    schema = SCHEMAS[name]
    with clone(pg_server, make_factory, schema) as dsn, psycopg.connect(dsn) as conn:
        catalog = Catalog.load(conn)
    risks = build_plan(catalog, load_playbook(schema.playbook_path), None, source=name).risks
    for table, column in schema.global_uniques:
        qname = str(QualifiedName.parse(table))
        assert any(qname in r and column in r and "unique" in r.lower() for r in risks), (
            f"{qname} ({column}) is not among the risks:\n" + "\n".join(risks))


@pytest.mark.parametrize("name", sorted(n for n, s in SCHEMAS.items() if s.new_table))
def test_check_names_a_table_added_after_the_migration(
        name: str, pg_server: servers.PostgresServer, make_factory: Any) -> None:
    """The leak that comes back: next month's table, written the framework's way, holds
    tenant data without RLS; ``check --playbook`` names it."""
    schema = SCHEMAS[name]
    playbook = load_playbook(schema.playbook_path)
    with clone(pg_server, make_factory, schema) as dsn, psycopg.connect(dsn) as conn:
        for statement in schema.new_table:
            conn.execute(statement.encode())
        catalog = Catalog.load(conn)
    known = {str(QualifiedName.parse(t)) for t in playbook.tables}
    new = {str(q) for q in catalog.tables if str(q) not in known}
    assert len(new) == 1
    offenders = {o.table for o in check_catalog(catalog, playbook=playbook).offenders}
    assert new <= offenders, offenders


def test_a_forgotten_nullable_is_named_by_plan_and_refused_by_constrain(
        pg_server: servers.PostgresServer, make_factory: Any) -> None:
    """The Rails engineer forgets ``nullable: true`` on labels, whose app-made ``account_id``
    is NULL in some rows: plan's preflight names the table and its NULL count, and constrain
    refuses up front with them (no raw check violation, nothing executed)."""
    schema = SCHEMAS["rails"]
    data = yaml.safe_load(schema.playbook_path.read_text())
    del data["tables"]["public.labels"]["nullable"]
    playbook = parse_playbook(yaml.safe_dump(data), "rails.yaml without nullable on labels")
    with clone(pg_server, make_factory, schema) as dsn:
        with psycopg.connect(dsn) as conn:
            nulls = conn.execute("SELECT count(*) FROM labels WHERE account_id IS NULL"
                                 ).fetchone()
            assert nulls is not None and nulls[0] > 0
            catalog = Catalog.load(conn)
            plan = build_plan(catalog, playbook, None, source="rails")
            risks = with_preflight(conn, catalog, playbook, plan).risks  # what `plan` prints
        assert any("public.labels" in r and str(nulls[0]) in r for r in risks), risks
        for stage in ("prepare", "add-column", "backfill"):
            assert apply_stage(dsn, playbook, stage).result.failed == 0
        with pytest.raises(RlsMigrateError) as refused:
            apply_stage(dsn, playbook, "constrain")
        assert "public.labels" in str(refused.value) and str(nulls[0]) in str(refused.value)
        with psycopg.connect(dsn) as conn:
            added = conn.execute(
                "SELECT count(*) FROM pg_constraint WHERE conrelid = 'labels'::regclass"
                " AND contype = 'c'").fetchone()
        assert added == (0,), "constrain changed labels before refusing"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_init_decides_what_the_engineer_decides(
        name: str, pg_server: servers.PostgresServer, make_factory: Any) -> None:
    """Every table init decides on its own, it decides as the app's engineer did; the rest
    are TODOs whose options hold the engineer's choice (real_schemas/agree.py)."""
    schema = SCHEMAS[name]
    with clone(pg_server, make_factory, schema) as dsn:
        generated, committed = runbook.init_and_playbook(dsn, schema)
    assert disagreements(generated, committed) == []
