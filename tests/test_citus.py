"""Citus readiness (`plan --target citus`), the online fixes it points at (tenant-leading
primary keys with re-pointed foreign keys, retiring the sync triggers) and the distribution
runbook, on the sample database and on a fixture in the shape of the Citus multi-tenant
tutorial (tests/citus_tutorial.py).

Citus itself never runs here (no package for it on these machines): the runbook is checked
as text, and run by psql on plain PostgreSQL against stand-in functions that record each
call and refuse one whose foreign keys point at a table not distributed yet."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import citus_tutorial as tut
import psycopg
import pytest
from plan_helpers import (
    execute,
    load_catalog,
    relation_locks,
    relation_oid,
    run_step,
    sample_factory,
    sample_playbook,
    strongest,
)
from version_helpers import major_of

from rls_migrate import lockwaits, samples
from rls_migrate.catalog import Catalog, ForeignKey, QualifiedName
from rls_migrate.citus.readiness import Readiness, readiness_of
from rls_migrate.citus.render import render_json, render_markdown, render_text
from rls_migrate.citus.runbook import render_runbook
from rls_migrate.cli import main
from rls_migrate.context import set_tenant
from rls_migrate.errors import PlaybookError, StepFailed
from rls_migrate.planner import build_plan
from rls_migrate.playbook import Playbook
from rls_migrate.runner import apply_stage, rollback_to
from rls_migrate.stages.tenant_keys import composite_tail, fk_tail, original_tail
from rls_migrate.steps import Lock
from rls_migrate.testing import servers
from rls_migrate.testing.checksums import table_checksums
from rls_migrate.workload import Workload

DATA_STAGES = ("prepare", "add-column", "backfill", "constrain")
_PLAYBOOKS: dict[str, Playbook] = {}


def _tutorial_playbook(dsn: str) -> Playbook:
    if "pb" not in _PLAYBOOKS:  # discovery on the pristine fixture (before add-column)
        _PLAYBOOKS["pb"] = tut.playbook(load_catalog(dsn))
    return _PLAYBOOKS["pb"]


def _staged_tutorial(dsn: str) -> None:
    tut.load(dsn)
    pb = _tutorial_playbook(dsn)
    for stage in DATA_STAGES:
        apply_stage(dsn, pb, stage)


@pytest.fixture(scope="module")
def tutorial_factory(make_factory):  # type: ignore[no-untyped-def]
    return make_factory(_staged_tutorial, "citustut")


@pytest.fixture
def tutorial_db(tutorial_factory: servers.DatabaseFactory) -> Iterator[str]:
    dsn = tutorial_factory.create()
    yield dsn
    tutorial_factory.drop(servers.dbname_of(dsn))


def _staged_sample(dsn: str) -> None:
    samples.load(dsn, scale=0.2)
    if "sample" not in _PLAYBOOKS:  # discovery on the pristine sample (before add-column)
        _PLAYBOOKS["sample"] = sample_playbook(load_catalog(dsn))
    for stage in DATA_STAGES:
        apply_stage(dsn, _PLAYBOOKS["sample"], stage)


@pytest.fixture
def staged_sample_db(make_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    factory = make_factory(_staged_sample, "citussample")
    dsn = factory.create()
    yield dsn
    factory.drop(servers.dbname_of(dsn))


@pytest.fixture
def sample_db(pg_server, make_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    factory = sample_factory(pg_server, make_factory)
    dsn = factory.create()
    yield dsn
    factory.drop(servers.dbname_of(dsn))


def fixed(pb: Playbook, **extra: Any) -> Playbook:
    """The tutorial playbook with every online fix on."""
    tables = dict(pb.tables)
    tables["public.campaigns"] = pb.tables["public.campaigns"].model_copy(
        update={"tenant_unique": (("name",),)})
    pb = pb.model_copy(update={"tables": tables})
    return tut.with_index_options(pb, tenant_primary_keys=True, tenant_index="tenant", **extra)


def readiness(dsn: str, pb: Playbook) -> Readiness:
    with psycopg.connect(dsn) as conn:
        return readiness_of(Catalog.load(conn), pb, conn=conn)


def blockers(r: Readiness, severity: str = "blocker") -> set[tuple[str, str]]:
    return {(q.name if q else "-", b.kind) for q, b in r.blockers if b.severity == severity}


def q(name: str) -> QualifiedName:
    return QualifiedName("public", name)


# --------------------------------------------------------------------------- the report


def test_sample_report_names_every_blocker_and_role(sample_db: str) -> None:
    """The pristine sample database: every table's role, and every blocker Citus would meet,
    each with a fix (online where the toolkit has steps for it)."""
    catalog = load_catalog(sample_db)
    r = readiness_of(catalog, sample_playbook(catalog))
    roles = {t.qname.name: (t.role, t.column, t.colocate_with) for t in r.tables}
    assert roles["accounts"] == ("distributed", "id", None)
    assert roles["countries"] == ("reference", None, None)  # accounts point at it
    assert roles["comments"] == ("distributed", "tenant_id", q("accounts"))
    assert roles["events"] == ("distributed", "account_id", q("accounts"))
    assert not [t for t in r.tables if t.qname.name.startswith("events_2")], "partitions follow"
    derived = {"issues", "comments", "attachments", "issue_labels", "audit_log", "Project Notes"}
    tenant = derived | {"users", "projects", "labels", "events"}
    expected = (
        {(t, "tenant_column") for t in derived}  # add-column .. constrain first
        | {(t, "primary_key") for t in tenant - {"audit_log"}}
        | {("users", "unique")}
        | {(t, "foreign_key") for t in ("issues", "comments", "attachments", "issue_labels",
                                        "Project Notes")}
        | {("issues", "trigger"), ("users", "trigger")}  # updated_at triggers
    )
    assert blockers(r) == expected | {("audit_log", "no_primary_key")}  # nothing to build on
    assert blockers(r, "warning") >= {("events", "partitioned"),
                                      ("events", "serial"), ("comments", "identity"),
                                      ("-", "tenant_context")}
    by_kind = {(q_.name if q_ else "-", b.kind, b.message): b for q_, b in r.blockers}
    for (table, kind, message), b in by_kind.items():
        assert b.fix, (table, kind, message)
    events_pk = next(b for (t, k, _), b in by_kind.items() if (t, k) == ("events", "primary_key"))
    assert events_pk.online and "6 partitions" in events_pk.fix  # partition by partition
    comments_fk = [b for (t, k, _), b in by_kind.items() if (t, k) == ("comments", "foreign_key")]
    assert len(comments_fk) == 2 and all(b.online for b in comments_fk)  # issue_id, parent_id
    # Runbook order: countries, then accounts, then every table after what it points at.
    order = [t.qname.name for t in r.tables if t.role != "local"]
    assert order[:2] == ["countries", "accounts"]
    for parent, child in (("projects", "issues"), ("issues", "comments"),
                          ("comments", "attachments"), ("labels", "issue_labels")):
        assert order.index(parent) < order.index(child)


@pytest.mark.core_majors  # load; the quiet tests of the same steps run on every major
def test_sample_fixes_keep_every_row_and_roll_back_under_load(
        staged_sample_db: str, pg_server: servers.PostgresServer) -> None:
    """The sample database after add-column .. constrain: tenant-leading primary keys on
    every tenant table, the partitioned events (partition by partition) and a table without
    a primary key but with a NOT NULL unique id included; audit_log, which has no key to
    build one from, is named as a blocker. Composite foreign keys, countries untouched, every
    column of every row unchanged; the rollback, with the sample's application running,
    restores the schema without a failed transaction."""
    dsn = staged_sample_db
    with psycopg.connect(dsn, autocommit=True) as conn:  # a table without a primary key
        conn.execute('ALTER TABLE "Project Notes" DROP CONSTRAINT "Project Notes_pkey",'
                     ' ADD CONSTRAINT "Project Notes_id_key" UNIQUE (id)')
    base = _PLAYBOOKS["sample"]
    tables = dict(base.tables)
    tables["public.users"] = base.tables["public.users"].model_copy(
        update={"tenant_unique": (("email",),)})
    pb = tut.with_index_options(base.model_copy(update={"tables": tables}),
                                tenant_primary_keys=True)
    with psycopg.connect(dsn) as conn:
        rows = table_checksums(conn, exclude_columns=())
    before = _schema_dict(dsn)
    index = build_plan(load_catalog(dsn), pb, ["index"]).stage("index")
    assert any("public.audit_log: primary key not added: no primary key and no NOT NULL "
               "unique key" in n and "blocker" in n for n in index.notes), index.notes
    result = apply_stage(dsn, pb, "index").result
    assert result.failed == 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert table_checksums(conn, exclude_columns=()) == rows
        pks: dict[str, str] = dict(conn.execute(
            "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE contype = 'p' AND connamespace = 'public'::regnamespace").fetchall())
        fks = {r[0] for r in conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f'"
            " AND connamespace = 'public'::regnamespace").fetchall()}
    assert pks == {"accounts": "PRIMARY KEY (id)", "countries": "PRIMARY KEY (code)",
                   **{t: "PRIMARY KEY (account_id, id, created_at)"
                      for t in ("events", *samples.EVENT_PARTITIONS)},
                   **{t: "PRIMARY KEY (account_id, id)" for t in ("users", "projects",
                                                                  "labels")},
                   **{t: "PRIMARY KEY (tenant_id, id)" for t in ("issues", "comments",
                                                                 "attachments",
                                                                 '"Project Notes"')},
                   "issue_labels": "PRIMARY KEY (tenant_id, issue_id, label_id)"}
    assert {"FOREIGN KEY (tenant_id, issue_id) REFERENCES issues(tenant_id, id)",
            "FOREIGN KEY (tenant_id, parent_id) REFERENCES comments(tenant_id, id)",
            'FOREIGN KEY (tenant_id, "projectId") REFERENCES projects(account_id, id)'} <= fks
    assert "FOREIGN KEY (issue_id) REFERENCES issues(id)" not in fks
    assert before["public.countries"] == _schema_dict(dsn)["public.countries"]
    after = readiness_of(load_catalog(dsn), pb)
    # Left: the updated_at triggers, the sync triggers, audit_log (no key to build one
    # from), and "Project Notes"_id_key, which the new primary key makes redundant.
    left = blockers(after) - {("audit_log", "no_primary_key"), ("Project Notes", "unique")}
    assert {k for t, k in left} <= {"trigger", "sync_trigger", "tenant_column"}, left
    app_dsn = pg_server.dsn(servers.dbname_of(dsn), user=samples.APP_ROLE)
    with Workload(app_dsn, dsn, threads=2, think_ms=2) as load:
        results = rollback_to(dsn, pb, "constrain")
    assert [r.failed for r in results] == [0] * len(results)
    assert load.stats.errors == 0, load.stats.error_samples
    assert _schema_dict(dsn) == before


def _schema_dict(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        catalog = Catalog.load(conn)
    return {str(q_): (sorted((i.name, i.definition, i.is_valid) for i in t.indexes),
                      sorted((c.name, c.definition) for c in t.constraints),
                      sorted((f.name, f.definition) for f in t.foreign_keys))
            for q_, t in catalog.tables.items()}


def test_cli_plan_target_citus(sample_db: str, capsys: pytest.CaptureFixture[str],
                               tmp_path: Path) -> None:
    catalog = load_catalog(sample_db)
    path = tmp_path / "app.yaml"
    from rls_migrate.playbook import dump_playbook
    path.write_text(dump_playbook(sample_playbook(catalog)))
    for fmt in ("text", "markdown", "json", "sql"):
        with pytest.raises(SystemExit) as exit_:
            main(["plan", str(path), "--dsn", sample_db, "--target", "citus", "--format", fmt])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        if fmt == "json":
            data = json.loads(out)
            assert data["target"] == "citus" and data["ready"] is False
            assert {t["role"] for t in data["tables"]} == {"distributed", "reference"}
        elif fmt == "sql":
            assert "SELECT create_reference_table('public.countries');" in out
        else:
            assert "BLOCKER" in out and "public.users" in out
    with pytest.raises(SystemExit) as exit_:
        main(["plan", str(path), "--dsn", sample_db, "--target", "citus", "--stage", "index"])
    assert exit_.value.code == 2
    assert "--stage does not go with --target citus" in capsys.readouterr().err


# --------------------------------------------------------------------------- the tutorial


def test_tutorial_report_before_and_after_the_fixes(tutorial_db: str) -> None:
    """Quiet: the report names the tutorial's blockers; the fixes leave every row and the
    global table exactly as they were; the report is then clean but for the sync triggers,
    whose watch proves the application writes the tenant."""
    pb = _tutorial_playbook(tutorial_db)
    before = readiness(tutorial_db, pb)
    assert {t.qname.name: t.role for t in before.tables} == {
        "geo_regions": "reference", "companies": "distributed", "campaigns": "distributed",
        "ads": "distributed", "clicks": "distributed", "impressions": "distributed"}
    assert blockers(before) == (
        {(t, "primary_key") for t in tut.TENANT_TABLES}
        | {("ads", "foreign_key"), ("clicks", "foreign_key"), ("impressions", "foreign_key"),
           ("campaigns", "unique")}
        | {(t, "sync_trigger") for t in ("ads", "clicks", "impressions")})
    assert all(b.online for _, b in before.blockers if b.severity == "blocker")

    with psycopg.connect(tutorial_db) as conn:
        limits = tut.id_limits(conn)
        rows = tut.original_rows(conn, limits)
        geo_schema = _constraints(conn, "geo_regions")
    result = apply_stage(tutorial_db, fixed(pb, sync_triggers="watch"), "index").result
    assert result.failed == 0
    with psycopg.connect(tutorial_db, autocommit=True) as conn:
        assert tut.original_rows(conn, limits) == rows
        assert _constraints(conn, "geo_regions") == geo_schema
        _end_state(conn)
        # The application, fixed: it writes company_id itself.
        conn.execute("INSERT INTO clicks (company_id, ad_id, clicked_at, site_url, user_ip,"
                     " user_data) SELECT p.company_id, a.id, now(), 's', '192.0.2.9', '{}'"
                     " FROM ads a JOIN campaigns p ON p.id = a.campaign_id LIMIT 3")
    def clicks_watch() -> str:
        after = readiness(tutorial_db, fixed(pb, sync_triggers="watch"))
        assert blockers(after) == {(t, "sync_trigger") for t in ("ads", "clicks", "impressions")}
        return next(b.message for q_, b in after.blockers
                    if b.kind == "sync_trigger" and q_ == q("clicks"))

    # The insert counter comes from the statistics, which a backend reports when it ends.
    deadline = time.monotonic() + 10
    while " 0 row(s) inserted" in (message := clicks_watch()) and time.monotonic() < deadline:
        time.sleep(0.1)
    # 3 rows, and the refused cross-tenant one of _end_state (it was inserted, then refused).
    assert "4 row(s) inserted, 0 without company_id; none did: it can go" in message, message


@pytest.mark.core_majors  # load; the quiet tests of the same steps run on every major
def test_tutorial_fixes_under_load(tutorial_db: str, pg_server: servers.PostgresServer) -> None:
    """The application runs through every fix and through the rollback: no failed
    transaction, no lock wait (as the server measured it) longer than lock_timeout allows."""
    if not isinstance(pg_server, servers.LocalServer) or pg_server.log_path is None:
        pytest.skip("needs the server's log file for lock waits")
    pb = _tutorial_playbook(tutorial_db)
    dbname = servers.dbname_of(tutorial_db)
    lock_ms = pb.options.lock_timeout
    with psycopg.connect(tutorial_db, autocommit=True) as conn:
        # Every application wait longer than 1.5 x lock_timeout is logged. (Logging shorter
        # ones would need deadlock_timeout below lock_timeout: an application statement could
        # then lose a deadlock to the toolkit's two-table DDL instead of the DDL giving up.)
        lockwaits.log_lock_waits(conn, dbname, threshold_ms=int(lock_ms * 1.5))
        schema_before = _schema(conn)
    offset = pg_server.log_path.stat().st_size
    app_dsn = pg_server.dsn(dbname, user=samples.APP_ROLE)
    with tut.AdWorkload(app_dsn, tutorial_db, threads=2) as load:
        time.sleep(0.3)
        keys = apply_stage(tutorial_db, fixed(pb, sync_triggers="watch"), "index").result
        time.sleep(1.5)  # rows arrive while watched; statistics reach the server
        drop = apply_stage(tutorial_db, fixed(pb, sync_triggers="drop", sync_watch_min=1000.0),
                           "index").result
        with psycopg.connect(tutorial_db, autocommit=True) as conn:
            _end_state(conn, sync_triggers=False)
        r = readiness(tutorial_db, fixed(pb, sync_triggers="drop"))
        back = rollback_to(tutorial_db, fixed(pb, sync_triggers="drop"), "constrain")
        time.sleep(0.3)
    assert keys.failed == 0 and drop.failed == 0 and drop.done >= 3
    assert [res.failed for res in back] == [0] * len(back)
    assert load.errors == [], load.errors[:3]
    assert load.transactions > 50
    assert r.blocking == 0, [b.message for _, b in r.blockers if b.severity == "blocker"]
    time.sleep(0.3)  # the log is written asynchronously
    waits = lockwaits.parse(lockwaits.read_since(pg_server.log_path, offset),
                            user=samples.APP_ROLE, database=dbname)
    # A query waits behind a DDL at most until the DDL's lock_timeout gives up, plus the
    # milliseconds the DDL holds the lock once granted: no wait reaches the log's threshold.
    assert [w for w in waits if w.kind == "relation"] == []
    with psycopg.connect(tutorial_db, autocommit=True) as conn:
        assert _schema(conn) == schema_before
        triggers = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE"
                                " 'rls_migrate_sync_%'").fetchone()
        assert triggers == (3,)  # put back by the rollback


def test_sync_trigger_drop_is_refused_until_the_application_writes_the_tenant(
        tutorial_db: str, pg_server: servers.PostgresServer) -> None:
    pb = _tutorial_playbook(tutorial_db)
    apply_stage(tutorial_db, tut.with_index_options(pb, sync_triggers="watch"), "index")
    drop = tut.with_index_options(pb, sync_triggers="drop", sync_watch_min=0.0)
    _insert_with_tenant(tutorial_db)
    app_dsn = pg_server.dsn(servers.dbname_of(tutorial_db), user=samples.APP_ROLE)
    with psycopg.connect(tutorial_db) as owner:
        ads = [r[0] for r in owner.execute("SELECT a.id FROM ads a JOIN campaigns p"
                                           " ON p.id = a.campaign_id WHERE p.company_id = 1"
                                           " ORDER BY a.id LIMIT 2")]
    with psycopg.connect(app_dsn, autocommit=True) as app, app.transaction():
        # The old code path still runs for impressions, as the application role: no
        # company_id (the sync trigger fills it; the watch counts it, with no right of the
        # application role on the toolkit's schema).
        set_tenant(app, 1)
        for ad in ads:
            app.execute("INSERT INTO impressions (ad_id, seen_at, site_url, user_ip, user_data)"
                        " VALUES (%s, now(), 's', '192.0.2.3', '{}')", [ad])
    with pytest.raises(StepFailed, match=r"2 row\(s\) inserted into public.impressions since .*"
                                         r"arrived without company_id"):
        _drop_when_counted(tutorial_db, drop)
    with psycopg.connect(tutorial_db) as conn:
        left = {r[0] for r in conn.execute("SELECT tgrelid::regclass::text FROM pg_trigger"
                                           " WHERE tgname LIKE 'rls_migrate_sync_%'")}
    assert left == {"impressions"}  # ads and clicks were proven and dropped
    # The code path is fixed; the refusal started the watch over, so only new rows count.
    _insert_with_tenant(tutorial_db)
    assert _drop_when_counted(tutorial_db, drop).failed == 0
    with psycopg.connect(tutorial_db) as conn:
        assert conn.execute("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'rls_migrate_%'"
                            ).fetchall() == []


def _drop_when_counted(dsn: str, pb: Playbook) -> Any:
    """Apply the drop, again while the proof only lacks the insert counter (statistics reach
    the server shortly after the inserting session ends)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return apply_stage(dsn, pb, "index").result
        except StepFailed as exc:
            if "no row inserted" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_runbook_text_and_a_psql_run_against_stand_ins(tutorial_db: str) -> None:
    pb = fixed(_tutorial_playbook(tutorial_db))
    apply_stage(tutorial_db, pb, "index")
    with psycopg.connect(tutorial_db) as conn:
        r = readiness_of(Catalog.load(conn), pb)
        script = render_runbook(r, conn)
        text, md, js = render_text(r, conn), render_markdown(r, conn), render_json(r, conn)
    statements = [line for line in script.splitlines() if line and not line.startswith("--")]
    assert statements == [
        "\\set ON_ERROR_STOP on",
        "\\if :{?rollback}",
        "SELECT undistribute_table('public.impressions');",
        "SELECT undistribute_table('public.clicks');",
        "SELECT undistribute_table('public.ads');",
        "SELECT undistribute_table('public.campaigns');",
        "SELECT undistribute_table('public.companies');",
        "SELECT undistribute_table('public.geo_regions');",
        "\\else",
        "SELECT create_reference_table('public.geo_regions');",
        "SELECT create_distributed_table('public.companies', 'id');",
        "SELECT create_distributed_table('public.campaigns', 'company_id', "
        "colocate_with => 'public.companies');",
        "SELECT create_distributed_table('public.ads', 'company_id', "
        "colocate_with => 'public.companies');",
        "SELECT create_distributed_table('public.clicks', 'company_id', "
        "colocate_with => 'public.companies');",
        "SELECT create_distributed_table('public.impressions', 'company_id', "
        "colocate_with => 'public.companies');",
        "\\endif",
    ]
    assert "writes to it wait while it copies" in script
    assert "copies every row to every node" in script
    assert "truncate_local_data_after_distributing_table('public.clicks')" in script
    assert "BLOCKER:" in script  # the sync triggers are still there (kept)
    assert "public.campaigns  distributed by company_id, colocated with public.companies" in text
    assert "| `public.geo_regions` | reference |" in md
    assert json.loads(js)["tables"][0]["create"] == \
        "SELECT create_reference_table('public.geo_regions');"

    psql = _psql()
    if psql is None:
        pytest.skip("no psql binary to run the script")
    with psycopg.connect(tutorial_db, autocommit=True) as conn:
        conn.execute(STAND_INS)
    for rollback in (False, True):
        args = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", tutorial_db]
        if rollback:
            args += ["-v", "rollback=1"]
        done = subprocess.run(args, input=script, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    with psycopg.connect(tutorial_db) as conn:
        calls = [tuple(r) for r in conn.execute(
            "SELECT fn, tbl::text, col, colocate FROM citus_calls ORDER BY n").fetchall()]
    assert calls[:6] == [
        ("create_reference_table", "geo_regions", None, None),
        ("create_distributed_table", "companies", "id", "default"),
        ("create_distributed_table", "campaigns", "company_id", "public.companies"),
        ("create_distributed_table", "ads", "company_id", "public.companies"),
        ("create_distributed_table", "clicks", "company_id", "public.companies"),
        ("create_distributed_table", "impressions", "company_id", "public.companies")]
    assert [c[1] for c in calls[6:]] == ["impressions", "clicks", "ads", "campaigns",
                                         "companies", "geo_regions"]


# Stand-ins for Citus's functions: they record each call and refuse what Citus refuses
# for ordering: a table whose foreign keys point at a table not distributed (or reference)
# yet, and undistributing a table that a still-distributed table points at.
STAND_INS = b"""
CREATE TABLE citus_calls (n serial, fn text, tbl regclass, col text, colocate text);
CREATE FUNCTION citus_check_parents(t regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conrelid = t AND c.contype = 'f'
             AND c.confrelid <> t AND NOT EXISTS (SELECT 1 FROM citus_calls k
                 WHERE k.tbl = c.confrelid AND k.fn LIKE 'create%')) THEN
    RAISE EXCEPTION '% references a table that is not distributed yet', t;
  END IF;
END $$;
CREATE FUNCTION create_reference_table(t regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM citus_check_parents(t);
  INSERT INTO citus_calls (fn, tbl) VALUES ('create_reference_table', t); END $$;
CREATE FUNCTION create_distributed_table(t regclass, col text,
    colocate_with text DEFAULT 'default') RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM citus_check_parents(t);
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = t AND attname = col) THEN
    RAISE EXCEPTION 'no column % in %', col, t; END IF;
  INSERT INTO citus_calls (fn, tbl, col, colocate)
    VALUES ('create_distributed_table', t, col, colocate_with); END $$;
CREATE FUNCTION undistribute_table(t regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_constraint c WHERE c.confrelid = t AND c.contype = 'f'
             AND c.conrelid <> t AND c.conrelid IN (SELECT tbl FROM citus_calls
             WHERE fn LIKE 'create%') AND c.conrelid NOT IN (SELECT tbl FROM citus_calls
             WHERE fn = 'undistribute_table')) THEN
    RAISE EXCEPTION '% is still referenced by a distributed table', t; END IF;
  INSERT INTO citus_calls (fn, tbl) VALUES ('undistribute_table', t); END $$;
"""


def _psql() -> str | None:
    bindir = servers.embedded_bindir()
    if bindir is not None and (bindir / "psql").exists():
        return str(bindir / "psql")
    return shutil.which("psql")


def test_a_half_done_stage_rolls_back_and_a_rerun_converges(tutorial_db: str) -> None:
    """Killed after the original foreign keys were dropped, before any key was swapped: the
    rollback puts the originals back from what the journal has done; a rerun finishes."""
    pb = fixed(_tutorial_playbook(tutorial_db))
    with psycopg.connect(tutorial_db, autocommit=True) as conn:
        schema_before = _schema(conn)
        limits = tut.id_limits(conn)
        rows = tut.original_rows(conn, limits)
    index = build_plan(load_catalog(tutorial_db), pb, ["index"]).stage("index")
    first_swap = next(n for n, s in enumerate(index.steps) if s.kind == "swap_primary_key")
    assert any(s.kind == "drop_foreign_key" for s in index.steps[:first_swap])
    with psycopg.connect(tutorial_db, autocommit=True) as conn:
        from rls_migrate.executor import Executor
        from rls_migrate.journal import Journal
        Executor(conn, pb.options, Journal(conn)).run(
            dataclasses.replace(index, steps=index.steps[:first_swap + 1]))
        originals = conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
                                 " AND conname IN ('ads_campaign_id_fkey', 'clicks_ad_id_fkey',"
                                 " 'impressions_ad_id_fkey')").fetchone()
        assert originals == (0,)
    rollback_to(tutorial_db, pb, "constrain")
    with psycopg.connect(tutorial_db, autocommit=True) as conn:
        assert _schema(conn) == schema_before
        assert tut.original_rows(conn, limits) == rows
    assert apply_stage(tutorial_db, pb, "index").result.failed == 0
    again = apply_stage(tutorial_db, pb, "index").result
    assert again.done == 0 and again.skipped == len(again.outcomes)
    with psycopg.connect(tutorial_db, autocommit=True) as conn:
        _end_state(conn)
    # Validating the composite keys scanned clicks_ad_id_idx (and PostgreSQL 14 reports such
    # scans late): the plan is still decided from the usage pinned when the stage first ran.
    catalog = load_catalog(tutorial_db)
    busy = dataclasses.replace(catalog, tables={
        qn: dataclasses.replace(t, indexes=tuple(dataclasses.replace(i, scans=10**6)
                                                  for i in t.indexes))
        for qn, t in catalog.tables.items()})
    assert [s.id for s in build_plan(busy, pb, ["index"]).stage("index").steps] \
        == [s.id for s in index.steps]


