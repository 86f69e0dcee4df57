"""``rls-migrate verify``: parse, call :func:`rls_migrate.verify.verify`, print."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rls_migrate.connect import DSN_DEFAULT_HELP
from rls_migrate.errors import UsageError


@click.command("verify")
@click.argument("playbook", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dsn", metavar="DSN",
              help="the database, as a role that reads every table unfiltered (superuser, "
                   f"BYPASSRLS, or the owner without FORCE); {DSN_DEFAULT_HELP}")
@click.option("--app-dsn", metavar="DSN",
              help="the probe connects as the application with this DSN instead of SET ROLE "
                   "on --dsn's connection")
@click.option("--tenants", metavar="A,B",
              help="probe with these two tenants (default: picked per table from its rows)")
@click.option("--no-probe", is_flag=True, help="structural checks and lints only")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--explain", metavar="CHECK", help="what a check means and how to fix it")
@click.option("--list", "list_", is_flag=True, help="list every check")
def verify_command(playbook: Path | None, dsn: str | None,
                   app_dsn: str | None, tenants: str | None, no_probe: bool, fmt: str,
                   explain: str | None, list_: bool) -> None:
    """Structural checks, policy lints and a live cross-tenant probe. Exits 1 when a check
    fails (warnings do not fail).

    \b
    The probe runs as the application role (SET ROLE, or --app-dsn): with tenant A's
    context it tries to read, update, delete and insert tenant B's rows and to move a row
    into B, in every tenant table and partition, inside transactions that are rolled back;
    with no context every table must read empty and refuse writes.

    \b
    Examples:
      rls-migrate verify playbooks/app.yaml
      rls-migrate verify playbooks/app.yaml --format json > verify.json
      rls-migrate verify playbooks/app.yaml --app-dsn postgresql://app_user@db/app
      rls-migrate verify --explain view-bypasses-rls
    """
    from rls_migrate.verify import output

    if list_:
        click.echo(output.list_checks(), nl=False)
        return
    if explain:
        click.echo(output.explain(explain), nl=False)
        return
    if playbook is None:
        raise UsageError("verify needs a PLAYBOOK (or --explain CHECK, or --list)")
    from rls_migrate.connect import resolve_dsn
    from rls_migrate.playbook import load_playbook
    from rls_migrate.verify.runner import verify

    pb = load_playbook(playbook)
    report = verify(resolve_dsn(dsn, pb.dsn_env), pb, source=str(playbook), app_dsn=app_dsn,
                    tenants=tenants.split(",") if tenants is not None else None,
                    probe=not no_probe)
    click.echo(output.render_json(report) if fmt == "json" else output.render_text(report),
               nl=False)
    if not report.ok:
        sys.exit(1)
