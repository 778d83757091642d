"""DataFrame helpers for exploring results; the notebooks stay thin by calling these.

>>> wilson_interval(99, 100)
(0.9455..., 0.9982...)

Every helper takes the results frame of :func:`harness.run_scenario` (or
:func:`harness.load_results`) and returns a plain DataFrame or number, so they also work in a
script or a test. Plots colour outcomes and statuses through :data:`OUTCOME_COLORS`, so success
is the same green everywhere, a misattributed wait (resolved by another conversation's call) has
a colour of its own, and no refusal is drawn in a "good" colour.

From curves to decisions (SPEC §15): :func:`decide_timeout` prices each timeout of a sweep and
tells which ones the data cannot separate from the cheapest (a paired bootstrap);
:func:`exact_success` is the delay model's own curve to put beside the simulated one;
:func:`refine_timeouts` and :func:`conversations_needed` plan the second, finer sweep;
:func:`fit_delays` ranks families by AIC, censored fits included, and :func:`kaplan_meier`
reads the gate's own record (``harness delays``) without the bias towards fast senders.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
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
    "FAMILIES",
    "LognormalMixture",
    "decide_timeout",
    "refine_timeouts",
    "conversations_needed",
    "exact_success",
    "kaplan_meier",
    "outcome_table",
    "status_table",
    "misattribution",
]

# Okabe–Ito colours (readable with colour-blindness). Keys are outcomes, reasons, "outcome/reason"
# labels and HTTP statuses as text; only success is green.
_GOOD, _BAD, _LATE, _DUPLICATE, _REFUSED, _NONE = "#009E73", "#D55E00", "#CC79A7", "#E69F00", "#555555", "#BBBBBB"
_MISATTRIBUTED = "#882255"  # wine: neither success's green nor failure's vermilion
OUTCOME_COLORS: dict[str, str] = {
    "success": _GOOD, "received": _GOOD, "success/received": _GOOD, "200": _GOOD,
    "failure": _BAD, "timeout": _BAD, "failure/timeout": _BAD,
    "late": _LATE, "late payers": _LATE, "410": _LATE,  # paid, but after the deadline: told it failed
    "409": _DUPLICATE, "duplicate": _DUPLICATE,  # refused: the wait was no longer open
    "misattributed": _MISATTRIBUTED, "200 misattributed": _MISATTRIBUTED,  # resolved, by another conversation's call
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
    """One row per timeout: what it wins and what it costs, each with its interval.

    Columns: ``by, n, success_rate, ci_low, ci_high`` (as :func:`success_curve`),
    ``mean_waited_s, waited_low, waited_high`` (how long a customer waits at the block on
    average — until the callback, or the whole timeout — with a normal-approximation interval),
    ``late_rate, late_low, late_high`` (share of late payers, :func:`late_payers`, Wilson).
    """
    table = success_curve(frame, by, confidence).drop(columns="successes")
    waited = frame.groupby(by, observed=True, sort=True)["waited_s"]
    mean = waited.mean().to_numpy(dtype=float)
    half = _z(confidence) * waited.std(ddof=1).to_numpy(dtype=float) / np.sqrt(waited.count().to_numpy(dtype=float))
    table["mean_waited_s"], table["waited_low"], table["waited_high"] = mean, mean - half, mean + half
    late = late_payers(frame, by, confidence)
    table["late_rate"], table["late_low"], table["late_high"] = (
        late["late_rate"].to_numpy(), late["ci_low"].to_numpy(), late["ci_high"].to_numpy())
    return table


def extra_time_table(tradeoff: pd.DataFrame, step: float = 30, *, by: str = "timeout_s") -> pd.DataFrame:
    """What each extra ``step`` seconds of timeout buys, between swept timeouts ``step`` apart.

    From :func:`timeout_tradeoff`: one row per pair ``(t, t + step)`` present in the sweep, with
    ``success_gain`` (points of success rate), ``mean_wait_cost_s`` (extra mean wait) and
    ``late_drop`` (fewer late payers, as a share of conversations), each with ``_low``/``_high``
    bounds: Newcombe's interval for a difference of two proportions (from the two Wilson
    intervals) and the normal one for the difference of means. They treat the two timeouts as
    independent samples; a sweep's sub-cases share their draws, so the paired truth is
    narrower — a gain whose interval contains 0 may still be real, one whose interval excludes 0
    is. For a paired answer use :func:`decide_timeout`.
    """
    indexed = tradeoff.set_index(by)
    records = []
    for timeout in indexed.index:
        longer = timeout + step
        if longer not in indexed.index:
            continue
        before, after = indexed.loc[timeout], indexed.loc[longer]
        gain, gain_low, gain_high = _newcombe(after["success_rate"], after["ci_low"], after["ci_high"],
                                              before["success_rate"], before["ci_low"], before["ci_high"])
        drop, drop_low, drop_high = _newcombe(before["late_rate"], before["late_low"], before["late_high"],
                                              after["late_rate"], after["late_low"], after["late_high"])
        wait = after["mean_waited_s"] - before["mean_waited_s"]
        wait_half = np.hypot(after["waited_high"] - after["mean_waited_s"], before["waited_high"] - before["mean_waited_s"])
        records.append({"from_s": timeout, "to_s": longer,
                        "success_gain": gain, "gain_low": gain_low, "gain_high": gain_high,
                        "mean_wait_cost_s": wait, "wait_cost_low": wait - wait_half, "wait_cost_high": wait + wait_half,
                        "late_drop": drop, "late_drop_low": drop_low, "late_drop_high": drop_high})
    return pd.DataFrame.from_records(records, columns=[
        "from_s", "to_s", "success_gain", "gain_low", "gain_high", "mean_wait_cost_s", "wait_cost_low",
        "wait_cost_high", "late_drop", "late_drop_low", "late_drop_high"])


def _newcombe(p1: float, low1: float, high1: float, p2: float, low2: float, high2: float) -> tuple[float, float, float]:
    """``p1 - p2`` and Newcombe's hybrid score interval from each proportion's Wilson interval."""
    difference = p1 - p2
    return (float(difference), float(difference - np.hypot(p1 - low1, high2 - p2)),
            float(difference + np.hypot(high1 - p1, p2 - low2)))


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


DECISION_COLUMNS = ["timeout_s", "n", "success_rate", "success_low", "success_high", "late_share", "mean_waited_s",
                    "cost", "cost_low", "cost_high", "diff_low", "diff_high", "best", "within_band"]


def decide_timeout(frame: pd.DataFrame, *, cost_late: float, cost_per_second: float = 0.0, cost_never: float = 0.0,
                   confidence: float = 0.95, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Which timeout of a sweep costs least, and which others the data cannot tell from it.

    ``frame`` is one timeout sweep (one case, one party): one row per conversation and
    ``timeout_s``, the sub-cases sharing their draws (the runner gives conversation ``i`` the
    same delay at every timeout). Per conversation, the cost is ``cost_late`` when its wait
    failed although its party did call, at or after the deadline (a late payer: ``delay_s >=
    timeout_s``), ``cost_never`` when it failed and the party never calls (``delay_s`` NaN), plus
    ``cost_per_second * waited_s``.

    One row per timeout, columns ``timeout_s, n, success_rate, success_low, success_high``
    (Wilson), ``late_share`` (share of late payers), ``mean_waited_s``, ``cost`` (mean cost per
    conversation), ``cost_low, cost_high`` and ``diff_low, diff_high`` (percentile intervals of
    the cost, and of the cost minus the best timeout's cost, over ``n_boot`` bootstrap
    replicates), ``best`` (the lowest mean cost) and ``within_band`` (the difference interval
    contains 0: the data cannot tell this timeout from the best; the best is in it).

    The bootstrap is paired: replicate ``b`` draws ``rng.integers(0, m, size=m)`` (``m``
    conversations, ``rng = numpy.random.default_rng(seed)``, one call per replicate in turn)
    and applies the same indices to every timeout. Pairing is what makes the differences
    sharp: the conversation that pays at 200 s is in both the 180 s and the 210 s resample.
    """
    missing = [c for c in ("timeout_s", "conversation", "outcome", "delay_s", "waited_s") if c not in frame.columns]
    if missing:
        raise ValueError(f"decide_timeout needs a sweep's results frame; missing column(s) {', '.join(missing)}")
    if frame.duplicated(["timeout_s", "conversation"]).any():
        raise ValueError("decide_timeout needs one row per conversation and timeout_s: filter the frame to one case "
                         "(and one party), e.g. frame[frame['case'] == 'sweep']")
    timeout = frame["timeout_s"].to_numpy(dtype=float)
    delay = frame["delay_s"].to_numpy(dtype=float)
    failed = (frame["outcome"].astype("object") == "failure").to_numpy(dtype=bool)
    late = failed & ~np.isnan(delay) & (delay >= timeout)
    never = failed & np.isnan(delay)
    waited = np.nan_to_num(frame["waited_s"].to_numpy(dtype=float))
    rows = pd.DataFrame({"timeout_s": frame["timeout_s"].to_numpy(), "conversation": frame["conversation"].to_numpy(),
                         "cost": cost_late * late + cost_never * never + cost_per_second * waited})
    costs = rows.pivot(index="timeout_s", columns="conversation", values="cost").sort_index()
    if costs.isna().to_numpy().any():
        raise ValueError("decide_timeout needs the same conversations at every timeout (a sweep's sub-cases)")
    matrix = costs.to_numpy(dtype=float)
    m = matrix.shape[1]
    point = matrix.mean(axis=1)
    best = int(np.argmin(point))
    rng = np.random.default_rng(seed)
    replicates = np.empty((n_boot, matrix.shape[0]))
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, m, size=m), minlength=m)
        replicates[b] = matrix @ counts / m
    tail = (1 - confidence) / 2
    cost_low, cost_high = np.quantile(replicates, [tail, 1 - tail], axis=0)
    diff_low, diff_high = np.quantile(replicates - replicates[:, [best]], [tail, 1 - tail], axis=0)
    by_timeout = pd.DataFrame({"timeout_s": frame["timeout_s"].to_numpy(), "late": late, "waited": waited,
                               "success": (frame["outcome"].astype("object") == "success").to_numpy(dtype=bool)}
                              ).groupby("timeout_s", sort=True)
    n = by_timeout.size().to_numpy()
    successes = by_timeout["success"].sum().to_numpy()
    wilson = [wilson_interval(int(s), int(k), confidence) for s, k in zip(successes, n)]
    table = pd.DataFrame({
        "timeout_s": costs.index.to_numpy(), "n": n, "success_rate": successes / n,
        "success_low": [low for low, _ in wilson], "success_high": [high for _, high in wilson],
        "late_share": by_timeout["late"].mean().to_numpy(), "mean_waited_s": by_timeout["waited"].mean().to_numpy(),
        "cost": point, "cost_low": cost_low, "cost_high": cost_high, "diff_low": diff_low, "diff_high": diff_high,
    })
    table["best"] = np.arange(len(table)) == best
    table["within_band"] = (table["diff_low"] <= 0) & (table["diff_high"] >= 0)
    return table[DECISION_COLUMNS]


