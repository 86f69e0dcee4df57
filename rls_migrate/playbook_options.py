"""The playbook's ``options:``: lock and statement timeouts, retries and backoff, and the
backfill, observe, index and enforce settings, with their defaults and bounds (durations
read as ``100ms``, ``2s``, ``5min`` or milliseconds). :mod:`rls_migrate.playbook` holds them
under :attr:`~rls_migrate.playbook.Playbook.options` and re-exports them."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)?\s*$")
_UNITS_MS = {"ms": 1.0, "s": 1000.0, "min": 60000.0, "m": 60000.0, "h": 3600000.0, None: 1.0}


def parse_duration_ms(value: Any) -> Any:
    """``100ms``, ``2s``, ``5min``, or a bare number of milliseconds."""
    if isinstance(value, bool):
        return value  # let pydantic reject it
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"expected a duration like 100ms, 2s or 5min, got {value!r}")
        return float(match.group(1)) * _UNITS_MS[match.group(2)]
    return value


DurationMs = Annotated[float, BeforeValidator(parse_duration_ms), Field(ge=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackfillOptions(Strict):
    batch_target: DurationMs = Field(default=200.0, description="target time per batch")
    batch_min_rows: int = Field(default=100, ge=1)
    batch_max_rows: int = Field(default=50_000, ge=1)
    batch_start_rows: int = Field(default=1_000, ge=1)
    pause: DurationMs = Field(default=0.0, description="pause between batches")
    max_replica_lag: DurationMs | None = Field(
        default=None, description="pause while a replica's replay lag exceeds this")
    user_triggers: Literal["skip", "fire"] = Field(
        default="skip",
        description="skip: user triggers (updated_at...) do not fire for backfill updates "
                    "(session_replication_role = replica in each batch); fire: they do")
    orphans: Literal["stop", "skip"] = Field(
        default="stop", description="rows whose parent is gone: stop, or skip and report")


class EnforceOptions(Strict):
    order: tuple[str, ...] = Field(default=(), description="tables first, in this order")
    pause_between_tables: DurationMs = 0.0
    force_rls: bool = Field(default=False, description="FORCE ROW LEVEL SECURITY (owner too)")
    baseline: Literal["keep", "drop"] = Field(
        default="drop", description="the permissive USING (true) baseline after enforcement")
    report_window: DurationMs = Field(
        default=86_400_000.0, description="the clean-report window the gate checks")


class ObserveOptions(Strict):
    capture_parameters: int = Field(
        default=1024, ge=0, le=1_048_576,
        description="bytes of each bound parameter the server logs with a recorded statement "
                    "(log_parameter_max_length_on_error for the application role; 0: off). "
                    "On by default: a statement sent with parameters cannot be replayed "
                    "without them, and the gate refuses what it cannot confirm. The values "
                    "stay in the server log; report output redacts them")
    replay_samples: int = Field(
        default=5, ge=1, le=100,
        description="distinct parameter sets of a group that report --confirm replays")
    replay_timeout: DurationMs = Field(
        default=5_000.0, description="statement_timeout of each replayed statement")
    replay_writes: Literal["rollback", "never"] = Field(
        default="rollback",
        description="rollback: a recorded INSERT/UPDATE/DELETE is replayed in a transaction "
                    "that is always rolled back (on the primary, under lock_timeout); never: "
                    "such statements stay unconfirmable")
    logs: tuple[str, ...] = Field(
        default=(), description="server log files (globs) report and the enforce gate read "
                                "for parameters and for records of read-only transactions")


class IndexOptions(Strict):
    concurrency: int = Field(default=1, ge=1, le=8)
    tenant_index: Literal["auto", "tenant", "tenant_pk"] = "auto"
    twin_min_scans: int = Field(
        default=1, ge=0, description="twin an existing index used at least this often")
    tenant_statistics: bool = Field(
        default=True,
        description="CREATE STATISTICS (dependencies) on each link to a tenant parent and the "
                    "tenant column, then ANALYZE: without them the planner multiplies the "
                    "policy's selectivity with the link's and misplans legacy joins")
    tenant_foreign_keys: bool = Field(
        default=False,
        description="UNIQUE (tenant, id) on parents and composite foreign keys (tenant, "
                    "parent_id) -> parent (tenant, id): a child's tenant always equals its "
                    "parent's")
    tenant_primary_keys: bool = Field(
        default=False,
        description="PRIMARY KEY (tenant, id) on every tenant table, with the foreign keys "
                    "that reference it re-pointed to the composite key (what Citus needs): "
                    "built concurrently, swapped in one short transaction")
    sync_triggers: Literal["keep", "watch", "drop"] = Field(
        default="keep",
        description="add-column's sync triggers: keep; watch (count rows that arrive without "
                    "the tenant); drop (once the watch proves the application writes it)")
    sync_watch_min: DurationMs = Field(
        default=3_600_000.0,
        description="drop refuses before the watch has run this long")


class Options(Strict):
    lock_timeout: DurationMs = Field(default=100.0, description="for every strong lock")
    statement_timeout: DurationMs = Field(default=0.0, description="0: none (CIC can be long)")
    ddl_statement_timeout: DurationMs = Field(default=5_000.0)
    retries: int = Field(default=30, ge=0)
    backoff_initial: DurationMs = 50.0
    backoff_max: DurationMs = 5_000.0
    backfill: BackfillOptions = BackfillOptions()
    index: IndexOptions = IndexOptions()
    enforce: EnforceOptions = EnforceOptions()
    observe: ObserveOptions = ObserveOptions()
