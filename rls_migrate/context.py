"""Pool-safe tenant context for psycopg 3 and psycopg_pool.

RLS policies read the tenant from a custom setting (``app.tenant_id`` by default, see
DESIGN §5). That setting must be **transaction-local**: a session-level ``SET`` stays on the
server connection and is handed to the next client of a pool (psycopg_pool, SQLAlchemy's
pool, PgBouncer in transaction mode). Every helper here therefore:

* validates the tenant id against the key type *before* anything is sent
  (:func:`normalize_tenant_id` raises :class:`InvalidTenantId`);
* sends it as a bound parameter of ``SELECT set_config(name, value, true)``, never as SQL text;
* refuses to run where the setting would evaporate at once or outlive its block.

Example::

    with psycopg.connect(dsn) as conn:
        with tenant_transaction(conn, 42):
            rows = conn.execute("SELECT * FROM invoices").fetchall()   # tenant 42 only

    with make_tenant_pool(dsn, max_size=10) as pool:
        with pooled_tenant_connection(pool, 42) as conn:
            conn.execute("SELECT * FROM invoices")

Policies must read the setting as
``NULLIF(current_setting('app.tenant_id', true), '')::<type>``: after a transaction-local
setting ends (or after :func:`pool_reset`) it reads ``''``, not NULL.
"""

from __future__ import annotations

import contextlib
import re
import reprlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeAlias, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from rls_migrate.errors import RlsMigrateError

__all__ = [
    "DEFAULT_KEY_TYPE",
    "DEFAULT_SETTING",
    "MAX_TEXT_TENANT_ID_LENGTH",
    "InvalidTenantId",
    "InvalidTenantSetting",
    "NotInTransaction",
    "TenantConnectionPool",
    "TenantContextError",
    "TenantKeyType",
    "current_tenant",
    "make_tenant_pool",
    "normalize_key_type",
    "normalize_tenant_id",
    "pool_reset",
    "pooled_tenant_connection",
    "set_tenant",
    "tenant_transaction",
    "validate_setting_name",
]

TenantKeyType: TypeAlias = Literal["bigint", "integer", "smallint", "uuid", "text"]
"""The column types a tenant key may have."""

DEFAULT_SETTING = "app.tenant_id"
DEFAULT_KEY_TYPE: TenantKeyType = "bigint"
MAX_TEXT_TENANT_ID_LENGTH = 1024
"""Longest ``text`` tenant id accepted: real ids are short; a huge one is a bug or an attack."""

_INT_RANGES: dict[str, tuple[int, int]] = {
    "smallint": (-(2**15), 2**15 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}
_KEY_TYPE_ALIASES: dict[str, TenantKeyType] = {
    "bigint": "bigint", "int8": "bigint",
    "integer": "integer", "int": "integer", "int4": "integer",
    "smallint": "smallint", "int2": "smallint",
    "uuid": "uuid",
    "text": "text", "varchar": "text", "character varying": "text",
}
# ASCII digits only: str.isdigit() would accept '١٢' or '²', which PostgreSQL rejects.
_DECIMAL = re.compile(r"-?[0-9]{1,40}")
_CANONICAL_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
# PostgreSQL's valid_custom_variable_name(), ASCII part: dot-separated identifier parts, at
# least two, each starting with a letter or underscore, then letters, digits, '_' or '$'.
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)+")

# The one statement that sets context. Bound parameters, and `true` = transaction-local.
_SET_LOCAL = "SELECT set_config(%s, %s, true)"

_short_repr = reprlib.Repr()
_short_repr.maxstring = 60
_short_repr.maxother = 60


class TenantContextError(RlsMigrateError):
    """Tenant context could not be set safely."""


class InvalidTenantId(TenantContextError):
    """A tenant id does not fit the key type; nothing was sent to the server."""

    def __init__(self, value: object, key_type: str, expected: str) -> None:
        super().__init__(
            f"invalid tenant id {_short_repr.repr(value)} for a {key_type} tenant key: "
            f"expected {expected}"
        )
        self.value = value
        self.key_type = key_type
        self.expected = expected


