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

import dataclasses
import datetime as dt
import glob
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from rls_migrate.advice import advise
from rls_migrate.catalog import Catalog
from rls_migrate.errors import PrerequisiteError, UsageError
from rls_migrate.evidence import (
    Violation,
    database_identity,
    normalize_statement,
    parse_log_line,
    read_log,
)
from rls_migrate.playbook import Playbook, parse_duration_ms
from rls_migrate.replay import (
    HARMLESS,
    ReplaySettings,
    Verdict,
    confirm,
    describe_parameters,
    load_verdicts,
    store_verdict,
)
from rls_migrate.stages.common import TOOLKIT_SCHEMA, PlanContext, with_partitions
from rls_migrate.stages.policies import OPERATIONS, SAMPLES_TABLE, recorder_name
from rls_migrate.write_evidence import TruthIndex, load_truth, read_truth_log, select

Conn = psycopg.Connection[Any]

PER_GROUP = 50
"""Recent recordings of a group read from the samples (the replay picks among them)."""

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
    count: int  # recorded statements
    first_seen: dt.datetime
    last_seen: dt.datetime
    example: Violation
    sources: set[str]
    statement_calls: int | None = None  # pg_stat_statements.calls of the example's query
    records: list[Violation] = dataclasses.field(default_factory=list)  # recent, for replay
    verdict: Verdict | None = None
    advice: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Stable across reports: what a stored verdict is filed under."""
        parts = (self.table, self.operation, self.kind, self.role or "",
                 self.application_name or "", self.statement)
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    @property
    def harmless(self) -> bool:
        return self.verdict is not None and self.verdict.verdict == HARMLESS

    def as_dict(self, show_parameters: bool = False) -> dict[str, Any]:
        return {
            "table": self.table, "operation": self.operation, "kind": self.kind,
            "role": self.role, "application_name": self.application_name,
            "statement": self.statement, "count": self.count,
            "first_seen": self.first_seen.isoformat(), "last_seen": self.last_seen.isoformat(),
            "sources": sorted(self.sources), "statement_calls": self.statement_calls,
            "verdict": self.verdict.as_dict(show_parameters) if self.verdict else None,
            "advice": list(self.advice),
            "example": {
                "at": self.example.at.isoformat(), "statement": self.example.statement,
                "session_user": self.example.session_user, "pid": self.example.pid,
                "row_tenant": self.example.row_tenant, "context": self.example.context,
                "query_id": self.example.query_id, "source": self.example.source,
                "read_only": self.example.read_only,
                "parameters": describe_parameters(self.example.parameters, show_parameters),
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

    @property
    def verdicts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for g in self.groups:
            name = g.verdict.verdict if g.verdict else "not replayed"
            out[name] = out.get(name, 0) + 1
        return out

    def as_dict(self, show_parameters: bool = False) -> dict[str, Any]:
        return {
            "database": self.database, "generated_at": self.generated_at.isoformat(),
            "window": describe_window(self.since),
            "window_start": self.window_start.isoformat() if self.window_start else None,
            "clean": self.clean, "statements": self.statements,
            "counted_statements": self.counted_statements,
            "counters_available": self.counters_available, "verdicts": self.verdicts,
            "log_files": list(self.log_files),
            "groups": [g.as_dict(show_parameters) for g in self.groups],
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
    "SELECT * FROM (SELECT s.*, count(*) OVER w AS n, min(at) OVER w AS first_at,"
    " max(at) OVER w AS last_at, row_number() OVER (w ORDER BY at DESC, id DESC) AS rn"
    " FROM {samples} s WHERE %(start)s::timestamptz IS NULL OR at >= %(start)s"
    " WINDOW w AS (PARTITION BY table_name, operation, kind, role_name, application_name,"
    " statement)) g WHERE rn <= %(per_group)s ORDER BY rn"
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
           first: dt.datetime, last: dt.datetime) -> Group:
    key = _group_key(v)
    group = groups.get(key)
    if group is None:
        group = groups[key] = Group(
            v.table, v.operation, v.kind, v.role, v.application_name, statement=key[-1],
            count=count, first_seen=first, last_seen=last, example=v, sources={v.source})
    else:
        group.count += count
        group.first_seen = min(group.first_seen, first)
        if last >= group.last_seen:
            group.last_seen = last
            group.example = v
        group.sources.add(v.source)
    if len(group.records) < PER_GROUP:
        group.records.append(v)
    return group


def _sample_groups(conn: Conn, start: dt.datetime | None, groups: dict[tuple[Any, ...], Group]
                   ) -> None:
    """The samples' groups, each with its latest recordings."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_SAMPLE_GROUPS, {"start": start, "per_group": PER_GROUP})
        rows = cur.fetchall()
    for r in rows:
        v = Violation(
            at=r["at"], table=r["table_name"], operation=r["operation"], kind=r["kind"],
            role=r["role_name"], session_user=r["session_role"],
            application_name=r["application_name"], pid=r["pid"],
            statement=r["statement"] or "", query_id=r["query_id"], row_tenant=r["row_tenant"],
            context=r["context"], source="samples", read_only=r.get("read_only"))
        if r["rn"] == 1:
            _merge(groups, v, int(r["n"]), r["first_at"], r["last_at"])
        else:
            group = groups[_group_key(v)]
            if len(group.records) < PER_GROUP:
                group.records.append(v)


