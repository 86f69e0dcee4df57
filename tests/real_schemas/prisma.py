"""A Prisma-style document-signing application (shaped like Documenso), as ``prisma migrate``
writes its ``migration.sql``.

What Prisma gives a rollout:

* quoted mixed-case names everywhere (``"Envelope"."documentMetaId"``), constraints named
  ``"<Model>_pkey"``, ``"<Model>_<field>_fkey"``, uniqueness as ``CREATE UNIQUE INDEX
  "<Model>_<field>_key"``;
* text cuid keys (made by the client) next to ``SERIAL`` ones; the tenant root
  ``"Organisation"`` has a text key, its teams an integer one;
* reverse one-to-one rows that the client inserts *before* the row that points at them:
  ``"DocumentMeta"`` before ``"Envelope"`` (``"Envelope"."documentMetaId"`` unique),
  ``"DocumentData"`` before ``"EnvelopeItem"``, the claim and settings rows before their
  ``"Organisation"`` or ``"Team"``;
* a foreign-key cycle: ``"Organisation"`` -> ``"OrganisationGlobalSettings"`` ->
  (optional ``"emailId"``, ``ON DELETE SET NULL``) ``"OrganisationEmail"`` ->
  ``"Organisation"``;
* an audit log whose link to its envelope is ``ON DELETE SET NULL``, cascades everywhere
  else, an implicit many-to-many table ``"_EnvelopeToTag"`` (``"A"``, ``"B"``), enums.

The write path is a document sent for signing as Prisma's nested ``create`` writes it, then
signed, then another one deleted (cascades; the audit log's link set NULL), then a new
organisation signing up (its id made by the client, the tenant set to it first).
"""

from __future__ import annotations

import itertools
from typing import Any

from real_schemas.filler import FillSpec
from real_schemas.model import Conn, RealSchema, one

_NOW = 'TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP'
_UPD = 'TIMESTAMP(3) NOT NULL'


def _fk(table: str, column: str, ref: str, on_delete: str = "CASCADE") -> str:
    return (f'ALTER TABLE "{table}" ADD CONSTRAINT "{table}_{column}_fkey" FOREIGN KEY '
            f'("{column}") REFERENCES "{ref}"("id") ON DELETE {on_delete} ON UPDATE CASCADE')


def _unique(table: str, *columns: str) -> str:
    cols = ",".join(f'"{c}"' for c in columns)
    return f'CREATE UNIQUE INDEX "{table}_{"_".join(columns)}_key" ON "{table}"({cols})'


