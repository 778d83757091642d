"""Run every benchmark: ``python3 -m bench --quick`` (CI smoke sizes) or ``python3 -m bench``."""

from __future__ import annotations

import sys

from . import (
    cli_startup,
    dashboard,
    engines,
    http_throughput,
    live,
    million,
    retention_memory,
    scaleout,
    scripts,
    sweep,
    timer_lateness,
    virtual_time,
    waits_memory,
)

BENCHMARKS = [cli_startup, virtual_time, engines, million, sweep, live, http_throughput, scaleout, waits_memory,
              timer_lateness, retention_memory, scripts, dashboard]


def main() -> None:
    quick = ["--quick"] if "--quick" in sys.argv[1:] else []
    for benchmark in BENCHMARKS:
        benchmark.main(quick)


if __name__ == "__main__":
    main()
