"""The Citus readiness report as text, markdown and JSON; ``sql`` is the runbook.

JSON shape (``"format": 1``, ``"target": "citus"``)::

    {"format": 1, "target": "citus", "database": str, "server_version": str, "root": str,
     "ready": bool, "blocking": int, "order_problems": [str],
     "tables": [{"table": str, "role": "distributed" | "reference" | "local", "why": str,
                 "column": str | null, "colocate_with": str | null,
                 "partition_of": str | null, "rows": int, "size_bytes": int,
                 "create": str | null,
                 "blockers": [{"kind": str, "severity": "blocker" | "warning",
                               "message": str, "fix": str, "online": bool}]}],
     "general": [{...blocker...}]}

``tables`` is in runbook order; ``create`` is the table's ``create_*`` call.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections.abc import Callable
from typing import Any

from rls_migrate.citus.readiness import LOCAL, Blocker, Readiness
from rls_migrate.citus.runbook import distribute_call, render_runbook

WIDTH = 100


def to_dict(readiness: Readiness, conn: Any = None) -> dict[str, Any]:
    return {
        "format": 1,
        "target": "citus",
        "database": readiness.database,
        "server_version": readiness.server_version,
        "root": str(readiness.root),
        "ready": readiness.ready,
        "blocking": readiness.blocking,
        "order_problems": list(readiness.order_problems),
        "tables": [
            {"table": str(t.qname), "role": t.role, "why": t.why, "column": t.column,
             "colocate_with": str(t.colocate_with) if t.colocate_with else None,
             "partition_of": str(t.partition_of) if t.partition_of else None,
             "rows": t.rows, "size_bytes": t.size_bytes,
             "create": None if t.role == LOCAL else distribute_call(t, conn),
             "blockers": [dataclasses.asdict(b) for b in t.blockers]}
            for t in readiness.tables],
        "general": [dataclasses.asdict(b) for b in readiness.general],
    }


def render_json(readiness: Readiness, conn: Any = None) -> str:
    return json.dumps(to_dict(readiness, conn), indent=2) + "\n"


def _summary(readiness: Readiness) -> str:
    roles = {role: sum(1 for t in readiness.tables if t.role == role)
             for role in ("distributed", "reference", "local")}
    warnings = sum(1 for _, b in readiness.blockers if b.severity == "warning")
    online = sum(1 for _, b in readiness.blockers if b.severity == "blocker" and b.online)
    state = "ready" if readiness.ready else (
        f"{readiness.blocking} blocker(s), {online} of them fixed online by the toolkit")
    return (f"{roles['distributed']} distributed, {roles['reference']} reference, "
            f"{roles['local']} local table(s); {state}; {warnings} warning(s)")


def _mark(blocker: Blocker) -> str:
    if blocker.severity == "warning":
        return "warning"
    return "BLOCKER (online fix)" if blocker.online else "BLOCKER"


def render_text(readiness: Readiness, conn: Any = None) -> str:
    out = [f"rls-migrate: Citus readiness of {readiness.database} "
           f"(PostgreSQL {readiness.server_version}), tenant root {readiness.root}",
           _summary(readiness)]
    for problem in readiness.order_problems:
        out += _wrap(f"! {problem}", "", "  ")
    for t in readiness.tables:
        head = f"{t.qname}  {t.role}"
        if t.column:
            head += f" by {t.column}"
        if t.colocate_with:
            head += f", colocated with {t.colocate_with}"
        out += ["", head]
        out += _wrap(t.why, "  ", "  ")
        for b in t.blockers:
            out += _wrap(f"{_mark(b)}: {b.message}", "  - ", "    ")
            out += _wrap(f"fix: {b.fix}", "    ", "    ")
    if readiness.general:
        out += ["", "Across tables"]
        for b in readiness.general:
            out += _wrap(f"{_mark(b)}: {b.message}", "  - ", "    ")
            out += _wrap(f"fix: {b.fix}", "    ", "    ")
    out += ["", "The runbook: rls-migrate plan PLAYBOOK --target citus --format sql -o runbook.sql"]
    return "\n".join(out) + "\n"


def _wrap(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest,
                         break_long_words=True, break_on_hyphens=False) or [first.rstrip()]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_markdown(readiness: Readiness, conn: Any = None) -> str:
    out = [f"# Citus readiness of `{readiness.database}` (PostgreSQL "
           f"{readiness.server_version})", "", _summary(readiness), ""]
    out += [f"- **{_cell(p)}**" for p in readiness.order_problems]
    out += ["| table | role | distribution column | colocated with | blockers | why |",
            "|---|---|---|---|---|---|"]
    for t in readiness.tables:
        blocking = sum(1 for b in t.blockers if b.severity == "blocker")
        out.append(f"| `{t.qname}` | {t.role} | {t.column or ''} | "
                   f"{t.colocate_with or ''} | {blocking} | {_cell(t.why)} |")
    out.append("")
    for t in readiness.tables:
        if not t.blockers:
            continue
        out += [f"## `{t.qname}`", "", "| | what | fix |", "|---|---|---|"]
        out += [f"| {_mark(b)} | {_cell(b.message)} | {_cell(b.fix)} |" for b in t.blockers]
        out.append("")
    if readiness.general:
        out += ["## Across tables", "", "| | what | fix |", "|---|---|---|"]
        out += [f"| {_mark(b)} | {_cell(b.message)} | {_cell(b.fix)} |"
                for b in readiness.general]
        out.append("")
    out += ["## Runbook", "", "```sql", render_runbook(readiness, conn).rstrip(), "```", ""]
    return "\n".join(out)


RENDERERS: dict[str, Callable[[Readiness, Any], str]] = {
    "text": render_text,
    "markdown": render_markdown,
    "json": render_json,
    "sql": render_runbook,
}
