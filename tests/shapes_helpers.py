"""A small database of the shapes real applications have and the sample does not: an
``integer`` root under ``bigint`` children (Rails), text cuid keys and quoted mixed-case
names (Prisma), a reverse one-to-one row written before the row that points at it
(``DocumentMeta`` <- ``Envelope."documentMetaId"``), an ``ON DELETE SET NULL`` audit log, a
nullable direct key with NULLs, orphans in two tables. Not a test module."""

from __future__ import annotations

from typing import Any

import psycopg

from rls_migrate import samples
from rls_migrate.playbook import Playbook, parse_playbook
from rls_migrate.testing.checksums import table_checksums

DDL = """
CREATE TABLE accounts (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE projects (id bigserial PRIMARY KEY, account_id bigint REFERENCES accounts(id),
                       name text NOT NULL);
CREATE TABLE issues (id bigserial PRIMARY KEY,
                     project_id bigint REFERENCES projects(id) ON DELETE SET NULL,
                     title text NOT NULL, updated_at timestamptz DEFAULT now());
CREATE TABLE "Team" (id text PRIMARY KEY, "accountId" integer NOT NULL REFERENCES accounts(id),
                     name text NOT NULL);
CREATE TABLE "DocumentMeta" (id text PRIMARY KEY, subject text, "createdAt" timestamptz
                             DEFAULT now());
CREATE TABLE "Envelope" (id text PRIMARY KEY, "teamId" text NOT NULL REFERENCES "Team"(id),
                         "documentMetaId" text REFERENCES "DocumentMeta"(id) ON DELETE SET NULL,
                         title text NOT NULL);
CREATE UNIQUE INDEX "Envelope_documentMetaId_key" ON "Envelope" ("documentMetaId");
CREATE TABLE "AuditLog" (id text PRIMARY KEY,
                         "envelopeId" text REFERENCES "Envelope"(id) ON DELETE SET NULL,
                         data text NOT NULL);
"""

DATA = """
INSERT INTO accounts VALUES (1, 'one'), (2, 'two'), (3, 'three');
INSERT INTO projects (account_id, name)
  SELECT 1 + g % 3, 'p' || g FROM generate_series(1, 30) g;
INSERT INTO projects (account_id, name) VALUES (NULL, 'no account'), (NULL, 'no account 2');
INSERT INTO issues (project_id, title)
  SELECT 1 + g % 30, 'issue ' || g FROM generate_series(1, 600) g;
INSERT INTO issues (project_id, title) VALUES (31, 'under a project without account'),
  (NULL, 'no project'), (NULL, 'no project either');
INSERT INTO "Team" VALUES ('cteam1', 1, 'a'), ('cteam2', 2, 'b'), ('cteam3', 3, 'c');
INSERT INTO "DocumentMeta" (id, subject)
  SELECT 'cmeta' || g, 'subject ' || g FROM generate_series(1, 200) g;
INSERT INTO "DocumentMeta" (id, subject) VALUES ('cmeta_lonely', 'no envelope points here');
INSERT INTO "Envelope" (id, "teamId", "documentMetaId", title)
  SELECT 'cenv' || g, 'cteam' || (1 + g % 3), 'cmeta' || g, 'envelope ' || g
  FROM generate_series(1, 200) g;
INSERT INTO "AuditLog" (id, "envelopeId", data)
  SELECT 'clog' || g, CASE WHEN g % 10 = 0 THEN NULL ELSE 'cenv' || (1 + g % 200) END,
         'event ' || g FROM generate_series(1, 400) g;
"""

GRANTS = """
GRANT USAGE ON SCHEMA public TO app_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_user;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app_user;
"""


def load(dsn: str) -> None:
    """Template setup: the schema, its rows and the application role."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        samples.ensure_roles(conn)
        conn.execute(DDL)
        conn.execute(DATA)
        conn.execute(GRANTS)
        conn.execute("ANALYZE")


PLAYBOOK = """
version: 1
tenant: {table: public.accounts, key: id, key_type: integer}
roles: {app: app_user}
options:
  backfill: {batch_start_rows: 50}
tables:
  public.accounts: {strategy: root, column: id}
  public.projects: {strategy: direct, column: account_id, nullable: true}
  public.issues: {strategy: derive, parent: "project_id -> public.projects(id)",
                  orphans: skip, nullable: true}
  public."Team": {strategy: direct, column: accountId}
  public."Envelope": {strategy: derive, parent: '"teamId" -> public."Team"(id)'}
  public."DocumentMeta": {strategy: owned, owner: 'id <- public."Envelope"("documentMetaId")',
                          orphans: skip, nullable: true}
  public."AuditLog": {strategy: derive, parent: '"envelopeId" -> public."Envelope"(id)',
                      orphans: skip, nullable: true}
"""


def playbook(text: str = PLAYBOOK) -> Playbook:
    return parse_playbook(text, "shapes playbook")


def scalar(dsn: str, query: str, params: Any = None) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query.encode(), params).fetchone()
        return None if row is None else row[0]


def execute_as_tenant(dsn: str, tenant: int | None, *statements: str) -> None:
    """Run ``statements`` in one transaction with the tenant setting (None: unset), as the
    connecting role."""
    with psycopg.connect(dsn) as conn, conn.transaction():
        if tenant is not None:
            conn.execute("SELECT set_config('app.tenant_id', %s, true)", [str(tenant)])
        for statement in statements:
            conn.execute(statement.encode())


def checksums(dsn: str, exclude: tuple[str, ...] = ("tenant_id",)) -> dict[str, str]:
    """Checksums of every table's rows, without the tenant column the toolkit adds."""
    with psycopg.connect(dsn) as conn:
        return table_checksums(conn, exclude_columns=exclude)
