"""The journal: runs, step outcomes, step state, backfill checkpoints and anomalies.

Revision ID: 0001
Revises:
Create Date: 2024-01-01

Nothing here is readable by PUBLIC: the application role must never read or change what the
toolkit records (env.py re-asserts the REVOKEs after every run).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "rls_migrate"
TZ = sa.TIMESTAMP(timezone=True)


def _now() -> sa.sql.elements.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    # env.py creates the schema before the version table; this keeps the revision whole
    # when it is rendered with --sql.
    op.execute("CREATE SCHEMA IF NOT EXISTS rls_migrate")
    op.execute("REVOKE ALL ON SCHEMA rls_migrate FROM PUBLIC")

    op.create_table(
        "runs",
        sa.Column("run_id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("stage", sa.Text),
        sa.Column("runner", sa.Text, comment="application_name of the runner's session"),
        sa.Column("pid", sa.Integer, comment="OS process id of the runner"),
        sa.Column("host", sa.Text),
        sa.Column("started_at", TZ, nullable=False, server_default=_now()),
        sa.Column("finished_at", TZ),
        sa.Column("outcome", sa.Text, comment="NULL while running, or after a kill -9"),
        schema=SCHEMA,
    )
    op.create_table(
        "journal",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),  # bigserial
        sa.Column(
            "run_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("rls_migrate.runs.run_id", ondelete="SET NULL",
                          name="journal_run_id_fkey"),
        ),
        sa.Column("step_id", sa.Text, nullable=False),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("table_name", sa.Text),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("finished_at", TZ, nullable=False),
        sa.Column("duration_ms", postgresql.DOUBLE_PRECISION),
        sa.Column("error", sa.Text),
        sa.Column("details", postgresql.JSONB),
        sa.CheckConstraint(
            "outcome IN ('done', 'skipped', 'failed', 'interrupted', 'undone', 'forced')",
            name="journal_outcome_check",
        ),
        schema=SCHEMA,
    )
    op.create_index("journal_step_id_idx", "journal", ["step_id", "id"], schema=SCHEMA)
    op.create_index("journal_run_id_idx", "journal", ["run_id"], schema=SCHEMA)
    op.create_table(
        "step_state",
        sa.Column("step_id", sa.Text, primary_key=True),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("table_name", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("updated_at", TZ, nullable=False, server_default=_now()),
        sa.CheckConstraint("status IN ('done', 'undone')", name="step_state_status_check"),
        schema=SCHEMA,
    )
    op.create_table(
        "backfill_checkpoint",
        sa.Column("table_name", sa.Text, primary_key=True),
        sa.Column("last_key", postgresql.JSONB),
        sa.Column("max_key", postgresql.JSONB),
        sa.Column("rows_done", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("batches", sa.Integer, nullable=False, server_default="0"),
        sa.Column("finished", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("updated_at", TZ, nullable=False, server_default=_now()),
        schema=SCHEMA,
    )
    op.create_table(
        "backfill_batches",
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("batch_no", sa.Integer, nullable=False),
        sa.Column("lo", postgresql.JSONB),
        sa.Column("hi", postgresql.JSONB),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("duration_ms", postgresql.DOUBLE_PRECISION),
        sa.Column("at", TZ, nullable=False, server_default=_now()),
        # The primary key is the proof that no batch is applied twice: a batch's row is
        # written in the batch's own transaction, so a replay fails and rolls back.
        sa.PrimaryKeyConstraint("table_name", "batch_no", name="backfill_batches_pkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "anomalies",
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("sample", postgresql.JSONB),
        sa.Column("found_at", TZ, nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("table_name", "kind", name="anomalies_pkey"),
        sa.CheckConstraint("kind IN ('orphan', 'conflict')", name="anomalies_kind_check"),
        schema=SCHEMA,
    )
    op.execute("REVOKE ALL ON ALL TABLES IN SCHEMA rls_migrate FROM PUBLIC")
    op.execute("REVOKE ALL ON ALL SEQUENCES IN SCHEMA rls_migrate FROM PUBLIC")


def downgrade() -> None:
    # The schema itself goes in env.py, after Alembic has removed its version row.
    for table in ("anomalies", "backfill_batches", "backfill_checkpoint", "step_state",
                  "journal", "runs"):
        op.drop_table(table, schema=SCHEMA)
