"""Steps: the unit of work every stage produces and the executor runs.

A step is data. It says what SQL to run, which lock that takes (and so what it blocks),
whether it may run inside a transaction, how to tell it is already done, how to undo it and
what it will cost. Stages build steps; the executor runs them; renderers print them. Nobody
else builds SQL.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from psycopg import sql

from rls_migrate.catalog import QualifiedName

Query = sql.SQL | sql.Composed
"""A statement psycopg can execute."""

T = TypeVar("T")


class Later(Generic[T]):
    """A step's SQL, built when something first reads it: ``Step(statements=Later(fn))``.

    ``plan`` in text form prints what each step does and locks, not its statements: on a
    schema of 1,000 tables, composing 77,000 statements nobody reads was half of its time.
    The builder must depend only on what is fixed when it is made (the catalog, the playbook,
    the table), never on planning state that changes later, so that the statements are the
    same whenever they are read."""

    __slots__ = ("build",)

    def __init__(self, build: Callable[[], T]) -> None:
        self.build = build


_REQUIRED: Any = object()


class Built(Generic[T]):
    """A dataclass field that takes a value or a :class:`Later`, and reads as the value
    (built once, on first read, then kept)."""

    def __init__(self, default: T = _REQUIRED) -> None:
        self.default = default
        self.slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_built_" + name

    def __get__(self, obj: object | None, owner: type | None = None) -> T:
        if obj is None:  # the dataclass asking for the field's default
            if self.default is _REQUIRED:
                raise AttributeError(self.slot)
            return self.default
        value = obj.__dict__[self.slot]
        if type(value) is Later:
            value = obj.__dict__[self.slot] = value.build()
        return value  # type: ignore[no-any-return]

    def __set__(self, obj: object, value: T | Later[T]) -> None:
        obj.__dict__[self.slot] = value

STAGES = ("prepare", "add-column", "backfill", "constrain", "index", "observe", "enforce")
"""The runbook, in order. ``rollback --to S`` undoes every stage after S."""


class Lock(enum.Enum):
    """Table lock levels, weakest first, with what each one blocks (for the plan)."""

    NONE = ("none", "nothing")
    ACCESS_SHARE = ("ACCESS SHARE", "only ACCESS EXCLUSIVE (DDL that rewrites or drops)")
    ROW_EXCLUSIVE = ("ROW EXCLUSIVE", "SHARE and stronger: CREATE INDEX (non-concurrent)")
    SHARE_UPDATE_EXCLUSIVE = (
        "SHARE UPDATE EXCLUSIVE",
        "other schema changes, VACUUM and CREATE INDEX CONCURRENTLY on the table; "
        "reads and writes go on",
    )
    SHARE = ("SHARE", "INSERT, UPDATE, DELETE: writes wait")
    SHARE_ROW_EXCLUSIVE = ("SHARE ROW EXCLUSIVE", "INSERT, UPDATE, DELETE: writes wait")
    EXCLUSIVE = ("EXCLUSIVE", "everything but plain reads")
    ACCESS_EXCLUSIVE = (
        "ACCESS EXCLUSIVE",
        "every read and write; while it waits, every later query on the table queues "
        "behind it (taken under lock_timeout and retried)",
    )

    @property
    def label(self) -> str:
        return self.value[0]

    @property
    def blocks(self) -> str:
        return self.value[1]

    @property
    def strength(self) -> int:
        return list(Lock).index(self)

    @property
    def pg_mode(self) -> str:
        """The ``pg_locks.mode`` name of this level (``AccessExclusiveLock``)."""
        return "".join(w.capitalize() for w in self.label.split()) + "Lock"

    @property
    def is_strong(self) -> bool:
        """Locks that block writes or reads: taken only under lock_timeout, with retries."""
        return self.strength >= Lock.SHARE.strength


LOCKS_BY_LABEL: Mapping[str, Lock] = MappingProxyType({lock.label: lock for lock in Lock})
"""Each lock level by its label (``"ACCESS EXCLUSIVE"``), as journals and revision files
write it."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def __add__(self, other: Estimate) -> Estimate:
        return Estimate(self.rows + other.rows, self.bytes + other.bytes,
                        self.seconds + other.seconds)


