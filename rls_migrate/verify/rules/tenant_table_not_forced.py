"""tenant-table-not-forced: RLS does not apply to the table's owner where it must.

Problem: a table's owner bypasses its policies unless the table has ``FORCE ROW LEVEL
SECURITY``. When the application role owns a tenant table (or is a member of the owner
role), enforcement does nothing for it: the application keeps seeing every tenant. Tables
the playbook asks to force (``options.enforce.force_rls``, ``tables.<t>.force_rls``) are
checked too.

Solution: best, move ownership to a separate migration role and grant the application role
only the DML privileges (``ALTER TABLE t OWNER TO owner_role``); or set ``force_rls: true``
and apply the enforce stage again (``ALTER TABLE t FORCE ROW LEVEL SECURITY``). Under FORCE
the owner is filtered too: data work as the owner then needs BYPASSRLS or a tenant context.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for entry in ctx.entries:
        name = str(entry.qname)
        owns = ctx.app_owns(entry)
        asked = ctx.enforcement(entry).force
        if entry.table.rls_forced:
            yield RULE.ok(name)
        elif owns:
            yield RULE.problem(name, f"the application role {ctx.app_role!r} owns it (owner "
                               f"{entry.table.owner!r}) and RLS is not forced: its policies do "
                               "not apply to the application at all (FORCE ROW LEVEL SECURITY, "
                               "or move ownership to another role)")
        elif asked:
            yield RULE.problem(name, "the playbook asks for FORCE ROW LEVEL SECURITY and the "
                               "table does not have it (apply --stage enforce)")
        else:
            yield RULE.skip(name, "not required: the application role does not own it")


RULE = Rule("tenant-table-not-forced", "error",
            "RLS not forced on a tenant table the application role owns, or the playbook "
            "forces", __doc__ or "", column="force", check=check)
