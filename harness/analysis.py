"""DataFrame helpers for exploring results; the notebooks stay thin by calling these.

>>> wilson_interval(99, 100)
(0.9455..., 0.9982...)

Every helper takes the results frame of :func:`harness.run_scenario` (or
:func:`harness.load_results`) and returns a plain DataFrame or number, so they also work in a
script or a test. Plots colour outcomes and statuses through :data:`OUTCOME_COLORS`, so success
is the same green everywhere and no refusal is drawn in a "good" colour.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "OUTCOME_COLORS",
    "outcome_colors",
    "wilson_interval",
    "success_curve",
    "minimal_timeout",
    "late_payers",
    "timeout_tradeoff",
    "extra_time_table",
    "ecdf",
    "delay_quantile",
    "fit_delays",
    "outcome_table",
    "status_table",
    "misattribution",
]

# Okabe–Ito colours (readable with colour-blindness). Keys are outcomes, reasons, "outcome/reason"
# labels and HTTP statuses as text; only success is green.
_GOOD, _BAD, _LATE, _DUPLICATE, _REFUSED, _NONE = "#009E73", "#D55E00", "#CC79A7", "#E69F00", "#555555", "#BBBBBB"
OUTCOME_COLORS: dict[str, str] = {
    "success": _GOOD, "received": _GOOD, "success/received": _GOOD, "200": _GOOD,
    "failure": _BAD, "timeout": _BAD, "failure/timeout": _BAD,
    "late": _LATE, "late payers": _LATE, "410": _LATE,  # paid, but after the deadline: told it failed
    "409": _DUPLICATE, "duplicate": _DUPLICATE,  # refused: the wait was no longer open
    "misattributed": "#882255",  # resolved, by another conversation's call
    "400": _REFUSED, "401": "#0072B2", "404": "#56B4E9", "413": _REFUSED, "415": _REFUSED, "422": "#8C564B",
    "none": _NONE, "none/none": _NONE, "no call": _NONE,
}


def outcome_colors(labels: Iterable[Any]) -> list[str]:
    """The :data:`OUTCOME_COLORS` colour of each label (an outcome, ``outcome/reason``, a status).

    Pass a table's columns to ``DataFrame.plot(color=...)``. Unknown labels get a neutral grey,
    never green.
    """
    colors = []
    for label in labels:
        text = str(label)
        colors.append(OUTCOME_COLORS.get(text) or OUTCOME_COLORS.get(text.split("/")[0], _REFUSED))
    return colors


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
    return _rate_curve(frame, frame["outcome"] == "success", by, ("successes", "success_rate"), confidence)


def minimal_timeout(curve: pd.DataFrame, target: float = 0.99, *, by: str = "timeout_s") -> float | None:
    """The shortest ``by`` value whose success rate is *shown* to reach ``target``; ``None`` if none is.

    Shown means the Wilson interval's lower bound (``ci_low`` of :func:`success_curve`) reaches
    the target, not the point estimate: 99.1 % measured over 1,000 conversations is compatible
    with 98.3 %, and a timeout whose true rate sits just under the target still measures above
    it about half the time. The price is sample size: with ``n`` conversations per timeout, the
    bound reaches 99 % only when the measured rate is at least about ``0.99 + 2 * sqrt(0.01 / n)``
    (99.7 % at n = 1,000; 99.3 % at 5,000; 99.14 % at 20,000).
    """
    meeting = curve.loc[curve["ci_low"] >= target, by]
    return None if meeting.empty else meeting.min().item()


def late_payers(frame: pd.DataFrame, by: str = "timeout_s", confidence: float = 0.95) -> pd.DataFrame:
    """Per value of ``by``: customers whose call came, but after the deadline (told it failed).

    A late payer is a conversation with a call answered 410 ``wait_expired``: the ``late_calls``
    count when the results have that column, else a 410 among ``statuses``. Columns: ``by, n,
    late, late_rate, ci_low, ci_high`` (Wilson), sorted by ``by``.
    """
    if "late_calls" in frame.columns:
        late = pd.to_numeric(frame["late_calls"], errors="coerce").fillna(0) > 0
    else:
        late = frame["statuses"].astype("string").fillna("").str.split(",").apply(lambda statuses: "410" in statuses)
    return _rate_curve(frame, late.astype(bool), by, ("late", "late_rate"), confidence)


def _rate_curve(frame: pd.DataFrame, flags: pd.Series, by: str, names: tuple[str, str],
                confidence: float) -> pd.DataFrame:
    """Count and share of flagged rows per value of ``by``, with Wilson intervals."""
    count_name, rate_name = names
    records = []
    for value, rows in flags.groupby(frame[by], observed=True, sort=True):
        n, count = len(rows), int(rows.sum())
        low, high = wilson_interval(count, n, confidence)
        records.append({by: value, "n": n, count_name: count, rate_name: count / n, "ci_low": low, "ci_high": high})
    return pd.DataFrame.from_records(records, columns=[by, "n", count_name, rate_name, "ci_low", "ci_high"])


def timeout_tradeoff(frame: pd.DataFrame, by: str = "timeout_s", confidence: float = 0.95) -> pd.DataFrame:
    """One row per timeout: what it wins and what it costs.

    Columns: ``by, n, success_rate, ci_low, ci_high`` (as :func:`success_curve`),
    ``mean_waited_s`` (how long a customer waits at the block on average: until the callback,
    or the whole timeout), ``late_rate`` (share of late payers, :func:`late_payers`).
    """
    table = success_curve(frame, by, confidence).drop(columns="successes")
    table["mean_waited_s"] = frame.groupby(by, observed=True, sort=True)["waited_s"].mean().to_numpy()
    table["late_rate"] = late_payers(frame, by, confidence)["late_rate"].to_numpy()
    return table


def extra_time_table(tradeoff: pd.DataFrame, step: float = 30, *, by: str = "timeout_s") -> pd.DataFrame:
    """What each extra ``step`` seconds of timeout buys, between swept timeouts ``step`` apart.

    From :func:`timeout_tradeoff`: one row per pair ``(t, t + step)`` present in the sweep, with
    ``success_gain`` (points of success rate), ``mean_wait_cost_s`` (extra mean wait) and
    ``late_drop`` (fewer late payers, as a share of conversations).
    """
    indexed = tradeoff.set_index(by)
    records = []
    for timeout in indexed.index:
        longer = timeout + step
        if longer in indexed.index:
            before, after = indexed.loc[timeout], indexed.loc[longer]
            records.append({"from_s": timeout, "to_s": longer,
                            "success_gain": after["success_rate"] - before["success_rate"],
                            "mean_wait_cost_s": after["mean_waited_s"] - before["mean_waited_s"],
                            "late_drop": before["late_rate"] - after["late_rate"]})
    return pd.DataFrame.from_records(records, columns=["from_s", "to_s", "success_gain", "mean_wait_cost_s", "late_drop"])


def ecdf(values: Sequence[float] | pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF: sorted finite values and the share of values at or below each."""
    data = np.sort(np.asarray(values, dtype=float))
    data = data[np.isfinite(data)]
    return data, np.arange(1, data.size + 1) / max(data.size, 1)


