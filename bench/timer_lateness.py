"""Timer lateness in real time: how late a timeout resolves after its deadline.

10k waits (1 s timeout) are opened at random moments over 10 s, so their deadlines spread over
10 s while new conversations keep arriving. Lateness = when the gate resolved the wait minus its
deadline, on trio's clock. The baseline, in the same run, is one bare trio task per deadline
sleeping until it (``trio.sleep_until``) with the same deadlines.

    python3 -m bench.timer_lateness           # 10k waits over 10 s
    python3 -m bench.timer_lateness --quick   # 1k waits over 2 s
"""

from __future__ import annotations

import argparse

import numpy as np
import trio

from harness.core.bots import parse_bot
from harness.core.gate import Gate
from harness.store import MemoryStore

from ._report import header, row

BOT = parse_bot({"id": "b", "start": "w", "blocks": {
    "w": {"type": "webhook", "timeout_s": 1, "success": "e", "failure": "e"}, "e": {"type": "end"}}})


async def gate_lateness(open_offsets: np.ndarray) -> np.ndarray:
    gate = Gate(store=MemoryStore())
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        await gate.add_bot(BOT)
        start = trio.current_time()
        conversations = []
        for offset in open_offsets:
            await trio.sleep_until(start + offset)
            conversations.append(await gate.start_conversation("b"))
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    waits = [c.waits[0] for c in conversations]
    assert all(w.reason == "timeout" for w in waits)
    return np.array([w.resolved_at - w.deadline for w in waits])


async def task_lateness(open_offsets: np.ndarray) -> np.ndarray:
    lateness: list[float] = []

    async def sleeper(deadline: float) -> None:
        await trio.sleep_until(deadline)
        lateness.append(trio.current_time() - deadline)

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for offset in open_offsets:
            await trio.sleep_until(start + offset)
            nursery.start_soon(sleeper, trio.current_time() + 1.0)
    return np.array(lateness)


def describe(values: np.ndarray) -> tuple[str, str, str]:
    p50, p99 = np.percentile(values, [50, 99]) * 1000
    return f"{p50:.3f}", f"{p99:.3f}", f"{values.max() * 1000:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    waits, spread = (1_000, 2.0) if args.quick else (10_000, 10.0)
    offsets = np.sort(np.random.default_rng(1).uniform(0, spread, waits))
    header(f"timer lateness, real time: {waits:,} waits with deadlines spread over {spread:g} s (ms)")
    row("", "p50", "p99", "max")
    row("gate (heap)", *describe(trio.run(gate_lateness, offsets)))
    row("task per wait", *describe(trio.run(task_lateness, offsets)))


if __name__ == "__main__":
    main()
