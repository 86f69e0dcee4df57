"""What the report tells a team to do about a group, by its verdict and by the cause its
statement shows (the causes replay found in real traffic: a child scoped only through its
parent, a non-leakproof filter, ``= ANY`` over a ``smallint[]``, no tenant context)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from rls_migrate.playbook import Playbook
from rls_migrate.replay import CONFIRMED, HARMLESS, UNCONFIRMABLE, Verdict

if TYPE_CHECKING:
    from rls_migrate.stages.common import TenantTable

_ANY = re.compile(r"=\s*ANY\s*\(\s*\$\d+\s*\)", re.I)
_LEAKY = re.compile(r"\b(lower|upper|ILIKE|LIKE|similar\s+to|~\*?|unaccent|to_tsvector)\b", re.I)
_RECURSIVE = re.compile(r"\bWITH\s+RECURSIVE\b", re.I)


def _tenant_index(entry: TenantTable | None) -> str | None:
    if entry is None:
        return None
    for index in entry.table.indexes:
        if index.columns and index.columns[0] == entry.column and index.is_valid:
            return index.name
    return None


def advise(table: str, operation: str, kind: str, statement: str, verdict: Verdict | None,
           entry: TenantTable | None, playbook: Playbook) -> list[str]:
    """One to three sentences a team can act on."""
    setting = playbook.tenant.setting
    column = entry.column if entry is not None else playbook.tenant.column
    out: list[str] = []
    if operation == "write":
        if kind == "no_context":
            out.append(f"writes {table} without a tenant context: set it per transaction "
                       f"(set_config('{setting}', <tenant>, true)) in this code path")
        else:
            out.append(f"writes a row of {table} that belongs to another tenant than the "
                       "context: a cross-tenant write that enforce refuses; fix the tenant "
                       "it writes, or run it as an admin role")
        return out
    name = verdict.verdict if verdict is not None else None
    if name == CONFIRMED:
        if verdict is not None and verdict.reason.startswith("write-truth"):
            out.append(f"when it ran, this code path changed rows of {table} that belong to "
                       "another tenant than the context (or had no context): enforced, it "
                       "changes none of them; fix the ids it is given, set the tenant, or run "
                       "it as an admin role")
            return out
        if kind == "no_context":
            out.append(f"enforced, this code path sees fewer rows of {table} (no tenant set): "
                       f"set the tenant per transaction (set_config('{setting}', <tenant>, "
                       "true)), or give the job an admin role (roles.admin)")
        else:
            out.append(f"enforced, this code path sees other rows of {table} than today: it "
                       "reads another tenant's rows (an IDOR, or a cross-tenant job): fix the "
                       "ids it asks for, or run it as an admin role")
        return out
    if name == UNCONFIRMABLE and verdict is not None:
        out.append(f"not confirmed: {verdict.reason}")
    cause: list[str] = []
    if _ANY.search(statement):
        cause.append("`= ANY($n)` receives the driver's array type (psycopg sends small "
                     "integer lists as smallint[]), which the tenant index cannot use and "
                     "sorts after the policy: write `= ANY($n::bigint[])` (the key's type)")
    if _LEAKY.search(statement):
        cause.append("a non-leakproof filter (lower(), LIKE/ILIKE, a regex) runs after the "
                     f"policy, on every row of {table}")
    if _RECURSIVE.search(statement):
        cause.append(f"a recursive CTE scans {table} beyond this tenant's rows")
    index = _tenant_index(entry)
    lookup = (f" so the scan becomes a lookup in {index}" if index else
              f" (an index leading with {column} turns the scan into a lookup)")
    predicate = (f"add `{table.split('.')[-1]}.{column} = <tenant>` to the statement for "
                 f"every table it reads (the tenant predicate on every table){lookup}")
    if name == HARMLESS:
        out.append("harmless: enforced, it returns the same rows; it reads other tenants' rows "
                   "of the table and drops them later (a join through the parent, a filter, "
                   "a generic plan). To stop paying for that: " + predicate)
    else:
        out.append(predicate)
    out += cause
    return out
