"""A realistic, deterministic multi-tenant SaaS database for tests, the demo and benchmarks.

The tenant root is ``accounts`` (key ``accounts.id bigint``). Around it sit the shapes a real
rollout meets:

* tables that carry the key (``users``, ``projects``, ``labels`` and the partitioned
  ``events``);
* tables that reach it through foreign-key hops: ``issues`` (1 hop), ``comments`` (2 hops, the
  biggest table, threaded through a self-reference), ``attachments`` (3 hops, uuid-keyed),
  ``issue_labels`` (a join table with a composite key; shortest path via ``labels``) and
  ``"Project Notes"`` (a name that needs quoting, with mixed-case columns);
* global reference data (``countries``);
* a table with neither primary key nor foreign key, holding orphan rows (``audit_log``: its
  ``issue_id`` sometimes names an issue that was deleted);
* a plain (not ``security_invoker``) view ``open_issues``, ``updated_at`` triggers, a global
  unique constraint on ``users.email``, and the roles ``app_user`` (the application: no
  superuser, no ``BYPASSRLS``, owns nothing) and ``app_admin`` (admin tools).

The same ``(scale, seed)`` always gives the same rows (``random.Random(seed)``, fixed
timestamps, uuids drawn from the generator); row counts depend on ``scale`` only
(:func:`row_counts`). Rows are loaded with ``COPY``. ``scale=1`` gives 20 accounts and
10,000 comments; ``scale=100`` gives 1,000,000 comments.

Example::

    from rls_migrate import samples

    counts = samples.load(dsn, scale=0.2, seed=42)   # a fresh, empty database
"""

from __future__ import annotations

import itertools
import json
import random
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

import psycopg
from psycopg import sql

from rls_migrate.sample_shape import (
    _COUNTRIES,
    ADMIN_ROLE,
    APP_ROLE,
    DERIVED_TABLES,
    DIRECT_TABLES,
    EVENT_PARTITIONS,
    GLOBAL_TABLES,
    HINT_TABLES,
    SAMPLE_TABLES,
    SCHEMA,
    TENANT_KEY,
    TENANT_ROOT,
    VIEWS,
    Conn,
    _labels_per_issue,
    _sizes,
    create_schema,
    ensure_roles,
    row_counts,
)

__all__ = [
    "ADMIN_ROLE",
    "APP_ROLE",
    "DERIVED_TABLES",
    "DIRECT_TABLES",
    "EVENT_PARTITIONS",
    "GLOBAL_TABLES",
    "HINT_TABLES",
    "SAMPLE_TABLES",
    "SCHEMA",
    "TENANT_KEY",
    "TENANT_ROOT",
    "VIEWS",
    "create_schema",
    "ensure_roles",
    "load",
    "load_data",
    "row_counts",
]

# --------------------------------------------------------------------------- vocabulary

_PLANS: Final = ("free", "starter", "pro", "enterprise")
_PLAN_WEIGHTS: Final = (0.4, 0.3, 0.2, 0.1)
_COMPANY_A: Final = ("Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli",
                     "Vandelay", "Soylent", "Cyberdyne", "Tyrell", "Wonka", "Aperture",
                     "Gringotts", "Monarch", "Oscorp", "Pied Piper", "Massive Dynamic")
_COMPANY_B: Final = ("Labs", "Industries", "Systems", "Corp", "Group", "Analytics",
                     "Robotics", "Foods", "Logistics", "Software", "Partners", "Health")
_FIRST: Final = ("Ada", "Alan", "Barbara", "Brian", "Carol", "Dennis", "Edsger", "Frances",
                 "Grace", "Guido", "Hedy", "Ken", "Linus", "Margaret", "Niklaus", "Radia",
                 "Rob", "Sophie", "Tim", "Yukihiro", "Anita", "Bjarne", "Donald", "Leslie")
_LAST: Final = ("Lovelace", "Turing", "Liskov", "Kernighan", "Ritchie", "Dijkstra", "Allen",
                "Hopper", "Rossum", "Lamarr", "Thompson", "Torvalds", "Hamilton", "Wirth",
                "Perlman", "Pike", "Wilson", "Berners-Lee", "Matsumoto", "Borg", "Knuth",
                "Stroustrup", "Lamport", "Goldberg")
