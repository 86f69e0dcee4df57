"""`python -m benchmarks [NAME ...]` (`make bench`): run the benchmarks, each of which writes
benchmarks/results/<name>.json, and collect what they print into
benchmarks/results/summary.md (one section per benchmark, each with its date; running
some benchmarks replaces their sections and keeps the others)."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import io
import os
import platform
import sys
from pathlib import Path

BENCHMARKS = ("plan_scale", "backfill", "index", "policy_overhead", "observe_cost",
              "kill_switch", "zero_downtime", "sync_trigger")
RESULTS = Path(__file__).parent / "results"


class _Tee(io.StringIO):
    def write(self, text: str) -> int:
        if sys.__stdout__ is not None:
            sys.__stdout__.write(text)
        return super().write(text)


def main(names: list[str]) -> None:
    chosen = names or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(BENCHMARKS)}")
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
               f"{sys.version.split()[0]}")
    # A benchmark run alone replaces its own section; the others stay as they were.
    sections = _sections(RESULTS / "summary.md")
    for name in chosen:
        print(f"== {name}", flush=True)
        out = _Tee()
        with contextlib.redirect_stdout(out):
            importlib.import_module(f"benchmarks.{name}").main()
        table = [line for line in out.getvalue().splitlines()
                 if line.startswith("|") or not line.startswith("{")]
        sections[name] = (f"## {name}\n\n{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine}\n\n"
                          + "\n".join(table).strip("\n") + "\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "summary.md").write_text("# Benchmark summary\n\n" + "\n".join(
        sections[name] for name in BENCHMARKS if name in sections))
    print(f"wrote {RESULTS / 'summary.md'}")


def _sections(path: Path) -> dict[str, str]:
    """The ``## name`` sections of an earlier summary."""
    if not path.exists():
        return {}
    found: dict[str, str] = {}
    for chunk in path.read_text().split("\n## ")[1:]:
        name = chunk.split("\n", 1)[0].strip()
        if name in BENCHMARKS:
            found[name] = "## " + chunk.rstrip("\n") + "\n"
    return found


if __name__ == "__main__":
    main(sys.argv[1:])
