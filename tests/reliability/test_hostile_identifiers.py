"""Hostile identifiers: every stage, rollback and verify work whatever the names are.

Each case builds a small tenant schema in a fresh database: a tenant root, a table that
carries the key (direct), a table that reaches it through a foreign key (derived), and a
table without a primary key two hops down (backfilled by physical ranges). Schema, tables,
columns, the added tenant column and the application role are named with quotes, spaces,
mixed case, unicode, reserved words, dots, SQL and format-string fragments, and maximum
length (63-byte) names; the tenant key is each supported type (bigint, integer, uuid,
text), and the text case's tenant ids are hostile too. Then, as a person would:
discover + ``init``'s playbook, ``plan`` through the real CLI, every stage through the
library, ``verify`` (structure and the live cross-tenant probe) must pass, every non-tenant
column is unchanged, and ``rollback --to none --drop-columns`` leaves the schema exactly as
it was.

The full version runs every case on every major; the unmarked test runs one case.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from reliability.support import report
from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.discover import discover
from rls_migrate.init import build_playbook_yaml
from rls_migrate.playbook import Playbook, parse_playbook
from rls_migrate.runner import apply_stage, rollback_to
from rls_migrate.steps import STAGES
from rls_migrate.testing import servers
from rls_migrate.testing.checksums import table_checksums
from rls_migrate.testing.faults import cli_command, run_cli
from rls_migrate.verify.runner import verify


@dataclasses.dataclass(frozen=True)
class Case:
    """The names of one hostile schema, and its tenant key type and ids."""

    id: str
    key_type: str
    schema: str
    root: str
    key: str
    direct: str
    direct_fk: str
    derived: str
    derived_fk: str
    no_pk: str
    no_pk_fk: str
    payload: str  # a data column on every table
    tenant_column: str  # the column the toolkit adds
    app_role: str
    tenants: tuple[Any, ...]

    @property
    def names(self) -> set[str]:
        return {self.schema, self.root, self.key, self.direct, self.direct_fk, self.derived,
                self.derived_fk, self.no_pk, self.no_pk_fk, self.payload, self.tenant_column,
                self.app_role}


def _63(stem: str, fill: str) -> str:
    """A name of exactly 63 bytes (PostgreSQL's longest): ``stem`` padded with ``fill``."""
    name = stem
    while len((name + fill).encode()) <= 63:
        name += fill
    name += "z" * (63 - len(name.encode()))
    assert len(name.encode()) == 63, name
    return name


CASES = (
    Case("quotes-spaces-bigint", "bigint",
         schema='Tenant "Data" Schema', root="Acc'ounts \"Root\"", key="Id Key",
         direct="user", direct_fk="select", derived="Order Items", derived_fk="order",
         no_pk="no pk; DROP TABLE x; --", no_pk_fk="from", payload="Payload 'Text'",
         tenant_column='tenant "id"', app_role='app "user" role',
         tenants=(1, -5, 9007199254740993)),
    Case("unicode-mixed-case-integer", "integer",
         schema="Ünïcødé_Schéma", root="Kunden", key="KundenNr", direct="Bestellungen_ß",
         direct_fk="Kunde→Id", derived="数据表", derived_fk="父ID", no_pk="🔥 hot table",
         no_pk_fk="🔗", payload="Ωmega", tenant_column="Mandant", app_role="Rolle_Ä",
         tenants=(1, 2, 2147483647)),
    Case("max-length-uuid", "uuid",
         schema=_63("S", "S"), root=_63("root_", "é"), key=_63("key_", "k"),
         # The foreign key columns stay shorter: the tenant-leading index is named after the
         # direct table's one (see max-length-columns-uuid below).
         direct=_63("direct_", "d"), direct_fk="fk_" + "f" * 27, derived=_63("derived_", "数"),
         derived_fk=_63("dfk_", "g"), no_pk=_63("nopk_", "n"), no_pk_fk=_63("nfk_", "h"),
         payload=_63("payload_", "p"), tenant_column="tenant_id", app_role=_63("role_", "r"),
         tenants=(uuid.UUID(int=1), uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff"),
                  uuid.UUID("12345678-1234-5678-1234-567812345678"))),
    Case("reserved-dots-text", "text",
         schema="public.schema", root="table", key="key", direct="group.users",
         direct_fk="user", derived="check", derived_fk="limit", no_pk="Select",
         no_pk_fk="default", payload="null", tenant_column="tenant.id", app_role="select",
         tenants=("it's", 'x"; DROP TABLE "table"; --', "ünï cødé %s {}")),
    Case("backslash-dollar-comment-bigint", "bigint",
         schema="back\\slash", root="$1", key="$$", direct="a\\nb", direct_fk="--comment",
         derived="/* c */", derived_fk=";", no_pk="'", no_pk_fk='"', payload=" lead",
         tenant_column="trail ", app_role="$role",
         tenants=(7, 8, 9)),
    # '%' in every name: psycopg reads '%s' inside a quoted identifier as a placeholder
    # unless the statement is escaped for parameters (sqlcompose.for_params).
    Case("percent-braces-bigint", "bigint",
         schema="pct%s", root="{accounts}", key="%(id)s", direct="100%",
         direct_fk="fk%", derived="{0}", derived_fk="%%", no_pk="%s%s",
         no_pk_fk="{}", payload="%(x)s", tenant_column="tenant%",
         app_role="app%role", tenants=(1, 2, 3)),
    # A 63-byte tenant column: the names built from it (constraints, indexes) must still fit.
    Case("max-length-columns-uuid", "uuid",
         schema="s63", root="accounts", key="id", direct="users",
         direct_fk=_63("account_", "a"), derived="issues", derived_fk="user_id",
         no_pk="notes", no_pk_fk="issue_id", payload="body",
         tenant_column=_63("tenant_", "t"), app_role="app63",
         tenants=(uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3))),
    # Newlines in names: the playbook's 'column -> table(column)' must still parse.
    Case("newline-bigint", "bigint",
         schema="new\nline", root="acc\nounts", key="id", direct="users",
         direct_fk="account\nid", derived="is\nsues", derived_fk="user_id",
         no_pk="notes", no_pk_fk="issue_id", payload="body",
         tenant_column="tenant_id", app_role="app_nl", tenants=(1, 2, 3)),
)
ROWS_PER_TENANT = 3


