"""Write-truth evidence: what the write-truth triggers (:mod:`rls_migrate.stages.write_truth`)
saw when a recorded DELETE or UPDATE changed its rows, read from ``rls_migrate.write_truth``
and from server logs (``rls_migrate write-truth {json}`` LOG lines: a rolled-back
transaction's row is gone, its line is not), and linked to the recordings of the same
statement execution.

Link: the recorder and the statement trigger run in the same backend during the same
statement, so a recording made at ``at`` by pid P belongs to the write-truth record of P with
``statement_at <= at <= record.at`` (``statement_at`` is ``statement_timestamp()``; a backend
runs one statement at a time). Statements of one simple-protocol query string share their
``statement_timestamp()``: replay refuses those anyway."""

from __future__ import annotations

import bisect
import csv
import dataclasses
import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from rls_migrate.evidence import Violation, decode_to_end, normalize_statement, record_in_line
from rls_migrate.stages.policies import KINDS
from rls_migrate.stages.write_truth import LOG_PREFIX, LOG_VERSION, OPERATIONS, TABLE

Conn = psycopg.Connection[Any]

_CSV_MESSAGE = 13


@dataclasses.dataclass(frozen=True)
class WriteTruth:
    """One flagged DELETE or UPDATE statement on one table, as its triggers saw it."""

    at: dt.datetime  # when its AFTER STATEMENT trigger ran
    statement_at: dt.datetime  # statement_timestamp()
    pid: int
    table: str
    operation: str  # delete, update
    foreign: bool  # it changed a row of another tenant than the one set (or none was set)
    row_tenant: str | None  # the first such row's tenant
    kind: str
    context: str | None
    role: str | None
    application_name: str | None
    statement: str
    source: str
    dbid: str | None = None
    database: str | None = None

    def key(self) -> tuple[dt.datetime, int, str]:
        return (self.at, self.pid, self.table)

    def describe(self) -> str:
        setting = (f"tenant {self.context} set" if self.context else "no tenant set")
        if not self.foreign:
            return (f"when it ran, every row it {self.operation}d in {self.table} was the "
                    f"current tenant's ({setting})")
        whose = f"tenant {self.row_tenant}'s" if self.row_tenant else "a row without tenant"
        return f"when it ran, it {self.operation}d {whose} row in {self.table} ({setting})"


def _time(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def truth_from_json(obj: object, source: str) -> WriteTruth | None:
    """A record from a log line's JSON object; None for anything the triggers do not write."""
    if not isinstance(obj, dict) or obj.get("v") != LOG_VERSION:
        return None
    at, statement_at = _time(obj.get("at")), _time(obj.get("statement_at"))
    pid, foreign = obj.get("pid"), obj.get("foreign")
    table, op, kind = obj.get("table"), obj.get("op"), obj.get("kind")
    if at is None or statement_at is None or not isinstance(pid, int) \
            or not isinstance(foreign, bool) or not isinstance(table, str) \
            or op not in OPERATIONS or kind not in KINDS:
        return None
    return WriteTruth(at, statement_at, pid, table, str(op), foreign,
                      _text(obj.get("row_tenant")), str(kind), _text(obj.get("context")),
                      _text(obj.get("role")), _text(obj.get("app")),
                      _text(obj.get("statement")) or "", source, _text(obj.get("dbid")),
                      _text(obj.get("db")))


def parse_truth_line(line: str, source: str = "log") -> WriteTruth | None:
    """The record of a plain (stderr/syslog) or jsonlog line, with the recorders' rules: the
    message right after the severity, a JSON object that ends the line (see
    :func:`rls_migrate.evidence.parse_log_line`)."""
    found = record_in_line(line, LOG_PREFIX, lambda obj: truth_from_json(obj, source))
    return found[0] if found is not None else None


def read_truth_log(path: Path) -> Iterator[WriteTruth]:
    """The write-truth records of a server log file (stderr, syslog, csvlog, jsonlog)."""
    from rls_migrate.evidence import _open_text  # one way to open a (gzipped) log

    with _open_text(path) as fh:
        if path.name.removesuffix(".gz").endswith(".csv"):
            for row in csv.reader(fh):
                if len(row) > _CSV_MESSAGE and row[_CSV_MESSAGE].startswith(LOG_PREFIX):
                    found = decode_to_end(row[_CSV_MESSAGE], len(LOG_PREFIX),
                                          lambda obj: truth_from_json(obj, path.name))
                    if found is not None:
                        yield found
            return
        for line in fh:
            if LOG_PREFIX in line:
                found = parse_truth_line(line, path.name)
                if found is not None:
                    yield found


def load_truth(conn: Conn, start: dt.datetime | None) -> list[WriteTruth]:
    """The rows of ``rls_migrate.write_truth`` since ``start`` (none before schema 0006)."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"rls_migrate.{TABLE}"]
                       ).fetchone()
    if not row or not row[0]:
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM rls_migrate.write_truth"
                    " WHERE %(start)s::timestamptz IS NULL OR at >= %(start)s ORDER BY at",
                    {"start": start})
        return [WriteTruth(r["at"], r["statement_at"], r["pid"], r["table_name"],
                           r["operation"], r["foreign_rows"], r["row_tenant"], r["kind"],
                           r["context"], r["role_name"], r["application_name"],
                           r["statement"] or "", "write_truth") for r in cur.fetchall()]


class TruthIndex:
    """Write-truth records by backend, to link recordings to them."""

    def __init__(self, records: Iterable[WriteTruth] = ()) -> None:
        unique: dict[tuple[dt.datetime, int, str], WriteTruth] = {}
        for r in records:
            unique.setdefault(r.key(), r)
        self._by_pid: dict[int, list[WriteTruth]] = {}
        for r in sorted(unique.values(), key=lambda r: r.statement_at):
            self._by_pid.setdefault(r.pid, []).append(r)
        self._starts = {pid: [r.statement_at for r in rs] for pid, rs in self._by_pid.items()}
        self.records = tuple(unique.values())
        # Another tenant's rows changed, by statement shape, application and kind: each
        # record normalized once, however many groups ask.
        self._foreign: dict[tuple[str, str | None, str], list[WriteTruth]] = {}
        for r in self.records:
            if r.foreign:
                self._foreign.setdefault(
                    (normalize_statement(r.statement), r.application_name or None, r.kind),
                    []).append(r)

    def __len__(self) -> int:
        return len(self.records)

    def linked(self, v: Violation) -> list[WriteTruth]:
        """The records of the statement execution that made recording ``v``."""
        if v.pid is None or v.pid not in self._by_pid:
            return []
        records, starts = self._by_pid[v.pid], self._starts[v.pid]
        last = bisect.bisect_right(starts, v.at)
        if last == 0:
            return []
        # The latest statement of this backend that started by then (one at a time): its
        # records, one per table, if it was still running when the recorder ran.
        first = bisect.bisect_left(starts, starts[last - 1])
        return [r for r in records[first:last] if r.at >= v.at]

    def foreign_like(self, statement: str, application_name: str | None,
                     kind: str) -> list[WriteTruth]:
        """Records of another tenant's rows changed by a statement of this shape, from this
        application, in this kind of context: a real violation among many harmless runs of
        the same statement, whichever of them replay picked."""
        return list(self._foreign.get(
            (normalize_statement(statement), application_name or None, kind), ()))


def select(records: Sequence[WriteTruth], database: str, identity: str | None
           ) -> list[WriteTruth]:
    """Log records of this database (its identity where both are known, else its name)."""
    return [r for r in records
            if (r.dbid == identity if r.dbid is not None and identity is not None
                else r.database in (None, database))]
