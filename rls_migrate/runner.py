"""apply / status / rollback as library calls: the CLI only parses and prints these.

Example::

    from rls_migrate.runner import apply_stage
    result = apply_stage(dsn, playbook, "backfill")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from rls_migrate import journal as journal_mod
from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.connect import connect
from rls_migrate.errors import GateClosed, PrerequisiteError, StepFailed, UsageError
from rls_migrate.executor import Executor
from rls_migrate.gate import enforce_gate
from rls_migrate.migration_lock import MigrationLock
from rls_migrate.outcomes import StageResult, StepOutcome, now
from rls_migrate.planner import build_plan
from rls_migrate.playbook import Playbook
from rls_migrate.progress import ProgressHook
from rls_migrate.stages.backfill_runner import run_backfill
from rls_migrate.stages.common import PlanContext, regclass_text
from rls_migrate.stages.prepare import check_roles
from rls_migrate.steps import LOCKS_BY_LABEL, STAGES, Lock, Plan, StagePlan, Step

APPLICABLE = STAGES
ROLLBACK_TARGETS = ("none", *STAGES)

Gate = Callable[[psycopg.Connection[Any], Playbook, bool], dict[str, Any] | None]
GATES: dict[str, Gate] = {"enforce": enforce_gate}
"""Stage -> a check run before it (after the earlier stages are verified done). It raises
GateClosed to refuse, or returns details to journal (e.g. a forced override); ``force`` is
the user's ``--force``. Enforce's: every recorded violation replayed harmless."""


@Executor.register("backfill")
def _backfill_handler(executor: Executor, step: Step) -> StepOutcome:
    """Batches, checkpoints and retries are :func:`run_backfill`'s; this maps its result to
    the step's outcome. A table finished by an earlier run (its rows left empty on purpose:
    orphans skipped) is inspected again, filled where rows went missing, else skipped."""
    started = now()

    def progress(table: Any, rows: int, total: int) -> None:
        if executor.progress is not None:
            executor.progress.step_advance(step, rows, total or None)

    result = run_backfill(executor, step, progress=progress)
    ms = sorted(result.batch_ms)
    details = {
        "rows": result.rows, "batches": result.batches, "rows_this_run": result.rows_this_run,
        "batches_this_run": result.batches_this_run, "resumed": result.resumed,
        "passes": result.passes, "retries": result.retries,
        "writers_waited_ms": round(result.writers_waited_ms, 1),
        "orphans": result.orphans, "orphan_sample": result.orphan_sample,
        "conflicts": result.conflicts, "conflict_sample": result.conflict_sample,
        "batch_ms_p50": round(ms[len(ms) // 2], 1) if ms else None,
        "batch_ms_p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1) if ms else None,
        "batch_ms_max": round(ms[-1], 1) if ms else None,
    }
    if result.finished_earlier:
        return StepOutcome.finish(step, "skipped", started=started, attempts=0,
                                  details={"reason": "finished earlier", **details})
    return StepOutcome.finish(step, "done", started=started, attempts=1 + result.retries,
                              details=details)


@Executor.register("upgrade_schema")
def _schema_handler(executor: Executor, step: Step) -> StepOutcome:
    started = now()
    journal_mod.upgrade_schema(executor.conn)
    return StepOutcome.finish(step, "done", started=started,
                              details={"revision": journal_mod.head_revision()})


@dataclasses.dataclass
class ApplyResult:
    stage: str
    result: StageResult
    plan: StagePlan
    notes: list[str] = dataclasses.field(default_factory=list)
    forced: dict[str, Any] | None = None  # what --force overrode (journaled), if anything


def _open(dsn: str, command: str) -> psycopg.Connection[Any]:
    return connect(dsn, application_name=f"rls-migrate {command}")


def _refuse_standby(conn: psycopg.Connection[Any], command: str) -> None:
    """A hot standby accepts the connection and refuses the first write, halfway through;
    say so up front instead."""
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    if row and row[0]:
        raise PrerequisiteError(
            f"cannot {command}: the server is a hot standby (in recovery, read-only); "
            "point --dsn at the primary")


def _plan(conn: psycopg.Connection[Any], playbook: Playbook, source: str,
          stages: Sequence[str] | None = None) -> tuple[Catalog, Plan]:
    catalog = Catalog.load(conn, schemas=playbook.schemas)
    return catalog, build_plan(catalog, playbook, stages, source=source)


def _require_previous(conn: psycopg.Connection[Any], journal: journal_mod.Journal, plan: Plan,
                      stage: str) -> list[str]:
    """A stage runs only once every step of the stages before it is done: its done check
    passes, or the journal has it done (a backfill that skipped orphans).

    A step the journal has never seen, of a stage that did run, appeared in the plan since
    (the index stage twins indexes by their usage, which grows with traffic): it does not
    block later stages; the returned notes say how to add it."""
    index = STAGES.index(stage)
    ran = {row.stage for row in journal.step_rows()}
    notes: list[str] = []
    for earlier in plan.stages:
        if STAGES.index(earlier.name) >= index or earlier.name not in APPLICABLE:
            continue
        new: list[str] = []
        for step in earlier.steps:
            if step.done_check is None:
                continue
            row = conn.execute(step.done_check).fetchone()
            if row and row[0]:
                continue
            status = journal.step_status(step.id)
            if status == "done":
                continue
            if status is None and earlier.name in ran:
                new.append(step.id)
                continue
            raise GateClosed(
                f"stage {stage} needs stage {earlier.name} first ({step.id} is not done): "
                f"run `rls-migrate apply PLAYBOOK --stage {earlier.name}`")
        if new:
            notes.append(f"stage {earlier.name} has {len(new)} new step(s) since it ran "
                         f"({', '.join(new[:3])}{' ...' if len(new) > 3 else ''}): run "
                         f"`rls-migrate apply PLAYBOOK --stage {earlier.name}` to add them")
    return notes


def apply_stage(
    dsn: str,
    playbook: Playbook,
    stage: str,
    *,
    source: str = "playbook",
    dry_run: bool = False,
    force: bool = False,
    progress: ProgressHook | None = None,
) -> ApplyResult:
    """Run one stage. ``force`` overrides the stage's gate (journaled)."""
    if stage not in APPLICABLE:
        raise UsageError(f"stage {stage} can be planned (rls-migrate plan) but not applied by "
                         f"this version; applicable stages: {', '.join(APPLICABLE)}")
    with _open(dsn, f"apply {stage}") as conn:
        if not dry_run:
            _refuse_standby(conn, f"apply stage {stage}")
        catalog, plan = _plan(conn, playbook, source)
        if stage == "prepare":
            blocking = [f for f in check_roles(PlanContext(catalog, playbook)) if f.blocking]
            if blocking:
                raise PrerequisiteError("; ".join(f.message for f in blocking))
        elif journal_mod.schema_revision(conn) is None:
            raise GateClosed("the rls_migrate schema does not exist: run "
                             "`rls-migrate apply PLAYBOOK --stage prepare` first")
        revision_before = journal_mod.schema_revision(conn)
        created_schema = False
        if stage == "prepare" and not dry_run:
            # The journal lives in the schema: create or upgrade it before anything is
            # journaled (a newer toolkit takes over a half-finished migration here).
            journal_mod.upgrade_schema(conn)
            created_schema = revision_before != journal_mod.schema_revision(conn)
        if dry_run and journal_mod.schema_revision(conn) is None:
            return ApplyResult(stage, StageResult(stage, tuple(
                StepOutcome.finish(s, "would-run", started=now()) for s in plan.stage(stage)),
                True), plan.stage(stage))
        journal = journal_mod.Journal(conn)
        notes = _require_previous(conn, journal, plan, stage)
        with MigrationLock(conn, command=f"apply {stage}"):
            executor = Executor(conn, playbook.options, journal, progress=progress)
            # The gate first: a refused stage leaves no half-open run in the journal.
            gate = GATES.get(stage)
            override = gate(conn, playbook, force) if gate is not None else None
            if override:
                executor.log.warning("gate.forced", stage=stage, dry_run=dry_run,
                                     **{k: v for k, v in override.items() if k != "stage"})
            elif force:
                notes.append(f"--force changed nothing: stage {stage} "
                             + ("has no gate" if gate is None else "passed its gate"))
            run_id = journal.start_run(f"apply {stage}", stage) if not dry_run else None
            if override and not dry_run:
                journal.record_override(stage, override)
            outcome = "failed"
            try:
                result = executor.run(plan.stage(stage), dry_run=dry_run)
                outcome = "done"
            finally:
                # A session that died (terminated build) cannot journal; the step's own
                # error is the one to report.
                if run_id is not None and not conn.broken:
                    journal.finish_run(outcome)
        if stage == "prepare" and created_schema:
            result = _schema_created(result, revision_before)
        return ApplyResult(stage, result, plan.stage(stage), notes, override or None)


