"""Discovery on a Prisma-shaped schema (quoted mixed-case names, text keys, integer children),
on every major: a table reachable only through links that may be NULL, or owned one-to-one by
a tenant row that points at it (a reverse one-to-one), is a TODO with every option and the
counts of rows each option leaves without a tenant; a derived path through a nullable link
is flagged, and a NOT NULL link is preferred to a shorter nullable one."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.discover import TenantGraph, discover
from rls_migrate.errors import PlaybookError
from rls_migrate.init import build_playbook_yaml
from rls_migrate.linkcounts import count_links
from rls_migrate.playbook import parse_playbook
from rls_migrate.playbook_check import check_against_catalog

SCHEMA = """
CREATE TABLE "OrganisationClaim" (id text PRIMARY KEY, flags jsonb);
CREATE TABLE "OrganisationGlobalSettings" (id text PRIMARY KEY, "emailId" integer);
CREATE TABLE "Organisation" (
    id text PRIMARY KEY, name text NOT NULL,
    "organisationClaimId" text UNIQUE REFERENCES "OrganisationClaim"(id),
    "organisationGlobalSettingsId" text UNIQUE REFERENCES "OrganisationGlobalSettings"(id));
CREATE TABLE "Email" (id serial PRIMARY KEY,
    "organisationId" text NOT NULL REFERENCES "Organisation"(id));
ALTER TABLE "OrganisationGlobalSettings" ADD FOREIGN KEY ("emailId") REFERENCES "Email"(id);
CREATE TABLE "Team" (id serial PRIMARY KEY,
    "organisationId" text NOT NULL REFERENCES "Organisation"(id));
CREATE TABLE "Envelope" (id serial PRIMARY KEY,
    "teamId" integer NOT NULL REFERENCES "Team"(id));
CREATE TABLE "Recipient" (id serial PRIMARY KEY,
    "teamRef" integer REFERENCES "Team"(id),
    "envelopeId" integer NOT NULL REFERENCES "Envelope"(id));
CREATE TABLE "DocumentAuditLog" (id serial PRIMARY KEY,
    "envelopeId" integer REFERENCES "Envelope"(id) ON DELETE SET NULL, data text);
CREATE TABLE "AuditDetail" (id serial PRIMARY KEY,
    "auditLogId" integer NOT NULL REFERENCES "DocumentAuditLog"(id));
CREATE TABLE "Field" (id serial PRIMARY KEY, "recipientId" integer REFERENCES "Recipient"(id));
CREATE TABLE "Signature" (id serial PRIMARY KEY,
    "recipientId" integer REFERENCES "Recipient"(id));

INSERT INTO "OrganisationClaim" VALUES ('c1', '{}'), ('c2', '{}'), ('c3', '{}');
INSERT INTO "OrganisationGlobalSettings" VALUES ('s1', NULL), ('s2', NULL), ('s3', NULL),
    ('s4', NULL);
INSERT INTO "Organisation" VALUES ('o1', 'One', 'c1', 's1'), ('o2', 'Two', 'c2', 's2');
INSERT INTO "Email" ("organisationId") VALUES ('o1');
UPDATE "OrganisationGlobalSettings" SET "emailId" = 1 WHERE id = 's3';
INSERT INTO "Team" ("organisationId") VALUES ('o1'), ('o2');
INSERT INTO "Envelope" ("teamId") VALUES (1), (2);
INSERT INTO "Recipient" ("envelopeId") VALUES (1);
INSERT INTO "Field" ("recipientId") VALUES (1), (NULL);
INSERT INTO "Signature" ("recipientId") VALUES (1);
INSERT INTO "DocumentAuditLog" ("envelopeId", data)
    SELECT CASE WHEN g % 5 = 0 THEN NULL ELSE 1 + g % 2 END, 'x' FROM generate_series(1, 20) g;
