"""The whole runbook on one schema of the corpus, as a new user runs it: init, the committed
playbook, every stage, the application's writes in observe mode and after enforce (tenant
set), verify, check, rollback to none; checksums of every original column before and after.

Not a test module: :func:`run` is what ``tests/test_real_schemas.py`` calls.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from real_schemas.model import APP_ROLE, RealSchema, write
from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.check import check_catalog
from rls_migrate.discover import discover
from rls_migrate.init import build_playbook_yaml
from rls_migrate.planner import build_plan
from rls_migrate.playbook import Playbook, load_playbook, parse_playbook
from rls_migrate.playbook_check import check_against_catalog
from rls_migrate.runner import apply_stage, rollback_to
from rls_migrate.steps import STAGES
from rls_migrate.testing.checksums import CANONICAL_SETTINGS
from rls_migrate.verify import verify

Columns = Mapping[str, Sequence[str]]

_COLUMNS = """
SELECT c.relname, array_agg(a.attname::text ORDER BY a.attnum)
  FROM pg_class c
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
   AND NOT c.relispartition
 GROUP BY c.relname
"""


def original_columns(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """Every column of every table, as the application made them (before any stage)."""
    return {name: list(cols) for name, cols in conn.execute(_COLUMNS).fetchall()}


def column_checksums(dsn: str, columns: Columns) -> dict[str, str]:
    """``{table: "<rows>:<md5>"}`` over exactly ``columns`` of each table (order-independent),
    so a column the migration adds (even one named like an existing one elsewhere) never
    hides a change to an original column."""
    parts = [sql.SQL(
        "SELECT {}::text, count(*) || ':' || md5(coalesce(string_agg(h, '' ORDER BY h), '')) "
        "FROM (SELECT md5(ROW({})::text) AS h FROM {} AS t) AS s").format(
            sql.Literal(table), sql.SQL(", ").join(sql.Identifier("t", c) for c in cols),
            sql.Identifier("public", table)) for table, cols in sorted(columns.items())]
    with psycopg.connect(dsn) as conn:
        for name, value in CANONICAL_SETTINGS:
            conn.execute("SELECT set_config(%s, %s, false)", [name, value])
        rows = conn.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall()
    return {str(table): str(value) for table, value in rows}


@dataclasses.dataclass
class Outcome:
    """How far the runbook got: the steps that passed, in order."""

    schema: str
    passed: list[str] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    _last: float = dataclasses.field(default_factory=time.monotonic)

    def ok(self, step: str) -> None:
        now = time.monotonic()
        self.passed.append(step)
        self.seconds[step] = round(now - self._last, 2)
        self._last = now


def init_and_playbook(dsn: str, schema: RealSchema) -> tuple[Playbook, Playbook]:
    """``init``'s playbook and the committed one; the committed one names every table init
    found (nothing new slipped in unseen) and matches the database."""
    with psycopg.connect(dsn) as conn:
        catalog = Catalog.load(conn)
    graph = discover(catalog, QualifiedName.parse(schema.root), app_role=APP_ROLE)
    generated = parse_playbook(build_playbook_yaml(graph, catalog, app_role=APP_ROLE),
                               "init output")
    committed = load_playbook(schema.playbook_path)
    norm = {str(QualifiedName.parse(t)) for t in committed.tables}
    assert {str(QualifiedName.parse(t)) for t in generated.tables} == norm, (
        "the committed playbook and init disagree on the tables")
    check_against_catalog(committed, catalog, str(schema.playbook_path))
    build_plan(catalog, committed, None, source=str(schema.playbook_path))
    return generated, committed


def tenants(dsn: str, schema: RealSchema) -> list[Any]:
    """The two tenants with the lowest keys: the write path runs as each."""
    root = QualifiedName.parse(schema.root)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY 1 LIMIT 2").format(
            sql.Identifier(schema.fill.root_key), root.ident)).fetchall()
    return [r[0] for r in rows]


def write_as_app(dsn: str, schema: RealSchema, tenant_keys: Sequence[Any], *,
                 enforced: bool) -> None:
    """The application's write path, committed, once per tenant, as the application role with
    the tenant set per transaction (:func:`real_schemas.model.write`)."""
    with psycopg.connect(dsn) as conn:
        for tenant in tenant_keys:
            write(conn, schema, tenant, enforced=enforced)


def without_tenant(dsn: str, playbook: Playbook) -> set[str]:
    """The tenant tables that hold rows without a tenant."""
    found = set()
    with psycopg.connect(dsn) as conn:
        for qname, _ in playbook.table_plans():
            column = playbook.tenant_column(qname)
            if column is None:
                continue
            row = conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE {} IS NULL)").format(
                qname.ident, sql.Identifier(column))).fetchone()
            if row and row[0]:
                found.add(str(qname))
    return found


def rls_left(dsn: str) -> tuple[int, int, int]:
    """(tables with RLS on, policies, rls_migrate triggers) left in ``public``."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
            "        AND (relrowsecurity OR relforcerowsecurity)),"
            " (SELECT count(*) FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid"
            "   WHERE c.relnamespace = 'public'::regnamespace),"
            " (SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            "   WHERE c.relnamespace = 'public'::regnamespace AND t.tgname LIKE 'rls_migrate%%')"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def run(dsn: str, schema: RealSchema, outcome: Outcome) -> None:
    """The runbook; each step asserts and is then noted in ``outcome``."""
    _, playbook = init_and_playbook(dsn, schema)
    outcome.ok("init+plan")
    with psycopg.connect(dsn) as conn:
        columns = original_columns(conn)
    before = column_checksums(dsn, columns)
    for stage in STAGES[: STAGES.index("observe") + 1]:
        result = apply_stage(dsn, playbook, stage).result
        assert result.failed == 0, (stage, result)
        assert column_checksums(dsn, columns) == before, f"{stage} changed original columns"
        outcome.ok(stage)
    keys = tenants(dsn, schema)
    write_as_app(dsn, schema, keys, enforced=False)  # observe: correct traffic, no record
    outcome.ok("app writes in observe")
    settled = column_checksums(dsn, columns)
    result = apply_stage(dsn, playbook, "enforce").result  # the gate: a clean report
    assert result.failed == 0, result
    assert column_checksums(dsn, columns) == settled, "enforce changed original columns"
    outcome.ok("enforce")
    write_as_app(dsn, schema, keys, enforced=True)
    outcome.ok("app writes after enforce")
    report = verify(dsn, playbook)
    assert report.ok, [f"{f.code} {f.subject}: {f.message}" for f in report.failures]
    # The rows the playbook leaves without a tenant (nullable: true) are named, with a count.
    warned = {f.subject for f in report.warnings if f.code == "rows-without-tenant"}
    assert warned == without_tenant(dsn, playbook) != set(), report.warnings
    outcome.ok("verify")
    with psycopg.connect(dsn) as conn:
        catalog = Catalog.load(conn, schemas=playbook.schemas)
    checked = check_catalog(catalog, playbook=playbook)
    assert checked.ok, checked.offenders
    outcome.ok("check")
    settled = column_checksums(dsn, columns)
    rollback_to(dsn, playbook, "none", drop_columns=True)
    assert rls_left(dsn) == (0, 0, 0)
    with psycopg.connect(dsn) as conn:
        assert original_columns(conn) == columns, "rollback --drop-columns left columns"
    assert column_checksums(dsn, columns) == settled, "rollback changed original columns"
    outcome.ok("rollback to none")