DDL = (
    "CREATE TYPE \"DocumentStatus\" AS ENUM ('DRAFT', 'PENDING', 'COMPLETED', 'REJECTED')",
    "CREATE TYPE \"EnvelopeType\" AS ENUM ('DOCUMENT', 'TEMPLATE')",
    "CREATE TYPE \"RecipientRole\" AS ENUM ('CC', 'SIGNER', 'VIEWER', 'APPROVER')",
    "CREATE TYPE \"FieldType\" AS ENUM ('SIGNATURE', 'NAME', 'EMAIL', 'DATE', 'TEXT')",
    "CREATE TYPE \"DocumentDataType\" AS ENUM ('S3_PATH', 'BYTES_64')",
    f'CREATE TABLE "User" ("id" SERIAL NOT NULL, "name" TEXT, "email" TEXT NOT NULL, '
    f'"emailVerified" TIMESTAMP(3), "password" TEXT, "createdAt" {_NOW}, "updatedAt" {_NOW}, '
    f'CONSTRAINT "User_pkey" PRIMARY KEY ("id"))',
    _unique("User", "email"),
    f'CREATE TABLE "Session" ("id" TEXT NOT NULL, "sessionToken" TEXT NOT NULL, "userId" '
    f'INTEGER NOT NULL, "expiresAt" TIMESTAMP(3) NOT NULL, "ipAddress" TEXT, "userAgent" TEXT, '
    f'"createdAt" {_NOW}, CONSTRAINT "Session_pkey" PRIMARY KEY ("id"))',
    _unique("Session", "sessionToken"),
    _fk("Session", "userId", "User"),
    f'CREATE TABLE "OrganisationClaim" ("id" TEXT NOT NULL, "teamCount" INTEGER NOT NULL '
    f'DEFAULT 1, "memberCount" INTEGER NOT NULL DEFAULT 1, "flags" JSONB NOT NULL, "createdAt" '
    f'{_NOW}, "updatedAt" {_UPD}, CONSTRAINT "OrganisationClaim_pkey" PRIMARY KEY ("id"))',
    'CREATE TABLE "OrganisationGlobalSettings" ("id" TEXT NOT NULL, "documentLanguage" TEXT '
    'NOT NULL DEFAULT \'en\', "includeSenderDetails" BOOLEAN NOT NULL DEFAULT true, '
    '"brandingEnabled" BOOLEAN NOT NULL DEFAULT false, "emailId" TEXT, '
    'CONSTRAINT "OrganisationGlobalSettings_pkey" PRIMARY KEY ("id"))',
    f'CREATE TABLE "Organisation" ("id" TEXT NOT NULL, "createdAt" {_NOW}, "updatedAt" {_UPD}, '
    f'"name" TEXT NOT NULL, "url" TEXT NOT NULL, "customerId" TEXT, "ownerUserId" INTEGER NOT '
    f'NULL, "organisationClaimId" TEXT NOT NULL, "organisationGlobalSettingsId" TEXT NOT NULL, '
    f'CONSTRAINT "Organisation_pkey" PRIMARY KEY ("id"))',
    _unique("Organisation", "url"),
    _unique("Organisation", "customerId"),
    _unique("Organisation", "organisationClaimId"),
    _unique("Organisation", "organisationGlobalSettingsId"),
    _fk("Organisation", "ownerUserId", "User"),
    _fk("Organisation", "organisationClaimId", "OrganisationClaim"),
    _fk("Organisation", "organisationGlobalSettingsId", "OrganisationGlobalSettings"),
    f'CREATE TABLE "OrganisationEmail" ("id" TEXT NOT NULL, "createdAt" {_NOW}, "email" TEXT '
    f'NOT NULL, "emailName" TEXT NOT NULL, "organisationId" TEXT NOT NULL, '
    f'CONSTRAINT "OrganisationEmail_pkey" PRIMARY KEY ("id"))',
    _unique("OrganisationEmail", "email"),
    _fk("OrganisationEmail", "organisationId", "Organisation"),
    _fk("OrganisationGlobalSettings", "emailId", "OrganisationEmail", "SET NULL"),
    f'CREATE TABLE "OrganisationMember" ("id" TEXT NOT NULL, "createdAt" {_NOW}, "userId" '
    f'INTEGER NOT NULL, "organisationId" TEXT NOT NULL, '
    f'CONSTRAINT "OrganisationMember_pkey" PRIMARY KEY ("id"))',
    _unique("OrganisationMember", "userId", "organisationId"),
    _fk("OrganisationMember", "userId", "User"),
    _fk("OrganisationMember", "organisationId", "Organisation"),
    'CREATE TABLE "TeamGlobalSettings" ("id" TEXT NOT NULL, "documentLanguage" TEXT, '
    '"includeSenderDetails" BOOLEAN, "typedSignatureEnabled" BOOLEAN, '
    'CONSTRAINT "TeamGlobalSettings_pkey" PRIMARY KEY ("id"))',
    f'CREATE TABLE "Team" ("id" SERIAL NOT NULL, "name" TEXT NOT NULL, "url" TEXT NOT NULL, '
    f'"createdAt" {_NOW}, "organisationId" TEXT NOT NULL, "teamGlobalSettingsId" TEXT NOT '
    f'NULL, CONSTRAINT "Team_pkey" PRIMARY KEY ("id"))',
    _unique("Team", "url"),
    _unique("Team", "teamGlobalSettingsId"),
    _fk("Team", "organisationId", "Organisation"),
    _fk("Team", "teamGlobalSettingsId", "TeamGlobalSettings"),
    f'CREATE TABLE "Folder" ("id" TEXT NOT NULL, "name" TEXT NOT NULL, "userId" INTEGER NOT '
    f'NULL, "teamId" INTEGER NOT NULL, "pinned" BOOLEAN NOT NULL DEFAULT false, "parentId" '
    f'TEXT, "createdAt" {_NOW}, "updatedAt" {_UPD}, CONSTRAINT "Folder_pkey" PRIMARY KEY '
    f'("id"))',
    'CREATE INDEX "Folder_parentId_idx" ON "Folder"("parentId")',
    _fk("Folder", "userId", "User"),
    _fk("Folder", "teamId", "Team"),
    _fk("Folder", "parentId", "Folder"),
    'CREATE TABLE "DocumentMeta" ("id" TEXT NOT NULL, "subject" TEXT, "message" TEXT, '
    '"timezone" TEXT DEFAULT \'Etc/UTC\', "dateFormat" TEXT DEFAULT \'yyyy-MM-dd hh:mm a\', '
    '"redirectUrl" TEXT, "language" TEXT NOT NULL DEFAULT \'en\', "emailSettings" JSONB, '
    'CONSTRAINT "DocumentMeta_pkey" PRIMARY KEY ("id"))',
    'CREATE TABLE "DocumentData" ("id" TEXT NOT NULL, "type" "DocumentDataType" NOT NULL, '
    '"data" TEXT NOT NULL, "initialData" TEXT NOT NULL, '
    'CONSTRAINT "DocumentData_pkey" PRIMARY KEY ("id"))',
    f'CREATE TABLE "Envelope" ("id" TEXT NOT NULL, "secondaryId" TEXT NOT NULL, "externalId" '
    f'TEXT, "type" "EnvelopeType" NOT NULL, "userId" INTEGER NOT NULL, "teamId" INTEGER NOT '
    f'NULL, "title" TEXT NOT NULL, "status" "DocumentStatus" NOT NULL DEFAULT \'DRAFT\', '
    f'"createdAt" {_NOW}, "updatedAt" {_NOW}, "completedAt" TIMESTAMP(3), "documentMetaId" '
    f'TEXT NOT NULL, "folderId" TEXT, CONSTRAINT "Envelope_pkey" PRIMARY KEY ("id"))',
    _unique("Envelope", "secondaryId"),
    _unique("Envelope", "documentMetaId"),
    'CREATE INDEX "Envelope_teamId_idx" ON "Envelope"("teamId")',
    _fk("Envelope", "userId", "User"),
    _fk("Envelope", "teamId", "Team"),
    _fk("Envelope", "documentMetaId", "DocumentMeta"),
    _fk("Envelope", "folderId", "Folder", "SET NULL"),
    'CREATE TABLE "EnvelopeItem" ("id" TEXT NOT NULL, "title" TEXT NOT NULL, "order" INTEGER '
    'NOT NULL DEFAULT 0, "documentDataId" TEXT NOT NULL, "envelopeId" TEXT NOT NULL, '
    'CONSTRAINT "EnvelopeItem_pkey" PRIMARY KEY ("id"))',
    _unique("EnvelopeItem", "documentDataId"),
    _fk("EnvelopeItem", "envelopeId", "Envelope"),
    _fk("EnvelopeItem", "documentDataId", "DocumentData"),
    'CREATE TABLE "Recipient" ("id" SERIAL NOT NULL, "envelopeId" TEXT NOT NULL, "email" '
    'VARCHAR(255) NOT NULL, "name" VARCHAR(255) NOT NULL DEFAULT \'\', "token" TEXT NOT NULL, '
    '"signedAt" TIMESTAMP(3), "role" "RecipientRole" NOT NULL DEFAULT \'SIGNER\', '
    '"signingOrder" INTEGER, CONSTRAINT "Recipient_pkey" PRIMARY KEY ("id"))',
    _unique("Recipient", "envelopeId", "email"),
    'CREATE INDEX "Recipient_token_idx" ON "Recipient"("token")',
    _fk("Recipient", "envelopeId", "Envelope"),
    'CREATE TABLE "Field" ("id" SERIAL NOT NULL, "secondaryId" TEXT NOT NULL, "envelopeId" '
    'TEXT NOT NULL, "envelopeItemId" TEXT NOT NULL, "recipientId" INTEGER NOT NULL, "type" '
    '"FieldType" NOT NULL, "page" INTEGER NOT NULL, "positionX" DECIMAL(65,30) NOT NULL '
    'DEFAULT 0, "positionY" DECIMAL(65,30) NOT NULL DEFAULT 0, "customText" TEXT NOT NULL, '
    '"inserted" BOOLEAN NOT NULL, "fieldMeta" JSONB, CONSTRAINT "Field_pkey" PRIMARY KEY '
    '("id"))',
    _unique("Field", "secondaryId"),
    _fk("Field", "envelopeId", "Envelope"),
    _fk("Field", "envelopeItemId", "EnvelopeItem"),
    _fk("Field", "recipientId", "Recipient"),
    'CREATE TABLE "Signature" ("id" SERIAL NOT NULL, "created" TIMESTAMP(3) NOT NULL DEFAULT '
    'CURRENT_TIMESTAMP, "recipientId" INTEGER NOT NULL, "fieldId" INTEGER NOT NULL, '
    '"signatureImageAsBase64" TEXT, "typedSignature" TEXT, '
    'CONSTRAINT "Signature_pkey" PRIMARY KEY ("id"))',
    _unique("Signature", "fieldId"),
    _fk("Signature", "recipientId", "Recipient"),
    _fk("Signature", "fieldId", "Field"),
    f'CREATE TABLE "DocumentAuditLog" ("id" TEXT NOT NULL, "envelopeId" TEXT, "createdAt" '
    f'{_NOW}, "type" TEXT NOT NULL, "data" JSONB NOT NULL, "name" TEXT, "email" TEXT, "userId" '
    f'INTEGER, "userAgent" TEXT, "ipAddress" TEXT, '
    f'CONSTRAINT "DocumentAuditLog_pkey" PRIMARY KEY ("id"))',
    _fk("DocumentAuditLog", "envelopeId", "Envelope", "SET NULL"),
    'CREATE TABLE "Tag" ("id" TEXT NOT NULL, "name" TEXT NOT NULL, "teamId" INTEGER NOT NULL, '
    'CONSTRAINT "Tag_pkey" PRIMARY KEY ("id"))',
    _unique("Tag", "teamId", "name"),
    _fk("Tag", "teamId", "Team"),
    'CREATE TABLE "_EnvelopeToTag" ("A" TEXT NOT NULL, "B" TEXT NOT NULL, '
    'CONSTRAINT "_EnvelopeToTag_AB_pkey" PRIMARY KEY ("A","B"))',
    'CREATE INDEX "_EnvelopeToTag_B_index" ON "_EnvelopeToTag"("B")',
    'ALTER TABLE "_EnvelopeToTag" ADD CONSTRAINT "_EnvelopeToTag_A_fkey" FOREIGN KEY ("A") '
    'REFERENCES "Envelope"("id") ON DELETE CASCADE ON UPDATE CASCADE',
    'ALTER TABLE "_EnvelopeToTag" ADD CONSTRAINT "_EnvelopeToTag_B_fkey" FOREIGN KEY ("B") '
    'REFERENCES "Tag"("id") ON DELETE CASCADE ON UPDATE CASCADE',
    f'CREATE TABLE "ApiToken" ("id" SERIAL NOT NULL, "name" TEXT NOT NULL, "token" TEXT NOT '
    f'NULL, "expires" TIMESTAMP(3), "createdAt" {_NOW}, "userId" INTEGER, "teamId" INTEGER NOT '
    f'NULL, CONSTRAINT "ApiToken_pkey" PRIMARY KEY ("id"))',
    _unique("ApiToken", "token"),
    _fk("ApiToken", "userId", "User"),
    _fk("ApiToken", "teamId", "Team"),
    'CREATE TABLE "_prisma_migrations" ("id" VARCHAR(36) NOT NULL, "checksum" VARCHAR(64) NOT '
    'NULL, "finished_at" TIMESTAMPTZ, "migration_name" VARCHAR(255) NOT NULL, "logs" TEXT, '
    '"rolled_back_at" TIMESTAMPTZ, "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(), '
    '"applied_steps_count" INTEGER NOT NULL DEFAULT 0, PRIMARY KEY ("id"))',
)

