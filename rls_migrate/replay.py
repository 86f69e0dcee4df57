"""Confirmation by replay: does enforcement change what a recorded statement sees or writes?

A recording is a *candidate*: a correct statement whose plan scans other tenants' rows (a
hash or merge join that scans a child, a recursive CTE, a generic plan, a non-leakproof
``lower(email) = $1`` or a ``= ANY($1::smallint[])`` that runs after the policy, or an
``UPDATE`` that waited for a concurrent update of the same row and re-checks its new version:
PostgreSQL's EvalPlanQual evaluates every InitPlan the re-check may need, the lazy recorder
included) calls the recorder although the rows it returns are exactly its tenant's. So each group's samples (up
to ``options.observe.replay_samples`` distinct parameter sets, the latest first) are
replayed, each in its own transaction:

* as the role that sent it (its login role, or the role the policy saw when the login role
  bypasses RLS), with the recorded tenant context, that role's ``search_path``, under
  ``statement_timeout`` and ``lock_timeout``;
* ``REPEATABLE READ READ ONLY`` (a data-modifying statement: read-write on the primary, per
  ``options.observe.replay_writes``), always rolled back;
* twice in the same snapshot: as observe answers it (``rls_migrate.mode = quiet``: nothing is
  recorded, an operator's session only) and with enforcement simulated (``enforce``: the
  policy filters), comparing the row counts and an order-independent digest of the rows.

Verdicts: **harmless** (the same rows), **confirmed** (enforcement changes what the
statement sees, or refuses what it writes), **unconfirmable** (why: no parameters captured,
several statements in one string, a statement or parameter cut short, a replay error or
timeout). A write (``WITH CHECK`` would refuse the row) is confirmed by construction. A
group is confirmed when any of its samples is, and harmless only when every sample it
replayed is: a real violation never hides in a group of harmless ones.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg.types.string import StrDumper

from rls_migrate.evidence import Parameters, Violation
from rls_migrate.playbook import Playbook
from rls_migrate.stages.policies import MODE_SETTING, STATEMENT_CHARS
from rls_migrate.write_evidence import TruthIndex, WriteTruth

Conn = psycopg.Connection[Any]

HARMLESS, CONFIRMED, UNCONFIRMABLE = "harmless", "confirmed", "unconfirmable"
VERDICTS = (HARMLESS, CONFIRMED, UNCONFIRMABLE)
MAX_ROWS = 200_000
"""A replay that returns more rows than this is not compared (unconfirmable)."""
SLOWER_FACTOR = 5.0
SLOWER_MS = 50.0
"""An enforced replay this many times and this many ms slower than the observed one is
reported as slower: the policy's tenant comparison changed the plan for the worse (a
misestimate), which the team must see before enforcing, even where the rows are the same."""
SLOWER_ADVICE = ("EXPLAIN ANALYZE it as the application with the tenant set, after "
                 "enforcing on a copy: a selectivity the planner multiplies (ANALYZE; "
                 "options.index.tenant_statistics; the tenant predicate on every table)")

_CODE = re.compile(
    r"""
    (?P<skip>--[^\n]*|/\*.*?\*/|\$(?P<tag>(?:[A-Za-z_][A-Za-z0-9_]*)?)\$.*?\$(?P=tag)\$
       |[eEbBxXuU]&?'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|"(?:[^"]|"")*")
    """, re.VERBOSE | re.DOTALL)
_WRITES = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE|COPY|CALL|DO|TRUNCATE|LOCK)\b"
                     r"|\bFOR\s+(NO\s+KEY\s+UPDATE|UPDATE|SHARE|KEY\s+SHARE)\b", re.I)
_READS = ("SELECT", "WITH", "VALUES", "TABLE", "(")
_LOCKING = re.compile(r"\bFOR\s+(NO\s+KEY\s+UPDATE|UPDATE|SHARE|KEY\s+SHARE)\b", re.I)
_CHANGES = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE)\b", re.I)


def _code(statement: str) -> str:
    """The statement without comments, strings and quoted identifiers (blanked), so that
    keywords and ``;`` are found only where they are SQL."""
    return _CODE.sub(lambda m: " " * len(m.group(0)) if m.group(0).startswith(("-", "/"))
                     else "''", statement)


_DECLARE = re.compile(r"^\s*DECLARE\s+(?:\"(?:[^\"]|\"\")+\"|\w+)\s+(?:BINARY\s+)?"
                      r"(?:(?:ASENSITIVE|INSENSITIVE)\s+)?(?:(?:NO\s+)?SCROLL\s+)?CURSOR\s+"
                      r"(?:(?:WITH|WITHOUT)\s+HOLD\s+)?FOR\s+", re.I)


CURSOR_WITH_PARAMETERS = (
    "a server-side cursor declared with bound parameters: its plan runs at FETCH, and the "
    "server logs only the FETCH's own parameters (none), not the DECLARE's; pg_cursors keeps "
    "the declared query, not its parameters, so nothing can replay it. Confirm it in a test "
    "run with SET LOCAL rls_migrate.mode = 'enforce', or add the tenant predicate so that "
    "observe does not record it")
"""Why a cursor the application declared with parameters (psycopg's named cursors,
SQLAlchemy's ``yield_per``/``stream_results``) stays unconfirmable. PostgreSQL attaches
bound parameters to log entries only for the protocol-level portal being executed (the
``FETCH``); the cursor's own portal, whose plan calls the recorder, has no such context, and
no view or function exposes a portal's parameters."""


def declared_query(statement: str) -> str:
    """The query of ``DECLARE c CURSOR FOR <query>`` (what a server-side cursor records),
    else the statement itself."""
    match = _DECLARE.match(statement)
    return statement[match.end():] if match else statement


def statement_count(statement: str) -> int:
    return sum(1 for part in _code(statement).split(";") if part.strip())


def placeholder_count(statement: str) -> int:
    numbers = [int(n) for n in re.findall(r"\$(\d+)", _code(statement))]
    return max(numbers, default=0)


def changes_rows(statement: str) -> bool:
    """INSERT/UPDATE/DELETE/MERGE (also in a CTE); not a mere SELECT ... FOR UPDATE."""
    return bool(_CHANGES.search(_LOCKING.sub(" ", _code(statement))))


def modifies_data(statement: str) -> bool:
    """INSERT/UPDATE/DELETE/MERGE (also in a CTE), SELECT ... FOR UPDATE/SHARE, or anything
    that does not start as a query."""
    code = _code(statement).strip()
    return bool(_WRITES.search(code)) or not code.upper().startswith(_READS)


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class SampleResult:
    verdict: str
    reason: str
    statement: str
    parameters: Parameters | None
    context: str | None
    role: str | None
    observe_rows: int | None = None
    enforce_rows: int | None = None
    observe_ms: float | None = None
    enforce_ms: float | None = None

    @property
    def slower(self) -> str | None:
        """"N.Nx slower enforced (a -> b ms)" when enforcement made the replay markedly
        slower (:data:`SLOWER_FACTOR` and :data:`SLOWER_MS` both), else None."""
        o, e = self.observe_ms, self.enforce_ms
        if o is None or e is None or e < SLOWER_FACTOR * o or e - o < SLOWER_MS:
            return None
        return f"{e / max(o, 0.001):.1f}x slower enforced ({o:,.1f} ms -> {e:,.1f} ms)"

    def as_dict(self, show_parameters: bool = False) -> dict[str, Any]:
        return {"verdict": self.verdict, "reason": self.reason, "statement": self.statement,
                "parameters": shown_parameters(self.parameters, show_parameters),
                "context": self.context, "role": self.role,
                "observe_rows": self.observe_rows, "enforce_rows": self.enforce_rows,
                "observe_ms": self.observe_ms, "enforce_ms": self.enforce_ms}


@dataclasses.dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str
    samples: tuple[SampleResult, ...]
    distinct: int  # distinct samples (statement, parameters, context, role) recorded
    decided_at: dt.datetime

    @property
    def deciding(self) -> SampleResult | None:
        """The sample the verdict rests on: the first confirmed, else unconfirmable, else
        the first replayed."""
        for wanted in (CONFIRMED, UNCONFIRMABLE, HARMLESS):
            for sample in self.samples:
                if sample.verdict == wanted:
                    return sample
        return None

    def as_dict(self, show_parameters: bool = False) -> dict[str, Any]:
        return {"verdict": self.verdict, "reason": self.reason, "distinct": self.distinct,
                "decided_at": self.decided_at.isoformat(),
                "samples": [s.as_dict(show_parameters) for s in self.samples]}


def redact(value: str | None) -> str:
    return "NULL" if value is None else f"<{len(value)} chars>"


def shown_parameters(parameters: Parameters | None, show: bool) -> list[str | None] | None:
    """Parameters for output: values redacted (their length only) unless ``show``."""
    if parameters is None:
        return None
    return list(parameters) if show else [redact(p) for p in parameters]


def describe_parameters(parameters: Parameters | None, show: bool) -> str:
    if parameters is None:
        return "none captured"
    shown = shown_parameters(parameters, show) or []
    return ", ".join(f"${i} = {v!r}" if show and v is not None else f"${i} = {v}"
                     for i, v in enumerate(shown, 1))


@dataclasses.dataclass(frozen=True)
class ReplaySettings:
    samples: int = 5
    timeout_ms: float = 5_000.0
    writes: str = "rollback"
    capture: int = 1024  # options.observe.capture_parameters: a value this long was cut
    setting: str = "app.tenant_id"

    @classmethod
    def from_playbook(cls, playbook: Playbook) -> ReplaySettings:
        o = playbook.options.observe
        return cls(o.replay_samples, o.replay_timeout, o.replay_writes, o.capture_parameters,
                   playbook.tenant.setting)


# --------------------------------------------------------------------------- choosing


def _identity(v: Violation) -> tuple[Any, ...]:
    return (v.statement, v.parameters, v.context or None, v.role, v.session_user)


def candidates(records: Sequence[Violation], limit: int) -> tuple[list[Violation], int, int]:
    """Up to ``limit`` distinct samples, the latest first. Returns them, how many distinct
    ones there were, and how many were left out for want of parameters.

    A recording of a statement sent with parameters, but logged without them (a session
    that started before observe turned parameter logging on: the first recording turns it
    on for the session), is left out when the group has recordings with parameters; a group
    with none keeps them, and they are unconfirmable."""
    best: dict[tuple[Any, ...], Violation] = {}
    for v in sorted(records, key=lambda r: r.at, reverse=True):
        best.setdefault(_identity(v), v)
    replayable = [v for v in best.values()
                  if v.parameters is not None or placeholder_count(v.statement) == 0]
    chosen = replayable or list(best.values())
    return chosen[:limit], len(best), len(best) - len(chosen)


# --------------------------------------------------------------------------- replaying


def _unreplayable(v: Violation, settings: ReplaySettings) -> str | None:
    statement = v.statement
    if not statement.strip():
        return "no statement text was recorded"
    if len(statement) >= STATEMENT_CHARS:
        return f"the statement text was cut at {STATEMENT_CHARS} characters"
    if statement_count(statement) > 1:
        return "several statements in one query string (simple protocol): which one " \
               "read the rows cannot be told"
    wanted = placeholder_count(statement)
    if wanted:
        if v.parameters is None and _DECLARE.match(statement):
            return CURSOR_WITH_PARAMETERS
        if v.parameters is None:
            return ("sent with bound parameters, and none were captured "
                    "(options.observe.capture_parameters, and the server log through "
                    "report --log or options.observe.logs)")
        if len(v.parameters) < wanted:
            return f"{wanted} parameters expected, {len(v.parameters)} logged"
        cut = [i for i, p in enumerate(v.parameters, 1) if p is not None and p.endswith("...")
               and len(p.encode()) >= settings.capture]
        if cut:
            return (f"parameter ${cut[0]} was cut at {settings.capture} bytes in the log "
                    "(options.observe.capture_parameters)")
    return None


@dataclasses.dataclass(frozen=True)
class _Run:
    rows: int
    digest: str


def _digest(cur: psycopg.Cursor[Any]) -> _Run:
    result = cur.pgresult
    if cur.description is None or result is None:
        return _Run(max(cur.rowcount, 0), "")
    if result.ntuples > MAX_ROWS:
        raise _TooBig(result.ntuples)
    fields = result.nfields
    rows = sorted(hashlib.sha256(b"\x1f".join(
        b"\x00" if (value := result.get_value(i, j)) is None else b"\x01" + value
        for j in range(fields))).digest() for i in range(result.ntuples))
    return _Run(result.ntuples, hashlib.sha256(b"".join(rows)).hexdigest())


class _TooBig(Exception):
    def __init__(self, rows: int) -> None:
        super().__init__(rows)
        self.rows = rows


def _execute(conn: Conn, statement: str, parameters: Parameters | None) -> _Run:
    """Run the statement with the logged parameters as ``unknown`` (the server infers their
    types, as for a literal); where it cannot (``pg_typeof($1)``), as ``text``."""
    params = list(parameters or ())[:placeholder_count(statement)]
    cur = psycopg.RawCursor(conn)
    try:
        with conn.transaction(force_rollback=True):  # the second run sees no writes
            cur.execute(statement, params or None)
            return _digest(cur)
    except (psycopg.errors.AmbiguousParameter, psycopg.errors.IndeterminateDatatype):
        cur = psycopg.RawCursor(conn)
        cur.adapters.register_dumper(str, StrDumper)
        with conn.transaction(force_rollback=True):  # the second run sees no writes
            cur.execute(statement, params or None)
            return _digest(cur)


def _replay_role(conn: Conn, v: Violation) -> str | None:
    """The login role that sent the statement, unless it bypasses RLS (then the policy's
    role, e.g. after SET ROLE); None when neither exists any more."""
    for name in (v.session_user, v.role):
        if not name:
            continue
        row = conn.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = %s",
                           [name]).fetchone()
        if row is not None and not row[0]:
            return name
    return None


def _search_path(conn: Conn, role: str) -> str:
    """The search_path the role's sessions start with in this database."""
    row = conn.execute(
        "SELECT substr(c, 13) FROM pg_db_role_setting s, unnest(s.setconfig) c"
        " WHERE c LIKE 'search\\_path=%%' AND s.setrole IN (0, (SELECT r.oid FROM pg_roles r WHERE r.rolname = %s))"
        " AND s.setdatabase IN (0, (SELECT oid FROM pg_database"
        " WHERE datname = current_database()))"
        " ORDER BY s.setrole = 0, s.setdatabase = 0 LIMIT 1", [role]).fetchone()
    if row is not None:
        return str(row[0])
    default = conn.execute("SELECT boot_val FROM pg_settings WHERE name = 'search_path'"
                           ).fetchone()
    return str(default[0]) if default else '"$user", public'


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def replay_sample(conn: Conn, v: Violation, settings: ReplaySettings,
                  *, in_recovery: bool, truth: Sequence[WriteTruth] = ()) -> SampleResult:
    """Replay one sample twice (observe, then enforcement simulated) in one snapshot.
    ``truth``: the write-truth records of the statement execution that made ``v``."""
    timings: dict[str, float] = {}

    def result(verdict: str, reason: str, observe: int | None = None,
               enforce: int | None = None) -> SampleResult:
        return SampleResult(verdict, reason, v.statement, v.parameters, v.context, v.role,
                            observe, enforce, timings.get("observe"), timings.get("enforce"))

    def timed(mode: str) -> _Run:
        started = time.perf_counter()
        try:
            return _execute(conn, query, v.parameters)
        finally:
            timings[mode] = round((time.perf_counter() - started) * 1000, 2)

    foreign = next((t for t in truth if t.foreign), None)
    if foreign is not None:
        return result(CONFIRMED, f"write-truth: {foreign.describe()}")
    why_not = _unreplayable(v, settings)
    if why_not is not None:
        return result(UNCONFIRMABLE, why_not)
    writes = modifies_data(v.statement)
    if writes and settings.writes == "never":
        return result(UNCONFIRMABLE, "a data-modifying statement, and options.observe."
                                     "replay_writes is never")
    if writes and in_recovery:
        return result(UNCONFIRMABLE, "a data-modifying statement cannot be replayed on a "
                                     "hot standby (--replay-dsn): replay it on the primary")
    role = _replay_role(conn, v)
    if role is None:
        return result(UNCONFIRMABLE, f"no role to replay as ({v.session_user or v.role!r} "
                                     "is gone or bypasses RLS)")
    search_path = _search_path(conn, role)
    access = "READ WRITE" if writes else "READ ONLY"
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ {}").format(
                sql.SQL(access)))
            for name, value in (("statement_timeout", f"{int(settings.timeout_ms)}ms"),
                                ("lock_timeout", "100ms"), ("synchronize_seqscans", "off"),
                                ("search_path", search_path), (MODE_SETTING, "quiet")):
                conn.execute("SELECT set_config(%s, %s, true)", [name, value])
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            if v.context:
                conn.execute("SELECT set_config(%s, %s, true)", [settings.setting, v.context])
            query = declared_query(v.statement)
            try:
                observed = timed("observe")
            except _TooBig as big:
                return result(UNCONFIRMABLE, f"returns {big.rows:,} rows, more than "
                                             f"{MAX_ROWS:,} are not compared")
            except psycopg.errors.QueryCanceled:
                return result(UNCONFIRMABLE, f"the replay timed out after "
                                             f"{settings.timeout_ms:g} ms (statement_timeout)")
            except psycopg.Error as exc:
                return result(UNCONFIRMABLE, f"the replay failed: {_first_line(exc)}")
            conn.execute("SELECT set_config(%s, 'enforce', true)", [MODE_SETTING])
            try:
                enforced = timed("enforce")
            except psycopg.errors.InsufficientPrivilege as exc:
                if "row-level security" in str(exc):
                    return result(CONFIRMED, "enforced, the write is refused: "
                                             + _first_line(exc), observed.rows)
                return result(UNCONFIRMABLE, f"the enforced replay failed: {_first_line(exc)}",
                              observed.rows)
            except _TooBig as big:
                return result(UNCONFIRMABLE, f"returns {big.rows:,} rows enforced, too many "
                                             "to compare", observed.rows)
            except psycopg.errors.QueryCanceled:
                return result(UNCONFIRMABLE, f"the enforced replay timed out after "
                                             f"{settings.timeout_ms:g} ms, where observe "
                                             f"answered in {timings['observe']:,.1f} ms: "
                                             "enforcement makes it much slower. "
                                             + SLOWER_ADVICE, observed.rows)
            except psycopg.Error as exc:
                return result(UNCONFIRMABLE, f"the enforced replay failed: {_first_line(exc)}",
                              observed.rows)
    except psycopg.errors.InsufficientPrivilege as exc:
        return result(UNCONFIRMABLE, f"cannot replay as {role}: {_first_line(exc)} (the "
                                     f"migration role replays as the application: GRANT "
                                     f"{role} TO {conn.info.user})")
    if changes_rows(v.statement) and observed.rows == 0 and enforced.rows == 0:
        # An UPDATE/DELETE of another tenant's row, committed while observing, leaves
        # nothing to find now: 0 and 0 would call a real violation harmless. What its rows
        # were when it changed them (write-truth) decides instead.
        if truth:
            return result(HARMLESS, "the rows it changed are gone (0 rows replayed both ways);"
                                    f" write-truth: {truth[0].describe()}", 0, 0)
        return result(UNCONFIRMABLE, "a data-modifying statement that touches no row when "
                                     "replayed: the rows it changed may be gone, and no "
                                     "write-truth record says whose they were (recorded "
                                     "before observe installed its write-truth triggers, or "
                                     "they were disabled); add the tenant predicate to it",
                      0, 0)
    if observed == enforced:
        same = result(HARMLESS, "the same rows with enforcement simulated", observed.rows,
                      enforced.rows)
        if same.slower:
            return dataclasses.replace(same, reason=f"{same.reason}, {same.slower}")
        return same
    if observed.rows != enforced.rows:
        why = f"enforced it gets {enforced.rows:,} row(s) instead of {observed.rows:,}"
    else:
        why = f"enforced it gets as many rows ({enforced.rows:,}), with other values"
    return result(CONFIRMED, why, observed.rows, enforced.rows)


