"""Shared by the enforce, verify and check tests: the sample database migrated up to observe
or through enforce, as templates (built once per server and test process, cloned per test
in milliseconds), the playbook for it, and reading the database as the application.

Not a test module.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql

from rls_migrate import samples
from rls_migrate.catalog import Catalog
from rls_migrate.demo import sample_playbook as init_playbook
from rls_migrate.playbook import Playbook
from rls_migrate.runner import apply_stage
from rls_migrate.stages.common import PlanContext, TenantTable, with_partitions
from rls_migrate.steps import STAGES
from rls_migrate.testing import servers

Conn = psycopg.Connection[Any]
SCALE = 0.2
TENANT_A, TENANT_B = 1, 2


def sample_playbook(dsn: str) -> Playbook:
    """What a person writes for the sample (init's playbook, audit_log decided as a hint,
    orphans skipped, the admin role app_admin), from a database no stage has touched: on a
    migrated one, discovery sees the added tenant columns and decides differently.

    ``twin_min_scans`` is set out of reach: the index stage twins the indexes that have been
    scanned, so a plan made after application traffic would grow new index steps, and the
    stage-order check would then send enforce back to the index stage (reported to the
    index stage's owner)."""
    with psycopg.connect(dsn) as conn:
        playbook = init_playbook(Catalog.load(conn))
    return configure(playbook, index={"twin_min_scans": 10**9},
                     roles={"admin": (samples.ADMIN_ROLE,)})


def configure(playbook: Playbook, *, enforce: dict[str, Any] | None = None,
              roles: dict[str, Any] | None = None, index: dict[str, Any] | None = None,
              backfill: dict[str, Any] | None = None) -> Playbook:
    """``playbook`` with some of options.enforce, options.index, options.backfill and roles
    replaced (values as the model holds them: durations in milliseconds)."""
    opts = playbook.options
    options = opts.model_copy(update={
        "enforce": opts.enforce.model_copy(update=enforce or {}),
        "index": opts.index.model_copy(update=index or {}),
        "backfill": opts.backfill.model_copy(update=backfill or {}),
    })
    return playbook.model_copy(update={
        "options": options, "roles": playbook.roles.model_copy(update=roles or {})})


@dataclasses.dataclass(frozen=True)
class Sample:
    dsn: str
    playbook: Playbook  # the one the stages ran with

    @property
    def dbname(self) -> str:
        return servers.dbname_of(self.dsn)


_FACTORIES: dict[tuple[str, str], servers.DatabaseFactory] = {}
_PLAYBOOKS: dict[tuple[str, str], Playbook] = {}


def factory(server: servers.PostgresServer,
            make_factory: Callable[..., servers.DatabaseFactory],
            upto: str) -> tuple[servers.DatabaseFactory, Playbook]:
    """The sample migrated through stage ``upto`` (observe or enforce), one template per
    server and test process, shared by every module that asks."""
    key = (server.dsn(), upto)
    if key not in _FACTORIES:
        stages = STAGES[: STAGES.index(upto) + 1]

        def setup(dsn: str) -> None:
            samples.load(dsn, scale=SCALE)
            playbook = _PLAYBOOKS[key] = sample_playbook(dsn)
            for stage in stages:
                result = apply_stage(dsn, playbook, stage).result
                assert result.failed == 0, (stage, result)

        _FACTORIES[key] = make_factory(setup, prefix=f"rlsm_{upto}")
    return _FACTORIES[key], _PLAYBOOKS[key]


@contextlib.contextmanager
def clone(server: servers.PostgresServer, make_factory: Callable[..., servers.DatabaseFactory],
          upto: str) -> Iterator[Sample]:
    made, playbook = factory(server, make_factory, upto)
    dsn = made.create()
    try:
        yield Sample(dsn, playbook)
    finally:
        made.drop(servers.dbname_of(dsn))


def tenant_entries(dsn: str, playbook: Playbook) -> list[TenantTable]:
    """Every tenant table of the playbook, partitions included."""
    with psycopg.connect(dsn) as conn:
        ctx = PlanContext(Catalog.load(conn), playbook)
    return [e for t in ctx.tenant_tables for e in with_partitions(ctx, t)]


@contextlib.contextmanager
def as_role(conn: Conn, role: str, tenant: object | None = None) -> Iterator[Conn]:
    """A rolled-back transaction acting as ``role``, with ``tenant`` set (None: the setting
    is empty, as on a pooled connection after a tenant's transaction)."""
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        conn.execute("SELECT set_config('app.tenant_id', %s, true)",
                     ["" if tenant is None else str(tenant)])
        yield conn


def scalar(conn: Conn, query: Any, params: list[Any] | None = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]