FILL = FillSpec(
    root="Organisation",
    rows={"User": 15, "Session": 10, "OrganisationClaim": 5, "OrganisationGlobalSettings": 5,
          "Organisation": 5, "OrganisationEmail": 6, "OrganisationMember": 15,
          "TeamGlobalSettings": 8, "Team": 8, "Folder": 10, "DocumentMeta": 60,
          "DocumentData": 80, "Envelope": 60, "EnvelopeItem": 80, "Recipient": 120,
          "Field": 200, "Signature": 60, "DocumentAuditLog": 200, "Tag": 12,
          "_EnvelopeToTag": 60, "ApiToken": 8, "_prisma_migrations": 3},
    null_share={("OrganisationGlobalSettings", "emailId"): 0.6,
                ("DocumentAuditLog", "envelopeId"): 0.0, ("Envelope", "folderId"): 0.5,
                ("Folder", "parentId"): 0.6, ("ApiToken", "userId"): 0.3},
)

_ids = itertools.count(1)


def cuid(prefix: str) -> str:
    """A client-made key, as Prisma's ``@default(cuid())`` is: unique per process."""
    return f"c{prefix}{next(_ids):020d}"


def history(conn: Conn) -> None:
    """Documents deleted before the migration: their audit rows lose their link (``ON DELETE
    SET NULL``) and belong to no one from then on."""
    conn.execute('DELETE FROM "Envelope" WHERE "id" IN (SELECT "envelopeId" FROM'
                 ' "DocumentAuditLog" WHERE "envelopeId" IS NOT NULL ORDER BY "id" LIMIT 4)')


