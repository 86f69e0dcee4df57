"""The progress display of a running stage: what the executor tells it
(:class:`ProgressHook`), and a ``rich`` implementation for terminals."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Protocol, TextIO

from rls_migrate.steps import Step


class ProgressHook(Protocol):
    """What the executor tells a progress display."""

    def stage_started(self, stage: str, total: int) -> None: ...

    def step_started(self, step: Step) -> None: ...

    def step_advance(self, step: Step, completed: float, total: float | None) -> None: ...

    def step_finished(self, step: Step, outcome: str) -> None: ...

    def stage_finished(self, stage: str) -> None: ...


class RichProgress:
    """A ``rich`` progress bar per stage (advanced per step) and, for steps that report
    their own progress (a backfill's rows), a bar per step. Use as a context manager."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskID,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(file=stream if stream is not None else sys.stderr),
        )
        self._stages: dict[str, TaskID] = {}
        self._steps: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def stage_started(self, stage: str, total: int) -> None:
        self._stages[stage] = self._progress.add_task(stage, total=total)

    def step_started(self, step: Step) -> None:
        task = self._stages.get(step.stage)
        if task is not None:
            self._progress.update(task, description=f"{step.stage}: {step.id}")

    def step_advance(self, step: Step, completed: float, total: float | None) -> None:
        task = self._steps.get(step.id)
        if task is None:
            task = self._steps[step.id] = self._progress.add_task(f"  {step.id}", total=total)
        self._progress.update(task, completed=completed, total=total)

    def step_finished(self, step: Step, outcome: str) -> None:
        task = self._stages.get(step.stage)
        if task is not None:
            self._progress.advance(task)
        step_task = self._steps.pop(step.id, None)
        if step_task is not None:
            self._progress.remove_task(step_task)

    def stage_finished(self, stage: str) -> None:
        task = self._stages.get(stage)
        if task is not None:
            self._progress.update(task, description=stage)


def make_progress(stream: TextIO | None = None) -> RichProgress | None:
    """A progress display, or None when it would garble the output: JSON logs, or a stream
    that is not a terminal."""
    from rls_migrate import logs

    out = stream if stream is not None else sys.stderr
    if logs.log_format() == "json":
        return None
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    return RichProgress(out) if tty else None
