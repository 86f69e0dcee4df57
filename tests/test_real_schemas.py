"""Schemas shaped like real applications' (``tests/real_schemas/``: Rails, Prisma, Django),
on every major: the corpus itself is sound (its filler's data loads, each app's write path
runs on its own schema), so that a failure of the runbook over them is the migration's."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from real_schemas import runbook
from real_schemas.corpus import SCHEMAS, clone
from real_schemas.model import write

from rls_migrate.testing import servers


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_write_path_runs_before_the_migration(name: str, pg_server: servers.PostgresServer,
                                              make_factory: Any) -> None:
    """The app's write path, as its role with the tenant set, on the schema as the framework
    left it (no RLS yet); the filler's rows respect every foreign key (the database checked
    them) and leave each tenant enough rows to work with."""
    schema = SCHEMAS[name]
    with clone(pg_server, make_factory, schema) as dsn, psycopg.connect(dsn) as conn:
        tenants = runbook.tenants(dsn, schema)
        assert len(tenants) == 2
        for tenant in tenants:
            write(conn, schema, tenant, enforced=False)
