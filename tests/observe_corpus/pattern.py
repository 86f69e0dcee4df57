"""What a corpus pattern is: a statement, the parameters it takes from a tenant's facts, and
optionally statements around it in the same transaction and an ORM form."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, LiteralString

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from observe_corpus.database import Tenant

Params = dict[str, Any]
Rows = list[tuple[Any, ...]]
OrmForm = Callable[["Session", "Tenant"], Rows]

CAUSES = {
    "A-join": "a hash, merge or nested-loop join that scans a child table scoped through its "
              "parent",
    "A-recursive": "a recursive CTE that scans a child table at every level",
    "A-exists": "EXISTS / IN / NOT EXISTS through a parent",
    "B-plan": "plan-dependent: a generic plan or a big tenant's custom plan scans more",
    "C-leakproof": "a non-leakproof filter (lower(), ILIKE, ~, ->>) runs after the policy",
    "D-any": "= ANY($1) with psycopg's smallint[] lists",
    "view": "a view (security_invoker, and a plain one owned by the table owner)",
    "partition": "the partitioned table and a partition named directly",
    "upsert": "INSERT ... ON CONFLICT",
    "update-from": "UPDATE ... FROM / UPDATE ... WHERE IN (sub-select)",
    "delete": "DELETE ... USING / WHERE EXISTS",
    "insert": "INSERT ... VALUES / INSERT ... SELECT through a parent",
}


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A correct code path: run with the tenant set, it asks only for that tenant's rows.

    ``sql`` uses psycopg's ``%(name)s`` placeholders, filled by ``params`` from the tenant's
    facts. ``before``/``after`` run in the same transaction around it (the rows a delete
    removes are inserted by ``before``; what an insert adds is removed by ``after``), so every
    run leaves the database as it found it and the observe and enforce passes see the same
    data. ``orm``: the same query written with the SQLAlchemy ORM; without one, the ORM mode
    runs ``sql`` through an ORM session. ``stream``: the application reads the rows through a
    server-side cursor (psycopg's named cursors, SQLAlchemy's ``yield_per``), so the
    statement that runs the plan is a ``FETCH``."""

    name: str
    cause: str
    sql: LiteralString
    params: Callable[[Tenant], Params]
    before: Sequence[LiteralString] = ()
    after: Sequence[LiteralString] = ()
    orm: OrmForm | None = None
    stream: bool = False  # fetched through a server-side cursor (DECLARE ... FETCH)
    known: str | None = None  # a reported bug that makes this pattern close the gate today

    def __post_init__(self) -> None:
        assert self.cause in CAUSES, self.cause
        assert len(self.name) <= 40, self.name  # application_name holds 63 bytes

    @property
    def text_sql(self) -> str:
        """``sql`` with SQLAlchemy ``text()`` placeholders (``:name``, and ``%`` for
        psycopg's ``%%``: SQLAlchemy escapes it itself)."""
        return to_text(self.sql)


def to_text(statement: str) -> str:
    """psycopg's ``%(name)s`` placeholders as SQLAlchemy ``text()``'s ``:name``."""
    return re.sub(r"%\((\w+)\)s", r":\1", statement).replace("%%", "%")


def by_name(patterns: Sequence[Pattern]) -> dict[str, Pattern]:
    out = {p.name: p for p in patterns}
    assert len(out) == len(patterns), "pattern names must be unique"
    return out
