"""Runner engines against a direct ``Gate`` loop: conversations/s and peak memory, same run.

Three ways to run the same conversations (the payment bot, 300 s timeouts, delays uniform
0–400 s so that a quarter of the waits time out), all under ``MockClock(autojump_threshold=0)``:

* **direct** — the floor: a plain loop that starts every conversation on a ``Gate``, delivers
  each call through the same :class:`~harness.core.webhooks.WebhookHandler` at its delay, and
  lets the timeouts fire. No runner, no rows.
* **core** — ``run_scenario(..., driver="core", workers=1)``: the runner, without HTTP framing.
* **asgi** — ``run_scenario(..., driver="asgi", workers=1)``: the runner through the real Quart app.

Each measurement runs in a fresh process (so its peak RSS is its own); rounds alternate the
engines so that machine noise hits them alike; the table shows medians. The ratio that matters
is core ÷ direct (goal ≥ 0.8).

A second table (full mode) runs 200,000 conversations on 2 worker processes and reports the
peak RSS of the whole process tree (parent + workers), sampled every 50 ms.

    python3 -m bench.engines              # 20k conversations, 3 rounds; 200k memory run
    python3 -m bench.engines --quick      # 2k conversations, 1 round, for CI
    python3 -m bench.engines --before /work/main   # also the drivers of another checkout, same rounds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness.store import MemoryStore

from ._report import header, row

TIMEOUT_S = 300
PAYLOAD = {"data": {"amount": 42, "id": "pay_1", "items": [{"sku": "A1"}]}}
BOT = str(Path(__file__).resolve().parent.parent / "scenarios" / "bots" / "payment.toml")
ENGINES = ("direct", "core", "asgi")


def scenario(conversations: int, cases: int = 1) -> dict:
    """``conversations`` in ``cases`` equal cases (one case: sharded by index range when asked)."""
    return {
        "name": "bench",
        "bot": BOT,
        "seed": 1,
        "defaults": {"payload": PAYLOAD, "timeout_s": TIMEOUT_S, "delay_s": {"dist": "uniform", "low": 0, "high": 400}},
        "cases": [{"name": f"mixed{i}", "conversations": conversations // cases} for i in range(cases)],
    }


def direct_loop(conversations: int) -> None:
    """Start every conversation, deliver each call at its delay, let the timeouts fire."""
    import numpy as np
    import trio
    import trio.testing

    from harness.core.bots import load_bot
    from harness.core.errors import Refused
    from harness.core.gate import Gate
    from harness.core.webhooks import JSON_TYPE, WebhookHandler

    delays = np.random.default_rng(1).uniform(0, 400, conversations)
    bot = load_bot(BOT).with_timeout("wait_payment", TIMEOUT_S, "payment")

    async def main() -> None:
        gate = Gate(store=MemoryStore())
        webhooks = WebhookHandler(gate)
        async with trio.open_nursery() as nursery:
            await nursery.start(gate.run)
            await gate.add_bot(bot)
            keys = [(await gate.start_conversation("payment")).key for _ in range(conversations)]
            for index in np.argsort(delays, kind="stable"):
                await trio.sleep_until(float(delays[index]))
                body = json.dumps({**PAYLOAD, "conversation_key": keys[index]}).encode()
                with contextlib.suppress(Refused):  # refusals (410 after the deadline) are part of the work
                    await webhooks.handle("payment", "wait_payment", media_type=JSON_TYPE, headers={}, body=body)
            await trio.sleep_until(TIMEOUT_S + 1)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


RUNNER = """
import json, resource, sys, time
from harness.runner import run_scenario
document, driver = json.loads(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
frame = run_scenario(document, driver=driver, workers=1)
seconds = time.perf_counter() - start
assert len(frame) == sum(case["conversations"] for case in document["cases"]) and frame["outcome"].notna().all()
print(json.dumps({"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def one_direct(conversations: int) -> dict:
    """In this process: the direct loop once; its wall time and this process's peak RSS."""
    import harness.core.webhooks  # noqa: F401  (imports are not part of the loop's time)

    start = time.perf_counter()
    direct_loop(conversations)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(engine: str, conversations: int, code_path: str) -> dict:
    """One measurement in a fresh process; ``code_path`` is the checkout whose ``harness`` runs."""
    if engine == "direct":
        argv = [sys.executable, "-m", "bench.engines", "--one-direct", str(conversations)]
        env = None
    else:
        argv = [sys.executable, "-P", "-c", RUNNER, json.dumps(scenario(conversations)), engine]  # -P: not the cwd's harness
        env = {**os.environ, "PYTHONPATH": code_path}
    output = subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])


def tree_rss_mib(pid: int) -> float:
    """RSS of a process and all its descendants (Linux /proc), in MiB."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/statm") as statm:
                total += int(statm.read().split()[1]) * resource.getpagesize()
            with open(f"/proc/{current}/task/{current}/children") as children:
                pending.extend(int(child) for child in children.read().split())
        except OSError:
            continue
    return total / 2**20


def memory_run(conversations: int, workers: int) -> tuple[float, float]:
    """A big sharded run in a subprocess; its wall time and the tree's peak RSS (sampled)."""
    code = ("import sys; from bench.engines import scenario; from harness.runner import run_scenario; "
            f"frame = run_scenario(scenario({conversations}), driver='core', workers={workers}); "
            f"assert len(frame) == {conversations}")
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code])
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, tree_rss_mib(process.pid))
        time.sleep(0.05)
    if process.returncode != 0:
        raise RuntimeError("the memory run failed")
    return time.perf_counter() - start, peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small, one round, for CI")
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", nargs="*", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--one-direct", type=int, help=argparse.SUPPRESS)  # internal: one measurement
    parser.add_argument("--before", metavar="CHECKOUT",
                        help="also run the core and asgi drivers of another checkout (e.g. /work/main), same rounds")
    parser.add_argument("--memory-conversations", type=int, default=200_000, help="0: skip the memory run")
    args = parser.parse_args(argv)
    if args.one_direct:
        print(json.dumps(one_direct(args.one_direct)))
        return
    n, rounds = (2_000, 1) if args.quick else (args.conversations, args.rounds)
    here = str(Path(__file__).resolve().parent.parent)
    variants = [(engine, engine, here) for engine in args.engines]
    if args.before:
        variants += [(f"{engine} (before)", engine, args.before) for engine in args.engines if engine != "direct"]
    results: dict[str, list[dict]] = {label: [] for label, _, _ in variants}
    for _ in range(rounds):
        for label, engine, path in variants:
            results[label].append(measure(engine, n, path))
    header(f"engines: {n:,} conversations, payment bot, virtual time, one process each, median of {rounds}")
    row("engine", "conv/s", "vs direct", "seconds", "peak RSS MiB")
    direct = statistics.median(r["seconds"] for r in results["direct"]) if "direct" in results else None
    for label, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        peak = statistics.median(r["peak_rss_mib"] for r in runs)
        ratio = f"{direct / seconds:.2f}" if direct else "-"
        row(label, f"{n / seconds:,.0f}", ratio, f"{seconds:.2f}", f"{peak:,.0f}")
    if not args.quick and args.memory_conversations:
        total = args.memory_conversations
        seconds, peak = memory_run(total, 2)
        header(f"memory: {total:,} conversations, core driver, 2 workers, peak RSS of the process tree")
        row("conversations", "seconds", "conv/s", "peak RSS MiB", "goal MiB")
        row(total, f"{seconds:.1f}", f"{total / seconds:,.0f}", f"{peak:,.0f}", "1,229")


if __name__ == "__main__":
    main()
