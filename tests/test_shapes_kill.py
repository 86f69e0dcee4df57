"""kill -9 and a terminated session in the middle of the backfill of the shapes database
(tests/shapes_helpers.py: an integer root under bigint parents, text keys, quoted names, a
reverse one-to-one table, SET NULL links), on every major: the rerun completes, no batch is
applied twice, every row that has a way to its tenant gets it, and no non-tenant column of
any row changes, through the kill, the rest of the data stages and the rollback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from shapes_helpers import PLAYBOOK, checksums, load, playbook, scalar

from rls_migrate.runner import apply_stage, rollback_to
from rls_migrate.testing import servers
from rls_migrate.testing.faults import (
    Fault,
    FaultKind,
    backfill_batch_problems,
    cli_command,
    inject,
    run_cli,
)

# Batches of a few rows: the walk over the shapes' ~1,400 derived rows takes hundreds of
# them, so a fault lands mid-walk.
SMALL_BATCHES = PLAYBOOK.replace(
    "backfill: {batch_start_rows: 50}",
    "backfill: {batch_start_rows: 3, batch_min_rows: 1, batch_max_rows: 3}")


@pytest.fixture(scope="module")
def shapes_factory(make_factory):  # type: ignore[no-untyped-def]
    return make_factory(load, "shapeskill")


@pytest.fixture
def db(shapes_factory: servers.DatabaseFactory) -> Iterator[str]:
    dsn = shapes_factory.create()
    yield dsn
    shapes_factory.drop(servers.dbname_of(dsn))



def batches_done(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM rls_migrate.backfill_batches").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("kind", ["sigkill", "terminate"])
def test_backfill_killed_mid_walk_resumes_without_loss(db: str, tmp_path: Path,
                                                       kind: FaultKind) -> None:
    path = tmp_path / "shapes.yaml"
    path.write_text(SMALL_BATCHES)
    pb = playbook(SMALL_BATCHES)
    original = checksums(db, exclude=())
    for stage in ("prepare", "add-column"):
        assert apply_stage(db, pb, stage).result.failed == 0
    command = cli_command("apply", str(path), "--stage", "backfill", "--yes", "--dsn", db)
    outcome = inject(Fault(kind, 0.05, after=40), command, db, progress=batches_done)
    assert outcome.struck, outcome
    assert "Traceback" not in outcome.output
    with psycopg.connect(db) as conn:
        struck_at = batches_done(conn)
    rerun = run_cli(command)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    with psycopg.connect(db) as conn:
        assert backfill_batch_problems(conn) == []
        assert batches_done(conn) > struck_at
    assert checksums(db) == original
    assert scalar(db, 'SELECT count(*) FROM "DocumentMeta" m JOIN "Envelope" e ON'
                      ' e."documentMetaId" = m.id WHERE m.tenant_id IS DISTINCT FROM'
                      ' e.tenant_id') == 0
    assert scalar(db, 'SELECT count(*) FROM "AuditLog" a JOIN "Envelope" e ON'
                      ' e.id = a."envelopeId" WHERE a.tenant_id IS DISTINCT FROM'
                      ' e.tenant_id') == 0
    assert apply_stage(db, pb, "constrain").result.failed == 0
    assert checksums(db) == original
    rollback_to(db, pb, "none", drop_columns=True)
    assert checksums(db, exclude=()) == original
