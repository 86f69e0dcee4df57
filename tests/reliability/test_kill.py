"""kill -9 anywhere: every stage survives its runner dying at any point.

For every stage, the real CLI (``python -m rls_migrate apply --stage S --yes``) runs as a
process on a fresh copy of the sample database migrated up to the stage before, and dies at
points drawn from a seeded schedule: ``kill -9`` of the process, ``pg_terminate_backend`` of
its sessions, or an immediate shutdown (a crash) and restart of the server. The delays are
uniform over how long the stage works once connected (measured by an unharmed calibration
run), so faults land between steps, inside transactions, mid-batch and mid-build. After the
faults the same command runs again, and then:

* it completes (exit 0), and the journal and the live catalog agree that every step of the
  stage is done;
* no backfill batch was applied twice: batch numbers are 1..n, key ranges chain without
  overlap, and the rows they counted are the rows that carry a tenant;
* no INVALID index is left behind;
* every non-tenant column of every row is unchanged (checksums), so no row is lost.

A fault that lands while the command runs must end it with one error line, never a
traceback (``kill -9`` leaves no output at all).

The random schedules run on this suite's own PostgreSQL 18 server (restarting the shared
one would disturb other tests); ``RLS_MIGRATE_FAULT_TRIALS`` (trials per stage, default 5)
and ``RLS_MIGRATE_FAULT_SEED`` replay or widen them. The unmarked test is the reduced
version: one stage, a kill and a terminate, on every major.
"""

from __future__ import annotations

import collections
import os
import random
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from reliability.support import (
    StageTemplates,
    checksums,
    report,
    stage_steps,
    write_playbook,
)
from rls_migrate.catalog import QualifiedName
from rls_migrate.steps import STAGES
from rls_migrate.testing import servers
from rls_migrate.testing.faults import (
    Fault,
    FaultKind,
    FaultOutcome,
    FaultSchedule,
    backfill_batch_problems,
    cli_command,
    inject,
    invalid_indexes,
    rows_lost,
    run_cli,
    steps_not_done,
    timed_run,
    wait_for_lock_release,
)

TRIALS = int(os.environ.get("RLS_MIGRATE_FAULT_TRIALS", "5"))
SEED = int(os.environ.get("RLS_MIGRATE_FAULT_SEED", "20260611"))
WEIGHTS: dict[FaultKind, float] = {"sigkill": 6.0, "terminate": 2.0, "restart": 1.0}


def apply_command(path: Path, stage: str, dsn: str) -> list[str]:
    return cli_command("--log-format", "json", "apply", str(path), "--stage", stage, "--yes",
                       "--dsn", dsn)


# psycopg's own logger reports a pipeline it could not close on a dead connection (the
# backfill batches in pipeline mode): noise beside the error line, reported to the backfill.
PSYCOPG_NOISE = "error ignored terminating <psycopg.Pipeline"


def error_lines(output: str) -> list[str]:
    """What the CLI printed besides its JSON log lines (and psycopg's pipeline message, with
    its tab-indented continuation lines)."""
    lines: list[str] = []
    noise = False
    for line in output.splitlines():
        noise = PSYCOPG_NOISE in line or (noise and line.startswith("\t"))
        if line.strip() and not line.startswith("{") and not noise:
            lines.append(line)
    return lines


def check_fault_output(outcome: FaultOutcome) -> None:
    """A fault that landed ends the command with one error line and no traceback."""
    assert "Traceback" not in outcome.output, outcome.output[-3000:]
    if outcome.fault.kind == "sigkill" and outcome.landed:
        assert outcome.returncode == -9
    elif outcome.landed:
        lines = error_lines(outcome.output)
        assert len(lines) == 1 and lines[0].startswith("error: "), outcome.output[-3000:]


