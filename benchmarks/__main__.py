"""`python -m benchmarks [NAME ...]` (`make bench`): run the benchmarks, each of which writes
benchmarks/results/<name>.json, and collect what they print into
benchmarks/results/summary.md."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import io
import os
import platform
import sys
from pathlib import Path

BENCHMARKS = ("plan_scale", "backfill", "index", "policy_overhead", "kill_switch",
              "zero_downtime")
RESULTS = Path(__file__).parent / "results"


class _Tee(io.StringIO):
    def write(self, text: str) -> int:
        sys.__stdout__.write(text)
        return super().write(text)


def main(names: list[str]) -> None:
    chosen = names or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(BENCHMARKS)}")
    sections = [f"# Benchmark summary\n\n{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
                f"{platform.machine()}, {os.cpu_count()} cores, Python "
                f"{sys.version.split()[0]}\n"]
    for name in chosen:
        print(f"== {name}", flush=True)
        out = _Tee()
        with contextlib.redirect_stdout(out):
            importlib.import_module(f"benchmarks.{name}").main()
        table = [line for line in out.getvalue().splitlines()
                 if line.startswith("|") or not line.startswith("{")]
        sections.append(f"## {name}\n\n" + "\n".join(table) + "\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "summary.md").write_text("\n".join(sections))
    print(f"wrote {RESULTS / 'summary.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
