"""multiple-permissive-policies: several permissive policies for one role and command.

Problem: permissive policies combine with OR: each one can only widen what a role sees, so
the most generous one wins, and a reviewer must read them all to know what a role gets.
PostgreSQL also evaluates every one of them for every row.

Solution: merge them into one policy per role and command, or make the narrowing ones
RESTRICTIVE (``AS RESTRICTIVE``: they combine with AND). The toolkit's own set (a
restrictive tenant policy, one permissive policy for the application role, one for admins)
never overlaps.
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.catalog import Table
from rls_migrate.verify.model import Finding, Rule, VerifyContext

COMMANDS = ("SELECT", "INSERT", "UPDATE", "DELETE")


def overlapping(table: Table, extra_roles: tuple[str, ...] = ()) -> list[str]:
    """``role/COMMAND: p1, p2`` for every role and command that more than one permissive
    policy applies to (PUBLIC applies to every role)."""
    permissive = [p for p in table.policies if p.permissive]
    roles = sorted({r for p in permissive for r in p.roles} | set(extra_roles))
    out = []
    for role in roles:
        for command in COMMANDS:
            names = [p.name for p in permissive
                     if p.command in ("ALL", command) and (role in p.roles or "public" in p.roles)]
            if len(names) > 1:
                out.append(f"{role}/{command}: {', '.join(names)}")
    return out


def check(ctx: VerifyContext) -> Iterator[Finding]:
    for table in ctx.catalog.tables.values():
        if not table.rls_enabled:
            continue
        found = overlapping(table, (ctx.app_role, *ctx.playbook.roles.admin))
        if found:
            yield RULE.problem(str(table.qname), "several permissive policies apply ("
                               + "; ".join(found[:4]) + (" ..." if len(found) > 4 else "")
                               + "): the most generous wins")
        elif table.qname in ctx.tenant_names:
            yield RULE.ok(str(table.qname))


RULE = Rule("multiple-permissive-policies", "warning",
            "several permissive policies for one role and command", __doc__ or "",
            column="lints", check=check)
