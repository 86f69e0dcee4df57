"""`python -m benchmarks`: run every benchmark and print a summary table."""

from __future__ import annotations

from benchmarks import plan_scale

BENCHMARKS = {"plan_scale": plan_scale.main}

if __name__ == "__main__":
    for name, run in BENCHMARKS.items():
        print(f"== {name}")
        run()
