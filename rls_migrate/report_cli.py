"""``rls-migrate report``: the observe report as text, markdown or JSON, and the command.

Parameters are shown redacted (``$1 = <5 chars>``) unless ``--show-parameters``: they are
the application's data, and reports end up in tickets and CI logs."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import click

from rls_migrate.connect import DSN_HELP
from rls_migrate.replay import describe_parameters, placeholder_count
from rls_migrate.report import Group, Report, build_report, describe_window, parse_since


def _when(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _summary(report: Report) -> str:
    start = f" (since {_when(report.window_start)} UTC)" if report.window_start else ""
    head = f"observe report for {report.database}, {describe_window(report.since)}{start}"
    if report.clean:
        return f"{head}\nclean: no would-be violation recorded"
    verdicts = ", ".join(f"{n} {name}" for name, n in sorted(report.verdicts.items()))
    return (f"{head}\nNOT CLEAN: {len(report.groups)} group(s) ({verdicts}), "
            f"{report.statements} recorded statement(s), {report.counted_statements:,} "
            "statement(s) counted")


def example_line(g: Group, show_parameters: bool = False) -> str:
    ex = g.example
    ctx = "no tenant set" if not ex.context else f"tenant {ex.context}"
    ro = ", read-only" if ex.read_only else ""
    params = (describe_parameters(ex.parameters, show_parameters)
              if ex.parameters is not None or placeholder_count(ex.statement) else "none")
    return (f"{ctx}{ro}, session_user {ex.session_user}, pid {ex.pid}, parameters "
            f"{params}: {ex.statement[:300]!r}")


def verdict_line(g: Group) -> str:
    if g.verdict is None:
        return "not replayed (rls-migrate report PLAYBOOK --confirm)"
    v = g.verdict
    sample = v.deciding
    rows = ""
    if sample is not None and sample.observe_rows is not None:
        enforced = "refused" if sample.enforce_rows is None else f"{sample.enforce_rows:,}"
        rows = f" [rows: observe {sample.observe_rows:,}, enforced {enforced}]"
    return f"{v.verdict.upper()}: {v.reason}{rows}"


def render_text(report: Report, show_parameters: bool = False) -> str:
    lines = [_summary(report)]
    if report.groups:
        header = ("statements", "table", "op", "kind", "role", "application", "first seen",
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
            lines.append(f"    example:   {example_line(g, show_parameters)}")
            lines.append(f"    verdict:   {verdict_line(g)}")
            lines += [f"    advice:    {a}" for a in g.advice]
    counted = [c for c in report.counters if c.calls]
    if counted:
        lines += ["", "statements counted per recorder (pg_stat_user_functions; one call per "
                      "statement, not per row):"]
        width = max(len(c.table) for c in counted)
        for c in counted:
            lines.append(f"  {c.table.ljust(width)}  {c.operation:<5}  in window {c.in_window:>9,}"
                         f"  since stats reset {c.calls:>9,}")
    for note in report.notes:
        lines.append(f"note: {note}")
    if not report.clean:
        lines.append("")
        lines.append("A confirmed group is a code path that enforce breaks; an unconfirmable one "
                     "could not be replayed (the reason says why); a harmless one reads the "
                     "same rows enforced. The enforce gate lets only harmless groups through.")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, show_parameters: bool = False) -> str:
    summary = _summary(report).split("\n")
    lines = [f"### {summary[0]}", "", f"**{summary[1]}**", ""]
    if report.groups:
        lines += ["| statements | table | op | kind | role | application | first seen "
                  "| last seen | statement | verdict | example | advice |",
                  "|---:|---|---|---|---|---|---|---|---|---|---|---|"]
        for g in report.groups:
            lines.append(
                f"| {g.count} | {_md(g.table)} | {g.operation} | {g.kind} | {_md(g.role or '')} "
                f"| {_md(g.application_name or '')} | {_when(g.first_seen)} "
                f"| {_when(g.last_seen)} | `{_md(g.statement[:200])}` | {_md(verdict_line(g))} "
                f"| {_md(example_line(g, show_parameters))} | {_md(' '.join(g.advice))} |")
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


def render_json(report: Report, show_parameters: bool = False) -> str:
    return json.dumps(report.as_dict(show_parameters), indent=2) + "\n"


RENDERERS = {"text": render_text, "markdown": render_markdown, "json": render_json}


@click.command("report")
@click.argument("playbook", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dsn", metavar="DSN", help=DSN_HELP)
@click.option("--since", metavar="DURATION",
              help="window, e.g. 30min, 1h, 24h, or 'all' (default: the playbook's "
                   "options.enforce.report_window, what the enforce gate checks)")
@click.option("--format", "fmt", type=click.Choice(sorted(RENDERERS)), default="text",
              show_default=True)
@click.option("--fail-on-violations", is_flag=True,
              help="exit with code 3 when anything was recorded in the window (for CI); "
                   "with --confirm, only when a group is confirmed or unconfirmable")
@click.option("--log", "logs", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="also read this server log file (stderr, csvlog or jsonlog; .gz too), e.g. "
                   "a hot standby's, for its records and the bound parameters of recorded "
                   "statements; repeatable (options.observe.logs adds files too)")
@click.option("--confirm", is_flag=True,
              help="replay each group without a current verdict (up to "
                   "options.observe.replay_samples distinct parameter sets) as its role, "
                   "read-only and rolled back, as observe answers and enforced, and store "
                   "the verdict: harmless, confirmed or unconfirmable")
@click.option("--replay-dsn", metavar="DSN",
              help="replay on this server instead (a hot standby: reads only)")
@click.option("--show-parameters", is_flag=True,
              help="print bound parameter values (redacted to their length by default)")
def report(playbook: Path, dsn: str | None, since: str | None, fmt: str,
           fail_on_violations: bool, logs: tuple[Path, ...], confirm: bool,
           replay_dsn: str | None, show_parameters: bool) -> None:
    """Would-be violations recorded by observe mode, grouped by table, read/write, kind,
    role, application_name and statement, with statement counts, first/last seen, an
    example, the replay's verdict and advice.

    \b
    Examples:
      rls-migrate report playbooks/app.yaml --since 1h
      rls-migrate report playbooks/app.yaml --confirm --log /var/log/postgresql/pg.log
      rls-migrate report playbooks/app.yaml --confirm --replay-dsn "$REPLICA_URL"
      rls-migrate report playbooks/app.yaml --format markdown > report.md
      rls-migrate report playbooks/app.yaml --since 24h --fail-on-violations   # exit 3
    """
    from rls_migrate.connect import connect, resolve_dsn
    from rls_migrate.errors import UsageError
    from rls_migrate.playbook import load_playbook

    if replay_dsn and not confirm:
        raise UsageError("--replay-dsn replays groups: give --confirm too")
    pb = load_playbook(playbook)
    window = parse_since(since, pb.options.enforce.report_window)
    with connect(resolve_dsn(dsn, pb.dsn_env), application_name="rls-migrate report") as conn:
        if replay_dsn:
            with connect(replay_dsn, application_name="rls-migrate replay") as replica:
                result = build_report(conn, pb, window, logs=logs, confirm_groups=True,
                                      replay_conn=replica)
        else:
            result = build_report(conn, pb, window, logs=logs, confirm_groups=confirm)
    click.echo(RENDERERS[fmt](result, show_parameters), nl=False)
    if fail_on_violations:
        blocking = [g for g in result.groups if not (confirm and g.harmless)]
        unexplained = result.counted_statements and not result.groups
        if blocking or unexplained:
            sys.exit(3)  # the same code as a closed gate
