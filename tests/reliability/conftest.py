"""Fixtures of the reliability suite.

* ``fault_server``: a PostgreSQL 18 server of this suite's own (the embedded one, else the
  newest local major), because some tests restart it with an immediate shutdown (a crash)
  or stream a standby from it; the shared ``pg_server`` is never restarted.
* ``fault_templates``: the sample database migrated up to any stage on that server.
* ``fault_standby``: a streaming hot standby of ``fault_server`` (pg_basebackup over
  loopback), started when first asked for.
* ``stage_templates``: the same on ``pg_server`` (every major), for the reduced tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from plan_helpers import sample_factory

from reliability.support import StageTemplates
from rls_migrate.testing import servers
from rls_migrate.testing.replica import StandbyServer


def _fault_backend() -> servers.Backend | None:
    local = [b for b in servers.find_backends("embedded,system") if b.bindir is not None]
    local.sort(key=lambda b: (b.kind != "embedded", -(b.major or 0)))
    return local[0] if local else None


@pytest.fixture(scope="session")
def fault_server() -> Iterator[servers.LocalServer]:
    backend = _fault_backend()
    if backend is None:
        pytest.skip("no local PostgreSQL binaries: the fault tests restart their own server")
    try:
        server = servers.LocalServer(backend)
    except servers.ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fault_templates(fault_server: servers.LocalServer) -> Iterator[StageTemplates]:
    templates = StageTemplates(fault_server, prefix="fault")
    yield templates
    templates.close()


@pytest.fixture(scope="session")
def fault_standby(fault_server: servers.LocalServer) -> Iterator[StandbyServer]:
    try:
        standby = StandbyServer(fault_server)
    except servers.ServerUnavailable as exc:
        pytest.skip(f"no standby: {exc}")
    try:
        yield standby
    finally:
        standby.stop()


@pytest.fixture(scope="session")
def stage_templates(pg_server: servers.PostgresServer,
                    make_factory: Callable[..., servers.DatabaseFactory]
                    ) -> Iterator[StageTemplates]:
    # The plan tests' sample template (the same database), when this process has one.
    templates = StageTemplates(pg_server, prefix="relsmoke",
                               base=sample_factory(pg_server, make_factory))
    yield templates
    templates.close()
