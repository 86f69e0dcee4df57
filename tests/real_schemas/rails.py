"""A Rails-style support application (shaped like Chatwoot), as ActiveRecord's PostgreSQL
adapter emits it from ``db/schema.rb``.

What Rails gives a rollout:

* ``accounts.id`` is ``serial`` (``integer``: the table predates Rails 5.1), while tables
  made later by ``t.references :account`` carry ``account_id bigint``; older ones
  ``account_id integer``;
* few declared foreign keys (``fk_rails_<hash>`` where there are): ``inboxes``,
  ``conversations``, ``messages`` ... carry ``*_id`` columns the database knows nothing of;
* uniqueness as ``CREATE UNIQUE INDEX index_<table>_on_<columns>``, some of them global
  (``index_articles_on_slug``, ``index_portals_on_slug``);
* ``on_delete: :cascade`` and ``:nullify`` (``ON DELETE SET NULL``);
* nullable ``account_id`` columns with rows that have none (``reporting_events``,
  ``labels``);
* polymorphic ``*_type`` + ``*_id`` pairs (acts-as-taggable-on's ``taggings``, Active
  Storage's ``active_storage_attachments``), a join table (``team_members``), global tables
  (``users``, ``tags``, ``schema_migrations``, ``ar_internal_metadata``).

The write path is an incoming conversation as the app handles it: contact, conversation,
message, attachment and its Active Storage rows, a mention, a label (tagging), a reporting
event, a help-center article, a team with its members, then a team destroyed (its members
by ``dependent: :destroy``, the conversations' ``team_id`` by ``ON DELETE SET NULL``).
"""

from __future__ import annotations

import itertools
from typing import Any

from real_schemas.filler import FillSpec
from real_schemas.model import Conn, RealSchema, one

_TS = 'timestamp(6) without time zone NOT NULL'

