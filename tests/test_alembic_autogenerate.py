"""Autogenerate: models declare row-level security on ``Table.info`` (``rls_info``), and
``alembic revision --autogenerate`` notices what the database lacks (a missing policy, an
RLS flag, the other mode, another column), writes it with the rls_migrate operations, and
after ``alembic upgrade`` finds nothing left to do. Tables that declare nothing are never
touched."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import MigrateOperation, Operations, ops
from psycopg import sql

from rls_migrate import samples
from rls_migrate.alembic import (
    CreateTenantPolicyOp,
    DisableRlsOp,
    DropTenantPolicyOp,
    EnableRlsOp,
    EnforceTenantPolicyOp,
    ObserveTenantPolicyOp,
    RlsOperationError,
    rls_info,
)
from rls_migrate.journal import make_engine
from rls_migrate.testing import servers

# Version-agnostic (the toolkit's own logic over SQL every major runs alike): the core
# majors only, unless RLS_MIGRATE_TEST_ALL_MAJORS=1 (see tests/conftest.py).
pytestmark = pytest.mark.core_majors


APP = samples.APP_ROLE
TABLES = ("invoices", "payments", "refunds", "ledger", "notes", "audits", "customers")


def load(dsn: str) -> None:
    """Each table a different distance from what the models below declare."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        samples.ensure_roles(conn)
        for name in TABLES:
            conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY,"
                                 " tenant_id bigint NOT NULL, account_id bigint)").format(
                                     sql.Identifier(name)))
    engine = make_engine(dsn)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        op: Any = Operations(context)  # rls-migrate's operations are registered at import
        with context.begin_transaction():
            op.create_tenant_policy("payments", role=APP)
            op.enable_rls("payments")
            op.create_tenant_policy("refunds", role=APP, mode="observe")
            op.enable_rls("refunds")
            op.create_tenant_policy("ledger", role=APP)
            op.enable_rls("ledger", force=True)
            op.enable_rls("notes")
            op.enable_rls("audits")
            op.create_tenant_policy("customers", "account_id", role=APP)
            op.enable_rls("customers")
    engine.dispose()


def models() -> sa.MetaData:
    metadata = sa.MetaData()

    def table(name: str, **rls: Any) -> None:
        sa.Table(name, metadata, sa.Column("id", sa.BigInteger, primary_key=True),
                 sa.Column("tenant_id", sa.BigInteger, nullable=False),
                 sa.Column("account_id", sa.BigInteger),
                 info=rls_info(**rls) if rls else {})

    table("invoices", tenant_column="tenant_id", role=APP)  # nothing yet
    table("payments", tenant_column="tenant_id", role=APP, force=True)  # not forced yet
    table("refunds", tenant_column="tenant_id", role=APP)  # observing, should enforce
    table("ledger", tenant_column="tenant_id", role=APP, force=True)  # as declared
    table("notes")  # declares nothing: its RLS is none of autogenerate's business
    table("audits", enabled=False)  # RLS on, should be off
    table("customers", tenant_column="tenant_id", role=APP)  # policy on account_id
    table("receipts", tenant_column="tenant_id", role=APP)  # a new table
    return metadata


@pytest.fixture(scope="module")
def factory(make_factory: Callable[..., servers.DatabaseFactory]) -> servers.DatabaseFactory:
    return make_factory(load, "alembicauto")


@pytest.fixture
def db(factory: servers.DatabaseFactory) -> Iterator[str]:
    dsn = factory.create()
    yield dsn
    factory.drop(servers.dbname_of(dsn))


def rls_ops(upgrade_ops: ops.UpgradeOps) -> list[tuple[str, MigrateOperation]]:
    """(table, operation) for every rls_migrate operation, in order."""
    out = []
    for op in upgrade_ops.ops:
        if isinstance(op, ops.ModifyTableOps):
            out += [(op.table_name, o) for o in op.ops
                    if type(o).__module__.startswith("rls_migrate.")]
    return out