@dataclasses.dataclass(frozen=True)
class BackfillSpec:
    """What a batched backfill does; the executor runs it batch by batch.

    ``batch_sql`` fills one key range; it takes the parameters ``lo`` and ``hi`` (tuples
    matching ``key_columns``; ``lo`` is None for the first batch), ``range_uses`` times.
    ``max_key_sql`` returns the largest key when the backfill starts, which bounds the loop
    (rows inserted later are filled by the sync trigger). ``next_key_sql`` returns the key
    ``batch_size`` rows ahead; where ``integer_key`` (a one-column smallint/integer/bigint
    key) and the keys are dense, the runner adds instead of asking.
    """

    table: QualifiedName
    key_columns: tuple[str, ...]  # primary key, or ("ctid",) for a table without one
    uses_ctid: bool
    column: str
    parent: QualifiedName | None
    # The statements (each may be given as a Later: built when first read).
    batch_sql: Built[Query] = Built()
    first_batch_sql: Built[Query] = Built()
    next_key_sql: Built[Query] = Built()
    first_next_key_sql: Built[Query] = Built()
    max_key_sql: Built[Query] = Built()
    remaining_sql: Built[Query] = Built()
    # The whole fill as one UPDATE (SQL scripts, benchmarks).
    single_statement_sql: Built[Query] = Built()
    orphans_sql: Built[Query | None] = Built()
    conflicts_sql: Built[Query | None] = Built()
    # Planner settings each batch transaction sets locally: the join strategy that keeps a
    # batch from reading the whole parent (see stages/backfill.py: HASH_GATHERED for
    # batches that gather their parents first, PROBE_PARENT for the others).
    batch_settings: tuple[tuple[str, str], ...] = ()
    # How many times the batch statements take their key range: their parameters are
    # (lo, hi) (or (hi,) for the first batch) repeated that many times.
    range_uses: int = 1
    integer_key: bool = False
    # The table's orphans policy (tables.X.orphans, else options.backfill.orphans); None:
    # the options' (a spec built by hand).
    orphans: str | None = None


@dataclasses.dataclass(frozen=True)
class Step:
    """One unit of work. ``id`` is deterministic (``add_column:public.comments``): the
    journal records outcomes by it, which is what makes every stage resumable."""

    id: str
    stage: str
    kind: str
    table: QualifiedName | None
    description: str
    statements: Built[tuple[sql.Composable, ...]] = Built()
    lock: Lock = Lock.NONE
    transactional: bool = True
    done_check: Built[Query | None] = Built(None)
    inverse: Built[tuple[sql.Composable, ...]] = Built(())
    inverse_transactional: bool = True
    inverse_lock: Lock = Lock.NONE
    inverse_needs: str | None = None  # an option that must be given to undo it (drop_columns)
    estimate: Estimate = Estimate()
    risks: tuple[str, ...] = ()
    why: str = ""
    backfill: Built[BackfillSpec | None] = Built(None)

    @property
    def needs_lock_timeout(self) -> bool:
        return self.lock.is_strong

    def render(self, conn: object | None = None) -> list[str]:
        """The statements as text (for display and the SQL script)."""
        return [as_string(s, conn) for s in self.statements]

    def statements_once(self) -> tuple[sql.Composable, ...]:
        """:attr:`statements` without keeping them on the step if they were not built yet:
        a renderer that reads each step once then holds one step's SQL at a time, not the
        plan's (35 MB of text for 1,000 tables, and the objects it is made of)."""
        return _unkept(self, "statements")  # type: ignore[no-any-return]

    def inverse_once(self) -> tuple[sql.Composable, ...]:
        """:attr:`inverse`, as :meth:`statements_once`."""
        return _unkept(self, "inverse")  # type: ignore[no-any-return]

    def backfill_once(self) -> BackfillSpec | None:
        """:attr:`backfill`, as :meth:`statements_once`."""
        return _unkept(self, "backfill")  # type: ignore[no-any-return]


def _unkept(step: Step, name: str) -> Any:
    value = step.__dict__["_built_" + name]
    return value.build() if type(value) is Later else value


@dataclasses.dataclass(frozen=True)
class StagePlan:
    name: str
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    @property
    def estimate(self) -> Estimate:
        total = Estimate()
        for step in self.steps:
            total = total + step.estimate
        return total


@dataclasses.dataclass(frozen=True)
class Plan:
    stages: tuple[StagePlan, ...]
    risks: tuple[str, ...] = ()
    lock_timeout_ms: float = 100.0  # the playbook's, for renderers that write SQL to run

    def stage(self, name: str) -> StagePlan:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    @property
    def steps(self) -> list[Step]:
        return [s for stage in self.stages for s in stage.steps]


def stage_index(name: str) -> int:
    return STAGES.index(name)


def as_string(statement: sql.Composable, conn: object | None = None) -> str:
    """Render a composed statement. With a connection, quoting is exact; without one,
    psycopg approximates it (good enough for display; files are rendered with one)."""
    return statement.as_string(conn)  # type: ignore[arg-type]


def stages_between(after: str | None, upto: str) -> Sequence[str]:
    """Stages strictly after ``after`` up to and including ``upto``."""
    start = 0 if after is None else stage_index(after) + 1
    return STAGES[start : stage_index(upto) + 1]