DDL = (
    f'CREATE TABLE "accounts" ("id" serial NOT NULL PRIMARY KEY, "name" character varying '
    f'NOT NULL, "locale" integer DEFAULT 0, "domain" character varying(100), "support_email" '
    f'character varying(100), "feature_flags" bigint DEFAULT 0 NOT NULL, "settings" jsonb '
    f'DEFAULT \'{{}}\', "created_at" {_TS}, "updated_at" {_TS})',
    f'CREATE TABLE "users" ("id" serial NOT NULL PRIMARY KEY, "email" character varying '
    f'DEFAULT \'\' NOT NULL, "name" character varying NOT NULL, "encrypted_password" character '
    f'varying DEFAULT \'\' NOT NULL, "created_at" {_TS}, "updated_at" {_TS})',
    'CREATE UNIQUE INDEX "index_users_on_email" ON "users" ("email")',
    f'CREATE TABLE "account_users" ("id" bigserial primary key, "account_id" bigint, "user_id" '
    f'bigint, "role" integer DEFAULT 0, "inviter_id" bigint, "created_at" {_TS}, "updated_at" '
    f'{_TS})',
    'CREATE INDEX "index_account_users_on_account_id" ON "account_users" ("account_id")',
    'CREATE UNIQUE INDEX "uniq_user_id_per_account_id" ON "account_users" ("account_id", '
    '"user_id")',
    f'CREATE TABLE "inboxes" ("id" serial NOT NULL PRIMARY KEY, "channel_id" integer NOT NULL, '
    f'"account_id" integer NOT NULL, "name" character varying NOT NULL, "channel_type" '
    f'character varying, "created_at" {_TS}, "updated_at" {_TS})',
    'CREATE INDEX "index_inboxes_on_account_id" ON "inboxes" ("account_id")',
    f'CREATE TABLE "contacts" ("id" serial NOT NULL PRIMARY KEY, "name" character varying '
    f'DEFAULT \'\', "email" character varying, "phone_number" character varying, "account_id" '
    f'integer NOT NULL, "additional_attributes" jsonb DEFAULT \'{{}}\', "identifier" character '
    f'varying, "last_activity_at" timestamp(6), "created_at" {_TS}, "updated_at" {_TS})',
    'CREATE UNIQUE INDEX "uniq_email_per_account_contact" ON "contacts" ("email", '
    '"account_id")',
    'CREATE INDEX "index_contacts_on_account_id" ON "contacts" ("account_id")',
    f'CREATE TABLE "teams" ("id" bigserial primary key, "name" character varying NOT NULL, '
    f'"description" text, "allow_auto_assign" boolean DEFAULT TRUE, "account_id" bigint NOT '
    f'NULL, "created_at" {_TS}, "updated_at" {_TS})',
    'CREATE UNIQUE INDEX "index_teams_on_name_and_account_id" ON "teams" ("name", '
    '"account_id")',
    'ALTER TABLE "teams" ADD CONSTRAINT "fk_rails_f07a5a4a3d" FOREIGN KEY ("account_id") '
    'REFERENCES "accounts" ("id") ON DELETE CASCADE',
    f'CREATE TABLE "conversations" ("id" serial NOT NULL PRIMARY KEY, "account_id" integer NOT '
    f'NULL, "inbox_id" integer NOT NULL, "status" integer DEFAULT 0 NOT NULL, "assignee_id" '
    f'integer, "contact_id" bigint, "display_id" integer NOT NULL, "additional_attributes" '
    f'jsonb DEFAULT \'{{}}\', "uuid" uuid DEFAULT gen_random_uuid() NOT NULL, "team_id" bigint, '
    f'"last_activity_at" timestamp(6) DEFAULT CURRENT_TIMESTAMP NOT NULL, "created_at" {_TS}, '
    f'"updated_at" {_TS})',
    'CREATE UNIQUE INDEX "index_conversations_on_account_id_and_display_id" ON '
    '"conversations" ("account_id", "display_id")',
    'CREATE UNIQUE INDEX "index_conversations_on_uuid" ON "conversations" ("uuid")',
    'CREATE INDEX "index_conversations_on_inbox_id" ON "conversations" ("inbox_id")',
    'ALTER TABLE "conversations" ADD CONSTRAINT "fk_rails_5f1c1b0b2e" FOREIGN KEY ("team_id") '
    'REFERENCES "teams" ("id") ON DELETE SET NULL',
    f'CREATE TABLE "messages" ("id" serial NOT NULL PRIMARY KEY, "content" text, "account_id" '
    f'integer NOT NULL, "inbox_id" integer NOT NULL, "conversation_id" integer NOT NULL, '
    f'"message_type" integer NOT NULL, "private" boolean DEFAULT FALSE NOT NULL, "status" '
    f'integer DEFAULT 0, "source_id" character varying, "content_attributes" json DEFAULT '
    f'\'{{}}\', "sender_type" character varying, "sender_id" bigint, "created_at" {_TS}, '
    f'"updated_at" {_TS})',
    'CREATE INDEX "index_messages_on_conversation_id" ON "messages" ("conversation_id")',
    'CREATE INDEX "index_messages_on_account_id" ON "messages" ("account_id")',
    'CREATE INDEX "index_messages_on_sender_type_and_sender_id" ON "messages" ("sender_type", '
    '"sender_id")',
    f'CREATE TABLE "attachments" ("id" serial NOT NULL PRIMARY KEY, "file_type" integer DEFAULT '
    f'0, "external_url" character varying, "coordinates_lat" float DEFAULT 0.0, "account_id" '
    f'integer NOT NULL, "message_id" integer NOT NULL, "created_at" {_TS}, "updated_at" {_TS})',
    'CREATE INDEX "index_attachments_on_message_id" ON "attachments" ("message_id")',
    f'CREATE TABLE "team_members" ("id" bigserial primary key, "team_id" bigint NOT NULL, '
    f'"user_id" bigint NOT NULL, "created_at" {_TS}, "updated_at" {_TS})',
    'CREATE UNIQUE INDEX "index_team_members_on_team_id_and_user_id" ON "team_members" '
    '("team_id", "user_id")',
    'ALTER TABLE "team_members" ADD CONSTRAINT "fk_rails_194b5b076d" FOREIGN KEY ("team_id") '
    'REFERENCES "teams" ("id") ON DELETE CASCADE',
    'ALTER TABLE "team_members" ADD CONSTRAINT "fk_rails_9ec2d5e75e" FOREIGN KEY ("user_id") '
    'REFERENCES "users" ("id") ON DELETE CASCADE',
    f'CREATE TABLE "labels" ("id" bigserial primary key, "title" character varying, '
    f'"description" text, "color" character varying DEFAULT \'#1f93ff\' NOT NULL, '
    f'"show_on_sidebar" boolean, "account_id" bigint, "created_at" {_TS}, "updated_at" {_TS})',
    'CREATE INDEX "index_labels_on_account_id" ON "labels" ("account_id")',
    'CREATE UNIQUE INDEX "index_labels_on_title_and_account_id" ON "labels" ("title", '
    '"account_id")',
    'CREATE TABLE "tags" ("id" serial NOT NULL PRIMARY KEY, "name" character varying, '
    '"taggings_count" integer DEFAULT 0)',
    'CREATE UNIQUE INDEX "index_tags_on_name" ON "tags" ("name")',
    'CREATE TABLE "taggings" ("id" serial NOT NULL PRIMARY KEY, "tag_id" integer, '
    '"taggable_type" character varying, "taggable_id" integer, "tagger_type" character '
    'varying, "tagger_id" integer, "context" character varying(128), "created_at" timestamp)',
    'CREATE UNIQUE INDEX "taggings_idx" ON "taggings" ("tag_id", "taggable_id", '
    '"taggable_type", "context", "tagger_id", "tagger_type")',
    'CREATE INDEX "index_taggings_on_taggable_id_and_taggable_type_and_context" ON "taggings" '
    '("taggable_id", "taggable_type", "context")',
    'ALTER TABLE "taggings" ADD CONSTRAINT "fk_rails_9fcd2e236b" FOREIGN KEY ("tag_id") '
    'REFERENCES "tags" ("id")',
    f'CREATE TABLE "portals" ("id" bigserial primary key, "account_id" integer NOT NULL, '
    f'"name" character varying NOT NULL, "slug" character varying NOT NULL, "custom_domain" '
    f'character varying, "color" character varying, "config" jsonb DEFAULT \'{{}}\', '
    f'"created_at" {_TS}, "updated_at" {_TS})',
    'CREATE UNIQUE INDEX "index_portals_on_slug" ON "portals" ("slug")',
    'CREATE UNIQUE INDEX "index_portals_on_custom_domain" ON "portals" ("custom_domain")',
    f'CREATE TABLE "categories" ("id" bigserial primary key, "account_id" integer NOT NULL, '
    f'"portal_id" integer NOT NULL, "name" character varying, "slug" character varying NOT '
    f'NULL, "locale" character varying DEFAULT \'en\', "created_at" {_TS}, "updated_at" {_TS})',
    'CREATE UNIQUE INDEX "index_categories_on_slug_and_locale_and_portal_id" ON "categories" '
    '("slug", "locale", "portal_id")',
    f'CREATE TABLE "articles" ("id" bigserial primary key, "account_id" integer NOT NULL, '
    f'"portal_id" integer NOT NULL, "category_id" integer, "author_id" integer, "title" '
    f'character varying, "content" text, "status" integer, "views" integer, "slug" character '
    f'varying NOT NULL, "created_at" {_TS}, "updated_at" {_TS})',
    'CREATE UNIQUE INDEX "index_articles_on_slug" ON "articles" ("slug")',
    'CREATE INDEX "index_articles_on_portal_id" ON "articles" ("portal_id")',
    f'CREATE TABLE "notes" ("id" bigserial primary key, "content" text NOT NULL, "account_id" '
    f'bigint NOT NULL, "contact_id" bigint NOT NULL, "user_id" bigint, "created_at" {_TS}, '
    f'"updated_at" {_TS})',
    'ALTER TABLE "notes" ADD CONSTRAINT "fk_rails_8d7d5e8b0c" FOREIGN KEY ("account_id") '
    'REFERENCES "accounts" ("id") ON DELETE CASCADE',
    'ALTER TABLE "notes" ADD CONSTRAINT "fk_rails_5d4a723a34" FOREIGN KEY ("contact_id") '
    'REFERENCES "contacts" ("id") ON DELETE CASCADE',
    'ALTER TABLE "notes" ADD CONSTRAINT "fk_rails_7f2323ad43" FOREIGN KEY ("user_id") '
    'REFERENCES "users" ("id") ON DELETE SET NULL',
    f'CREATE TABLE "mentions" ("id" bigserial primary key, "user_id" bigint NOT NULL, '
    f'"conversation_id" bigint NOT NULL, "account_id" bigint NOT NULL, "mentioned_at" {_TS}, '
    f'"created_at" {_TS}, "updated_at" {_TS})',
    'CREATE UNIQUE INDEX "index_mentions_on_user_id_and_conversation_id" ON "mentions" '
    '("user_id", "conversation_id")',
    f'CREATE TABLE "reporting_events" ("id" bigserial primary key, "name" character varying, '
    f'"value" float, "account_id" integer, "inbox_id" integer, "user_id" integer, '
    f'"conversation_id" integer, "created_at" {_TS}, "updated_at" {_TS})',
    'CREATE INDEX "index_reporting_events_on_account_id" ON "reporting_events" ("account_id")',
    f'CREATE TABLE "webhooks" ("id" bigserial primary key, "account_id" integer, "inbox_id" '
    f'integer, "url" character varying, "webhook_type" integer DEFAULT 0, "subscriptions" '
    f'jsonb DEFAULT \'["conversation_created"]\', "created_at" {_TS}, "updated_at" {_TS})',
    'CREATE UNIQUE INDEX "index_webhooks_on_account_id_and_url" ON "webhooks" ("account_id", '
    '"url")',
    'CREATE TABLE "active_storage_blobs" ("id" bigserial primary key, "key" character varying '
    'NOT NULL, "filename" character varying NOT NULL, "content_type" character varying, '
    '"metadata" text, "service_name" character varying NOT NULL, "byte_size" bigint NOT NULL, '
    '"checksum" character varying, "created_at" timestamp(6) NOT NULL)',
    'CREATE UNIQUE INDEX "index_active_storage_blobs_on_key" ON "active_storage_blobs" ("key")',
    'CREATE TABLE "active_storage_attachments" ("id" bigserial primary key, "name" character '
    'varying NOT NULL, "record_type" character varying NOT NULL, "record_id" bigint NOT NULL, '
    '"blob_id" bigint NOT NULL, "created_at" timestamp(6) NOT NULL)',
    'CREATE UNIQUE INDEX "index_active_storage_attachments_uniqueness" ON '
    '"active_storage_attachments" ("record_type", "record_id", "name", "blob_id")',
    'ALTER TABLE "active_storage_attachments" ADD CONSTRAINT "fk_rails_c3b3935057" FOREIGN KEY '
    '("blob_id") REFERENCES "active_storage_blobs" ("id")',
    'CREATE TABLE "schema_migrations" ("version" character varying NOT NULL PRIMARY KEY)',
    'CREATE TABLE "ar_internal_metadata" ("key" character varying NOT NULL PRIMARY KEY, '
    f'"value" character varying, "created_at" {_TS}, "updated_at" {_TS})',
)


