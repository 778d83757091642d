"""The synchronous entry points: the CLI and notebooks call these.

``run_scenario`` works in a plain script, in pytest, and inside a running Jupyter kernel: when
an asyncio loop is already running in the calling thread, trio runs in a worker thread (a
thread of its own — not ``trio.to_thread`` — so virtual time is unaffected).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import trio

from .._groups import leaves
from .distributions import DelayError
from .drivers import DRIVERS, live
from .engine import RunError, RunInterrupted, execute
from .progress import NO_PROGRESS, NotebookProgress, Progress
from .results import ResultBlock, concat_results, parties_in_order, to_frame
from .scenario import InvalidScenario, Scenario, load_scenario, parse_scenario, time_scaled
from .shards import auto_workers, outside_any_event_loop, run_pieces

__all__ = ["run_scenario", "RunOptions", "run_loaded_scenario", "stream_loaded_scenario", "as_scenario", "runnable"]


def as_scenario(path_or_dict: str | Path | dict[str, Any] | Scenario, *, seed: int | None = None) -> Scenario:
    """A validated :class:`Scenario` from a file path, a dict, or a Scenario (seed overridden)."""
    if isinstance(path_or_dict, Scenario):
        if seed is not None:
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise InvalidScenario([f"{path_or_dict.source}: seed: must be a non-negative integer, got {seed!r}"])
            path_or_dict.seed = seed
        return path_or_dict
    if isinstance(path_or_dict, dict):
        return parse_scenario(path_or_dict, base_dir=Path.cwd(), source="<dict>", seed=seed)
    return load_scenario(path_or_dict, seed=seed)


def runnable(scenario: Scenario, *, live: bool) -> Scenario:
    """The scenario with only the sub-cases whose ``modes`` include the run's mode (SPEC §16.4)."""
    mode = "live" if live else "virtual"
    if all(mode in subcase.modes for subcase in scenario.subcases):
        return scenario
    return replace(scenario, subcases=[subcase for subcase in scenario.subcases if mode in subcase.modes])


@dataclass(frozen=True)
class RunOptions:
    """How :func:`run_loaded_scenario` and :func:`stream_loaded_scenario` run a validated scenario
    (:func:`run_scenario` builds one from its arguments).

    ``target``: a live gate's URL, or a list of URLs of gates sharing one store (``None``: a fresh
    in-process gate in virtual time); ``api_token``: its ``--api-token``; ``concurrency``: requests
    in flight at most on a live run. ``workers``, ``executor`` and ``driver`` say how a virtual run
    spreads and reaches its gate. ``progress`` and the two callbacks hear of every conversation's
    start and end. ``time_scale`` multiplies every duration of the scenario.
    """

    target: str | Sequence[str] | None = None
    on_conversation_started: Callable[[], None] | None = None
    on_conversation_done: Callable[[], None] | None = None
    concurrency: int = 64
    workers: int | None = None
    executor: Executor | None = None
    driver: str = "asgi"
    progress: Progress = NO_PROGRESS
    api_token: str | None = None
    time_scale: float = 1.0


def run_loaded_scenario(scenario: Scenario, options: RunOptions = RunOptions()) -> pd.DataFrame:
    """Run a validated scenario; see :func:`run_scenario` and :func:`stream_loaded_scenario`."""
    return parties_in_order(concat_results(stream_loaded_scenario(scenario, options)))