def test_set_null_keeps_the_tenant_and_older_composite_keys_are_not_trusted(
        tutorial_db: str) -> None:
    with psycopg.connect(tutorial_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE clicks ADD COLUMN campaign_hint bigint"
                     " REFERENCES campaigns (id) ON DELETE SET NULL")
        schema_before = _schema(conn)
    pb = _tutorial_playbook(tutorial_db)
    # First the index stage's own composite keys (NO ACTION, next to the originals) ...
    assert apply_stage(tutorial_db, tut.with_index_options(pb, tenant_foreign_keys=True),
                       "index").result.failed == 0
    index = build_plan(load_catalog(tutorial_db), fixed(pb), ["index"]).stage("index")
    # ... which tenant_primary_keys does not trust: dropping the originals would lose
    # ON DELETE CASCADE / SET NULL. The keys they point at stay as they are, with a note.
    assert {s.table.name for s in index.steps if s.kind == "swap_primary_key" and s.table} \
        == {"clicks", "impressions"}
    assert any("roll the index stage back" in n for n in index.notes), index.notes
    rollback_to(tutorial_db, tut.with_index_options(pb, tenant_foreign_keys=True), "constrain")

    if major_of(tutorial_db) < 15:
        # No column list for SET NULL before 15: the composite key would null the tenant too.
        index = build_plan(load_catalog(tutorial_db), fixed(pb), ["index"]).stage("index")
        assert any("public.campaigns: primary key left as it is" in n and "(15+)" in n
                   for n in index.notes), index.notes
        return
    assert apply_stage(tutorial_db, fixed(pb), "index").result.failed == 0
    with psycopg.connect(tutorial_db, autocommit=True) as conn:
        defs = {r[0] for r in conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'clicks'::regclass AND contype = 'f'").fetchall()}
        assert "FOREIGN KEY (company_id, campaign_hint) REFERENCES campaigns(company_id, id)" \
               " ON DELETE SET NULL (campaign_hint)" in defs
        with conn.transaction(force_rollback=True):
            campaign, company = conn.execute(
                "INSERT INTO campaigns (company_id, name, cost_model, state, created_at,"
                " updated_at) SELECT id, 'short-lived', 'cpc', 'running', now(), now()"
                " FROM companies ORDER BY id LIMIT 1 RETURNING id, company_id").fetchone() \
                or (None, None)
            click = conn.execute(
                "INSERT INTO clicks (company_id, ad_id, clicked_at, site_url, user_ip,"
                " user_data, campaign_hint) SELECT %s, a.id, now(), 's', '192.0.2.8', '{}', %s"
                " FROM ads a JOIN campaigns p ON p.id = a.campaign_id WHERE p.company_id = %s"
                " LIMIT 1 RETURNING id", [company, campaign, company]).fetchone()
            assert click is not None
            conn.execute("DELETE FROM campaigns WHERE id = %s", [campaign])
            after = conn.execute("SELECT company_id, campaign_hint FROM clicks WHERE id = %s",
                                 [click[0]]).fetchone()
            assert after == (company, None)  # the link is gone, the tenant stays
    rollback_to(tutorial_db, fixed(pb), "constrain")
    with psycopg.connect(tutorial_db, autocommit=True) as conn:
        assert _schema(conn) == schema_before


def test_a_key_referenced_from_outside_the_tenant_tables_stays(tutorial_db: str) -> None:
    """A table the playbook does not cover points at ads: Citus would refuse it, and ads's key
    cannot be swapped while that foreign key holds on to it."""
    with psycopg.connect(tutorial_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE ad_reviews (id bigint PRIMARY KEY,"
                     " ad_id bigint REFERENCES ads (id), verdict text)")
    pb = fixed(_tutorial_playbook(tutorial_db))
    catalog = load_catalog(tutorial_db)
    index = build_plan(catalog, pb, ["index"]).stage("index")
    swapped = {s.table.name for s in index.steps if s.kind == "swap_primary_key" and s.table}
    assert swapped == {"campaigns", "clicks", "impressions"}
    repointed = {s.id for s in index.steps if s.kind == "drop_foreign_key"}
    assert repointed == {"drop_fk:public.ads:ads_campaign_id_fkey"}
    assert any("public.ads: primary key left as it is: referenced from outside the tenant "
               "tables by public.ad_reviews.ad_reviews_ad_id_fkey" in n for n in index.notes)
    r = readiness_of(catalog, pb)
    assert r.table(q("ad_reviews")).role == "local"
    assert ("ad_reviews", "foreign_key_into_distributed") in blockers(r)


def test_every_other_blocker_kind_is_named_with_a_fix(tutorial_db: str) -> None:
    """What the tutorial does not have: a tenant table keyed by another type, an int
    identity, a user trigger, a policy on another column, a view and a function joining
    tenant tables without the tenant, a foreign key into a skipped table and one from a
    global table into a tenant table."""
    with psycopg.connect(tutorial_db, autocommit=True) as conn:
        conn.execute(b"""
            CREATE TABLE budgets (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                company_id int NOT NULL REFERENCES companies (id), amount numeric);
            CREATE TABLE legacy_codes (code text PRIMARY KEY);
            CREATE TABLE promo (id bigint PRIMARY KEY, company_id bigint NOT NULL
                REFERENCES companies (id), code text REFERENCES legacy_codes (code));
            CREATE TABLE regions_of_ads (code char(2) PRIMARY KEY REFERENCES geo_regions,
                best_ad bigint REFERENCES ads (id));
            CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
                'BEGIN NEW.updated_at := now(); RETURN NEW; END';
            CREATE TRIGGER campaigns_touch BEFORE UPDATE ON campaigns
                FOR EACH ROW EXECUTE FUNCTION touch();
            ALTER TABLE clicks ENABLE ROW LEVEL SECURITY;
            CREATE POLICY only_live ON clicks USING (site_url <> 'blocked');
            CREATE VIEW ad_clicks AS SELECT a.name, count(*) AS n FROM ads a
                JOIN clicks c ON c.ad_id = a.id GROUP BY a.name;
            CREATE FUNCTION click_total() RETURNS bigint LANGUAGE sql AS
                'SELECT count(*) FROM clicks JOIN ads ON ads.id = clicks.ad_id';
        """)
    pb = _tutorial_playbook(tutorial_db)
    tables = dict(pb.tables)
    tables["public.budgets"] = pb.tables["public.campaigns"].model_copy(
        update={"column": "company_id"})
    tables["public.promo"] = pb.tables["public.campaigns"].model_copy(
        update={"column": "company_id"})
    tables["public.legacy_codes"] = pb.tables["public.geo_regions"].model_copy(
        update={"strategy": "skip"})
    tables["public.regions_of_ads"] = pb.tables["public.geo_regions"]
    r = readiness_of(load_catalog(tutorial_db), pb.model_copy(update={"tables": tables}))
    found = blockers(r)
    assert {("budgets", "key_type"), ("budgets", "identity"), ("campaigns", "trigger"),
            ("clicks", "policy"), ("promo", "foreign_key_to_local"),
            ("regions_of_ads", "foreign_key_into_distributed")} <= found
    assert {("-", "view"), ("-", "function")} <= blockers(r, "warning")
    assert r.table(q("regions_of_ads")).role == "local"  # global, but nothing points at it
    assert r.table(q("geo_regions")).role == "reference"
    assert r.table(q("legacy_codes")).role == "local"
    assert "skipped in the playbook" in r.table(q("legacy_codes")).why
    for _, b in r.blockers:
        assert b.fix and b.message


# --------------------------------------------------------------------------- locks, options


def test_new_step_kinds_take_the_locks_they_declare(tutorial_db: str) -> None:
    """What pg_locks shows, on the step's table, for the steps that run in a transaction
    (the executor decides lock_timeout from the declared lock)."""
    pb = fixed(_tutorial_playbook(tutorial_db), sync_triggers="drop", sync_watch_min=0.0)
    plan = build_plan(load_catalog(tutorial_db), pb, ["index"]).stage("index")
    checked = {"swap_primary_key", "drop_foreign_key", "watch_sync_trigger",
               "drop_sync_trigger"}
    seen: dict[str, Lock] = {}
    inserted = False
    with psycopg.connect(tutorial_db, autocommit=True) as conn:
        for step in plan.steps:
            if step.kind == "drop_sync_trigger" and not inserted:
                _insert_with_tenant(tutorial_db)  # what the watch must see before a drop
                inserted = True
            if step.kind not in checked or step.table is None:
                run_step(conn, step)
                continue
            with conn.transaction():
                for statement in step.statements:
                    execute(conn, statement)
                held = relation_locks(conn, conn.info.backend_pid,
                                      relation_oid(conn, step.table))
            assert strongest(held) == step.lock, (step.id, held)
            seen[step.kind] = step.lock
    assert seen == {"swap_primary_key": Lock.ACCESS_EXCLUSIVE,
                    "drop_foreign_key": Lock.ACCESS_EXCLUSIVE,
                    "watch_sync_trigger": Lock.SHARE_ROW_EXCLUSIVE,
                    "drop_sync_trigger": Lock.ACCESS_EXCLUSIVE}


def _insert_with_tenant(dsn: str) -> None:
    """Rows written the fixed way into every table that has a sync trigger, in a connection
    of its own, and the wait until the server's statistics count them (a session reports
    them when it ends)."""
    counted = ("SELECT array_agg(n_tup_ins ORDER BY relname) FROM pg_stat_user_tables"
               " WHERE relname IN ('ads', 'clicks', 'impressions')")
    with psycopg.connect(dsn, autocommit=True) as watcher:
        before = watcher.execute(counted).fetchone()
        _insert_rows_with_tenant(dsn)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = watcher.execute(counted).fetchone()
            if now and before and all(a > b for a, b in zip(now[0], before[0], strict=True)):
                return
            time.sleep(0.05)


def _insert_rows_with_tenant(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO ads (company_id, campaign_id, name, created_at, updated_at)"
                     " SELECT company_id, id, 'new', now(), now() FROM campaigns LIMIT 1")
        for table, when in (("impressions", "seen_at"), ("clicks", "clicked_at")):
            conn.execute(f"INSERT INTO {table} (company_id, ad_id, {when}, site_url, user_ip,"
                         " user_data) SELECT p.company_id, a.id, now(), 's', '192.0.2.4', '{}'"
                         " FROM ads a JOIN campaigns p ON p.id = a.campaign_id LIMIT 2")


def test_option_conflict_and_foreign_key_actions() -> None:
    assert fk_tail("FOREIGN KEY (ad_id) REFERENCES ads(id) ON DELETE CASCADE NOT VALID") \
        == " ON DELETE CASCADE"
    assert fk_tail('FOREIGN KEY ("a)b") REFERENCES "x(y"(id) MATCH FULL ON UPDATE CASCADE '
                   "DEFERRABLE INITIALLY DEFERRED") == \
        " MATCH FULL ON UPDATE CASCADE DEFERRABLE INITIALLY DEFERRED"
    # SET NULL must leave the tenant column alone (PostgreSQL 15+ names the columns).
    assert composite_tail(" ON DELETE SET NULL", ("ad_id",), 15) == \
        (" ON DELETE SET NULL (ad_id)", "")
    assert composite_tail(" ON DELETE SET DEFAULT", ("Ad Id",), 15) == \
        (' ON DELETE SET DEFAULT ("Ad Id")', "")
    assert composite_tail(" ON DELETE SET NULL", ("ad_id",), 14)[0] is None
    assert composite_tail(" ON UPDATE SET DEFAULT", ("ad_id",), 18)[0] is None
    assert composite_tail(" MATCH FULL ON DELETE CASCADE", ("ad_id",), 18) == \
        (" ON DELETE CASCADE", "")
    assert composite_tail(" MATCH FULL", ("a", "b"), 18)[0] is None
    assert original_tail(" ON DELETE SET NULL (ad_id)", ("ad_id",)) == " ON DELETE SET NULL"


def test_tenant_primary_keys_refuse_tenant_foreign_keys_too(tutorial_db: str) -> None:
    pb = tut.with_index_options(_tutorial_playbook(tutorial_db), tenant_primary_keys=True,
                                tenant_foreign_keys=True)
    with pytest.raises(PlaybookError, match="set tenant_foreign_keys: false"):
        build_plan(load_catalog(tutorial_db), pb, ["index"])


# --------------------------------------------------------------------------- helpers


def _constraints(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, str]]:
    return [(str(r[0]), str(r[1])) for r in conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass"
        " ORDER BY conname", [table]).fetchall()]


