"""The synchronous entry points: the CLI and notebooks call these.

``run_scenario`` works in a plain script, in pytest, and inside a running Jupyter kernel: when
an asyncio loop is already running in the calling thread, trio runs in a worker thread (a
thread of its own — not ``trio.to_thread`` — so virtual time is unaffected).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import trio

from .drivers import DRIVERS, live
from .engine import execute
from .progress import NO_PROGRESS, NotebookProgress, Progress, reporting_to
from .results import to_frame
from .scenario import InvalidScenario, Scenario, load_scenario, parse_scenario
from .shards import auto_workers, run_sharded, run_virtual

__all__ = ["run_scenario", "run_loaded_scenario", "as_scenario"]

T = TypeVar("T")


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


def _outside_any_event_loop(function: Callable[[], T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return function()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="harness-trio") as pool:
        # The worker thread gets this context, so it reports to the same progress display.
        return pool.submit(contextvars.copy_context().run, function).result()


def run_loaded_scenario(
    scenario: Scenario,
    *,
    target: str | None = None,
    on_conversation_done: Callable[[], None] | None = None,
    concurrency: int = 64,
    workers: int | None = None,
    driver: str = "asgi",
    progress: Progress = NO_PROGRESS,
    api_token: str | None = None,
) -> pd.DataFrame:
    """Run a validated scenario; see :func:`run_scenario`.

    ``progress`` hears of every conversation that starts and finishes (see
    :mod:`harness.runner.progress`); ``on_conversation_done`` is called as each one finishes.
    """
    if driver not in DRIVERS:
        raise ValueError(f"driver must be one of {', '.join(DRIVERS)}, got {driver!r}")
    done = on_conversation_done

    def finished() -> None:
        progress.finished()
        if done is not None:
            done()

    with reporting_to(progress):
        return _run(scenario, target, done if progress is NO_PROGRESS else finished, concurrency, workers, driver,
                    api_token)


def _run(scenario: Scenario, target: str | None, on_conversation_done: Callable[[], None] | None,
         concurrency: int, workers: int | None, driver: str, api_token: str | None) -> pd.DataFrame:
    if target is not None:

        async def real_time() -> list[dict[str, Any]]:
            async with live(target, concurrency=concurrency, api_token=api_token) as driver:
                return await execute(scenario, driver, on_conversation_done=on_conversation_done)

        return to_frame(_outside_any_event_loop(lambda: trio.run(real_time)))
    processes = auto_workers(scenario) if workers is None else max(1, workers)
    if processes > 1 and len(scenario.subcases) > 1:
        return to_frame(run_sharded(scenario, processes, on_conversation_done, driver=driver))
    return to_frame(_outside_any_event_loop(lambda: run_virtual(scenario, on_conversation_done, driver=driver)))


def run_scenario(
    path_or_dict: str | Path | dict[str, Any] | Scenario,
    *,
    target: str | None = None,
    seed: int | None = None,
    workers: int | None = None,
    driver: str = "asgi",
    progress: bool = False,
    api_token: str | None = None,
) -> pd.DataFrame:
    """Run a scenario and return one row per conversation (see :mod:`harness.runner.results`).

    Without ``target``: a fresh in-process gate in virtual time (a 300 s timeout costs
    milliseconds); large runs spread their sub-cases over one process per core (``workers``
    overrides; the rows are the same either way). With ``target="http://127.0.0.1:8000"``: in
    real time against that live gate (``api_token``: its ``--api-token``). ``seed`` overrides the file's seed.
    ``driver`` picks how
    a virtual run reaches its gate: ``"asgi"`` (the real Quart app, in process) or ``"core"`` (the
    same webhook handling without HTTP framing; same rows, faster). ``progress=True`` shows a bar
    of conversations started and finished (a widget in Jupyter). Raises
    ``InvalidScenario`` listing every problem::

        frame = run_scenario("scenarios/payment.toml")
        frame.groupby("case", observed=True)["outcome"].value_counts()
    """
    scenario = as_scenario(path_or_dict, seed=seed)
    if not progress:
        return run_loaded_scenario(scenario, target=target, workers=workers, driver=driver, api_token=api_token)
    total = sum(subcase.conversations for subcase in scenario.subcases)
    with NotebookProgress(scenario.name, total) as bar:
        return run_loaded_scenario(scenario, target=target, workers=workers, driver=driver, progress=bar,
                                   api_token=api_token)
