"""Plan renderers: text (rich, for terminals), markdown (for pull requests), json (for
automation; shape below), sql (a runnable script). Renderers only render steps.

JSON shape (``"format": 1``)::

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
import io
import json
from collections.abc import Callable
from typing import Any

from rls_migrate.catalog import Catalog
from rls_migrate.steps import Plan, Step, as_string

Renderer = Callable[[Plan, Catalog, Any], str]


def _statements(step: Step, conn: Any) -> list[str]:
    if step.backfill is not None:
        return [as_string(step.backfill.batch_sql, conn)]
    return [as_string(s, conn) for s in step.statements]


def to_dict(plan: Plan, catalog: Catalog, conn: Any = None) -> dict[str, Any]:
    return {
        "format": 1,
        "database": catalog.database,
        "server_version": catalog.server_version,
        "risks": list(plan.risks),
        "stages": [
            {
                "name": stage.name,
                "notes": list(stage.notes),
                "estimate": dataclasses.asdict(stage.estimate),
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
                        "statements": _statements(step, conn),
                        "inverse": [as_string(s, conn) for s in step.inverse],
                        "estimate": dataclasses.asdict(step.estimate),
                        "risks": list(step.risks),
                    }
                    for step in stage.steps
                ],
            }
            for stage in plan.stages
        ],
    }


def render_json(plan: Plan, catalog: Catalog, conn: Any = None) -> str:
    return json.dumps(to_dict(plan, catalog, conn), indent=2) + "\n"


def _fmt_seconds(seconds: float) -> str:
    if seconds < 1:
        return "<1 s"
    if seconds < 120:
        return f"~{seconds:.0f} s"
    return f"~{seconds / 60:.0f} min"


def render_markdown(plan: Plan, catalog: Catalog, conn: Any = None) -> str:
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
                out += [s + ";" for s in _statements(step, conn)]
                out += ["```", "</details>", ""]
    return "\n".join(out) + "\n"


def _comment(text: str) -> str:
    """One ``--`` comment line: names from the catalog can hold line breaks, and a break in a
    comment would turn the rest of the text into statements."""
    return "-- " + " ".join(text.splitlines())


def render_sql(plan: Plan, catalog: Catalog, conn: Any = None) -> str:
    """A psql script. Transactional steps run in their own transaction under lock_timeout;
    CONCURRENTLY statements run outside any transaction. Backfills run as one UPDATE here:
    ``rls-migrate apply`` runs them in short batches instead."""
    out = [_comment(f"rls-migrate plan for {catalog.database} "
                    f"(PostgreSQL {catalog.server_version})"),
           "-- Run with: psql -v ON_ERROR_STOP=1 -f plan.sql", "\\set ON_ERROR_STOP on", ""]
    for stage in plan.stages:
        out.append(f"-- ===== stage {stage.name}")
        for step in stage.steps:
            out.append(_comment(f"{step.id}: {step.description} [{step.lock.label}]"))
            if step.backfill is not None:
                out += ["-- one statement here; rls-migrate apply runs it in batches", "BEGIN;",
                        as_string(step.backfill.single_statement_sql, conn) + ";", "COMMIT;"]
            elif step.transactional:
                out += ["BEGIN;", "SET LOCAL lock_timeout = '100ms';"]
                out += [as_string(s, conn) + ";" for s in step.statements]
                out.append("COMMIT;")
            else:
                out += [as_string(s, conn) + ";" for s in step.statements]
            out.append("")
    return "\n".join(out)


def render_text(plan: Plan, catalog: Catalog, conn: Any = None) -> str:
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=False, color_system=None)
    console.print(f"rls-migrate plan for {catalog.database} (PostgreSQL {catalog.server_version})")
    if plan.risks:
        console.print("\nRisks:")
        for risk in plan.risks:
            console.print(f"  ! {risk}")
    for stage in plan.stages:
        est = stage.estimate
        console.print(f"\n== {stage.name}: {len(stage.steps)} step(s), {_fmt_seconds(est.seconds)}")
        for note in stage.notes:
            console.print(f"  note: {note}")
        if not stage.steps:
            continue
        table = Table(show_header=True, header_style="bold", expand=True)
        table.add_column("table", overflow="fold", ratio=2)
        table.add_column("step", overflow="fold", ratio=4)
        table.add_column("lock", overflow="fold", ratio=2)
        table.add_column("txn", width=4)
        table.add_column("est.", width=8)
        for step in stage.steps:
            detail = step.description
            if step.risks:
                detail += "\n" + "\n".join(f"risk: {r}" for r in step.risks)
            table.add_row(step.table.short if step.table else "-", detail, step.lock.label,
                          "yes" if step.transactional else "no",
                          _fmt_seconds(step.estimate.seconds))
        console.print(table)
    return buf.getvalue()


RENDERERS: dict[str, Renderer] = {
    "text": render_text,
    "markdown": render_markdown,
    "json": render_json,
    "sql": render_sql,
}
