"""What ``rls-migrate plan`` reads and computes, with the server's work overlapped with this
process's: the catalog is read while the planner's modules load, and the preflight's table
scans run while the plan is computed.

Both reads are mostly the server's time (on 1,000 tables: ~0.2 s for the catalog, one scan
per tenant table for the preflight), time this process would otherwise spend waiting. The
connection is used by one thread at a time: the catalog read ends before the preflight
starts, and nothing else touches the connection until both are done."""

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
    findings among its risks unless ``preflight`` is false. Errors are those of
    :meth:`Catalog.load`, :func:`~rls_migrate.planner.build_plan` (first) and the
    preflight, as when they run one after the other."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rls-migrate-read") as reader:
        reading = reader.submit(Catalog.load, conn, schemas=playbook.schemas)
        for module in _LOADED_WHILE_READING:
            importlib.import_module(module)
        from rls_migrate.planner import build_plan
        from rls_migrate.preflight import preflight_risks

        catalog = reading.result()
        scanning = reader.submit(preflight_risks, conn, catalog, playbook) if preflight else None
        plan = build_plan(catalog, playbook, stages, source=source)
        if scanning is not None:
            plan = dataclasses.replace(plan, risks=(*plan.risks, *scanning.result()))
    return catalog, plan
