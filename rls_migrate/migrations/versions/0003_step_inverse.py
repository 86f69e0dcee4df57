"""Each done step keeps its inverse, as it was when the step ran.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Rollback undoes what the current playbook plans. A table taken out of the playbook (or
renamed) after its steps ran is no longer planned, so its inverse cannot come from the plan:
it comes from here. ``inverse`` holds the statements as text (rendered by psycopg.sql when the
step ran), with the lock they take, whether they run in a transaction and the option they
need (``drop_columns``). Steps journaled before this revision have none; rollback names
them instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "rls_migrate"
COLUMNS = ("inverse", "inverse_lock", "inverse_transactional", "inverse_needs", "kind")


def upgrade() -> None:
    op.add_column("step_state", sa.Column("kind", sa.Text), schema=SCHEMA)
    op.add_column("step_state", sa.Column("inverse", postgresql.JSONB), schema=SCHEMA)
    op.add_column("step_state", sa.Column("inverse_lock", sa.Text), schema=SCHEMA)
    op.add_column("step_state", sa.Column("inverse_transactional", sa.Boolean), schema=SCHEMA)
    op.add_column("step_state", sa.Column("inverse_needs", sa.Text), schema=SCHEMA)


def downgrade() -> None:
    for column in COLUMNS:
        op.drop_column("step_state", column, schema=SCHEMA)
