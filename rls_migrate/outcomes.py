"""What running steps produced: one :class:`StepOutcome` per step (its outcome, attempts,
timings, error), one :class:`StageResult` per stage run or rollback. The executor and the kind
handlers return them, the runner reports them, the journal stores them."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from rls_migrate.steps import Step


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True)
class StepOutcome:
    """What happened to one step. ``outcome``: ``done``, ``skipped``, ``failed``,
    ``interrupted``, ``undone``, or ``would-run`` in a dry run."""

    step_id: str
    stage: str
    kind: str
    table: str | None
    outcome: str
    attempts: int
    started: dt.datetime
    finished: dt.datetime
    duration_ms: float
    error: str | None = None
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def finish(
        cls,
        step: Step,
        outcome: str,
        *,
        started: dt.datetime,
        attempts: int = 1,
        error: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> StepOutcome:
        """An outcome that ends now."""
        finished = now()
        return cls(
            step_id=step.id, stage=step.stage, kind=step.kind,
            table=None if step.table is None else str(step.table), outcome=outcome,
            attempts=attempts, started=started, finished=finished,
            duration_ms=(finished - started).total_seconds() * 1000.0, error=error,
            details=dict(details or {}),
        )


@dataclasses.dataclass(frozen=True)
class StageResult:
    """The outcomes of one stage run (or rollback), in the order the steps ran."""

    stage: str
    outcomes: tuple[StepOutcome, ...] = ()
    dry_run: bool = False

    def _count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes if o.outcome == outcome)

    @property
    def done(self) -> int:
        return self._count("done")

    @property
    def skipped(self) -> int:
        return self._count("skipped")

    @property
    def failed(self) -> int:
        return self._count("failed")

    @property
    def undone(self) -> int:
        return self._count("undone")

    @property
    def would_run(self) -> list[str]:
        """Dry run: the ids of the steps that would run."""
        return [o.step_id for o in self.outcomes if o.outcome == "would-run"]

    @property
    def duration_ms(self) -> float:
        return sum(o.duration_ms for o in self.outcomes)

    def outcome(self, step_id: str) -> StepOutcome:
        for o in self.outcomes:
            if o.step_id == step_id:
                return o
        raise KeyError(step_id)
