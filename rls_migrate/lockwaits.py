"""Lock waits as the server measured them, from its log.

With ``log_lock_waits = on`` a session that waits longer than ``deadlock_timeout`` logs
``process N still waiting for ...``, and, once granted, ``process N acquired <mode> on <what>
after <ms> ms``: the exact time the session waited, measured by the server, not by a client
that also counts CPU scheduling and network. The demo and the test suites use it to show
that the application never waits longer than ``lock_timeout`` because of the migration.

Parsing needs ``%u@%d`` right before the severity in ``log_line_prefix`` (as the toolkit's
test servers log: ``'%m [%p] %q%u@%d '``) to tell whose wait it was.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

_ACQUIRED = re.compile(
    r" (?P<user>\S+)@(?P<db>\S+) LOG:  process \d+ acquired (?P<mode>\w+) on (?P<what>.+?)"
    r" after (?P<ms>[\d.]+) ms(?: at character \d+)?$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class LockWait:
    user: str
    database: str
    mode: str  # AccessShareLock, ShareLock, ...
    what: str  # "relation 16385 of database 5", "transaction 812", ...
    ms: float

    @property
    def kind(self) -> str:
        """``relation`` (a table lock: DDL), ``row`` (a row or the transaction that holds
        one) or ``other``."""
        if self.what.startswith("relation"):
            return "relation"
        if self.what.startswith(("transaction", "tuple")):
            return "row"
        return "other"


def log_lock_waits(conn: psycopg.Connection[Any], dbname: str, threshold_ms: int = 10) -> None:
    """Make new sessions of ``dbname`` log every lock wait longer than ``threshold_ms``
    (needs a superuser: both settings are superuser-only)."""
    for setting, value in (("log_lock_waits", "on"), ("deadlock_timeout", f"{threshold_ms}ms")):
        conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
            sql.Identifier(dbname), sql.Identifier(setting), sql.Literal(value)))


def parse(log_text: str, *, user: str | None = None, database: str | None = None
          ) -> list[LockWait]:
    """The granted waits in ``log_text``, of ``user`` in ``database`` when given."""
    waits = [LockWait(m["user"], m["db"], m["mode"], m["what"], float(m["ms"]))
             for m in _ACQUIRED.finditer(log_text)]
    return [w for w in waits if (user is None or w.user == user)
            and (database is None or w.database == database)]


def read_since(path: Path, offset: int) -> str:
    """The log written after ``offset`` (the file's size when the measurement began)."""
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")
