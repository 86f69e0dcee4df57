"""The backfill's batch sizer: pure arithmetic on measured batch times (no server needed).

The costs fed in are the ones measured on the sample's ``issues`` table (200,000 rows, two
random-order secondary indexes freshly built), batch by batch: about 10 µs a row for the
first 4,000 rows updated, then 20, 25, 31, and 45-49 µs while the indexes' leaf pages fill
up and split (rows 20,000-32,000), 25, then 12. A sizer that doubles into that stretch makes
one 500 ms batch out of a 200 ms target.
"""

from __future__ import annotations

from collections.abc import Callable

from rls_migrate.playbook import BackfillOptions, Options
from rls_migrate.stages.backfill_runner import _Sizer


def _options(**backfill: object) -> Options:
    return Options(backfill=BackfillOptions(**backfill))  # type: ignore[arg-type]


def _issues_us_per_row(done: int) -> float:
    for bound, cost in ((4_000, 10.0), (8_000, 20.0), (13_000, 25.0), (20_000, 31.0),
                        (28_000, 49.0), (32_000, 45.0), (40_000, 25.0)):
        if done < bound:
            return cost
    return 12.0


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
    assert max(durations) <= 200, [round(d) for d in durations]
    # ... and batches grow back to about the target (aimed at 80 % of it) once rows are
    # cheap again.
    assert 140 <= min(durations[-5:-1]) <= 200, [round(d) for d in durations]


def test_grows_by_half_at_most() -> None:
    sizer = _Sizer(_options(batch_start_rows=1_000), uses_ctid=False)
    sizer.adapt(1_000, 1.0)  # absurdly fast: would want 200,000 keys
    assert sizer.size == 1_500
    sizer.adapt(1_500, 1.0)
    assert sizer.size == 2_250


def test_a_slower_batch_replaces_the_estimate_and_the_next_is_expected_slower_still() -> None:
    sizer = _Sizer(_options(batch_start_rows=10_000), uses_ctid=False)
    sizer.adapt(10_000, 50.0)  # 200 keys/ms: wants 32,000 (80 % of 200 ms), grows to 15,000
    assert sizer.size == 15_000
    sizer.adapt(15_000, 100.0)  # 150 keys/ms: 3/4 of the batch before, so 3/4 of that next
    assert sizer.size == 18_000  # 112.5 keys/ms x 160 ms
    sizer.adapt(18_000, 720.0)  # 25 keys/ms, a sixth: expect at most half of it again
    assert sizer.size == 2_000  # 12.5 keys/ms x 160 ms
    sizer.adapt(2_000, 80.0)  # 25 keys/ms, as fast as the last: the estimate moves half-way
    assert sizer.size == 3_000  # 18.75 keys/ms x 160 ms, at most 1.5x the size


def test_steady_noise_keeps_batches_near_the_aim() -> None:
    sizer = _Sizer(_options(), uses_ctid=False)
    durations = []
    for step in range(200):
        ms = sizer.size * 0.007 * (0.85 if step % 3 else 1.15)  # 7 µs a row, +-15 %
        durations.append(ms)
        sizer.adapt(sizer.size, ms)
    settled = durations[20:]
    assert 130 <= sum(settled) / len(settled) <= 170, [round(d) for d in settled[:20]]
    assert max(settled) <= 220


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
