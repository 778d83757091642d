"""One sub-case's summary, threshold verdicts and failure material, tallied piece by piece.

A large run's rows arrive in pieces (:mod:`harness.runner.shards`, ``harness run --out``). A
:class:`Tally` keeps, as they come, only what a summary and a failure message need — counts, the
measured ``waited_s`` and ``delay_s`` values (8 bytes a conversation each: exact percentiles need
every value) and at most :data:`MAX_EXAMPLES` candidate example conversations for each way the
case could fail — and lets the rows go. The figures are the same however the rows were cut, and
the same as on the whole frame: :func:`summarize_rows` is a tally of one piece.

>>> import pandas as pd
>>> from harness.runner.results import to_frame
>>> rows = to_frame([{"scenario": "s", "case": "c", "variant": "", "conversation": i,
...                   "outcome": "success" if i else "failure", "waited_s": float(i), "statuses": "200"}
...                  for i in range(4)])
>>> tally = Tally()
>>> tally.add(rows.iloc[:3]); tally.add(rows.iloc[3:])
>>> tally.metric("success_rate"), tally.metric("max(waited_s)")
(0.75, 3.0)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from .thresholds import AGGREGATES, RATE_METRICS, Threshold, aggregate_of, aggregate_value, metric_mask, parse_threshold

__all__ = ["Tally", "summarize", "summarize_rows", "threshold_verdicts", "MAX_EXAMPLES"]

MAX_EXAMPLES = 5  # example conversations in a failure message
KEY_PREFIX = 6  # as many characters of a key as the gate's own logs show
MEASURED = ("waited_s", "delay_s")  # the columns thresholds aggregate


class Tally:
    """What one sub-case's (or one party's) rows add up to, fed in order with :meth:`add`."""

    def __init__(self) -> None:
        self.n = 0
        self.first: dict[str, Any] = {}  # scenario, case, variant and party of the first row
        self.counted = dict.fromkeys(RATE_METRICS, 0)  # conversations each rate counts
        self.statuses: Counter[str] = Counter()
        self.checked = 0  # conversations with expectations
        self.failed = 0  # of which some expectation failed
        self.problems: Counter[str] = Counter()  # their failure texts, split, in order first seen
        self.errors = 0
        self.first_error: str | None = None
        self.thresholds_text: str | None = None
        self._thresholds: list[Threshold] = []
        self._measured: dict[str, list[np.ndarray]] = {column: [] for column in MEASURED}
        # Candidate examples: conversations that failed or hit an error; per rate metric of a
        # threshold, the first ones it counted and did not count; per aggregated column, the
        # smallest and largest values (ties in arrival order) as (value, position, example).
        self.culprits: list[dict[str, Any]] = []
        self._by_mask: dict[tuple[str, bool], list[dict[str, Any]]] = {}
        self._extremes: dict[tuple[str, bool], list[tuple[float, int, dict[str, Any]]]] = {}

    def add(self, rows: pd.DataFrame) -> None:
        """Count in the next rows of the sub-case (typed, as :func:`~harness.runner.results.to_frame` makes them)."""
        if len(rows) == 0:
            return
        if not self.first:
            first = rows.iloc[0]
            self.first = {"scenario": first.get("scenario"), "case": first.get("case"),
                          "variant": first.get("variant"), "party": int(first.get("party", 0))}
        if self.thresholds_text is None:
            recorded = rows["thresholds"].dropna()
            if len(recorded):
                self.thresholds_text = str(recorded.iloc[0])
                self._thresholds = [parse_threshold(text) for text in self.thresholds_text.split("; ")]
        masks = {metric: metric_mask(metric, rows) for metric in RATE_METRICS}
        for metric, mask in masks.items():
            self.counted[metric] += int(mask.sum())
        for joined, count in rows["statuses"].value_counts(dropna=False, sort=False).items():
            for status in filter(None, str(joined).split(",")):
                self.statuses[status] += int(count)
        expected = rows["passed"].dropna()
        self.checked += len(expected)
        failed = ~rows["passed"].fillna(True).astype(bool)
        self.failed += int(failed.sum())
        self.problems.update(problem for text in rows.loc[failed, "failure"].dropna() for problem in str(text).split("; "))
        errors = rows["error"].dropna()
        self.errors += len(errors)
        if self.first_error is None and len(errors):
            self.first_error = str(errors.iloc[0])
        measured = {column: _measured(rows[column]) for column in MEASURED}
        for column, (values, _) in measured.items():
            if values.size:
                self._measured[column].append(values)
        self._keep_examples(rows, failed | rows["error"].notna(), masks, measured)
        self.n += len(rows)

    def _keep_examples(self, rows: pd.DataFrame, culprits: pd.Series, masks: dict[str, pd.Series],
                       measured: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        self.culprits.extend(_first_examples(rows, culprits, MAX_EXAMPLES - len(self.culprits)))
        # Each rate and each column once, however many thresholds name it.
        for metric in dict.fromkeys(t.metric for t in self._thresholds if t.column is None):
            for counted in (True, False):
                kept = self._by_mask.setdefault((metric, counted), [])
                mask = masks[metric]
                kept.extend(_first_examples(rows, mask if counted else ~mask, MAX_EXAMPLES - len(kept)))
        for column in dict.fromkeys(t.column for t in self._thresholds if t.column is not None):
            values, positions = measured[column]
            for ascending in (True, False):
                extremes = self._extremes.setdefault((column, ascending), [])
                # A stable sort either way: equal values keep their arrival order, as a stable sort
                # of the whole sub-case's rows would (pandas' descending stable sort does the same).
                head = np.argsort(values if ascending else -values, kind="stable")[:MAX_EXAMPLES]
                candidates = zip(values[head], positions[head], _examples(rows.iloc[positions[head]]))
                extremes.extend((float(value), self.n + int(position), example) for value, position, example in candidates)
                extremes.sort(key=lambda item: (item[0] if ascending else -item[0], item[1]))
                del extremes[MAX_EXAMPLES:]

    def values(self, column: str) -> np.ndarray:
        """Every measured (non-NaN) value of ``waited_s`` or ``delay_s``, in arrival order."""
        kept = self._measured[column]
        if len(kept) > 1:
            kept[:] = [np.concatenate(kept)]
        return kept[0] if kept else np.empty(0)

    def metric(self, metric: str) -> float:
        """A threshold metric (``success_rate``, ``p95(waited_s)``, …); NaN when there is nothing to measure."""
        if self.n == 0:
            return float("nan")
        if metric in RATE_METRICS:
            return self.counted[metric] / self.n
        aggregate, column = aggregate_of(metric)
        if column is None:
            raise ValueError(f"unknown metric {metric!r}")
        return aggregate_value(aggregate, self.values(column))

    def verdicts(self) -> list[tuple[str, bool, float]]:
        """``(threshold, holds, measured)`` for the thresholds the rows record."""
        measured = [(threshold, self.metric(threshold.metric)) for threshold in self._thresholds]
        return [(threshold.text, threshold.holds(value), value) for threshold, value in measured]

    def summary(self, verdicts: list[tuple[str, bool, float]] | None = None) -> dict[str, Any]:
        """The summary record (see :func:`summarize`); ``verdicts``: :meth:`verdicts`, if already taken."""
        verdicts = self.verdicts() if verdicts is None else verdicts
        expectations_ok = self.failed == 0
        thresholds_ok = all(ok for _, ok, _ in verdicts)
        return {
            "scenario": self.first.get("scenario"),
            "case": self.first.get("case"),
            "variant": self.first.get("variant"),
            "party": self.first.get("party", 0),
            "n": self.n,
            **{metric: self.metric(metric) for metric in RATE_METRICS},
            "statuses": " ".join(f"{status}×{count}" for status, count in sorted(self.statuses.items())) or "-",
            **{f"{aggregate}_waited_s": self.metric(f"{aggregate}(waited_s)") for aggregate in AGGREGATES},
            "expectations": f"{self.checked - self.failed}/{self.checked}" if self.checked else "-",
            "expectations_ok": expectations_ok,
            "thresholds": "; ".join(f"{'✓' if ok else '✗'} {text} ({value:.4g})" for text, ok, value in verdicts) or "-",
            "thresholds_ok": thresholds_ok,
            "errors": self.errors,
            "passed": expectations_ok and thresholds_ok and self.errors == 0,
        }

    def examples(self, failed: list[tuple[str, float | None]]) -> list[dict[str, Any]]:
        """Up to :data:`MAX_EXAMPLES` conversations that show the failure.

        Those that failed an expectation or hit an error first; else those that pulled the first
        failed threshold (``failed``: ``(threshold, measured)``, in order) the wrong way — e.g. the
        unsuccessful ones for ``success_rate >= 0.99``, the longest waits for ``p95(waited_s) <= 60``.
        """
        if self.culprits or not failed:
            return list(self.culprits)
        threshold, measured = parse_threshold(failed[0][0]), failed[0][1]
        wants_more = threshold.op in (">", ">=") or (threshold.op == "==" and (measured or 0) < threshold.limit)
        column = threshold.column
        if column is None:
            return list(self._by_mask.get((threshold.metric, not wants_more), []))
        return [example for _, _, example in self._extremes.get((column, wants_more), [])]


def _measured(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(values, positions)``: a column's measured (non-NaN) values and where they are among its rows."""
    values = column.to_numpy(dtype=float, na_value=np.nan)
    positions = np.flatnonzero(~np.isnan(values))
    return values[positions], positions


