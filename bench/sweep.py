"""An analyst's timeout sweep against the gate's own limit, measured in the same run.

The sweep of issue 19: the payment bot (with its JavaScript block), 30 timeouts (10, 20, …,
300 s) × 5,000 conversations, delays drawn from an empirical file
(``notebooks/data/processor_delays.csv``: 4,000 observed delays, 3 % never), in virtual time,
``run_scenario(..., driver="core")`` with its default spreading over the machine's cores.

The gate's own limit is **two direct gate loops in parallel** (``bench.engines``' direct loop:
start every conversation on a ``Gate``, deliver each call through the same ``WebhookHandler`` at
its delay, let the timeouts fire; no runner, no rows), each on half the conversations, one per
core. The ratio that matters is ``direct seconds ÷ sweep seconds`` (goal ≥ 0.8): how close the
analyst's run gets to what the gate itself can do on the same two cores.

Each side runs in fresh processes; times are measured inside them (imports excluded, worker
start-up included for the sweep). Peak RSS is each process's own (the sweep's parent process;
the direct loops' largest).

    python3 -m bench.sweep              # 30 × 5,000 conversations
    python3 -m bench.sweep --quick      # 30 × 100, for CI
    python3 -m bench.sweep --profile    # also: where one process's time goes (cProfile, top functions)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import subprocess
import sys
from pathlib import Path

from ._report import header, row

ROOT = Path(__file__).resolve().parent.parent
BOT = str(ROOT / "scenarios" / "bots" / "payment.toml")
DELAYS = str(ROOT / "notebooks" / "data" / "processor_delays.csv")
TIMEOUTS = list(range(10, 301, 10))
PAYLOAD = {"data": {"amount": 42, "id": "pay_1", "items": [{"sku": "A1"}]}}


def scenario(conversations: int) -> dict:
    return {
        "name": "bench-sweep", "bot": BOT, "seed": 1,
        "cases": [{"name": "sweep", "conversations": conversations, "timeout_s": TIMEOUTS, "payload": PAYLOAD,
                   "delay_s": {"dist": "empirical", "file": DELAYS, "column": "delay_s"}}],
    }


SWEEP = """
import json, resource, sys, time
from harness.runner import run_scenario
document = json.loads(sys.argv[1])
start = time.perf_counter()
frame = run_scenario(document, driver="core")
seconds = time.perf_counter() - start
assert len(frame) == document["cases"][0]["conversations"] * len(document["cases"][0]["timeout_s"])
print(json.dumps({"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_sweep(conversations: int) -> dict:
    output = subprocess.run([sys.executable, "-c", SWEEP, json.dumps(scenario(conversations))],
                            check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(output.strip().splitlines()[-1])


def run_direct_pair(total: int) -> dict:
    """Two direct gate loops at once, ``total // 2`` conversations each; the slower one's time."""
    argv = [sys.executable, "-m", "bench.engines", "--one-direct", str(total // 2)]
    loops = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
    results = []
    for loop in loops:
        output, _ = loop.communicate()
        if loop.returncode != 0:
            raise RuntimeError("a direct gate loop failed")
        results.append(json.loads(output.strip().splitlines()[-1]))
    return {"seconds": max(r["seconds"] for r in results), "peak_rss_mib": max(r["peak_rss_mib"] for r in results)}


def profile(conversations: int, top: int = 15) -> str:
    """Where one process's time goes in a small sweep (``workers=1`` so cProfile sees it all)."""
    from harness.runner import run_scenario

    document = scenario(conversations)
    run_scenario({**document, "cases": [{**document["cases"][0], "conversations": 20}]}, driver="core", workers=1)
    profiler = cProfile.Profile()
    profiler.enable()
    run_scenario(document, driver="core", workers=1)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 timeouts x 100 conversations, for CI")
    parser.add_argument("--conversations", type=int, default=5_000, help="per timeout")
    parser.add_argument("--profile", action="store_true", help="also profile a 30 x 100 sweep in one process")
    args = parser.parse_args(argv)
    per_timeout = 100 if args.quick else args.conversations
    total = per_timeout * len(TIMEOUTS)
    direct = run_direct_pair(total)
    sweep = run_sweep(per_timeout)
    header(f"sweep: {len(TIMEOUTS)} timeouts x {per_timeout:,} conversations = {total:,}, empirical delays, payment bot")
    row("run", "conv/s", "vs gate", "seconds", "peak RSS MiB", widths=(30, 12, 10, 10, 14))
    row("2 direct gate loops (limit)", f"{total / direct['seconds']:,.0f}", "1.00", f"{direct['seconds']:.1f}",
        f"{direct['peak_rss_mib']:,.0f}", widths=(30, 12, 10, 10, 14))
    row("run_scenario sweep (core)", f"{total / sweep['seconds']:,.0f}", f"{direct['seconds'] / sweep['seconds']:.2f}",
        f"{sweep['seconds']:.1f}", f"{sweep['peak_rss_mib']:,.0f}", widths=(30, 12, 10, 10, 14))
    if args.profile:
        print(profile(100))


if __name__ == "__main__":
    main()
