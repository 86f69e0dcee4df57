"""What the enforce gate makes of the evidence a corpus run left: every recorded group with
its verdict, and whether the gate refuses.

This version of the toolkit has no replay yet (issue 16, item 3): every recorded group
blocks the gate, and none has a verdict. ``verdict`` is None then."""

from __future__ import annotations

import collections
import dataclasses

import psycopg

from observe_corpus.database import CorpusDb
from rls_migrate.errors import GateClosed
from rls_migrate.report import build_report, enforce_gate

BLOCKING = ("confirmed", "unconfirmable")
HAS_REPLAY = False
"""Whether this version confirms groups by replay (gives them verdicts)."""


@dataclasses.dataclass(frozen=True)
class GroupVerdict:
    application_name: str | None
    table: str
    operation: str
    kind: str
    statement: str
    verdict: str | None  # harmless, confirmed, unconfirmable; None: not replayed
    blocks: bool  # whether this group alone keeps the gate closed


def verdicts(db: CorpusDb) -> list[GroupVerdict]:
    """Every group observe mode recorded in ``db`` (samples, and the server log when this
    process can read it), as the gate judges it."""
    log_path = getattr(db.server, "log_path", None)
    logs = [log_path] if log_path is not None else []
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        report = build_report(conn, db.playbook, None, logs=logs, snapshot=False)
    return [GroupVerdict(g.application_name, g.table, g.operation, g.kind, g.statement,
                         None, True) for g in report.groups]


def gate_refusal(db: CorpusDb) -> str | None:
    """The gate's message when it refuses to enforce ``db``; None when it lets enforce run."""
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        try:
            enforce_gate(conn, db.playbook, False)
        except GateClosed as closed:
            return str(closed)
    return None


def by_application(found: list[GroupVerdict], prefix: str
                   ) -> dict[str, list[GroupVerdict]]:
    """Groups by the code path that ran them: ``prefix/<name>/...`` -> name."""
    out: dict[str, list[GroupVerdict]] = collections.defaultdict(list)
    for g in found:
        app = g.application_name or ""
        if app.startswith(prefix + "/"):
            out[app.split("/")[1]].append(g)
    return dict(out)
