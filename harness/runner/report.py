"""Verdicts of a run, for people and for CI: one :class:`CaseResult` per case or sub-case.

The ``harness run`` command and the pytest plugin both build their output here, so a failure
reads the same in a terminal, in a JUnit report and in a pytest report:

- :func:`case_results` — the results frame → one :class:`CaseResult` per (scenario, case, variant,
  party), plus :func:`skipped_results` for the sub-cases a run's mode leaves out (``modes``);
- :func:`verdict_line` — ``"3 scenarios, 31 cases: 2 failed (payment/late, signatures/stale)"``;
- :func:`summary_json` — the SPEC §12 document (``null``, never ``NaN``);
- :func:`junit_xml` — one ``<testcase>`` per case or sub-case, failures with the same message.

A sub-case is named ``case[variant]`` (``sweep[timeout_s=30]``), and within a run
``scenario/case[variant]``, the way pytest names the item ``file.toml::case[variant]``. Each
party of a case with several parties is an item of its own, named with ``party=N`` after the
variant: ``capture[party=1]``, ``gap[parties[1].delay_s=2,party=1]`` (SPEC §14.4).

A skipped item (its case's ``modes`` leave out this run's mode, SPEC §16.4) counts as neither
passed nor failed: the verdict line ends with ``, 1 skipped``, JUnit gets ``<skipped/>``, and its
summary JSON entry has ``"skipped": true`` (``"passed": true``, ``n`` 0, every figure ``null``);
every other entry has ``"skipped": false``.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .results import row_groups
from .summary import MAX_EXAMPLES, Tally, number_or_none
from .thresholds import AGGREGATES, RATE_METRICS

__all__ = ["CaseResult", "ThresholdResult", "Verdicts", "case_results", "skipped_results", "in_run_order", "verdict_line", "summary_json", "write_summary_json",
           "junit_xml", "write_junit_xml", "case_label", "MAX_EXAMPLES"]

MAX_NAMED_FAILURES = 10  # failed cases named in the verdict line before "+N more"


@dataclass(frozen=True)
class ThresholdResult:
    expr: str
    value: float | None  # None when there was nothing to measure (e.g. no conversation waited)
    passed: bool


@dataclass(frozen=True)
class CaseResult:
    """The verdict on one case (or one sub-case of a sweep), and why."""

    scenario: str
    case: str
    variant: str
    summary: dict[str, Any]  # :meth:`harness.runner.summary.Tally.summary`
    thresholds: list[ThresholdResult]
    message: str = ""  # why it failed (empty when it passed): expectations, thresholds, examples
    examples: list[dict[str, Any]] = field(default_factory=list)
    party: int = 0
    named_party: bool = False  # the case has several parties: the item's name says which
    skipped: str | None = None  # why it did not run (its case's modes), None when it ran

    @property
    def passed(self) -> bool:
        return bool(self.summary["passed"])

    @property
    def label(self) -> str:
        """``case``, ``case[variant]`` or ``case[variant,party=N]``: the name pytest and JUnit give it."""
        return case_label(self.case, self.variant, self.party if self.named_party else None)

    @property
    def name(self) -> str:
        """``scenario/case[variant]``: the name the verdict line gives it."""
        return f"{self.scenario}/{self.label}"

    def to_json(self) -> dict[str, Any]:
        """This case's entry in the summary JSON (numbers that cannot be measured are ``None``)."""
        summary = self.summary
        return {
            "case": self.case,
            "variant": self.variant,
            "party": self.party,
            "n": int(summary["n"]),
            "passed": self.passed,
            "skipped": self.skipped is not None,
            **{metric: number_or_none(summary[metric]) for metric in RATE_METRICS},
            "waited_s": {aggregate: number_or_none(summary[f"{aggregate}_waited_s"]) for aggregate in AGGREGATES},
            "thresholds": [{"expr": t.expr, "value": t.value, "passed": t.passed} for t in self.thresholds],
            "expectations": summary["expectations"],
            "errors": int(summary["errors"]),
            "statuses": summary["statuses"],
            "message": self.message or None,
        }


def case_label(case: str, variant: str, party: int | None = None) -> str:
    """``case`` for a plain case, ``case[variant]`` for a sub-case of a sweep, and with
    ``party=N`` after the variant for one party of a case with several.

    >>> case_label("gap", "parties[1].delay_s=2", 1), case_label("capture", "", 0)
    ('gap[parties[1].delay_s=2,party=1]', 'capture[party=0]')
    """
    parts = [part for part in (variant, None if party is None else f"party={party}") if part]
    return f"{case}[{','.join(parts)}]" if parts else case


