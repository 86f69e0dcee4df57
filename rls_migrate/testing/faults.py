"""Fault injection for reliability tests: the real CLI in a real process, and what
production does to it.

A :class:`FaultSchedule` (seeded, so a failing trial can be replayed) says when and how each
run dies: ``sigkill`` (``kill -9`` of the CLI process), ``terminate`` (its database sessions
ended with ``pg_terminate_backend``, as an operator or a failover would) or ``restart`` (the
server stopped with an immediate shutdown, a crash, and started again). A fault strikes a
random time after the command connects, or right after a random amount of progress (steps
journaled, batches committed), so it lands in start-up, between steps and inside them
alike. :func:`inject` starts the command, waits, strikes, and says whether the fault landed
(struck while the command ran, and stopped it).

The checks afterwards are here too: :func:`steps_not_done` (the journal and the live catalog
agree that every step of a stage is done), :func:`backfill_batch_problems` (no batch applied
twice: unique numbers, disjoint key ranges walking forward), :func:`invalid_indexes` and
:func:`rows_lost`.

Example::

    schedule = FaultSchedule(seed=7, max_delay_s=2.0)
    for fault in schedule.take(10):
        outcome = inject(fault, cli_command("apply", path, "--stage", "backfill", "--yes",
                                            "--dsn", dsn), dsn)
        wait_for_lock_release(dsn)
        finished = run_cli(cli_command("apply", path, "--stage", "backfill", "--yes",
                                       "--dsn", dsn))
        assert finished.returncode == 0
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from rls_migrate.migration_lock import lock_holder
from rls_migrate.steps import Step

FaultKind = Literal["sigkill", "terminate", "restart"]
FAULT_KINDS: tuple[FaultKind, ...] = ("sigkill", "terminate", "restart")
RUNNER_APPLICATION = "rls-migrate"
"""What every session of the toolkit's ``application_name`` starts with."""
DSN_VARIABLES = ("RLS_MIGRATE_DSN", "DATABASE_URL")

__all__ = [
    "FAULT_KINDS",
    "FaultKind",
    "Fault",
    "FaultOutcome",
    "FaultSchedule",
    "backfill_batch_problems",
    "cli_command",
    "cli_env",
    "inject",
    "invalid_indexes",
    "rows_lost",
    "run_cli",
    "runner_pids",
    "steps_not_done",
    "terminate_runners",
    "timed_run",
    "wait_for_runner",
    "wait_for_lock_release",
]


# --------------------------------------------------------------------------- the CLI


def cli_command(*args: str) -> list[str]:
    """``python -m rls_migrate ARGS``, with this interpreter (the installed package)."""
    return [sys.executable, "-m", "rls_migrate", *args]


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the DSN variables, so a command connects only
    where its arguments say."""
    env = {k: v for k, v in os.environ.items() if k not in DSN_VARIABLES}
    env.update(extra or {})
    return env


def run_cli(command: Sequence[str], *, timeout: float = 300.0,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to its end and capture its output (text)."""
    return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout,
                          env=cli_env(env), check=False)


# --------------------------------------------------------------------------- schedules


@dataclasses.dataclass(frozen=True)
class Fault:
    """Strike ``delay_s`` seconds after the command's first database session appears, or,
    with ``after``, that long after its progress (see :func:`inject`) reached ``after``."""

    kind: FaultKind
    delay_s: float
    after: int | None = None

    def __str__(self) -> str:
        at = f"+{self.delay_s:.3f}s after progress {self.after}" if self.after is not None \
            else f"@{self.delay_s:.3f}s"
        return f"{self.kind}{at}"


