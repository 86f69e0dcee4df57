"""Observe mode: violation samples and the recorder counter snapshots that ``report`` reads.

Revision ID: 0002
Revises: 0001
Create Date: 2024-02-01

``violation_samples`` gets one row per statement, table and operation that the enforced
policy would break, written by the observe recorders (SECURITY DEFINER: the application role
itself has no privilege here). ``counter_snapshots`` keeps the recorders'
``pg_stat_user_functions`` call counts as ``report`` saw them, so a report over a window can
tell how many rows were rejected in that window (the counters themselves only grow).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "rls_migrate"
TZ = sa.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "violation_samples",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("at", TZ, nullable=False, server_default=sa.text("clock_timestamp()")),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("role_name", sa.Text, comment="current_user of the statement"),
        # Not "session_user": a column of that name is shadowed by the SQL function in every
        # unqualified SELECT.
        sa.Column("session_role", sa.Text, comment="session_user: the login role"),
        sa.Column("application_name", sa.Text),
        sa.Column("pid", sa.Integer),
        sa.Column("statement", sa.Text),
        sa.Column("query_id", sa.BigInteger, comment="pg_stat_statements.queryid (PG 14+)"),
        sa.Column("row_tenant", sa.Text, comment="the tenant of the first rejected row"),
        sa.Column("context", sa.Text, comment="the tenant setting at the time (NULL: unset)"),
        sa.CheckConstraint("operation IN ('read', 'write')",
                           name="violation_samples_operation_check"),
        sa.CheckConstraint("kind IN ('no_context', 'wrong_tenant')",
                           name="violation_samples_kind_check"),
        schema=SCHEMA,
    )
    # report: WHERE at >= now() - window, then grouping in memory.
    op.create_index("violation_samples_at_idx", "violation_samples", ["at"], schema=SCHEMA)
    op.create_table(
        "counter_snapshots",
        sa.Column("function_name", sa.Text, nullable=False),
        sa.Column("taken_at", TZ, nullable=False),
        sa.Column("calls", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("function_name", "taken_at", name="counter_snapshots_pkey"),
        schema=SCHEMA,
    )
    op.execute("REVOKE ALL ON ALL TABLES IN SCHEMA rls_migrate FROM PUBLIC")
    op.execute("REVOKE ALL ON ALL SEQUENCES IN SCHEMA rls_migrate FROM PUBLIC")


def downgrade() -> None:
    op.drop_table("counter_snapshots", schema=SCHEMA)
    op.drop_table("violation_samples", schema=SCHEMA)
