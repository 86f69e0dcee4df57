"""``rls-migrate alembic render``: a plan as ordinary Alembic revision files.

One revision per stage by default, chained after the current head of the versions
directory. Each planned step becomes one ``op.run_rls_step(...)`` call whose statements are
the plan's SQL rendered with a live connection (exact quoting) and written as Python string
literals; ``downgrade()`` undoes the steps in reverse order with ``op.undo_rls_step(...)``.
At ``alembic upgrade`` time those run exactly as ``rls-migrate apply`` runs steps (done
checks, one short transaction per step under lock_timeout with retries, CONCURRENTLY outside
any transaction, the journal), so an interrupted upgrade resumes and ``rls-migrate status``
sees what Alembic did. Backfills become ``op.backfill_tenant_column(...)`` (batched,
checkpointed), the toolkit's schema ``op.upgrade_rls_migrate_schema()``.

Everything user-controlled that reaches the file (table names, SQL text, descriptions) goes
through :func:`py_str` (a string literal) or :func:`comment` (one ``#`` line per line of
text): a name with a quote, a line break or triple quotes cannot end a literal or start code.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import re
import textwrap
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rls_migrate.catalog import Catalog
from rls_migrate.errors import PrerequisiteError, UsageError
from rls_migrate.executor import Executor
from rls_migrate.playbook import Playbook
from rls_migrate.stages.common import PlanContext
from rls_migrate.stages.prepare import check_roles
from rls_migrate.steps import STAGES, Plan, StagePlan, Step, as_string

WIDTH = 96
INDENT = "    "
# Kinds that have their own operation; everything else is a run_rls_step.
BACKFILL_KIND = "backfill"
SCHEMA_KIND = "upgrade_schema"

_STAGE_TITLES = {
    "prepare": "the rls_migrate schema (journal, checkpoints, samples)",
    "add-column": "tenant columns, sync triggers, NOT VALID tenant foreign keys",
    "backfill": "fill the tenant columns in short batches",
    "constrain": "NOT NULL and foreign keys validated without long locks",
    "index": "tenant-leading indexes, built CONCURRENTLY",
    "observe": "RLS on, policies that record would-be violations and filter nothing",
    "enforce": "the flip: policies filter by tenant",
}


# --------------------------------------------------------------------------- Python text


def _quote_for(text: str) -> str:
    return "'" if text.count('"') > text.count("'") else '"'


def py_str(text: str, quote: str | None = None) -> str:
    """A Python string literal for ``text``, exact for any content: the quote that needs
    fewer escapes (or ``quote``), backslashes and that quote escaped, and every character
    that is not printable (line breaks included) written as an escape."""
    quote = quote or _quote_for(text)
    out = [quote]
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == quote:
            out.append("\\" + quote)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable():
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    out.append(quote)
    return "".join(out)


def py_str_lines(text: str, indent: str, width: int = WIDTH) -> list[str]:
    """``text`` as adjacent string literals, one per source line: split after each line
    break and, for long lines, after spaces (concatenation gives back ``text`` exactly)."""
    quote = _quote_for(text)
    pieces: list[str] = []
    for line in text.splitlines(keepends=True) or [""]:
        current = ""
        for token in re.split(r"(?<= )", line):
            if current and len(current) + len(token) > width - len(indent) - 4:
                pieces.append(current)
                current = ""
            current += token
        pieces.append(current)
    return [indent + py_str(p, quote) for p in pieces if p] or [indent + '""']


def comment(text: str, indent: str = INDENT, width: int = WIDTH) -> list[str]:
    """``# text``, wrapped; every line break in ``text`` (a name may hold one) starts a new
    comment line instead of code, and other unprintable characters are written escaped."""
    lines: list[str] = []
    for raw in text.splitlines() or [""]:
        part = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in raw)
        wrapped = textwrap.wrap(part, width - len(indent) - 2, break_long_words=False,
                                break_on_hyphens=False) or [""]
        lines += [f"{indent}# {w}".rstrip() for w in wrapped]
    return lines


# --------------------------------------------------------------------------- revisions


@dataclasses.dataclass(frozen=True)
class Revision:
    revision: str
    down_revision: str | None
    stages: tuple[str, ...]
    filename: str
    text: str
    steps: int


def _stage_list(stages: Sequence[str]) -> str:
    return ", ".join(stages)


def _step_comments(step: Step) -> list[str]:
    out = comment(f"{step.id}: {step.description}")
    lock = step.lock
    if step.kind == BACKFILL_KIND:
        out += comment("lock: row locks only, one short batch transaction at a time "
                       "(ROW EXCLUSIVE)")
    elif lock.label != "none":
        how = ("its own short transaction" if step.transactional
               else "outside any transaction")
        out += comment(f"lock: {lock.label}, blocks {lock.blocks}; {how}")
    if step.why:
        out += comment(f"why: {step.why}")
    for risk in step.risks:
        out += comment(f"risk: {risk}")
    return out


def _list_value(statements: Sequence[str]) -> list[str]:
    """``[`` literal lines ``]`` with commas only between statements."""
    lines: list[str] = []
    for statement in statements:
        pieces = py_str_lines(statement, INDENT * 3)
        lines += pieces[:-1] + [pieces[-1] + ","]
    return lines


def _step_call(name: str, step: Step, statements: Sequence[str], *, lock: str,
               transactional: bool, done_check: str | None) -> list[str]:
    kwargs: list[tuple[str, str]] = [
        ("stage", py_str(step.stage)),
        ("kind", py_str(step.kind)),
        ("table", py_str(str(step.table)) if step.table is not None else "None"),
        ("lock", py_str(lock)),
    ]
    lines = [f"{INDENT}op.{name}(", f"{INDENT * 2}{py_str(step.id)},"]
    for key, value in kwargs:
        lines.append(f"{INDENT * 2}{key}={value},")
    lines.append(f"{INDENT * 2}statements=[")
    lines += _list_value(statements)
    lines.append(f"{INDENT * 2}],")
    if not transactional:
        lines.append(f"{INDENT * 2}transactional=False,")
    if done_check is not None:
        check = py_str_lines(done_check, INDENT * 3)
        if len(check) == 1 and len(check[0]) - len(INDENT * 3) + len(INDENT * 2) + 12 <= WIDTH:
            lines.append(f"{INDENT * 2}done_check={check[0].strip()},")
        else:
            lines.append(f"{INDENT * 2}done_check=(")
            lines += check
            lines.append(f"{INDENT * 2}),")
    if (name == "run_rls_step" and step.estimate.seconds > 0
            and Executor.kind_handlers.get(step.kind) is not None):
        # A kind with its own runner may read the estimate (enforce's pause does).
        lines.append(f"{INDENT * 2}seconds={step.estimate.seconds!r},")
    lines.append(f"{INDENT * 2}options=OPTIONS,")
    lines.append(f"{INDENT})")
    return lines


def _options_literal(playbook: Playbook) -> str:
    o = playbook.options
    values = {"lock_timeout": o.lock_timeout, "ddl_statement_timeout": o.ddl_statement_timeout,
              "statement_timeout": o.statement_timeout, "retries": o.retries,
              "backoff_initial": o.backoff_initial, "backoff_max": o.backoff_max}
    inner = "".join(f"{INDENT}{py_str(k)}: {v!r},\n" for k, v in values.items())
    return "OPTIONS = {\n" + inner + "}"


def _backfill_call(ctx: PlanContext, step: Step) -> list[str]:
    assert step.table is not None
    entry = ctx.tenant_table(step.table)
    assert entry is not None and entry.parent is not None and entry.parent_column is not None
    b = ctx.playbook.options.backfill
    kwargs: list[tuple[str, str]] = [
        ("schema", py_str(step.table.schema)),
        ("parent", py_str(str(entry.parent))),
        ("parent_column", py_str(entry.parent_column)),
        ("batch_target", repr(b.batch_target)),
        ("batch_start_rows", repr(b.batch_start_rows)),
        ("batch_max_rows", repr(b.batch_max_rows)),
        ("pause", repr(b.pause)),
        ("max_replica_lag", repr(b.max_replica_lag)),
        ("user_triggers", py_str(b.user_triggers)),
        ("orphans", py_str(b.orphans)),
        ("options", "OPTIONS"),
    ]
    lines = [f"{INDENT}op.backfill_tenant_column(",
             f"{INDENT * 2}{py_str(step.table.name)},",
             f"{INDENT * 2}{py_str(entry.column)},"]
    lines += [f"{INDENT * 2}{k}={v}," for k, v in kwargs]
    lines.append(f"{INDENT})")
    return lines


def _upgrade_body(ctx: PlanContext, stages: Sequence[StagePlan], conn: Any) -> list[str]:
    body: list[str] = []
    for stage in stages:
        body += comment(f"===== stage {stage.name}: {_STAGE_TITLES.get(stage.name, '')}")
        for note in stage.notes:
            body += comment(f"note: {note}")
        if stage.name == "enforce":
            body += comment("note: `rls-migrate apply` runs this stage only after a clean "
                            "observe report; Alembic does not check it: run `rls-migrate "
                            "report PLAYBOOK --fail-on-violations` before upgrading")
        for step in stage.steps:
            body.append("")
            body += _step_comments(step)
            if step.kind == SCHEMA_KIND:
                body.append(f"{INDENT}op.upgrade_rls_migrate_schema()")
            elif step.kind == BACKFILL_KIND:
                body += _backfill_call(ctx, step)
            else:
                body += _step_call(
                    "run_rls_step", step, step.render(conn), lock=step.lock.label,
                    transactional=step.transactional,
                    done_check=as_string(step.done_check, conn) if step.done_check else None)
        body.append("")
    return body[:-1] if body and body[-1] == "" else body


def _downgrade_body(stages: Sequence[StagePlan], conn: Any, drop_columns: bool) -> list[str]:
    body: list[str] = []
    runs = 0
    for stage in reversed(stages):
        body += comment(f"===== undo stage {stage.name}")
        for step in reversed(stage.steps):
            if step.kind == SCHEMA_KIND:
                body += comment(f"{step.id}: the rls_migrate schema stays, it is the record of "
                                "what happened (op.downgrade_rls_migrate_schema() drops it)")
                continue
            if step.kind == BACKFILL_KIND:
                body += comment(f"{step.id}: the filled values stay (harmless; the add-column "
                                "downgrade drops the column when rendered with --drop-columns)")
                continue
            if not step.inverse:
                body += comment(f"{step.id}: nothing to undo")
                continue
            if step.inverse_needs is not None and not (
                    step.inverse_needs == "drop_columns" and drop_columns):
                body += comment(f"{step.id}: kept, its inverse loses data (render with "
                                f"--{step.inverse_needs.replace('_', '-')} to undo it)")
                continue
            body.append("")
            body += comment(f"undo {step.id}")
            body += _step_call(
                "undo_rls_step", step, [as_string(s, conn) for s in step.inverse],
                lock=step.inverse_lock.label, transactional=step.inverse_transactional,
                done_check=None)
            runs += 1
        body.append("")
    while body and body[-1] == "":
        body.pop()
    if runs == 0:
        body.append(f"{INDENT}pass")
    return body


def render_revision(
    ctx: PlanContext,
    stages: Sequence[StagePlan],
    conn: Any,
    *,
    revision: str,
    down_revision: str | None,
    created: dt.datetime,
    source: str,
    drop_columns: bool = False,
    risks: Sequence[str] = (),
) -> str:
    """The text of one revision file for ``stages``."""
    names = [s.name for s in stages]
    title = (f"rls-migrate stage {names[0]}: {_STAGE_TITLES.get(names[0], '')}"
             if len(names) == 1 else f"rls-migrate stages {_stage_list(names)}")
    catalog = ctx.catalog
    head = [
        '"""' + title,
        "",
        f"Revision ID: {revision}",
        f"Revises: {down_revision or ''}",
        f"Create Date: {created:%Y-%m-%d %H:%M:%S.%f}",
        "",
        "Written by `rls-migrate alembic render`. Every step runs as `rls-migrate apply`",
        "runs it: skipped when its done check passes, else in its own short transaction",
        "under lock_timeout with retries (CONCURRENTLY steps outside any transaction), and",
        "journaled in the rls_migrate schema; an interrupted upgrade resumes where it",
        "stopped. Needs `import rls_migrate.alembic` and the postgresql+psycopg driver.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from alembic import op",
        "",
        "import rls_migrate.alembic  # noqa: F401  (registers op.run_rls_step and friends)",
        "",
    ]
    head += comment(f"plan: {source}", indent="")
    head += comment(f"database: {catalog.database} (PostgreSQL {catalog.server_version})",
                    indent="")
    for risk in risks:
        head += comment(f"risk: {risk}", indent="")
    head += [
        "",
        f"revision = {py_str(revision)}",
        f"down_revision = {py_str(down_revision) if down_revision else 'None'}",
        "branch_labels = None",
        "depends_on = None",
        "",
        "# lock care for every step (the playbook's options; milliseconds)",
        _options_literal(ctx.playbook),
        "",
        "",
        "def upgrade() -> None:",
    ]
    text = head + _upgrade_body(ctx, stages, conn)
    text += ["", "", "def downgrade() -> None:"] + _downgrade_body(stages, conn, drop_columns)
    return "\n".join(text) + "\n"


