"""The sample database's shape: its names (tables, roles, partitions, views), its sizes at a
scale (:func:`row_counts`), its reference data, and the DDL that creates it
(:func:`create_schema`, :func:`ensure_roles`). :mod:`rls_migrate.samples` fills it with
rows and re-exports all of it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql

# --------------------------------------------------------------------------- public constants

SCHEMA: Final = "public"
"""The schema every sample object lives in."""

TENANT_ROOT: Final = "accounts"
"""The tenant table; its primary key ``id`` (bigint) is the tenant key."""

TENANT_KEY: Final = "id"
"""The tenant key column of :data:`TENANT_ROOT`."""

SAMPLE_TABLES: Final[tuple[str, ...]] = (
    "countries",
    "accounts",
    "users",
    "projects",
    "labels",
    "issues",
    "issue_labels",
    "comments",
    "attachments",
    "events",
    "audit_log",
    "Project Notes",
)
"""Every sample table, parents before children (the load order). Partitions of ``events``
are not listed (see :data:`EVENT_PARTITIONS`)."""

DIRECT_TABLES: Final[tuple[str, ...]] = ("users", "projects", "labels", "events")
"""Tables that carry the tenant key (``account_id``) themselves."""

DERIVED_TABLES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "issues": ("projects",),
        "comments": ("issues", "projects"),
        "attachments": ("comments", "issues", "projects"),
        "issue_labels": ("labels",),
        "Project Notes": ("projects",),
    }
)
"""Tables that reach the tenant through foreign keys: the tables on the shortest (and only
shortest) path, nearest first, ending at a direct table."""

GLOBAL_TABLES: Final[tuple[str, ...]] = ("countries",)
"""Reference data shared by every tenant."""

HINT_TABLES: Final[tuple[str, ...]] = ("audit_log",)
"""Tables that reach no tenant by foreign key although they hold tenant data
(``audit_log.issue_id`` has no FK and no primary key): a playbook hint must say how."""

EVENT_PARTITIONS: Final[tuple[str, ...]] = tuple(f"events_2026_{m:02d}" for m in range(1, 7))
"""The monthly partitions of ``events`` (January to June 2026)."""

VIEWS: Final[tuple[str, ...]] = ("open_issues",)
"""Views over sample tables (plain, not ``security_invoker``)."""

APP_ROLE: Final = "app_user"
"""The application role: LOGIN, not superuser, no BYPASSRLS, owns nothing."""

ADMIN_ROLE: Final = "app_admin"
"""A second login role, for admin tools, with the same grants."""

# --------------------------------------------------------------------------- reference data

_COUNTRIES: Final[tuple[tuple[str, str], ...]] = (
    ("AR", "Argentina"),
    ("AU", "Australia"),
    ("BR", "Brazil"),
    ("CA", "Canada"),
    ("CH", "Switzerland"),
    ("DE", "Germany"),
    ("ES", "Spain"),
    ("FR", "France"),
    ("GB", "United Kingdom"),
    ("IE", "Ireland"),
    ("IN", "India"),
    ("IT", "Italy"),
    ("JP", "Japan"),
    ("KR", "South Korea"),
    ("MX", "Mexico"),
    ("NL", "Netherlands"),
    ("NZ", "New Zealand"),
    ("SE", "Sweden"),
    ("SG", "Singapore"),
    ("US", "United States"),
)


# --------------------------------------------------------------------------- sizes

_BASE_COUNTS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "accounts": 20,
        "users": 300,
        "projects": 100,
        "labels_per_account": 6,
        "issues": 2_000,
        "comments": 10_000,
        "attachments": 1_500,
        "events": 5_000,
        "audit_log": 4_000,
        "Project Notes": 200,
    }
)


def _sizes(scale: float) -> dict[str, int]:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")

    def at(name: str, minimum: int) -> int:
        return max(minimum, round(_BASE_COUNTS[name] * scale))

    accounts = at("accounts", 3)
    projects = at("projects", accounts)
    issues = at("issues", projects)
    audit = at("audit_log", 10)
    orphans = max(3, round(audit * 0.01))
    return {
        "accounts": accounts,
        "users": at("users", accounts),
        "projects": projects,
        "labels": accounts * _BASE_COUNTS["labels_per_account"],
        "issues": issues,
        "deleted_issues": max(2, round(issues * 0.002)),
        "comments": at("comments", issues),
        "attachments": at("attachments", 3),
        "events": at("events", accounts),
        "audit_log": audit,
        "audit_orphans": orphans,
        "Project Notes": at("Project Notes", 3),
    }


def row_counts(scale: float = 1.0) -> dict[str, int]:
    """The number of rows :func:`load_data` writes into each table at ``scale`` (the same for
    every seed), keyed like :data:`SAMPLE_TABLES`."""
    size = _sizes(scale)
    labels_per_issue = _labels_per_issue_total(size["issues"])
    return {
        "countries": len(_COUNTRIES),
        "accounts": size["accounts"],
        "users": size["users"],
        "projects": size["projects"],
        "labels": size["labels"],
        "issues": size["issues"],
        "issue_labels": labels_per_issue,
        "comments": size["comments"],
        "attachments": size["attachments"],
        "events": size["events"],
        "audit_log": size["audit_log"],
        "Project Notes": size["Project Notes"],
    }


def _labels_per_issue(position: int) -> int:
    """How many labels the ``position``-th live issue gets (0, 1, 2 or 3)."""
    return position % 4


def _labels_per_issue_total(issues: int) -> int:
    full, rest = divmod(issues, 4)
    return full * 6 + sum(range(rest))


# --------------------------------------------------------------------------- DDL

_DDL: Final[tuple[LiteralString, ...]] = (
    """
    CREATE TABLE countries (
        code char(2) PRIMARY KEY,
        name text NOT NULL
    )""",
    """
    CREATE TABLE accounts (
        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name text NOT NULL,
        plan text NOT NULL,
        country_code char(2) REFERENCES countries,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    """
    CREATE TABLE users (
        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        account_id bigint NOT NULL REFERENCES accounts,
        email text NOT NULL UNIQUE,
        name text,
        created_at timestamptz,
        updated_at timestamptz
    )""",
    """
    CREATE TABLE projects (
        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        account_id bigint NOT NULL REFERENCES accounts,
        name text,
        created_at timestamptz
    )""",
    "CREATE INDEX projects_created_at_idx ON projects (created_at)",
    """
    CREATE TABLE labels (
        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        account_id bigint NOT NULL REFERENCES accounts,
        name text
    )""",
    """
    CREATE TABLE issues (
        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        project_id bigint NOT NULL REFERENCES projects,
        title text,
        status text,
        created_at timestamptz,
        updated_at timestamptz
    )""",
    "CREATE INDEX issues_created_at_idx ON issues (created_at)",
    "CREATE INDEX issues_project_id_idx ON issues (project_id)",
    """
    CREATE TABLE issue_labels (
        issue_id bigint REFERENCES issues,
        label_id bigint REFERENCES labels,
        PRIMARY KEY (issue_id, label_id)
    )""",
    """
    CREATE TABLE comments (
        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        issue_id bigint NOT NULL REFERENCES issues,
        parent_id bigint REFERENCES comments,
        body text,
        created_at timestamptz
    )""",
    """
    CREATE TABLE attachments (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        comment_id bigint NOT NULL REFERENCES comments,
        filename text,
        size_bytes integer
    )""",
    # Identity columns on partitioned tables need PostgreSQL 17: a plain owned sequence works
    # everywhere.
    "CREATE SEQUENCE events_id_seq",
    """
    CREATE TABLE events (
        id bigint NOT NULL DEFAULT nextval('events_id_seq'),
        account_id bigint NOT NULL REFERENCES accounts,
        kind text,
        payload jsonb,
        created_at timestamptz NOT NULL,
        PRIMARY KEY (id, created_at)
    ) PARTITION BY RANGE (created_at)""",
    "ALTER SEQUENCE events_id_seq OWNED BY events.id",
    """
    CREATE TABLE audit_log (
        issue_id bigint,
        action text NOT NULL,
        at timestamptz NOT NULL
    )""",
    """
    CREATE TABLE "Project Notes" (
        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        "projectId" bigint NOT NULL REFERENCES projects,
        "Body" text
    )""",
    "CREATE VIEW open_issues AS SELECT * FROM issues WHERE status = 'open'",
    """
    CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.updated_at := now();
        RETURN NEW;
    END
    $$""",
    """
    CREATE TRIGGER issues_touch_updated_at BEFORE UPDATE ON issues
        FOR EACH ROW EXECUTE FUNCTION touch_updated_at()""",
    """
    CREATE TRIGGER users_touch_updated_at BEFORE UPDATE ON users
        FOR EACH ROW EXECUTE FUNCTION touch_updated_at()""",
)

