"""Sync-trigger conflicts: a row written under one tenant's setting whose parent (or owner)
belongs to another tenant.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

The sync triggers of add-column keep the parent's tenant (or, for a reverse one-to-one row,
the owner's) and record the disagreement here instead of choosing silently: one sample per
transaction and table (written by the SECURITY DEFINER trigger function: the application
role has no privilege here), with a LOG line beside it. ``kept_tenant`` is the tenant
the row got, ``other_tenant`` the one the writer's setting (``source = 'setting'``) or the
owned row's earlier value (``source = 'owner'``) named. The preflight (``plan``, constrain)
reports them per table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "rls_migrate"


def upgrade() -> None:
    op.create_table(
        "sync_conflicts",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("clock_timestamp()")),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("row_key", sa.Text),
        sa.Column("kept_tenant", sa.Text),
        sa.Column("other_tenant", sa.Text),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("session_role", sa.Text),
        sa.Column("application_name", sa.Text),
        sa.CheckConstraint("source IN ('setting', 'owner')", name="sync_conflicts_source_check"),
        schema=SCHEMA,
    )
    op.create_index("sync_conflicts_table_idx", "sync_conflicts", ["table_name", "at"],
                    schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("sync_conflicts", schema=SCHEMA)