_PROJECT_WORDS: Final = ("Apollo", "Billing", "Checkout", "Dashboard", "Edge", "Falcon",
                         "Gateway", "Helix", "Ingest", "Jupiter", "Kite", "Ledger", "Mobile",
                         "Nova", "Onboarding", "Payments", "Quartz", "Search", "Telemetry")
_LABELS: Final = ("bug", "feature", "docs", "urgent", "ux", "backend")
_STATUSES: Final = ("open", "in_progress", "review", "closed")
_STATUS_WEIGHTS: Final = (0.35, 0.2, 0.1, 0.35)
_WORDS: Final = ("the", "a", "build", "fails", "when", "login", "page", "timeout", "crash",
                 "slow", "query", "button", "missing", "after", "deploy", "customer",
                 "reports", "error", "export", "csv", "invoice", "wrong", "total", "mobile",
                 "layout", "broken", "cannot", "save", "settings", "flaky", "test", "retry",
                 "cache", "stale", "data", "please", "fix", "thanks", "merged", "reproduce")
_EVENT_KINDS: Final = ("login", "logout", "api_call", "export", "invite", "settings_change")
_AUDIT_ACTIONS: Final = ("created", "updated", "status_changed", "assigned", "commented")
_EXTENSIONS: Final = ("png", "pdf", "txt", "log", "csv", "jpg", "zip")

_ACCOUNTS_START: Final = datetime(2024, 1, 1, tzinfo=UTC)
_ISSUES_START: Final = datetime(2025, 1, 1, tzinfo=UTC)
_EVENTS_START: Final = datetime(2026, 1, 1, tzinfo=UTC)
_EVENTS_END: Final = datetime(2026, 7, 1, tzinfo=UTC)
_YEAR: Final = 365 * 86_400

# --------------------------------------------------------------------------- data


def _ts(seconds: float, start: datetime) -> datetime:
    return start + timedelta(seconds=int(seconds))


def _spread(rng: random.Random, n: int, parents: int, cum_weights: Sequence[float]) -> list[int]:
    """``n`` parent indexes (0-based): each parent once first (while ``n`` allows), the rest
    drawn by weight."""
    covered = list(range(min(n, parents)))
    rng.shuffle(covered)
    rest = rng.choices(range(parents), cum_weights=cum_weights, k=n - len(covered))
    return covered + rest


def _words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(_WORDS, k=rng.randint(low, high)))


