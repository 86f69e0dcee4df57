"""report: the would-be violations observe mode recorded, and the gate on enforce.

Evidence comes from three places (see :mod:`rls_migrate.stages.policies`):

* ``rls_migrate.violation_samples``: one row per statement, table and operation, from
  transactions that could write and committed;
* the recorders' ``pg_stat_user_functions`` counters: every recorded statement (one call per
  statement, table and operation, not per row), whatever happened to its transaction
  (read-only, rolled back). Counters only grow, so each report saves a snapshot in
  ``rls_migrate.counter_snapshots``; the statements counted in a window are the growth since
  the last snapshot taken before the window began;
* server log files (``--log``), e.g. from hot standbys, where nothing can be written: every
  recorded statement leaves one line ``rls_migrate violation {json}`` there.

Violations are grouped by table, operation (read: a row the enforced ``USING`` would hide;
write: a row its ``WITH CHECK`` would refuse), kind (``no_context``: no tenant set;
``wrong_tenant``: another tenant's row), role, ``application_name`` and the statement with
its literals and spacing normalized away.

Example::

    with psycopg.connect(dsn, autocommit=True) as conn:
        report = build_report(conn, playbook, since=dt.timedelta(hours=1))
    if not report.clean:
        print(render_text(report))
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import gzip
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import click
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from rls_migrate.catalog import Catalog
from rls_migrate.connect import DSN_HELP
from rls_migrate.errors import GateClosed, PrerequisiteError, UsageError
from rls_migrate.playbook import Playbook, parse_duration_ms
from rls_migrate.runner import register_gate
from rls_migrate.stages.common import TOOLKIT_SCHEMA, PlanContext, with_partitions
from rls_migrate.stages.policies import (
    KINDS,
    LOG_PREFIX,
    LOG_VERSION,
    OPERATIONS,
    SAMPLES_TABLE,
    recorder_name,
)

Conn = psycopg.Connection[Any]

TOP = 5
"""Groups the gate lists when it refuses."""

# --------------------------------------------------------------------------- statements

_TOKEN = re.compile(
    r"""
    (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<dollar>\$(?P<tag>(?:[A-Za-z_][A-Za-z0-9_]*)?)\$.*?\$(?P=tag)\$)
  | (?P<string>[eEbBxXuU]&?'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*')
  | (?P<ident>"(?:[^"]|"")*")
  | (?P<param>\$\d+)
  | (?P<number>(?<![\w$.])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?(?![\w]))
  | (?P<space>\s+)
    """,
    re.VERBOSE | re.DOTALL,
)
_LISTS = re.compile(r"\(\s*\?(?:\s*,\s*\?)+\s*\)")


def normalize_statement(text: str) -> str:
    """The statement's shape: literals and ``$n`` parameters become ``?``, lists of them
    ``(?, ...)``, comments go and spacing collapses, so ``WHERE id = 7`` and
    ``WHERE id =  $1`` group together::

        >>> normalize_statement("SELECT *\\n FROM t WHERE id IN (1, 2) AND x = 'a'")
        'SELECT * FROM t WHERE id IN (?, ...) AND x = ?'
    """

    def replace(match: re.Match[str]) -> str:
        kind = match.lastgroup
        if kind == "comment":
            return " "
        if kind == "space":
            return " "
        if kind in ("dollar", "string", "number", "param"):
            return "?"
        return match.group(0)

    out = re.sub(r"\s+", " ", _TOKEN.sub(replace, text))
    out = re.sub(r",(?=\S)", ", ", re.sub(r" ([,)])", r"\1", out.replace("( ", "(")))
    out = _LISTS.sub("(?, ...)", out)
    return out.strip().rstrip(";").strip()


# --------------------------------------------------------------------------- evidence


@dataclasses.dataclass(frozen=True)
class Violation:
    """One recorded statement: a sample row, or a server-log line."""

    at: dt.datetime
    table: str
    operation: str
    kind: str
    role: str | None
    session_user: str | None
    application_name: str | None
    pid: int | None
    statement: str
    query_id: int | None
    row_tenant: str | None
    context: str | None
    source: str  # "samples" or the log file's name
    database: str | None = None  # in log lines: a server log holds every database's

    def key(self) -> tuple[dt.datetime, int | None, str, str]:
        """What a sample row and the log line of the same recording share."""
        return (self.at, self.pid, self.table, self.operation)


_DECODER = json.JSONDecoder()


def _opt_str(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(value)
    return value


def _opt_int(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(value)
    return value


def violation_from_json(obj: object, source: str) -> Violation | None:
    """A :class:`Violation` from the JSON object of a log line, or None when the object is
    not one the recorders write (another version, a missing or mistyped field)."""
    if not isinstance(obj, dict) or obj.get("v") not in (1, LOG_VERSION):
        return None
    try:
        at = dt.datetime.fromisoformat(str(obj["at"]))
        table, op, kind = obj["table"], obj["op"], obj["kind"]
        if not isinstance(table, str) or op not in OPERATIONS or kind not in KINDS:
            return None
        if at.tzinfo is None:
            return None
        return Violation(
            at=at, table=table, operation=op, kind=kind, role=_opt_str(obj.get("role")),
            session_user=_opt_str(obj.get("session_user")),
            application_name=_opt_str(obj.get("app")), pid=_opt_int(obj.get("pid")),
            statement=_opt_str(obj.get("statement")) or "",
            query_id=_opt_int(obj.get("query_id")), row_tenant=_opt_str(obj.get("row_tenant")),
            context=_opt_str(obj.get("context")), source=source,
            database=_opt_str(obj.get("db")))
    except (KeyError, ValueError, TypeError):
        return None


def _decode_to_end(text: str, start: int, source: str) -> Violation | None:
    try:
        obj, end = _DECODER.raw_decode(text, start)
    except ValueError:
        return None
    if text[end:].strip():
        return None
    return violation_from_json(obj, source)


def parse_log_line(line: str, source: str = "log") -> Violation | None:
    """The violation a server-log line records, or None.

    Plain (stderr/syslog) lines: the recorder's message is the end of the line, a JSON
    object after :data:`LOG_PREFIX`; it is searched from the right, and only an object that
    decodes and ends the line counts. A prefix such as ``%a`` (application_name) that
    imitates the message therefore cannot make a second record, and the real object, whose
    strings are JSON-escaped, cannot hide a valid object inside itself. ``jsonlog`` lines
    (PostgreSQL 15+) are JSON objects whose ``message`` holds the recorder's message."""
    if line.startswith("\t"):
        # A continuation line of a multi-line message: the statement text of a STATEMENT:
        # or statement: line, which the application chose.
        return None
    stripped = line.strip()
    if stripped.startswith("{") and '"message"' in stripped:
        try:
            entry = json.loads(stripped)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            message = entry.get("message")
            if isinstance(message, str) and message.startswith(LOG_PREFIX):
                return _decode_to_end(message, len(LOG_PREFIX), source)
            return None
    position = stripped.rfind(LOG_PREFIX)
    while position >= 0:
        # The recorder's message is the whole message of a LOG entry: right after the
        # severity, not at the end of a STATEMENT: line that quotes the application.
        if stripped.endswith(_SEVERITY, 0, position):
            found = _decode_to_end(stripped, position + len(LOG_PREFIX), source)
            if found is not None:
                return found
        position = stripped.rfind(LOG_PREFIX, 0, position)
    return None