def delay_quantile(delay: Any, share: float, *, draws: int = 1_000_000, seed: int = 0) -> float:
    """Seconds by which ``share`` of a delay model's callbacks have come, from draws of the model.

    ``delay`` is anything a scenario's ``delay_s`` takes. A call that never comes never counts,
    so the answer is ``inf`` when ``share`` is above the arriving share. This is the timeout a
    sweep of that model converges to as its conversations grow: the reference for its answer.
    """
    from .runner.distributions import parse_delay

    sample = parse_delay(delay).sample(np.random.default_rng(seed), draws)
    return float(np.quantile(np.where(np.isnan(sample), np.inf, sample), share, method="inverted_cdf"))


# family -> (scipy.stats name, harness delay table from the fitted shape and scale)
_FAMILIES: dict[str, tuple[str, Any]] = {
    "lognormal": ("lognorm", lambda shape, scale: {"dist": "lognormal", "median": scale, "sigma": shape}),
    "gamma": ("gamma", lambda shape, scale: {"dist": "gamma", "shape": shape, "scale": scale}),
    "weibull": ("weibull_min", lambda shape, scale: {"dist": "weibull", "shape": shape, "scale": scale}),
    "exponential": ("expon", lambda shape, scale: {"dist": "exponential", "mean": scale}),
}


def fit_delays(observed: Sequence[float] | pd.Series | np.ndarray,
               families: Sequence[str] = ("lognormal", "gamma", "weibull", "exponential")) -> pd.DataFrame:
    """Fit candidate families to observed delays (NaN: the call never came), best first.

    The never-arriving share is estimated apart (the NaN share) and each family is fitted by
    maximum likelihood to the delays that did arrive, with its location fixed at 0 (a delay
    cannot be negative). Columns: ``family``, ``ks_statistic`` (largest gap between the fitted
    and the empirical CDF of arrived delays; smaller is closer), ``mean_s``, ``p99_s``,
    ``never_share``, ``frozen`` (the ``scipy.stats`` distribution) and ``delay_s`` (a harness
    delay table: the family mixed with ``never`` at the never share, ready for a scenario).
    Needs scipy (``pip install -e '.[notebooks]'``).
    """
    from scipy import stats  # optional dependency: only this helper needs it

    values = np.asarray(observed, dtype=float)
    arrived = values[np.isfinite(values)]
    if arrived.size < 2 or (arrived <= 0).any():
        raise ValueError("fit_delays needs at least two arrived delays, all positive (NaN for never)")
    never = float(np.isnan(values).mean())
    records = []
    for family in families:
        scipy_name, to_table = _FAMILIES[family]
        distribution = getattr(stats, scipy_name)
        parameters = distribution.fit(arrived, floc=0)
        frozen = distribution(*parameters)
        shape = float(parameters[0]) if len(parameters) == 3 else 1.0
        table = to_table(shape, float(parameters[-1]))
        components = [{"weight": 1 - never, **table}] + ([{"weight": never, "dist": "never"}] if never else [])
        records.append({
            "family": family,
            "ks_statistic": float(stats.kstest(arrived, frozen.cdf).statistic),
            "mean_s": float(frozen.mean()),
            "p99_s": float(frozen.ppf(0.99)),
            "never_share": never,
            "frozen": frozen,
            "delay_s": {"dist": "mixture", "components": components},
        })
    return pd.DataFrame.from_records(records).sort_values("ks_statistic", ignore_index=True)


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
