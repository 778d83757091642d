"""Spreading a virtual-time run over processes (or any ``concurrent.futures.Executor``).

Sub-cases never interact: each has its own conversations, keys and random stream
(``default_rng([seed, case position])``), and each process gets a fresh in-process gate. Nor do
the conversations of one sub-case, unless their keys are each other's (``key = "other"``): so a
large sub-case is cut into index ranges too, and each range draws the whole case's random values
and keeps its slice. A shard therefore gives the very rows one process would, and the parent puts
the blocks back in the scenario's order. A single trio run is CPU-bound on one core; with two
cores, two shards take about half the time.

``workers=N`` starts its own pool with ``spawn`` (safe beside threads, e.g. in a Jupyter kernel),
which costs about a second of imports per process, so runs below
:data:`MIN_CONVERSATIONS_TO_SHARD` stay in one process unless asked otherwise. A script that
calls ``run_scenario`` at top level, without ``if __name__ == "__main__":``, works too: the pool's
processes are started without re-running the script (see :func:`_script_not_rerun`).
``executor=E`` uses any executor instead — a Dask cluster's ``client.get_executor()``, a thread
pool — with progress reported per finished shard.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import trio
import trio.testing

from ..gc_tuning import long_lived_state_out_of_gc
from .drivers import open_driver
from .engine import Plan, RunInterrupted, SeededKeys, execute, whole_plans
from .results import ResultBlock
from .scenario import Scenario, SubCase

__all__ = ["MIN_CONVERSATIONS_TO_SHARD", "auto_workers", "plan_shards", "run_virtual", "run_spread"]

MIN_CONVERSATIONS_TO_SHARD = 4000
PROGRESS_BATCH = 500  # a shard reports progress every this many conversations
PIECES_PER_WORKER = 4  # with a foreign executor, smaller shards: finer progress, better balance
Progress = Callable[[], None] | None


def auto_workers(scenario: Scenario) -> int:
    """How many processes a virtual run should use: one per core, when there is enough work."""
    total = sum(subcase.conversations for subcase in scenario.subcases)
    if total < MIN_CONVERSATIONS_TO_SHARD:
        return 1
    return max(1, os.cpu_count() or 1)


def _cost(subcase: SubCase, conversations: int) -> int:
    return conversations * (1 + sum(party.calls + 1 for party in subcase.parties))  # start; per party: calls, read back


def plan_shards(scenario: Scenario, shards: int) -> list[list[Plan]]:
    """Split the run into at most ``shards`` groups of plans of similar cost.

    A sub-case whose keys do not depend on each other is cut into index ranges when it alone
    costs more than a shard's share; then the pieces go, largest first, to the lightest shard.
    """
    subcases = {subcase.index: subcase for subcase in scenario.subcases}
    total = sum(_cost(s, s.conversations) for s in scenario.subcases)
    share = max(1, math.ceil(total / shards))
    pieces: list[Plan] = []
    for subcase in scenario.subcases:
        n = subcase.conversations
        others = any(party.key == "other" for party in subcase.parties)  # keys that depend on each other: one piece
        parts = 1 if others else max(1, min(shards, math.ceil(_cost(subcase, n) / share)))
        bounds = [round(n * i / parts) for i in range(parts + 1)]
        pieces += [Plan(subcase.index, lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
    groups: list[list[Plan]] = [[] for _ in range(min(shards, len(pieces)))]
    loads = [0] * len(groups)

    def piece_cost(plan: Plan) -> int:
        return _cost(subcases[plan.subcase], plan.stop - plan.start)

    for piece in sorted(pieces, key=piece_cost, reverse=True):
        lightest = loads.index(min(loads))
        groups[lightest].append(piece)
        loads[lightest] += piece_cost(piece)
    return [sorted(group, key=lambda p: (p.subcase, p.start)) for group in groups if group]


def run_virtual(scenario: Scenario, *, plans: list[Plan] | None = None, driver: str = "asgi",
                on_conversation_started: Progress = None, on_conversation_done: Progress = None) -> list[ResultBlock]:
    """Run ``plans`` (default: the whole scenario) in this process against a fresh in-process gate."""

    keys = SeededKeys(scenario.seed, scenario.name)  # keys per conversation: the same however the run is spread

    async def main() -> list[ResultBlock]:
        async with open_driver(driver, new_key=keys) as gate_driver:
            return await execute(scenario, gate_driver, plans=plans, on_conversation_started=on_conversation_started,
                                 on_conversation_done=on_conversation_done, keys=keys)

    with long_lived_state_out_of_gc():
        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def run_shard(scenario: Scenario, plans: list[Plan], driver: str, progress: Any = None) -> list[ResultBlock]:
    """In a worker: run one shard; ``progress`` (a queue) gets ``(started, finished)`` in batches."""
    if progress is None:
        return run_virtual(scenario, plans=plans, driver=driver)
    counts = [0, 0]  # not yet reported: started, finished

    def report(which: int) -> None:
        counts[which] += 1
        if counts[which] >= PROGRESS_BATCH:
            progress.put((counts[0], counts[1]))
            counts[0] = counts[1] = 0

    blocks = run_virtual(scenario, plans=plans, driver=driver, on_conversation_started=lambda: report(0),
                         on_conversation_done=lambda: report(1))
    if counts[0] or counts[1]:
        progress.put((counts[0], counts[1]))
    return blocks


def _shard_scenario(scenario: Scenario, plans: list[Plan]) -> Scenario:
    """The scenario with only the sub-cases a shard needs: less to pickle."""
    needed = {plan.subcase for plan in plans}
    return replace(scenario, subcases=[s for s in scenario.subcases if s.index in needed])


@contextmanager
def _script_not_rerun() -> Iterator[None]:
    """Start ``spawn`` processes without re-running the caller's script.

    ``spawn`` re-imports the main module of a plain ``python script.py`` in each child (to find
    functions pickled by reference). A script that calls ``run_scenario`` at top level, without a
    main guard, would then run again in every child and fail. The shards only need ``harness``
    (a callable delay travels by value, see :class:`~harness.runner.distributions.Delay`), so
    while the pool's processes are started, ``__main__`` shows no file to re-import.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield  # `python -m module`, a notebook or a REPL: nothing is re-run
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def run_spread(scenario: Scenario, workers: int, *, executor: Executor | None = None, driver: str = "asgi",
               on_conversation_started: Progress = None, on_conversation_done: Progress = None) -> list[ResultBlock]:
    """Run the scenario in ``workers`` processes (or on ``executor``); results in the scenario's order."""
    reporting = on_conversation_started is not None or on_conversation_done is not None
    if executor is not None:
        groups = plan_shards(scenario, max(1, workers) * PIECES_PER_WORKER)
        futures = [executor.submit(run_shard, _shard_scenario(scenario, group), group, driver) for group in groups]
        return _collect_per_shard(scenario, groups, futures, on_conversation_started, on_conversation_done)
    groups = plan_shards(scenario, workers)
    if len(groups) <= 1:
        return run_virtual(scenario, plans=groups[0] if groups else whole_plans(scenario), driver=driver,
                           on_conversation_started=on_conversation_started, on_conversation_done=on_conversation_done)
    context = multiprocessing.get_context("spawn")
    with _script_not_rerun():
        manager = context.Manager() if reporting else None  # a process too
    try:
        progress = manager.Queue() if manager is not None else None
        with ProcessPoolExecutor(max_workers=len(groups), mp_context=context) as pool:
            with _script_not_rerun():
                futures = [pool.submit(run_shard, _shard_scenario(scenario, group), group, driver, progress)
                           for group in groups]
            try:
                while progress is not None:
                    finished, _ = wait(futures, timeout=0.1)
                    _drain(progress, on_conversation_started, on_conversation_done)
                    if len(finished) == len(futures):
                        _drain(progress, on_conversation_started, on_conversation_done)
                        break
                blocks = [block for future in futures for block in future.result()]
            except KeyboardInterrupt:
                # Stop now, not when every shard is done: the shards that finished keep their rows.
                done = [block for future in futures if future.done() and not future.cancelled() and future.exception() is None
                        for block in future.result()]
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
                raise RunInterrupted(sorted(done, key=lambda block: block.sort_key)) from None
    finally:
        if manager is not None:
            manager.shutdown()
    return sorted(blocks, key=lambda block: block.sort_key)


def _drain(progress: Any, on_started: Progress, on_done: Progress) -> None:
    try:
        while True:
            started, finished = progress.get_nowait()
            _report(started, finished, on_started, on_done)
    except queue.Empty:
        pass


def _report(started: int, finished: int, on_started: Progress, on_done: Progress) -> None:
    for _ in range(started if on_started is not None else 0):
        on_started()  # type: ignore[misc]
    for _ in range(finished if on_done is not None else 0):
        on_done()  # type: ignore[misc]


def _collect_per_shard(scenario: Scenario, groups: list[list[Plan]], futures: list[Future[list[ResultBlock]]],
                       on_started: Progress, on_done: Progress) -> list[ResultBlock]:
    """A foreign executor: progress comes per finished shard (its conversations, started and done)."""
    sizes = {id(future): sum(p.stop - p.start for p in group) for future, group in zip(futures, groups)}
    pending = set(futures)
    while pending:
        finished, pending = wait(pending, return_when="FIRST_COMPLETED")
        for future in finished:
            future.result()  # raise the shard's error here, at once
            _report(sizes[id(future)], sizes[id(future)], on_started, on_done)
    blocks = [block for future in futures for block in future.result()]
    return sorted(blocks, key=lambda block: block.sort_key)
