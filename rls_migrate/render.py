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
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import pydantic_core

from rls_migrate.catalog import Catalog
from rls_migrate.sqlcompose import SqlText
from rls_migrate.steps import Estimate, Plan, StagePlan, Step

Renderer = Callable[[Plan, Catalog, Any], str]
Chunks = Callable[[Plan, Catalog, Any], Iterator[str]]
"""A renderer that yields its text in pieces, to be written as they come: a plan that
prints every statement of 1,000 tables is 18-35 MB of text, and each step's SQL is built,
written and freed in turn (see :meth:`~rls_migrate.steps.Step.statements_once`) instead of
held until the end."""


_ESTIMATE_FIELDS = tuple(f.name for f in dataclasses.fields(Estimate))


def _estimate(estimate: Estimate) -> dict[str, Any]:
    """``dataclasses.asdict`` without its deep copies (the fields are numbers)."""
    return {name: getattr(estimate, name) for name in _ESTIMATE_FIELDS}


def _statements(step: Step, text: SqlText) -> list[str]:
    spec = step.backfill_once()
    if spec is not None:
        return [text(spec.batch_sql)]
    return [text(s) for s in step.statements_once()]


def _step_dict(step: Step, text: SqlText) -> dict[str, Any]:
    return {
        "id": step.id,
        "kind": step.kind,
        "table": str(step.table) if step.table else None,
        "description": step.description,
        "why": step.why,
        "lock": step.lock.label,
        "blocks": step.lock.blocks,
        "transactional": step.transactional,
        "statements": _statements(step, text),
        "inverse": [text(s) for s in step.inverse_once()],
        "estimate": _estimate(step.estimate),
        "risks": list(step.risks),
    }


def _plan_head(plan: Plan, catalog: Catalog) -> dict[str, Any]:
    return {"format": 1, "database": catalog.database,
            "server_version": catalog.server_version, "risks": list(plan.risks)}


def _stage_head(stage: StagePlan) -> dict[str, Any]:
    return {"name": stage.name, "notes": list(stage.notes),
            "estimate": _estimate(stage.estimate)}


def to_dict(plan: Plan, catalog: Catalog, conn: Any = None) -> dict[str, Any]:
    text = SqlText(conn)
    return {**_plan_head(plan, catalog), "stages": [
        {**_stage_head(stage), "steps": [_step_dict(step, text) for step in stage.steps]}
        for stage in plan.stages]}


def json_chunks(plan: Plan, catalog: Catalog, conn: Any = None) -> Iterator[str]:
    """One line for the plan's keys, one per stage's, one per step: a diff shows which steps
    changed, ``jq`` reads it as any JSON, and it is written in a fraction of the time of an
    indented dump (which runs the pure-Python encoder: seconds for 10,000 steps)."""
    text = SqlText(conn)
    dump = _compact_json
    yield dump(_plan_head(plan, catalog))[:-1] + ',"stages":[\n'
    for n, stage in enumerate(plan.stages):
        end = "]}" + ("," if n < len(plan.stages) - 1 else "") + "\n"
        head = dump(_stage_head(stage))[:-1] + ',"steps":['
        if not stage.steps:
            yield head + end
            continue
        yield head + "\n"
        last = len(stage.steps) - 1
        for i, step in enumerate(stage.steps):
            yield dump(_step_dict(step, text)) + (",\n" if i < last else end)
    yield "]}\n"


