"""Reading SQL text PostgreSQL gives back (index definitions, policy expressions): where each
character stands, outside quoted identifiers and string literals, and how deep in
parentheses."""

from __future__ import annotations

from collections.abc import Iterator


def scan(text: str) -> Iterator[tuple[int, str, int]]:
    """``(position, character, depth)`` of every character outside quoted identifiers and
    string literals (a doubled quote stays inside); ``depth`` counts the parentheses open
    before it, so a closing parenthesis has the depth of its opening one."""
    depth = 0
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == quote:
                if text[i + 1:i + 2] == quote:
                    i += 2
                    continue
                quote = None
        elif ch in "\"'":
            quote = ch
        else:
            if ch == ")":
                depth -= 1
            yield i, ch, depth
            if ch == "(":
                depth += 1
        i += 1
