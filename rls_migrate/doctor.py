"""``doctor``: what the connecting role and the server mean for an RLS rollout, in plain
words. Read-only: one catalog snapshot."""

from __future__ import annotations

import dataclasses

from rls_migrate.catalog import Catalog, quote_ident


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    level: str  # ok | warn | block
    topic: str
    message: str


def diagnose(catalog: Catalog, app_role: str | None = None) -> list[Diagnosis]:
    """Findings about the server and roles. ``app_role`` defaults to the connecting role."""
    out: list[Diagnosis] = []
    add = out.append
    add(Diagnosis("ok", "server", f"PostgreSQL {catalog.server_version}"
                  + (" (hot standby: read-only)" if catalog.in_recovery else "")))
    if catalog.in_recovery:
        add(Diagnosis("block", "server", "this server is in recovery (a replica): run the "
                      "migration against the primary"))
    role_name = app_role or catalog.current_user
    role = catalog.role(role_name)
    who = "the connecting role" if app_role is None else "the application role"
    if role is None:
        add(Diagnosis("block", "role", f"{who} {role_name!r} does not exist"))
    else:
        attrs = [a for a, on in (("SUPERUSER", role.superuser), ("BYPASSRLS", role.bypassrls),
                                 ("LOGIN", role.login), ("CREATEROLE", role.createrole)) if on]
        add(Diagnosis("ok", "role", f"{who} {role_name!r}: {', '.join(attrs) or 'no attributes'}"
                      + (f"; member of {', '.join(role.member_of)}" if role.member_of else "")))
        if role.superuser:
            owns = len(catalog.owned_by(role_name))
            add(Diagnosis("warn" if app_role is None else "block", "role",
                          f"{role_name!r} is a superuser"
                          + (f" and owns {owns} table(s)" if owns else "")
                          + ": RLS never applies to it. The application must connect as a role "
                            "without SUPERUSER" + (" that owns no table" if owns else "")
                          + (" (fine for running the migration itself)"
                             if app_role is None else "")))
        if role.bypassrls:
            add(Diagnosis("warn" if app_role is None else "block", "role",
                          f"{role_name!r} has BYPASSRLS: policies never apply to it. Keep "
                          "BYPASSRLS for admin tooling; never for the application or for an "
                          "Alembic env.py that the application shares"))
        owned = catalog.owned_by(role_name)
        if owned:
            names = ", ".join(t.qname.short for t in owned[:10]) + (
                f" and {len(owned) - 10} more" if len(owned) > 10 else "")
            add(Diagnosis("warn", "ownership",
                          f"{role_name!r} owns {len(owned)} table(s) ({names}): owners bypass "
                          "RLS unless the table has FORCE ROW LEVEL SECURITY. If the application "
                          "connects as this role, move ownership to a migration role, or plan "
                          "FORCE"))
    if app_role is not None and app_role != catalog.current_user:
        out += connection_findings(catalog)
    out += migration_role_findings(catalog, app_role)
    pl = catalog.settings.get("track_functions", "none")
    if pl == "none":
        add(Diagnosis("warn", "settings", "track_functions = none: observe mode cannot count "
                      "violations in pg_stat_user_functions (set it to 'pl')"))
    else:
        add(Diagnosis("ok", "settings", f"track_functions = {pl}"))
    out += log_findings(catalog)
    preload = catalog.settings.get("shared_preload_libraries", "")
    if "pg_stat_statements" in preload:
        add(Diagnosis("ok", "settings", "pg_stat_statements is loaded"
                      + ("" if "pg_stat_statements" in catalog.extensions else
                         " (CREATE EXTENSION pg_stat_statements to read statement texts)")))
    else:
        add(Diagnosis("warn", "settings", "pg_stat_statements is not loaded: observe still "
                      "records samples and log lines, without per-statement counters"))
    rls_tables = [t for t in catalog.tables.values() if t.rls_enabled]
    add(Diagnosis("ok", "rls", f"{len(catalog.tables)} table(s), {len(rls_tables)} with RLS "
                  f"enabled, {sum(1 for t in rls_tables if t.rls_forced)} forced"))
    bypassing = [v for v in catalog.views.values() if v.kind == "view" and not v.security_invoker]
    if bypassing:
        add(Diagnosis("warn", "views", f"{len(bypassing)} view(s) run with their owner's rights "
                      "and bypass RLS on the tables they read: "
                      + ", ".join(v.qname.short for v in bypassing[:8])
                      + (" (set security_invoker = true)" if catalog.major >= 15 else
                         " (PostgreSQL 15+ offers security_invoker)")))
    definer = [f for f in catalog.functions if f.security_definer]
    unpinned = [f for f in definer if not f.pinned_search_path]
    if unpinned:
        add(Diagnosis("warn", "functions", f"{len(unpinned)} SECURITY DEFINER function(s) without "
                      "a fixed search_path: " + ", ".join(f"{f.schema}.{f.name}"
                                                         for f in unpinned[:8])))
    return out


