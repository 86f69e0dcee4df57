"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Rules for revisions of the rls_migrate schema:
* every object goes into schema "rls_migrate" (pass schema=SCHEMA);
* name every constraint, so a later revision can change it;
* revoke from PUBLIC what you create (env.py re-asserts it for tables and sequences after
  every run; functions that policies call need an explicit GRANT EXECUTE to the app role);
* downgrade() drops exactly what upgrade() created.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}

SCHEMA = "rls_migrate"


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