def write_path(conn: Conn, organisation: Any) -> dict[str, int]:
    """Send, sign, delete, sign up: Prisma's statements in its order. ``conn`` acts as the
    app with ``organisation`` set."""
    team = one(conn, 'SELECT "public"."Team"."id" FROM "public"."Team" WHERE'
               ' "public"."Team"."organisationId" = %s ORDER BY "id" LIMIT %s', [organisation, 1])
    user = one(conn, 'SELECT "id" FROM "public"."User" ORDER BY "id" LIMIT 1')
    # prisma.envelope.create({data: {documentMeta: {create}, envelopeItems: {create:
    # [{documentData: {create}}]}, recipients: {create: [...]}}}): the required one-to-one
    # whose key lives on Envelope is written first.
    meta = one(conn, 'INSERT INTO "public"."DocumentMeta" ("id","subject","language") VALUES'
               ' (%s,%s,%s) RETURNING "public"."DocumentMeta"."id"',
               [cuid("meta"), "Please sign", "en"])
    envelope = one(conn, 'INSERT INTO "public"."Envelope" ("id","secondaryId","type","userId",'
                   '"teamId","title","updatedAt","documentMetaId") VALUES (%s,%s,'
                   'CAST(%s::text AS "public"."EnvelopeType"),%s,%s,%s,%s,%s)'
                   ' RETURNING "public"."Envelope"."id"',
                   [cuid("env"), cuid("sec"), "DOCUMENT", user, team, "NDA",
                    "2026-12-03 10:00:00", meta])
    data = one(conn, 'INSERT INTO "public"."DocumentData" ("id","type","data","initialData")'
               ' VALUES (%s,CAST(%s::text AS "public"."DocumentDataType"),%s,%s)'
               ' RETURNING "public"."DocumentData"."id"',
               [cuid("data"), "S3_PATH", "s3://nda.pdf", "s3://nda.pdf"])
    item = one(conn, 'INSERT INTO "public"."EnvelopeItem" ("id","title","documentDataId",'
               '"envelopeId") VALUES (%s,%s,%s,%s) RETURNING "public"."EnvelopeItem"."id"',
               [cuid("item"), "nda.pdf", data, envelope])
    recipient = one(conn, 'INSERT INTO "public"."Recipient" ("envelopeId","email","name",'
                    '"token") VALUES (%s,%s,%s,%s) RETURNING "public"."Recipient"."id"',
                    [envelope, "signer@example.com", "Signer", cuid("tok")])
    field = one(conn, 'INSERT INTO "public"."Field" ("secondaryId","envelopeId","envelopeItemId",'
                '"recipientId","type","page","customText","inserted") VALUES (%s,%s,%s,%s,'
                'CAST(%s::text AS "public"."FieldType"),%s,%s,%s) RETURNING "public"."Field"."id"',
                [cuid("fld"), envelope, item, recipient, "SIGNATURE", 1, "", False])
    tag = one(conn, 'INSERT INTO "public"."Tag" ("id","name","teamId") VALUES (%s,%s,%s)'
              ' RETURNING "public"."Tag"."id"', [cuid("tag"), cuid("legal"), team])
    conn.execute('INSERT INTO "public"."_EnvelopeToTag" ("A","B") VALUES (%s,%s)'
                 ' ON CONFLICT DO NOTHING', [envelope, tag])
    conn.execute('UPDATE "public"."Envelope" SET "status" = CAST(%s::text AS'
                 ' "public"."DocumentStatus"), "updatedAt" = %s WHERE "public"."Envelope"."id"'
                 ' = %s', ["PENDING", "2026-12-03 10:00:01", envelope])
    _audit(conn, envelope, "DOCUMENT_SENT")
    # The recipient signs.
    conn.execute('INSERT INTO "public"."Signature" ("recipientId","fieldId","typedSignature")'
                 ' VALUES (%s,%s,%s)', [recipient, field, "Signer"])
    conn.execute('UPDATE "public"."Field" SET "inserted" = %s WHERE "public"."Field"."id" = %s',
                 [True, field])
    conn.execute('UPDATE "public"."Recipient" SET "signedAt" = %s WHERE'
                 ' "public"."Recipient"."id" = %s', ["2026-12-03 10:00:02", recipient])
    _audit(conn, envelope, "DOCUMENT_RECIPIENT_COMPLETED")
    # prisma.envelope.delete on another draft: the database cascades to items, recipients,
    # fields, signatures and tags, and sets the audit log's link NULL.
    other = conn.execute('SELECT "id" FROM "public"."Envelope" WHERE "teamId" = %s AND "id" <> %s'
                         ' ORDER BY "id" LIMIT 1', [team, envelope]).fetchone()
    if other is not None:
        _audit(conn, other[0], "DOCUMENT_DELETED")
        conn.execute('DELETE FROM "public"."Envelope" WHERE "public"."Envelope"."id" = %s',
                     [other[0]])
    _sign_up(conn)
    # The deleted envelope's audit rows stay the organisation's: all three are its own.
    return {"DocumentMeta": 1, "DocumentData": 1, "Tag": 1, "DocumentAuditLog": 3}