ANALYZE;
"""


def q(name: str) -> QualifiedName:
    return QualifiedName("public", name)


@pytest.fixture
def loaded(empty_db: str) -> tuple[str, Catalog, TenantGraph]:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type, unused-ignore]
        catalog = Catalog.load(conn)
    return empty_db, catalog, discover(catalog, '"Organisation"')


def test_nullable_and_reverse_one_to_one_links(loaded: tuple[str, Catalog, TenantGraph]) -> None:
    _, _, graph = loaded
    claim = graph.tables[q("OrganisationClaim")]
    assert claim.kind == "needs_hint"
    assert [str(h) for h in claim.options] == [
        'id <- public."Organisation"("organisationClaimId")']
    assert claim.options[0].strategy == "owned"

    # Derived through an optional emailId today; owned by Organisation in truth: both options.
    settings = graph.tables[q("OrganisationGlobalSettings")]
    assert settings.kind == "ambiguous"
    assert [str(h) for h in settings.options] == [
        '"emailId" -> public."Email"(id)',
        'id <- public."Organisation"("organisationGlobalSettingsId")']
    assert [h.strategy for h in settings.options] == ["derive", "owned"]
    assert "only through links that may be NULL" in settings.evidence
    assert {str(h) for h in settings.nullable_links} == {str(h) for h in settings.options}

    # A NOT NULL link wins over a shorter one that may be NULL, and says so.
    recipient = graph.tables[q("Recipient")]
    assert recipient.kind == "derived"
    assert str(recipient.parent) == '"envelopeId" -> public."Envelope"(id)'
    assert any('the shorter link "teamRef" -> public."Team"(id) may be NULL' in n
               for n in recipient.notes)

    # SET NULL link, no owner: a TODO with its one option; its child waits for it.
    audit = graph.tables[q("DocumentAuditLog")]
    assert audit.kind == "ambiguous"
    assert [str(h) for h in audit.options] == ['"envelopeId" -> public."Envelope"(id)']
    # A plain nullable link (no owner, no SET NULL): derived, flagged; init decides on data.
    field = graph.tables[q("Field")]
    assert field.kind == "derived" and field.parent is not None and field.parent.nullable
    assert any("may be NULL: a row without it gets no tenant" in n for n in field.notes)
    detail = graph.tables[q("AuditDetail")]
    assert detail.kind == "derived"
    assert any("which is ambiguous: resolve it first" in n for n in detail.notes)


def test_init_writes_the_todos_with_counts(loaded: tuple[str, Catalog, TenantGraph]) -> None:
    dsn, catalog, graph = loaded
    with psycopg.connect(dsn) as conn:
        counts = count_links(conn, graph)
    settings = {c.hop.strategy: c for c in counts[q("OrganisationGlobalSettings")]}
    assert (settings["derive"].rows, settings["derive"].without) == (4, 3)
    assert (settings["owned"].rows, settings["owned"].without) == (4, 2)
    (audit,) = counts[q("DocumentAuditLog")]
    assert (audit.rows, audit.without) == (20, 4)
    assert audit.text() == '"envelopeId" -> public."Envelope"(id): 4 of 20 rows have ' \
        'envelopeId NULL'
    assert q("Recipient") not in counts  # its chosen link is NOT NULL
    assert [(c.rows, c.without) for c in counts[q("Field")]] == [(2, 1)]
    assert [(c.rows, c.without) for c in counts[q("Signature")]] == [(1, 0)]

    text = build_playbook_yaml(graph, catalog, app_role=None, link_counts=counts)
    # Names with double quotes are written single-quoted: nothing to escape by hand.
    assert '''parent: '"envelopeId" -> public."Envelope"(id)\'''' in text
    assert '\\"' not in text
    flat = " ".join(text.replace("#", " ").split())  # comments unwrapped
    assert "option 2, strategy owned: id <- public.\"Organisation\"(\"organisationGlobal" \
        "SettingsId\")" in flat
    assert "rows: id <- public.\"Organisation\"(\"organisationGlobalSettingsId\"): 2 of 4 rows " \
        "have no owner pointing at them" in flat
    playbook = parse_playbook(text)
    plan = playbook.plan_for(q("OrganisationGlobalSettings"))
    assert plan is not None and plan.strategy == "TODO" and plan.note
    assert "two ways: strategy owned" in plan.note
    assert "3 of 4 rows have emailId NULL" in plan.note
    claim = playbook.plan_for(q("OrganisationClaim"))
    assert claim is not None and claim.note and "1 of 3 rows have no owner" in claim.note
    # NULL in some rows: a TODO; NULL in none: derived, the comment says it may be NULL.
    field_plan = playbook.plan_for(q("Field"))
    assert field_plan is not None and field_plan.strategy == "TODO" and field_plan.note
    assert "1 of 2 rows have recipientId NULL" in field_plan.note
    signature = playbook.plan_for(q("Signature"))
    assert signature is not None and signature.strategy == "derive"
    assert "0 of 1 rows have recipientId NULL" in flat
    audit_plan = playbook.plan_for(q("DocumentAuditLog"))
    assert audit_plan is not None and audit_plan.note
    assert audit_plan.note.startswith("every link to the tenant may be NULL")

    with pytest.raises(PlaybookError) as raised:
        check_against_catalog(playbook, catalog)
    lines = raised.value.message.splitlines()
    assert '    - public."OrganisationGlobalSettings": two ways: strategy owned with owner: ' \
        in "\n".join(lines)
    assert '        option: id <- public."Organisation"("organisationGlobalSettingsId")' in lines


def test_init_cli_counts_and_identifier_syntax(loaded: tuple[str, Catalog, TenantGraph],
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    dsn, _, _ = loaded
    from rls_migrate.cli import main

    out_path = tmp_path / "app.yaml"
    with pytest.raises(SystemExit) as exited:
        main(["init", "--dsn", dsn, "--tenant-table", '"Organisation"', "--key", '"id"',
              "--column", '"organisationId"', "-o", str(out_path)])
    out = capsys.readouterr().out
    assert exited.value.code == 0, out
    # OrganisationClaim, OrganisationGlobalSettings, the audit log and Field (NULL in one
    # row): every one a TODO, counted from the written playbook.
    playbook = parse_playbook(out_path.read_text())
    assert playbook.tenant.column == "organisationId" and playbook.tenant.key == "id"
    assert f"{len(playbook.todos)} table(s) marked TODO" in out
    assert len(playbook.todos) == 4
    assert "1 of 2 rows have recipientId NULL" in out_path.read_text()

    # --force over an existing playbook says what it replaced.
    with pytest.raises(SystemExit) as exited:
        main(["init", "--dsn", dsn, "--tenant-table", '"Organisation"', "-o", str(out_path),
              "--force"])
    assert exited.value.code == 0
    assert f"WARNING: --force: replaced the existing {out_path}" in capsys.readouterr().err


def test_django_generic_relations_need_a_hint(empty_db: str) -> None:
    """Django's content_type_id + object_id (taggit, admin log): the parent depends on the
    row, like Rails' polymorphic pairs; never global."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE accounts (id bigint PRIMARY KEY);
            CREATE TABLE tracker_issue (id bigint PRIMARY KEY,
                                        account_id bigint NOT NULL REFERENCES accounts);
            CREATE TABLE django_content_type (id serial PRIMARY KEY, app_label text,
                                              model text);
            CREATE TABLE taggit_tag (id serial PRIMARY KEY, name text UNIQUE);
            CREATE TABLE taggit_taggeditem (id serial PRIMARY KEY,
                content_type_id integer NOT NULL REFERENCES django_content_type,
                object_id integer NOT NULL, tag_id integer NOT NULL REFERENCES taggit_tag);
            CREATE TABLE django_admin_log (id serial PRIMARY KEY,
                content_type_id integer REFERENCES django_content_type, object_id text);
            CREATE TABLE comments (id serial PRIMARY KEY,
                target_content_type_id integer REFERENCES django_content_type,
                target_object_id bigint);
        """)
        catalog = Catalog.load(conn)
    graph = discover(catalog, "accounts")
    tagged = graph.tables[q("taggit_taggeditem")]
    assert tagged.kind == "needs_hint"
    assert "polymorphic reference content_type_id + object_id" in tagged.evidence
    assert "object_id -> public.tracker_issue(id)" in [str(h) for h in tagged.options]
    log = graph.tables[q("django_admin_log")]
    assert log.kind == "needs_hint" and not log.options  # text ids fit no tenant key here
    comments = graph.tables[q("comments")]
    assert comments.kind == "needs_hint"
    assert "target_object_id -> public.tracker_issue(id)" in [str(h) for h in comments.options]
    assert graph.tables[q("taggit_tag")].kind == "global"
    # check: without a playbook such a table is a named warning; with one that does not
    # know it, a failure.
    from rls_migrate.check import check_catalog

    loose = check_catalog(catalog, tenant_table="accounts")
    assert "public.taggit_taggeditem" in {w.table for w in loose.warnings}
    assert "public.taggit_taggeditem" not in {o.table for o in loose.offenders}
    assert "public.tracker_issue" in {o.table for o in loose.offenders}
    playbook = parse_playbook("""
version: 1
tenant: {table: public.accounts}
roles: {app: postgres}
tables:
  public.accounts: {strategy: root, column: id}
  public.tracker_issue: {strategy: direct, column: account_id}
  public.taggit_tag: {strategy: global}
  public.django_content_type: {strategy: global}
  public.django_admin_log: {strategy: skip, note: "admin history, staff only"}
""")
    strict = check_catalog(catalog, playbook=playbook)
    failing = {o.table: o for o in strict.offenders}
    assert failing["public.taggit_taggeditem"].reasons[0].startswith("not in the playbook")
    assert "may hold tenant data (no foreign-key path" in failing["public.taggit_taggeditem"].why
    assert {w.table for w in strict.warnings} == {"public.django_admin_log"}