def _first_examples(rows: pd.DataFrame, mask: pd.Series, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` rows where ``mask`` holds, as examples (the piece is not filtered whole)."""
    if limit <= 0:
        return []
    return _examples(rows.iloc[np.flatnonzero(mask.to_numpy(dtype=bool))[:limit]])


def _examples(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """``rows`` as example records for a failure message."""
    return [_example(row) for _, row in rows.iterrows()]


def _example(row: pd.Series) -> dict[str, Any]:
    key = row.get("conversation_key")
    return {
        "conversation": int(row["conversation"]),
        "key": None if pd.isna(key) else f"{str(key)[:KEY_PREFIX]}…",
        "statuses": str(row.get("statuses") or ""),
        "outcome": None if pd.isna(row.get("outcome")) else str(row["outcome"]),
        "reason": None if pd.isna(row.get("reason")) else str(row["reason"]),
        "waited_s": number_or_none(row.get("waited_s")),
        "failure": None if pd.isna(row.get("failure")) else str(row["failure"]),
        "error": None if pd.isna(row.get("error")) else str(row["error"]),
    }


def number_or_none(value: Any) -> float | None:
    """A figure for JSON, which has no NaN: an unmeasurable one is ``None``."""
    return None if value is None or pd.isna(value) else float(value)


def tally_of(rows: pd.DataFrame) -> Tally:
    """The tally of one sub-case's rows, whole."""
    tally = Tally()
    tally.add(rows)
    return tally


def threshold_verdicts(rows: pd.DataFrame) -> list[tuple[str, bool, float]]:
    """``(threshold, holds, measured)`` for the thresholds recorded in one sub-case's rows."""
    return tally_of(rows).verdicts()


def summarize_rows(rows: pd.DataFrame) -> dict[str, Any]:
    """The summary of one sub-case's rows, as one record (see :func:`summarize`).

    ``passed`` is the case's verdict: every expectation and threshold held, and no conversation
    hit an error.
    """
    return tally_of(rows).summary()


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (scenario, case, variant, party): rates, statuses, waits, expectations, thresholds.

    Columns: ``scenario, case, variant, n``, the rates ``success_rate, failure_rate,
    timeout_rate, misattributed_rate, late_rate``, ``statuses`` (``"200×18 410×2"``),
    ``p50/p95/p99/mean/max_waited_s``, ``expectations`` (``"18/20"``), ``expectations_ok``,
    ``thresholds`` (``"✓ success_rate >= 0.9 (0.95)"``), ``thresholds_ok``, ``errors`` and
    ``passed`` (all of it held).
    """
    grouped = frame.groupby(["scenario", "case", "variant", "party"], observed=True, sort=False)
    return pd.DataFrame.from_records([summarize_rows(rows) for _, rows in grouped])
