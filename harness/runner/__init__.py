"""The scenario runner: scenario files in, one results row per conversation out.

``scenario`` validates and expands files, ``distributions`` and ``thresholds`` parse their
values, ``drivers`` is the seam to a gate (in-process virtual time, or live over HTTP),
``engine`` plays the users and third parties, ``results`` types, saves and summarises rows.

The names below load on first use (PEP 562), so validating a scenario
(``harness.runner.scenario``) does not import pandas, numpy or Quart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .api import RunOptions, as_scenario, run_loaded_scenario, run_scenario, stream_loaded_scenario
    from .drivers import Driver, in_process, live
    from .engine import RunError, execute
    from .results import ResultsWriter, concat_results, load_results, save_results, summarize, to_frame
    from .scenario import InvalidScenario, Scenario, SubCase, load_scenario, parse_scenario

# public name -> the module that defines it
_HOMES = {
    "as_scenario": ".api", "run_loaded_scenario": ".api", "run_scenario": ".api",
    "stream_loaded_scenario": ".api", "RunOptions": ".api",
    "Driver": ".drivers", "in_process": ".drivers", "live": ".drivers",
    "RunError": ".engine", "execute": ".engine",
    "load_results": ".results", "save_results": ".results", "summarize": ".results", "to_frame": ".results",
    "ResultsWriter": ".results", "concat_results": ".results",
    "InvalidScenario": ".scenario", "Scenario": ".scenario", "SubCase": ".scenario", "load_scenario": ".scenario",
    "parse_scenario": ".scenario",
}

__all__ = [
    "Driver",
    "InvalidScenario",
    "ResultsWriter",
    "RunError",
    "RunOptions",
    "Scenario",
    "SubCase",
    "as_scenario",
    "concat_results",
    "execute",
    "in_process",
    "live",
    "load_results",
    "load_scenario",
    "parse_scenario",
    "run_loaded_scenario",
    "run_scenario",
    "save_results",
    "stream_loaded_scenario",
    "summarize",
    "to_frame",
]


__getattr__ = lazy_exports(__name__, _HOMES)