# --------------------------------------------------------------------------- the versions dir


def _assigned(module: ast.Module, name: str) -> Any:
    for node in module.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        if value is not None and any(isinstance(t, ast.Name) and t.id == name for t in targets):
            try:
                return ast.literal_eval(value)
            except ValueError:
                return None
    return None


def heads(versions_dir: Path) -> list[str]:
    """The heads of the revisions in ``versions_dir`` (read, never imported: a revision may
    import the application): revisions no other revision names as ``down_revision``."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted(versions_dir.rglob("*.py")):
        try:
            module = ast.parse(path.read_text(encoding="utf-8"), str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
            raise UsageError(f"{path}: cannot read it as a revision ({exc})") from None
        revision = _assigned(module, "revision")
        if not isinstance(revision, str):
            continue
        revisions.add(revision)
        down = _assigned(module, "down_revision")
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, list | tuple):
            parents.update(d for d in down if isinstance(d, str))
    return sorted(revisions - parents)


def _slug(stages: Sequence[str]) -> str:
    return "_".join(s.replace("-", "_") for s in stages)


def plan_revisions(
    ctx: PlanContext,
    plan: Plan,
    conn: Any,
    *,
    down_revision: str | None,
    single: bool = False,
    drop_columns: bool = False,
    source: str = "playbook",
    new_id: Callable[[], str] = lambda: uuid.uuid4().hex[-12:],
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC).replace(tzinfo=None),
) -> tuple[list[Revision], list[str]]:
    """The revisions for ``plan`` (stages without steps are left out and named in the
    second list), chained after ``down_revision``."""
    stages = [s for s in plan.stages if s.steps]
    empty = [s.name for s in plan.stages if not s.steps]
    groups = [stages] if single and stages else [[s] for s in stages]
    out: list[Revision] = []
    parent = down_revision
    for index, group in enumerate(groups):
        revision = new_id()
        names = tuple(s.name for s in group)
        text = render_revision(ctx, group, conn, revision=revision, down_revision=parent,
                               created=now(), source=source, drop_columns=drop_columns,
                               risks=plan.risks if index == 0 else ())
        out.append(Revision(revision, parent, names,
                            f"{revision}_rls_migrate_{_slug(names)}.py", text,
                            sum(len(s.steps) for s in group)))
        parent = revision
    return out, empty


def parse_stages(text: str | None) -> list[str] | None:
    """``--stages add-column,backfill`` -> the stages, in runbook order."""
    if not text:
        return None
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise UsageError(f"--stages: unknown stage(s) {', '.join(map(repr, unknown))}; "
                         f"expected some of {', '.join(STAGES)}")
    return [s for s in STAGES if s in wanted]


def render_to_dir(
    conn: Any,
    catalog: Catalog,
    playbook: Playbook,
    plan: Plan,
    versions_dir: Path,
    *,
    down_revision: str | None = None,
    single: bool = False,
    drop_columns: bool = False,
    source: str = "playbook",
) -> tuple[list[tuple[Path, Revision]], list[str]]:
    """Write the revisions into ``versions_dir``, after its head (or ``down_revision``)."""
    if not versions_dir.is_dir():
        raise UsageError(f"--versions-dir {versions_dir}: no such directory")
    ctx = PlanContext(catalog, playbook)
    if any(s.name == "prepare" for s in plan.stages):
        blocking = [f.message for f in check_roles(ctx) if f.blocking]
        if blocking:
            raise PrerequisiteError("; ".join(blocking))
    if down_revision is None:
        found = heads(versions_dir)
        if len(found) > 1:
            raise UsageError(f"{versions_dir} has {len(found)} heads ({', '.join(found)}): "
                             "merge them first (alembic merge heads) or pick one with "
                             "--down-revision")
        down_revision = found[0] if found else None
    revisions, empty = plan_revisions(ctx, plan, conn, down_revision=down_revision,
                                      single=single, drop_columns=drop_columns, source=source)
    written: list[tuple[Path, Revision]] = []
    for rev in revisions:
        path = versions_dir / rev.filename
        path.write_text(rev.text, encoding="utf-8")
        written.append((path, rev))
    return written, empty
