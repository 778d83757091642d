"""CLI start-up: how long `harness --help` and `harness validate` take, against `import typer`.

Each command runs in a fresh interpreter (what a user waits for); the baseline, in the same run,
is ``python -c "import typer"``. Reported: the median wall time of N runs, its ratio to the
baseline (targets: ``--help`` within 4x, ``validate`` within 6x), and the peak RSS of the
command's interpreter (its ``VmHWM``, read as it exits, in one more run: a child's ``ru_maxrss``
would count the pages of the forking parent it started as).

    python3 -m bench.cli_startup           # 15 runs each
    python3 -m bench.cli_startup --quick   # 5 runs each
"""

from __future__ import annotations

import argparse
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


# Runs a command's ``-c`` code or ``-m`` module as the interpreter would, and writes the process's
# peak RSS (VmHWM: this interpreter's own, reset by exec) to stderr as it exits.
PEAK_RSS = """
import atexit, runpy, sys
def report():
    with open("/proc/self/status") as status:
        sys.stderr.write(next(line for line in status if line.startswith("VmHWM:")) + "\\n")
atexit.register(report)
flag, target, *rest = sys.argv[1:]
sys.argv = [target, *rest]
if flag == "-c":
    exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def timed(args: list[str]) -> float:
    """Wall seconds of one fresh interpreter running ``args``."""
    began = time.perf_counter()
    subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - began


def peak_rss(args: list[str]) -> int:
    """Peak RSS in bytes of a fresh interpreter running ``args`` (``-c CODE`` or ``-m MODULE ...``)."""
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    line = next(line for line in done.stderr.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    runs = 5 if args.quick else 15
    header(f"CLI start-up: median of {runs} fresh interpreters vs `python -c \"import typer\"`")
    row("command", "median s", "× typer", "target", "max RSS MiB", widths=(20, 12, 10, 10, 14))
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):  # interleaved, so a busy moment hits every command alike
        for name, command in COMMANDS.items():
            samples[name].append(timed(command))
    rss = {name: peak_rss(command) for name, command in COMMANDS.items()}
    baseline = statistics.median(samples["import typer"])
    for name in COMMANDS:
        median = statistics.median(samples[name])
        target = f"≤ {TARGETS[name]:g}×" if name in TARGETS else "baseline"
        row(name, f"{median:.3f}", f"{median / baseline:.1f}", target, f"{rss[name] / 2**20:.0f}",
            widths=(20, 12, 10, 10, 14))


if __name__ == "__main__":
    main()
