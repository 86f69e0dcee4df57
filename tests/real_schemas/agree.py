"""Where ``init``'s playbook and the engineer's committed one disagree, table by table.

Not a test module: :func:`disagreements` is what ``tests/test_real_schemas_runbook.py`` asks.
"""

from __future__ import annotations

from rls_migrate.catalog import QualifiedName
from rls_migrate.playbook import TODO, ParentRef, Playbook, TablePlan


def _link(plan: TablePlan) -> str | None:
    link = plan.owner if plan.strategy == "owned" else plan.parent
    return None if link is None else str(link)


def _option(text: str) -> str:
    """An option of a TODO as the link it names (``a -> t(b)`` or ``a <- t(b)``)."""
    if "<-" in text:
        return str(ParentRef.parse_owner(text))
    return str(ParentRef.parse(text))


def disagreements(generated: Playbook, committed: Playbook) -> list[str]:
    """What init decided otherwise than the engineer. Agreement: the same strategy, column
    and link; or init left a TODO whose options hold the engineer's link (or any decision
    without a link); or init called global what the engineer skips with a note (data no
    tenant reads)."""
    mine = {QualifiedName.parse(n): p for n, p in committed.tables.items()}
    out = []
    for name, gen in generated.tables.items():
        qname = QualifiedName.parse(name)
        plan = mine[qname]
        if gen.strategy == TODO:
            link = _link(plan)
            if link is not None and link not in {_option(o) for o in gen.options}:
                out.append(f"{qname}: init's options {list(gen.options)} lack the engineer's "
                           f"{plan.strategy} {link}")
            continue
        if gen.strategy == "global" and plan.strategy == "skip" and plan.note:
            continue
        same = (gen.strategy == plan.strategy and gen.column == plan.column
                and _link(gen) == _link(plan))
        if not same:
            out.append(f"{qname}: init wrote {gen.strategy} {gen.column or _link(gen) or ''}"
                       f", the engineer {plan.strategy} {plan.column or _link(plan) or ''}")
    return out