def _add_logged(groups: dict[tuple[Any, ...], Group], v: Violation, known: bool) -> None:
    """A log record: a recording the samples hold already (a primary's own log) lends its
    parameters and its file's name; any other is a recording of its own."""
    if not known:
        _merge(groups, v, 1, v.at, v.at)
        return
    group = groups.get(_group_key(v))
    if group is None:
        return
    group.sources.add(v.source)
    for i, record in enumerate(group.records):
        if record.key() == v.key() and record.parameters is None and v.parameters is not None:
            group.records[i] = dataclasses.replace(record, parameters=v.parameters)
            if group.example.key() == v.key():
                group.example = group.records[i]


def log_paths(playbook: Playbook, extra: Sequence[Path] = ()) -> list[Path]:
    """``--log`` files and ``options.observe.logs`` (globs, ``~`` expanded), each once."""
    paths = list(extra)
    for pattern in playbook.options.observe.logs:
        expanded = str(Path(pattern).expanduser())
        paths += [Path(p) for p in sorted(glob.glob(expanded))]
    seen: set[Path] = set()
    return [p for p in paths if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


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
    confirm_groups: bool = False,
    replay_conn: Conn | None = None,
) -> Report:
    """Group what observe mode recorded in the last ``since`` (None: everything).

    ``conn`` is an autocommit connection of a role that can read ``rls_migrate`` (the one
    that ran the migration). ``logs`` are server log files to add (a replica's), besides
    ``options.observe.logs``; records that a sample row already holds are counted once, and
    lend it the parameters the log has. Log lines of another database (another identity:
    system identifier and OID) are left out. ``snapshot`` saves the recorder counters, so a
    later report can measure its window from this one. ``confirm_groups`` replays the groups
    that have no verdict newer than their last recording (on ``replay_conn``, default
    ``conn``), and stores the verdicts."""
    if not conn.autocommit:
        raise UsageError("build_report needs an autocommit connection")
    _require_schema(conn)
    row = conn.execute("SELECT now(), current_database(),"
                       " current_setting('track_functions'), pg_is_in_recovery()").fetchone()
    assert row is not None
    now, database, track_functions, in_recovery = row
    identity = database_identity(conn)
    start = None if since is None else now - since
    notes: list[str] = []
    paths = log_paths(playbook, logs)

    groups: dict[tuple[Any, ...], Group] = {}
    _sample_groups(conn, start, groups)
    from_logs: list[Violation] = []
    for path in paths:
        from_logs.extend(v for v in read_log(path) if (start is None or v.at >= start)
                         and _same_database(v, database, identity))
    known = _known_in_samples(conn, from_logs)
    for i, v in enumerate(from_logs):
        _add_logged(groups, v, i in known)
    truth = _truth(conn, start, paths, str(database), identity, notes)

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
    _verdicts(conn, playbook, ordered, confirm_groups, replay_conn, notes, truth)
    _advise(conn, playbook, ordered)
    unexplained = [c for c in counters if c.in_window and not any(
        g.table == c.table and g.operation == c.operation for g in ordered)]
    if unexplained:
        notes.append(
            "statements were counted without a sample (read-only or rolled-back transactions): "
            + ", ".join(f"{c.table} {c.operation} ({c.in_window})" for c in unexplained)
            + "; their statements are in the server log (rls-migrate report --log FILE, or "
            "options.observe.logs)")
    if any(g.records and all(r.parameters is None for r in g.records) for g in ordered) \
            and not paths:
        notes.append("no server log was read, so no bound parameters: statements sent with "
                     "parameters cannot be replayed (give --log FILE or options.observe.logs)")
    notes += _capture_notes(conn, playbook, ordered)
    return Report(database=str(database), generated_at=now, since=since, window_start=start,
                  groups=tuple(ordered), counters=tuple(counters),
                  counters_available=counters_available,
                  log_files=tuple(str(p) for p in paths), notes=tuple(notes))