_SEVERITY = "LOG:  "
"""What precedes a LOG entry's message in the stderr and syslog formats."""


def _open_text(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace", newline="")


_CSV_MESSAGE = 13
"""The ``message`` column of csvlog."""


def read_log(path: Path) -> Iterator[Violation]:
    """The violations recorded in a server log file (stderr, syslog, csvlog or jsonlog
    format; ``.gz`` files too)."""
    source = path.name
    csv_format = path.name.removesuffix(".gz").endswith(".csv")
    with _open_text(path) as fh:
        if csv_format:
            for row in csv.reader(fh):
                if len(row) > _CSV_MESSAGE and row[_CSV_MESSAGE].startswith(LOG_PREFIX):
                    found = _decode_to_end(row[_CSV_MESSAGE], len(LOG_PREFIX), source)
                    if found is not None:
                        yield found
            return
        for line in fh:
            if LOG_PREFIX in line:
                found = parse_log_line(line, source)
                if found is not None:
                    yield found


# --------------------------------------------------------------------------- the report


@dataclasses.dataclass
class Group:
    """Violations that share table, operation, kind, role, application and statement."""

    table: str
    operation: str
    kind: str
    role: str | None
    application_name: str | None
    statement: str  # normalized
    count: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    example: Violation
    sources: set[str]
    statement_calls: int | None = None  # pg_stat_statements.calls of the example's query

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table, "operation": self.operation, "kind": self.kind,
            "role": self.role, "application_name": self.application_name,
            "statement": self.statement, "count": self.count,
            "first_seen": self.first_seen.isoformat(), "last_seen": self.last_seen.isoformat(),
            "sources": sorted(self.sources), "statement_calls": self.statement_calls,
            "example": {
                "at": self.example.at.isoformat(), "statement": self.example.statement,
                "session_user": self.example.session_user, "pid": self.example.pid,
                "row_tenant": self.example.row_tenant, "context": self.example.context,
                "query_id": self.example.query_id, "source": self.example.source,
            },
        }