def _schema_created(result: StageResult, before: str | None) -> StageResult:
    """prepare creates (or upgrades) the rls_migrate schema before its steps run, since the
    journal lives there: the upgrade step then finds it done. Say what this run did."""
    outcomes = tuple(
        dataclasses.replace(o, outcome="done", details={
            **o.details, "reason": "created" if before is None else f"upgraded from {before}"})
        if o.kind == "upgrade_schema" and o.outcome == "skipped" else o
        for o in result.outcomes)
    return dataclasses.replace(result, outcomes=outcomes)


def rollback_to(
    dsn: str,
    playbook: Playbook,
    target: str,
    *,
    source: str = "playbook",
    drop_columns: bool = False,
    drop_schema: bool = False,
    dry_run: bool = False,
    progress: ProgressHook | None = None,
) -> list[StageResult]:
    """Undo every stage after ``target`` (``none``: all of them), latest first. With
    ``drop_schema`` (only with ``none``), the ``rls_migrate`` schema goes too once every
    stage is undone: journal, checkpoints and samples with it (see :func:`drop_toolkit_schema`)."""
    if target not in ROLLBACK_TARGETS:
        raise UsageError(f"--to must be one of {', '.join(ROLLBACK_TARGETS)}, got {target!r}")
    if drop_schema and target != "none":
        raise UsageError(f"--drop-schema goes with --to none only (after --to {target} the "
                         "remaining stages still need the rls_migrate schema)")
    undo = [s for s in reversed(STAGES)
            if target == "none" or STAGES.index(s) > STAGES.index(target)]
    results: list[StageResult] = []
    with _open(dsn, f"rollback to {target}") as conn:
        if not dry_run:
            _refuse_standby(conn, f"roll back to {target}")
        if journal_mod.schema_revision(conn) is None:
            raise GateClosed("nothing to roll back: the rls_migrate schema does not exist")
        _, plan = _plan(conn, playbook, source)
        journal = journal_mod.Journal(conn)
        with MigrationLock(conn, command=f"rollback {target}"):
            executor = Executor(conn, playbook.options, journal, progress=progress)
            unplanned, left = _journaled_not_planned(journal, plan, undo)
            if left:
                # Journaled before the journal kept inverses: nothing to undo them with.
                executor.log.warning(
                    "rollback.not_in_playbook", steps=left[:10], count=len(left),
                    hint="these steps were applied for tables the playbook no longer plans, and "
                         "the journal has no inverse for them (they ran before it kept one) "
                         "or their table is gone under that name: rollback leaves them")
            for name in undo:
                if name == "prepare":
                    continue  # the journal stays: it is the record of what happened
                stage = plan.stage(name)
                extra = unplanned.get(name, [])
                if extra:
                    # A table taken out of the playbook since: its steps are undone with
                    # the inverses journaled when they ran (undone first: reversed order).
                    stage = dataclasses.replace(stage, steps=(*stage.steps, *extra))
                steps = tuple(s if s.inverse_needs is None or (
                    s.inverse_needs == "drop_columns" and drop_columns)
                    else dataclasses.replace(s, inverse=()) for s in stage.steps)
                results.append(executor.rollback(dataclasses.replace(stage, steps=steps),
                                                 dry_run=dry_run))
                if name == "add-column" and drop_columns and not dry_run:
                    for step in stage.steps:
                        if step.kind == "add_column" and step.table is not None:
                            journal.reset_backfill(step.table)
        if drop_schema and not dry_run:
            failed = sum(r.failed for r in results)
            if failed:
                raise StepFailed(f"--drop-schema: {failed} step(s) could not be undone, so the "
                                 "rls_migrate schema (and its journal) stays; fix them and run "
                                 "the rollback again")
            results.append(drop_toolkit_schema(conn, playbook.options.lock_timeout))
    return results