def _foreign_write(records: Sequence[Violation], truth: TruthIndex
                   ) -> tuple[Violation, WriteTruth] | None:
    """A recording of the group whose statement changed another tenant's row (write-truth),
    linked exactly, else by the statement's shape, application and kind: confirmed by
    construction, whichever samples replay would pick."""
    for v in records:
        for t in truth.linked(v):
            if t.foreign:
                return v, t
    first = records[0]
    like = truth.foreign_like(first.statement, first.application_name, first.kind)
    return (first, like[0]) if like else None


def confirm(conn: Conn, operation: str, records: Sequence[Violation],
            settings: ReplaySettings, truth: TruthIndex | None = None) -> Verdict:
    """The verdict on one group (``records``: its recordings, any order). ``conn`` is the
    operator's autocommit connection to the primary or, for reads, a replica. ``truth``:
    what the write-truth triggers saw (see :mod:`rls_migrate.write_evidence`)."""
    now = dt.datetime.now(dt.UTC)
    chosen, distinct, without = candidates(records, settings.samples)
    if truth is not None and records and operation == "read" \
            and changes_rows(records[0].statement):
        foreign = _foreign_write(records, truth)
        if foreign is not None:
            v, t = foreign
            why = f"write-truth: {t.describe()}"
            return Verdict(CONFIRMED, f"{why}: confirmed by construction",
                           (SampleResult(CONFIRMED, why, v.statement, v.parameters,
                                         v.context, v.role),), distinct, now)
    if operation == "write":
        samples = tuple(SampleResult(CONFIRMED, "a write the enforced WITH CHECK refuses",
                                     v.statement, v.parameters, v.context, v.role)
                        for v in chosen[:1])
        return Verdict(CONFIRMED, "a write the enforced WITH CHECK refuses: confirmed by "
                       "construction", samples, distinct, now)
    if not chosen:
        return Verdict(UNCONFIRMABLE, "no recording to replay (counted only)", (), distinct,
                       now)
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    in_recovery = bool(row and row[0])
    results = tuple(replay_sample(conn, v, settings, in_recovery=in_recovery,
                                  truth=truth.linked(v) if truth is not None else ())
                    for v in chosen)
    of = f"{len(results)} of {distinct} distinct sample(s) replayed"
    if without:
        of += f"; {without} recorded without parameters left out"
    for wanted in (CONFIRMED, UNCONFIRMABLE):
        hit = next((r for r in results if r.verdict == wanted), None)
        if hit is not None:
            return Verdict(wanted, f"{hit.reason} ({of})", results, distinct, now)
    slowest = max((r for r in results if r.slower), default=None,
                  key=lambda r: (r.enforce_ms or 0) - (r.observe_ms or 0))
    slower = f", but {slowest.slower}: {SLOWER_ADVICE}" if slowest else ""
    return Verdict(HARMLESS, f"the same rows with enforcement simulated ({of}){slower}",
                   results, distinct, now)


