"""What an operator reads when a step fails, gives up or is interrupted: what happened, where,
and what to do next (wait for the lock holder, raise a timeout, run the command again). The
executor raises these texts in :class:`~rls_migrate.errors.StepFailed` and
:class:`~rls_migrate.errors.Interrupted`."""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.errors

from rls_migrate.lockholders import describe_holder, lock_holders
from rls_migrate.steps import Lock, Step


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def ms_setting(ms: float) -> str:
    """A duration for lock_timeout/statement_timeout; 0 disables it, and a positive value
    never rounds down to 0 (which would disable it too)."""
    if ms <= 0:
        return "0"
    return f"{max(1, round(ms))}ms"


def lock_failure_message(conn: psycopg.Connection[Any], step: Step, lock: Lock, lock_ms: float,
                         attempts: int, action: str) -> str:
    """A step that could not take its lock in ``attempts`` tries: the sessions holding a
    conflicting lock now (read on ``conn``), and how to get past them."""
    where = f"on {step.table}" if step.table is not None else "it needs"
    text = (
        f"step {step.id} ({action}) gave up: could not take the {lock.label} lock "
        f"{where} within lock_timeout {ms_setting(lock_ms)} in {attempts} attempts"
    )
    if lock.is_strong:
        text += f" (while waiting it blocks {lock.blocks.split(';')[0]})"
    if step.table is None:
        return text + ". Raise options.retries or options.lock_timeout, or retry later."
    try:
        holders = lock_holders(conn, step.table, conflicting_with=lock)
    except psycopg.Error as exc:
        return text + f". (Could not list the lock holders: {first_line(exc)}.)"
    if not holders:
        return text + (". No other session holds a lock on the table now: the blocker "
                       "has finished, so running the stage again should succeed.")
    listed = "; ".join(describe_holder(h) for h in holders[:5])
    more = f" and {len(holders) - 5} more" if len(holders) > 5 else ""
    pids = [h["pid"] for h in holders if h.get("pid") is not None]
    end = (f" or end it with SELECT pg_terminate_backend({pids[0]})" if pids else "")
    return (
        text + f". Held by: {listed}{more}. Let that transaction finish{end}, then run the "
        f"stage again; options.lock_timeout and options.retries set the patience."
    )


def error_message(step: Step, exc: psycopg.Error, action: str) -> str:
    state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    text = f"step {step.id} ({action}) failed{state}: {first_line(exc)}"
    if isinstance(exc, psycopg.errors.QueryCanceled):
        text += (" (statement_timeout: raise options.ddl_statement_timeout, or "
                 "options.statement_timeout for non-transactional steps)")
    return text


def interrupted_message(step: Step, action: str) -> str:
    if action == "rollback":
        again = "run the same rollback again (it undoes what is still done)"
    else:
        again = (f"run the same command again (rls-migrate apply <playbook> --stage "
                 f"{step.stage}): steps already done are skipped")
    partial = "" if step.transactional else (
        " This step runs outside a transaction and may have left partial work (an "
        "INVALID index, say) that the next run detects and redoes.")
    return (
        f"interrupted during step {step.id} ({step.stage}): its statement was cancelled "
        f"and its transaction rolled back. Everything before it is in the journal, so "
        f"the stage is resumable: {again}.{partial}"
    )
