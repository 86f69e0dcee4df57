"""Finding the DSN and opening connections with errors a person can act on."""

from __future__ import annotations

import os
import re

import psycopg
from psycopg.conninfo import conninfo_to_dict

from rls_migrate.errors import ConnectionFailed, ServerTooOld, UsageError

DSN_VARIABLES = ("RLS_MIGRATE_DSN", "DATABASE_URL")
MIN_SERVER_VERSION = 130000
"""PostgreSQL 13: the oldest server the toolkit supports."""


DSN_DEFAULT_HELP = "default: the playbook's dsn_env, then $RLS_MIGRATE_DSN, then $DATABASE_URL"
"""What every command's ``--dsn`` help says of :func:`resolve_dsn`'s order."""
DSN_HELP = f"libpq connection string or postgresql:// URL; {DSN_DEFAULT_HELP}"


def resolve_dsn(dsn: str | None, env_var: str | None = None) -> str:
    """``--dsn`` if given, else the playbook's variable, else RLS_MIGRATE_DSN, else
    DATABASE_URL."""
    if dsn:
        return dsn
    names = ([env_var] if env_var else []) + list(DSN_VARIABLES)
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    raise UsageError(
        "no database to connect to: pass --dsn, or set "
        + ", ".join(names)
        + " (a libpq connection string or postgresql:// URL)"
    )


def describe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    host = params.get("host", "localhost")
    port = params.get("port", "5432")
    user = params.get("user", "")
    dbname = params.get("dbname", "")
    who = f"{user}@" if user else ""
    return f"{who}{host}:{port}/{dbname}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # libpq prefixes with 'connection failed: ' and adds context lines; keep what matters.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else type(exc).__name__
    return re.sub(r"^connection (to server .*? )?failed: ", "", line)


_PASSWORD_PATTERNS = (
    re.compile(r"^\s*postgres(?:ql)?://[^@/?#]*?:([^@/?#]*)@"),  # postgresql://u:PW@host
    re.compile(r"[?&]password=([^&#]*)"),  # postgresql://host/db?password=PW
    re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)"),  # password=PW
)


def _redact(message: str, dsn: str) -> str:
    """``message`` without the password of ``dsn``. libpq quotes the text it cannot parse,
    an unparseable URI whole (``in URI: "postgresql://u:secret@[bad"``), so the password
    is masked inside quoted parts of the message."""
    secrets = {
        value
        for pattern in _PASSWORD_PATTERNS
        for match in pattern.finditer(dsn)
        for value in (match.group(1), match.group(1).strip("'"))
        if value
    }
    if not secrets:
        return message

    def mask(quoted: re.Match[str]) -> str:
        text = quoted.group(0)
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    return re.sub(r'"[^"]*"', mask, message)


def connect(
    dsn: str,
    *,
    autocommit: bool = True,
    application_name: str = "rls-migrate",
    connect_timeout: int = 10,
    min_version: int = MIN_SERVER_VERSION,
) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection, or raise :class:`ConnectionFailed` / :class:`ServerTooOld` with
    one clear line (never the password)."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConnectionFailed(
            f"the DSN is not a valid connection string: {_redact(_first_line(exc), dsn)}"
        ) from None
    try:
        conn = psycopg.connect(
            dsn,
            autocommit=autocommit,
            application_name=application_name,
            connect_timeout=connect_timeout,
        )
    except psycopg.OperationalError as exc:
        reason = _redact(_first_line(exc), dsn)
        hint = ""
        if "password authentication failed" in reason:
            hint = " (check the user and password)"
        elif "Connection refused" in reason or "could not connect" in reason:
            hint = " (is the server running and accepting TCP connections there?)"
        elif "does not exist" in reason:
            hint = " (check the database name)"
        raise ConnectionFailed(
            f"cannot connect to {describe_dsn(dsn)}: {reason}{hint}"
        ) from None
    check_server_version(conn, min_version)
    return conn


def check_server_version(conn: psycopg.Connection[tuple[object, ...]], min_version: int) -> None:
    version = conn.info.server_version
    if version < min_version:
        shown = conn.info.parameter_status("server_version") or str(version)
        conn.close()
        raise ServerTooOld(
            f"PostgreSQL {shown} is too old: rls-migrate needs PostgreSQL "
            f"{min_version // 10000} or newer"
        )
