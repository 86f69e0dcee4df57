"""Evidence a replay needs, and the verdicts of replays.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

``violation_samples.read_only``: whether the recording transaction was read-only (samples
are only written by transactions that can write, so this is false there; log lines carry it
too). ``verdicts``: what ``report --confirm`` (or the enforce gate) found when it replayed a
group's statements as observe answers them and with enforcement simulated: ``harmless``
(same rows), ``confirmed`` (enforcement changes what the code path sees or writes) or
``unconfirmable`` (with the reason). One row per group and replay; the gate uses the latest
verdict of a group when it is newer than the group's last recording.

``violation_samples`` becomes UNLOGGED: a recorder's sample row is written inside the
application's transaction, and a logged row would turn a read-only request into one that
waits for a WAL flush at commit. Unlogged, it costs no WAL; a crash empties the table, and
the server log and the counters still hold the evidence.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "rls_migrate"
TZ = sa.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.execute("ALTER TABLE rls_migrate.violation_samples SET UNLOGGED")
    op.add_column("violation_samples", sa.Column(
        "read_only", sa.Boolean, comment="the recording transaction was read-only"),
        schema=SCHEMA)
    op.create_table(
        "verdicts",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("group_key", sa.Text, nullable=False,
                  comment="sha256 of table, operation, kind, role, application, statement"),
        sa.Column("decided_at", TZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("verdict", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("statement", sa.Text, nullable=False, comment="normalized"),
        sa.Column("samples", postgresql.JSONB, nullable=False,
                  comment="per replayed sample: verdict, reason, the two row counts"),
        sa.CheckConstraint("verdict IN ('harmless', 'confirmed', 'unconfirmable')",
                           name="verdicts_verdict_check"),
        schema=SCHEMA,
    )
    op.create_index("verdicts_group_idx", "verdicts", ["group_key", "decided_at"],
                    schema=SCHEMA)
    op.execute("REVOKE ALL ON ALL TABLES IN SCHEMA rls_migrate FROM PUBLIC")
    op.execute("REVOKE ALL ON ALL SEQUENCES IN SCHEMA rls_migrate FROM PUBLIC")


def downgrade() -> None:
    op.execute("ALTER TABLE rls_migrate.violation_samples SET LOGGED")
    op.drop_table("verdicts", schema=SCHEMA)
    op.drop_column("violation_samples", "read_only", schema=SCHEMA)
