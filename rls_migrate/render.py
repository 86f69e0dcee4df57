"""Plan renderers: text (for terminals), markdown (for pull requests), json (for
automation; shape below), sql (a runnable script). Renderers only render steps.

JSON is compact: the plan's own keys and each stage's on one line, then one line per step
(``pretty=True``, ``--pretty``: indented). Shape (``"format": 1``)::

    {"format": 1, "database": str, "server_version": str, "risks": [str],
     "stages": [{"name": str, "notes": [str],
                 "estimate": {"rows": int, "bytes": int, "seconds": float},
                 "steps": [{"id": str, "kind": str, "table": str | null,
                            "description": str, "why": str,
                            "lock": str, "blocks": str, "transactional": bool,
                            "statements": [str], "inverse": [str],
                            "estimate": {...}, "risks": [str]}]}]}
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections.abc import Callable
from typing import Any

from rls_migrate.catalog import Catalog
from rls_migrate.sqlcompose import SqlText
from rls_migrate.steps import Estimate, Plan, Step

Renderer = Callable[[Plan, Catalog, Any], str]


_ESTIMATE_FIELDS = tuple(f.name for f in dataclasses.fields(Estimate))


def _estimate(estimate: Estimate) -> dict[str, Any]:
    """``dataclasses.asdict`` without its deep copies (the fields are numbers)."""
    return {name: getattr(estimate, name) for name in _ESTIMATE_FIELDS}


def _statements(step: Step, text: SqlText) -> list[str]:
    if step.backfill is not None:
        return [text(step.backfill.batch_sql)]
    return [text(s) for s in step.statements]


def to_dict(plan: Plan, catalog: Catalog, conn: Any = None) -> dict[str, Any]:
    text = SqlText(conn)
    return {
        "format": 1,
        "database": catalog.database,
        "server_version": catalog.server_version,
        "risks": list(plan.risks),
        "stages": [
            {
                "name": stage.name,
                "notes": list(stage.notes),
                "estimate": _estimate(stage.estimate),
                "steps": [
                    {
                        "id": step.id,
                        "kind": step.kind,
                        "table": str(step.table) if step.table else None,
                        "description": step.description,
                        "why": step.why,
                        "lock": step.lock.label,
                        "blocks": step.lock.blocks,
                        "transactional": step.transactional,
                        "statements": _statements(step, text),
                        "inverse": [text(s) for s in step.inverse],
                        "estimate": _estimate(step.estimate),
                        "risks": list(step.risks),
                    }
                    for step in stage.steps
                ],
            }
            for stage in plan.stages
        ],
    }


def render_json(plan: Plan, catalog: Catalog, conn: Any = None, *, pretty: bool = False) -> str:
    """One line for the plan's keys, one per stage's, one per step: a diff shows which steps
    changed, ``jq`` reads it as any JSON, and it is written in a fraction of the time of an
    indented dump (which runs the pure-Python encoder: seconds for 10,000 steps)."""
    data = to_dict(plan, catalog, conn)
    if pretty:
        return json.dumps(data, indent=2) + "\n"
    dump = json.JSONEncoder(separators=(",", ":")).encode
    stages = data.pop("stages")
    lines = [dump(data)[:-1] + ',"stages":[']
    for n, stage in enumerate(stages):
        steps = [dump(step) for step in stage.pop("steps")]
        end = "]}" + ("," if n < len(stages) - 1 else "")
        head = dump(stage)[:-1] + ',"steps":['
        if not steps:
            lines.append(head + end)
            continue
        lines.append(head)
        lines += [s + "," for s in steps[:-1]]
        lines.append(steps[-1] + end)
    lines.append("]}")
    return "\n".join(lines) + "\n"


def _fmt_seconds(seconds: float) -> str:
    if seconds < 1:
        return "<1 s"
    if seconds < 120:
        return f"~{seconds:.0f} s"
    return f"~{seconds / 60:.0f} min"


def render_markdown(plan: Plan, catalog: Catalog, conn: Any = None) -> str:
    text = SqlText(conn)
    out = [f"# rls-migrate plan for `{catalog.database}` (PostgreSQL {catalog.server_version})",
           ""]
    if plan.risks:
        out += ["## Risks", ""] + [f"- {r}" for r in plan.risks] + [""]
    for stage in plan.stages:
        est = stage.estimate
        out += [f"## {stage.name} ({len(stage.steps)} steps, {_fmt_seconds(est.seconds)})", ""]
        out += [f"> {n}" for n in stage.notes] + ([""] if stage.notes else [])
        if stage.steps:
            out += ["| step | table | lock | blocks | in txn |", "|---|---|---|---|---|"]
            for step in stage.steps:
                out.append(f"| {step.description} | `{step.table or ''}` | {step.lock.label} | "
                           f"{step.lock.blocks} | {'yes' if step.transactional else 'no'} |")
            out.append("")
            for step in stage.steps:
                out.append(f"<details><summary><code>{step.id}</code></summary>\n")
                if step.why:
                    out.append(f"Why: {step.why}\n")
                for risk in step.risks:
                    out.append(f"- risk: {risk}")
                out.append("```sql")
                out += [s + ";" for s in _statements(step, text)]
                out += ["```", "</details>", ""]
    return "\n".join(out) + "\n"


def _comment(text: str) -> str:
    """One ``--`` comment line: names from the catalog can hold line breaks, and a break in a
    comment would turn the rest of the text into statements."""
    return "-- " + " ".join(text.splitlines())


def render_sql(plan: Plan, catalog: Catalog, conn: Any = None) -> str:
    """A psql script. Transactional steps run in their own transaction under the playbook's
    lock_timeout (no retries here: a step that times out stops the script);
    CONCURRENTLY statements run outside any transaction. Backfills run as one UPDATE here:
    ``rls-migrate apply`` runs them in short batches instead."""
    text = SqlText(conn)
    out = [_comment(f"rls-migrate plan for {catalog.database} "
                    f"(PostgreSQL {catalog.server_version})"),
           "-- Run with: psql -v ON_ERROR_STOP=1 -f plan.sql", "\\set ON_ERROR_STOP on", ""]
    for stage in plan.stages:
        out.append(f"-- ===== stage {stage.name}")
        for step in stage.steps:
            out.append(_comment(f"{step.id}: {step.description} [{step.lock.label}]"))
            if step.backfill is not None:
                out += ["-- one statement here; rls-migrate apply runs it in batches", "BEGIN;",
                        text(step.backfill.single_statement_sql) + ";", "COMMIT;"]
            elif step.transactional:
                out += ["BEGIN;", f"SET LOCAL lock_timeout = '{plan.lock_timeout_ms:g}ms';"]
                out += [text(s) + ";" for s in step.statements]
                out.append("COMMIT;")
            else:
                out += [text(s) + ";" for s in step.statements]
            out.append("")
    return "\n".join(out)


WIDTH = 120


def render_text(plan: Plan, catalog: Catalog, conn: Any = None) -> str:
    """A plain-text report, 120 columns: risks, then each stage's steps as a table. Written
    by hand rather than with rich's Table, which takes seconds for a plan of 10,000 steps."""
    out = [f"rls-migrate plan for {catalog.database} (PostgreSQL {catalog.server_version})"]
    if plan.risks:
        out += ["", "Risks:"]
        for risk in plan.risks:
            out += _wrapped(risk, "  ! ", "    ")
    for stage in plan.stages:
        est = stage.estimate
        out += ["", f"== {stage.name}: {len(stage.steps)} step(s), {_fmt_seconds(est.seconds)}"]
        for note in stage.notes:
            out += _wrapped(note, "  note: ", "    ")
        if stage.steps:
            out += _table(("table", "step", "lock", "txn", "est."), [
                (step.table.short if step.table else "-",
                 "\n".join([step.description, *(f"risk: {r}" for r in step.risks)]),
                 step.lock.label, "yes" if step.transactional else "no",
                 _fmt_seconds(step.estimate.seconds)) for step in stage.steps])
    return "\n".join(out) + "\n"