def steps_done(dsn: str, step_ids: list[str]) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('rls_migrate.step_state')").fetchone() == (None,):
            return 0
        row = conn.execute("SELECT count(*) FROM rls_migrate.step_state"
                           " WHERE step_id = ANY(%s) AND status = 'done'", [step_ids]).fetchone()
    return int(row[0]) if row else 0


def finish(command: list[str], dsn: str) -> None:
    """Run the command again after the faults: it must complete."""
    wait_for_lock_release(dsn)
    done = run_cli(command)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def check_consistent(dsn: str, templates: StageTemplates, stage: str,
                     before: dict[str, str]) -> dict[str, int]:
    """The stage is whole and nothing was lost; returns counts for the summary."""
    steps = stage_steps(dsn, templates.playbook, stage)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert steps_not_done(conn, steps) == []
        assert invalid_indexes(conn) == []
        batches = 0
        if STAGES.index(stage) >= STAGES.index("backfill"):
            assert backfill_batch_problems(conn) == []
            for table, rows_done, count in conn.execute(
                    "SELECT table_name, rows_done, batches FROM rls_migrate.backfill_checkpoint"
                    ).fetchall():
                assert rows_done == tenant_rows(conn, table), table
                if stage == "backfill":  # later stages did not run the batches under faults
                    batches += int(count)
    after = checksums(dsn)
    lost = rows_lost(before, after)
    assert lost == 0 and after == before
    return {"steps": len(steps), "batches": batches, "rows_lost": lost}


def tenant_rows(conn: psycopg.Connection[Any], table: str) -> int:
    """Rows of ``table`` (schema-qualified, as the journal names it) that carry a tenant:
    with no concurrent writes, exactly the rows the backfill's batches counted."""
    qname = QualifiedName.parse(table)
    row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE tenant_id IS NOT NULL").format(
        qname.ident)).fetchone()
    return int(row[0]) if row else 0


def progress_of(stage: str) -> Callable[[psycopg.Connection[Any]], int]:
    """How far a run of ``stage`` got: its steps journaled, plus committed backfill batches
    (what a fault may wait for, to strike between steps, inside them, or mid-table)."""
    query = ("SELECT (SELECT count(*) FROM rls_migrate.journal WHERE stage = %s)"
             + (" + (SELECT count(*) FROM rls_migrate.backfill_batches)"
                if stage == "backfill" else ""))

    def measure(conn: psycopg.Connection[Any]) -> int:
        if conn.execute("SELECT to_regclass('rls_migrate.journal')").fetchone() == (None,):
            return 0
        row = conn.execute(query, [stage]).fetchone()  # type: ignore[arg-type, unused-ignore]
        return int(row[0]) if row else 0

    return measure


def fresh_copy(templates: StageTemplates, stage: str) -> str:
    """A new copy of the stage's template, checkpointed. A copy's sequence pages arrive as
    full-page images of the template's, whose values logged ahead are not in them: a crash
    before the next checkpoint would replay a sequence (the journal's ids) backwards.
    PostgreSQL's quirk, not the toolkit's; a checkpoint makes the next nextval log again."""
    dsn = templates.clone(stage)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    return dsn


