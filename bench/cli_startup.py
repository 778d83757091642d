"""CLI start-up: how long `harness --help` and `harness validate` take, against `import typer`.

Each command runs in a fresh interpreter (what a user waits for); the baseline, in the same run,
is ``python -c "import typer"``. Reported: the median wall time of N runs, its ratio to the
baseline (targets: ``--help`` within 4x, ``validate`` within 6x), and the peak RSS of the child.

    python3 -m bench.cli_startup           # 15 runs each
    python3 -m bench.cli_startup --quick   # 5 runs each
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ._report import header, row

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "import typer": ["-c", "import typer"],
    "harness --help": ["-m", "harness.cli", "--help"],
    "harness validate": ["-m", "harness.cli", "validate", str(ROOT / "scenarios" / "bots" / "payment.toml"),
                         str(ROOT / "scenarios" / "payment.toml")],
}
TARGETS = {"harness --help": 4.0, "harness validate": 6.0}


def timed(args: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS of the child in bytes) of one fresh interpreter running ``args``."""
    began = time.perf_counter()
    child = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
    seconds = time.perf_counter() - began
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {child.returncode}")
    return seconds, usage.ru_maxrss * 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    runs = 5 if args.quick else 15
    header(f"CLI start-up: median of {runs} fresh interpreters vs `python -c \"import typer\"`")
    row("command", "median s", "× typer", "target", "max RSS MiB", widths=(20, 12, 10, 10, 14))
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    rss: dict[str, int] = {}
    for _ in range(runs):  # interleaved, so a busy moment hits every command alike
        for name, command in COMMANDS.items():
            seconds, peak = timed(command)
            samples[name].append(seconds)
            rss[name] = peak
    baseline = statistics.median(samples["import typer"])
    for name in COMMANDS:
        median = statistics.median(samples[name])
        target = f"≤ {TARGETS[name]:g}×" if name in TARGETS else "baseline"
        row(name, f"{median:.3f}", f"{median / baseline:.1f}", target, f"{rss[name] / 2**20:.0f}",
            widths=(20, 12, 10, 10, 14))


if __name__ == "__main__":
    main()
