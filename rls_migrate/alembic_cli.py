"""``rls-migrate alembic ...``: the command group. Kept apart from ``rls_migrate.alembic``
so that registering it costs no import of Alembic or SQLAlchemy; commands import them when
they run."""

from __future__ import annotations

from pathlib import Path

import click

from rls_migrate.connect import DSN_HELP


@click.group("alembic")
def alembic_group() -> None:
    """The plan as Alembic revisions (operations: `import rls_migrate.alembic`)."""


@alembic_group.command("render")
@click.argument("playbook", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--versions-dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="your Alembic versions directory; the new revisions follow its head")
@click.option("--stages", metavar="S1,S2",
              help="comma-separated stages to render (default: all, one revision each)")
@click.option("--dsn", metavar="DSN", help=DSN_HELP)
@click.option("--single", is_flag=True, help="all the stages in one revision")
@click.option("--down-revision", metavar="REV",
              help="chain after this revision instead of the directory's only head")
@click.option("--drop-columns", is_flag=True,
              help="downgrade drops the tenant columns add-column created (their data is lost)")
def render(playbook: Path, versions_dir: Path, stages: str | None, dsn: str | None,
           single: bool, down_revision: str | None, drop_columns: bool) -> None:
    """Write the plan as ordinary Alembic revision files, one per stage.

    Reads the catalog (statements are rendered with the server's quoting); executes
    nothing. Each step runs at `alembic upgrade` time exactly as `rls-migrate apply` runs
    it, and `alembic downgrade` undoes it as `rls-migrate rollback` does.

    \b
    Examples:
      rls-migrate alembic render playbooks/app.yaml --versions-dir migrations/versions
      rls-migrate alembic render playbooks/app.yaml --versions-dir migrations/versions \\
          --stages prepare,add-column,backfill
    """
    from rls_migrate.alembic.render import parse_stages, render_to_dir
    from rls_migrate.catalog import Catalog
    from rls_migrate.connect import connect, resolve_dsn
    from rls_migrate.planner import build_plan
    from rls_migrate.playbook import load_playbook

    wanted = parse_stages(stages)
    pb = load_playbook(playbook)
    with connect(resolve_dsn(dsn, pb.dsn_env)) as conn:
        catalog = Catalog.load(conn, schemas=pb.schemas)
        plan = build_plan(catalog, pb, wanted, source=str(playbook))
        written, empty = render_to_dir(conn, catalog, pb, plan, versions_dir,
                                       down_revision=down_revision, single=single,
                                       drop_columns=drop_columns, source=str(playbook))
    for path, rev in written:
        click.echo(f"wrote {path} ({', '.join(rev.stages)}: {rev.steps} step(s), "
                   f"revises {rev.down_revision or 'base'})")
    for name in empty:
        click.echo(f"skipped stage {name}: nothing to do")


__all__ = ["alembic_group"]