class InvalidTenantSetting(TenantContextError):
    """The setting name or key type is not one the helpers accept."""

    def __init__(self, what: str, value: object, expected: str) -> None:
        super().__init__(f"invalid {what} {_short_repr.repr(value)}: expected {expected}")
        self.value = value


class NotInTransaction(TenantContextError):
    """A transaction-local setting would not last (autocommit, no transaction), or would
    outlive the block that asked for it (a transaction already open)."""


# --------------------------------------------------------------------------- validation


def normalize_key_type(key_type: str) -> TenantKeyType:
    """``key_type`` as one of :data:`TenantKeyType` (``int8`` -> ``bigint``, ...).

    >>> normalize_key_type("INT8")
    'bigint'
    """
    found = _KEY_TYPE_ALIASES.get(key_type.strip().lower()) if isinstance(key_type, str) else None
    if found is None:
        raise InvalidTenantSetting(
            "tenant key type", key_type, "one of bigint, integer, smallint, uuid, text"
        )
    return found


def normalize_tenant_id(value: object, key_type: str = DEFAULT_KEY_TYPE) -> str:
    """The text to send for ``value``, after checking it fits ``key_type``.

    Integer keys take an ``int`` (not ``bool``) or a string of ASCII decimal digits, within
    the column type's range; ``uuid`` keys take a :class:`uuid.UUID` or the canonical
    8-4-4-4-12 hex form; ``text`` keys take a non-empty ``str`` without NUL of at most
    :data:`MAX_TEXT_TENANT_ID_LENGTH` characters. The empty string is refused for every
    type: policies read ``''`` as "no tenant".

    >>> normalize_tenant_id("007", "bigint")
    '7'
    >>> normalize_tenant_id(True)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    rls_migrate.context.InvalidTenantId: invalid tenant id True for a bigint tenant key
    """
    kind = normalize_key_type(key_type)
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        expected = f"an int in [{low}, {high}] or a string of decimal digits in that range"
        if isinstance(value, bool):  # bool is an int subclass: True would become tenant 1
            raise InvalidTenantId(value, kind, expected)
        if isinstance(value, int):
            number = int(value)
        elif isinstance(value, str) and _DECIMAL.fullmatch(value):
            number = int(value)
        else:
            raise InvalidTenantId(value, kind, expected)
        if not low <= number <= high:
            raise InvalidTenantId(value, kind, expected)
        return str(number)
    if kind == "uuid":
        expected = "a uuid.UUID or a string like 'xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx'"
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
            return value.lower()
        raise InvalidTenantId(value, kind, expected)
    expected = (
        f"a non-empty str of at most {MAX_TEXT_TENANT_ID_LENGTH} characters, "
        "without NUL, encodable as UTF-8"
    )
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT_TENANT_ID_LENGTH:
        raise InvalidTenantId(value, kind, expected)
    if "\x00" in value:  # PostgreSQL text cannot hold NUL; the driver would fail mid-request
        raise InvalidTenantId(value, kind, expected)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        raise InvalidTenantId(value, kind, expected) from None
    return value


def validate_setting_name(name: str) -> str:
    """``name`` if it is a custom setting such as ``app.tenant_id``, else
    :class:`InvalidTenantSetting`. Built-in settings (no dot) are refused: a tenant id must
    never land in ``search_path`` or ``role``.

    >>> validate_setting_name("app.tenant_id")
    'app.tenant_id'
    """
    if not isinstance(name, str) or not _SETTING_NAME.fullmatch(name):
        raise InvalidTenantSetting(
            "tenant setting name", name,
            "a custom setting of dot-separated identifiers, like 'app.tenant_id'",
        )
    return name


# --------------------------------------------------------------------------- psycopg


def _connection_of(
    conn_or_cursor: psycopg.Connection[Any] | psycopg.Cursor[Any],
) -> psycopg.Connection[Any]:
    if isinstance(conn_or_cursor, psycopg.Cursor):
        return conn_or_cursor.connection
    return conn_or_cursor


