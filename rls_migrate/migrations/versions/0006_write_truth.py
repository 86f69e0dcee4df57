"""Write-truth: whose rows a recorded DELETE or UPDATE really changed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

A recorded DELETE or UPDATE is only a candidate, and replay cannot judge one whose rows are
gone by then (a committed delete replays 0 rows both ways). Observe mode therefore installs
two triggers per tenant table (see :mod:`rls_migrate.stages.write_truth`) that, for a
statement the recorders flagged, look at the rows it changed: ``write_truth`` gets one row
per such statement and table, saying whether any changed row belonged to another tenant than
the one set (``foreign``; ``row_tenant``: the first such row's tenant). UNLOGGED like
``violation_samples``: written inside the application's transaction, it must cost no WAL
flush; a crash empties it, and the server log holds every record too. A rolled-back
transaction takes its row with it; its LOG line stays.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "rls_migrate"
TZ = sa.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "write_truth",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("at", TZ, nullable=False, server_default=sa.text("clock_timestamp()"),
                  comment="when the statement's AFTER STATEMENT trigger ran"),
        sa.Column("statement_at", TZ, nullable=False,
                  comment="statement_timestamp(): with pid, links the recorder's record"),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("xid", sa.BigInteger, comment="txid_current_if_assigned()"),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("foreign_rows", sa.Boolean, nullable=False,
                  comment="a changed row belonged to another tenant (or none was set)"),
        sa.Column("row_tenant", sa.Text, comment="the first such row's tenant"),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("context", sa.Text, comment="the tenant setting at the time (NULL: unset)"),
        sa.Column("role_name", sa.Text),
        sa.Column("session_role", sa.Text),
        sa.Column("application_name", sa.Text),
        sa.Column("statement", sa.Text),
        sa.CheckConstraint("operation IN ('delete', 'update')",
                           name="write_truth_operation_check"),
        sa.CheckConstraint("kind IN ('no_context', 'wrong_tenant')",
                           name="write_truth_kind_check"),
        schema=SCHEMA,
    )
    op.execute("ALTER TABLE rls_migrate.write_truth SET UNLOGGED")
    op.create_index("write_truth_at_idx", "write_truth", ["at"], schema=SCHEMA)
    op.execute("REVOKE ALL ON ALL TABLES IN SCHEMA rls_migrate FROM PUBLIC")
    op.execute("REVOKE ALL ON ALL SEQUENCES IN SCHEMA rls_migrate FROM PUBLIC")


def downgrade() -> None:
    op.drop_table("write_truth", schema=SCHEMA)