def _capture_notes(conn: Conn, playbook: Playbook, groups: Sequence[Group]) -> list[str]:
    """The application role's parameter logging is gone from this database (a clone made
    from a template, a restore without the cluster's globals): say so while it matters."""
    size = playbook.options.observe.capture_parameters
    if not size or not groups:
        return []
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_db_role_setting s, unnest(s.setconfig) c"
        " WHERE s.setrole = (SELECT r.oid FROM pg_roles r WHERE r.rolname = %s) AND s.setdatabase IN (0, (SELECT oid FROM"
        " pg_database WHERE datname = current_database()))"
        " AND c LIKE 'log\\_parameter\\_max\\_length\\_on\\_error=%%')",
        [playbook.roles.app]).fetchone()
    if row is not None and row[0]:
        return []
    return [f"{playbook.roles.app} has no log_parameter_max_length_on_error in this database "
            "(a clone or a restore loses it): bound parameters are not logged, so such "
            "statements stay unconfirmable; run `rls-migrate apply PLAYBOOK --stage observe` "
            "again to set it"]


def _same_database(v: Violation, database: str, identity: str | None) -> bool:
    """A log line of this database: the same identity where both are known, else (lines
    of version 1, or pg_control_system() refused) the same name."""
    if v.dbid is not None and identity is not None:
        return v.dbid == identity
    return v.database in (None, database)


def _truth(conn: Conn, start: dt.datetime | None, paths: Sequence[Path], database: str,
           identity: str | None, notes: list[str]) -> TruthIndex:
    """What the write-truth triggers saw in the window: their table's rows and, from the
    logs, those of rolled-back transactions too (the same record twice counts once)."""
    records = load_truth(conn, start)
    row = conn.execute("SELECT to_regclass('rls_migrate.write_truth') IS NULL").fetchone()
    if row and row[0]:
        notes.append("the rls_migrate schema predates write-truth (no rls_migrate.write_truth): "
                     "run `rls-migrate apply PLAYBOOK --stage prepare` to upgrade it, then "
                     "--stage observe; until then only server logs (--log) say whose rows a "
                     "recorded UPDATE or DELETE changed")
    for path in paths:
        records += select([r for r in read_truth_log(path)
                           if start is None or r.at >= start], database, identity)
    index = TruthIndex(records)
    if len(index):
        foreign = [r for r in index.records if r.foreign]
        tables = sorted({r.table for r in foreign})
        notes.append(
            f"write-truth: {len(index):,} recorded UPDATE/DELETE statement(s) were checked "
            f"when they changed their rows; {len(foreign):,} changed another tenant's rows"
            + (f" ({', '.join(tables)})" if tables else ""))
    return index


def _verdicts(conn: Conn, playbook: Playbook, groups: Sequence[Group], replay: bool,
              replay_conn: Conn | None, notes: list[str], truth: TruthIndex) -> None:
    """Each group's latest verdict, if newer than its last recording; replayed now where
    asked (and stored where this connection can write)."""
    stored = load_verdicts(conn, [g.key for g in groups])
    settings = ReplaySettings.from_playbook(playbook)
    failed_store = False
    for group in groups:
        known = stored.get(group.key)
        if known is not None and known.decided_at >= group.last_seen:
            group.verdict = known
            continue
        if not replay:
            continue
        group.verdict = confirm(replay_conn or conn, group.operation, group.records, settings,
                                truth)
        if not store_verdict(conn, group.key, group.table, group.operation, group.statement,
                             group.verdict):
            failed_store = True
    if failed_store:
        notes.append("verdicts were not stored (read-only or standby connection): the enforce "
                     "gate replays again")


def _advise(conn: Conn, playbook: Playbook, groups: Sequence[Group]) -> None:
    if not groups:
        return
    catalog = Catalog.load(conn, schemas=playbook.schemas)
    ctx = PlanContext(catalog, playbook)
    entries = {str(e.qname): e for t in ctx.tenant_tables for e in with_partitions(ctx, t)}
    for group in groups:
        group.advice = tuple(advise(group.table, group.operation, group.kind,
                                    group.example.statement, group.verdict,
                                    entries.get(group.table), playbook))


__all__ = ["Counter", "Group", "Report", "Violation", "build_report", "describe_window",
           "normalize_statement", "parse_log_line", "parse_since", "read_log"]
