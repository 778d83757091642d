"""k6-style thresholds such as ``"success_rate >= 0.99"`` or ``"p95(waited_s) <= 60"``.

>>> threshold = parse_threshold("p95(waited_s) <= 60")
>>> threshold.metric, threshold.op, threshold.limit
('p95(waited_s)', '<=', 60.0)
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # parsing a threshold needs neither; checking one loads them
    import numpy as np
    import pandas as pd

__all__ = ["Threshold", "ThresholdError", "parse_threshold", "metric_mask", "aggregate_of", "aggregate_value", "RATE_METRICS", "AGGREGATES"]

RATE_METRICS = ("success_rate", "failure_rate", "timeout_rate", "misattributed_rate", "late_rate", "early_rate")
AGGREGATES = ("p50", "p95", "p99", "mean", "max")
_COLUMNS = ("waited_s", "delay_s")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "<": operator.lt, ">": operator.gt,
}
_PATTERN = re.compile(r"^\s*(?P<metric>[a-z0-9_]+(?:\(\s*[a-z_]+\s*\))?)\s*(?P<op><=|>=|==|<|>)\s*(?P<limit>\S+)\s*$")


class ThresholdError(ValueError):
    """A threshold that does not parse."""


@dataclass(frozen=True)
class Threshold:
    text: str
    metric: str
    op: str
    limit: float

    def holds(self, value: float) -> bool:
        """Whether a measured value meets the threshold; NaN (nothing measured) never does."""
        return not math.isnan(value) and _OPS[self.op](value, self.limit)

    @property
    def column(self) -> str | None:
        """The column an aggregate measures (``waited_s`` for ``p95(waited_s)``); None for a rate."""
        return aggregate_of(self.metric)[1]


def parse_threshold(text: str) -> Threshold:
    if not isinstance(text, str):
        raise ThresholdError(f"must be a string like \"success_rate >= 0.99\", got {text!r}")
    match = _PATTERN.match(text)
    if match is None:
        raise ThresholdError(f"{text!r} is not \"metric op number\" (ops: < <= > >= ==)")
    metric = re.sub(r"\s+", "", match["metric"])
    if metric not in RATE_METRICS:
        aggregate, column = aggregate_of(metric)
        if aggregate not in AGGREGATES or column not in _COLUMNS:
            raise ThresholdError(
                f"unknown metric {metric!r}; use {', '.join(RATE_METRICS)} or "
                f"{'/'.join(AGGREGATES)} of {' or '.join(_COLUMNS)}, e.g. p95(waited_s)"
            )
    try:
        limit = float(match["limit"])
    except ValueError:
        raise ThresholdError(f"{match['limit']!r} in {text!r} is not a number") from None
    return Threshold(text=text, metric=metric, op=match["op"], limit=limit)


def metric_mask(metric: str, rows: pd.DataFrame) -> pd.Series:
    """For a rate metric: which conversations it counts (the rate is this mask's mean).

    ``late_rate`` counts conversations with at least one 410 ``wait_expired`` answer: from the
    ``late_calls`` column where the runner recorded it, else from the ``statuses`` column;
    ``early_rate`` those whose wait was resolved at once by a held early call (``received_early``).
    """
    if metric == "success_rate":
        return (rows["outcome"] == "success").fillna(False).astype(bool)
    if metric == "failure_rate":
        return (rows["outcome"] == "failure").fillna(False).astype(bool)
    if metric == "timeout_rate":
        return (rows["reason"] == "timeout").fillna(False).astype(bool)
    if metric == "misattributed_rate":
        resolved_by = rows["resolved_by"]
        return (resolved_by.notna() & (resolved_by != rows["conversation"])).fillna(False).astype(bool)
    if metric == "early_rate":
        return (rows["reason"] == "received_early").fillna(False).astype(bool)
    if metric == "late_rate":
        import pandas as pd

        from_statuses = rows["statuses"].fillna("").astype(str).map(lambda joined: "410" in joined.split(","))
        if "late_calls" not in rows.columns:
            return from_statuses.astype(bool)
        late_calls = pd.to_numeric(rows["late_calls"], errors="coerce")
        return ((late_calls > 0).fillna(False) | (late_calls.isna() & from_statuses)).astype(bool)
    raise ValueError(f"{metric!r} is not a rate metric ({', '.join(RATE_METRICS)})")


def aggregate_of(metric: str) -> tuple[str, str | None]:
    """``(aggregate, column)`` of an aggregate metric, ``(metric, None)`` of a rate.

    >>> aggregate_of("p95(waited_s)"), aggregate_of("success_rate")
    (('p95', 'waited_s'), ('success_rate', None))
    """
    aggregate, _, rest = metric.partition("(")
    return aggregate, rest.rstrip(")") or None


def aggregate_value(aggregate: str, values: np.ndarray) -> float:
    """``p50``/``p95``/``p99``/``mean``/``max`` of measured values (no NaN among them); NaN for none."""
    if values.size == 0:
        return float("nan")
    if aggregate == "mean":
        return float(values.mean())
    if aggregate == "max":
        return float(values.max())
    import numpy as np

    return float(np.percentile(values, float(aggregate[1:])))