class FaultSchedule:
    """A reproducible stream of faults: the same seed gives the same kinds and delays.

    ``weights`` gives the share of each kind. Time faults strike uniformly in
    ``[0, max_delay_s]`` after the command connects, where ``max_delay_s`` should be about
    how long it works once connected (a calibration run measures it): they land in start-up,
    planning and steps alike. With ``progress_units`` (how many units of progress a whole run
    makes: steps journaled, batches committed), a ``progress_share`` of the faults instead
    wait for a random amount of progress, then strike within ``step_delay_s``: between
    steps, inside them, mid-batch, wherever the work is, however fast the stage.
    """

    def __init__(self, seed: int, *, max_delay_s: float,
                 weights: Mapping[FaultKind, float] | None = None, progress_units: int = 0,
                 progress_share: float = 0.7, step_delay_s: float = 0.03) -> None:
        self.seed = seed
        self.max_delay_s = max(0.0, max_delay_s)
        self.progress_units = progress_units
        self.progress_share = progress_share
        self.step_delay_s = step_delay_s
        default: dict[FaultKind, float] = {"sigkill": 1.0}
        self.weights: dict[FaultKind, float] = dict(weights or default)
        unknown = set(self.weights) - set(FAULT_KINDS)
        if unknown or not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"weights must give a positive share to some of {FAULT_KINDS}, "
                             f"got {self.weights!r}")
        self._rng = random.Random(seed)

    def next(self) -> Fault:
        kinds = [k for k, w in self.weights.items() if w > 0]
        kind = self._rng.choices(kinds, weights=[self.weights[k] for k in kinds])[0]
        if self.progress_units > 0 and self._rng.random() < self.progress_share:
            return Fault(kind, round(self._rng.uniform(0.0, self.step_delay_s), 4),
                         after=self._rng.randrange(self.progress_units))
        return Fault(kind, round(self._rng.uniform(0.0, self.max_delay_s), 4))

    def take(self, n: int) -> list[Fault]:
        return [self.next() for _ in range(n)]


# --------------------------------------------------------------------------- sessions


def _dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn).get("dbname", ""))


def _admin_dsn(dsn: str) -> str:
    """The same server and role, database ``postgres``: it survives dropping ``dsn``'s."""
    return make_conninfo(dsn, dbname="postgres")


def runner_pids(conn: psycopg.Connection[Any], dbname: str) -> list[int]:
    """Backends of the toolkit (``application_name`` starting with rls-migrate) in
    ``dbname``, other than ``conn``'s own."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
        " AND starts_with(application_name, %s) ORDER BY backend_start",
        [dbname, RUNNER_APPLICATION]).fetchall()
    return [int(r[0]) for r in rows]


def terminate_runners(dsn: str) -> int:
    """``pg_terminate_backend`` every toolkit session in ``dsn``'s database; how many."""
    with psycopg.connect(_admin_dsn(dsn), autocommit=True) as conn:
        pids = runner_pids(conn, _dbname(dsn))
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])
    return len(pids)