@dataclasses.dataclass(frozen=True)
class Counter:
    """A recorder's ``pg_stat_user_functions.calls``: statements the enforced policy would
    change (one call per statement, not per row)."""

    table: str
    operation: str
    function: str
    calls: int  # since the statistics were last reset
    in_window: int  # the growth since the last snapshot before the window (calls if none)
    measured_from: dt.datetime | None  # that snapshot's time; None: since the stats reset

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "operation": self.operation, "function": self.function,
                "calls": self.calls, "in_window": self.in_window,
                "measured_from": self.measured_from.isoformat() if self.measured_from else None}


@dataclasses.dataclass(frozen=True)
class Report:
    database: str
    generated_at: dt.datetime
    since: dt.timedelta | None
    window_start: dt.datetime | None
    groups: tuple[Group, ...]
    counters: tuple[Counter, ...]
    counters_available: bool
    log_files: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def statements(self) -> int:
        """Recorded statements in the window (one per statement, table and operation)."""
        return sum(g.count for g in self.groups)

    @property
    def counted_statements(self) -> int:
        """Statements the recorders counted in the window (this server only)."""
        return sum(c.in_window for c in self.counters)

    @property
    def clean(self) -> bool:
        return not self.groups and self.counted_statements == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database, "generated_at": self.generated_at.isoformat(),
            "window": describe_window(self.since),
            "window_start": self.window_start.isoformat() if self.window_start else None,
            "clean": self.clean, "statements": self.statements,
            "counted_statements": self.counted_statements, "counters_available": self.counters_available,
            "log_files": list(self.log_files), "groups": [g.as_dict() for g in self.groups],
            "counters": [c.as_dict() for c in self.counters], "notes": list(self.notes),
        }