def _const(value: Any) -> Any:
    return lambda ctx: value


SOFT = {
    **{(t, "account_id"): ("accounts", "id") for t in (
        "inboxes", "contacts", "conversations", "messages", "attachments", "labels",
        "portals", "categories", "articles", "mentions", "reporting_events", "webhooks",
        "account_users")},
    ("account_users", "user_id"): ("users", "id"),
    ("conversations", "inbox_id"): ("inboxes", "id"),
    ("conversations", "contact_id"): ("contacts", "id"),
    ("conversations", "assignee_id"): ("users", "id"),
    ("messages", "conversation_id"): ("conversations", "id"),
    ("messages", "inbox_id"): ("inboxes", "id"),
    ("attachments", "message_id"): ("messages", "id"),
    ("categories", "portal_id"): ("portals", "id"),
    ("articles", "portal_id"): ("portals", "id"),
    ("articles", "category_id"): ("categories", "id"),
    ("articles", "author_id"): ("users", "id"),
    ("mentions", "conversation_id"): ("conversations", "id"),
    ("mentions", "user_id"): ("users", "id"),
    ("reporting_events", "conversation_id"): ("conversations", "id"),
    ("reporting_events", "inbox_id"): ("inboxes", "id"),
    ("reporting_events", "user_id"): ("users", "id"),
    ("webhooks", "inbox_id"): ("inboxes", "id"),
}