Conn = psycopg.Connection[Any]


def _month_bounds() -> Iterator[tuple[str, datetime, datetime]]:
    for index, name in enumerate(EVENT_PARTITIONS):
        start = datetime(2026, index + 1, 1, tzinfo=UTC)
        end = datetime(2026, index + 2, 1, tzinfo=UTC)
        yield name, start, end


def ensure_roles(conn: Conn) -> None:
    """Create :data:`APP_ROLE` (LOGIN NOSUPERUSER NOBYPASSRLS) and :data:`ADMIN_ROLE` (LOGIN)
    unless they exist. Roles are cluster-wide: an existing role is left as it is, and a role
    that another session creates at the same moment is not an error."""
    attributes = {
        APP_ROLE: sql.SQL("LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"),
        ADMIN_ROLE: sql.SQL("LOGIN NOSUPERUSER NOBYPASSRLS"),
    }
    for role, attrs in attributes.items():
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        if exists:
            continue
        with contextlib.suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            with conn.transaction():
                conn.execute(
                    sql.SQL("CREATE ROLE {} {}").format(sql.Identifier(role), attrs)
                )


def create_schema(conn: Conn) -> None:
    """Create every sample object in ``public`` (tables, partitions, indexes, view, trigger
    function and triggers), the roles (:func:`ensure_roles`) and their grants. Runs in the
    connection's transaction (the caller commits) or statement by statement in autocommit.
    The objects are owned by the connected role."""
    ensure_roles(conn)
    with conn.transaction():
        for statement in _DDL:
            conn.execute(statement)
        for name, start, end in _month_bounds():
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF events FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(name),
                    sql.Literal(start.isoformat()),
                    sql.Literal(end.isoformat()),
                )
            )
        relations = [*SAMPLE_TABLES, *EVENT_PARTITIONS, *VIEWS]
        grantees = sql.SQL(", ").join(sql.Identifier(r) for r in (APP_ROLE, ADMIN_ROLE))
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(SCHEMA), grantees)
        )
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {} TO {}").format(
                sql.SQL(", ").join(sql.Identifier(SCHEMA, r) for r in relations), grantees
            )
        )
        conn.execute(
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
                sql.Identifier(SCHEMA), grantees
            )
        )