def stream_loaded_scenario(scenario: Scenario, options: RunOptions = RunOptions()) -> Iterator[pd.DataFrame]:
    """Run a validated scenario; yield its rows as typed frames, piece by piece, in run order.

    A virtual-time run comes in pieces of at most
    :data:`~harness.runner.shards.PIECE_CONVERSATIONS` conversations (a live run: in one piece);
    :class:`~harness.runner.results.ResultsWriter` appends them to a file;
    :func:`run_loaded_scenario` joins them (:func:`~harness.runner.results.concat_results`) into
    the frame a whole run gives (:func:`~harness.runner.results.parties_in_order`). A piece holds
    whole sub-cases or a slice of one (a range of its conversations, with every party's rows:
    parties follow each other within a piece); a piece's categories are its own.

    Only the sub-cases whose ``modes`` include this run's mode run (``"live"`` with a
    ``target``, else ``"virtual"``): the others have no rows (:func:`~harness.runner.report.skipped_results`
    names them). ``options.time_scale`` multiplies every duration of the scenario (:func:`time_scaled`).

    ``options.progress`` hears of every conversation that starts and finishes (see
    :mod:`harness.runner.progress`); the callbacks are called once per conversation too, when its
    start returns and when its row is written — from worker processes as well, in batches.
    """
    target, progress = options.target, options.progress
    on_conversation_started, on_conversation_done = options.on_conversation_started, options.on_conversation_done
    if options.driver not in DRIVERS:
        raise ValueError(f"driver must be one of {', '.join(DRIVERS)}, got {options.driver!r}")
    if target is not None and not isinstance(target, str) and not target:
        target = None  # an empty list of targets: in process
    scenario = runnable(time_scaled(scenario, options.time_scale), live=target is not None)
    on_started, on_done = on_conversation_started, on_conversation_done
    if progress is not NO_PROGRESS:

        def started() -> None:
            progress.started()
            if on_conversation_started is not None:
                on_conversation_started()

        def finished() -> None:
            progress.finished()
            if on_conversation_done is not None:
                on_conversation_done()

        on_started, on_done = started, finished
    try:
        for blocks in _run(scenario, target, on_started, on_done, options):
            yield to_frame(blocks)
    except* DelayError as group:
        # A delay callable's bad output is found while drawing, inside trio's nurseries: say it plainly.
        raise InvalidScenario([str(error) for error in leaves(group)]) from None
    except* RunError as group:
        raise leaves(group)[0] from None
    except* (RunInterrupted, KeyboardInterrupt) as group:
        # Ctrl+C: whatever finished goes back with the interruption, as one exception.
        done = [block for error in leaves(group) if isinstance(error, RunInterrupted) for block in error.finished]
        raise RunInterrupted(done) from None


def _run(scenario: Scenario, target: str | Sequence[str] | None, on_started: Callable[[], None] | None,
         on_done: Callable[[], None] | None, options: RunOptions) -> Iterator[list[ResultBlock]]:
    if target is not None:

        async def real_time() -> list[ResultBlock]:
            async with live(target, concurrency=options.concurrency, api_token=options.api_token) as gate_driver:
                return await execute(scenario, gate_driver, on_conversation_started=on_started,
                                     on_conversation_done=on_done)

        return iter([outside_any_event_loop(lambda: trio.run(real_time))])
    processes = auto_workers(scenario) if options.workers is None else max(1, options.workers)
    return run_pieces(scenario, processes, executor=options.executor, driver=options.driver,
                      on_conversation_started=on_started, on_conversation_done=on_done)


def run_scenario(
    path_or_dict: str | Path | dict[str, Any] | Scenario,
    *,
    target: str | Sequence[str] | None = None,
    seed: int | None = None,
    workers: int | None = None,
    executor: Executor | None = None,
    driver: str = "asgi",
    progress: bool = False,
    api_token: str | None = None,
    time_scale: float = 1.0,
) -> pd.DataFrame:
    """Run a scenario and return one row per conversation (see :mod:`harness.runner.results`).

    Without ``target``: a fresh in-process gate in virtual time (a 300 s timeout costs
    milliseconds); large runs spread their sub-cases, and the conversations of large cases, over
    one process per core (``workers`` overrides; the rows are the same either way).
    ``executor`` runs the pieces on any ``concurrent.futures.Executor`` instead, e.g. a Dask
    cluster's ``client.get_executor()``. With ``target="http://127.0.0.1:8000"``: in real time
    against that live gate (``api_token``: its ``--api-token``); a list of URLs of gates sharing one
    store spreads starts over them in turn and sends each call to another gate than its start's. ``seed`` overrides the file's
    seed. ``driver`` picks how a virtual run reaches its gate: ``"asgi"`` (the real Quart app, in
    process) or ``"core"`` (the same webhook handling without HTTP framing; same rows, faster).
    ``progress=True`` shows a bar of conversations started and finished (a widget in Jupyter).
    ``time_scale=0.1`` runs every duration (delays, gaps, retries, arrivals, timeouts, time
    thresholds) at a tenth: a live rehearsal of a long suite in a fraction of its time.
    A case whose ``modes`` leave out this run's mode (virtual, or live with ``target``) has no rows.
    Raises ``InvalidScenario`` listing every problem::

        frame = run_scenario("scenarios/payment.toml")
        frame.groupby("case", observed=True)["outcome"].value_counts()
    """
    scenario = as_scenario(path_or_dict, seed=seed)
    options = RunOptions(target=target, workers=workers, executor=executor, driver=driver, api_token=api_token,
                         time_scale=time_scale)
    if not progress:
        return run_loaded_scenario(scenario, options)
    total = sum(subcase.conversations for subcase in runnable(scenario, live=target is not None).subcases)
    with NotebookProgress(scenario.name, total) as bar:
        return run_loaded_scenario(scenario, replace(options, progress=bar))
