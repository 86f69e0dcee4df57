"""The whole runbook on schemas shaped like real applications' (``tests/real_schemas/``), on
every major: init, the playbook an engineer of the app commits, every stage, the app's
writes in observe mode and after enforce with the tenant set, verify, check, and rollback to
none, with checksums of every original column (see :mod:`real_schemas.runbook`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from real_schemas import prisma, rails, runbook
from real_schemas.model import RealSchema

from rls_migrate.testing import servers

SCHEMAS: dict[str, RealSchema] = {s.name: s for s in (rails.SCHEMA, prisma.SCHEMA)}
_FACTORIES: dict[tuple[str, str], servers.DatabaseFactory] = {}


def database(server: servers.PostgresServer, make_factory: Callable[..., servers.DatabaseFactory],
             schema: RealSchema) -> servers.DatabaseFactory:
    """A template per server and schema, loaded once and cloned per test."""
    key = (server.dsn(), schema.name)
    if key not in _FACTORIES:
        _FACTORIES[key] = make_factory(schema.load, prefix=f"real_{schema.name}")
    return _FACTORIES[key]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_runbook(name: str, pg_server: servers.PostgresServer, make_factory: Any) -> None:
    schema = SCHEMAS[name]
    made = database(pg_server, make_factory, schema)
    dsn = made.create()
    outcome = runbook.Outcome(name)
    try:
        runbook.run(dsn, schema, outcome)
    except BaseException as exc:
        exc.add_note(f"{name}: passed {', '.join(outcome.passed) or 'nothing'}")
        raise
    finally:
        made.drop(servers.dbname_of(dsn))


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_write_path_runs_before_the_migration(name: str, pg_server: servers.PostgresServer,
                                              make_factory: Any) -> None:
    """The app's write path is sound on its own schema (no RLS yet): a later failure is the
    migration's, not the corpus's."""
    schema = SCHEMAS[name]
    made = database(pg_server, make_factory, schema)
    dsn = made.create()
    try:
        with psycopg.connect(dsn) as conn:
            for tenant in runbook.tenants(dsn, schema):
                with runbook.as_app(conn, tenant):
                    written = schema.write_path(conn, tenant)
                    assert written and all(n > 0 for n in written.values())
    finally:
        made.drop(servers.dbname_of(dsn))