class Verdicts:
    """:class:`CaseResult` objects from result pieces as they arrive, without keeping their rows.

    Feed typed pieces in run order with :meth:`add` (a run's pieces, a file's row groups); each
    (scenario, case, variant, party) is tallied as its rows pass (:class:`~harness.runner.summary.Tally`),
    so memory grows by a few bytes a conversation, not by the rows. :meth:`results` gives the
    same verdicts as :func:`case_results` on all the rows at once::

        verdicts = Verdicts()
        for piece in pieces:
            verdicts.add(piece)
        results = verdicts.results()
    """

    def __init__(self) -> None:
        self._tallies: dict[tuple[Any, ...], Tally] = {}

    def add(self, piece: pd.DataFrame) -> None:
        if "party" not in piece.columns:
            piece = piece.assign(party=0)
        for key, rows in row_groups(piece, ["scenario", "case", "variant", "party"]):
            self._tallies.setdefault(key, Tally()).add(rows)

    def results(self) -> list[CaseResult]:
        """One result per (scenario, case, variant, party) seen, in order of first appearance."""
        parties = Counter((scenario, case, variant) for scenario, case, variant, _ in self._tallies)
        return [_case_result(tally, named_party=parties[key[:3]] > 1) for key, tally in self._tallies.items()]


def case_results(frame: pd.DataFrame) -> list[CaseResult]:
    """One :class:`CaseResult` per (scenario, case, variant, party) of a results frame, in run order."""
    verdicts = Verdicts()
    verdicts.add(frame)
    return verdicts.results()


def _case_result(tally: Tally, *, named_party: bool) -> CaseResult:
    verdicts = tally.verdicts()
    summary = tally.summary(verdicts)
    thresholds = [ThresholdResult(text, number_or_none(value), ok) for text, ok, value in verdicts]
    examples = [] if summary["passed"] else tally.examples([(t.expr, t.value) for t in thresholds if not t.passed])
    message = "" if summary["passed"] else _failure_message(tally, thresholds, examples)
    return CaseResult(str(tally.first["scenario"]), str(tally.first["case"]), str(tally.first["variant"] or ""),
                      summary, thresholds, message, examples, party=int(tally.first["party"]), named_party=named_party)


def skipped_results(scenario: Any, mode: str) -> list[CaseResult]:
    """The items of ``scenario``'s sub-cases whose ``modes`` leave out ``mode`` (``"virtual"``/``"live"``)."""
    results = []
    for subcase in scenario.subcases:
        if mode in subcase.modes:
            continue
        why = f"modes = {list(subcase.modes)}: not run in {mode} mode"
        named = len(subcase.parties) > 1
        for party in range(len(subcase.parties)):
            summary = {"n": 0, "passed": True, "statuses": "-", "expectations": "-", "errors": 0, "thresholds": "-",
                       **{metric: math.nan for metric in RATE_METRICS},
                       **{f"{aggregate}_waited_s": math.nan for aggregate in AGGREGATES}}
            results.append(CaseResult(scenario.name, subcase.case, subcase.variant, summary, [], "", [],
                                      party=party, named_party=named, skipped=why))
    return results


def in_run_order(scenarios: list[Any], ran: list[CaseResult], skipped: list[CaseResult]) -> list[CaseResult]:
    """``ran`` and ``skipped`` items merged in the order their scenarios list them."""
    position = {(s.name, sub.case, sub.variant): (n, sub.index) for n, s in enumerate(scenarios) for sub in s.subcases}
    return sorted([*ran, *skipped], key=lambda r: (*position.get((r.scenario, r.case, r.variant), (len(scenarios), 0)),
                                                     r.party))


def _failure_message(tally: Tally, thresholds: list[ThresholdResult], examples: list[dict[str, Any]]) -> str:
    """What failed, in a few lines: expectations (each distinct problem counted), thresholds, errors, examples."""
    lines = []
    if tally.failed:
        lines.append(f"expectations: {tally.failed} of {tally.checked} conversations failed")
        lines.extend(f"  {problem} ({count}×)" for problem, count in tally.problems.most_common(MAX_EXAMPLES))
    for threshold in thresholds:
        if not threshold.passed:
            measured = "nothing to measure" if threshold.value is None else f"measured {threshold.value:.4g}"
            lines.append(f"threshold failed: {threshold.expr} ({measured})")
    if tally.errors:
        lines.append(f"errors: {tally.errors} conversations hit an error, e.g. {tally.first_error}")
    if examples:
        lines.append(f"example conversations ({len(examples)}):")
        lines.extend("  " + _example_text(example) for example in examples)
    return "\n".join(lines)