def wait_for_lock_release(dsn: str, timeout_s: float = 30.0) -> float:
    """Wait until no session holds the migration lock (a killed runner's backend lingers
    until the server notices the closed socket); returns the seconds waited."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                while lock_holder(conn) is not None:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the migration lock stayed held for {timeout_s} s")
                    time.sleep(0.05)
            return time.monotonic() - started
        except psycopg.OperationalError:
            # The server is still coming back from a restart.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --------------------------------------------------------------------------- injecting


def _wait_for_progress(dsn: str, proc: subprocess.Popen[Any],
                       progress: Callable[[psycopg.Connection[Any]], int], target: int,
                       timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True) as conn:
        while proc.poll() is None and time.monotonic() < deadline:
            if progress(conn) >= target:
                return
            time.sleep(0.002)


def wait_for_runner(dsn: str, proc: subprocess.Popen[Any], timeout_s: float = 60.0) -> bool:
    """Wait until ``proc`` (a toolkit command) has a session in ``dsn``'s database: False
    when it ended first or the time ran out."""
    dbname = _dbname(dsn)
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(_admin_dsn(dsn), autocommit=True) as conn:
        while proc.poll() is None and time.monotonic() < deadline:
            if runner_pids(conn, dbname):
                return True
            time.sleep(0.002)
    return False


@dataclasses.dataclass(frozen=True)
class FaultOutcome:
    fault: Fault
    struck: bool  # the command was still running when the fault struck
    connected: bool  # its first database session was seen
    returncode: int | None
    output: str  # stdout and stderr, when a log_path was given
    elapsed_s: float

    @property
    def landed(self) -> bool:
        """The fault stopped the command: it struck while the command ran, and the command
        did not complete (it may finish in the instant before a kill, or a restart may fall
        after its last statement)."""
        return self.struck and self.returncode != 0

    def __str__(self) -> str:
        state = ("landed" if self.landed else "struck, but the command completed"
                 if self.struck else "missed (already finished)")
        return f"{self.fault}: {state}, exit {self.returncode}"


def inject(
    fault: Fault,
    command: Sequence[str],
    dsn: str,
    *,
    restart: Callable[[str], None] | None = None,
    progress: Callable[[psycopg.Connection[Any]], int] | None = None,
    log_path: Path | None = None,
    connect_timeout_s: float = 60.0,
    exit_timeout_s: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> FaultOutcome:
    """Start ``command``, wait for its first session in ``dsn``'s database (and, for a
    fault with ``after``, until ``progress(conn)`` on a connection to that database reaches
    it), wait ``fault.delay_s``, strike, and wait for the process to end.

    ``restart(mode)`` restarts the server (``LocalServer.restart``); it is needed for
    ``restart`` faults. The command's output goes to ``log_path`` (else nowhere)."""
    if fault.kind == "restart" and restart is None:
        raise ValueError("a restart fault needs restart=LocalServer.restart")
    started = time.monotonic()
    out = log_path.open("w") if log_path is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT,
                                env=cli_env(env), text=True)
    finally:
        if log_path is not None and not isinstance(out, int):
            out.close()
    struck = False
    try:
        connected = wait_for_runner(dsn, proc, connect_timeout_s)
        if connected and fault.after is not None and progress is not None:
            _wait_for_progress(dsn, proc, progress, fault.after, connect_timeout_s)
        if connected:
            time.sleep(fault.delay_s)
        if proc.poll() is None:
            struck = True
            if fault.kind == "sigkill":
                proc.send_signal(signal.SIGKILL)
            elif fault.kind == "terminate":
                struck = terminate_runners(dsn) > 0
            else:
                assert restart is not None
                restart("immediate")
        returncode = proc.wait(timeout=exit_timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    output = log_path.read_text(errors="replace") if log_path is not None else ""
    return FaultOutcome(fault, struck, connected, returncode, output,
                        time.monotonic() - started)


def timed_run(command: Sequence[str], dsn: str, *, timeout_s: float = 300.0,
              env: Mapping[str, str] | None = None) -> tuple[int, float]:
    """Run ``command`` unharmed: its exit code and the seconds from its first database
    session to its exit (how long a fault has to land mid-run; calibrates a schedule)."""
    proc = subprocess.Popen(list(command), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=cli_env(env))
    try:
        connected = wait_for_runner(dsn, proc, timeout_s)
        first_seen = time.monotonic()
        returncode = proc.wait(timeout=timeout_s)
        return returncode, (time.monotonic() - first_seen) if connected else 0.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


# --------------------------------------------------------------------------- checks


def steps_not_done(conn: psycopg.Connection[Any], steps: Iterable[Step]) -> list[str]:
    """Steps the journal does not have as done, or whose done check (the live catalog)
    disagrees with the journal: after a completed run, both must say done (except a
    backfill that skipped orphans on purpose: its rows without a parent stay empty)."""
    problems: list[str] = []
    for step in steps:
        row = conn.execute("SELECT status FROM rls_migrate.step_state WHERE step_id = %s",
                           [step.id]).fetchone()
        status = None if row is None else str(row[0])
        if status != "done":
            problems.append(f"{step.id}: journal status {status!r}")
        if step.done_check is not None:
            check = conn.execute(step.done_check).fetchone()
            if not (check and check[0]) and not _finished_on_purpose(conn, step):
                problems.append(f"{step.id}: the journal says {status!r} but its done check "
                                "is false")
    return problems


def _finished_on_purpose(conn: psycopg.Connection[Any], step: Step) -> bool:
    """A backfill whose done check stays false by design: it finished and left rows without
    a tenant because their parent is gone (``orphans: skip``), which the journal records."""
    if step.kind != "backfill" or step.table is None:
        return False
    row = conn.execute(
        "SELECT c.finished AND EXISTS (SELECT 1 FROM rls_migrate.anomalies a"
        " WHERE a.table_name = c.table_name AND a.kind = 'orphan' AND a.count > 0)"
        " FROM rls_migrate.backfill_checkpoint c WHERE c.table_name = %s",
        [str(step.table)]).fetchone()
    return bool(row and row[0])


def _key(value: Any) -> Any:
    """Key parts as JSON keeps them: numbers compare as numbers, the rest as text."""
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def backfill_batch_problems(conn: psycopg.Connection[Any]) -> list[str]:
    """Every table's batch log must be a clean walk: batch numbers 1..n (unique), each key
    range ``(lo, hi]`` starting where the previous one ended and moving forward, so no two
    overlap and no row was filled by two batches; and the rows they counted add up to the
    table's checkpoint."""
    problems: list[str] = []
    tables = [str(r[0]) for r in conn.execute(
        "SELECT DISTINCT table_name FROM rls_migrate.backfill_batches ORDER BY 1").fetchall()]
    for table in tables:
        rows = conn.execute(
            "SELECT batch_no, lo, hi, rows FROM rls_migrate.backfill_batches"
            " WHERE table_name = %s ORDER BY batch_no", [table]).fetchall()
        numbers = [int(r[0]) for r in rows]
        if numbers != list(range(1, len(rows) + 1)):
            problems.append(f"{table}: batch numbers {numbers[:10]}... are not 1..{len(rows)}")
        previous_hi: Any = None
        for batch_no, lo, hi, _ in rows:
            if lo != previous_hi:
                problems.append(f"{table}: batch {batch_no} starts at {lo}, the previous one "
                                f"ended at {previous_hi} (overlap or gap)")
            if lo is not None and hi is not None and not (
                    [_key(k) for k in lo] < [_key(k) for k in hi]):
                problems.append(f"{table}: batch {batch_no} range ({lo}, {hi}] is empty or "
                                "backwards")
            previous_hi = hi
        ck = conn.execute("SELECT rows_done FROM rls_migrate.backfill_checkpoint"
                          " WHERE table_name = %s", [table]).fetchone()
        counted = sum(int(r[3]) for r in rows)
        if ck is None or int(ck[0]) != counted:
            problems.append(f"{table}: batches counted {counted} rows, the checkpoint "
                            f"{None if ck is None else ck[0]}")
    return problems


def invalid_indexes(conn: psycopg.Connection[Any], schemas: Sequence[str] = ("public",)
                    ) -> list[str]:
    """INVALID indexes (what a killed ``CREATE INDEX CONCURRENTLY`` leaves behind)."""
    rows = conn.execute(
        "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_index x"
        " JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE NOT x.indisvalid AND n.nspname = ANY(%s) ORDER BY 1",
        [list(schemas)]).fetchall()
    return [str(r[0]) for r in rows]


def rows_lost(before: Mapping[str, str], after: Mapping[str, str]) -> int:
    """Rows missing after, from two :func:`~rls_migrate.testing.checksums.table_checksums`
    results (``"<rows>:<md5>"`` per table); a table that vanished loses all its rows."""
    lost = 0
    for table, value in before.items():
        rows_before = int(value.split(":", 1)[0])
        rows_after = int(after[table].split(":", 1)[0]) if table in after else 0
        lost += max(0, rows_before - rows_after)
    return lost
