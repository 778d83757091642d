"""Spreading a virtual-time run over processes.

Sub-cases never interact: each has its own conversations, keys and random stream
(``default_rng([seed, case position])``), and each process gets a fresh in-process gate. So a
scenario's sub-cases can run in separate processes and give the very rows a single process
would, in the same order. A single trio run is CPU-bound on one core (the framework's
per-request cost dominates); with two cores, two shards take about half the time.

Processes are started with ``spawn`` (safe beside threads, e.g. in a Jupyter kernel), which costs
about a second of imports each, so runs below :data:`MIN_CONVERSATIONS_TO_SHARD` stay in one
process unless asked otherwise.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import replace
from typing import Any

import trio
import trio.testing

from .drivers import open_driver
from .engine import execute
from .scenario import Scenario, SubCase

__all__ = ["MIN_CONVERSATIONS_TO_SHARD", "auto_workers", "plan_shards", "run_virtual", "run_sharded"]

MIN_CONVERSATIONS_TO_SHARD = 4000
PROGRESS_BATCH = 200


def auto_workers(scenario: Scenario) -> int:
    """How many processes a virtual run should use: one per core, when there is enough work."""
    total = sum(subcase.conversations for subcase in scenario.subcases)
    if total < MIN_CONVERSATIONS_TO_SHARD:
        return 1
    return max(1, min(os.cpu_count() or 1, len(scenario.subcases)))


def _cost(subcase: SubCase) -> int:
    return subcase.conversations * (subcase.calls + 2)  # requests: start, calls, read back


def plan_shards(subcases: list[SubCase], workers: int) -> list[list[SubCase]]:
    """Split sub-cases into at most ``workers`` groups of similar cost (largest first, greedy)."""
    shards: list[list[SubCase]] = [[] for _ in range(min(workers, len(subcases)))]
    loads = [0] * len(shards)
    for subcase in sorted(subcases, key=_cost, reverse=True):
        lightest = loads.index(min(loads))
        shards[lightest].append(subcase)
        loads[lightest] += _cost(subcase)
    return [sorted(shard, key=lambda s: s.index) for shard in shards if shard]


def run_virtual(scenario: Scenario, on_conversation_done: Callable[[], None] | None = None, *,
                driver: str = "asgi") -> list[dict[str, Any]]:
    """Run a scenario in this process against a fresh in-process gate, in virtual time."""

    async def main() -> list[dict[str, Any]]:
        async with open_driver(driver) as gate_driver:
            return await execute(scenario, gate_driver, on_conversation_done=on_conversation_done)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def _run_shard(scenario: Scenario, progress: Any, driver: str) -> list[dict[str, Any]]:
    """In a worker process: run one shard, reporting progress in batches."""
    done = 0

    def count() -> None:
        nonlocal done
        done += 1
        if progress is not None and done % PROGRESS_BATCH == 0:
            progress.put(PROGRESS_BATCH)

    rows = run_virtual(scenario, count, driver=driver)
    if progress is not None and done % PROGRESS_BATCH:
        progress.put(done % PROGRESS_BATCH)
    return rows


def run_sharded(scenario: Scenario, workers: int, on_conversation_done: Callable[[], None] | None = None, *,
                driver: str = "asgi") -> list[dict[str, Any]]:
    """Run the sub-cases in ``workers`` processes; rows come back in the scenario's order."""
    shards = plan_shards(scenario.subcases, workers)
    context = multiprocessing.get_context("spawn")
    manager = context.Manager() if on_conversation_done is not None else None
    try:
        progress = manager.Queue() if manager is not None else None
        with ProcessPoolExecutor(max_workers=len(shards), mp_context=context) as pool:
            futures = [pool.submit(_run_shard, replace(scenario, subcases=shard), progress, driver) for shard in shards]
            while progress is not None and on_conversation_done is not None:
                finished, _ = wait(futures, timeout=0.1)
                try:
                    while True:
                        for _ in range(progress.get_nowait()):
                            on_conversation_done()
                except queue.Empty:
                    pass
                if len(finished) == len(futures):
                    break
            rows = [row for future in futures for row in future.result()]
    finally:
        if manager is not None:
            manager.shutdown()
    order = {(subcase.case, subcase.variant): position for position, subcase in enumerate(scenario.subcases)}
    rows.sort(key=lambda row: order[(row["case"], row["variant"])])  # stable: conversations stay in order
    return rows