def drop_toolkit_schema(conn: psycopg.Connection[Any], lock_timeout_ms: float) -> StageResult:
    """``DROP SCHEMA rls_migrate CASCADE``, refused (rolled back) when anything outside the
    schema depends on it: a policy, trigger or default on an application table still calls
    a toolkit function, so dropping it would change the application's tables. The journal
    is the record of what happened: this is for after ``rollback --to none``, when nobody
    needs it any more."""
    started = now()
    cascaded: list[str] = []

    def collect(diag: psycopg.errors.Diagnostic) -> None:
        if diag.message_detail:
            cascaded.extend(line.removeprefix("drop cascades to ").strip()
                            for line in diag.message_detail.splitlines())
        elif diag.message_primary and diag.message_primary.startswith("drop cascades to "):
            cascaded.append(diag.message_primary.removeprefix("drop cascades to ").strip())

    conn.add_notice_handler(collect)
    try:
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true),"
                         " set_config('client_min_messages', 'notice', true)",
                         [f"{int(lock_timeout_ms)}ms"])
            conn.execute("DROP SCHEMA IF EXISTS rls_migrate CASCADE")
            outside = [obj for obj in cascaded if "rls_migrate." not in obj]
            if outside:
                raise _Outside(outside)
    except _Outside as exc:
        shown = "; ".join(exc.objects[:5]) + (f" and {len(exc.objects) - 5} more"
                                              if len(exc.objects) > 5 else "")
        raise PrerequisiteError(
            f"--drop-schema: not dropped (nothing changed): objects outside the rls_migrate "
            f"schema still depend on it: {shown}") from None
    finally:
        conn.remove_notice_handler(collect)
    step = Step(id="drop_schema:rls_migrate", stage="prepare", kind="drop_schema", table=None,
                description="DROP SCHEMA rls_migrate CASCADE", statements=(),
                lock=Lock.ACCESS_EXCLUSIVE)
    outcome = StepOutcome.finish(step, "undone", started=started, attempts=1,
                                 details={"objects": len(cascaded)})
    return StageResult("rollback prepare", (outcome,))