SIGN_UP_ROWS = {"Organisation": 1, "OrganisationClaim": 1, "OrganisationGlobalSettings": 1,
                "OrganisationMember": 1, "TeamGlobalSettings": 1, "Team": 1}


def _audit(conn: Conn, envelope: str, kind: str) -> None:
    conn.execute('INSERT INTO "public"."DocumentAuditLog" ("id","envelopeId","type","data",'
                 '"email") VALUES (%s,%s,%s,%s,%s)',
                 [cuid("log"), envelope, kind, '{"v": 1}', "owner@example.com"])


def _sign_up(conn: Conn) -> None:
    """prisma.organisation.create with its claim, settings, member and first team: the
    client makes the organisation's id, and the app sets it as the tenant first."""
    previous = one(conn, "SELECT current_setting('app.tenant_id')")
    organisation = cuid("org")
    conn.execute("SELECT set_config('app.tenant_id', %s, true)", [organisation])
    owner = one(conn, 'SELECT "id" FROM "public"."User" ORDER BY "id" DESC LIMIT 1')
    claim = one(conn, 'INSERT INTO "public"."OrganisationClaim" ("id","flags","updatedAt")'
                ' VALUES (%s,%s,%s) RETURNING "id"',
                [cuid("claim"), "{}", "2026-12-03 10:00:00"])
    settings = one(conn, 'INSERT INTO "public"."OrganisationGlobalSettings" ("id") VALUES (%s)'
                   ' RETURNING "id"', [cuid("ogs")])
    conn.execute('INSERT INTO "public"."Organisation" ("id","updatedAt","name","url",'
                 '"ownerUserId","organisationClaimId","organisationGlobalSettingsId") VALUES'
                 ' (%s,%s,%s,%s,%s,%s,%s)', [organisation, "2026-12-03 10:00:00", "Acme",
                                             cuid("url"), owner, claim, settings])
    conn.execute('INSERT INTO "public"."OrganisationMember" ("id","userId","organisationId")'
                 ' VALUES (%s,%s,%s)', [cuid("mem"), owner, organisation])
    team_settings = one(conn, 'INSERT INTO "public"."TeamGlobalSettings" ("id") VALUES (%s)'
                        ' RETURNING "id"', [cuid("tgs")])
    conn.execute('INSERT INTO "public"."Team" ("name","url","organisationId",'
                 '"teamGlobalSettingsId") VALUES (%s,%s,%s,%s)',
                 ["Acme", cuid("team"), organisation, team_settings])
    conn.execute("SELECT set_config('app.tenant_id', %s, true)", [previous])


NEW_TABLE = (
    f'CREATE TABLE "Webhook" ("id" TEXT NOT NULL, "webhookUrl" TEXT NOT NULL, "secret" TEXT, '
    f'"enabled" BOOLEAN NOT NULL DEFAULT true, "createdAt" {_NOW}, "teamId" INTEGER NOT NULL, '
    f'CONSTRAINT "Webhook_pkey" PRIMARY KEY ("id"))',
    _fk("Webhook", "teamId", "Team"),
)

SCHEMA = RealSchema(name="prisma", ddl=DDL, fill=FILL, root='public."Organisation"',
                    write_path=write_path, history=history, sign_up_rows=SIGN_UP_ROWS,
                    new_table=NEW_TABLE,
                    global_uniques=(('public."Team"', "url"),))
