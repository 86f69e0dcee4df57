"""The command line: parses, calls the library, prints. Every expected failure is an
``RlsMigrateError`` turned into one line on stderr and its exit code, here and only here."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click
import psycopg

from rls_migrate import __version__
from rls_migrate.catalog import Catalog
from rls_migrate.connect import DSN_HELP, connect, resolve_dsn
from rls_migrate.errors import RlsMigrateError, UsageError
from rls_migrate.steps import STAGES

F = TypeVar("F", bound=Callable[..., Any])


def dsn_option(func: F) -> F:
    return click.option("--dsn", metavar="DSN", help=DSN_HELP)(func)


class _Commands(click.Group):
    """The commands defined here, plus those that live beside their library code and load
    only when used: importing report, verify and the Alembic integration costs a quarter of
    a second, on every start of every command."""

    BESIDE_THEIR_CODE = {
        "alembic": ("rls_migrate.alembic_cli", "alembic_group"),
        "check": ("rls_migrate.check", "check_command"),
        "report": ("rls_migrate.report_cli", "report"),
        "verify": ("rls_migrate.verify.command", "verify_command"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.BESIDE_THEIR_CODE})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.BESIDE_THEIR_CODE:
            module, attribute = self.BESIDE_THEIR_CODE[cmd_name]
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rls-migrate")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="structured log lines on stderr: text or JSON")
@click.option("--debug", is_flag=True, help="show Python tracebacks for unexpected errors")
@click.pass_context
def cli(ctx: click.Context, log_format: str, debug: bool) -> None:
    """Roll PostgreSQL row-level security out on a live multi-tenant database, with zero
    downtime, in reviewable, resumable, reversible stages:

    \b
      prepare -> add-column -> backfill -> constrain -> index -> observe -> enforce

    \b
    Start with:
      rls-migrate doctor --dsn postgresql://...            what blocks or weakens RLS here
      rls-migrate init --dsn ... --tenant-table accounts   discover, write a playbook
      rls-migrate plan playbooks/app.yaml                  dry run: every statement and lock
      rls-migrate demo                                     all of it on a throwaway server
    """
    ctx.ensure_object(dict)
    ctx.obj["log_format"] = log_format
    ctx.obj["debug"] = debug


# --------------------------------------------------------------------------- doctor


@cli.command()
@dsn_option
@click.option("--app-role", metavar="ROLE",
              help="judge this role as the application role (default: the connecting role)")
def doctor(dsn: str | None, app_role: str | None) -> None:
    """What the server and roles mean for an RLS rollout, in plain words.

    \b
    Example:
      rls-migrate doctor --dsn postgresql://owner@db/app --app-role app_user
    Exits 1 when something blocks a rollout.
    """
    from rls_migrate.doctor import diagnose

    with connect(resolve_dsn(dsn)) as conn:
        catalog = Catalog.load(conn)
    findings = diagnose(catalog, app_role)
    _print_findings(findings)
    if any(f.level == "block" for f in findings):
        sys.exit(1)


def _print_findings(findings: list[Any]) -> None:
    marks = {"ok": "ok   ", "warn": "WARN ", "block": "BLOCK"}
    for f in findings:
        click.echo(f"{marks[f.level]} {f.topic:<10} {f.message}")


# --------------------------------------------------------------------------- init


@cli.command()
@dsn_option
@click.option("--tenant-table", required=True, metavar="TABLE",
              help="the tenant root table, e.g. accounts or public.accounts")
@click.option("--key", metavar="COLUMN",
              help="the root's key column, as in SQL: id, '\"orgId\"' (default: its primary key)")
@click.option("--app-role", metavar="ROLE", help="the role the application connects as")
@click.option("--column", default="tenant_id", show_default=True,
              help="name of the tenant column added to derived tables")
@click.option("--setting", default="app.tenant_id", show_default=True,
              help="the per-transaction setting that holds the current tenant")
@click.option("--dsn-env", default="DATABASE_URL", show_default=True,
              help="environment variable the playbook reads the DSN from (never a password)")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="playbook path (default: playbooks/<database>.yaml)")
@click.option("--force", is_flag=True, help="overwrite an existing playbook")
def init(dsn: str | None, tenant_table: str, key: str | None, app_role: str | None, column: str,
         setting: str, dsn_env: str, output: Path | None, force: bool) -> None:
    """Discover the tenant graph and write a commented playbook.

    \b
    Example:
      rls-migrate init --dsn $DATABASE_URL --tenant-table accounts --app-role app_user \\
          -o playbooks/app.yaml
    Tables that need a decision are written as TODO; plan refuses until they are decided.
    """
    from rls_migrate.catalog import parse_column
    from rls_migrate.discover import discover
    from rls_migrate.init import build_playbook_yaml, write_playbook
    from rls_migrate.linkcounts import count_links

    try:
        key = parse_column(key) if key is not None else None
        column = parse_column(column)
    except ValueError as exc:
        raise UsageError(f"--key/--column: {exc}") from None
    with connect(resolve_dsn(dsn)) as conn:
        catalog = Catalog.load(conn)
        graph = discover(catalog, tenant_table, key=key, tenant_column=column,
                         app_role=app_role)
        # The tables whose decision depends on how many rows a link leaves without a tenant.
        link_counts = count_links(conn, graph)
    text = build_playbook_yaml(graph, catalog, app_role=app_role, dsn_env=dsn_env,
                               column=column, setting=setting, link_counts=link_counts)
    path = output or Path("playbooks") / f"{catalog.database}.yaml"
    replaced = force and path.is_file()
    write_playbook(path, text, force=force)
    if replaced:
        click.echo(f"WARNING: --force: replaced the existing {path} (decisions made in it are "
                   "gone unless it is under version control)", err=True)
    counts = graph.counts()
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    click.echo(f"wrote {path}: {summary}")
    from rls_migrate.playbook import parse_playbook

    todo = len(parse_playbook(text, str(path)).todos)
    if todo:
        click.echo(f"{todo} table(s) marked TODO need your decision before `rls-migrate plan`.")


# --------------------------------------------------------------------------- plan


def _load(playbook_path: Path, dsn: str | None) -> tuple[Any, str]:
    from rls_migrate.playbook import load_playbook

    playbook = load_playbook(playbook_path)
    return playbook, resolve_dsn(dsn, playbook.dsn_env)


@cli.command()
@click.argument("playbook", type=click.Path(dir_okay=False, path_type=Path))
@dsn_option
@click.option("--stage", "stages", multiple=True, type=click.Choice(STAGES),
              help="only these stages (repeatable; default: all)")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json", "sql"]),
              default="text", show_default=True,
              help="text for terminals, markdown for pull requests, json for automation, "
                   "sql for a runnable psql script")
@click.option("--pretty", is_flag=True,
              help="with --format json: indented, instead of one line per step")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="write to a file instead of stdout")
@click.option("--target", type=click.Choice(["rls", "citus"]), default="rls",
              show_default=True,
              help="rls: the RLS rollout; citus: scale-out readiness (each table's role, every "
                   "blocker and its fix) and, with --format sql, the distribution runbook")
@click.option("--no-preflight", is_flag=True,
              help="skip the data preflight (one scan per tenant table counting NULL tenant "
                   "keys, NULL links and orphans, with sample keys)")
def plan(playbook: Path, dsn: str | None, stages: tuple[str, ...], fmt: str, pretty: bool,
         output: Path | None, target: str, no_preflight: bool) -> None:
    """Dry run: every statement, the lock it takes and what that blocks, estimates, risks.

    Reads the catalog and, for the data preflight, the tenant tables (rows that will have
    no tenant: NULL keys, NULL links, orphans, per table with sample keys); executes nothing.

    \b
    Examples:
      rls-migrate plan playbooks/app.yaml
      rls-migrate plan playbooks/app.yaml --stage backfill --format markdown > plan.md
      rls-migrate plan playbooks/app.yaml --format sql -o plan.sql
      rls-migrate plan playbooks/app.yaml --format json | jq -c '.stages[].steps[].id'
      rls-migrate plan playbooks/app.yaml --no-preflight     catalog only, no table scans
      rls-migrate plan playbooks/app.yaml --target citus             # Citus readiness
      rls-migrate plan playbooks/app.yaml --target citus --format sql -o runbook.sql
    """
    from rls_migrate.gcpause import without_cyclic_gc

    if pretty and (fmt != "json" or target != "rls"):
        raise UsageError("--pretty applies to --format json only")
    if target == "citus" and stages:
        raise UsageError("--stage does not go with --target citus (the readiness report "
                         "covers every table)")
    pb, resolved = _load(playbook, dsn)
    with connect(resolved) as conn, without_cyclic_gc(), _plan_output(output) as out:
        if target == "citus":
            from rls_migrate.citus.readiness import readiness_of
            from rls_migrate.citus.render import RENDERERS as CITUS

            catalog = Catalog.load(conn, schemas=pb.schemas)
            out.write(CITUS[fmt](readiness_of(catalog, pb, source=str(playbook), conn=conn),
                                 conn))
        else:
            from rls_migrate.planning import read_and_plan
            from rls_migrate.render import render_json, write_plan

            catalog, the_plan = read_and_plan(conn, pb, stages or None, source=str(playbook),
                                              preflight=not no_preflight)
            if pretty:
                out.write(render_json(the_plan, catalog, conn, pretty=True))
            else:
                write_plan(out, fmt, the_plan, catalog, conn)
            # Freed by reference counting while the cyclic collector is still off: back on
            # with the plan alive, its first pass would walk a million objects for nothing.
            del the_plan
        del catalog
    if output:
        click.echo(f"wrote {output}")


@contextlib.contextmanager
def _plan_output(output: Path | None) -> Iterator[TextIO]:
    """Where ``plan`` writes, piece by piece as it renders: stdout, or ``output`` through a
    file beside it renamed into place at the end (never a half-written plan file)."""
    if output is None:
        yield sys.stdout
        return
    partial = output.with_name(f".{output.name}.partial")
    try:
        with partial.open("w", encoding="utf-8") as out:
            yield out
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


# --------------------------------------------------------------------------- apply / status / rollback


def _configure(ctx: click.Context) -> None:
    from rls_migrate.logs import configure_logging

    configure_logging(ctx.obj.get("log_format", "text"))


def _progress(ctx: click.Context) -> Any:
    from rls_migrate.progress import make_progress

    return None if ctx.obj.get("log_format") == "json" else make_progress()


def _print_result(result: Any, rollback: bool = False) -> None:
    for out in result.outcomes:
        extra = ""
        if out.details.get("rows") is not None:
            extra = f" ({out.details['rows']} rows in {out.details.get('batches')} batches)"
        reason = out.details.get("reason")
        if reason and out.outcome in ("skipped", "done"):
            extra += f" ({reason})"
        if out.error:
            extra += f": {out.error}"
        click.echo(f"  {out.outcome:<9} {out.step_id}{extra}")
    click.echo(f"{result.stage}: {_counts(result, rollback)}")


def _counts(result: Any, rollback: bool) -> str:
    """Honest counts: what this run did, what it found done (or, rolling back, had nothing
    to undo), what failed; a dry run says what would run."""
    parts = []
    if result.dry_run:
        would = sum(1 for o in result.outcomes if o.outcome == "would-run")
        parts.append(f"{would} would {'be undone' if rollback else 'run'}")
    elif rollback:
        parts.append(f"{result.undone} undone")
    else:
        parts.append(f"{result.done} done")
    if result.skipped:
        parts.append(f"{result.skipped} " + ("with nothing to undo" if rollback
                                             else "already done"))
    parts.append(f"{result.failed} failed")
    return ", ".join(parts)


@cli.command()
@click.argument("playbook", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--stage", required=True, type=click.Choice(STAGES), help="the stage to run")
@dsn_option
@click.option("--dry-run", is_flag=True, help="show what would run (done checks only)")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
@click.option("--force", is_flag=True,
              help="run even though the stage's gate is shut (enforce: a report with "
                   "violations); the override is journaled")
@click.pass_context
def apply(ctx: click.Context, playbook: Path, stage: str, dsn: str | None, dry_run: bool,
          yes: bool, force: bool) -> None:
    """Run one stage: idempotent, resumable, journaled.

    Steps already done are skipped; a killed run resumes where it stopped. On a terminal it
    shows the stage's plan and asks first.

    \b
    Examples:
      rls-migrate apply playbooks/app.yaml --stage prepare
      rls-migrate apply playbooks/app.yaml --stage backfill --yes
      rls-migrate apply playbooks/app.yaml --stage constrain --dry-run
    """
    from rls_migrate.runner import apply_stage

    _configure(ctx)
    pb, resolved = _load(playbook, dsn)
    if not dry_run and not yes and sys.stdin.isatty():
        from rls_migrate.planner import build_plan
        from rls_migrate.render import render_text

        with connect(resolved) as conn:
            catalog = Catalog.load(conn, schemas=pb.schemas)
            click.echo(render_text(build_plan(catalog, pb, [stage], source=str(playbook)),
                                   catalog, conn))
        click.confirm(f"Run stage {stage}?", abort=True)
    progress = None if dry_run else _progress(ctx)
    if progress is not None:
        with progress:
            outcome = apply_stage(resolved, pb, stage, source=str(playbook), force=force,
                                  progress=progress)
    else:
        outcome = apply_stage(resolved, pb, stage, source=str(playbook), dry_run=dry_run,
                              force=force)
    if outcome.forced:
        seen = "; ".join(f"{k}: {v}" for k, v in outcome.forced.items() if k != "forced")
        click.echo(f"WARNING: --force overrode the {stage} gate ({seen}); the override is "
                   "journaled", err=True)
    _print_result(outcome.result)
    for note in outcome.notes:
        click.echo(f"note: {note}", err=True)


@cli.command()
@click.argument("playbook", type=click.Path(dir_okay=False, path_type=Path))
@dsn_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def status(playbook: Path, dsn: str | None, fmt: str) -> None:
    """Table x stage matrix from the journal, with backfill progress, orphans, conflicts
    and the last error.

    \b
    Example:
      rls-migrate status playbooks/app.yaml
    """
    import json

    from rls_migrate.runner import status as get_status

    pb, resolved = _load(playbook, dsn)
    report = get_status(resolved, pb, source=str(playbook))
    if fmt == "json":
        click.echo(json.dumps(report, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    stages = [s for s in STAGES if any(s in row for row in report["matrix"].values())]
    names = sorted(report["matrix"])
    table = Table(title="rls-migrate status")
    # Table names are what the reader looks for: never shortened, whatever the terminal.
    table.add_column("table", no_wrap=True, min_width=max((len(n) for n in names), default=5))
    for name in stages:
        table.add_column(name, no_wrap=True)
    table.add_column("backfill")
    for name in names:
        row = report["matrix"][name]
        ck = report["backfill"].get(name)
        fill = ""
        if ck:
            fill = f"{ck['rows_done']:,} rows, {ck['batches']} batches" + (
                " (finished)" if ck["finished"] else "")
        table.add_row(name, *(row.get(s, "-") for s in stages), fill)
    needed = max((len(n) for n in names), default=5) + 12 * len(stages) + 40
    Console(width=max(needed, Console().width), soft_wrap=False).print(table)
    for entry in report.get("left_out", []):
        click.echo(f"not migrated: {entry['table']} (strategy {entry['strategy']}"
                   + (f": {entry['note']}" if entry.get("note") else "") + ")")
    for anomaly in report["anomalies"]:
        click.echo(f"{anomaly['kind']}s in {anomaly['table_name']}: {anomaly['count']} "
                   f"(sample keys: {anomaly['sample']})")
    for conflict in report.get("sync_conflicts", []):
        click.echo(f"sync conflicts in {conflict['table_name']}: {conflict['count']} "
                   "transaction(s) wrote a row whose tenant disagreed with its parent's or "
                   f"owner's (that one was kept; latest: {'; '.join(conflict['sample'])})")
    for err in report["errors"]:
        click.echo(_error_line(err))


def _error_line(err: dict[str, Any]) -> str:
    """A journaled error as one readable line: where, when, what."""
    where = " ".join(str(err[k]) for k in ("table_name", "stage") if err.get(k))
    import datetime as dt

    at = err.get("updated_at")
    when = at.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if isinstance(at, dt.datetime) else (
        str(at) if at else "")
    message = " ".join(str(err.get("last_error") or "").split())
    return f"last error{f' ({where}' + (f', {when}' if when else '') + ')' if where else ''}: " \
           f"{message}"


@cli.command()
@click.argument("playbook", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "target", required=True,
              type=click.Choice(("none", *STAGES)),
              help="undo every stage after this one (none: all of them)")
@dsn_option
@click.option("--drop-columns", is_flag=True,
              help="also drop the tenant columns add-column created (their data is lost)")
@click.option("--drop-schema", is_flag=True,
              help="with --to none: afterwards drop the rls_migrate schema too (journal, "
                   "checkpoints, observe samples: the record of the migration is lost); "
                   "refused while anything outside it still depends on it")
@click.option("--dry-run", is_flag=True, help="show what would be undone")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
@click.pass_context
def rollback(ctx: click.Context, playbook: Path, target: str, dsn: str | None,
             drop_columns: bool, drop_schema: bool, dry_run: bool, yes: bool) -> None:
    """Undo stages, latest first, with the same lock care as apply.

    The rls_migrate schema (the journal: the record of what happened) stays unless
    --drop-schema is given with --to none. On a terminal it asks first (--yes: do not).

    \b
    Examples:
      rls-migrate rollback playbooks/app.yaml --to observe --yes   # the kill switch
      rls-migrate rollback playbooks/app.yaml --to backfill        # drop constraints only
      rls-migrate rollback playbooks/app.yaml --to none --drop-columns --drop-schema
    """
    from rls_migrate.runner import rollback_to

    _configure(ctx)
    if drop_schema and target != "none":
        raise UsageError(f"--drop-schema goes with --to none only (after --to {target} the "
                         "remaining stages still need the rls_migrate schema)")
    pb, resolved = _load(playbook, dsn)
    if not dry_run and not yes and sys.stdin.isatty():
        what = "every stage" if target == "none" else f"every stage after {target}"
        extra = "".join((" and drop the tenant columns" if drop_columns else "",
                         " and drop the rls_migrate schema" if drop_schema else ""))
        click.confirm(f"Undo {what}{extra}?", abort=True)
    for result in rollback_to(resolved, pb, target, source=str(playbook),
                              drop_columns=drop_columns, drop_schema=drop_schema,
                              dry_run=dry_run):
        if result.outcomes:
            _print_result(result, rollback=True)


# --------------------------------------------------------------------------- demo


@cli.command()
@click.option("--scale", type=click.FloatRange(0.05, 1000), default=1.0, show_default=True,
              help="size of the sample database (1 = 20 tenants, ~27,000 rows)")
@click.option("--keep", is_flag=True, help="leave the server running and print its DSN")
@click.option("--naive", is_flag=True,
              help="afterwards, run the textbook migration on a fresh copy under the same "
                   "workload, for comparison")
@click.option("--threads", type=click.IntRange(1, 32), default=4, show_default=True,
              help="application workload threads")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("playbooks"), show_default=True,
              help="where the demo writes its playbook")
@click.pass_context
def demo(ctx: click.Context, scale: float, keep: bool, naive: bool, threads: int,
         workdir: Path) -> None:
    """The whole migration on an embedded PostgreSQL under a live application workload:
    init, plan, every stage, report (the gate refuses while a forgotten job runs without
    tenant context), enforce, verify, and a kill-switch drill, with a summary.

    \b
    Examples:
      rls-migrate demo
      rls-migrate demo --scale 5 --naive
      rls-migrate demo --keep          # explore the result with psql afterwards
    """
    from rls_migrate.demo import run_demo
    from rls_migrate.logs import configure_logging

    # The demo narrates every stage itself: step logs (info) would drown the story.
    configure_logging(ctx.obj.get("log_format", "text"), "warning")
    run_demo(scale=scale, keep=keep, naive=naive, threads=threads, workdir=workdir,
             echo=click.echo)


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line and an exit code for every expected failure."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="rls-migrate", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except RlsMigrateError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except psycopg.Error as exc:
        if debug:
            raise
        diag = getattr(exc, "diag", None)
        detail = f" ({diag.sqlstate})" if diag is not None and diag.sqlstate else ""
        click.echo(f"error: the database said: {str(exc).strip().splitlines()[0]}{detail}",
                   err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


__all__ = ["cli", "main", "UsageError"]