def refine_timeouts(table: pd.DataFrame, target: float | None = None, *, points: int = 10,
                    by: str = "timeout_s") -> list[int]:
    """A finer grid of whole-second timeouts where a coarse sweep's decision lies: the second sweep.

    With a :func:`decide_timeout` table: from the swept timeout just before the band to the one
    just after it. With a :func:`success_curve` / :func:`timeout_tradeoff` table and a
    ``target``: from the longest timeout shown below the target (interval's upper bound under
    it) to the shortest shown to reach it (lower bound at or above it; the longest swept when
    none is, the shortest when every one is). About ``points`` timeouts, within 1..300 s.

    A coarse grid overshoots by up to a step (on a 30 s grid the rule answers 270 s where the
    model's own 99 % quantile is 205 s); run the returned grid, with more conversations, to
    close the gap.
    """
    swept = sorted(int(value) for value in table[by])
    if "within_band" in table.columns:
        band = table.loc[table["within_band"].astype(bool), by].astype(int)
        inside = [swept.index(int(band.min())), swept.index(int(band.max()))]
    else:
        if target is None:
            raise ValueError("refine_timeouts needs a target with a success-curve table (or a decide_timeout table)")
        below = table.loc[table["ci_high"] < target, by]
        shown = table.loc[table["ci_low"] >= target, by]
        low = int(below.max()) if not below.empty else swept[0]
        high = int(shown.min()) if not shown.empty else swept[-1]
        inside = [swept.index(low), swept.index(max(high, low))]
    start = swept[max(inside[0] - 1, 0)] if "within_band" in table.columns else swept[inside[0]]
    stop = swept[min(inside[1] + 1, len(swept) - 1)] if "within_band" in table.columns else swept[inside[1]]
    start, stop = max(1, start), min(300, stop)
    if start == stop:
        start, stop = max(1, start - 15), min(300, stop + 15)
    return sorted({int(round(value)) for value in np.linspace(start, stop, max(points, 2))})


