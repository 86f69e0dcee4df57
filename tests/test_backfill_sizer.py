"""The backfill's batch sizer: pure arithmetic on measured batch times (no server needed).

The costs fed in are the ones measured on the sample's ``issues`` table (200,000 rows, two
secondary indexes freshly built): about 11 µs a row for the first 8,000 rows updated, 17 µs
up to 16,000, 35-38 µs while the indexes' leaf pages fill up and split (16,000-32,000), then
12-15 µs. A sizer that doubles into that stretch makes one 500 ms batch out of a 200 ms target.
"""

from __future__ import annotations

from collections.abc import Callable

from rls_migrate.playbook import BackfillOptions, Options
from rls_migrate.stages.backfill import _Sizer


def _options(**backfill: object) -> Options:
    return Options(backfill=BackfillOptions(**backfill))  # type: ignore[arg-type]


def _issues_us_per_row(done: int) -> float:
    if done < 8_000:
        return 11.0
    if done < 16_000:
        return 17.0
    if done < 32_000:
        return 37.0
    return 13.0


def _walk(sizer: _Sizer, rows: int, cost: Callable[[int], float]) -> list[float]:
    """Batch durations (ms) of a walk over ``rows`` rows with ``cost(done)`` µs per row."""
    durations, done = [], 0
    while done < rows:
        size = min(sizer.size, rows - done)
        ms = sum(cost(done + i) for i in range(size)) / 1000
        durations.append(ms)
        sizer.adapt(size, ms)
        done += size
    return durations


def test_ramp_up_does_not_overshoot_where_rows_get_dearer() -> None:
    durations = _walk(_Sizer(_options(), uses_ctid=False), 200_000, _issues_us_per_row)
    assert max(durations) <= 300, [round(d) for d in durations]
    # ... and batches grow back to about the target (aimed at 80 % of it) once rows are
    # cheap again.
    assert 140 <= min(durations[-5:-1]) <= 200, [round(d) for d in durations]


def test_grows_by_half_at_most() -> None:
    sizer = _Sizer(_options(batch_start_rows=1_000), uses_ctid=False)
    sizer.adapt(1_000, 1.0)  # absurdly fast: would want 200,000 keys
    assert sizer.size == 1_500
    sizer.adapt(1_500, 1.0)
    assert sizer.size == 2_250


def test_a_slower_batch_replaces_the_estimate_at_once() -> None:
    sizer = _Sizer(_options(batch_start_rows=10_000), uses_ctid=False)
    sizer.adapt(10_000, 50.0)  # 200 keys/ms: wants 32,000 (80 % of 200 ms), grows to 15,000
    assert sizer.size == 15_000
    sizer.adapt(15_000, 300.0)  # 50 keys/ms now
    assert sizer.size == 8_000
    sizer.adapt(8_000, 80.0)  # 100 keys/ms again: only half-way back (75)
    assert sizer.size == 12_000


def test_bounds_and_shrink() -> None:
    sizer = _Sizer(_options(batch_start_rows=500, batch_min_rows=200, batch_max_rows=600),
                   uses_ctid=False)
    sizer.adapt(500, 1.0)
    assert sizer.size == 600
    sizer.adapt(600, 10_000.0)
    assert sizer.size == 200
    assert not sizer.shrink()
    ctid = _Sizer(_options(batch_start_rows=1_000), uses_ctid=True)
    assert ctid.size == 20  # pages, about 50 rows each
    ctid.adapt(20, 1.0)
    assert ctid.size == 30