def _wrapped(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest,
                         break_long_words=True, break_on_hyphens=False) or [first.rstrip()]


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Box-drawn columns; the table and lock columns as wide as their content (at most a
    fifth of the width each), the step column takes the rest; long cells wrap."""
    fixed = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in (3, 4)]
    room = WIDTH - 3 * len(header) - 1 - sum(fixed)
    table_w = min(max(len(header[0]), *(len(r[0]) for r in rows)), room // 5)
    lock_w = min(max(len(header[2]), *(len(r[2]) for r in rows)), room // 5)
    widths = [table_w, room - table_w - lock_w, lock_w, *fixed]

    def line(left: str, mid: str, right: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + right

    wrapped: dict[tuple[str, int], list[str]] = {}

    def wrap(cell: str, width: int) -> list[str]:
        if len(cell) <= width and "\n" not in cell:
            return [cell]
        # Most long cells repeat (the same description for every table): wrap each once.
        lines = wrapped.get((cell, width))
        if lines is None:
            lines = wrapped[cell, width] = [
                part for paragraph in cell.split("\n") for part in
                (textwrap.wrap(paragraph, width, break_long_words=True,
                               break_on_hyphens=False) or [""])]
        return lines

    def cells(row: tuple[str, ...]) -> list[str]:
        columns = [wrap(cell, width) for cell, width in zip(row, widths, strict=True)]
        height = max(len(c) for c in columns)
        return ["│ " + " │ ".join((c[n] if n < len(c) else "").ljust(w)
                                   for c, w in zip(columns, widths, strict=True)) + " │"
                for n in range(height)]

    return [line("┌", "┬", "┐"), *cells(header), line("├", "┼", "┤"),
            *(text for row in rows for text in cells(row)), line("└", "┴", "┘")]


RENDERERS: dict[str, Renderer] = {
    "text": render_text,
    "markdown": render_markdown,
    "json": render_json,
    "sql": render_sql,
}
