"""The enforce gate: ``apply --stage enforce`` runs only when every would-be violation of
``options.enforce.report_window`` is confirmed harmless by replay.

Groups without a verdict newer than their last recording are replayed here (see
:mod:`rls_migrate.replay`). The gate refuses (exit 3) while a group is confirmed or
unconfirmable, or (without a server log to read) statements were counted that no sample
explains, listing
statement, parameters (redacted) and verdict; harmless groups pass, listed in the log.
``--force`` runs the stage anyway, and what the gate saw is journaled as ``forced``."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import structlog

from rls_migrate.errors import GateClosed
from rls_migrate.playbook import Playbook
from rls_migrate.replay import describe_parameters
from rls_migrate.report import Group, build_report, describe_window

TOP = 5
"""Groups the gate lists when it refuses."""


def _line(g: Group) -> str:
    app = f", application {g.application_name!r}" if g.application_name else ""
    verdict = g.verdict.verdict if g.verdict else "not replayed"
    reason = f" ({g.verdict.reason})" if g.verdict else ""
    sample = g.verdict.deciding if g.verdict else None
    params = describe_parameters(sample.parameters if sample else g.example.parameters, False)
    return (f"{verdict.upper()}{reason}: {g.count}x {g.table} {g.operation} {g.kind} as "
            f"{g.role}{app}: {g.statement[:160]!r}, parameters {params}")


def enforce_gate(conn: psycopg.Connection[Any], playbook: Playbook,
                 force: bool) -> dict[str, Any] | None:
    since = dt.timedelta(milliseconds=playbook.options.enforce.report_window)
    report = build_report(conn, playbook, since, snapshot=False, confirm_groups=True)
    if report.clean:
        return None
    window = describe_window(since)
    harmless = [g for g in report.groups if g.harmless]
    blocking = [g for g in report.groups if not g.harmless]
    # Without a server log, a statement recorded in a read-only or rolled-back transaction
    # shows only in the counters. With one, every recording has its line there, and the
    # counters (flushed up to a second late, so a statement from just before the window can
    # count inside it) add nothing to decide on.
    unexplained = [] if report.log_files else [
        f"{c.in_window:,} statement(s) on {c.table} ({c.operation}) counted without a sample "
        "(read-only or rolled-back transactions: give options.observe.logs so the gate can "
        "read and replay them)" for c in report.counters
        if c.in_window and not any(g.table == c.table and g.operation == c.operation
                                   for g in report.groups)]
    log = structlog.get_logger("rls_migrate.gate")
    for g in harmless:
        log.info("gate.harmless", group=_line(g))
    if not blocking and not unexplained:
        return None
    top = [_line(g) for g in blocking[:TOP]] + unexplained[:TOP]
    if not force:
        more = len(blocking) - TOP
        listed = "".join(f"\n  - {line}" for line in top)
        if more > 0:
            listed += f"\n  - and {more} more group(s)"
        passed = (f"\n{len(harmless)} group(s) replayed harmless (the same rows enforced) "
                  "pass." if harmless else "")
        raise GateClosed(
            f"enforce refused: observe recorded would-be violations in {window} that replay "
            f"did not show harmless ({len(blocking)} group(s), {report.statements} recorded "
            f"statement(s)); confirmed ones would see other rows or fail their writes once "
            f"enforced, unconfirmable ones could not be replayed:{listed}{passed}"
            f"\nSee them all: rls-migrate report PLAYBOOK --confirm --since "
            f"{window.removeprefix('the last ')}. Fix them and wait for a clean window, or "
            "run apply with --force to enforce anyway (the override is journaled).")
    return {"gate": "observe report confirmed by replay", "forced": True, "window": window,
            "statements": report.statements, "counted_statements": report.counted_statements,
            "top": top, "harmless": [_line(g) for g in harmless]}
