"""Tenant context for SQLAlchemy sessions, one transaction at a time.

:func:`install_tenant_listener` hooks a session factory's ``after_begin`` event: at the start
of every transaction a session of that factory opens, it runs
``SELECT set_config(:name, :value, true)`` with bound parameters, taking the tenant from
``session.info["tenant_id"]`` (:data:`TENANT_INFO_KEY`). The setting is transaction-local, so
it never outlives the transaction on a pooled connection, and a new transaction after
``commit()`` gets it again. A session without a tenant sets ``''`` (no tenant): whatever a
session-level ``SET`` may have left on the pooled connection does not apply to it.

Sync::

    engine = create_engine(sqlalchemy_url(dsn))
    Session = sessionmaker(engine)
    install_tenant_listener(Session)

    with tenant_session(Session, 42) as session:
        session.scalars(select(Invoice)).all()      # tenant 42's rows only
        session.commit()                            # the next transaction is tenant 42 too

Async::

    engine = create_async_engine(sqlalchemy_url(dsn))
    AsyncSessionLocal = async_sessionmaker(engine)
    install_tenant_listener(AsyncSessionLocal)

    async with async_tenant_session(AsyncSessionLocal, 42) as session:
        (await session.scalars(select(Invoice))).all()

A FastAPI dependency (the tenant comes from your authentication, never from a raw header)::

    async def db_session(
        user: User = Depends(current_user),
    ) -> AsyncIterator[AsyncSession]:
        async with async_tenant_session(AsyncSessionLocal, user.tenant_id) as session:
            yield session

    @app.get("/invoices")
    async def invoices(session: AsyncSession = Depends(db_session)) -> list[InvoiceOut]:
        return list(await session.scalars(select(Invoice)))
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from rls_migrate.context import (
    DEFAULT_KEY_TYPE,
    DEFAULT_SETTING,
    TenantContextError,
    TenantKeyType,
    normalize_key_type,
    normalize_tenant_id,
    validate_setting_name,
)

__all__ = [
    "TENANT_INFO_KEY",
    "TenantListenerConfig",
    "async_tenant_session",
    "install_tenant_listener",
    "sqlalchemy_url",
    "tenant_session",
]

TENANT_INFO_KEY = "tenant_id"
"""The ``Session.info`` key the listener reads the tenant from. Changing it on an open
session takes effect at the session's next transaction."""

_SET_LOCAL = text("SELECT set_config(:name, :value, true)")

_S = TypeVar("_S", bound=Session)
_AS = TypeVar("_AS", bound=AsyncSession)


@dataclasses.dataclass(frozen=True)
class TenantListenerConfig:
    """What an installed listener sets: the setting name and the key type."""

    setting: str
    key_type: TenantKeyType


# Session classes with a listener, so tenant_session() can refuse a factory that has none
# (its sessions would run unscoped) and a second install is a no-op. Weak: sessionmakers
# create a class each, and those can be garbage collected.
_INSTALLED: weakref.WeakKeyDictionary[type[Session], TenantListenerConfig] = (
    weakref.WeakKeyDictionary()
)


def _listener_config(session_class: type[Session]) -> TenantListenerConfig | None:
    # Listeners on a class also fire for its subclasses: look along the MRO.
    for cls in session_class.__mro__:
        config = _INSTALLED.get(cls)
        if config is not None:
            return config
    return None


def _async_sync_class(factory: async_sessionmaker[Any]) -> type[Session]:
    """The sync Session class an async_sessionmaker's sessions wrap."""
    found = factory.kw.get("sync_session_class") or factory.class_.sync_session_class
    if not (isinstance(found, type) and issubclass(found, Session)):
        raise TenantContextError(f"{factory!r} has no usable sync_session_class: {found!r}")
    return found


def _sync_class_of(
    target: sessionmaker[Any] | async_sessionmaker[Any] | type[Session] | type[AsyncSession],
) -> type[Session]:
    """The Session class whose events serve ``target`` (see install_tenant_listener)."""
    if isinstance(target, sessionmaker):
        return target.class_  # a class of its own, made by sessionmaker()
    if isinstance(target, async_sessionmaker):
        base = _async_sync_class(target)
        if base in _INSTALLED:
            return base
        # Listening on the shared base (Session itself) would scope every session of the
        # process: give this factory a subclass of its own, as sessionmaker() does.
        own = type(base.__name__, (base,), {})
        target.configure(sync_session_class=own)
        return own
    if isinstance(target, type) and issubclass(target, AsyncSession):
        target = target.sync_session_class
    if isinstance(target, type) and issubclass(target, Session):
        if target is Session:
            raise TenantContextError(
                "install_tenant_listener(Session) would scope every Session in the process: "
                "pass a sessionmaker/async_sessionmaker or a Session subclass of your own "
                "(for an AsyncSession subclass, set its sync_session_class)"
            )
        return target
    raise TenantContextError(
        f"install_tenant_listener() takes a sessionmaker, an async_sessionmaker or a "
        f"Session subclass, not {target!r}"
    )


