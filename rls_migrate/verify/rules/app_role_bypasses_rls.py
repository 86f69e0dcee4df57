"""app-role-bypasses-rls: the application role is a superuser or has BYPASSRLS.

Problem: policies never apply to superusers nor to roles with the BYPASSRLS attribute,
FORCE or not. If the application connects as such a role, enforcement changes nothing: every
request still sees every tenant.

Solution: connect the application as a role without either attribute
(``ALTER ROLE app NOSUPERUSER NOBYPASSRLS`` as a superuser, or a new LOGIN role granted the
table privileges); keep BYPASSRLS for admin tooling roles (``roles.admin`` with
``admin_mode: bypassrls``).
"""

from __future__ import annotations

from collections.abc import Iterator

from rls_migrate.verify.model import Finding, Rule, VerifyContext


def check(ctx: VerifyContext) -> Iterator[Finding]:
    name = ctx.app_role
    role = ctx.catalog.role(name)
    if role is None:
        yield RULE.problem(name, f"the application role {name!r} does not exist", "role")
    elif role.superuser:
        yield RULE.problem(name, f"{name!r} is a superuser: no policy ever applies to it "
                           f"(ALTER ROLE {name} NOSUPERUSER)", "role")
    elif role.bypassrls:
        yield RULE.problem(name, f"{name!r} has BYPASSRLS: no policy applies to it "
                           f"(ALTER ROLE {name} NOBYPASSRLS)", "role")
    else:
        yield RULE.ok(name, "role", "neither SUPERUSER nor BYPASSRLS")


RULE = Rule("app-role-bypasses-rls", "error",
            "the application role is a superuser or has BYPASSRLS", __doc__ or "", check=check)
