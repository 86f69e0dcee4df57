"""What the enforce gate makes of the evidence a corpus run left: every recorded group with
its verdict, and whether the gate refuses.

Replay (issue 16, item 3) gives each group a verdict: harmless, confirmed or unconfirmable;
only harmless groups let the gate open. A version without replay gives none, and every
recorded group blocks (:data:`HAS_REPLAY` says which this is)."""

from __future__ import annotations

import collections
import dataclasses
import importlib
import inspect
from typing import Any

import psycopg

from observe_corpus.database import CorpusDb
from rls_migrate.errors import GateClosed
from rls_migrate.report import build_report

BLOCKING = ("confirmed", "unconfirmable")
HAS_REPLAY = "confirm_groups" in inspect.signature(build_report).parameters
"""Whether this version confirms groups by replay (gives them verdicts)."""


def _enforce_gate() -> Any:
    """The gate ``apply --stage enforce`` runs (rls_migrate.gate, or report before it)."""
    for module in ("rls_migrate.gate", "rls_migrate.report"):
        try:
            return importlib.import_module(module).enforce_gate
        except (ImportError, AttributeError):
            continue
    raise AssertionError("no enforce_gate in rls_migrate.gate or rls_migrate.report")


@dataclasses.dataclass(frozen=True)
class GroupVerdict:
    application_name: str | None
    table: str
    operation: str
    kind: str
    statement: str
    verdict: str | None  # harmless, confirmed, unconfirmable; None: not replayed
    reason: str | None
    blocks: bool  # whether this group alone keeps the gate closed


def verdicts(db: CorpusDb) -> list[GroupVerdict]:
    """Every group observe mode recorded in ``db`` (samples, and the server log when this
    process can read it), confirmed by replay where this version can, as the gate judges
    it."""
    log_path = getattr(db.server, "log_path", None)
    logs = [log_path] if log_path is not None else []
    extra: dict[str, Any] = {"confirm_groups": True} if HAS_REPLAY else {}
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        report = build_report(conn, db.playbook, None, logs=logs, snapshot=False, **extra)
    out = []
    for g in report.groups:
        verdict = getattr(g, "verdict", None)
        name = getattr(verdict, "verdict", None)
        blocks = not getattr(g, "harmless", False) if HAS_REPLAY else True
        out.append(GroupVerdict(g.application_name, g.table, g.operation, g.kind, g.statement,
                                name, getattr(verdict, "reason", None), blocks))
    return out


def gate_refusal(db: CorpusDb) -> str | None:
    """The gate's message when it refuses to enforce ``db``; None when it lets enforce run."""
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        try:
            _enforce_gate()(conn, db.playbook, False)
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