def install_tenant_listener(
    target: sessionmaker[Any] | async_sessionmaker[Any] | type[Session] | type[AsyncSession],
    *,
    setting: str = DEFAULT_SETTING,
    key_type: str = DEFAULT_KEY_TYPE,
) -> TenantListenerConfig:
    """Set the tenant at the start of every transaction of ``target``'s sessions.

    ``target`` is a ``sessionmaker``, an ``async_sessionmaker`` (its sessions get a sync
    Session subclass of their own, which carries the listener), or a Session subclass.
    Installing twice with the same arguments is a no-op; with others, an error.

    Example::

        Session = sessionmaker(engine)
        install_tenant_listener(Session, setting="app.tenant_id", key_type="uuid")
    """
    config = TenantListenerConfig(validate_setting_name(setting), normalize_key_type(key_type))
    session_class = _sync_class_of(target)
    existing = _listener_config(session_class)
    if existing == config:
        return config
    if existing is not None:
        raise TenantContextError(
            f"a tenant listener is already installed there with {existing}; "
            f"refusing a second one with {config}"
        )

    def set_tenant_after_begin(
        session: Session, transaction: SessionTransaction, connection: Connection
    ) -> None:
        tenant_id = session.info.get(TENANT_INFO_KEY)
        # No tenant: set '' anyway, so a session-level SET left on this pooled connection
        # by other code cannot scope (or unscope) this transaction.
        value = "" if tenant_id is None else normalize_tenant_id(tenant_id, config.key_type)
        connection.execute(_SET_LOCAL, {"name": config.setting, "value": value})

    event.listen(session_class, "after_begin", set_tenant_after_begin)
    _INSTALLED[session_class] = config
    return config


def _require_listener(session_class: type[Session], factory: object) -> TenantListenerConfig:
    config = _listener_config(session_class)
    if config is None:
        raise TenantContextError(
            f"no tenant listener on {factory!r}: call install_tenant_listener() on it first, "
            "or its sessions would run without tenant context"
        )
    return config


@contextlib.contextmanager
def tenant_session(
    factory: sessionmaker[_S], tenant_id: object, **session_kwargs: Any
) -> Iterator[_S]:
    """A session whose every transaction is scoped to ``tenant_id`` (including those after
    a ``commit()``); closed on exit, not committed (call ``commit()`` as usual).

    The id is checked against the listener's key type before the session opens.

    Example::

        with tenant_session(Session, 42) as session:
            session.add(Invoice(total=10))
            session.commit()
    """
    config = _require_listener(factory.class_, factory)
    normalize_tenant_id(tenant_id, config.key_type)
    info = {**session_kwargs.pop("info", {}), TENANT_INFO_KEY: tenant_id}
    with factory(info=info, **session_kwargs) as session:
        yield session


@contextlib.asynccontextmanager
async def async_tenant_session(
    factory: async_sessionmaker[_AS], tenant_id: object, **session_kwargs: Any
) -> AsyncIterator[_AS]:
    """:func:`tenant_session` for an ``async_sessionmaker``.

    Example::

        async with async_tenant_session(AsyncSessionLocal, 42) as session:
            await session.execute(select(Invoice))
    """
    config = _require_listener(_async_sync_class(factory), factory)
    normalize_tenant_id(tenant_id, config.key_type)
    info = {**session_kwargs.pop("info", {}), TENANT_INFO_KEY: tenant_id}
    async with factory(info=info, **session_kwargs) as session:
        yield session


def sqlalchemy_url(dsn: str, *, drivername: str = "postgresql+psycopg") -> URL:
    """An SQLAlchemy URL for a libpq DSN (``host=... dbname=...`` or ``postgresql://``), for
    the psycopg 3 driver, which serves both ``create_engine`` and ``create_async_engine``.

    Parameters other than user, password, host, port and dbname go to the query string,
    which the driver passes on to libpq; so do multi-host lists and socket directories.

    >>> sqlalchemy_url("host=db port=5433 dbname=app user=web sslmode=require")
    postgresql+psycopg://web@db:5433/app?sslmode=require
    """
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    host = params.pop("host", None)
    port = params.pop("port", None)
    if host is not None and ("," in host or host.startswith("/") or port and "," in port):
        # URL has one host and an integer port: leave lists and socket paths to libpq.
        params["host"] = host
        if port is not None:
            params["port"] = port
        host = port = None
    return URL.create(
        drivername,
        username=params.pop("user", None),
        password=params.pop("password", None),
        host=host,
        port=int(port) if port else None,
        database=params.pop("dbname", None),
        query=params,
    )
