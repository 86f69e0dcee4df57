"""Reading policy expressions as PostgreSQL prints them (``pg_get_expr``), for the lints.

The text is scanned with quotes respected (``'...'`` literals, ``"..."`` identifiers) and
parentheses tracked, which is enough for what the lints ask: the operands of a top-level
``OR``, whether a ``current_setting(...)`` call sits inside a scalar sub-select (read once
per statement) or not (read for every row), and whether an expression is the enforced
``col = (SELECT <current tenant>)``.

>>> split_top_level("((a = 1) OR (b IS NULL))", "OR")
['(a = 1)', '(b IS NULL)']
>>> setting_read_per_row("(tenant_id = (SELECT current_setting('app.t'::text)))")
False
>>> setting_read_per_row("(tenant_id = (current_setting('app.t'::text))::bigint)")
True
"""

from __future__ import annotations

import re

from rls_migrate.sqltext import scan

_SETTING_CALL = re.compile(r"current_setting\s*\(", re.I)
_SELECT = re.compile(r"\s*SELECT\b", re.I)


def strip_parens(expr: str) -> str:
    """Without the parentheses that wrap the whole expression (as often as they do)."""
    text = expr.strip()
    while text.startswith("(") and text.endswith(")"):
        closes_early = any(ch == ")" and depth == 0 and i < len(text) - 1
                           for i, ch, depth in scan(text))
        if closes_early:
            break
        text = text[1:-1].strip()
    return text


def split_top_level(expr: str, keyword: str) -> list[str]:
    """The operands of ``keyword`` (``OR``, ``AND``) at the top level of ``expr``."""
    text = strip_parens(expr)
    pattern = re.compile(rf"\s{keyword}\s", re.I)
    parts: list[str] = []
    start = 0
    depth_at = {i: depth for i, _, depth in scan(text)}
    for match in pattern.finditer(text):
        if depth_at.get(match.start()) == 0 and match.start() >= start:
            parts.append(text[start:match.start()].strip())
            start = match.end()
    parts.append(text[start:].strip())
    return parts


def setting_read_per_row(expr: str) -> bool:
    """Whether some ``current_setting(...)`` call is outside every scalar sub-select: the
    planner then evaluates it for every row instead of once per statement (an InitPlan)."""
    select_depths: list[int] = []  # depths of the open groups that start with SELECT
    for i, ch, depth in scan(expr):
        while select_depths and select_depths[-1] > depth:
            select_depths.pop()
        if ch == "(" and _SELECT.match(expr, i + 1):
            select_depths.append(depth + 1)
        elif ch in "cC" and _SETTING_CALL.match(expr, i) and not select_depths:
            if i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_."):
                return True
    return False


def reads_setting(expr: str) -> bool:
    return bool(_SETTING_CALL.search(expr))


def admits_missing_context(expr: str) -> bool:
    """A top-level ``OR`` operand that is true when the tenant setting is missing or empty
    (``current_setting(...) IS NULL OR ...``, ``... = ''``): with no context set, every row
    passes."""
    operands = split_top_level(expr, "OR")
    if len(operands) < 2:
        return False
    for operand in operands:
        if not reads_setting(operand):
            continue
        text = re.sub(r"\s+", " ", operand)
        if re.search(r"\bIS NULL\b", text, re.I) or re.search(r"=\s*''(::text)?", text):
            return True
    return False


def is_always_true(expr: str | None) -> bool:
    return expr is not None and strip_parens(expr).lower() == "true"


def calls_toolkit(expr: str | None) -> bool:
    """The expression calls one of the toolkit's functions (observe mode's recorder)."""
    return expr is not None and "rls_migrate." in expr


def is_enforced_match(expr: str | None, column: str, setting: str) -> bool:
    """``col = (SELECT ... current_setting('<setting>' ...) ...)`` and nothing else: the
    enforced tenant policy, as PostgreSQL prints it on every supported version."""
    if expr is None or calls_toolkit(expr):
        return False
    text = strip_parens(expr)
    if len(split_top_level(text, "OR")) > 1 or len(split_top_level(text, "AND")) > 1:
        return False
    eq = [i for i, ch, depth in scan(text) if ch == "=" and depth == 0]
    if len(eq) != 1:
        return False
    left, right = text[: eq[0]].strip(), strip_parens(text[eq[0] + 1:])
    quoted = '"' + column.replace('"', '""') + '"'
    if left not in (column, quoted):
        return False
    literal = "'" + setting.replace("'", "''") + "'"
    return (bool(_SELECT.match(right)) and literal in right
            and not setting_read_per_row(text))