class _Outside(Exception):
    def __init__(self, objects: list[str]) -> None:
        super().__init__(objects)
        self.objects = objects


def _journaled_not_planned(journal: journal_mod.Journal, plan: Plan, stages: Sequence[str]
                           ) -> tuple[dict[str, list[Step]], list[str]]:
    """Steps of ``stages`` the journal has as done that the current plan does not have (a
    table taken out of the playbook, or renamed, since they ran): per stage, the ones that
    can be undone from the inverse the journal kept, and the ids of those it kept none for."""
    planned = {step.id for stage in plan.stages for step in stage.steps}
    undoable: dict[str, list[Step]] = {}
    left: list[str] = []
    there: dict[str | None, bool] = {}  # a table's several steps: one look each
    for row in journal.journaled_inverses([s for s in stages if s != "prepare"]):
        if row.step_id in planned:
            continue
        if row.table_name not in there:
            there[row.table_name] = _still_there(journal.conn, row.table_name)
        if row.inverse is None or not there[row.table_name]:
            # No inverse kept, or its table is gone under that name (renamed, dropped): the
            # statements would fail and stop the rest of the rollback (the kill switch).
            left.append(row.step_id)
            continue
        undoable.setdefault(row.stage, []).append(Step(
            id=row.step_id, stage=row.stage, kind=row.kind or "journaled",
            table=QualifiedName.parse(row.table_name) if row.table_name else None,
            description=f"{row.step_id}, no longer in the playbook: undone as journaled",
            statements=(), inverse=tuple(sql.SQL(text) for text in row.inverse),
            inverse_lock=LOCKS_BY_LABEL.get(row.inverse_lock or "", Lock.ACCESS_EXCLUSIVE),
            inverse_transactional=row.inverse_transactional,
            inverse_needs=row.inverse_needs))
    return undoable, sorted(left)



def _still_there(conn: psycopg.Connection[Any], table_name: str | None) -> bool:
    if table_name is None:
        return True
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                       [regclass_text(QualifiedName.parse(table_name))]).fetchone()
    return bool(row and row[0])


def status(dsn: str, playbook: Playbook, *, source: str = "playbook") -> dict[str, Any]:
    """The table x stage matrix from the journal, backfill progress, anomalies, last errors."""
    with _open(dsn, "status") as conn:
        if journal_mod.schema_revision(conn) is None:
            raise GateClosed("no migration yet: the rls_migrate schema does not exist "
                             "(run `rls-migrate apply PLAYBOOK --stage prepare`)")
        _, plan = _plan(conn, playbook, source)
        journal = journal_mod.Journal(conn)
        states = {row.step_id: row for row in journal.step_rows()}
        matrix: dict[str, dict[str, str]] = {}
        for stage in plan.stages:
            for step in stage.steps:
                if step.table is None:
                    continue
                cell = matrix.setdefault(str(step.table), {})
                row = states.get(step.id)
                state = (row.status if row else None) or "pending"
                previous = cell.get(stage.name)
                if previous is None or previous == state:
                    cell[stage.name] = state
                else:
                    cell[stage.name] = "partial"
        checkpoints = {}
        for stage in plan.stages:
            for step in stage.steps:
                if step.kind == "backfill" and step.table is not None:
                    ck = journal.load_checkpoint(step.table)
                    if ck is not None:
                        checkpoints[str(step.table)] = dataclasses.asdict(ck)
        return {
            "matrix": matrix,
            "backfill": checkpoints,
            "anomalies": [dataclasses.asdict(a) for a in journal.anomalies()],
            "sync_conflicts": [{"table_name": t, "count": n, "sample": list(sample)}
                               for t, (n, sample) in
                               sorted(_preflight.sync_conflicts(conn).items())],
            "errors": [dataclasses.asdict(r) for r in journal.status_rows() if r.last_error],
            "left_out": [{"table": str(q), "strategy": p.strategy, "note": p.note}
                         for q, p in sorted(playbook.table_plans())
                         if p.strategy in ("skip", "global", "TODO")],
        }


__all__ = ["APPLICABLE", "ApplyResult", "StepFailed", "apply_stage", "rollback_to", "status"]

from rls_migrate import preflight as _preflight  # noqa: E402

_preflight.register_gates()  # backfill and constrain refuse up front on rows without a tenant
