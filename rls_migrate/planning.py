"""What ``rls-migrate plan`` reads and computes, with the catalog read while the planner's
modules load: on 1,000 tables the read is ~0.2 s, mostly the server's time, which this
process would otherwise spend waiting.

The preflight's scans stay on this thread, after planning: Ctrl-C cancels a scan of a large
table at once (psycopg cancels the query it waits for), and a playbook the planner refuses
is refused before any scan. The catalog read is the only work in the other thread, and
nothing else uses the connection until it is done."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from rls_migrate.catalog import Catalog
from rls_migrate.playbook import Playbook
from rls_migrate.steps import Plan

_LOADED_WHILE_READING = ("rls_migrate.planner", "rls_migrate.preflight", "rls_migrate.render")
"""Modules ``plan`` needs once it has the catalog: imported while the server reads it."""


def read_and_plan(
    conn: psycopg.Connection[Any],
    playbook: Playbook,
    stages: Sequence[str] | None,
    *,
    source: str,
    preflight: bool = True,
) -> tuple[Catalog, Plan]:
    """The catalog and the plan of ``stages`` (all by default), with the preflight's
    findings among its risks unless ``preflight`` is false."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rls-migrate-read") as reader:
        reading = reader.submit(Catalog.load, conn, schemas=playbook.schemas)
        try:
            for module in _LOADED_WHILE_READING:
                importlib.import_module(module)
            catalog = reading.result()
        except BaseException:
            # Ctrl-C while the server still reads: cancel its query, as psycopg does for a
            # query this thread waits on, rather than wait for it (a catalog query can wait
            # on another session's lock: pg_total_relation_size opens the table).
            if not reading.done():
                conn.cancel_safe()
            raise
    from rls_migrate.planner import build_plan
    from rls_migrate.preflight import preflight_risks

    plan = build_plan(catalog, playbook, stages, source=source)
    if preflight:
        plan = dataclasses.replace(
            plan, risks=(*plan.risks, *preflight_risks(conn, catalog, playbook)))
    return catalog, plan
