"""Memory per open wait: the gate's heap-of-deadlines design against a trio task per wait.

An open wait in the gate is a ``Wait`` object inside its ``Conversation`` plus one heap entry;
one scheduler task owns every deadline. The baseline, measured in the same run, is the obvious
alternative: one trio task per wait, blocked on an ``Event`` under ``move_on_after``.

Measured with tracemalloc (Python allocations) and RSS (what the OS sees), per wait, at 10k and
100k open waits. Two gate figures: the whole conversation (key, URL, variables, wait, heap
entry, store entry) for a bot that waits at its first block, and the wait's own share (the
``Wait`` and its heap entry), which is what the scheduling design decides.

    python3 -m bench.waits_memory            # 10k and 100k
    python3 -m bench.waits_memory --quick    # 10k
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tracemalloc

import trio

from harness.core.bots import parse_bot
from harness.core.gate import Gate
from harness.store import MemoryStore

from ._report import header, row

BOT = parse_bot({"id": "b", "start": "w", "blocks": {
    "w": {"type": "webhook", "timeout_s": 300, "success": "e", "failure": "e"}, "e": {"type": "end"}}})


def rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() // 1024


async def measure_gate(n: int) -> tuple[float, float, float]:
    gate = Gate(store=MemoryStore())
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        await gate.add_bot(BOT)
        gc.collect()
        rss_before = rss_kib()
        tracemalloc.start()
        conversations = [await gate.start_conversation("b") for _ in range(n)]
        gc.collect()
        traced, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss = (rss_kib() - rss_before) * 1024 / n
        wait, entry = conversations[0].waits[0], gate._deadlines[0]
        wait_share = sum(map(sys.getsizeof, (wait, entry, wait.opened_at, wait.deadline, entry[0])))
        assert await gate.open_wait_count() == n
        nursery.cancel_scope.cancel()
    return traced / n, rss, float(wait_share)


async def measure_tasks(n: int) -> tuple[float, float]:
    async def waiter(event: trio.Event) -> None:
        with trio.move_on_after(300):
            await event.wait()

    async with trio.open_nursery() as nursery:
        gc.collect()
        rss_before = rss_kib()
        tracemalloc.start()
        events = [trio.Event() for _ in range(n)]
        for event in events:
            nursery.start_soon(waiter, event)
        await trio.sleep(0.1)  # let every task start and block
        gc.collect()
        traced, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss = (rss_kib() - rss_before) * 1024 / n
        nursery.cancel_scope.cancel()
    return traced / n, rss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    header("memory per open wait (bytes): gate vs one trio task per wait")
    row("open waits", "gate traced", "gate RSS", "wait's share", "task traced", "task RSS",
        widths=(12, 14, 12, 14, 14, 12))
    for n in ([10_000] if args.quick else [10_000, 100_000]):
        gate_traced, gate_rss, share = trio.run(measure_gate, n)
        task_traced, task_rss = trio.run(measure_tasks, n)
        row(f"{n:,}", f"{gate_traced:,.0f}", f"{gate_rss:,.0f}", f"{share:,.0f}", f"{task_traced:,.0f}",
            f"{task_rss:,.0f}", widths=(12, 14, 12, 14, 14, 12))


if __name__ == "__main__":
    main()
