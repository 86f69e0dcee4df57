"""One module per stage. Each turns (catalog, playbook) into a StagePlan; none executes."""

from __future__ import annotations

from collections.abc import Callable

from rls_migrate.stages import (
    add_column,
    backfill,
    constrain,
    enforce,
    index,
    observe,
    prepare,
    tenant_keys,
)
from rls_migrate.stages.common import PlanContext
from rls_migrate.steps import StagePlan

PLANNERS: dict[str, Callable[[PlanContext], StagePlan]] = {
    "prepare": prepare.plan,
    "add-column": add_column.plan,
    "backfill": backfill.plan,
    "constrain": constrain.plan,
    "index": tenant_keys.extend(index.plan),  # + tenant-leading primary keys, when asked
    "observe": observe.plan,
    "enforce": enforce.plan,
}
