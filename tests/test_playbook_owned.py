"""The playbook keys of issue 17: ``strategy: owned`` with ``owner``, per-table ``orphans``
and ``nullable``: what they accept, the one clear error for what they do not, and what they
decide (no database needed)."""

from __future__ import annotations

import pytest

from rls_migrate.catalog import QualifiedName
from rls_migrate.errors import PlaybookError
from rls_migrate.playbook import ParentRef, parse_playbook

HEAD = """\
version: 1
tenant: {table: public.accounts}
roles: {app: app_user}
tables:
  public.accounts: {strategy: root, column: id}
"""


def one(line: str, options: str = "") -> str:
    return HEAD.replace("tables:\n", options + "tables:\n") + "  " + line + "\n"


def test_owner_parses_both_ways_round() -> None:
    pb = parse_playbook(one(
        """public."DocumentMeta": {strategy: owned, owner: 'id <- public."Envelope"("documentMetaId")'}"""))
    plan = pb.plan_for(QualifiedName("public", "DocumentMeta"))
    assert plan is not None and plan.owner is not None and plan.link is plan.owner
    assert (plan.owner.columns, plan.owner.qname, plan.owner.ref_columns) == (
        ("id",), QualifiedName("public", "Envelope"), ("documentMetaId",))
    assert plan.owner.owner_text() == 'id <- public."Envelope"("documentMetaId")'
    assert ParentRef.parse_owner(plan.owner.owner_text()) == plan.owner
    # An owned table gets the added tenant column, like a derived one.
    assert pb.tenant_column(QualifiedName("public", "DocumentMeta")) == "tenant_id"


@pytest.mark.parametrize(("line", "message"), [
    ("public.m: {strategy: owned}",
     r"tables\.public\.m: strategy owned needs 'owner: column <- owner_table\(column\)'"),
    ("public.m: {strategy: owned, parent: 'id -> public.e(meta_id)'}",
     r"'parent' only goes with strategy derive or hint, not owned; an owned table names its "
     r"'owner'"),
    ("public.m: {strategy: derive, parent: 'a -> public.p(id)', owner: 'id <- public.e(m)'}",
     r"'owner' only goes with strategy owned, not derive"),
    ("public.m: {strategy: owned, owner: 'id -> public.e(meta_id)'}",
     r"expected 'column <- schema.owner_table\(column\)'"),
    ("public.m: {strategy: owned, owner: 'a, b <- public.e(x)'}",
     r"2 column\(s\) on the left but 1 on the right"),
    ("public.m: {strategy: global, nullable: true}",
     r"'nullable' only goes with strategy direct, derive, hint or owned, not global"),
    ("public.m: {strategy: direct, column: account_id, orphans: skip}",
     r"'orphans' only goes with strategy derive, hint or owned"),
    ("public.m: {strategy: derive, parent: 'a -> public.p(id)', orphans: maybe}",
     r"tables\.public\.m\.orphans: Input should be 'stop' or 'skip'"),
])
def test_bad_keys_give_one_clear_error(line: str, message: str) -> None:
    with pytest.raises(PlaybookError, match=message):
        parse_playbook(one(line), "app.yaml")


def test_per_table_orphans_and_nullable_decide_over_the_options() -> None:
    text = one("public.a: {strategy: derive, parent: 'x -> public.accounts(id)', orphans: skip}",
               "options: {backfill: {orphans: stop}}\n")
    text += "  public.b: {strategy: derive, parent: 'x -> public.accounts(id)'}\n"
    text += "  public.c: {strategy: hint, parent: 'x -> public.accounts(id)', orphans: skip}\n"
    text += ("  public.d: {strategy: hint, parent: 'x -> public.accounts(id)', orphans: skip,"
             " nullable: false}\n")
    text += "  public.e: {strategy: direct, column: account_id, nullable: true}\n"
    pb = parse_playbook(text)
    def q(name: str) -> QualifiedName:
        return QualifiedName("public", name)

    assert [pb.orphans_for(q(n)) for n in "abcd"] == ["skip", "stop", "skip", "skip"]
    # Skipped orphans alone keep a hint nullable (no foreign key promises a parent); a
    # derived table says so explicitly; nullable: false wins.
    assert [pb.keeps_nullable(q(n)) for n in "abcde"] == [False, False, True, False, True]
