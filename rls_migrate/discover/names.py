"""Matching names and types: which column looks like a reference to which table's key."""

from __future__ import annotations

import re

from rls_migrate.catalog import Column, QualifiedName
from rls_migrate.discover.model import Path

_INTEGER_OIDS = frozenset({20, 21, 23})  # int8, int2, int4: values compare across them
_IRREGULAR = {"people": "person", "children": "child", "men": "man", "women": "woman",
              "data": "datum", "indices": "index", "media": "medium"}


def norm(name: str) -> str:
    """Compare names ignoring case and separators: ``projectId`` = ``project_id``."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def singular_forms(name: str) -> set[str]:
    """Normalized singular guesses for a table name (``issues`` -> ``issue``,
    ``companies`` -> ``company``, ``addresses`` -> ``address``): all are kept because a
    wrong extra guess costs nothing when a column must also match by type."""
    word = norm(name)
    forms = {word}
    if word in _IRREGULAR:
        forms.add(_IRREGULAR[word])
    if word.endswith("ies") and len(word) > 3:
        forms.add(word[:-3] + "y")
    if word.endswith("es") and len(word) > 2:
        forms.add(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 1:
        forms.add(word[:-1])
    return forms


def reference_names(table: QualifiedName, key: str) -> set[str]:
    """Normalized column names that would reference ``table(key)``: ``issue_id``,
    ``issues_id``, ``issueId``."""
    return {form + norm(key) for form in singular_forms(table.name)}


def compatible(a: Column, b: Column) -> bool:
    return a.type_oid == b.type_oid or (a.type_oid in _INTEGER_OIDS and b.type_oid in _INTEGER_OIDS)


def type_note(col: Column, key: Column) -> str:
    if col.type_oid == key.type_oid:
        return f"name and type ({key.type}) match"
    return f"name matches, type {col.type} is compatible with {key.type}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def path_text(path: Path) -> str:
    if not path:
        return ""
    names = [path[0].table.short] + [hop.ref_table.short for hop in path]
    return " -> ".join(names)