def _example_text(example: dict[str, Any]) -> str:
    outcome = example["outcome"] or "unresolved"
    if example["reason"]:
        outcome += f" ({example['reason']})"
    text = (f"#{example['conversation']} key {example['key'] or '-'} statuses {example['statuses'] or '-'} "
            f"outcome {outcome}")
    if example["waited_s"] is not None:
        text += f" waited {example['waited_s']:.3g} s"
    detail = example["failure"] or example["error"]
    return f"{text}: {detail}" if detail else text


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def verdict_line(results: list[CaseResult]) -> str:
    """``"1 scenario, 2 cases: all passed"`` / ``"3 scenarios, 31 cases: 2 failed (payment/late, …)"``.

    Sub-cases and parties count one by one; at most :data:`MAX_NAMED_FAILURES` failures are
    named; skipped items are counted and named at the end (``…: all passed, 1 skipped
    (payment/just_in_time)``).

    >>> verdict_line([])
    '0 scenarios, 0 cases: all passed'
    """
    scenarios = len({result.scenario for result in results})
    counts = f"{_plural(scenarios, 'scenario')}, {_plural(len(results), 'case')}"
    failed = [result.name for result in results if not result.passed and result.skipped is None]
    skipped = [result.name for result in results if result.skipped is not None]
    tail = f", {len(skipped)} skipped ({', '.join(_named(skipped))})" if skipped else ""
    if not failed:
        return f"{counts}: all passed{tail}"
    return f"{counts}: {len(failed)} failed ({', '.join(_named(failed))}){tail}"


def _named(names: list[str]) -> list[str]:
    named = names[:MAX_NAMED_FAILURES]
    if len(names) > len(named):
        named.append(f"+{len(names) - len(named)} more")
    return named


def summary_json(results: list[CaseResult]) -> dict[str, Any]:
    """``{"passed", "scenarios": [{"name", "passed", "cases": [...]}]}`` (SPEC §12), plus ``verdict``."""
    scenarios: dict[str, list[CaseResult]] = {}
    for result in results:
        scenarios.setdefault(result.scenario, []).append(result)
    return {
        "passed": all(result.passed for result in results),
        "verdict": verdict_line(results),
        "scenarios": [
            {"name": name, "passed": all(r.passed for r in cases), "cases": [r.to_json() for r in cases]}
            for name, cases in scenarios.items()
        ],
    }


def write_summary_json(results: list[CaseResult], path: str | Path, *, interrupted: bool = False) -> None:
    """Write :func:`summary_json` (creating missing folders); ``allow_nan=False`` guarantees strict JSON.

    ``interrupted``: the run was stopped (SPEC §16.2); the summary covers what finished and says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = summary_json(results) | {"interrupted": interrupted}
    if interrupted:
        document["passed"] = False  # what finished may pass; the run as asked did not
        document["verdict"] = f"interrupted; of the conversations that finished: {document['verdict']}"
    with path.open("w", encoding="utf-8") as file:
        json.dump(document, file, indent=2, allow_nan=False, ensure_ascii=False)
        file.write("\n")


def junit_xml(results: list[CaseResult], *, durations_s: dict[str, float] | None = None) -> ET.ElementTree:
    """A JUnit report: one ``<testsuite>`` per scenario, one ``<testcase>`` per case or sub-case.

    A failed case has a ``<failure>`` whose ``message`` is its first line and whose text is the
    whole :attr:`CaseResult.message`. ``durations_s`` (scenario → seconds) fills ``time``.
    """
    durations_s = durations_s or {}
    root = ET.Element("testsuites", name="harness")
    suites: dict[str, ET.Element] = {}
    for result in results:
        suite = suites.get(result.scenario)
        if suite is None:
            suite = suites[result.scenario] = ET.SubElement(root, "testsuite", name=result.scenario)
        testcase = ET.SubElement(suite, "testcase", classname=result.scenario, name=result.label)
        if result.skipped is not None:
            ET.SubElement(testcase, "skipped", message=result.skipped)
            continue
        properties = ET.SubElement(testcase, "properties")
        for metric in ("n", *RATE_METRICS, "p95_waited_s"):
            value = result.summary[metric]
            if not (isinstance(value, float) and math.isnan(value)):
                ET.SubElement(properties, "property", name=metric, value=f"{value:.6g}")
        if not result.passed:
            failure = ET.SubElement(testcase, "failure", message=result.message.splitlines()[0] if result.message else "failed")
            failure.text = result.message
    for name, suite in suites.items():
        cases = [r for r in results if r.scenario == name]
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(not r.passed for r in cases)))
        suite.set("skipped", str(sum(r.skipped is not None for r in cases)))
        suite.set("errors", "0")
        suite.set("time", f"{durations_s.get(name, 0.0):.3f}")
    root.set("tests", str(len(results)))
    root.set("failures", str(sum(not r.passed for r in results)))
    root.set("skipped", str(sum(r.skipped is not None for r in results)))
    root.set("errors", "0")
    root.set("time", f"{sum(durations_s.values()):.3f}")
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit_xml(results: list[CaseResult], path: str | Path, *, durations_s: dict[str, float] | None = None) -> None:
    """Write :func:`junit_xml` to ``path`` (UTF-8, with an XML declaration; missing folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    junit_xml(results, durations_s=durations_s).write(path, encoding="utf-8", xml_declaration=True)
