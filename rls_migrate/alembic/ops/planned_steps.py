"""``op.run_rls_step`` / ``undo_rls_step``: one planned step run exactly as ``apply`` /
``rollback`` would (what ``rls-migrate alembic render`` writes)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from alembic.operations import MigrateOperation, Operations
from psycopg import sql

from rls_migrate.alembic.runtime import (
    RlsOperationError,
    driver_connection,
    options_from,
    require_toolkit_schema,
    translated_errors,
)
from rls_migrate.catalog import QualifiedName
from rls_migrate.playbook import Options
from rls_migrate.stages.common import regclass_text
from rls_migrate.steps import LOCKS_BY_LABEL, Estimate, StagePlan, Step


@Operations.register_operation("run_rls_step")
class RunRlsStepOp(MigrateOperation):
    """One step of an rls-migrate plan, run as ``rls-migrate apply`` runs it: skipped when
    its done check passes; otherwise in its own short transaction under lock_timeout with
    retries (``transactional=False``: outside any, for CONCURRENTLY), inside
    ``autocommit_block()``; journaled in ``rls_migrate`` (so ``rls-migrate status`` shows
    it). Statements are SQL text, run as they are (no bind-parameter parsing)."""

    def __init__(self, step_id: str, *, stage: str, kind: str, table: str | None,
                 lock: str, statements: Sequence[str], transactional: bool = True,
                 done_check: str | None = None, seconds: float = 0.0,
                 options: Mapping[str, Any] | None = None,
                 inverse: Sequence[str] = (), inverse_lock: str = "none",
                 inverse_transactional: bool = True) -> None:
        if lock not in LOCKS_BY_LABEL or inverse_lock not in LOCKS_BY_LABEL:
            raise RlsOperationError(
                f"step {step_id}: lock must be one of {sorted(LOCKS_BY_LABEL)}")
        self.step_id, self.stage, self.kind, self.table = step_id, stage, kind, table
        self.lock, self.statements, self.transactional = lock, tuple(statements), transactional
        self.done_check, self.seconds, self.options = done_check, seconds, dict(options or {})
        self.inverse, self.inverse_lock = tuple(inverse), inverse_lock
        self.inverse_transactional = inverse_transactional

    @classmethod
    def run_rls_step(
        cls, operations: Operations, step_id: str, *, stage: str, kind: str,
        table: str | None, lock: str, statements: Sequence[str], transactional: bool = True,
        done_check: str | None = None, seconds: float = 0.0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Run one planned step."""
        operations.invoke(cls(step_id, stage=stage, kind=kind, table=table, lock=lock,
                              statements=statements, transactional=transactional,
                              done_check=done_check, seconds=seconds, options=options))

    def reverse(self) -> UndoRlsStepOp:
        return UndoRlsStepOp(self.step_id, stage=self.stage, kind=self.kind, table=self.table,
                             lock=self.inverse_lock, statements=self.inverse,
                             transactional=self.inverse_transactional, options=self.options)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("run_rls_step", self.step_id)

    def step(self) -> Step:
        return Step(
            id=self.step_id, stage=self.stage, kind=self.kind,
            table=QualifiedName.parse(self.table) if self.table else None,
            description=self.step_id,
            statements=tuple(sql.SQL(s) for s in self.statements),
            lock=LOCKS_BY_LABEL[self.lock], transactional=self.transactional,
            done_check=sql.SQL(self.done_check) if self.done_check else None,
            inverse=tuple(sql.SQL(s) for s in self.inverse),
            inverse_lock=LOCKS_BY_LABEL[self.inverse_lock],
            inverse_transactional=self.inverse_transactional,
            estimate=Estimate(seconds=self.seconds))