def set_tenant(
    conn_or_cursor: psycopg.Connection[Any] | psycopg.Cursor[Any],
    tenant_id: object,
    *,
    setting: str = DEFAULT_SETTING,
    key_type: str = DEFAULT_KEY_TYPE,
) -> None:
    """Set the tenant for the rest of the current transaction.

    In a non-autocommit connection this starts a transaction if none is open (the setting
    lasts until ``commit()``/``rollback()``). In autocommit mode it must run inside
    ``conn.transaction()``, else :class:`NotInTransaction`.

    Example::

        with conn.transaction():
            set_tenant(conn, 42)
            conn.execute("SELECT count(*) FROM invoices")
    """
    name = validate_setting_name(setting)
    value = normalize_tenant_id(tenant_id, key_type)
    conn = _connection_of(conn_or_cursor)
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        raise NotInTransaction(
            "set_tenant() on an autocommit connection outside a transaction: the setting "
            "would end with its own statement. Use tenant_transaction(conn, tenant_id) or "
            "call it inside 'with conn.transaction():'"
        )
    # prepare=False: never a server-side prepared statement, which PgBouncer in transaction
    # mode (before 1.21) cannot route, whatever prepare_threshold the connection has.
    conn.execute(_SET_LOCAL, [name, value], prepare=False)


def current_tenant(
    conn_or_cursor: psycopg.Connection[Any] | psycopg.Cursor[Any],
    *,
    setting: str = DEFAULT_SETTING,
) -> str | None:
    """The tenant the policies see now, as text, or None when no context is set (the setting
    is unset or ``''``). In a non-autocommit connection this opens a transaction if none is."""
    name = validate_setting_name(setting)
    conn = _connection_of(conn_or_cursor)
    row = conn.execute(
        "SELECT NULLIF(current_setting(%s, true), '')", [name], prepare=False
    ).fetchone()
    return None if row is None or row[0] is None else str(row[0])


@contextlib.contextmanager
def tenant_transaction(
    conn: psycopg.Connection[Any],
    tenant_id: object,
    *,
    setting: str = DEFAULT_SETTING,
    key_type: str = DEFAULT_KEY_TYPE,
) -> Iterator[psycopg.Connection[Any]]:
    """A transaction with the tenant set: committed on success, rolled back on error, and
    the context ends with it.

    The connection must be idle (no transaction open): inside an outer transaction this
    would be a savepoint, and a transaction-local setting outlives a released savepoint.

    Example::

        with tenant_transaction(conn, 42):
            conn.execute("UPDATE invoices SET paid = true WHERE id = %s", [7])
    """
    name = validate_setting_name(setting)
    normalize_tenant_id(tenant_id, key_type)  # fail before BEGIN is sent
    status = conn.info.transaction_status
    if status != TransactionStatus.IDLE:
        raise NotInTransaction(
            f"tenant_transaction() needs an idle connection, this one is "
            f"{TransactionStatus(status).name}: the tenant would stay set after the block "
            "until the open transaction ends. Commit or roll back first"
        )
    with conn.transaction():
        set_tenant(conn, tenant_id, setting=name, key_type=key_type)
        yield conn


# --------------------------------------------------------------------------- psycopg_pool


def pool_reset(conn: psycopg.Connection[Any], *, setting: str = DEFAULT_SETTING) -> None:
    """psycopg_pool ``reset=`` hook: clear ``setting`` on a returned connection so no tenant
    context survives to the next checkout, even one left by a session-level ``SET``.

    The pool calls it with an idle connection (it rolled back any open transaction) and
    discards the connection if this raises, so a failure cannot leak context either.
    """
    name = validate_setting_name(setting)
    # Why set_config(name, '', false) and not something else:
    # * RESET <name> goes back to the session *default*, which is whatever ALTER
    #   ROLE/DATABASE ... SET or the startup 'options' gave: a tenant configured there would
    #   survive. '' is "no tenant" to every policy (NULLIF), whatever the defaults are.
    # * RESET ALL / DISCARD ALL also undo what the pool's configure= hook set (timeouts,
    #   search_path); DISCARD ALL also drops temp tables and prepared statements, and cannot
    #   run inside a transaction block.
    conn.execute("SELECT set_config(%s, '', false)", [name], prepare=False)
    if not conn.autocommit:
        # The statement opened a transaction; commit keeps the change (a rollback would
        # undo it) and leaves the connection IDLE, which the pool requires.
        conn.commit()


