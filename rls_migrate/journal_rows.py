"""The journal's rows as values: a backfill's checkpoint, a data anomaly, a done step with
its inverse as it ran, and the rows of ``status`` (one per step, one per table and stage).
:class:`~rls_migrate.journal.Journal` reads them; the CLI and the runner show them."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where a table's backfill stands."""

    table_name: str
    last_key: tuple[Any, ...] | None
    max_key: tuple[Any, ...] | None
    rows_done: int
    batches: int
    finished: bool
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class Anomaly:
    table_name: str
    kind: str
    count: int
    sample: Any
    found_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class JournaledStep:
    """A done step as the journal keeps it, with its inverse as it was when it ran."""

    step_id: str
    stage: str
    table_name: str | None
    kind: str | None
    inverse: list[str] | None  # statements as text; None: journaled before revision 0003
    inverse_lock: str | None  # Lock.label
    inverse_transactional: bool
    inverse_needs: str | None


@dataclasses.dataclass(frozen=True)
class StepRow:
    """One step as the journal knows it: current state and its latest outcome."""

    step_id: str
    stage: str
    table_name: str | None
    status: str | None  # done | undone | None (never completed)
    last_outcome: str | None
    last_error: str | None
    attempts: int | None
    at: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class StatusRow:
    """One (table, stage) cell of the ``status`` matrix."""

    table_name: str | None
    stage: str
    steps: int
    done: int
    undone: int
    last_outcome: str | None
    last_error: str | None
    updated_at: dt.datetime | None

    @property
    def state(self) -> str:
        """``done``, ``undone``, ``failed``, ``partial`` or ``pending``, for display."""
        if self.steps and self.done == self.steps:
            return "done"
        if self.last_outcome in ("failed", "interrupted"):
            return self.last_outcome
        if self.steps and self.undone == self.steps:
            return "undone"
        return "partial" if self.done else "pending"
