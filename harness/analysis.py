"""DataFrame helpers for exploring results; the notebooks stay thin by calling these.

>>> wilson_interval(99, 100)
(0.9455..., 0.9982...)

Every helper takes the results frame of :func:`harness.run_scenario` (or
:func:`harness.load_results`) and returns a plain DataFrame or number, so they also work in a
script or a test.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
import pandas as pd

__all__ = [
    "wilson_interval",
    "success_curve",
    "minimal_timeout",
    "ecdf",
    "outcome_table",
    "status_table",
    "misattribution",
]


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; ``(nan, nan)`` when ``n == 0``.

    Unlike the normal approximation it stays inside [0, 1] and behaves at 0 % and 100 %, which
    is where timeout curves spend most of their time.
    """
    if n == 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half_width = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == n else min(1.0, centre + half_width)
    return float(low), float(high)


def success_curve(frame: pd.DataFrame, by: str = "timeout_s", confidence: float = 0.95) -> pd.DataFrame:
    """Success rate per value of ``by`` with Wilson intervals.

    Columns: ``by, n, successes, success_rate, ci_low, ci_high``, sorted by ``by``.
    """
    records = []
    for value, rows in frame.groupby(by, observed=True, sort=True):
        n = len(rows)
        successes = int((rows["outcome"] == "success").sum())
        low, high = wilson_interval(successes, n, confidence)
        records.append({by: value, "n": n, "successes": successes, "success_rate": successes / n,
                        "ci_low": low, "ci_high": high})
    return pd.DataFrame.from_records(records, columns=[by, "n", "successes", "success_rate", "ci_low", "ci_high"])


def minimal_timeout(curve: pd.DataFrame, target: float = 0.99, *, by: str = "timeout_s",
                    conservative: bool = False) -> float | None:
    """The smallest ``by`` value whose success rate reaches ``target``; ``None`` if none does.

    With ``conservative=True`` the interval's lower bound must reach the target instead, which
    asks for more conversations before a timeout is declared good enough.
    """
    column = "ci_low" if conservative else "success_rate"
    meeting = curve.loc[curve[column] >= target, by]
    return None if meeting.empty else meeting.min().item()


def ecdf(values: Sequence[float] | pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF: sorted finite values and the share of values at or below each."""
    data = np.sort(np.asarray(values, dtype=float))
    data = data[np.isfinite(data)]
    return data, np.arange(1, data.size + 1) / max(data.size, 1)


def outcome_table(frame: pd.DataFrame, by: Sequence[str] = ("case", "variant")) -> pd.DataFrame:
    """Share of each outcome/reason per group (rows sum to 1); unresolved rows count as 'none'."""
    labels = frame["outcome"].astype("object").fillna("none") + "/" + frame["reason"].astype("object").fillna("none")
    table = pd.crosstab([frame[column] for column in by], labels, normalize="index")
    table.columns.name = "outcome/reason"
    return table


def status_table(frame: pd.DataFrame, by: Sequence[str] = ("case", "variant"), *, all_calls: bool = False) -> pd.DataFrame:
    """Counts of HTTP statuses per group: the first call's, or every call's with ``all_calls``."""
    if all_calls:
        exploded = frame.assign(status=frame["statuses"].str.split(",")).explode("status")
        exploded = exploded[exploded["status"].fillna("") != ""]
        statuses = exploded["status"].astype(int)
        groups = [exploded[column] for column in by]
    else:
        statuses = frame["first_status"].astype("object").fillna("no call")
        groups = [frame[column] for column in by]
    table = pd.crosstab(groups, statuses)
    table.columns.name = "status"
    return table


def misattribution(frame: pd.DataFrame, by: Sequence[str] = ("case", "variant")) -> pd.DataFrame:
    """Per group: how many waits were resolved, and by whose call.

    Columns: ``n``, ``resolved_own`` (by the conversation's own party), ``resolved_other`` (by
    another conversation's party: the payment lands in the wrong conversation),
    ``unresolved``, and ``misattributed_rate`` = resolved_other / n.
    """
    resolved_by = frame["resolved_by"]
    flags = pd.DataFrame({
        "resolved_own": resolved_by.notna() & (resolved_by == frame["conversation"]),
        "resolved_other": resolved_by.notna() & (resolved_by != frame["conversation"]),
        "unresolved": resolved_by.isna(),
    }).fillna(False).astype(int)
    for column in by:
        flags[column] = frame[column]
    table = flags.groupby(list(by), observed=True, sort=False).agg(
        n=("unresolved", "size"), resolved_own=("resolved_own", "sum"),
        resolved_other=("resolved_other", "sum"), unresolved=("unresolved", "sum"),
    )
    table["misattributed_rate"] = table["resolved_other"] / table["n"]
    return table