PoolConnection: TypeAlias = psycopg.Connection[TupleRow]


class TenantConnectionPool(ConnectionPool[PoolConnection]):
    """A :class:`psycopg_pool.ConnectionPool` that clears the tenant setting on every
    return and remembers the setting and key type for :meth:`tenant_connection`.
    Build it with :func:`make_tenant_pool`."""

    def __init__(
        self,
        conninfo: str = "",
        *,
        setting: str = DEFAULT_SETTING,
        key_type: str = DEFAULT_KEY_TYPE,
        **pool_kwargs: Any,
    ) -> None:
        self.tenant_setting = validate_setting_name(setting)
        self.tenant_key_type: TenantKeyType = normalize_key_type(key_type)
        user_reset: Callable[[PoolConnection], None] | None = pool_kwargs.pop("reset", None)

        def reset(conn: PoolConnection) -> None:
            pool_reset(conn, setting=self.tenant_setting)
            if user_reset is not None:
                user_reset(conn)

        super().__init__(conninfo, reset=reset, **pool_kwargs)

    @contextlib.contextmanager
    def tenant_connection(self, tenant_id: object) -> Iterator[PoolConnection]:
        """Shorthand for ``pooled_tenant_connection(self, tenant_id)``."""
        with pooled_tenant_connection(self, tenant_id) as conn:
            yield conn


def make_tenant_pool(
    conninfo: str,
    *,
    setting: str = DEFAULT_SETTING,
    key_type: str = DEFAULT_KEY_TYPE,
    **pool_kwargs: Any,
) -> TenantConnectionPool:
    """A connection pool whose ``reset`` hook is :func:`pool_reset` (a ``reset=`` you pass
    runs after it). Other keyword arguments go to :class:`psycopg_pool.ConnectionPool`.

    Example::

        with make_tenant_pool(dsn, max_size=10) as pool:
            with pooled_tenant_connection(pool, 42) as conn:
                conn.execute("SELECT * FROM invoices")

    Behind PgBouncer in transaction mode, pass ``kwargs={"prepare_threshold": None}``.
    """
    return TenantConnectionPool(conninfo, setting=setting, key_type=key_type, **pool_kwargs)


_Conn = TypeVar("_Conn", bound="psycopg.Connection[Any]")


@contextlib.contextmanager
def pooled_tenant_connection(
    pool: ConnectionPool[_Conn],
    tenant_id: object,
    *,
    setting: str | None = None,
    key_type: str | None = None,
    timeout: float | None = None,
) -> Iterator[_Conn]:
    """Check a connection out, open a transaction with the tenant set, yield the connection;
    commit (or roll back on error) and return it to the pool.

    ``setting``/``key_type`` default to the pool's own when it is a
    :class:`TenantConnectionPool`, else to ``app.tenant_id``/``bigint``. The id is checked
    before a connection is taken.
    """
    if isinstance(pool, TenantConnectionPool):
        setting = setting or pool.tenant_setting
        key_type = key_type or pool.tenant_key_type
    name = validate_setting_name(setting or DEFAULT_SETTING)
    kind = normalize_key_type(key_type or DEFAULT_KEY_TYPE)
    normalize_tenant_id(tenant_id, kind)
    with (
        pool.connection(timeout=timeout) as conn,
        tenant_transaction(conn, tenant_id, setting=name, key_type=kind),
    ):
        yield conn
