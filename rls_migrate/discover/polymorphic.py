"""Polymorphic references: the parent table is chosen per row (Rails' ``<x>_type`` +
``<x>_id``, Django's generic relations)."""

from __future__ import annotations

from collections.abc import Mapping

from rls_migrate.catalog import Column

MAX_POLYMORPHIC_OPTIONS = 8


def polymorphic_pairs(columns: Mapping[str, Column]) -> list[tuple[str, Column]]:
    """(type column, id column) pairs: Rails' ``<x>_type`` + ``<x>_id``; Django's
    ``content_type_id`` + ``object_id`` (or ``object_pk``), also prefixed
    (``<x>_content_type_id`` + ``<x>_object_id`` or ``<x>_id``)."""
    pairs: list[tuple[str, Column]] = []
    for name in columns:
        if name.endswith("content_type_id"):
            prefix = name.removesuffix("content_type_id")
            names = [prefix + "object_id", prefix + "object_pk"]
            if prefix.rstrip("_"):
                names.append(prefix.rstrip("_") + "_id")
        elif name.endswith("_type"):
            names = [name.removesuffix("_type") + "_id"]
        else:
            continue
        id_col = next((columns[n] for n in names if n in columns), None)
        if id_col is not None:
            pairs.append((name, id_col))
    return pairs
