"""Running a virtual-time scenario in bounded pieces, in this process or spread over others.

Sub-cases never interact: each has its own conversations, keys and random stream
(``default_rng([seed, case position])``), and each piece gets a fresh in-process gate. Nor do
the conversations of one sub-case, unless their keys are each other's (``key = "other"``): so a
large sub-case is cut into index ranges, and each range draws the whole case's random values
and keeps its slice. A piece therefore gives the very rows one process running everything would.

Memory is what decides the cut. A gate holds every conversation in flight, and a piece's rows
wait in its worker until the piece ends; so the run goes in pieces of at most
:data:`PIECE_CONVERSATIONS` conversations (one ``key = "other"`` sub-case is never cut), run one
after the other in each worker, and :func:`run_pieces` hands each piece's rows on as soon as it
and the ones before it are done — in the scenario's order, never holding more than a window of
finished pieces. Its callers type each piece and put the frame together
(:func:`~harness.runner.results.concat_results`) or append it to a file
(:class:`~harness.runner.results.ResultsWriter`): peak memory is the result plus a bounded
working set per worker, however many conversations run.

Results travel as each executor returns them: a piece's future returns its rows (a few MiB at
most), so a local process pool, a thread pool and a remote Dask cluster behave alike — nothing
needs a shared disk. A single trio run is CPU-bound on one core; with two cores, two workers
take about half the time.

``workers=N`` starts its own pool with ``spawn`` (safe beside threads, e.g. in a Jupyter kernel),
which costs about a second of imports per process, so runs below
:data:`MIN_CONVERSATIONS_TO_SHARD` stay in one process unless asked otherwise. A script that
calls ``run_scenario`` at top level, without ``if __name__ == "__main__":``, works too: the pool's
processes are started without re-running the script (see :func:`_script_not_rerun`).
``executor=E`` uses any executor instead — a Dask cluster's ``client.get_executor()``, a thread
pool — with progress reported per finished piece; ``workers`` then says how many pieces it runs
at once (set it to the cluster's size).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import math
import multiprocessing
import os
import queue
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import trio
import trio.testing

from ..gc_tuning import long_lived_state_out_of_gc
from .drivers import open_driver
from .engine import Plan, RunInterrupted, SeededKeys, execute
from .results import ResultBlock
from .scenario import Scenario

__all__ = ["MIN_CONVERSATIONS_TO_SHARD", "PIECE_CONVERSATIONS", "auto_workers", "plan_pieces", "run_pieces",
           "run_virtual", "outside_any_event_loop"]

MIN_CONVERSATIONS_TO_SHARD = 4000
PIECE_CONVERSATIONS = 20_000  # conversations in flight in one gate at most (about 2.5 KiB each)
PIECES_PER_WORKER = 4  # small runs on several workers: enough pieces to keep each busy till the end
WINDOW_PER_WORKER = 2  # pieces submitted ahead per worker (finished ones wait for their turn)
PROGRESS_BATCH = 500  # a worker reports progress every this many conversations
POLL_S = 0.1
Progress = Callable[[], None] | None
T = TypeVar("T")


def auto_workers(scenario: Scenario) -> int:
    """How many processes a virtual run should use: one per core, when there is enough work."""
    total = sum(subcase.conversations for subcase in scenario.subcases)
    if total < MIN_CONVERSATIONS_TO_SHARD:
        return 1
    return max(1, os.cpu_count() or 1)


def plan_pieces(scenario: Scenario, workers: int = 1, *, size: int | None = None) -> list[list[Plan]]:
    """The run cut into pieces of at most ``size`` conversations, in the scenario's order.

    With several ``workers``, pieces are smaller when the run is small, so that each worker gets
    a few (:data:`PIECES_PER_WORKER`) and they finish together. Consecutive small sub-cases share
    a piece; a sub-case larger than a piece is cut into equal index ranges, except one where a
    party has ``key = "other"`` (its keys depend on each other), which stays whole. Keys are
    seeded per conversation (:class:`~harness.runner.engine.SeededKeys`), so the cut changes none.
    """
    size = PIECE_CONVERSATIONS if size is None else size
    total = sum(subcase.conversations for subcase in scenario.subcases)
    if workers > 1:
        size = max(1, min(size, math.ceil(total / (workers * PIECES_PER_WORKER))))
    pieces: list[list[Plan]] = []
    current: list[Plan] = []
    count = 0
    for subcase in scenario.subcases:
        n = subcase.conversations
        others = any(party.key == "other" for party in subcase.parties)  # keys that depend on each other: one piece
        parts = 1 if others else max(1, math.ceil(n / size))
        bounds = [round(n * i / parts) for i in range(parts + 1)]
        for start, stop in zip(bounds, bounds[1:]):
            if stop <= start:
                continue
            if current and count + stop - start > size:
                pieces.append(current)
                current, count = [], 0
            current.append(Plan(subcase.index, start, stop))
            count += stop - start
    if current:
        pieces.append(current)
    return pieces


def outside_any_event_loop(function: Callable[[], T]) -> T:
    """Call ``function`` (which runs trio) here, or in a worker thread when an asyncio loop runs here (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return function()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="harness-trio") as pool:
        # The worker thread gets this context (context variables of the caller stay visible).
        return pool.submit(contextvars.copy_context().run, function).result()


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
    """In a worker: run one piece; ``progress`` (a queue) gets ``(started, finished)`` in batches."""
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
    """The scenario with only the sub-cases a piece needs: less to pickle."""
    needed = {plan.subcase for plan in plans}
    return replace(scenario, subcases=[s for s in scenario.subcases if s.index in needed])


