"""A playbook against the database it is for: every table, column and role it names must
exist (with suggestions for a typo), and no table may still be undecided (TODO). Planning,
check, verify and the Citus readiness report run this before anything else."""

from __future__ import annotations

from rls_migrate.catalog import Catalog, QualifiedName
from rls_migrate.errors import PlaybookError
from rls_migrate.playbook import TODO, Playbook


def check_against_catalog(playbook: Playbook, catalog: Catalog, source: str = "playbook") -> None:
    """Tables, columns and roles the playbook names must exist; TODOs must be decided."""
    problems: list[str] = []
    todos = [(name, plan) for name, plan in playbook.tables.items() if plan.strategy == TODO]
    if todos:
        # One line per table (and per option): a list a person works through.
        lines = [f"undecided (TODO) tables: {len(todos)}; decide each one in the playbook:"]
        for name, plan in todos:
            lines.append(f"  - {name}: {plan.note or 'decide a strategy'}")
            lines.extend(f"      option: {option}" for option in plan.options)
        problems.append("\n  ".join(lines))

    def need_table(name: str, where: str) -> QualifiedName | None:
        try:
            qname = QualifiedName.parse(name)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            return None
        if qname not in catalog.tables:
            hint = catalog.suggest(name)
            problems.append(f"{where}: no table {qname} in the database"
                            + (f" (did you mean {', '.join(hint)}?)" if hint else ""))
            return None
        return qname

    def need_column(qname: QualifiedName, column: str, where: str) -> None:
        table = catalog.tables[qname]
        if table.column(column) is None:
            import difflib
            hint = difflib.get_close_matches(column, table.column_names, n=3, cutoff=0.5)
            problems.append(f"{where}: table {qname} has no column {column!r}"
                            + (f" (did you mean {', '.join(hint)}?)" if hint else ""))

    root = need_table(playbook.tenant.table, "tenant.table")
    if root:
        need_column(root, playbook.tenant.key, "tenant.key")
    for name, plan in playbook.tables.items():
        where = f"tables.{name}"
        qname = need_table(name, where)
        if qname is None:
            continue
        if plan.column and plan.strategy in ("direct", "root"):
            need_column(qname, plan.column, f"{where}.column")
        link = plan.link
        if link is not None:
            key = "owner" if plan.strategy == "owned" else "parent"
            for col in link.columns:
                need_column(qname, col, f"{where}.{key}")
            parent = need_table(link.table, f"{where}.{key}")
            if parent:
                for col in link.ref_columns:
                    need_column(parent, col, f"{where}.{key}")
                parent_plan = playbook.plan_for(parent)
                if parent_plan is None or parent_plan.strategy in ("global", "skip", TODO):
                    problems.append(
                        f"{where}.{key}: {parent} is not tenant-scoped in this playbook "
                        f"(give it strategy root, direct, derive, hint or owned)")
                elif parent == qname:
                    problems.append(f"{where}.{key}: a table cannot take its tenant from itself")
    for role_field in ("app", "owner"):
        role = getattr(playbook.roles, role_field)
        if role and role not in catalog.roles:
            problems.append(f"roles.{role_field}: no role {role!r} in the database")
    for role in playbook.roles.admin:
        if role not in catalog.roles:
            problems.append(f"roles.admin: no role {role!r} in the database")
    if problems:
        raise PlaybookError(
            f"{source} does not match the database:\n  " + "\n  ".join(problems))
