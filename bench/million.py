"""A million conversations in one case: peak RSS of the whole process tree, and time.

One case of the payment bot (300 s timeouts, delays uniform 0–400 s, all conversations at once)
run by ``run_scenario(..., driver="core", workers=2)`` in a fresh process; this process samples
the RSS of that process and every descendant (the worker pool, the progress manager) with
psutil every 50 ms and keeps the peak of their sum. Baselines from the same run:

* **frame** — the resulting DataFrame's own size (``memory_usage(deep=True)``): what the caller
  asked for, and the floor of any way of returning it;
* **imports** — the RSS of a process that has only imported ``harness.runner.api``, times the
  processes of the tree (parent + workers): what the tree costs before it holds a single row;
* **before** (``--before CHECKOUT``) — the same run with another checkout's ``harness``, e.g.
  the whole-result transport this replaced (measured at 2.95 GiB peak, ~200 s).

The row **harness run --out** runs the same case through the command line, rows written to a
Parquet file as they come and tallied for the verdict (``frame MiB`` is then the file's size):
its peak should not grow with the number of conversations.

    python3 -m bench.million                 # 1,000,000 conversations (minutes)
    python3 -m bench.million --quick         # 50,000, for CI
    python3 -m bench.million --before /work/main
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ._report import header, row

GOAL_MIB = 1.2 * 1024
CHILD = """
import json, sys, time
from bench.engines import scenario
from harness.runner import run_scenario
conversations, workers = int(sys.argv[1]), int(sys.argv[2])
start = time.perf_counter()
frame = run_scenario(scenario(conversations), driver="core", workers=workers)
seconds = time.perf_counter() - start
assert len(frame) == conversations and frame["outcome"].notna().all()
print(json.dumps({"seconds": seconds, "frame_mib": frame.memory_usage(deep=True).sum() / 2**20}))
"""
CLI_CHILD = """
import json, sys, time
from pathlib import Path
from bench.engines import scenario
from harness.cli import main
conversations, workers, folder = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
(folder / "million.json").write_text(json.dumps(scenario(conversations)))
sys.argv = ["harness", "run", str(folder / "million.json"), "--driver", "core", "--workers", str(workers),
            "--out", str(folder / "million.parquet")]
start = time.perf_counter()
try:
    main()
except SystemExit as exit:
    assert exit.code in (0, 1), exit.code
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "frame_mib": (folder / "million.parquet").stat().st_size / 2**20}))
"""
IMPORTS = "import harness.runner.api, psutil; print(psutil.Process().memory_info().rss / 2**20)"  # what each process loads


def tree_rss(process: object) -> int:
    """RSS of a psutil process and all its descendants, in bytes (vanished ones count 0)."""
    import psutil

    assert isinstance(process, psutil.Process)
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def measure(conversations: int, workers: int, code_path: str, *, cli: bool = False) -> dict[str, float]:
    """One run in a fresh process tree: wall seconds, run seconds, frame MiB, peak tree RSS MiB.

    ``cli``: through ``harness run --out`` (its output goes to a temporary folder, then away)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="million-") as folder:
        return _measure([CLI_CHILD if cli else CHILD, str(conversations), str(workers), folder], code_path)


def _measure(child: list[str], code_path: str) -> dict[str, float]:
    import psutil

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([code_path, str(Path(__file__).resolve().parent.parent)])}
    began = time.perf_counter()
    process = psutil.Popen([sys.executable, "-P", "-c", *child], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True, env=env)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process))
        time.sleep(0.05)
    wall = time.perf_counter() - began
    output = process.stdout.read() if process.stdout is not None else ""
    if process.returncode != 0:
        raise RuntimeError(f"the run with {code_path} failed (exit {process.returncode})")
    result = json.loads(output.strip().splitlines()[-1])
    return {"wall_s": wall, "peak_mib": peak / 2**20, **result}


def import_floor_mib(code_path: str) -> float:
    env = {**os.environ, "PYTHONPATH": code_path}
    return float(subprocess.run([sys.executable, "-P", "-c", IMPORTS], check=True, capture_output=True, text=True,
                                env=env).stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50,000 conversations, for CI")
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--before", metavar="CHECKOUT", help="also run another checkout's harness, same sizes")
    args = parser.parse_args(argv)
    conversations = 50_000 if args.quick else args.conversations
    here = str(Path(__file__).resolve().parent.parent)
    runs = [("this checkout", here)] + ([("before", args.before)] if args.before else [])
    results = [(label, measure(conversations, args.workers, path)) for label, path in runs]
    results.append(("harness run --out", measure(conversations, args.workers, here, cli=True)))
    floor = import_floor_mib(here) * (1 + args.workers)
    header(f"million: {conversations:,} conversations in one case, core driver, {args.workers} workers, "
           "peak RSS of the process tree")
    widths = (19, 10, 10, 11, 11, 13, 12, 10)
    row("run", "seconds", "conv/s", "peak MiB", "frame MiB", "imports MiB", "peak-frame", "goal MiB", widths=widths)
    for label, result in results:
        row(label, f"{result['seconds']:.1f}", f"{conversations / result['seconds']:,.0f}", f"{result['peak_mib']:,.0f}",
            f"{result['frame_mib']:,.0f}", f"{floor:,.0f}", f"{result['peak_mib'] - result['frame_mib']:,.0f}",
            f"{GOAL_MIB:,.0f}" if conversations >= 1_000_000 else "-", widths=widths)


if __name__ == "__main__":
    main(sys.argv[1:])