def describe_window(since: dt.timedelta | None) -> str:
    if since is None:
        return "everything recorded"
    seconds = since.total_seconds()
    for unit, size in (("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"the last {int(seconds // size)}{unit}"
    return f"the last {seconds:g}s"


def parse_since(text: str | None, default_ms: float | None) -> dt.timedelta | None:
    """``--since``: a duration (``90s``, ``30min``, ``1h``), ``all``, or the default."""
    if text is None:
        return None if default_ms is None else dt.timedelta(milliseconds=default_ms)
    if text.strip().lower() == "all":
        return None
    try:
        ms = parse_duration_ms(text)
    except ValueError as exc:
        raise UsageError(f"--since: {exc} (or 'all')") from None
    return dt.timedelta(milliseconds=float(ms))


def _require_schema(conn: Conn) -> None:
    cannot_read = (f"the role {conn.info.user!r} cannot read the rls_migrate schema: run report "
                   "as the role that ran the migration (the application role never can)")
    row = conn.execute("SELECT has_schema_privilege(n.oid, 'USAGE') FROM pg_namespace n"
                       " WHERE n.nspname = %s", [TOOLKIT_SCHEMA]).fetchone()
    if row is not None and not row[0]:
        raise PrerequisiteError(cannot_read)
    tables = [f"{TOOLKIT_SCHEMA}.{SAMPLES_TABLE}", f"{TOOLKIT_SCHEMA}.counter_snapshots"]
    found = conn.execute("SELECT bool_and(to_regclass(t) IS NOT NULL) FROM unnest(%s::text[]) t",
                         [tables]).fetchone() if row is not None else None
    if not found or not found[0]:
        raise PrerequisiteError(
            "this database has no observe records (rls_migrate.violation_samples is missing): "
            "run `rls-migrate apply PLAYBOOK --stage prepare` (it creates or upgrades the "
            "schema), then --stage observe")
    allowed = conn.execute("SELECT bool_and(has_table_privilege(t, 'SELECT'))"
                           " FROM unnest(%s::text[]) t", [tables]).fetchone()
    if not allowed or not allowed[0]:
        raise PrerequisiteError(cannot_read)


_SAMPLE_GROUPS = sql.SQL(
    "WITH g AS ("
    " SELECT table_name, operation, kind, role_name, application_name, statement,"
    " count(*) AS n, min(at) AS first_at, max(at) AS last_at, max(id) AS last_id"
    " FROM {samples} WHERE %(start)s::timestamptz IS NULL OR at >= %(start)s"
    " GROUP BY table_name, operation, kind, role_name, application_name, statement)"
    " SELECT g.*, s.at, s.session_role, s.pid, s.query_id, s.row_tenant, s.context"
    " FROM g JOIN {samples} s ON s.id = g.last_id"
).format(samples=sql.Identifier(TOOLKIT_SCHEMA, SAMPLES_TABLE))

_KNOWN_SAMPLES = sql.SQL(
    "SELECT k.i FROM unnest(%s::timestamptz[], %s::int[], %s::text[], %s::text[])"
    " WITH ORDINALITY AS k(at, pid, table_name, operation, i)"
    " WHERE EXISTS (SELECT 1 FROM {samples} s WHERE s.at = k.at AND s.pid = k.pid"
    " AND s.table_name = k.table_name AND s.operation = k.operation)"
).format(samples=sql.Identifier(TOOLKIT_SCHEMA, SAMPLES_TABLE))


def _group_key(v: Violation) -> tuple[Any, ...]:
    return (v.table, v.operation, v.kind, v.role, v.application_name,
            normalize_statement(v.statement))


def _merge(groups: dict[tuple[Any, ...], Group], v: Violation, count: int,
           first: dt.datetime, last: dt.datetime) -> None:
    key = _group_key(v)
    group = groups.get(key)
    if group is None:
        groups[key] = Group(v.table, v.operation, v.kind, v.role, v.application_name,
                            statement=key[-1], count=count, first_seen=first, last_seen=last,
                            example=v, sources={v.source})
        return
    group.count += count
    group.first_seen = min(group.first_seen, first)
    if last >= group.last_seen:
        group.last_seen = last
        group.example = v
    group.sources.add(v.source)


def _sample_groups(conn: Conn, start: dt.datetime | None) -> list[
        tuple[Violation, int, dt.datetime, dt.datetime]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_SAMPLE_GROUPS, {"start": start})
        rows = cur.fetchall()
    out = []
    for r in rows:
        example = Violation(
            at=r["at"], table=r["table_name"], operation=r["operation"], kind=r["kind"],
            role=r["role_name"], session_user=r["session_role"],
            application_name=r["application_name"], pid=r["pid"],
            statement=r["statement"] or "", query_id=r["query_id"], row_tenant=r["row_tenant"],
            context=r["context"], source="samples")
        out.append((example, int(r["n"]), r["first_at"], r["last_at"]))
    return out


def _known_in_samples(conn: Conn, found: list[Violation]) -> set[int]:
    """Indexes of the log records that a sample row already holds (a primary's own log
    repeats what it sampled)."""
    if not found:
        return set()
    known: set[int] = set()
    for chunk in range(0, len(found), 5000):
        part = found[chunk:chunk + 5000]
        rows = conn.execute(_KNOWN_SAMPLES, [
            [v.at for v in part], [v.pid for v in part], [v.table for v in part],
            [v.operation for v in part]]).fetchall()
        known.update(chunk + int(r[0]) - 1 for r in rows)
    return known


def _recorders(conn: Conn, playbook: Playbook) -> list[tuple[str, str, str]]:
    """(table, operation, function name) of every recorder the playbook's observe creates."""
    catalog = Catalog.load(conn, schemas=playbook.schemas)
    ctx = PlanContext(catalog, playbook)
    return [(str(e.qname), op, recorder_name(e, op))
            for t in ctx.tenant_tables for e in with_partitions(ctx, t) for op in OPERATIONS]


def _counters(conn: Conn, recorders: list[tuple[str, str, str]], start: dt.datetime | None,
              now: dt.datetime, snapshot: bool) -> tuple[list[Counter], list[str]]:
    notes: list[str] = []
    names = [name for _, _, name in recorders]
    conn.execute("SELECT pg_stat_clear_snapshot()")
    calls = dict(conn.execute(
        "SELECT funcname::text, calls FROM pg_stat_user_functions"
        " WHERE schemaname = %s AND funcname = ANY(%s)", [TOOLKIT_SCHEMA, names]).fetchall())
    baselines: dict[str, tuple[int, dt.datetime]] = {}
    if start is not None:
        for name, base, taken in conn.execute(
            "SELECT DISTINCT ON (function_name) function_name, calls, taken_at"
            " FROM rls_migrate.counter_snapshots WHERE function_name = ANY(%s)"
            " AND taken_at <= %s ORDER BY function_name, taken_at DESC", [names, start]
        ).fetchall():
            baselines[name] = (int(base), taken)
    counters = []
    for table, operation, name in recorders:
        now_calls = int(calls.get(name, 0))
        base = baselines.get(name)
        if start is None or base is None:
            in_window, since = now_calls, None
        elif now_calls < base[0]:  # the statistics were reset inside the window
            in_window, since = now_calls, None
        else:
            in_window, since = now_calls - base[0], base[1]
        counters.append(Counter(table, operation, name, now_calls, in_window, since))
    if start is not None and any(c.in_window and c.measured_from is None for c in counters):
        notes.append("some counters have no snapshot from before the window, so their rows "
                     "count since the statistics were last reset: run `rls-migrate report` "
                     "again after the window to measure it exactly")
    if snapshot:
        try:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO rls_migrate.counter_snapshots (function_name, taken_at, calls)"
                    " SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::bigint[])"
                    " ON CONFLICT DO NOTHING",
                    [names, [now] * len(names), [c.calls for c in counters]])
        except psycopg.Error as exc:
            notes.append(f"no counter snapshot saved ({str(exc).strip().splitlines()[0]}): "
                         "later windows are measured from older snapshots")
    return counters, notes


def _statement_calls(conn: Conn, groups: Iterable[Group]) -> None:
    """pg_stat_statements.calls of each group's example, where the extension is installed
    in this database and the recorder saw a query id."""
    wanted = {g.example.query_id for g in groups if g.example.query_id}
    if not wanted:
        return
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'pg_stat_statements'").fetchone()
    if row is None:
        return
    try:
        with conn.transaction():
            calls = dict(conn.execute(
                sql.SQL("SELECT queryid, sum(calls)::bigint FROM {} WHERE queryid = ANY(%s)"
                        " AND dbid = (SELECT oid FROM pg_database"
                        " WHERE datname = current_database()) GROUP BY queryid").format(
                    sql.Identifier(row[0], "pg_stat_statements")), [list(wanted)]).fetchall())
    except psycopg.Error:
        return  # not loaded in shared_preload_libraries, or not readable: counts are optional
    for group in groups:
        if group.example.query_id in calls:
            group.statement_calls = int(calls[group.example.query_id])


def build_report(
    conn: Conn,
    playbook: Playbook,
    since: dt.timedelta | None = None,
    *,
    logs: Sequence[Path] = (),
    snapshot: bool = True,
) -> Report:
    """Group what observe mode recorded in the last ``since`` (None: everything).

    ``conn`` is an autocommit connection of a role that can read ``rls_migrate`` (the one
    that ran the migration). ``logs`` are server log files to add (a replica's); records
    that a sample row already holds are counted once. ``snapshot`` saves the recorder
    counters, so a later report can measure its window from this one."""
    if not conn.autocommit:
        raise UsageError("build_report needs an autocommit connection")
    _require_schema(conn)
    row = conn.execute("SELECT now(), current_database(),"
                       " current_setting('track_functions'), pg_is_in_recovery()").fetchone()
    assert row is not None
    now, database, track_functions, in_recovery = row
    start = None if since is None else now - since
    notes: list[str] = []

    groups: dict[tuple[Any, ...], Group] = {}
    for example, count, first, last in _sample_groups(conn, start):
        _merge(groups, example, count, first, last)
    from_logs: list[Violation] = []
    for path in logs:
        from_logs.extend(v for v in read_log(path) if (start is None or v.at >= start)
                         and v.database in (None, database))
    known = _known_in_samples(conn, from_logs)
    for i, v in enumerate(from_logs):
        if i in known:  # counted once, from the samples; the log is a second source
            group = groups.get(_group_key(v))
            if group is not None:
                group.sources.add(v.source)
        else:
            _merge(groups, v, 1, v.at, v.at)

    counters, counter_notes = _counters(conn, _recorders(conn, playbook), start, now,
                                        snapshot and not in_recovery)
    notes += counter_notes
    counters_available = track_functions != "none"
    if not counters_available:
        notes.append("track_functions is 'none': statements recorded in read-only or rolled-back "
                      "transactions are not counted; set it to 'pl' (ALTER SYSTEM, reload), "
                      "and read the server logs with --log")
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.table, g.operation, g.kind,
                                                     g.statement))
    _statement_calls(conn, ordered)
    unexplained = [c for c in counters if c.in_window and not any(
        g.table == c.table and g.operation == c.operation for g in ordered)]
    if unexplained:
        notes.append(
            "statements were counted without a sample (read-only or rolled-back transactions): "
            + ", ".join(f"{c.table} {c.operation} ({c.in_window})" for c in unexplained)
            + "; their statements are in the server log (rls-migrate report --log FILE)")
    return Report(database=str(database), generated_at=now, since=since, window_start=start,
                  groups=tuple(ordered), counters=tuple(counters),
                  counters_available=counters_available,
                  log_files=tuple(str(p) for p in logs), notes=tuple(notes))


# --------------------------------------------------------------------------- rendering


def _when(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _summary(report: Report) -> str:
    start = f" (since {_when(report.window_start)} UTC)" if report.window_start else ""
    head = f"observe report for {report.database}, {describe_window(report.since)}{start}"
    if report.clean:
        return f"{head}\nclean: no would-be violation recorded"
    return (f"{head}\nNOT CLEAN: {len(report.groups)} group(s), {report.statements} "
            f"statement(s), {report.counted_statements:,} statement(s) counted")


def _example(g: Group) -> str:
    ex = g.example
    ctx = "no tenant set" if not ex.context else f"tenant {ex.context}"
    return (f"{ctx}, row of tenant {ex.row_tenant}, session_user {ex.session_user}, "
            f"pid {ex.pid}: {ex.statement[:300]!r}")


def render_text(report: Report) -> str:
    lines = [_summary(report)]
    if report.groups:
        header = ("count", "table", "op", "kind", "role", "application", "first seen",
                  "last seen")
        rows = [(str(g.count), g.table, g.operation, g.kind, g.role or "",
                 g.application_name or "", _when(g.first_seen), _when(g.last_seen))
                for g in report.groups]
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        lines.append("")
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for g, r in zip(report.groups, rows, strict=True):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
            calls = f" ({g.statement_calls} calls in pg_stat_statements)" if (
                g.statement_calls is not None) else ""
            lines.append(f"    statement: {g.statement[:300]}{calls}")
            lines.append(f"    example:   {_example(g)}")
    counted = [c for c in report.counters if c.calls]
    if counted:
        lines += ["", "statements the enforced policy would change (pg_stat_user_functions):"]
        width = max(len(c.table) for c in counted)
        for c in counted:
            lines.append(f"  {c.table.ljust(width)}  {c.operation:<5}  in window {c.in_window:>9,}"
                         f"  since stats reset {c.calls:>9,}")
    for note in report.notes:
        lines.append(f"note: {note}")
    if not report.clean:
        lines.append("")
        lines.append("Each group is a code path that breaks under enforce: set the tenant per "
                     "transaction there (set_config(setting, id, true)), or give the role an "
                     "admin policy; then watch the report stay clean over the window.")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    summary = _summary(report).split("\n")
    lines = [f"### {summary[0]}", "", f"**{summary[1]}**", ""]
    if report.groups:
        lines += ["| count | table | op | kind | role | application | first seen | last seen "
                  "| statement | example |",
                  "|---:|---|---|---|---|---|---|---|---|---|"]
        for g in report.groups:
            lines.append(
                f"| {g.count} | {_md(g.table)} | {g.operation} | {g.kind} | {_md(g.role or '')} "
                f"| {_md(g.application_name or '')} | {_when(g.first_seen)} "
                f"| {_when(g.last_seen)} | `{_md(g.statement[:200])}` | {_md(_example(g))} |")
        lines.append("")
    counted = [c for c in report.counters if c.calls]
    if counted:
        lines += ["| table | op | statements in window | since stats reset |",
                  "|---|---|---:|---:|"]
        lines += [f"| {_md(c.table)} | {c.operation} | {c.in_window:,} | {c.calls:,} |"
                  for c in counted]
        lines.append("")
    lines += [f"- {_md(n)}" for n in report.notes]
    return "\n".join(lines).rstrip() + "\n"


def render_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2) + "\n"


RENDERERS = {"text": render_text, "markdown": render_markdown, "json": render_json}


# --------------------------------------------------------------------------- the enforce gate


def _group_line(g: Group) -> str:
    app = f", application {g.application_name!r}" if g.application_name else ""
    return (f"{g.count}x {g.table} {g.operation} {g.kind} as {g.role}{app}: "
            f"{g.statement[:160]!r}")


@register_gate("enforce")
def enforce_gate(conn: Conn, playbook: Playbook, force: bool) -> dict[str, Any] | None:
    """``apply --stage enforce`` runs only on a clean report over
    ``options.enforce.report_window``; ``--force`` runs it anyway, and what the gate saw is
    journaled as ``forced``."""
    since = dt.timedelta(milliseconds=playbook.options.enforce.report_window)
    report = build_report(conn, playbook, since, snapshot=False)
    if report.clean:
        return None
    window = describe_window(since)
    top = [_group_line(g) for g in report.groups[:TOP]]
    unexplained = [f"{c.in_window:,} statement(s) on {c.table} ({c.operation}) counted without "
                   "a sample" for c in report.counters if c.in_window][:TOP]
    if not force:
        more = len(report.groups) - TOP
        listed = "".join(f"\n  - {line}" for line in (top or unexplained))
        if more > 0:
            listed += f"\n  - and {more} more group(s)"
        raise GateClosed(
            f"enforce refused: observe recorded would-be violations in {window} "
            f"({report.statements} statement(s), {report.counted_statements:,} statement(s) counted); "
            f"these code paths would see no rows or fail their writes once enforced:{listed}"
            f"\nSee them all: rls-migrate report PLAYBOOK --since "
            f"{window.removeprefix('the last ')}. Fix them and wait for a clean window, or "
            "run apply with --force to enforce anyway (the override is journaled).")
    return {"gate": "clean observe report", "forced": True, "window": window,
            "statements": report.statements, "counted_statements": report.counted_statements,
            "top": top or unexplained}


# --------------------------------------------------------------------------- CLI


@click.command("report")
@click.argument("playbook", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dsn", metavar="DSN", help=DSN_HELP)
@click.option("--since", metavar="DURATION",
              help="window, e.g. 30min, 1h, 24h, or 'all' (default: the playbook's "
                   "options.enforce.report_window, what the enforce gate checks)")
@click.option("--format", "fmt", type=click.Choice(sorted(RENDERERS)), default="text",
              show_default=True)
@click.option("--fail-on-violations", is_flag=True,
              help="exit with code 3 when anything was recorded in the window (for CI)")
@click.option("--log", "logs", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="also read this server log file (stderr, csvlog or jsonlog; .gz too), e.g. "
                   "a hot standby's; repeatable")
def report(playbook: Path, dsn: str | None, since: str | None, fmt: str,
           fail_on_violations: bool, logs: tuple[Path, ...]) -> None:
    """Would-be violations recorded by observe mode, grouped by table, read/write, kind,
    role, application_name and statement, with counts, first/last seen and an example.

    \b
    Examples:
      rls-migrate report playbooks/app.yaml --since 1h
      rls-migrate report playbooks/app.yaml --format markdown > report.md
      rls-migrate report playbooks/app.yaml --log /var/log/postgresql/replica.log
      rls-migrate report playbooks/app.yaml --since 24h --fail-on-violations   # exit 3
    """
    from rls_migrate.connect import connect, resolve_dsn
    from rls_migrate.playbook import load_playbook

    pb = load_playbook(playbook)
    window = parse_since(since, pb.options.enforce.report_window)
    with connect(resolve_dsn(dsn, pb.dsn_env), application_name="rls-migrate report") as conn:
        result = build_report(conn, pb, window, logs=logs)
    click.echo(RENDERERS[fmt](result), nl=False)
    if fail_on_violations and not result.clean:
        sys.exit(3)  # the same code as a closed gate