@Operations.register_operation("undo_rls_step")
class UndoRlsStepOp(MigrateOperation):
    """The inverse of one planned step, run as ``rls-migrate rollback`` runs it: only when
    the journal has the step done, under lock_timeout with retries, journaled ``undone``."""

    def __init__(self, step_id: str, *, stage: str, kind: str, table: str | None,
                 lock: str, statements: Sequence[str], transactional: bool = True,
                 options: Mapping[str, Any] | None = None) -> None:
        if lock not in LOCKS_BY_LABEL:
            raise RlsOperationError(
                f"step {step_id}: lock must be one of {sorted(LOCKS_BY_LABEL)}")
        self.step_id, self.stage, self.kind, self.table = step_id, stage, kind, table
        self.lock, self.statements, self.transactional = lock, tuple(statements), transactional
        self.options = dict(options or {})

    @classmethod
    def undo_rls_step(
        cls, operations: Operations, step_id: str, *, stage: str, kind: str,
        table: str | None, lock: str, statements: Sequence[str], transactional: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Undo one planned step."""
        operations.invoke(cls(step_id, stage=stage, kind=kind, table=table, lock=lock,
                              statements=statements, transactional=transactional,
                              options=options))

    def reverse(self) -> RunRlsStepOp:
        raise NotImplementedError("undo_rls_step is the downgrade half of run_rls_step")

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("undo_rls_step", self.step_id)

    def step(self) -> Step:
        return Step(
            id=self.step_id, stage=self.stage, kind=self.kind,
            table=QualifiedName.parse(self.table) if self.table else None,
            description=self.step_id, statements=(),
            inverse=tuple(sql.SQL(s) for s in self.statements),
            inverse_lock=LOCKS_BY_LABEL[self.lock], inverse_transactional=self.transactional)


def _emit_offline(operations: Operations, step_id: str, statements: Sequence[str],
                  transactional: bool, options: Options) -> None:
    """``alembic upgrade --sql``: the statements as a script, each transactional step in its
    own transaction under lock_timeout (no done check: the script runs them all)."""
    impl = operations.get_context().impl
    impl.static_output(f"-- {' '.join(step_id.splitlines())}")
    if transactional:
        impl.static_output("BEGIN;")
        impl.static_output(f"SET LOCAL lock_timeout = '{max(1, round(options.lock_timeout))}ms';")
    for statement in statements:
        impl.static_output(statement + ";")
    if transactional:
        impl.static_output("COMMIT;")


def _run_planned(operations: Operations, what: str, step: Step, raw: Sequence[str],
                 transactional: bool, overrides: Mapping[str, Any], undo: bool) -> None:
    from rls_migrate import journal
    from rls_migrate import planner as _planner  # noqa: F401  (stage kind handlers)
    from rls_migrate.executor import Executor
    from rls_migrate.migration_lock import MigrationLock

    options = options_from(overrides)
    context = operations.get_context()
    with context.autocommit_block():
        if context.as_sql:
            _emit_offline(operations, step.id, raw, transactional, options)
            return
        conn = driver_connection(operations, what)
        require_toolkit_schema(conn, what)
        if not undo:
            _refuse_rows_without_tenant(conn, step, raw)
        with translated_errors(), MigrationLock(conn):
            executor = Executor(conn, options, journal.Journal(conn))
            stage = StagePlan(step.stage, (step,))
            result = executor.rollback(stage) if undo else executor.run(stage)
            if undo and result.undone and step.kind == "add_column" and step.table:
                # As `rollback --drop-columns`: a later backfill starts from scratch.
                journal.reset_backfill(conn, step.table)


_NOT_NULL_CHECK = re.compile(r'CHECK \(("(?:[^"]|"")+"|[a-z_][a-z0-9_$]*) IS NOT NULL\) NOT VALID$')


def _refuse_rows_without_tenant(conn: Any, step: Step, raw: Sequence[str]) -> None:
    """Constrain's first step on a table (the NOT VALID check), rendered into a revision:
    refuse it, with the count and sample keys, while rows without a tenant remain, instead
    of the raw 23514 of VALIDATE one step later (``apply`` does this with the preflight)."""
    if step.kind != "add_check" or not step.id.startswith("not_null_check:") or not raw:
        return
    match = _NOT_NULL_CHECK.search(raw[0])
    if match is None or step.table is None:
        return
    token = match.group(1)
    column = token[1:-1].replace('""', '"') if token.startswith('"') else token
    done = conn.execute(step.done_check).fetchone() if step.done_check is not None else None
    if done and done[0]:
        return
    table = step.table.ident
    row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
        table, sql.Identifier(column))).fetchone()
    nulls = int(row[0]) if row else 0
    if not nulls:
        return
    pk = [str(r[0]) for r in conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
        " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary"
        " ORDER BY array_position(i.indkey::int2[], a.attnum)",
        [regclass_text(step.table)])]
    key = (sql.SQL("concat_ws(',', {})").format(sql.SQL(", ").join(
        sql.SQL("c.{}::text").format(sql.Identifier(k)) for k in pk)) if pk
        else sql.SQL("c.ctid::text"))
    keys = [str(r[0]) for r in conn.execute(sql.SQL(
        "SELECT {} FROM {} AS c WHERE c.{} IS NULL LIMIT 5").format(
            key, table, sql.Identifier(column)))]
    raise RlsOperationError(
        f"{step.id}: refused, nothing executed: {nulls} row(s) of {step.table} have "
        f"{column} NULL (sample keys: {', '.join(keys)}); NOT NULL cannot be added. Give "
        "them a tenant or delete them, or keep the column nullable (the playbook's "
        f"tables.{step.table}.nullable: true, then render the revisions again); "
        "`rls-migrate plan` lists them with their keys")


@Operations.implementation_for(RunRlsStepOp)
def _run_rls_step(operations: Operations, operation: RunRlsStepOp) -> None:
    _run_planned(operations, "run_rls_step", operation.step(), operation.statements,
                 operation.transactional, operation.options, undo=False)


@Operations.implementation_for(UndoRlsStepOp)
def _undo_rls_step(operations: Operations, operation: UndoRlsStepOp) -> None:
    _run_planned(operations, "undo_rls_step", operation.step(), operation.statements,
                 operation.transactional, operation.options, undo=True)