FILL = FillSpec(
    root="accounts",
    rows={"accounts": 6, "users": 20, "account_users": 30, "inboxes": 12, "contacts": 100,
          "teams": 10, "conversations": 160, "messages": 500, "attachments": 80,
          "team_members": 25, "labels": 24, "tags": 8, "taggings": 120, "portals": 6,
          "categories": 12, "articles": 40, "notes": 50, "mentions": 30,
          "reporting_events": 150, "webhooks": 8, "active_storage_blobs": 80,
          "active_storage_attachments": 80, "schema_migrations": 5, "ar_internal_metadata": 1},
    soft_refs=SOFT,
    null_share={("reporting_events", "account_id"): 0.15, ("labels", "account_id"): 0.1,
                ("webhooks", "account_id"): 0.0, ("account_users", "account_id"): 0.0,
                ("account_users", "user_id"): 0.0, ("conversations", "contact_id"): 0.0},
    polymorphic={("taggings", "taggable_id"): ("taggable_type", {"Conversation": "conversations"}),
                 ("active_storage_attachments", "record_id"): (
                     "record_type", {"Attachment": "attachments"})},
    generators={
        ("taggings", "context"): _const("labels"),
        ("taggings", "tagger_type"): _const(None),
        ("taggings", "tagger_id"): _const(None),
        ("active_storage_attachments", "name"): _const("file"),
        ("messages", "sender_type"): _const("User"),
    },
)