def test_autogenerate_detects_policies_and_flags(db: str) -> None:
    engine = make_engine(db)
    try:
        with engine.connect() as connection:
            script = produce_migrations(MigrationContext.configure(connection), models())
    finally:
        engine.dispose()
    assert script.upgrade_ops is not None and script.downgrade_ops is not None
    found = [(table, type(op).__name__, op.to_diff_tuple())
             for table, op in rls_ops(script.upgrade_ops)]
    assert found == [
        # New tables are compared first, then existing ones by name.
        ("receipts", "CreateTenantPolicyOp",
         ("create_tenant_policy", None, "receipts", "tenant_id", "enforce")),
        ("receipts", "EnableRlsOp", ("enable_rls", None, "receipts", False)),
        ("audits", "DisableRlsOp", ("disable_rls", None, "audits", False)),
        ("customers", "DropTenantPolicyOp",
         ("drop_tenant_policy", None, "customers", "account_id")),
        ("customers", "CreateTenantPolicyOp",
         ("create_tenant_policy", None, "customers", "tenant_id", "enforce")),
        ("invoices", "CreateTenantPolicyOp",
         ("create_tenant_policy", None, "invoices", "tenant_id", "enforce")),
        ("invoices", "EnableRlsOp", ("enable_rls", None, "invoices", False)),
        ("payments", "ForceRlsOp", ("force_rls", None, "payments")),
        ("refunds", "EnforceTenantPolicyOp",
         ("enforce_tenant_policy", None, "refunds", "tenant_id")),
    ]
    # A new table: created first, then its policy and RLS.
    kinds = [type(op).__name__ for op in script.upgrade_ops.ops]
    assert kinds[:2] == ["CreateTableOp", "ModifyTableOps"], kinds

    upgrade = render_python_code(script.upgrade_ops)
    downgrade = render_python_code(script.downgrade_ops)
    for line in (
        "op.create_tenant_policy('invoices', 'tenant_id', role='app_user')",
        "op.enable_rls('invoices')",
        "op.force_rls('payments')",
        "op.enforce_tenant_policy('refunds', 'tenant_id', role='app_user')",
        "op.disable_rls('audits')",
        "op.drop_tenant_policy('customers', 'account_id', role='app_user')",
    ):
        assert line in upgrade, upgrade
    for line in (
        "op.drop_tenant_policy('invoices', 'tenant_id', role='app_user')",
        "op.disable_rls('invoices')",
        "op.no_force_rls('payments')",
        "op.observe_tenant_policy('refunds', 'tenant_id', role='app_user')",
        "op.enable_rls('audits')",
        "op.create_tenant_policy('customers', 'account_id', role='app_user')",
    ):
        assert line in downgrade, downgrade
    assert "notes" not in upgrade and "ledger" not in upgrade


MAKO = '''\
"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""
from alembic import op
import sqlalchemy as sa
${imports if imports else ""}

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
'''

ENV_PY = '''\
from alembic import context

import rls_migrate.alembic  # noqa: F401  (operations and autogenerate comparators)

config = context.config
connection = config.attributes["connection"]
context.configure(connection=connection, target_metadata=config.attributes["metadata"])
with context.begin_transaction():
    context.run_migrations()
'''


def test_autogenerated_revision_upgrades_and_converges(db: str, tmp_path: Path) -> None:
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(ENV_PY)
    (tmp_path / "script.py.mako").write_text(MAKO)
    metadata = models()
    engine = make_engine(db)
    try:
        with engine.connect() as connection:
            config = Config()
            config.set_main_option("script_location", str(tmp_path))
            config.attributes.update(connection=connection, metadata=metadata)
            command.revision(config, "rls", autogenerate=True, rev_id="0001")
            text = (tmp_path / "versions" / "0001_rls.py").read_text()
            assert "import rls_migrate.alembic  # noqa: F401" in text
            assert "op.create_tenant_policy('receipts', 'tenant_id', role='app_user')" in text
            command.upgrade(config, "head")
            connection.commit()
            again = produce_migrations(MigrationContext.configure(connection), metadata)
            assert again.upgrade_ops is not None
            assert rls_ops(again.upgrade_ops) == []
            command.downgrade(config, "base")
            connection.commit()
            back = produce_migrations(MigrationContext.configure(connection), metadata)
            assert back.upgrade_ops is not None
            assert len(rls_ops(back.upgrade_ops)) == 9
    finally:
        engine.dispose()
    with psycopg.connect(db) as conn:
        rows: dict[str, bool] = dict(conn.execute(
            "SELECT relname, relrowsecurity FROM pg_class WHERE relname = ANY(%s)",
            [list(TABLES)]).fetchall())
    assert rows == {"invoices": False, "payments": True, "refunds": True, "ledger": True,
                    "notes": True, "audits": True, "customers": True}


def test_declarations_are_validated() -> None:
    assert rls_info(tenant_column="tenant_id") == {"rls": {"tenant_column": "tenant_id"}}
    for bad, message in (
        ({"tenant_colum": "x"}, r"unknown info\['rls'\] key\(s\) \['tenant_colum'\]"),
        ({"mode": "strict"}, r"info\['rls'\]\['mode'\] must be 'observe' or 'enforce'"),
        ({"key_type": "int8"}, r"info\['rls'\]\['key_type'\] must be one of"),
        ({"force": "yes"}, r"info\['rls'\]\['force'\] must be true or false"),
        ({"enabled": False, "tenant_column": "t"}, "a tenant_column without RLS enabled"),
    ):
        with pytest.raises(RlsOperationError, match=message):
            rls_info(**bad)


def test_operations_reverse_into_each_other() -> None:
    pairs: list[tuple[MigrateOperation, type[MigrateOperation]]] = [
        (EnableRlsOp("t", force=True), DisableRlsOp),
        (CreateTenantPolicyOp("t", mode="observe"), DropTenantPolicyOp),
        (EnforceTenantPolicyOp("t"), ObserveTenantPolicyOp),
    ]
    for op, reverse_type in pairs:
        back = op.reverse()
        assert isinstance(back, reverse_type)
        assert back.reverse().to_diff_tuple() == op.to_diff_tuple()  # type: ignore[attr-defined, unused-ignore]