# --------------------------------------------------------------------------- stored verdicts


def _from_json(row: dict[str, Any]) -> SampleResult:
    params = row.get("parameters")
    return SampleResult(
        str(row.get("verdict")), str(row.get("reason") or ""), str(row.get("statement") or ""),
        tuple(params) if isinstance(params, list) else None, row.get("context"),
        row.get("role"), row.get("observe_rows"), row.get("enforce_rows"),
        row.get("observe_ms"), row.get("enforce_ms"))


def load_verdicts(conn: Conn, keys: Sequence[str]) -> dict[str, Verdict]:
    """The latest stored verdict of each group key (none before schema revision 0004)."""
    if not keys:
        return {}
    exists = conn.execute("SELECT to_regclass('rls_migrate.verdicts') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute(
        "SELECT DISTINCT ON (group_key) group_key, verdict, reason, samples, decided_at"
        " FROM rls_migrate.verdicts WHERE group_key = ANY(%s)"
        " ORDER BY group_key, decided_at DESC, id DESC", [list(keys)]).fetchall()
    out: dict[str, Verdict] = {}
    for key, verdict, reason, samples, decided_at in rows:
        data = samples if isinstance(samples, dict) else {}
        results = tuple(_from_json(s) for s in data.get("samples", []) if isinstance(s, dict))
        out[str(key)] = Verdict(str(verdict), str(reason or ""), results,
                                int(data.get("distinct", len(results))), decided_at)
    return out


def store_verdict(conn: Conn, key: str, table: str, operation: str, statement: str,
                  verdict: Verdict) -> bool:
    """Keep a verdict (parameters included: the table is as private as the server log they
    came from). False where this connection cannot write (a standby)."""
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO rls_migrate.verdicts (group_key, decided_at, verdict, reason,"
                " table_name, operation, statement, samples) VALUES (%s, %s, %s, %s, %s, %s,"
                " %s, %s)",
                [key, verdict.decided_at, verdict.verdict, verdict.reason, table, operation,
                 statement, Jsonb(verdict.as_dict(show_parameters=True))])
    except psycopg.Error:
        return False
    return True