def _compact_json(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"))``, three times faster (pydantic's encoder;
    non-ASCII escaped as json.dumps does). The same value to any JSON reader, not always the
    same text: DEL (0x7f) is written as itself, floats may spell an exponent differently
    (``1e-7`` for ``1e-07``)."""
    return pydantic_core.to_json(value, ensure_ascii=True).decode()


def render_json(plan: Plan, catalog: Catalog, conn: Any = None, *, pretty: bool = False) -> str:
    """:func:`json_chunks` as one string; ``pretty``: indented (``--pretty``)."""
    if pretty:
        return json.dumps(to_dict(plan, catalog, conn), indent=2) + "\n"
    return "".join(json_chunks(plan, catalog, conn))


def _fmt_seconds(seconds: float) -> str:
    if seconds < 1:
        return "<1 s"
    if seconds < 120:
        return f"~{seconds:.0f} s"
    return f"~{seconds / 60:.0f} min"


def markdown_chunks(plan: Plan, catalog: Catalog, conn: Any = None) -> Iterator[str]:
    """For a pull request: risks, each stage's steps as a table, then each step's SQL."""
    yield from _joined(_markdown_groups(plan, catalog, conn))
    yield "\n"


def _markdown_groups(plan: Plan, catalog: Catalog, conn: Any) -> Iterator[list[str]]:
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
                yield out
                out = []
    yield out


def render_markdown(plan: Plan, catalog: Catalog, conn: Any = None) -> str:
    """:func:`markdown_chunks` as one string."""
    return "".join(markdown_chunks(plan, catalog, conn))


def _comment(text: str) -> str:
    """One ``--`` comment line: names from the catalog can hold line breaks, and a break in a
    comment would turn the rest of the text into statements."""
    return "-- " + " ".join(text.splitlines())


def sql_chunks(plan: Plan, catalog: Catalog, conn: Any = None) -> Iterator[str]:
    """A psql script. Transactional steps run in their own transaction under the playbook's
    lock_timeout (no retries here: a step that times out stops the script);
    CONCURRENTLY statements run outside any transaction. Backfills run as one UPDATE here:
    ``rls-migrate apply`` runs them in short batches instead."""
    return _joined(_sql_groups(plan, catalog, conn))


def _sql_groups(plan: Plan, catalog: Catalog, conn: Any) -> Iterator[list[str]]:
    """The script's lines, a step at a time."""
    text = SqlText(conn)
    out = [_comment(f"rls-migrate plan for {catalog.database} "
                    f"(PostgreSQL {catalog.server_version})"),
           "-- Run with: psql -v ON_ERROR_STOP=1 -f plan.sql", "\\set ON_ERROR_STOP on", ""]
    for stage in plan.stages:
        out.append(f"-- ===== stage {stage.name}")
        for step in stage.steps:
            out.append(_comment(f"{step.id}: {step.description} [{step.lock.label}]"))
            spec = step.backfill_once()
            if spec is not None:
                out += ["-- one statement here; rls-migrate apply runs it in batches", "BEGIN;",
                        text(spec.single_statement_sql) + ";", "COMMIT;"]
            elif step.transactional:
                out += ["BEGIN;", f"SET LOCAL lock_timeout = '{plan.lock_timeout_ms:g}ms';"]
                out += [text(s) + ";" for s in step.statements_once()]
                out.append("COMMIT;")
            else:
                out += [text(s) + ";" for s in step.statements_once()]
            out.append("")
            yield out
            out = []
    yield out


def _joined(groups: Iterator[list[str]]) -> Iterator[str]:
    """``"\\n".join`` of every group's lines, yielded a group at a time."""
    first = True
    for group in groups:
        if group:
            yield ("" if first else "\n") + "\n".join(group)
            first = False


def render_sql(plan: Plan, catalog: Catalog, conn: Any = None) -> str:
    """:func:`sql_chunks` as one string."""
    return "".join(sql_chunks(plan, catalog, conn))


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


def _text_chunks(plan: Plan, catalog: Catalog, conn: Any = None) -> Iterator[str]:
    yield render_text(plan, catalog, conn)


CHUNKS: dict[str, Chunks] = {
    "text": _text_chunks,
    "markdown": markdown_chunks,
    "json": json_chunks,
    "sql": sql_chunks,
}


def write_plan(out: TextIO, fmt: str, plan: Plan, catalog: Catalog, conn: Any = None) -> None:
    """Render ``plan`` in ``fmt`` onto ``out`` piece by piece (see :data:`Chunks`), a few
    hundred kilobytes a write (one write a step cost more than the json encoding)."""
    pending: list[str] = []
    size = 0
    for chunk in CHUNKS[fmt](plan, catalog, conn):
        pending.append(chunk)
        size += len(chunk)
        if size > 262_144:
            out.write("".join(pending))
            pending, size = [], 0
    out.write("".join(pending))