def history(conn: Conn) -> None:
    """What the app did before the migration: conversations deleted with ``delete`` (no
    callbacks), leaving their taggings behind (orphans: no foreign key)."""
    conn.execute("DELETE FROM conversations WHERE id IN (SELECT taggable_id FROM taggings"
                 " ORDER BY id LIMIT 3)")


_visitors = itertools.count(1)


def write_path(conn: Conn, account: Any) -> dict[str, int]:
    """An incoming email, as Chatwoot's ActiveRecord callbacks write it, then a team
    created and destroyed. ``conn`` acts as the app with ``account`` set."""
    now = "2026-12-03 10:00:00"
    # Current.account.inboxes.first: ActiveRecord scopes every read by the account.
    inbox = one(conn, 'SELECT "inboxes"."id" FROM "inboxes" WHERE "inboxes"."account_id" = %s'
                ' ORDER BY "inboxes"."id" ASC LIMIT %s', [account, 1])
    user = one(conn, 'SELECT "users"."id" FROM "users" ORDER BY "users"."id" ASC LIMIT %s', [1])
    contact = one(conn, 'INSERT INTO "contacts" ("name", "email", "account_id", "created_at",'
                  ' "updated_at") VALUES (%s, %s, %s, %s, %s) RETURNING "id"',
                  ["Ada", f"ada-{next(_visitors)}@example.com", account, now, now])
    display = one(conn, "SELECT coalesce(max(display_id), 0) + 1 FROM conversations"
                  " WHERE account_id = %s", [account])
    conversation = one(
        conn, 'INSERT INTO "conversations" ("account_id", "inbox_id", "contact_id",'
        ' "display_id", "created_at", "updated_at") VALUES (%s, %s, %s, %s, %s, %s)'
        ' RETURNING "id"', [account, inbox, contact, display, now, now])
    message = one(
        conn, 'INSERT INTO "messages" ("content", "account_id", "inbox_id", "conversation_id",'
        ' "message_type", "sender_type", "sender_id", "created_at", "updated_at") VALUES'
        ' (%s, %s, %s, %s, 0, \'Contact\', %s, %s, %s) RETURNING "id"',
        ["hello", account, inbox, conversation, contact, now, now])
    attachment = one(
        conn, 'INSERT INTO "attachments" ("file_type", "account_id", "message_id",'
        ' "created_at", "updated_at") VALUES (0, %s, %s, %s, %s) RETURNING "id"',
        [account, message, now, now])
    blob = one(
        conn, 'INSERT INTO "active_storage_blobs" ("key", "filename", "content_type",'
        ' "service_name", "byte_size", "checksum", "created_at") VALUES (%s, \'a.png\','
        ' \'image/png\', \'local\', 42, \'x\', %s) RETURNING "id"', [f"k-{attachment}", now])
    conn.execute('INSERT INTO "active_storage_attachments" ("name", "record_type",'
                 ' "record_id", "blob_id", "created_at") VALUES (\'file\', \'Attachment\','
                 ' %s, %s, %s)', [attachment, blob, now])
    conn.execute('UPDATE "conversations" SET "last_activity_at" = %s, "updated_at" = %s'
                 ' WHERE "conversations"."id" = %s', [now, now, conversation])
    conn.execute('INSERT INTO "mentions" ("user_id", "conversation_id", "account_id",'
                 ' "mentioned_at", "created_at", "updated_at") VALUES (%s, %s, %s, %s, %s, %s)',
                 [user, conversation, account, now, now, now])
    # acts-as-taggable-on: find or create the tag (global), then the tagging.
    tag = conn.execute('SELECT "tags".id FROM "tags" WHERE "tags"."name" = %s',
                       ["billing"]).fetchone()
    tag_id = tag[0] if tag else one(conn, 'INSERT INTO "tags" ("name") VALUES (%s)'
                                    ' RETURNING "id"', ["billing"])
    conn.execute('INSERT INTO "taggings" ("tag_id", "taggable_type", "taggable_id",'
                 ' "context", "created_at") VALUES (%s, \'Conversation\', %s, \'labels\', %s)',
                 [tag_id, conversation, now])
    conn.execute('UPDATE "tags" SET "taggings_count" = COALESCE("taggings_count", 0) + 1'
                 ' WHERE "tags"."id" = %s', [tag_id])
    conn.execute('INSERT INTO "reporting_events" ("name", "value", "account_id", "inbox_id",'
                 ' "conversation_id", "created_at", "updated_at") VALUES'
                 ' (\'first_response\', 1.5, %s, %s, %s, %s, %s)',
                 [account, inbox, conversation, now, now])
    # Current.account.portals.first_or_create!
    found = conn.execute('SELECT "portals"."id" FROM "portals" WHERE "portals"."account_id" ='
                         ' %s ORDER BY "portals"."id" ASC LIMIT %s', [account, 1]).fetchone()
    portal = found[0] if found else one(
        conn, 'INSERT INTO "portals" ("account_id", "name", "slug", "created_at", "updated_at")'
        ' VALUES (%s, %s, %s, %s, %s) RETURNING "id"',
        [account, "Help", f"help-{account}-{conversation}", now, now])
    conn.execute('INSERT INTO "articles" ("account_id", "portal_id", "title", "slug",'
                 ' "created_at", "updated_at") VALUES (%s, %s, \'Refunds\', %s, %s, %s)',
                 [account, portal, f"refunds-{account}-{conversation}", now, now])
    team = one(conn, 'INSERT INTO "teams" ("name", "account_id", "created_at", "updated_at")'
               ' VALUES (%s, %s, %s, %s) RETURNING "id"',
               [f"night shift {conversation}", account, now, now])
    conn.execute('INSERT INTO "team_members" ("team_id", "user_id", "created_at",'
                 ' "updated_at") VALUES (%s, %s, %s, %s)', [team, user, now, now])
    conn.execute('UPDATE "conversations" SET "team_id" = %s, "updated_at" = %s'
                 ' WHERE "conversations"."id" = %s', [team, now, conversation])
    # team.destroy: dependent: :destroy members first, then the team (SET NULL on
    # conversations.team_id by the database).
    conn.execute('DELETE FROM "team_members" WHERE "team_members"."team_id" = %s', [team])
    conn.execute('DELETE FROM "teams" WHERE "teams"."id" = %s', [team])
    return {"contacts": 1, "conversations": 1, "messages": 1, "attachments": 1,
            "active_storage_blobs": 1, "active_storage_attachments": 1, "mentions": 1,
            "taggings": 1, "reporting_events": 1, "articles": 1, "teams": 0, "team_members": 0}


NEW_TABLE = (
    f'CREATE TABLE "macros" ("id" bigserial primary key, "account_id" bigint NOT NULL, "name" '
    f'character varying NOT NULL, "actions" jsonb DEFAULT \'{{}}\' NOT NULL, "created_by_id" '
    f'bigint, "created_at" {_TS}, "updated_at" {_TS})',
    'CREATE INDEX "index_macros_on_account_id" ON "macros" ("account_id")',
    'ALTER TABLE "macros" ADD CONSTRAINT "fk_rails_2f8f4c5a2b" FOREIGN KEY ("account_id") '
    'REFERENCES "accounts" ("id")',
)

SCHEMA = RealSchema(name="rails", ddl=DDL, fill=FILL, root="public.accounts",
                    write_path=write_path, history=history, new_table=NEW_TABLE,
                    global_uniques=(("public.articles", "slug"), ("public.portals", "slug")))
