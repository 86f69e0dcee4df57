"""The executor: runs a stage's steps against a live database without taking it down.

For every step, in order:

* **already done?** its ``done_check`` (a one-boolean query, in a read-only transaction)
  says so, or, for a step without one, the journal does: the step is journaled ``skipped``;
* **transactional steps** run in one short transaction that starts with
  ``set_config('lock_timeout', ..., true)`` and ``set_config('statement_timeout', ..., true)``
  (``Options.lock_timeout``, ``Options.ddl_statement_timeout``). Setting both at the start
  of *every* attempt is what bounds each wait: a timeout set once and lost with the first
  rolled-back transaction would let the second attempt queue forever behind a long
  transaction, and every application query on the table would queue behind it;
* **non-transactional steps** (``CREATE INDEX CONCURRENTLY``) run in autocommit with
  session-level timeouts set before every attempt and restored after it.
  ``statement_timeout`` is ``Options.statement_timeout`` (0: none, a build can take hours);
  ``lock_timeout`` applies only when the step takes a strong lock: a weak lock (SHARE UPDATE
  EXCLUSIVE) blocks no application query while it waits, and a CIC must be able to wait
  for older transactions;
* **retries**: a lock timeout rolls back and retries after a jittered exponential backoff
  (full jitter, ``backoff_initial * 2**n`` capped at ``backoff_max``), up to
  ``Options.retries`` times; deadlocks and serialization failures a few times. A step that
  gives up raises :class:`~rls_migrate.errors.StepFailed` naming the table, the lock, the
  attempts and the sessions holding conflicting locks;
* every outcome is journaled (``done``/``skipped``/``failed``/``interrupted``) with its
  timings and attempts, and logged (structlog); Ctrl-C cancels the running statement, rolls
  back, journals ``interrupted`` and raises :class:`~rls_migrate.errors.Interrupted`
  (exit code 130).

Kind handlers
-------------
A step kind can bring its own runner (the backfill does: batches, checkpoints, adaptive
size). Register a function ``(executor, step) -> StepOutcome``::

    @Executor.register("backfill")
    def run_backfill(executor: Executor, step: Step) -> StepOutcome: ...

The contract:

* it is called only when the step is not already done (the executor evaluated the
  ``done_check`` and the journal first) and never in a dry run;
* on entry ``executor.conn`` is idle and in autocommit; the handler must leave it idle;
* each unit of work should go through :meth:`Executor.run_in_transaction`, which sets the
  timeouts at the start of every attempt and retries lock timeouts, deadlocks and
  serialization failures with backoff (its cursor is the one to pass to
  :func:`rls_migrate.journal.record_batch` / :func:`~rls_migrate.journal.save_checkpoint`,
  so a batch and its checkpoint commit together);
* it returns a :class:`~rls_migrate.outcomes.StepOutcome` (``StepOutcome.finish(step,
  "done", started=..., attempts=..., details=...)``); the executor journals it: a handler
  never journals the step itself;
* it signals failure by raising :class:`~rls_migrate.errors.StepFailed` (any other
  ``psycopg.Error`` is wrapped into one); a ``KeyboardInterrupt`` must propagate;
* it may report progress with ``executor.progress.step_advance(step, completed, total)``
  when ``executor.progress`` is set, and log with ``executor.log``.

``Executor.before_retry_hooks[kind]`` is called as ``(executor, step, error)`` before each
retry of a step of that kind (e.g. drop the INVALID index a failed CIC left, with
:func:`rls_migrate.stages.index.build_watcher.drop_invalid_index`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, TypeVar

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.pq import TransactionStatus

from rls_migrate.errors import Interrupted, StepFailed
from rls_migrate.outcomes import StageResult, StepOutcome, now
from rls_migrate.playbook import Options
from rls_migrate.progress import ProgressHook
from rls_migrate.step_messages import (
    error_message,
    first_line,
    interrupted_message,
    lock_failure_message,
    ms_setting,
)
from rls_migrate.steps import Lock, StagePlan, Step

if TYPE_CHECKING:
    # Not at run time: planning imports the stages, which register their kind handlers
    # here, and `rls-migrate plan` should not pay for structlog and the journal it never uses.
    from structlog.typing import FilteringBoundLogger

    from rls_migrate.journal import Journal

T = TypeVar("T")
Conn: TypeAlias = psycopg.Connection[Any]
KindHandler: TypeAlias = Callable[["Executor", Step], "StepOutcome"]
RetryHook: TypeAlias = Callable[["Executor", Step, BaseException], None]

TRANSIENT_RETRIES = 3
"""Retries after a deadlock or a serialization failure (lock timeouts use Options.retries)."""

_RETRY_ON_LOCK = (psycopg.errors.LockNotAvailable,)
_RETRY_TRANSIENT = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


# --------------------------------------------------------------------------- the executor


def _query(statement: sql.Composable) -> sql.SQL | sql.Composed:
    """Steps hold any ``Composable``; psycopg executes ``SQL`` or ``Composed``."""
    if isinstance(statement, sql.SQL | sql.Composed):
        return statement
    return sql.Composed([statement])


@dataclasses.dataclass
class _Trace:
    """Attempts of the step being run, for the journal and the failure message."""

    attempts: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.attempts)


class Executor:
    """Runs steps on ``conn`` (autocommit, idle between steps) and journals them.

    ``sleep`` and ``rng`` are injectable so tests can observe the backoff.
    """

    kind_handlers: ClassVar[dict[str, KindHandler]] = {}
    """Step kind -> custom runner (see the module docstring for the contract)."""
    before_retry_hooks: ClassVar[dict[str, RetryHook]] = {}
    """Step kind -> called as ``(executor, step, error)`` before each retry."""

    def __init__(
        self,
        conn: Conn,
        options: Options,
        journal: Journal,
        *,
        logger: FilteringBoundLogger | None = None,
        progress: ProgressHook | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        handlers: Mapping[str, KindHandler] | None = None,
        retry_hooks: Mapping[str, RetryHook] | None = None,
    ) -> None:
        if not conn.autocommit:
            raise ValueError(
                "the executor needs an autocommit connection: it opens its own short "
                "transactions, and CREATE INDEX CONCURRENTLY cannot run inside one"
            )
        self.conn = conn
        self.options = options
        self.journal = journal
        if logger is None:
            from rls_migrate import logs

            logger = logs.get_logger()
        self.log = logger
        self.progress = progress
        self.sleep = sleep
        self.rng = rng if rng is not None else random.Random()
        self._handlers = dict(handlers or {})
        self._retry_hooks = dict(retry_hooks or {})
        self.last_result: StageResult | None = None
        """The outcomes so far of the current or last run: after StepFailed or
        Interrupted, what had been done before it."""

    # -- registry

    @classmethod
    def register(cls, kind: str) -> Callable[[KindHandler], KindHandler]:
        """Decorator: ``@Executor.register("backfill")`` makes a function the runner of a
        step kind, for every executor."""
        def decorate(handler: KindHandler) -> KindHandler:
            cls.kind_handlers[kind] = handler
            return handler
        return decorate

    def handler_for(self, kind: str) -> KindHandler | None:
        return self._handlers.get(kind) or type(self).kind_handlers.get(kind)

    def retry_hook_for(self, kind: str) -> RetryHook | None:
        return self._retry_hooks.get(kind) or type(self).before_retry_hooks.get(kind)

    # -- timeouts

    def lock_timeout_for(self, lock: Lock, transactional: bool) -> float:
        """Transactions are short by design, so they always get lock_timeout; outside a
        transaction (CIC) only strong locks do (see the module docstring)."""
        if transactional or lock.is_strong:
            return self.options.lock_timeout
        return 0.0

    def statement_timeout_for(self, transactional: bool, lock: Lock | None = None) -> float:
        """``ddl_statement_timeout`` for short transactional DDL that holds a strong lock;
        ``statement_timeout`` for the rest: a VALIDATE or a concurrent build scans the
        whole table while holding only a weak lock, and must not be cut at 5 s."""
        if transactional and (lock is None or lock.is_strong):
            return self.options.ddl_statement_timeout
        return self.options.statement_timeout

    @staticmethod
    def _set_timeouts(db: Conn | psycopg.Cursor[Any], lock_ms: float, statement_ms: float,
                      *, local: bool) -> None:
        db.execute(
            "SELECT set_config('lock_timeout', %s, %s), set_config('statement_timeout', %s, %s)",
            [ms_setting(lock_ms), local, ms_setting(statement_ms), local],
        )

    @contextlib.contextmanager
    def _session_timeouts(self, lock_ms: float, statement_ms: float) -> Iterator[None]:
        """Session-level timeouts for one autocommit attempt, then the previous values."""
        row = self.conn.execute(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
        ).fetchone()
        assert row is not None
        self._set_timeouts(self.conn, lock_ms, statement_ms, local=False)
        restore = [row[0], row[1]]
        try:
            yield
        except BaseException:
            # Best effort: the original error matters more than a failed restore.
            with contextlib.suppress(psycopg.Error):
                self._restore(restore)
            raise
        self._restore(restore)

    def _restore(self, values: Sequence[str]) -> None:
        self.conn.execute(
            "SELECT set_config('lock_timeout', %s, false), "
            "set_config('statement_timeout', %s, false)",
            list(values),
        )

    def backoff_ms(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(backoff_max, backoff_initial * 2**retry)]."""
        cap = min(self.options.backoff_max, self.options.backoff_initial * 2.0 ** min(retry, 60))
        return self.rng.uniform(0.0, cap)

    # -- retries

    def _retrying(
        self,
        step: Step,
        attempt: Callable[[], T],
        *,
        lock: Lock,
        lock_ms: float,
        trace: _Trace,
        action: str = "run",
    ) -> T:
        """Call ``attempt`` until it succeeds, retrying lock timeouts (Options.retries
        times) and deadlocks / serialization failures (TRANSIENT_RETRIES times)."""
        lock_retries = transient_retries = 0
        while True:
            t0 = time.monotonic()
            error: psycopg.Error
            try:
                result = attempt()
            except _RETRY_ON_LOCK as exc:
                error = exc
                trace.attempts.append(
                    {"ms": (time.monotonic() - t0) * 1000.0, "error": "lock_timeout"})
                if lock_retries >= self.options.retries:
                    raise StepFailed(
                        lock_failure_message(self.conn, step, lock, lock_ms, trace.count, action)
                    ) from exc
                lock_retries += 1
            except _RETRY_TRANSIENT as exc:
                error = exc
                trace.attempts.append({"ms": (time.monotonic() - t0) * 1000.0,
                                       "error": type(exc).__name__})
                if transient_retries >= TRANSIENT_RETRIES:
                    raise StepFailed(
                        f"step {step.id} ({action}) failed after {trace.count} attempts: "
                        f"{first_line(exc)}"
                    ) from exc
                transient_retries += 1
            except BaseException as exc:
                # Not retried (an error, Ctrl-C): the attempt still counts.
                trace.attempts.append({"ms": (time.monotonic() - t0) * 1000.0,
                                       "error": type(exc).__name__})
                raise
            else:
                trace.attempts.append({"ms": (time.monotonic() - t0) * 1000.0, "error": None})
                return result
            delay = self.backoff_ms(lock_retries + transient_retries - 1)
            self.log.info(
                "step.retry", step=step.id, action=action, attempt=trace.count,
                error=type(error).__name__, waited_ms=round(trace.attempts[-1]["ms"], 1),
                lock_timeout_ms=lock_ms, backoff_ms=round(delay, 1),
            )
            self.sleep(delay / 1000.0)
            hook = self.retry_hook_for(step.kind)
            if hook is not None:
                hook(self, step, error)

    # -- public building blocks for handlers

    def run_in_transaction(
        self,
        step: Step,
        body: Callable[[psycopg.Cursor[Any]], T],
        *,
        lock: Lock | None = None,
        lock_timeout_ms: float | None = None,
        statement_timeout_ms: float | None = None,
        action: str = "run",
    ) -> tuple[T, int]:
        """Run ``body(cursor)`` in one transaction that starts by setting lock_timeout and
        statement_timeout (locally), retrying with backoff on lock timeouts, deadlocks and
        serialization failures. Returns ``(body's result, attempts)``."""
        lock = step.lock if lock is None else lock
        lock_ms = self.options.lock_timeout if lock_timeout_ms is None else lock_timeout_ms
        statement_ms = (self.options.ddl_statement_timeout if statement_timeout_ms is None
                        else statement_timeout_ms)
        trace = _Trace()

        def attempt() -> T:
            with self.conn.transaction(), self.conn.cursor() as cur:
                self._set_timeouts(cur, lock_ms, statement_ms, local=True)
                return body(cur)

        result = self._retrying(step, attempt, lock=lock, lock_ms=lock_ms, trace=trace,
                                action=action)
        return result, trace.count

    def _execute(
        self,
        step: Step,
        statements: Sequence[sql.Composable],
        *,
        transactional: bool,
        lock: Lock,
        trace: _Trace,
        action: str,
    ) -> None:
        lock_ms = self.lock_timeout_for(lock, transactional)
        statement_ms = self.statement_timeout_for(transactional, lock)
        if transactional:
            def attempt() -> None:
                with self.conn.transaction(), self.conn.cursor() as cur:
                    self._set_timeouts(cur, lock_ms, statement_ms, local=True)
                    for statement in statements:
                        cur.execute(_query(statement))
        else:
            def attempt() -> None:
                with self._session_timeouts(lock_ms, statement_ms):
                    for statement in statements:
                        self.conn.execute(_query(statement))

        self._retrying(step, attempt, lock=lock, lock_ms=lock_ms, trace=trace, action=action)

    def _already_done(self, step: Step, trace: _Trace) -> str | None:
        """Why the step need not run (``done_check`` / ``journal``), or None."""
        if step.done_check is None:
            return "journal" if self.journal.step_status(step.id) == "done" else None
        check = step.done_check

        def evaluate(cur: psycopg.Cursor[Any]) -> bool:
            cur.execute(_query(check))
            row = cur.fetchone()
            return bool(row and row[0])

        def attempt() -> bool:
            # Read only: evaluating a check (and a dry run) must never change anything.
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.execute("SET TRANSACTION READ ONLY")
                self._set_timeouts(cur, self.options.lock_timeout,
                                   self.options.ddl_statement_timeout, local=True)
                return evaluate(cur)

        try:
            done = self._retrying(step, attempt, lock=Lock.ACCESS_SHARE,
                                  lock_ms=self.options.lock_timeout, trace=trace,
                                  action="done check")
        except psycopg.Error as exc:
            raise StepFailed(error_message(step, exc, "done check")) from exc
        return "done_check" if done else None

    # -- stages

    def run(self, stage_plan: StagePlan, *, dry_run: bool = False) -> StageResult:
        """Run a stage's steps in order, skipping those already done. ``dry_run``:
        evaluate the done checks only, execute and journal nothing."""
        return self._run_steps(stage_plan.name, stage_plan.steps, dry_run=dry_run,
                               rollback=False)

    def rollback(self, stage_plan: StagePlan, *, dry_run: bool = False) -> StageResult:
        """Undo a stage: run the inverses of the steps the journal has as ``done``, in
        reverse order, with the same lock care; journal them ``undone``. Steps without an
        inverse stay as they are (outcome ``skipped``, not journaled)."""
        return self._run_steps(stage_plan.name, tuple(reversed(stage_plan.steps)),
                               dry_run=dry_run, rollback=True)

    def _run_steps(self, stage: str, steps: Sequence[Step], *, dry_run: bool,
                   rollback: bool) -> StageResult:
        label = f"rollback {stage}" if rollback else stage
        outcomes: list[StepOutcome] = []
        self.last_result = StageResult(label, (), dry_run)
        self.log.info("stage.start", stage=label, steps=len(steps), dry_run=dry_run)
        if self.progress is not None:
            self.progress.stage_started(stage, len(steps))
        for step in steps:
            if self.progress is not None:
                self.progress.step_started(step)
            if rollback:
                outcome = self._undo_one(step, dry_run=dry_run)
            else:
                outcome = self._run_one(step, dry_run=dry_run)
            outcomes.append(outcome)
            self.last_result = StageResult(label, tuple(outcomes), dry_run)
            if self.progress is not None:
                self.progress.step_finished(step, outcome.outcome)
        if self.progress is not None:
            self.progress.stage_finished(stage)
        result = StageResult(label, tuple(outcomes), dry_run)
        self.log.info("stage.done", stage=label, done=result.done, skipped=result.skipped,
                      undone=result.undone, would_run=len(result.would_run),
                      ms=round(result.duration_ms, 1))
        return result

    def _run_one(self, step: Step, *, dry_run: bool) -> StepOutcome:
        started = now()
        trace = _Trace()
        log = self.log.bind(step=step.id, stage=step.stage, kind=step.kind,
                            table=None if step.table is None else str(step.table))
        with self._guard(step, started, trace, log, dry_run=dry_run, action="run"):
            reason = self._already_done(step, trace)
            if reason is not None:
                outcome = StepOutcome.finish(step, "skipped", started=started, attempts=0,
                                             details={"reason": reason})
                log.info("step.skipped", reason=reason)
                if not dry_run:
                    self._record(step, outcome)
                return outcome
            if dry_run:
                log.info("step.would_run", lock=step.lock.label)
                return StepOutcome.finish(step, "would-run", started=started, attempts=0)
            log.info("step.start", lock=step.lock.label, transactional=step.transactional)
            handler = self.handler_for(step.kind)
            if handler is not None:
                outcome = handler(self, step)
                self._ensure_idle(step)
            else:
                trace.attempts.clear()  # done-check attempts are not the step's
                self._execute(step, step.statements, transactional=step.transactional,
                              lock=step.lock, trace=trace, action="run")
                outcome = StepOutcome.finish(
                    step, "done", started=started, attempts=trace.count,
                    details={"attempt_ms": [round(a["ms"], 1) for a in trace.attempts],
                             "lock_timeout_ms": self.lock_timeout_for(step.lock,
                                                                      step.transactional)},
                )
            self._record(step, outcome)
            log.info(f"step.{outcome.outcome}", attempts=outcome.attempts,
                     ms=round(outcome.duration_ms, 1))
            return outcome
        raise AssertionError("unreachable: _guard re-raises")  # pragma: no cover

    def _undo_one(self, step: Step, *, dry_run: bool) -> StepOutcome:
        started = now()
        trace = _Trace()
        log = self.log.bind(step=step.id, stage=step.stage, kind=step.kind,
                            table=None if step.table is None else str(step.table))
        status = self.journal.step_status(step.id)
        if status != "done" or not step.inverse:
            reason = "no inverse" if status == "done" else "not done"
            log.info("step.undo_skipped", reason=reason, status=status)
            return StepOutcome.finish(step, "skipped", started=started, attempts=0,
                                      details={"reason": reason})
        if dry_run:
            return StepOutcome.finish(step, "would-run", started=started, attempts=0)
        with self._guard(step, started, trace, log, dry_run=False, action="rollback"):
            log.info("step.undo", lock=step.inverse_lock.label)
            self._execute(step, step.inverse, transactional=step.inverse_transactional,
                          lock=step.inverse_lock, trace=trace, action="rollback")
            outcome = StepOutcome.finish(
                step, "undone", started=started, attempts=trace.count,
                details={"attempt_ms": [round(a["ms"], 1) for a in trace.attempts]},
            )
            self._record(step, outcome)
            log.info("step.undone", attempts=outcome.attempts, ms=round(outcome.duration_ms, 1))
            return outcome
        raise AssertionError("unreachable: _guard re-raises")  # pragma: no cover

    # -- failure handling

    @contextlib.contextmanager
    def _guard(self, step: Step, started: dt.datetime, trace: _Trace,
               log: FilteringBoundLogger, *, dry_run: bool, action: str) -> Iterator[None]:
        """Journal ``failed``/``interrupted`` and raise the typed error."""
        try:
            yield
        except KeyboardInterrupt:
            # psycopg has already asked the server to cancel the running statement.
            self._recover_connection()
            if not dry_run:
                self._record(step, StepOutcome.finish(
                    step, "interrupted", started=started, attempts=trace.count,
                    error="interrupted (Ctrl-C)", details=self._details(trace)),
                    quiet=True)
            log.warning("step.interrupted", attempts=trace.count)
            raise Interrupted(interrupted_message(step, action),
                              step_id=step.id, stage=step.stage) from None
        except StepFailed as exc:
            self._fail(step, started, trace, log, exc.message, dry_run=dry_run)
            raise
        except psycopg.Error as exc:
            message = error_message(step, exc, action)
            self._fail(step, started, trace, log, message, dry_run=dry_run)
            raise StepFailed(message) from exc
        except Exception as exc:
            # A bug (ours or a handler's): journal it, keep the traceback.
            self._fail(step, started, trace, log, f"{type(exc).__name__}: {exc}",
                       dry_run=dry_run)
            raise

    def _fail(self, step: Step, started: dt.datetime, trace: _Trace,
              log: FilteringBoundLogger, message: str, *, dry_run: bool) -> None:
        self._recover_connection()
        log.error("step.failed", attempts=trace.count, error=message)
        if not dry_run:
            self._record(step, StepOutcome.finish(step, "failed", started=started,
                                            attempts=trace.count, error=message,
                                            details=self._details(trace)), quiet=True)

    @staticmethod
    def _details(trace: _Trace) -> dict[str, Any]:
        return {"attempts": trace.attempts}

    def _recover_connection(self) -> None:
        """Leave the connection idle after an error or a cancel."""
        if self.conn.closed or self.conn.broken:
            return
        if self.conn.info.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                self.conn.rollback()

    def _ensure_idle(self, step: Step) -> None:
        if self.conn.info.transaction_status != TransactionStatus.IDLE:
            self._recover_connection()
            raise StepFailed(
                f"step {step.id}: the {step.kind!r} handler left a transaction open "
                "(it was rolled back); handlers must commit or roll back their own work"
            )

    def _record(self, step: Step, outcome: StepOutcome, *, quiet: bool = False) -> None:
        if quiet and self.conn.broken:
            # The session died (its backend was terminated): nothing can be journaled on it,
            # and the step's own error is the one to raise.
            self.log.error("journal.write_failed", step=outcome.step_id, error="connection lost")
            return
        try:
            self.journal.record(step, outcome.outcome, outcome.attempts, outcome.started,
                                outcome.finished, outcome.error, outcome.details,
                                duration_ms=outcome.duration_ms)
        except psycopg.Error as exc:
            if not quiet:
                raise
            # Already failing: the step's own error matters more than the journal's.
            self.log.error("journal.write_failed", step=outcome.step_id,
                           error=first_line(exc))