def _schema(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    cons = conn.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2").fetchall()
    idx = conn.execute(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index x"
        " JOIN pg_class c ON c.oid = x.indrelid WHERE c.relnamespace = 'public'::regnamespace"
        " ORDER BY 1").fetchall()
    trig = conn.execute(
        "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal"
        " ORDER BY 1, 2").fetchall()
    return [tuple(r) for r in [*cons, *idx, *trig]]


def _end_state(conn: psycopg.Connection[Any], sync_triggers: bool = True) -> None:
    """PRIMARY KEY (company_id, id) on every tenant table, composite foreign keys between
    them with their actions kept, none of the single-column ones, the global table as it
    was; a cross-tenant row is refused and a cascade still cascades."""
    pks = dict(conn.execute(
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE contype = 'p' AND connamespace = 'public'::regnamespace").fetchall())
    assert pks == {"companies": "PRIMARY KEY (id)", "geo_regions": "PRIMARY KEY (code)",
                   **{t: "PRIMARY KEY (company_id, id)" for t in tut.TENANT_TABLES}}
    fks = sorted(conn.execute(
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE contype = 'f' AND connamespace = 'public'::regnamespace AND confrelid NOT IN"
        " ('companies'::regclass, 'geo_regions'::regclass) ORDER BY 1").fetchall())
    assert fks == [
        ("ads", "FOREIGN KEY (company_id, campaign_id) REFERENCES campaigns(company_id, id)"),
        ("clicks", "FOREIGN KEY (company_id, ad_id) REFERENCES ads(company_id, id) "
                   "ON DELETE CASCADE"),
        ("impressions", "FOREIGN KEY (company_id, ad_id) REFERENCES ads(company_id, id) "
                        "ON DELETE CASCADE")]
    uniques = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE"
                           " contype = 'u' AND conrelid = 'campaigns'::regclass").fetchall()
    assert uniques == [("UNIQUE (company_id, name)",)]
    sync = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE"
                        " 'rls_migrate_sync_%'").fetchone()
    assert sync == ((3,) if sync_triggers else (0,))
    with conn.transaction(force_rollback=True):
        ad, other = conn.execute(
            "SELECT a.id, (SELECT min(id) FROM companies WHERE id <> a.company_id) FROM ads a"
            " ORDER BY a.id LIMIT 1").fetchone()  # type: ignore[misc]
        with pytest.raises(psycopg.errors.ForeignKeyViolation), conn.transaction():
            conn.execute("INSERT INTO clicks (company_id, ad_id, clicked_at, site_url, user_ip,"
                         " user_data) VALUES (%s, %s, now(), 's', '192.0.2.7', '{}')",
                         [other, ad])
        clicks = conn.execute("SELECT count(*) FROM clicks WHERE ad_id = %s", [ad]).fetchone()
        assert clicks is not None and clicks[0] > 0
        conn.execute("DELETE FROM ads WHERE id = %s", [ad])
        assert conn.execute("SELECT count(*) FROM clicks WHERE ad_id = %s", [ad]).fetchone() \
            == (0,)


@pytest.mark.core_majors  # planning only: the same on every major
def test_a_partitioned_key_that_foreign_keys_reference_is_named_not_swapped(
        sample_db: str) -> None:
    """A partitioned table's new key exists only once swapped, so a foreign key into its old
    key cannot be re-pointed first: the plan leaves the key and says what to do instead."""
    catalog = load_catalog(sample_db)
    users = catalog.table("public.users")
    fk = ForeignKey("users_last_event_fkey", users.qname, ("last_event_id", "last_event_at"),
                    q("events"), ("id", "created_at"), True,
                    "FOREIGN KEY (last_event_id, last_event_at) REFERENCES events(id, created_at)")
    catalog = dataclasses.replace(catalog, tables={
        **catalog.tables, users.qname: dataclasses.replace(
            users, foreign_keys=(*users.foreign_keys, fk))})
    pb = tut.with_index_options(sample_playbook(catalog), tenant_primary_keys=True)
    index = build_plan(catalog, pb, ["index"]).stage("index")
    assert not [s for s in index.steps if s.table and s.table.name.startswith("events")
                and s.kind in ("swap_primary_key", "create_index") and "rlsm_tenant" in s.id]
    assert any(n.startswith("public.events: primary key left as it is: public.users."
                            "users_last_event_fkey references it") for n in index.notes), \
        index.notes
    # Without that foreign key: a unique index on each partition, then one swap.
    index = build_plan(load_catalog(sample_db), pb, ["index"]).stage("index")
    swaps = [s for s in index.steps if s.kind == "swap_primary_key" and s.table == q("events")]
    builds = [s for s in index.steps if s.kind == "create_index" and s.table
              and s.table.name in samples.EVENT_PARTITIONS and "pkey_rlsm_tenant" in s.id]
    assert len(swaps) == 1 and len(builds) == len(samples.EVENT_PARTITIONS)
