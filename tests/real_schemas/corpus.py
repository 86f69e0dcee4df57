"""The corpus's schemas by name, and their template databases (loaded once per server and
test process, cloned per test in milliseconds).

Not a test module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from real_schemas import django, prisma, rails
from real_schemas.model import RealSchema
from rls_migrate.testing import servers

SCHEMAS: dict[str, RealSchema] = {s.name: s for s in (rails.SCHEMA, prisma.SCHEMA,
                                                      django.SCHEMA)}
_FACTORIES: dict[tuple[str, str], servers.DatabaseFactory] = {}


@contextmanager
def clone(server: servers.PostgresServer, make_factory: Callable[..., servers.DatabaseFactory],
          schema: RealSchema) -> Iterator[str]:
    """The DSN of a fresh copy of ``schema``'s loaded database, dropped afterwards."""
    key = (server.dsn(), schema.name)
    if key not in _FACTORIES:
        _FACTORIES[key] = make_factory(schema.load, prefix=f"real_{schema.name}")
    made = _FACTORIES[key]
    dsn = made.create()
    try:
        yield dsn
    finally:
        made.drop(servers.dbname_of(dsn))
