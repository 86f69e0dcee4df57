"""``op.upgrade_rls_migrate_schema`` / ``downgrade_rls_migrate_schema``: the toolkit's own
schema (journal, checkpoints, evidence)."""

from __future__ import annotations

from typing import Any

from alembic.operations import MigrateOperation, Operations

from rls_migrate.alembic.runtime import (
    driver_connection,
    ensure_toolkit_schema,
    translated_errors,
)


@Operations.register_operation("upgrade_rls_migrate_schema")
class UpgradeRlsMigrateSchemaOp(MigrateOperation):
    """Create or upgrade the ``rls_migrate`` schema (journal, backfill checkpoints,
    violation samples) in this migration's transaction: the toolkit's own Alembic
    revisions, version table ``rls_migrate.alembic_version``."""

    def __init__(self, revision: str = "head") -> None:
        self.revision = revision

    @classmethod
    def upgrade_rls_migrate_schema(cls, operations: Operations,
                                   revision: str = "head") -> None:
        """Bring the toolkit's schema to ``revision``."""
        operations.invoke(cls(revision))

    def reverse(self) -> DowngradeRlsMigrateSchemaOp:
        return DowngradeRlsMigrateSchemaOp("base")

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("upgrade_rls_migrate_schema", self.revision)


@Operations.register_operation("downgrade_rls_migrate_schema")
class DowngradeRlsMigrateSchemaOp(MigrateOperation):
    """Take the toolkit's schema down to ``revision`` (``base``: drop the journal)."""

    def __init__(self, revision: str = "base") -> None:
        self.revision = revision

    @classmethod
    def downgrade_rls_migrate_schema(cls, operations: Operations,
                                     revision: str = "base") -> None:
        """Take the toolkit's schema down to ``revision``."""
        operations.invoke(cls(revision))

    def reverse(self) -> UpgradeRlsMigrateSchemaOp:
        return UpgradeRlsMigrateSchemaOp("head")

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("downgrade_rls_migrate_schema", self.revision)


@Operations.implementation_for(UpgradeRlsMigrateSchemaOp)
def _upgrade_schema(operations: Operations, operation: UpgradeRlsMigrateSchemaOp) -> None:
    with translated_errors():
        ensure_toolkit_schema(operations, operation.revision)


@Operations.implementation_for(DowngradeRlsMigrateSchemaOp)
def _downgrade_schema(operations: Operations, operation: DowngradeRlsMigrateSchemaOp) -> None:
    from alembic import command

    from rls_migrate.alembic.runtime import _HAVE_SCHEMA, keep_alembic_proxies
    from rls_migrate.journal import alembic_config

    _HAVE_SCHEMA.discard(driver_connection(operations, "downgrade_rls_migrate_schema"))
    with translated_errors(), keep_alembic_proxies():
        command.downgrade(alembic_config(connection=operations.get_bind()), operation.revision)
