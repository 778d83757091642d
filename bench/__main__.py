"""Run every benchmark: ``python3 -m bench --quick`` (CI smoke sizes) or ``python3 -m bench``."""

from __future__ import annotations

import sys

from . import engines, http_throughput, live, retention_memory, scaleout, timer_lateness, virtual_time, waits_memory

BENCHMARKS = [virtual_time, engines, live, http_throughput, scaleout, waits_memory, timer_lateness, retention_memory]


def main() -> None:
    quick = ["--quick"] if "--quick" in sys.argv[1:] else []
    for benchmark in BENCHMARKS:
        benchmark.main(quick)


if __name__ == "__main__":
    main()
