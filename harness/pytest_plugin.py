"""Scenario files as pytest tests (SPEC §12), registered through the ``pytest11`` entry point.

``pytest scenarios/`` collects every ``*.toml`` file with a top-level ``cases`` array (other TOML
files, such as bots, are ignored) and makes one test item per case — per sub-case for a sweep::

    scenarios/payment.toml::late
    scenarios/timeout_sweep.toml::lognormal_delay[timeout_s=30]

Each file runs once, in virtual time (or against ``--harness-target URL``), with the sub-cases
of its selected items (``-k`` and deselection shrink the run); each item then reports its own
sub-case — each party of a case with several parties is an item of its own
(``two_events.toml::either_order[party=1]``), and a case whose ``modes`` leave out the run's
mode is reported as skipped. A failing item says which expectations and thresholds failed, with up to five example
conversations — the same text as ``harness run --junit-xml``. An invalid scenario file is a
collection error naming the file, the case, the field and the reason.

Options: ``--harness-seed N`` overrides the files' seeds, ``--harness-target URL`` runs in real
time against a live gate. The ini option ``harness_scenario_paths`` (paths relative to the ini
file) restricts the files found while walking directories to those folders — a project whose
own tests keep scenario fixtures elsewhere lists its suite folder there; files named on the
command line (and everything under a directory named there) are always collected.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["ScenarioFile", "ScenarioItem", "ScenarioFailed"]

# A file that does not parse is only reported when it looks like it was meant as a scenario.
_LOOKS_LIKE_SCENARIO = re.compile(r"^\s*(\[\[\s*cases\s*\]\]|cases\s*=)", re.MULTILINE)


class ScenarioFailed(AssertionError):
    """A case's expectations or thresholds did not hold; the message says which, with examples."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "scenario files (webhook gate harness)")
    group.addoption("--harness-seed", type=int, default=None, metavar="N",
                    help="override the seed of every scenario file")
    group.addoption("--harness-target", default=None, metavar="URL",
                    help="run scenario files in real time against the live gate at URL")
    parser.addini("harness_scenario_paths", type="paths", default=[],
                  help="folders where scenario files are collected when pytest walks directories (default: anywhere)")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> ScenarioFile | None:
    if file_path.suffix != ".toml" or not _wanted(file_path, parent.config):
        return None
    text = file_path.read_text(encoding="utf-8", errors="replace")
    try:
        document: Any = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        is_scenario = bool(_LOOKS_LIKE_SCENARIO.search(text))  # load_scenario will say what is wrong
    else:
        is_scenario = isinstance(document, dict) and "cases" in document
    return ScenarioFile.from_parent(parent, path=file_path) if is_scenario else None


def _wanted(path: Path, config: pytest.Config) -> bool:
    folders: list[Path] = config.getini("harness_scenario_paths")
    if not folders or config.args_source == pytest.Config.ArgsSource.ARGS:
        return True  # paths named on the command line are searched whole, wherever they are
    named = {Path(arg.split("::")[0]).resolve() for arg in config.args}
    path = path.resolve()
    return path in named or any(path.is_relative_to(folder.resolve()) for folder in folders)


class ScenarioFile(pytest.File):
    """A scenario file: validated at collection, run once for all its selected items."""

    def collect(self) -> Iterator[ScenarioItem]:
        from .runner import InvalidScenario, load_scenario

        try:
            self.scenario = load_scenario(self.path, seed=self.config.getoption("harness_seed"))
        except InvalidScenario as error:
            raise self.CollectError("invalid scenario file:\n" + "\n".join(error.problems)) from None
        self._outcome: Any = None  # the frame, or the exception the run raised
        for subcase in self.scenario.subcases:
            several = len(subcase.parties) > 1  # each party is an item of its own (SPEC §14.4)
            for party in range(len(subcase.parties)):
                yield ScenarioItem.from_parent(self, name=_label(subcase.case, subcase.variant, party if several else None),
                                               subcase=subcase, party=party)

    def results(self) -> Any:
        """The results frame of this file's selected sub-cases, run on first use."""
        if self._outcome is None:
            from dataclasses import replace

            from .runner import RunOptions, run_loaded_scenario

            selected = list({id(item.subcase): item.subcase for item in self.session.items
                             if isinstance(item, ScenarioItem) and item.parent is self}.values())
            try:
                self._outcome = run_loaded_scenario(replace(self.scenario, subcases=selected),
                                                    RunOptions(target=self.config.getoption("harness_target")))
            except Exception as error:  # RunError, an unreachable gate: every item reports it
                self._outcome = error
        if isinstance(self._outcome, Exception):
            raise self._outcome
        return self._outcome


def _label(case: str, variant: str, party: int | None = None) -> str:
    from .runner.report import case_label

    return case_label(case, variant, party)


class ScenarioItem(pytest.Item):
    """One case (or sub-case of a sweep) of a scenario file."""

    obj = None  # pytest-trio's trio_mode looks at every item's ``obj`` for a coroutine function

    def __init__(self, *, subcase: Any, party: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.subcase = subcase
        self.party = party

    def runtest(self) -> None:
        from .runner.report import case_results

        assert isinstance(self.parent, ScenarioFile)
        mode = "virtual" if self.config.getoption("harness_target") is None else "live"
        if mode not in self.subcase.modes:
            pytest.skip(f"modes = {list(self.subcase.modes)}: not run in {mode} mode")
        frame = self.parent.results()
        rows = frame[(frame["case"] == self.subcase.case) & (frame["variant"] == self.subcase.variant)
                     & (frame["party"] == self.party)]
        (result,) = case_results(rows)
        for metric in ("n", "success_rate", "failure_rate", "timeout_rate", "late_rate", "p95_waited_s"):
            self.user_properties.append((metric, result.summary[metric]))
        if not result.passed:
            raise ScenarioFailed(f"{result.name} failed\n{result.message}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
        from .runner import RunError

        if isinstance(excinfo.value, RunError):
            return f"{self.path}: {excinfo.value}"
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # The domain is the item's own name: pytest -v then prints the node id as it is
        # (`scenarios/payment.toml::late`), not with the file's dots turned into `::`.
        return self.path, None, self.name