def build(dsn: str, case: Case) -> None:
    """The case's schema, its rows (three tenants) and the application role's grants."""
    ident = sql.Identifier
    s = case.schema
    key_type = sql.SQL(case.key_type)
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(
                ident(case.app_role)))
        except psycopg.errors.DuplicateObject:
            pass  # roles are cluster-wide: an earlier test made it
        statements = [
            sql.SQL("CREATE SCHEMA {}").format(ident(s)),
            sql.SQL("CREATE TABLE {} ({} {} PRIMARY KEY, {} text)").format(
                ident(s, case.root), ident(case.key), key_type, ident(case.payload)),
            sql.SQL("CREATE TABLE {} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
                    " {} {} NOT NULL REFERENCES {} ({}), {} text)").format(
                ident(s, case.direct), ident(case.direct_fk), key_type, ident(s, case.root),
                ident(case.key), ident(case.payload)),
            sql.SQL("CREATE TABLE {} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
                    " {} bigint NOT NULL REFERENCES {} (id), {} text)").format(
                ident(s, case.derived), ident(case.derived_fk), ident(s, case.direct),
                ident(case.payload)),
            sql.SQL("CREATE TABLE {} ({} bigint REFERENCES {} (id), {} text)").format(
                ident(s, case.no_pk), ident(case.no_pk_fk), ident(s, case.derived),
                ident(case.payload)),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident(s), ident(case.app_role)),
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}"
                    ).format(ident(s), ident(case.app_role)),
        ]
        for statement in statements:
            conn.execute(statement)
        # Values as literals, not parameters: psycopg reads a '%' in a composed query as a
        # placeholder even inside a quoted identifier (see test_percent_in_identifiers).
        lit = sql.Literal
        for n, tenant in enumerate(case.tenants):
            conn.execute(sql.SQL("INSERT INTO {} VALUES ({}, {})").format(
                ident(s, case.root), lit(tenant), lit(f"tenant {n} {case.payload}")))
            for r in range(ROWS_PER_TENANT):
                row = conn.execute(sql.SQL("INSERT INTO {} ({}, {}) VALUES ({}, {}) RETURNING id"
                                           ).format(ident(s, case.direct), ident(case.direct_fk),
                                                    ident(case.payload), lit(tenant),
                                                    lit(f"{case.direct} {r} 'q' \"dq\""))
                                   ).fetchone()
                assert row is not None
                for d in range(2):
                    child = conn.execute(sql.SQL("INSERT INTO {} ({}, {}) VALUES ({}, {})"
                                                 " RETURNING id").format(
                        ident(s, case.derived), ident(case.derived_fk), ident(case.payload),
                        lit(row[0]), lit(f"{d} {{}} %s"))).fetchone()
                    assert child is not None
                    conn.execute(sql.SQL("INSERT INTO {} ({}, {}) VALUES ({}, {})").format(
                        ident(s, case.no_pk), ident(case.no_pk_fk), ident(case.payload),
                        lit(child[0]), lit("\\ backslash $$ dollar")))