@contextmanager
def _script_not_rerun() -> Iterator[None]:
    """Start ``spawn`` processes without re-running the caller's script.

    ``spawn`` re-imports the main module of a plain ``python script.py`` in each child (to find
    functions pickled by reference). A script that calls ``run_scenario`` at top level, without a
    main guard, would then run again in every child and fail. The workers only need ``harness``
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


def run_pieces(scenario: Scenario, workers: int, *, executor: Executor | None = None, driver: str = "asgi",
               on_conversation_started: Progress = None,
               on_conversation_done: Progress = None) -> Iterator[list[ResultBlock]]:
    """Each piece's result blocks (sorted), piece after piece in the scenario's order.

    In this process when ``workers`` is 1 and there is no ``executor``; else on ``workers``
    ``spawn`` processes (or on ``executor``), with at most :data:`WINDOW_PER_WORKER` pieces per
    worker submitted and not yet handed on.
    """
    pieces = plan_pieces(scenario, 1 if executor is None and workers <= 1 else workers)
    if executor is None and (workers <= 1 or len(pieces) <= 1):
        for piece in pieces:
            yield outside_any_event_loop(functools.partial(
                run_virtual, _shard_scenario(scenario, piece), plans=piece, driver=driver,
                on_conversation_started=on_conversation_started, on_conversation_done=on_conversation_done))
        return
    window = max(1, workers) * WINDOW_PER_WORKER
    if executor is not None:
        sizes: dict[int, int] = {}

        def submit_foreign(piece: list[Plan]) -> Future[list[ResultBlock]]:
            future = executor.submit(run_shard, _shard_scenario(scenario, piece), piece, driver)
            sizes[id(future)] = sum(plan.stop - plan.start for plan in piece)
            return future

        def done_foreign(future: Future[list[ResultBlock]]) -> None:  # progress comes per finished piece
            size = sizes.pop(id(future))
            _report(size, size, on_conversation_started, on_conversation_done)

        yield from _in_order(pieces, submit_foreign, window, done=done_foreign)
        return
    reporting = on_conversation_started is not None or on_conversation_done is not None
    context = multiprocessing.get_context("spawn")
    with _script_not_rerun():
        manager = context.Manager() if reporting else None  # a process too
    pool = ProcessPoolExecutor(max_workers=min(workers, len(pieces)), mp_context=context)
    completed = False
    try:
        progress = manager.Queue() if manager is not None else None

        def submit(piece: list[Plan]) -> Future[list[ResultBlock]]:
            with _script_not_rerun():  # the pool starts its processes as work arrives
                return pool.submit(run_shard, _shard_scenario(scenario, piece), piece, driver, progress)

        def poll() -> None:
            if progress is not None:
                _drain(progress, on_conversation_started, on_conversation_done)

        yield from _in_order(pieces, submit, window, poll=poll)
        poll()
        completed = True
    finally:
        if not completed:  # interrupted, failed or abandoned: stop now, not when the running pieces are done
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        pool.shutdown(wait=completed, cancel_futures=True)
        if manager is not None:
            manager.shutdown()


def _in_order(pieces: list[list[Plan]], submit: Callable[[list[Plan]], Future[list[ResultBlock]]], window: int, *,
              poll: Callable[[], None] | None = None,
              done: Callable[[Future[list[ResultBlock]]], None] | None = None) -> Iterator[list[ResultBlock]]:
    """Submit ``window`` pieces ahead; hand each piece's blocks on in order; raise a piece's error at once.

    Ctrl+C raises :class:`~harness.runner.engine.RunInterrupted` with the rows of the pieces that
    had finished and were not handed on yet.
    """
    upcoming = iter(pieces)
    running: deque[Future[list[ResultBlock]]] = deque(submit(piece) for piece in itertools.islice(upcoming, window))
    noticed: set[int] = set()
    while running:
        unnoticed = [future for future in running if id(future) not in noticed]
        try:
            finished, _ = wait(unnoticed, timeout=POLL_S, return_when=FIRST_COMPLETED)
        except KeyboardInterrupt:
            kept = [block for future in running if future.done() and not future.cancelled()
                    and future.exception() is None for block in future.result()]
            raise RunInterrupted(sorted(kept, key=lambda block: block.sort_key)) from None
        if poll is not None:
            poll()
        for future in finished:
            if id(future) in noticed:
                continue
            noticed.add(id(future))
            future.result()  # a piece's error, here and now
            if done is not None:
                done(future)
        while running and running[0].done():
            head = running.popleft()
            noticed.discard(id(head))
            blocks = head.result()
            del head  # the future would keep the blocks alive
            piece = next(upcoming, None)
            if piece is not None:
                running.append(submit(piece))
            yield sorted(blocks, key=lambda block: block.sort_key)
            del blocks


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
