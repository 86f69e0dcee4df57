"""Evidence of would-be violations: what one recording holds, where it comes from (a sample
row, a server-log line), and the statement's shape that groups recordings together.

A server-log entry of the recorder is one ``LOG:`` line (a JSON object after
:data:`~rls_migrate.stages.policies.LOG_PREFIX`) and, where the session logs bound
parameters (``log_parameter_max_length_on_error``), a ``CONTEXT:`` part that ends with
``unnamed portal with parameters: $1 = '5', $2 = NULL``. :func:`read_log` reads both, in
the stderr/syslog, csvlog and jsonlog formats; only the CONTEXT of the recorder's own entry
is read, never the application's STATEMENT text, so a statement cannot forge parameters.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import gzip
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

import psycopg

from rls_migrate.stages.policies import KINDS, LOG_PREFIX, LOG_VERSION, OPERATIONS

Conn = psycopg.Connection[Any]
Parameters = tuple[str | None, ...]

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
    # A server-side cursor's name changes from run to run (SQLAlchemy's c_7f17..._1).
    out = re.sub(r'^\s*DECLARE\s+(?:"(?:[^"]|"")+"|\w+)', "DECLARE ?", out, flags=re.I)
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
    dbid: str | None = None  # "<system identifier>/<database oid>" (log lines, version 2)
    read_only: bool | None = None
    parameters: Parameters | None = None  # from the log's CONTEXT; None: none logged

    def key(self) -> tuple[dt.datetime, int | None, str, str]:
        """What a sample row and the log line of the same recording share."""
        return (self.at, self.pid, self.table, self.operation)


_DECODER = json.JSONDecoder()
R = TypeVar("R")


def _opt_str(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(value)
    return value


def _opt_bool(value: object) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
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
            database=_opt_str(obj.get("db")), dbid=_opt_str(obj.get("dbid")),
            read_only=_opt_bool(obj.get("read_only")))
    except (KeyError, ValueError, TypeError):
        return None


_PORTAL = re.compile(r'(?:unnamed portal|portal "(?:[^"]|"")*") with parameters: ')
_PARAMETER = re.compile(r"\$(\d+) = (?:NULL|'((?:[^']|'')*)')")


def parse_parameters(context: str | None) -> Parameters | None:
    """The bound parameters in a log entry's CONTEXT (``$1 = '5', $2 = NULL``), in order,
    or None when it names none. Values stay text, as the server printed them (a value cut
    at ``log_parameter_max_length_on_error`` ends with ``...``)."""
    if not context:
        return None
    found = _PORTAL.search(context)
    if found is None:
        return None
    text, at = context, found.end()
    values: dict[int, str | None] = {}
    while True:
        match = _PARAMETER.match(text, at)
        if match is None:
            break
        raw = match.group(2)
        values[int(match.group(1))] = None if raw is None else raw.replace("''", "'")
        at = match.end()
        if not text.startswith(", ", at):
            break
        at += 2
    if not values or sorted(values) != list(range(1, len(values) + 1)):
        return None
    return tuple(values[i] for i in range(1, len(values) + 1))


def _with_parameters(found: Violation | None, context: str | None) -> Violation | None:
    if found is None:
        return None
    parameters = parse_parameters(context)
    return dataclasses.replace(found, parameters=parameters) if parameters else found


def decode_to_end(text: str, start: int, convert: Callable[[Any], R | None]) -> R | None:
    """``convert`` of the JSON object at ``start`` when it decodes and ends ``text``."""
    try:
        obj, end = _DECODER.raw_decode(text, start)
    except ValueError:
        return None
    if text[end:].strip():
        return None
    return convert(obj)


def _decode_to_end(text: str, start: int, source: str) -> Violation | None:
    return decode_to_end(text, start, lambda obj: violation_from_json(obj, source))


def parse_log_line(line: str, source: str = "log") -> Violation | None:
    """The violation a server-log line records, or None.

    Plain (stderr/syslog) lines: the recorder's message is the end of the line, a JSON
    object after :data:`LOG_PREFIX`; it is searched from the right, and only an object that
    decodes and ends the line counts. A prefix such as ``%a`` (application_name) that
    imitates the message therefore cannot make a second record, and the real object, whose
    strings are JSON-escaped, cannot hide a valid object inside itself. ``jsonlog`` lines
    (PostgreSQL 15+) are JSON objects whose ``message`` holds the recorder's message."""
    found = record_in_line(line, LOG_PREFIX, lambda obj: violation_from_json(obj, source))
    return _with_parameters(found[0], found[1]) if found is not None else None