def playbook_for(dsn: str, case: Case) -> tuple[Playbook, str]:
    """init's playbook for the case (discovery decides every table), and its text."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        catalog = Catalog.load(conn, schemas=[case.schema])
    graph = discover(catalog, QualifiedName(case.schema, case.root), key=case.key,
                     tenant_column=case.tenant_column, app_role=case.app_role)
    text = build_playbook_yaml(graph, catalog, app_role=case.app_role,
                               column=case.tenant_column)
    playbook = parse_playbook(text, f"init output for {case.id}")
    assert playbook.todos == [], playbook.todos
    strategies = {QualifiedName.parse(n).name: p.strategy for n, p in playbook.tables.items()}
    assert strategies == {case.root: "root", case.direct: "direct", case.derived: "derive",
                          case.no_pk: "derive"}, strategies
    return playbook, text


def shape(dsn: str, schema: str) -> dict[str, Any]:
    """What the migration may change in the schema, statistics left out."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        catalog = Catalog.load(conn, schemas=[schema])
    return {
        str(q): (tuple((c.name, c.type, c.not_null) for c in t.columns),
                 sorted(i.name for i in t.indexes), sorted(c.name for c in t.constraints),
                 sorted(fk.name for fk in t.foreign_keys),
                 sorted(tr.name for tr in t.triggers), sorted(p.name for p in t.policies),
                 t.rls_enabled, t.rls_forced)
        for q, t in catalog.tables.items()
    }


def run_case(dsn: str, case: Case, tmp_path: Path, *, cli_plan: bool) -> int:
    """Every stage, verify, rollback; returns the number of steps applied."""
    build(dsn, case)
    playbook, text = playbook_for(dsn, case)
    before_shape = shape(dsn, case.schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = table_checksums(conn, exclude_columns=(), schema=case.schema)
    if cli_plan:
        path = tmp_path / "hostile.yaml"
        path.write_text(text)
        planned = run_cli(cli_command("plan", str(path), "--dsn", dsn), timeout=120)
        assert planned.returncode == 0, planned.stderr
        assert "Traceback" not in planned.stderr
    steps = 0
    for stage in STAGES:
        result = apply_stage(dsn, playbook, stage).result
        assert result.failed == 0, (stage, result)
        steps += result.done
    with psycopg.connect(dsn, autocommit=True) as conn:
        after = table_checksums(conn, exclude_columns=(case.tenant_column,), schema=case.schema)
        filled = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
            sql.Identifier(case.schema, case.no_pk), sql.Identifier(case.tenant_column))
            ).fetchone()
    assert after == before, "a non-tenant column changed"
    assert filled == (0,), "the table without a primary key was not filled"

    verified = verify(dsn, playbook)
    assert verified.ok, [(f.code, f.subject, f.message) for f in verified.failures]
    probed = [f for f in verified.findings if f.code.startswith("probe-") and f.status == "pass"]
    assert len(probed) >= 4 * 5, "the probe hardly ran"

    rollback_to(dsn, playbook, "none", drop_columns=True)
    assert shape(dsn, case.schema) == before_shape
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert table_checksums(conn, exclude_columns=(), schema=case.schema) == before
    return steps


@pytest.mark.reliability
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_names_through_every_stage(case: Case, empty_db: str,
                                           pg_server: servers.PostgresServer,
                                           tmp_path: Path) -> None:
    steps = run_case(empty_db, case, tmp_path, cli_plan=True)
    report(f"hostile names[{case.id}] {pg_server.backend.name}: {len(case.names)} names, "
           f"{case.key_type} key, {steps} steps applied, verify ok, rolled back clean")


def test_hostile_names_reduced(empty_db: str, pg_server: servers.PostgresServer,
                               tmp_path: Path) -> None:
    """Reduced: quotes, spaces, reserved words and format-string fragments, a bigint key."""
    steps = run_case(empty_db, CASES[0], tmp_path, cli_plan=False)
    report(f"hostile names[{CASES[0].id}] {pg_server.backend.name} (reduced): {steps} steps")


def test_the_cases_are_hostile() -> None:
    """What the full version tries: every kind of name the brief lists, every key type."""
    names = set().union(*(c.names for c in CASES))
    assert {c.key_type for c in CASES} == {"bigint", "integer", "uuid", "text"}
    assert any(len(n.encode()) == 63 and not n.isascii() for n in names)
    assert {'"', "'", " ", ".", "\\", "$", "\n", "%s", "{}"} <= {
        ch for ch in ('"', "'", " ", ".", "\\", "$", "\n", "%s", "{}")
        if any(ch in n for n in names)}
    assert {"user", "select", "table", "order", "check"} <= names
    report(f"hostile names: {len(names)} distinct names in {len(CASES)} schemas "
           f"(key types {', '.join(sorted({c.key_type for c in CASES}))})")
