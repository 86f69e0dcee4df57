"""The sample application workload runs as the non-owner app role without errors."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from rls_migrate import samples
from rls_migrate.testing import servers
from rls_migrate.workload import Workload

# Version-agnostic (the toolkit's own logic over SQL every major runs alike): the core
# majors only, unless RLS_MIGRATE_TEST_ALL_MAJORS=1 (see tests/conftest.py).
pytestmark = pytest.mark.core_majors


@pytest.fixture(scope="module")
def workload_factory(make_factory):  # type: ignore[no-untyped-def]
    return make_factory(lambda dsn: samples.load(dsn, scale=0.2), "workload")


@pytest.fixture
def sample_db(workload_factory: servers.DatabaseFactory) -> Iterator[str]:
    dsn = workload_factory.create()
    yield dsn
    workload_factory.drop(servers.dbname_of(dsn))


def test_workload_runs_as_app_role_without_errors(
    sample_db: str, pg_server: servers.PostgresServer
) -> None:
    app_dsn = pg_server.dsn(servers.dbname_of(sample_db), user=samples.APP_ROLE)
    with Workload(app_dsn, sample_db, threads=2, forgotten_job=True,
                  forgotten_every_s=0.1) as load:
        time.sleep(1.0)
    stats = load.stats.summary()
    assert stats["errors"] == 0, stats["error_samples"]
    assert stats["transactions"] > 20
    assert stats["forgotten_job_runs"] >= 3
    assert 0 < stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