def run_trials(templates: StageTemplates, stage: str, tmp_path: Path, *, trials: int,
               weights: dict[FaultKind, float], seed: int,
               restart: Callable[[str], None] | None, label: str) -> dict[str, Any]:
    """``trials`` fresh copies, each hit by one or two faults and then run to the end."""
    path = write_playbook(templates.playbook, tmp_path / "reliability.yaml")
    measure = progress_of(stage)
    with templates.cloned(stage) as dsn:
        code, busy_s = timed_run(apply_command(path, stage, dsn), dsn)
        assert code == 0, f"the calibration run of {stage} failed"
        with psycopg.connect(dsn, autocommit=True) as conn:
            units = measure(conn)
    schedule = FaultSchedule(seed, max_delay_s=busy_s, weights=weights, progress_units=units)
    rng = random.Random(seed)
    landed: collections.Counter[str] = collections.Counter()
    missed = 0
    progress: list[float] = []
    totals: collections.Counter[str] = collections.Counter()
    outcomes: list[str] = []
    for trial in range(trials):
        dsn = fresh_copy(templates, stage)
        try:
            before = checksums(dsn)
            command = apply_command(path, stage, dsn)
            step_ids = [s.id for s in stage_steps(dsn, templates.playbook, stage)]
            wanted, struck, attempts = rng.choice((1, 2)), 0, 0
            while struck < wanted and attempts < 3 * wanted:
                attempts += 1
                fault = schedule.next()
                outcome = inject(fault, command, dsn, restart=restart, progress=measure,
                                 log_path=tmp_path / f"{stage}-{trial}-{attempts}.log")
                outcomes.append(str(outcome))
                check_fault_output(outcome)
                wait_for_lock_release(dsn)
                if outcome.landed:
                    struck += 1
                    landed[fault.kind] += 1
                    progress.append(steps_done(dsn, step_ids) / max(1, len(step_ids)))
                else:
                    # The stage ended before the fault: start the trial over on a new copy.
                    missed += 1
                    templates.drop(dsn)
                    dsn = fresh_copy(templates, stage)
                    command = apply_command(path, stage, dsn)
            finish(command, dsn)
            totals.update(check_consistent(dsn, templates, stage, before))
        finally:
            templates.drop(dsn)
    summary = {
        "stage": stage, "label": label, "trials": trials, "busy_s": round(busy_s, 2),
        "faults_landed": dict(landed), "faults_missed": missed,
        "steps_done_at_fault": (f"{min(progress):.0%}..{max(progress):.0%}"
                                if progress else "-"),
        "completed": trials, "rows_lost": totals["rows_lost"],
        "batches_checked": totals["batches"],
    }
    report(f"kill[{stage}] {label}: {trials} trials, faults landed {dict(landed)}, "
           f"{missed} that found the stage ended; steps done when struck "
           f"{summary['steps_done_at_fault']}; {trials}/{trials} reruns completed; "
           f"rows lost {totals['rows_lost']}; batches re-applied 0 of "
           f"{totals['batches']}; stage busy {busy_s:.2f} s (seed {seed})")
    print("\n".join(outcomes))
    return summary


@pytest.mark.reliability
@pytest.mark.parametrize("stage", STAGES)
def test_faults_anywhere(stage: str, fault_server: servers.LocalServer,
                         fault_templates: StageTemplates, tmp_path: Path) -> None:
    seed = SEED + zlib.crc32(stage.encode())
    summary = run_trials(fault_templates, stage, tmp_path, trials=TRIALS, weights=WEIGHTS,
                         seed=seed, restart=fault_server.restart,
                         label=f"PG{fault_server.major}")
    assert summary["rows_lost"] == 0
    assert sum(summary["faults_landed"].values()) >= TRIALS, summary


def test_kill_and_terminate_mid_stage(stage_templates: StageTemplates,
                                      pg_server: servers.PostgresServer,
                                      tmp_path: Path) -> None:
    """Reduced: add-column (18 steps), killed once and its session terminated once, on
    every major."""
    stage = "add-column"
    path = write_playbook(stage_templates.playbook, tmp_path / "reliability.yaml")
    with stage_templates.cloned(stage) as dsn:
        before = checksums(dsn)
        command = apply_command(path, stage, dsn)
        rng = random.Random(SEED)
        kinds: tuple[FaultKind, ...] = ("sigkill", "terminate")
        for kind in kinds:
            outcome = inject(Fault(kind, rng.uniform(0.0, 0.15)), command, dsn,
                             log_path=tmp_path / f"{kind}.log")
            check_fault_output(outcome)
            wait_for_lock_release(dsn)
        finish(command, dsn)
        check_consistent(dsn, stage_templates, stage, before)
        report(f"kill[{stage}] {pg_server.backend.name} (reduced): sigkill + terminate, "
               "rerun completed, rows lost 0")
