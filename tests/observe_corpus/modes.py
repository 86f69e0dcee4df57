"""Running corpus patterns as the application: four client modes, the tenant set per
transaction, every transaction committed (the patterns leave the data as they found it).

* ``simple``: psycopg's ``ClientCursor``: parameters merged client-side, the simple query
  protocol (what PgBouncer-era code and many ORMs' "no prepare" settings send);
* ``prepared``: server-side binding with ``prepare=True``, run :data:`PREPARED_RUNS` times so
  PostgreSQL's plan cache may switch to a generic plan after the fifth custom one;
* ``generic``: the same with ``plan_cache_mode = force_generic_plan`` for the session;
* ``orm``: a SQLAlchemy 2 session (``install_tenant_listener``), the pattern's ORM form
  where it has one, its SQL through ``session.execute(text(...))`` otherwise.

Each pattern runs under its own ``application_name`` (``corpus/<pattern>/<mode>``), so
whatever observe mode records can be traced back to it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from observe_corpus.database import Tenant
from observe_corpus.pattern import Pattern, Rows, to_text
from rls_migrate.context import set_tenant
from rls_migrate.sqlalchemy import install_tenant_listener, sqlalchemy_url, tenant_session

MODES = ("simple", "prepared", "generic", "orm")
PREPARED_RUNS = 6
GENERIC_RUNS = 2
STREAM_BATCH = 50
"""Rows a server-side cursor fetches at a time (``FETCH FORWARD 50``)."""

Outcome = tuple[str, tuple[str, ...]]
"""("rows", the rows' reprs sorted) or ("error", (class, message)): results compared as
multisets, since a plan may return rows without ORDER BY in another order."""


def outcome_of(rows: Rows) -> Outcome:
    return ("rows", tuple(sorted(repr(tuple(r)) for r in rows)))


def error_of(exc: BaseException) -> Outcome:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ("error", (type(exc).__name__, message))


def app_name(pattern: str, mode: str) -> str:
    return f"corpus/{pattern}/{mode}"


class Runner:
    """Connections of the application role to one database, one per psycopg mode, and an
    ORM session factory."""

    def __init__(self, app_dsn: str) -> None:
        self.conns = {
            "simple": psycopg.connect(app_dsn, autocommit=True,
                                      cursor_factory=psycopg.ClientCursor),
            "prepared": psycopg.connect(app_dsn, autocommit=True),
            "generic": psycopg.connect(app_dsn, autocommit=True),
        }
        self.conns["generic"].execute("SET plan_cache_mode = force_generic_plan")
        self.engine = create_engine(sqlalchemy_url(app_dsn), pool_size=1)
        self.sessions = sessionmaker(self.engine)
        install_tenant_listener(self.sessions)
        self._app_name = ""

        @event.listens_for(self.sessions, "after_begin")
        def name_transaction(session: Session, transaction: Any, connection: Any) -> None:
            connection.exec_driver_sql("SELECT set_config('application_name', %s, true)",
                                       (self._app_name,))

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.engine.dispose()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- psycopg

    def _psycopg(self, conn: psycopg.Connection[Any], pattern: Pattern, tenant: Tenant,
                 prepare: bool | None) -> Outcome:
        params = pattern.params(tenant)
        try:
            with conn.transaction():
                set_tenant(conn, tenant.id)
                for statement in pattern.before:
                    conn.execute(statement, _used(statement, params), prepare=prepare)
                if pattern.stream:
                    with conn.cursor(name="corpus_stream") as named:
                        named.itersize = STREAM_BATCH
                        named.execute(pattern.sql, _used(pattern.sql, params))
                        rows = list(named)
                else:
                    cur = conn.execute(pattern.sql, _used(pattern.sql, params),
                                       prepare=prepare)
                    rows = cur.fetchall() if cur.description else [(cur.rowcount,)]
                for statement in pattern.after:
                    conn.execute(statement, _used(statement, params), prepare=prepare)
        except psycopg.Error as exc:
            return error_of(exc)
        return outcome_of(rows)

    # -- SQLAlchemy

    def _orm(self, pattern: Pattern, tenant: Tenant) -> Outcome:
        params = pattern.params(tenant)
        try:
            with tenant_session(self.sessions, tenant.id) as session:
                for statement in pattern.before:
                    session.execute(text(to_text(statement)), _used(statement, params))
                if pattern.orm is not None:
                    rows = pattern.orm(session, tenant)
                else:
                    options = ({"stream_results": True, "yield_per": STREAM_BATCH}
                               if pattern.stream else {})
                    result: Any = session.execute(text(pattern.text_sql),
                                                  _used(pattern.sql, params),
                                                  execution_options=options)
                    rows = ([tuple(r) for r in result] if result.returns_rows
                            else [(result.rowcount,)])
                for statement in pattern.after:
                    session.execute(text(to_text(statement)), _used(statement, params))
                session.commit()
        except Exception as exc:  # SQLAlchemy wraps the driver's error
            return error_of(getattr(exc, "orig", None) or exc)
        return outcome_of(rows)

    def run(self, pattern: Pattern, tenant: Tenant, mode: str, repeat: bool = True
            ) -> list[Outcome]:
        """Every run of ``pattern`` in ``mode`` for ``tenant``, in order (``repeat``: the
        prepared modes as many times as :data:`PREPARED_RUNS` / :data:`GENERIC_RUNS` say,
        else once)."""
        name = app_name(pattern.name, mode)
        if mode == "orm":
            self._app_name = name
            return [self._orm(pattern, tenant)]
        conn = self.conns[mode]
        conn.execute("SELECT set_config('application_name', %s, false)", [name])
        if mode == "simple":
            return [self._psycopg(conn, pattern, tenant, prepare=False)]
        runs = (PREPARED_RUNS if mode == "prepared" else GENERIC_RUNS) if repeat else 1
        return [self._psycopg(conn, pattern, tenant, prepare=True) for _ in range(runs)]


def _used(statement: str, params: dict[str, Any]) -> dict[str, Any]:
    """Only the parameters ``statement`` names (psycopg refuses none, but a prepared
    statement's types come from what is passed)."""
    return {k: v for k, v in params.items() if f"%({k})s" in statement}




Results = dict[tuple[str, str, int], list[Outcome]]
"""(pattern, mode, tenant id) -> the outcome of every run."""


SMALL_TENANT_MODES = ("simple", "generic")
"""The modes the smaller tenant runs in: its custom plan (simple) and the generic one. The
biggest tenant runs in every mode: its custom plans are the ones that scan."""


def run_corpus(app_dsn: str, patterns: Sequence[Pattern], big: Tenant, small: Tenant,
               repeat: bool = True) -> Results:
    """Every pattern in every mode. ``repeat=False`` (the enforced pass, whose results are
    compared with every run of the observed one) runs each mode once."""
    out: Results = {}
    with Runner(app_dsn) as runner:
        for pattern in patterns:
            for mode in MODES:
                for tenant in (big, small):
                    if tenant is small and mode not in SMALL_TENANT_MODES:
                        continue
                    key = (pattern.name, mode, tenant.id)
                    out[key] = runner.run(pattern, tenant, mode, repeat)
    return out


@contextlib.contextmanager
def app_connection(app_dsn: str, application_name: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(app_dsn, autocommit=True,
                         application_name=application_name) as conn:
        yield conn