def record_in_line(line: str, prefix: str, convert: Callable[[Any], R | None]
                   ) -> tuple[R, str | None] | None:
    """The record a plain or jsonlog server-log line carries after ``prefix`` (the rules of
    :func:`parse_log_line`, shared by every kind of record the toolkit logs), with the
    jsonlog entry's ``context`` (None for a plain line: its CONTEXT comes on later lines)."""
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
            if isinstance(message, str) and message.startswith(prefix):
                found = decode_to_end(message, len(prefix), convert)
                context = entry.get("context")
                return None if found is None else (
                    found, context if isinstance(context, str) else None)
            return None
    position = stripped.rfind(prefix)
    while position >= 0:
        # The record is the whole message of a LOG entry: right after the severity, not at
        # the end of a STATEMENT: line that quotes the application.
        if stripped.endswith(_SEVERITY, 0, position):
            found = decode_to_end(stripped, position + len(prefix), convert)
            if found is not None:
                return found, None
        position = stripped.rfind(prefix, 0, position)
    return None


_SEVERITY = "LOG:  "
"""What precedes a LOG entry's message in the stderr and syslog formats."""


def _open_text(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace", newline="")


_CSV_MESSAGE = 13
"""The ``message`` column of csvlog."""
_CSV_CONTEXT = 18
"""The ``context`` column of csvlog."""
_CONTEXT = "CONTEXT:  "


def read_log(path: Path) -> Iterator[Violation]:
    """The violations recorded in a server log file (stderr, syslog, csvlog or jsonlog
    format; ``.gz`` files too), with the bound parameters the server logged beside them."""
    source = path.name
    csv_format = path.name.removesuffix(".gz").endswith(".csv")
    with _open_text(path) as fh:
        if csv_format:
            for row in csv.reader(fh):
                if len(row) > _CSV_MESSAGE and row[_CSV_MESSAGE].startswith(LOG_PREFIX):
                    found = _decode_to_end(row[_CSV_MESSAGE], len(LOG_PREFIX), source)
                    context = row[_CSV_CONTEXT] if len(row) > _CSV_CONTEXT else None
                    found = _with_parameters(found, context)
                    if found is not None:
                        yield found
            return
        yield from _plain_records(fh, source)


def _plain_records(lines: Iterable[str], source: str) -> Iterator[Violation]:
    """stderr/syslog/jsonlog lines. After a recorder line, the entry's own CONTEXT part
    (its ``CONTEXT:`` line and the tab-indented lines that continue it) is read for
    parameters; whatever comes after (STATEMENT:, the next entry) ends it."""
    pending: Violation | None = None
    context: list[str] | None = None
    for line in lines:
        if pending is not None:
            text = line.rstrip("\n")
            if context is None and _CONTEXT in text and not text.startswith("\t"):
                context = [text.split(_CONTEXT, 1)[1]]
                continue
            if context is not None and text.startswith("\t"):
                context.append(text[1:])
                continue
            yield _with_parameters(pending, "\n".join(context) if context else None) or pending
            pending, context = None, None
        if LOG_PREFIX in line:
            pending = parse_log_line(line, source)
            if pending is not None and pending.parameters is not None:
                yield pending  # jsonlog: the entry carried its context already
                pending = None
    if pending is not None:
        yield _with_parameters(pending, "\n".join(context) if context else None) or pending


def database_identity(conn: Conn) -> str | None:
    """``<system identifier>/<database oid>``, what recorders write as ``dbid``: the same on
    a primary and its physical replicas, different for a database dropped and recreated
    under the same name, or another cluster's. None where pg_control_system() is refused."""
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT (SELECT system_identifier::text FROM pg_control_system()) || '/'"
                " || (SELECT oid::text FROM pg_database WHERE datname = current_database())"
            ).fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row and row[0] else None