def connection_findings(catalog: Catalog) -> list[Diagnosis]:
    """What the role doctor connected as is, when another role is judged as the
    application's: a superuser or owner is right for migrating, wrong for the application."""
    me = catalog.role(catalog.current_user)
    if me is None:
        return []
    owned = catalog.owned_by(me.name)
    what = [w for w, on in (("a superuser", me.superuser), ("BYPASSRLS", me.bypassrls and not me.superuser),
                            (f"the owner of {len(owned)} table(s)", bool(owned))) if on]
    if not what:
        return [Diagnosis("ok", "connection", f"connected as {me.name!r}: no superuser, no "
                          "BYPASSRLS, owns no table")]
    return [Diagnosis("warn", "connection",
                      f"connected as {me.name!r}, {' and '.join(what)}: RLS does not apply to "
                      "it; fine for running the migration, never for the application (or for "
                      "anything that should see one tenant only)")]


def log_findings(catalog: Catalog) -> list[Diagnosis]:
    """``report --log`` reads the server's log files: they exist only with the logging
    collector on (otherwise the log goes to wherever the server's stderr goes, if anywhere)."""
    collector = catalog.settings.get("logging_collector")
    if collector is None:
        return []
    destination = catalog.settings.get("log_destination", "stderr")
    if collector != "on":
        return [Diagnosis("warn", "logs",
                          f"logging_collector = off (log_destination = {destination}): the "
                          "server writes no log files of its own, so `report --log` has nothing "
                          "to read unless its stderr is captured to a file; observe's samples "
                          "and counters work without it. To enable: logging_collector = on "
                          "(needs a restart)")]
    directory = catalog.settings.get("log_directory", "log")
    return [Diagnosis("ok", "logs", f"logging_collector = on: log files in {directory} "
                      f"({destination}), readable by `report --log`")]


def migration_role_findings(catalog: Catalog, app_role: str | None = None) -> list[Diagnosis]:
    """The risky migration setup that published tutorials show: the role Alembic connects as
    (the connecting role here) has BYPASSRLS and owns the tables, and the application shares
    it or can become it.

    BYPASSRLS is not needed for migrations: an owner bypasses RLS unless the table is
    FORCEd, and the data work of a rollout runs before FORCE. With it, every session that
    holds those credentials (data migrations, scripts, an application that shares them, or
    an application role that is a member and can ``SET ROLE``) reads every tenant's rows."""
    me = catalog.role(catalog.current_user)
    if me is None or me.superuser or not me.bypassrls:
        return []  # a superuser is reported above; no BYPASSRLS, no risk here
    out: list[Diagnosis] = []
    name = quote_ident(me.name)
    remedy = (f"Run migrations as the owner without BYPASSRLS (ALTER ROLE {name} "
              "NOBYPASSRLS) and the application as a separate role that owns nothing (README: "
              "Migrations without BYPASSRLS)")
    owned = catalog.owned_by(me.name)
    if app_role is not None and app_role != me.name and (
            me.name in catalog.role_memberships(app_role)):
        out.append(Diagnosis(
            "warn", "migrations",
            f"the application role {app_role!r} is a member of {me.name!r}, which has "
            f"BYPASSRLS: it can SET ROLE {name} and read every tenant's rows. REVOKE "
            f"{name} FROM {quote_ident(app_role)}; {remedy}"))
    if owned:
        shared = " and the application connects as it too" if app_role == me.name else ""
        out.append(Diagnosis(
            "warn", "migrations",
            f"the migration role {me.name!r} has BYPASSRLS and owns {len(owned)} table(s)"
            f"{shared}: anything run with its credentials sees every tenant's rows, and "
            "BYPASSRLS is not needed (an owner already bypasses RLS unless the table is "
            f"FORCEd; backfills run before FORCE). {remedy}"))
    return out
