"""The live page's cost against the number of open waits (SPEC §17.7).

Each ``GET /api/dashboard`` asks the store for the soonest 100 open waits (an indexed, ordered
read) and the open-wait count (a counter row), never for every waiting conversation. This fills
a store with N open waits, then times :func:`harness.web.dashboard.snapshot` as served (real time:
SQLite calls in a worker thread), median of 30 polls, and reports each size as a ratio to 100
open waits in the same run — 1.0 means the cost does not grow with the waits.

    python3 -m bench.dashboard            # memory and SQLite, 100 / 25,000 / 100,000 open waits
    python3 -m bench.dashboard --quick    # SQLite, 100 / 25,000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import trio
import trio.testing

from harness.core.bots import parse_bot
from harness.core.conversations import WallClock
from harness.core.gate import Gate
from harness.store import open_store
from harness.web.dashboard import snapshot

from ._report import header, row

BOT = parse_bot({"id": "b", "start": "w", "blocks": {
    "w": {"type": "webhook", "timeout_s": 300, "success": "e", "failure": "e"}, "e": {"type": "end"}}})
POLLS = 30


async def fill_and_poll(spec: str, n: int, clock: WallClock) -> float:
    """Open ``n`` waits, then (when ``spec`` is a file, in a fresh real-time run) time the polls."""
    gate = Gate(store=open_store(spec), clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        await gate.add_bot(BOT)
        for _ in range(n):
            await gate.start_conversation("b")
        if isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
            nursery.cancel_scope.cancel()
            return 0.0
        seconds = await polls(gate)
        nursery.cancel_scope.cancel()
    return seconds


async def poll_file(spec: str, clock: WallClock) -> float:
    gate = Gate(store=open_store(spec), clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        seconds = await polls(gate)
        nursery.cancel_scope.cancel()
    return seconds


async def polls(gate: Gate) -> float:
    times = []
    for _ in range(POLLS):
        started = time.perf_counter()
        data = await snapshot(gate)
        times.append(time.perf_counter() - started)
        assert len(data["open_waits"]["shown"]) == min(100, data["open_waits"]["count"])
    return statistics.median(times)


def measure(store: str, n: int, folder: Path) -> float:
    clock = WallClock()
    if store == "memory":
        return trio.run(fill_and_poll, "memory", n, clock)
    spec = f"sqlite:{folder / f'dashboard-{n}.db'}"
    trio.run(fill_and_poll, spec, n, clock, clock=trio.testing.MockClock(autojump_threshold=0))  # fast fill, inline
    return trio.run(poll_file, spec, WallClock())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    stores = ["sqlite"] if args.quick else ["memory", "sqlite"]
    sizes = [100, 25_000] if args.quick else [100, 25_000, 100_000]
    header("GET /api/dashboard data: median ms per poll, and the ratio to 100 open waits")
    row("store", "open waits", "ms per poll", "ratio", widths=(10, 12, 14, 10))
    with tempfile.TemporaryDirectory() as folder:
        for store in stores:
            baseline = None
            for n in sizes:
                seconds = measure(store, n, Path(folder))
                baseline = baseline or seconds
                row(store, f"{n:,}", f"{seconds * 1000:.2f}", f"{seconds / baseline:.2f}", widths=(10, 12, 14, 10))


if __name__ == "__main__":
    main()