def conversations_needed(p: float, half_width: float, confidence: float = 0.95) -> int:
    """Conversations per timeout for a Wilson interval at most ``half_width`` wide on each side.

    ``p`` is the success rate you expect near the decision (e.g. 0.99); the half width is the
    Wilson formula's (before clipping at 0 and 1). Sizing the sweep for ``half_width =
    target - p_true`` is what lets :func:`minimal_timeout` show a rate ``p_true`` above target.

    >>> conversations_needed(0.99, 0.005)
    1606
    """
    if not 0 <= p <= 1 or not half_width > 0:
        raise ValueError("conversations_needed needs 0 <= p <= 1 and half_width > 0")
    z = _z(confidence)

    def half(n: int) -> float:
        return z / (1 + z * z / n) * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)))

    high = 1
    while half(high) > half_width:
        high *= 2
    low = max(high // 2, 1)
    while low < high:
        middle = (low + high) // 2
        if half(middle) <= half_width:
            high = middle
        else:
            low = middle + 1
    return high


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


def exact_success(delay_spec: Any, timeouts: Any, *, base_dir: str | Path | None = None) -> Any:
    """The delay model's own P(delay < timeout) for each timeout: the curve a sweep estimates.

    ``delay_spec`` is anything a scenario's ``delay_s`` takes (SPEC §6, §9) — a number,
    ``"never"``, a table (``fixed, uniform, exponential, lognormal, normal`` (clipped at 0),
    ``gamma, weibull, choice, empirical`` (from ``values`` or a ``file``, relative to
    ``base_dir``), ``mixture, never``) — or a parsed :class:`~harness.runner.distributions.Delay`.
    A call that never comes never succeeds; a call at the deadline is late (the gate answers
    410), hence the strict ``<``. Returns an array for a list of timeouts, a float for one.
    A callable delay has no closed form: raise ``ValueError`` (draw it with
    :func:`delay_quantile` instead).

    >>> exact_success({"dist": "exponential", "mean": 10}, [0, 10]).round(4).tolist()
    [0.0, 0.6321]
    """
    from .runner.distributions import Delay, parse_delay

    delay = delay_spec if isinstance(delay_spec, Delay) else parse_delay(
        delay_spec, base_dir=None if base_dir is None else Path(base_dir))
    times = np.asarray(timeouts, dtype=float)
    result = _below(delay, np.atleast_1d(times))
    return float(result[0]) if times.ndim == 0 else result


def _below(delay: Any, t: np.ndarray) -> np.ndarray:
    """P(delay < t) for one parsed delay, elementwise."""
    p = dict(delay.params)
    positive = t > 0
    if delay.dist == "never":
        return np.zeros(t.shape)
    if delay.dist == "fixed":
        return (float(p["value"]) < t).astype(float)
    if delay.dist == "uniform":
        low, high = float(p["low"]), float(p["high"])
        return (low < t).astype(float) if high == low else np.clip((t - low) / (high - low), 0.0, 1.0)
    if delay.dist == "exponential":
        return np.where(positive, -np.expm1(-np.clip(t, 0, None) / p["mean"]), 0.0)
    if delay.dist == "lognormal":
        if p["sigma"] == 0:
            return (float(p["median"]) < t).astype(float)
        logs = np.log(np.where(positive, t, 1.0))
        return np.where(positive, _normal_cdf((logs - np.log(p["median"])) / p["sigma"]), 0.0)
    if delay.dist == "normal":  # drawn as max(X, 0): below t > 0 exactly when X is
        if p["sd"] == 0:
            return (max(float(p["mean"]), 0.0) < t).astype(float)
        return np.where(positive, _normal_cdf((t - p["mean"]) / p["sd"]), 0.0)
    if delay.dist == "gamma":
        from scipy.special import gammainc  # optional dependency: only this family needs it

        return np.where(positive, gammainc(p["shape"], np.clip(t, 0, None) / p["scale"]), 0.0)
    if delay.dist == "weibull":
        return np.where(positive, -np.expm1(-((np.clip(t, 0, None) / p["scale"]) ** p["shape"])), 0.0)
    if delay.dist in ("choice", "empirical"):
        values = np.asarray(p["values"], dtype=float)  # NaN (never) is never below
        weights = np.ones(values.size) if p.get("weights") is None else np.asarray(p["weights"], dtype=float)
        return ((values[None, :] < t[:, None]) * weights).sum(axis=1) / weights.sum()
    if delay.dist == "mixture":
        weights = np.asarray(p["weights"], dtype=float)
        parts = [weight * _below(component, t) for weight, component in zip(weights, p["components"])]
        return np.sum(parts, axis=0) / weights.sum()
    raise ValueError(f"exact_success: a {delay.dist} delay has no exact curve; draw it (delay_quantile) instead")


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return np.vectorize(NormalDist().cdf, otypes=[float])(z)


# family -> (scipy.stats name, number of parameters, harness delay table from the fitted shape and scale)
_FAMILIES: dict[str, tuple[str, int, Any]] = {
    "lognormal": ("lognorm", 2, lambda shape, scale: {"dist": "lognormal", "median": scale, "sigma": shape}),
    "gamma": ("gamma", 2, lambda shape, scale: {"dist": "gamma", "shape": shape, "scale": scale}),
    "weibull": ("weibull_min", 2, lambda shape, scale: {"dist": "weibull", "shape": shape, "scale": scale}),
    "exponential": ("expon", 1, lambda shape, scale: {"dist": "exponential", "mean": scale}),
}
FAMILIES = ("lognormal", "lognormal2", "gamma", "weibull", "exponential")


def fit_delays(observed: Sequence[float] | pd.Series | np.ndarray, families: Sequence[str] = FAMILIES, *,
               censored: Sequence[bool] | pd.Series | np.ndarray | None = None) -> pd.DataFrame:
    """Fit candidate families to observed delays by maximum likelihood, best (lowest AIC) first.

    ``observed``: one delay per row, NaN when the call never came. ``censored`` (optional, same
    length): rows whose delay is only known to exceed the value — a wait that timed out at
    ``timeout_s`` with no late call (:func:`harness.store.export.export_delays` rows). Those
    enter the likelihood through the survival function (censored maximum likelihood), so
    the fit is not biased towards the fast senders that made it in time. Delays ``<= 0`` (a
    held early call) are left out of the fits; their share is ``early_share``. The never share
    (NaN rows) is estimated apart.

    Families: ``lognormal``, ``lognormal2`` (a two-component lognormal mixture: two populations
    of senders, fitted by EM then direct maximum likelihood), ``gamma``, ``weibull``,
    ``exponential``; each with its location fixed at 0. Columns: ``family``, ``k`` (fitted
    parameters), ``loglik`` (of the positive delays: density of the observed, survival of the
    censored), ``aic`` (``2k - 2 loglik``: lower is better; the ranking), ``ks_statistic``
    (largest gap between the fitted CDF and the empirical one — Kaplan–Meier's with censoring),
    ``mean_s``, ``p99_s``, ``never_share``, ``early_share``, ``frozen`` (a distribution with
    ``cdf, sf, pdf, logpdf, ppf, mean``: ``scipy.stats`` frozen, or a :class:`LognormalMixture`)
    and ``delay_s`` (a harness delay table: the family mixed with ``never`` at the never share
    and ``0`` at the early share, ready for a scenario). Needs scipy (``pip install -e
    '.[notebooks]'``).
    """
    from scipy import stats  # optional dependency: only this helper needs it

    values = np.asarray(observed, dtype=float)
    right = np.zeros(values.shape, bool) if censored is None else np.asarray(pd.Series(censored).fillna(False), bool)
    if right.shape != values.shape:
        raise ValueError(f"censored must have one flag per delay ({values.size}), got {right.size}")
    never_rows = np.isnan(values)
    positive = ~never_rows & (values > 0)
    events, survivors = values[positive & ~right], values[positive & right]
    if events.size < 2:
        raise ValueError("fit_delays needs at least two observed positive delays (NaN for never)")
    never, early = float(never_rows.mean()), float((~never_rows & (values <= 0)).mean())
    records = []
    for family in families:
        if family == "lognormal2":
            frozen: Any = _fit_lognormal2(events, survivors)
            k, table = 5, frozen.delay_table()
        else:
            scipy_name, k, to_table = _FAMILIES[family]
            distribution = getattr(stats, scipy_name)
            data = stats.CensoredData(uncensored=events, right=survivors) if survivors.size else events
            parameters = distribution.fit(data, floc=0)
            frozen = distribution(*parameters)
            table = to_table(float(parameters[0]) if len(parameters) == 3 else 1.0, float(parameters[-1]))
        loglik = float(np.sum(frozen.logpdf(events)) + np.sum(frozen.logsf(survivors)))
        share = 1 - never - early
        components = ([{"weight": early, "dist": "fixed", "value": 0}] if early else []) \
            + _weighted(table, share) + ([{"weight": never, "dist": "never"}] if never else [])
        records.append({
            "family": family, "k": k, "loglik": loglik, "aic": 2 * k - 2 * loglik,
            "ks_statistic": _ks_gap(values[positive], ~right[positive], frozen.cdf),
            "mean_s": float(frozen.mean()), "p99_s": float(frozen.ppf(0.99)),
            "never_share": never, "early_share": early, "frozen": frozen,
            "delay_s": {"dist": "mixture", "components": components},
        })
    return pd.DataFrame.from_records(records).sort_values("aic", ignore_index=True)


def _weighted(table: dict[str, Any], share: float) -> list[dict[str, Any]]:
    """A fitted delay table as mixture components carrying ``share`` of the weight in all."""
    if table["dist"] == "mixture":
        return [{**component, "weight": share * component["weight"]} for component in table["components"]]
    return [{"weight": share, **table}]


def _ks_gap(times: np.ndarray, observed: np.ndarray, cdf: Any) -> float:
    """Largest gap between ``cdf`` and the empirical CDF (Kaplan–Meier's when some are censored)."""
    steps = _kaplan_meier_steps(times, observed)
    at = steps["delay_s"].to_numpy()[steps["events"].to_numpy() > 0]
    after = 1 - steps["survival"].to_numpy()[steps["events"].to_numpy() > 0]
    before = np.concatenate([[0.0], after[:-1]])
    fitted = cdf(at)
    return float(np.max(np.maximum(np.abs(fitted - after), np.abs(fitted - before))))


class LognormalMixture:
    """Two lognormal populations: ``weight`` of them lognormal(``median1``, ``sigma1``), the rest
    lognormal(``median2``, ``sigma2``). The ``frozen`` of a ``lognormal2`` fit; it answers like a
    frozen ``scipy.stats`` distribution (``cdf, sf, pdf, logpdf, logsf, ppf, mean``)."""

    def __init__(self, weight: float, median1: float, sigma1: float, median2: float, sigma2: float) -> None:
        self.weight, self.median1, self.sigma1, self.median2, self.sigma2 = weight, median1, sigma1, median2, sigma2

    def __repr__(self) -> str:
        return (f"LognormalMixture({self.weight:.3f} * lognormal({self.median1:.4g}, {self.sigma1:.3f}) + "
                f"{1 - self.weight:.3f} * lognormal({self.median2:.4g}, {self.sigma2:.3f}))")

    def _parts(self) -> list[tuple[float, Any]]:
        from scipy import stats

        return [(self.weight, stats.lognorm(self.sigma1, scale=self.median1)),
                (1 - self.weight, stats.lognorm(self.sigma2, scale=self.median2))]

    def cdf(self, x: Any) -> Any:
        return sum(weight * part.cdf(x) for weight, part in self._parts())

    def sf(self, x: Any) -> Any:
        return sum(weight * part.sf(x) for weight, part in self._parts())

    def pdf(self, x: Any) -> Any:
        return sum(weight * part.pdf(x) for weight, part in self._parts())

    def logpdf(self, x: Any) -> Any:
        from scipy.special import logsumexp

        parts = self._parts()
        return logsumexp([np.log(w) + part.logpdf(x) for w, part in parts], axis=0) if all(
            w > 0 for w, _ in parts) else np.log(self.pdf(x))

    def logsf(self, x: Any) -> Any:
        from scipy.special import logsumexp

        parts = self._parts()
        return logsumexp([np.log(w) + part.logsf(x) for w, part in parts], axis=0) if all(
            w > 0 for w, _ in parts) else np.log(self.sf(x))

    def mean(self) -> float:
        return float(self.weight * self.median1 * np.exp(self.sigma1 ** 2 / 2)
                     + (1 - self.weight) * self.median2 * np.exp(self.sigma2 ** 2 / 2))

    def ppf(self, q: Any) -> Any:
        """Quantiles by bisection on the log scale (the mixture has no closed form)."""
        shares = np.asarray(q, dtype=float)
        low = np.full(shares.shape, np.log(min(self.median1, self.median2)) - 40 * max(self.sigma1, self.sigma2, 0.01))
        high = np.full(shares.shape, np.log(max(self.median1, self.median2)) + 40 * max(self.sigma1, self.sigma2, 0.01))
        for _ in range(200):
            middle = (low + high) / 2
            below = self.cdf(np.exp(middle)) < shares
            low, high = np.where(below, middle, low), np.where(below, high, middle)
        result = np.exp((low + high) / 2)
        return float(result) if result.ndim == 0 else result

    def delay_table(self) -> dict[str, Any]:
        return {"dist": "mixture", "components": [
            {"weight": self.weight, "dist": "lognormal", "median": self.median1, "sigma": self.sigma1},
            {"weight": 1 - self.weight, "dist": "lognormal", "median": self.median2, "sigma": self.sigma2}]}


def _fit_lognormal2(events: np.ndarray, survivors: np.ndarray) -> LognormalMixture:
    """Two-component lognormal by maximum likelihood: EM on the log delays from a few starting
    splits, then a direct (censored) likelihood polish from the best of them (L-BFGS-B)."""
    from scipy import optimize, stats
    from scipy.special import expit, logsumexp

    y, c = np.log(events), np.log(survivors)

    def negative_loglik(theta: np.ndarray) -> float:
        weight, mu1, log_s1, mu2, log_s2 = theta
        logw = [np.log(expit(weight)), np.log(expit(-weight))]
        components = [(logw[0], mu1, np.exp(log_s1)), (logw[1], mu2, np.exp(log_s2))]
        density = logsumexp([lw + stats.norm.logpdf(y, mu, s) for lw, mu, s in components], axis=0) - y
        survival = logsumexp([lw + stats.norm.logsf(c, mu, s) for lw, mu, s in components], axis=0) if c.size else 0.0
        return -float(np.sum(density) + np.sum(survival))

    starts = []
    for split in (0.25, 0.5, 0.75):
        low, high = np.quantile(y, [split / 2, (1 + split) / 2])
        shares, mu, sd = _em_normal2(y, np.array([split, 1 - split]), np.array([low, high]),
                                     np.full(2, max(float(np.std(y)) / 2, 1e-3)))
        starts.append(np.array([np.log(shares[0] / shares[1]), mu[0], np.log(sd[0]), mu[1], np.log(sd[1])]))
    start = min(starts, key=negative_loglik)
    best = optimize.minimize(negative_loglik, start, method="L-BFGS-B").x
    if negative_loglik(best) > negative_loglik(start):  # the polish never makes it worse
        best = start
    weight = float(expit(best[0]))
    parts = sorted([(weight, float(best[1]), float(np.exp(best[2]))), (1 - weight, float(best[3]), float(np.exp(best[4])))],
                   key=lambda part: part[1])
    return LognormalMixture(parts[0][0], float(np.exp(parts[0][1])), parts[0][2], float(np.exp(parts[1][1])), parts[1][2])


def _em_normal2(y: np.ndarray, weight: np.ndarray, mu: np.ndarray, sd: np.ndarray,
                iterations: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for a two-component normal mixture (of log delays)."""
    from scipy import stats

    for _ in range(iterations):
        density = weight[:, None] * stats.norm.pdf(y[None, :], mu[:, None], sd[:, None]) + 1e-300
        responsibility = density / density.sum(axis=0)
        total = responsibility.sum(axis=1)
        weight = np.clip(total / y.size, 1e-6, 1 - 1e-6)
        mu = (responsibility * y).sum(axis=1) / total
        sd = np.sqrt(np.maximum((responsibility * (y[None, :] - mu[:, None]) ** 2).sum(axis=1) / total, 1e-6))
    return weight, mu, sd


def kaplan_meier(frame: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """The delay distribution estimated from the gate's own record, timeouts as censoring.

    ``frame`` has the rows of ``harness delays`` (:func:`harness.store.export.export_delays`):
    ``delay_s``, ``censored`` and (optional) ``late_delay_s``. A resolved row is observed at
    ``delay_s`` (at 0 when ``<= 0``: a held early call); a timed-out row with a late call is
    observed at ``late_delay_s`` (the sender's real delay); any other timed-out row is censored
    at ``delay_s`` (its timeout: the call may still come, or never). One row per distinct time:
    ``delay_s, at_risk, events, censored, survival`` (share of calls still to come after that
    time), ``cdf`` (``1 - survival``) and ``ci_low, ci_high`` (the CDF's pointwise interval:
    Greenwood's variance on the log(-log) scale). Unlike a CDF of the resolved calls alone it is
    not biased towards the senders fast enough to make the deadline.
    """
    delay = frame["delay_s"].to_numpy(dtype=float)
    censored = np.asarray(frame["censored"].astype("boolean").fillna(False), dtype=bool)
    late = frame["late_delay_s"].to_numpy(dtype=float) if "late_delay_s" in frame.columns else np.full(delay.size, np.nan)
    seen_late = censored & np.isfinite(late)
    times = np.where(seen_late, late, np.maximum(delay, 0.0))
    keep = np.isfinite(times)
    steps = _kaplan_meier_steps(times[keep], (~censored | seen_late)[keep])
    survival = steps["survival"].to_numpy()
    at_risk, events = steps["at_risk"].to_numpy(dtype=float), steps["events"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        greenwood = np.cumsum(np.where(at_risk > events, events / (at_risk * (at_risk - events)), 0.0))
        spread = _z(confidence) * np.sqrt(greenwood) / np.abs(np.log(survival))
        loglog = np.log(-np.log(survival))
        low_survival = np.exp(-np.exp(loglog + spread))
        high_survival = np.exp(-np.exp(loglog - spread))
    inside = (survival > 0) & (survival < 1)
    steps["cdf"] = 1 - survival
    steps["ci_low"] = np.where(inside, 1 - high_survival, 1 - survival)
    steps["ci_high"] = np.where(inside, 1 - low_survival, 1 - survival)
    return steps


def _kaplan_meier_steps(times: np.ndarray, observed: np.ndarray) -> pd.DataFrame:
    """Product-limit estimate; at a tied time, events count before censorings (the usual rule)."""
    order = pd.DataFrame({"t": times, "event": observed.astype(int), "censor": (~observed).astype(int)})
    grouped = order.groupby("t", sort=True).sum()
    events, censorings = grouped["event"].to_numpy(), grouped["censor"].to_numpy()
    at_risk = times.size - np.concatenate([[0], np.cumsum(events + censorings)[:-1]])
    survival = np.cumprod(1 - events / at_risk)
    return pd.DataFrame({"delay_s": grouped.index.to_numpy(dtype=float), "at_risk": at_risk, "events": events,
                         "censored": censorings, "survival": survival})


def outcome_table(frame: pd.DataFrame, by: Sequence[str] = ("case", "variant")) -> pd.DataFrame:
    """Share of each outcome/reason per group (rows sum to 1); unresolved rows count as 'none'.

    A wait resolved by *another* conversation's call (``resolved_by`` ≠ ``conversation``) is
    its own outcome, ``misattributed`` — never counted as success: the payment landed in the
    wrong conversation.
    """
    labels = frame["outcome"].astype("object").fillna("none") + "/" + frame["reason"].astype("object").fillna("none")
    if {"resolved_by", "conversation"} <= set(frame.columns):
        resolved_by = pd.to_numeric(frame["resolved_by"], errors="coerce")
        other = resolved_by.notna() & (resolved_by != frame["conversation"])
        labels = labels.where(~other.to_numpy(dtype=bool), "misattributed")
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
