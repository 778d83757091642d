"""The scenario runner: scenario files in, one results row per conversation out.

``scenario`` validates and expands files, ``distributions`` and ``thresholds`` parse their
values, ``drivers`` is the seam to a gate (in-process virtual time, or live over HTTP),
``engine`` plays the users and third parties, ``results`` types, saves and summarises rows.
"""

from .api import as_scenario, run_loaded_scenario, run_scenario, stream_loaded_scenario
from .drivers import Driver, in_process, live
from .engine import RunError, execute
from .results import ResultsWriter, concat_results, load_results, save_results, summarize, to_frame
from .scenario import InvalidScenario, Scenario, SubCase, load_scenario, parse_scenario

__all__ = [
    "Driver",
    "InvalidScenario",
    "ResultsWriter",
    "RunError",
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