def _copy(conn: Conn, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(SCHEMA, table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    count = 0
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


class _Generator:
    """Draws the rows of every table, in load order, from one ``random.Random``; keeps only
    the compact facts children need (parent ids, owners, timestamps)."""

    def __init__(self, scale: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.size = _sizes(scale)
        rng = self.rng
        accounts = self.size["accounts"]
        # Tenant sizes are skewed: a few big customers, a long tail.
        weights = [rng.lognormvariate(0.0, 1.2) for _ in range(accounts)]
        self.account_cum = list(itertools.accumulate(weights))
        self.account_created: list[int] = []  # seconds after _ACCOUNTS_START, by index
        self.project_account: list[int] = []  # account id, by project index
        self.project_cum: list[float] = []
        self.issue_ids: list[int] = []  # live issue ids, ascending
        self.issue_account: dict[int, int] = {}
        self.issue_created: dict[int, int] = {}  # seconds after _ISSUES_START
        self.deleted_issue_ids: list[int] = []
        self.max_issue_id = 0

    def countries(self) -> Iterator[tuple[str, str]]:
        yield from _COUNTRIES

    def accounts(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        for account_id in range(1, self.size["accounts"] + 1):
            created = rng.randrange(_YEAR)
            self.account_created.append(created)
            name = f"{rng.choice(_COMPANY_A)} {rng.choice(_COMPANY_B)} {account_id}"
            plan = rng.choices(_PLANS, weights=_PLAN_WEIGHTS)[0]
            country = rng.choice(_COUNTRIES)[0]
            yield account_id, name, plan, country, _ts(created, _ACCOUNTS_START)

    def users(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        owners = _spread(rng, self.size["users"], self.size["accounts"], self.account_cum)
        for user_id, owner in enumerate(owners, start=1):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            email = f"{first.lower()}.{last.lower()}.{user_id}@tenant{owner + 1}.example.com"
            created = _ts(self.account_created[owner] + rng.randrange(_YEAR), _ACCOUNTS_START)
            updated = created + timedelta(seconds=rng.randrange(90 * 86_400))
            yield user_id, owner + 1, email, f"{first} {last}", created, updated

    def labels(self) -> Iterator[tuple[int, int, str]]:
        label_id = 0
        for account_id in range(1, self.size["accounts"] + 1):
            for name in _LABELS:
                label_id += 1
                yield label_id, account_id, name

    def projects(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        owners = _spread(rng, self.size["projects"], self.size["accounts"], self.account_cum)
        weights = []
        for project_id, owner in enumerate(owners, start=1):
            self.project_account.append(owner + 1)
            weights.append(rng.lognormvariate(0.0, 1.0))
            name = f"{rng.choice(_PROJECT_WORDS)} {rng.choice(_PROJECT_WORDS)}"
            created = _ts(self.account_created[owner] + rng.randrange(_YEAR), _ACCOUNTS_START)
            yield project_id, owner + 1, name, created
        self.project_cum = list(itertools.accumulate(weights))

    def issues(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        live, deleted = self.size["issues"], self.size["deleted_issues"]
        total = live + deleted
        self.max_issue_id = total
        # Deleted issues leave gaps in the id sequence (and orphans in audit_log).
        gone = set(rng.sample(range(1, total + 1), deleted))
        self.deleted_issue_ids = sorted(gone)
        self.issue_ids = [i for i in range(1, total + 1) if i not in gone]
        projects = _spread(rng, live, self.size["projects"], self.project_cum)
        for issue_id, project in zip(self.issue_ids, projects, strict=True):
            created = rng.randrange(int(1.5 * _YEAR))
            self.issue_account[issue_id] = self.project_account[project]
            self.issue_created[issue_id] = created
            status = rng.choices(_STATUSES, weights=_STATUS_WEIGHTS)[0]
            updated = created + rng.randrange(30 * 86_400)
            yield (issue_id, project + 1, _words(rng, 3, 8), status,
                   _ts(created, _ISSUES_START), _ts(updated, _ISSUES_START))

    def issue_labels(self) -> Iterator[tuple[int, int]]:
        rng = self.rng
        per_account = len(_LABELS)
        for position, issue_id in enumerate(self.issue_ids):
            first_label = (self.issue_account[issue_id] - 1) * per_account + 1
            for offset in sorted(rng.sample(range(per_account), _labels_per_issue(position))):
                yield issue_id, first_label + offset

    def comments(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        issues = self.issue_ids
        cum = list(itertools.accumulate(rng.expovariate(1.0) for _ in issues))
        targets = _spread(rng, self.size["comments"], len(issues), cum)
        latest: dict[int, int] = {}  # issue id -> its latest comment id
        clock = dict(self.issue_created)  # issue id -> time of its latest comment
        for comment_id, index in enumerate(targets, start=1):
            issue_id = issues[index]
            previous = latest.get(issue_id)
            parent = previous if previous is not None and rng.random() < 0.35 else None
            created = clock[issue_id] + 60 + int(rng.expovariate(1 / 21_600))
            clock[issue_id] = created
            latest[issue_id] = comment_id
            yield comment_id, issue_id, parent, _words(rng, 4, 24), _ts(created, _ISSUES_START)

    def attachments(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        comments = self.size["comments"]
        for _ in range(self.size["attachments"]):
            ident = uuid.UUID(int=rng.getrandbits(128), version=4)
            comment_id = rng.randrange(1, comments + 1)
            stem = rng.choice(_WORDS)
            filename = f"{stem}-{rng.randrange(1000)}.{rng.choice(_EXTENSIONS)}"
            yield ident, comment_id, filename, int(rng.lognormvariate(11.0, 1.5)) + 1

    def events(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        n = self.size["events"]
        span = int((_EVENTS_END - _EVENTS_START).total_seconds())
        times = sorted(rng.randrange(span) for _ in range(n))
        owners = _spread(rng, n, self.size["accounts"], self.account_cum)
        for event_id, (owner, at) in enumerate(zip(owners, times, strict=True), start=1):
            kind = rng.choice(_EVENT_KINDS)
            payload = json.dumps(
                {
                    "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
                    "ok": rng.random() < 0.97,
                    "ms": rng.randrange(1, 2_000),
                },
                sort_keys=True,
            )
            yield event_id, owner + 1, kind, payload, _ts(at, _EVENTS_START)

    def audit_log(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        n, orphans = self.size["audit_log"], self.size["audit_orphans"]
        orphan_rows = set(rng.sample(range(n), orphans))
        deleted = self.deleted_issue_ids
        for row in range(n):
            if row in orphan_rows:
                # An issue deleted long ago: its audit trail stayed behind.
                issue_id = rng.choice(deleted)
                action = rng.choice(("created", "updated", "deleted"))
                at = rng.randrange(int(1.5 * _YEAR))
            else:
                issue_id = self.issue_ids[rng.randrange(len(self.issue_ids))]
                action = rng.choice(_AUDIT_ACTIONS)
                at = self.issue_created[issue_id] + rng.randrange(60 * 86_400)
            yield issue_id, action, _ts(at, _ISSUES_START)

    def project_notes(self) -> Iterator[tuple[Any, ...]]:
        rng = self.rng
        n, projects = self.size["Project Notes"], self.size["projects"]
        for note_id, project in enumerate(_spread(rng, n, projects, self.project_cum), 1):
            yield note_id, project + 1, _words(rng, 5, 30)


_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "countries": ("code", "name"),
        "accounts": ("id", "name", "plan", "country_code", "created_at"),
        "users": ("id", "account_id", "email", "name", "created_at", "updated_at"),
        "projects": ("id", "account_id", "name", "created_at"),
        "labels": ("id", "account_id", "name"),
        "issues": ("id", "project_id", "title", "status", "created_at", "updated_at"),
        "issue_labels": ("issue_id", "label_id"),
        "comments": ("id", "issue_id", "parent_id", "body", "created_at"),
        "attachments": ("id", "comment_id", "filename", "size_bytes"),
        "events": ("id", "account_id", "kind", "payload", "created_at"),
        "audit_log": ("issue_id", "action", "at"),
        "Project Notes": ("id", "projectId", "Body"),
    }
)

_SEQUENCES: Final[tuple[tuple[str, str], ...]] = (
    ("accounts", "id"),
    ("users", "id"),
    ("projects", "id"),
    ("labels", "id"),
    ("issues", "id"),
    ("comments", "id"),
    ("events", "id"),
    ("Project Notes", "id"),
)


def load_data(conn: Conn, scale: float = 1.0, seed: int = 42) -> dict[str, int]:
    """Fill the tables :func:`create_schema` made with ``COPY``, move every id sequence past
    the ids written, and ``ANALYZE``. The same ``(scale, seed)`` always writes the same rows.
    Returns the number of rows written per table (equal to :func:`row_counts`)."""
    gen = _Generator(scale, seed)
    sources: dict[str, Iterable[Sequence[Any]]] = {
        "countries": gen.countries(),
        "accounts": gen.accounts(),
        "users": gen.users(),
        "projects": gen.projects(),
        "labels": gen.labels(),
        "issues": gen.issues(),
        "issue_labels": gen.issue_labels(),
        "comments": gen.comments(),
        "attachments": gen.attachments(),
        "events": gen.events(),
        "audit_log": gen.audit_log(),
        "Project Notes": gen.project_notes(),
    }
    counts: dict[str, int] = {}
    with conn.transaction():
        for table in SAMPLE_TABLES:
            # The generators are lazy and share one random.Random: consuming them in load
            # order is what makes the data deterministic.
            counts[table] = _copy(conn, table, _COLUMNS[table], sources[table])
        last_ids = {table: counts[table] for table, _ in _SEQUENCES}
        last_ids["issues"] = gen.max_issue_id  # deleted issues used ids too
        for table, column in _SEQUENCES:
            conn.execute(
                "SELECT setval(pg_get_serial_sequence(%s, %s), %s)",
                [sql.Identifier(SCHEMA, table).as_string(conn), column, last_ids[table]],
            )
        conn.execute(
            sql.SQL("ANALYZE {}").format(
                sql.SQL(", ").join(sql.Identifier(SCHEMA, t) for t in SAMPLE_TABLES)
            )
        )
    return counts


def load(dsn: str, scale: float = 1.0, seed: int = 42) -> dict[str, int]:
    """Create the sample schema, roles and grants in the (fresh, empty) database at ``dsn``
    and load it (:func:`create_schema` then :func:`load_data`), in one transaction. Returns
    the row count of each table."""
    _sizes(scale)  # a bad scale fails before anything is created
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Roles first, in their own short transactions: they are cluster-wide.
        ensure_roles(conn)
    with psycopg.connect(dsn) as conn:
        create_schema(conn)
        counts = load_data(conn, scale, seed)
        conn.commit()
    return counts
