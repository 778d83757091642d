from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.analysis import (
    OUTCOME_COLORS,
    conversations_needed,
    decide_timeout,
    delay_quantile,
    ecdf,
    exact_success,
    extra_time_table,
    fit_delays,
    kaplan_meier,
    late_payers,
    minimal_timeout,
    misattribution,
    outcome_colors,
    outcome_table,
    refine_timeouts,
    status_table,
    success_curve,
    timeout_tradeoff,
    wilson_interval,
)
from harness.runner import run_scenario
from harness.runner.distributions import parse_delay

from .conftest import BOTS


def test_wilson_interval_known_values_and_edges() -> None:
    low, high = wilson_interval(99, 100)
    assert (round(low, 4), round(high, 4)) == (0.9455, 0.9982)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert wilson_interval(50, 100, 0.99)[0] < wilson_interval(50, 100, 0.95)[0]


def frame_of(outcomes: dict[int, list[str]]) -> pd.DataFrame:
    rows = [{"timeout_s": t, "outcome": o} for t, os in outcomes.items() for o in os]
    return pd.DataFrame(rows)


def test_success_curve_and_minimal_timeout_needs_the_interval_to_reach_the_target() -> None:
    frame = frame_of({10: ["success"] * 50 + ["failure"] * 50, 60: ["success"] * 99 + ["failure"], 30: ["success"] * 90 + ["failure"] * 10})
    curve = success_curve(frame)
    assert list(curve["timeout_s"]) == [10, 30, 60]
    assert list(curve["success_rate"]) == [0.5, 0.9, 0.99]
    assert (curve["ci_low"] <= curve["success_rate"]).all() and (curve["success_rate"] <= curve["ci_high"]).all()
    assert minimal_timeout(curve, 0.99) is None  # 99/100 measured: the interval reaches down to 94.6 %
    assert minimal_timeout(curve, 0.8) == 30  # 90/100: lower bound 82.6 %
    assert minimal_timeout(curve, 0.9) == 60
    # With enough conversations the same rate is shown: 99.5 % of 10,000 has a lower bound of 99.35 %.
    sure = frame_of({200: ["success"] * 9950 + ["failure"] * 50, 240: ["success"] * 10_000})
    assert minimal_timeout(success_curve(sure), 0.99) == 200


def test_late_payers_prefer_late_calls_and_fall_back_to_410_statuses() -> None:
    frame = pd.DataFrame({"timeout_s": [10, 10, 10, 20], "statuses": ["200", "410", "", "410,410"],
                          "outcome": ["success", "failure", "failure", "failure"]})
    late = late_payers(frame)
    assert list(late["late"]) == [1, 1] and list(late["late_rate"]) == [1 / 3, 1.0]
    counted = late_payers(frame.assign(late_calls=[0, 0, 1, 2]))  # the gate's own count wins
    assert list(counted["late"]) == [1, 1] and counted["late_rate"].iloc[0] == 1 / 3
    assert late_payers(frame.assign(late_calls=[0, 0, 0, 0]))["late"].sum() == 0


def test_tradeoff_and_what_extra_time_buys_on_a_real_sweep() -> None:
    frame = run_scenario({
        "bot": str(BOTS / "payment.toml"), "seed": 3,
        "cases": [{"name": "sweep", "conversations": 200, "timeout_s": [30, 60, 90, 100],
                   "delay_s": {"dist": "mixture", "components": [{"weight": 0.9, "dist": "exponential", "mean": 30},
                                                                 {"weight": 0.1, "dist": "never"}]}}],
    })
    table = timeout_tradeoff(frame)
    assert list(table["timeout_s"]) == [30, 60, 90, 100]
    arrived = frame["delay_s"].notna()
    for _, row in table.iterrows():
        rows = frame[frame["timeout_s"] == row["timeout_s"]]
        # late payers: the call came, at or after the deadline (the gate answered 410)
        assert row["late_rate"] == ((rows["delay_s"] >= row["timeout_s"]) & arrived[rows.index]).mean()
        assert row["mean_waited_s"] == pytest.approx(np.fmin(rows["delay_s"].fillna(np.inf), row["timeout_s"]).mean())
    assert table["success_rate"].is_monotonic_increasing and table["late_rate"].is_monotonic_decreasing
    extra = extra_time_table(table, 30)
    assert list(zip(extra["from_s"], extra["to_s"])) == [(30, 60), (60, 90)]
    first = extra.iloc[0]
    assert first["success_gain"] == pytest.approx(table["success_rate"].iloc[1] - table["success_rate"].iloc[0])
    assert first["mean_wait_cost_s"] > 0 and first["late_drop"] == pytest.approx(first["success_gain"])


def test_outcome_colors_keep_success_green_and_refusals_not() -> None:
    success, failure, duplicate, late, unknown = outcome_colors(["success/received", "failure/timeout", 409, "410", "weird"])
    assert outcome_colors([200, "success"]) == [success, success] == [OUTCOME_COLORS["success"]] * 2
    assert len({success, failure, duplicate, late}) == 4 and success not in (unknown, *outcome_colors(range(400, 430)))


def test_fit_delays_finds_the_family_and_the_never_share() -> None:
    pytest.importorskip("scipy")
    rng = np.random.default_rng(5)
    observed = np.where(rng.random(4000) < 0.05, np.nan, rng.lognormal(np.log(40), 0.8, 4000))
    fits = fit_delays(observed)
    best = fits.iloc[0]
    assert best["family"] == "lognormal" and list(fits["family"])[-1] == "exponential"
    assert best["never_share"] == pytest.approx(np.isnan(observed).mean())
    [lognormal, never] = best["delay_s"]["components"]
    assert lognormal["median"] == pytest.approx(40, rel=0.05) and lognormal["sigma"] == pytest.approx(0.8, rel=0.05)
    assert never == {"weight": best["never_share"], "dist": "never"}
    parse_delay(best["delay_s"])  # runs as a scenario delay


def test_ecdf_drops_never() -> None:
    x, y = ecdf([3.0, np.nan, 1.0, 2.0])
    assert list(x) == [1.0, 2.0, 3.0] and list(y) == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_tables_on_a_real_run() -> None:
    frame = run_scenario({
        "bot": str(BOTS / "payment.toml"), "seed": 4,
        "defaults": {"conversations": 10, "delay_s": 5},
        "cases": [{"name": "other", "key": "other"}, {"name": "dup", "calls": 3}, {"name": "missing", "key": "missing"}],
    })
    table = misattribution(frame)
    assert table.loc[("other", ""), "misattributed_rate"] == 1.0
    assert table.loc[("dup", ""), "resolved_own"] == 10 and table.loc[("missing", ""), "unresolved"] == 10
    statuses = status_table(frame, all_calls=True)
    assert statuses.loc[("dup", ""), 409] == 20 and statuses.loc[("missing", ""), 422] == 10
    assert status_table(frame).loc[("dup", ""), 200] == 10
    outcomes = outcome_table(frame)
    assert outcomes.loc[("missing", ""), "failure/timeout"] == 1.0


def test_delay_quantile_is_the_models_own_answer() -> None:
    # lognormal(median 20, sigma 1): 99 % arrive by 20 * exp(2.326) = 204.7 s
    assert delay_quantile({"dist": "lognormal", "median": 20, "sigma": 1.0}, 0.99) == pytest.approx(204.7, rel=0.01)
    with_never = {"dist": "mixture", "components": [{"weight": 0.98, "dist": "fixed", "value": 5}, {"weight": 0.02, "dist": "never"}]}
    assert delay_quantile(with_never, 0.95) == 5 and delay_quantile(with_never, 0.99) == float("inf")


# --- §15: decisions -----------------------------------------------------------------------------------------------

def test_wilson_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k, n, confidence in [(0, 7, 0.95), (3, 7, 0.9), (990, 1000, 0.95), (4999, 5000, 0.99), (250, 500, 0.8)]:
        expected = stats.binomtest(k, n).proportion_ci(confidence, method="wilson")
        assert wilson_interval(k, n, confidence) == pytest.approx((expected.low, expected.high), abs=1e-12)


def sweep_frame(delays: np.ndarray, timeouts: list[int]) -> pd.DataFrame:
    """What a sweep gives for shared draws: success before the deadline, else failure after waiting it out."""
    rows = []
    for timeout in timeouts:
        for index, delay in enumerate(delays):
            success = not np.isnan(delay) and delay < timeout
            rows.append({"timeout_s": timeout, "conversation": index, "delay_s": delay,
                         "outcome": "success" if success else "failure", "waited_s": delay if success else timeout})
    return pd.DataFrame(rows)


def test_decide_timeout_costs_and_a_paired_bootstrap_reproduced_by_hand() -> None:
    rng = np.random.default_rng(1)
    delays = np.where(rng.random(300) < 0.05, np.nan, rng.lognormal(np.log(20), 1.0, 300))
    timeouts = [30, 60, 120, 240]
    frame = sweep_frame(delays, timeouts).sample(frac=1, random_state=2)  # order must not matter
    table = decide_timeout(frame, cost_late=3.0, cost_per_second=0.002, cost_never=0.5, n_boot=200, seed=9)
    # costs by hand, one row per conversation and timeout
    costs = np.array([[3.0 * (not np.isnan(d) and d >= t) + 0.5 * np.isnan(d)
                       + 0.002 * (d if (not np.isnan(d) and d < t) else t) for d in delays] for t in timeouts])
    assert table["cost"].to_numpy() == pytest.approx(costs.mean(axis=1))
    late = np.array([[(not np.isnan(d)) and d >= t for d in delays] for t in timeouts])
    assert table["late_share"].to_numpy() == pytest.approx(late.mean(axis=1))
    # the bootstrap, by hand: one index resample per replicate, applied to every timeout
    draw = np.random.default_rng(9)
    replicates = np.array([costs[:, draw.integers(0, 300, size=300)].mean(axis=1) for _ in range(200)])
    best = int(np.argmin(costs.mean(axis=1)))
    assert table["cost_low"].to_numpy() == pytest.approx(np.percentile(replicates, 2.5, axis=0))
    assert table["cost_high"].to_numpy() == pytest.approx(np.percentile(replicates, 97.5, axis=0))
    differences = replicates - replicates[:, [best]]
    assert table["diff_low"].to_numpy() == pytest.approx(np.percentile(differences, 2.5, axis=0), abs=1e-12)
    assert table["diff_high"].to_numpy() == pytest.approx(np.percentile(differences, 97.5, axis=0), abs=1e-12)
    assert table["best"].tolist() == [i == best for i in range(4)]
    assert table["within_band"].tolist() == [lo <= 0 <= hi for lo, hi in zip(table["diff_low"], table["diff_high"])]
    assert table.loc[table["best"], "within_band"].all()
    # pairing makes the difference interval far narrower than the cost intervals' overlap would say
    assert (table["diff_high"] - table["diff_low"]).max() < (table["cost_high"] - table["cost_low"]).max() * 2
    success = (np.nan_to_num(delays, nan=np.inf)[None, :] < np.array(timeouts)[:, None]).sum(axis=1)
    stats = pytest.importorskip("scipy.stats")
    for row, k in zip(table.itertuples(), success):
        ci = stats.binomtest(int(k), 300).proportion_ci(0.95, method="wilson")
        assert (row.n, row.success_rate) == (300, k / 300)
        assert (row.success_low, row.success_high) == pytest.approx((ci.low, ci.high))
    assert list(table.columns) == ["timeout_s", "n", "success_rate", "success_low", "success_high", "late_share",
                                   "mean_waited_s", "cost", "cost_low", "cost_high", "diff_low", "diff_high",
                                   "best", "within_band"]


def test_decide_timeout_on_a_real_sweep_and_refuses_mixed_cases() -> None:
    frame = run_scenario({
        "bot": str(BOTS / "payment.toml"), "seed": 2,
        "cases": [{"name": "sweep", "conversations": 300, "timeout_s": [10, 60, 300],
                   "delay_s": {"dist": "exponential", "mean": 20}}],
    }, driver="core")
    table = decide_timeout(frame, cost_late=3, cost_per_second=0.002, n_boot=100)
    # a late payer costs 3 €: at 10 s most are late, at 300 s nearly none and the wait is cheap
    assert table["best"].tolist() == [False, False, True] or table["best"].tolist() == [False, True, False]
    assert not table.loc[0, "within_band"]
    with pytest.raises(ValueError, match="one row per conversation"):
        decide_timeout(pd.concat([frame, frame]), cost_late=1)


def test_intervals_in_tradeoff_and_extra_time() -> None:
    stats = pytest.importorskip("scipy.stats")
    frame = sweep_frame(np.random.default_rng(3).exponential(30, 400), [30, 60, 90]).assign(late_calls=0)
    frame["late_calls"] = ((frame["outcome"] == "failure") & frame["delay_s"].notna()).astype(int)
    table = timeout_tradeoff(frame)
    for column in ("late", "waited"):
        low, high = table[f"{column}_low"], table[f"{column}_high"]
        point = table["late_rate" if column == "late" else "mean_waited_s"]
        assert ((low <= point) & (point <= high)).all()
    rows = frame[frame["timeout_s"] == 30]["waited_s"]
    half = stats.norm.ppf(0.975) * rows.std() / np.sqrt(len(rows))
    assert (table.loc[0, "waited_low"], table.loc[0, "waited_high"]) == pytest.approx((rows.mean() - half, rows.mean() + half))
    extra = extra_time_table(table, 30)
    first = extra.iloc[0]
    # Newcombe's interval for a difference of proportions, from scipy's Wilson intervals
    k30, k60 = (int((frame[frame["timeout_s"] == t]["outcome"] == "success").sum()) for t in (30, 60))
    ci30 = stats.binomtest(k30, 400).proportion_ci(method="wilson")
    ci60 = stats.binomtest(k60, 400).proportion_ci(method="wilson")
    p30, p60 = k30 / 400, k60 / 400
    assert first["gain_low"] == pytest.approx(p60 - p30 - np.hypot(p60 - ci60.low, ci30.high - p30))
    assert first["gain_high"] == pytest.approx(p60 - p30 + np.hypot(ci60.high - p60, p30 - ci30.low))
    assert first["gain_low"] > 0  # 30 s -> 60 s on an exponential(30) is a real gain
    assert first["wait_cost_low"] <= first["mean_wait_cost_s"] <= first["wait_cost_high"]
    assert first["late_drop_low"] <= first["late_drop"] <= first["late_drop_high"]


def test_refine_timeouts_brackets_the_decision() -> None:
    curve = pd.DataFrame({"timeout_s": [30, 60, 90, 120, 150], "ci_low": [0.5, 0.9, 0.97, 0.985, 0.995],
                          "ci_high": [0.6, 0.95, 0.985, 0.995, 1.0]})
    grid = refine_timeouts(curve, 0.99, points=7)
    assert grid[0] == 90 and grid[-1] == 150 and len(grid) == 7 and grid == sorted(grid)
    band = pd.DataFrame({"timeout_s": [30, 60, 90, 120, 150], "within_band": [False, False, True, True, False]})
    assert refine_timeouts(band, points=5) == [60, 82, 105, 128, 150]
    with pytest.raises(ValueError, match="target"):
        refine_timeouts(curve)


def test_conversations_needed_is_the_smallest_n_with_that_wilson_half_width() -> None:
    stats = pytest.importorskip("scipy.stats")

    def half(p: float, n: int, confidence: float) -> float:
        z = stats.norm.ppf(0.5 + confidence / 2)
        return z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)

    for p, h, confidence in [(0.99, 0.005, 0.95), (0.5, 0.01, 0.95), (0.999, 0.001, 0.99), (0.9, 0.05, 0.9)]:
        n = conversations_needed(p, h, confidence)
        assert half(p, n, confidence) <= h < half(p, n - 1, confidence)


# exact_success against scipy's own CDFs, form by form
EXACT_CASES = [
    (12, lambda t, s: (t > 12).astype(float)),
    ({"dist": "fixed", "value": 30}, lambda t, s: (t > 30).astype(float)),
    ({"dist": "uniform", "low": 10, "high": 50}, lambda t, s: s.uniform(10, 40).cdf(t)),
    ({"dist": "exponential", "mean": 25}, lambda t, s: s.expon(scale=25).cdf(t)),
    ({"dist": "lognormal", "median": 20, "sigma": 1.0}, lambda t, s: s.lognorm(1.0, scale=20).cdf(t)),
    ({"dist": "normal", "mean": 30, "sd": 20}, lambda t, s: np.where(t > 0, s.norm(30, 20).cdf(t), 0.0)),
    ({"dist": "gamma", "shape": 2.5, "scale": 12}, lambda t, s: s.gamma(2.5, scale=12).cdf(t)),
    ({"dist": "weibull", "shape": 1.5, "scale": 40}, lambda t, s: s.weibull_min(1.5, scale=40).cdf(t)),
    ({"dist": "choice", "values": [5, 30, 60], "weights": [1, 2, 1]},
     lambda t, s: (0.25 * (t > 5) + 0.5 * (t > 30) + 0.25 * (t > 60))),
    ("never", lambda t, s: np.zeros(t.shape)),
    ({"dist": "empirical", "values": [1.0, 30.0, 30.0, float("nan")]}, lambda t, s: (0.25 * (t > 1) + 0.5 * (t > 30))),
    ({"dist": "mixture", "components": [{"weight": 0.9, "dist": "lognormal", "median": 40, "sigma": 1.2},
                                        {"weight": 0.1, "dist": "never"}]},
     lambda t, s: 0.9 * s.lognorm(1.2, scale=40).cdf(t)),
]


@pytest.mark.parametrize(("delay", "expected"), EXACT_CASES, ids=lambda c: str(c)[:40] if not callable(c) else "")
def test_exact_success_matches_scipy(delay: object, expected: object) -> None:
    stats = pytest.importorskip("scipy.stats")
    timeouts = np.array([0, 1, 5, 12, 29.9, 30, 30.1, 60, 120, 300])
    assert exact_success(delay, timeouts) == pytest.approx(expected(timeouts, stats), abs=1e-12)  # type: ignore[operator]


def test_exact_success_from_a_file_a_scalar_and_not_a_callable(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("id,delay_s\na,3\nb,\nc,10\nd,40\n")  # b never calls
    spec = {"dist": "empirical", "file": "d.csv", "column": "delay_s"}
    assert exact_success(spec, [5, 10, 11], base_dir=tmp_path).tolist() == [0.25, 0.25, 0.5]
    assert exact_success({"dist": "exponential", "mean": 10}, 10) == pytest.approx(1 - np.exp(-1))
    with pytest.raises(ValueError, match="no exact curve"):
        exact_success(lambda rng, size: rng.exponential(5, size), [10])


def test_the_simulated_curve_sits_on_the_exact_one() -> None:
    delay = {"dist": "mixture", "components": [{"weight": 0.7, "dist": "gamma", "shape": 2, "scale": 10},
                                               {"weight": 0.3, "dist": "normal", "mean": 60, "sd": 30}]}
    frame = run_scenario({"bot": str(BOTS / "payment.toml"), "seed": 8,
                          "cases": [{"name": "s", "conversations": 2000, "timeout_s": [15, 45, 90], "delay_s": delay}]},
                         driver="core")
    curve = success_curve(frame)
    exact = exact_success(delay, curve["timeout_s"].to_numpy())
    spread = np.sqrt(exact * (1 - exact) / 2000)
    assert (np.abs(curve["success_rate"] - exact) < 4.5 * spread).all()


def test_fit_delays_reports_loglik_and_aic_and_ranks_by_aic() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(6)
    observed = rng.gamma(3.0, 10.0, 3000)
    fits = fit_delays(observed)
    assert list(fits["aic"]) == sorted(fits["aic"]) and fits.iloc[0]["family"] == "gamma"
    assert set(fits["family"]) == {"lognormal", "lognormal2", "gamma", "weibull", "exponential"}
    assert (fits["aic"] == 2 * fits["k"] - 2 * fits["loglik"]).all()
    assert dict(zip(fits["family"], fits["k"])) == {"lognormal": 2, "lognormal2": 5, "gamma": 2, "weibull": 2, "exponential": 1}
    gamma = fits.set_index("family").loc["gamma", "delay_s"]["components"][0]
    assert fits.set_index("family").loc["gamma", "loglik"] == pytest.approx(
        stats.gamma(gamma["shape"], scale=gamma["scale"]).logpdf(observed).sum())
    shape, _, scale = stats.gamma.fit(observed, floc=0)  # scipy's own MLE
    assert (gamma["shape"], gamma["scale"]) == pytest.approx((shape, scale), rel=1e-3)


def test_two_lognormal_populations_are_found_and_preferred() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(11)
    slow = rng.random(5000) < 0.25
    observed = np.where(slow, rng.lognormal(np.log(120), 0.4, 5000), rng.lognormal(np.log(20), 0.5, 5000))
    fits = fit_delays(observed).set_index("family")
    assert fits["aic"].idxmin() == "lognormal2"
    fast, slow_part = fits.loc["lognormal2", "delay_s"]["components"]
    assert fast["weight"] == pytest.approx(0.75, abs=0.02) and slow_part["weight"] == pytest.approx(0.25, abs=0.02)
    assert fast["median"] == pytest.approx(20, rel=0.03) and slow_part["median"] == pytest.approx(120, rel=0.03)
    assert fast["sigma"] == pytest.approx(0.5, rel=0.05) and slow_part["sigma"] == pytest.approx(0.4, rel=0.05)
    # its loglik is the mixture density of the data, computed here with scipy
    density = fast["weight"] * stats.lognorm(fast["sigma"], scale=fast["median"]).pdf(observed) \
        + slow_part["weight"] * stats.lognorm(slow_part["sigma"], scale=slow_part["median"]).pdf(observed)
    assert fits.loc["lognormal2", "loglik"] == pytest.approx(np.log(density).sum())
    frozen = fits.loc["lognormal2", "frozen"]
    assert frozen.cdf(frozen.ppf(0.99)) == pytest.approx(0.99) and frozen.mean() == pytest.approx(observed.mean(), rel=0.03)


def test_censored_fit_recovers_the_truth_the_naive_fit_misses() -> None:
    stats = pytest.importorskip("scipy.stats")
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(12)
    truth = rng.lognormal(np.log(30), 0.8, 4000)
    censored = truth >= 40  # timed out at 40 s, no late call seen
    seen = np.minimum(truth, 40)
    lognormal = fit_delays(seen, censored=censored).set_index("family").loc["lognormal", "delay_s"]["components"][0]
    assert lognormal["median"] == pytest.approx(30, rel=0.05) and lognormal["sigma"] == pytest.approx(0.8, rel=0.05)

    # the censored likelihood, maximised here directly
    def negative(theta: np.ndarray) -> float:
        mu, log_sigma = theta
        return -(stats.norm.logpdf(np.log(seen[~censored]), mu, np.exp(log_sigma)).sum() - np.log(seen[~censored]).sum()
                 + stats.norm.logsf(np.log(40), mu, np.exp(log_sigma)) * censored.sum())

    mu, log_sigma = optimize.minimize(negative, [np.log(20), 0.0], method="Nelder-Mead", options={"xatol": 1e-8}).x
    assert (lognormal["median"], lognormal["sigma"]) == pytest.approx((np.exp(mu), np.exp(log_sigma)), rel=1e-3)
    naive = fit_delays(seen[~censored]).set_index("family").loc["lognormal", "delay_s"]["components"][0]
    assert naive["median"] < 22  # the resolved calls alone say "fast"


def test_fit_delays_leaves_early_calls_out_and_reports_their_share() -> None:
    rng = np.random.default_rng(13)
    observed = np.concatenate([rng.exponential(10, 900), np.full(60, -2.0), np.zeros(40)])
    fits = fit_delays(observed, families=["exponential"])
    assert fits.loc[0, "early_share"] == 0.1
    zero, exponential = fits.loc[0, "delay_s"]["components"]
    assert zero == {"weight": 0.1, "dist": "fixed", "value": 0} and exponential["weight"] == pytest.approx(0.9)
    assert exponential["mean"] == pytest.approx(observed[:900].mean())  # the exponential MLE: the mean of the rest


def test_kaplan_meier_by_hand() -> None:
    frame = pd.DataFrame({
        "delay_s": [2.0, 3.0, 3.0, 5.0, 5.0, 5.0, 1.0, -0.5, 4.0],
        "censored": [False, False, True, True, True, False, False, False, True],
        "late_delay_s": [np.nan, np.nan, np.nan, 9.0, np.nan, np.nan, np.nan, np.nan, np.nan],
    })
    km = kaplan_meier(frame)
    # times: 0 (early, observed), 1, 2, 3 (one event, one censored), 4 (censored), 5 (event + censored), 9 (late call)
    assert km["delay_s"].tolist() == [0, 1, 2, 3, 4, 5, 9]
    assert km["at_risk"].tolist() == [9, 8, 7, 6, 4, 3, 1]
    assert km["events"].tolist() == [1, 1, 1, 1, 0, 1, 1] and km["censored"].tolist() == [0, 0, 0, 1, 1, 1, 0]
    survival, expected = 1.0, []
    for n, d in [(9, 1), (8, 1), (7, 1), (6, 1), (4, 0), (3, 1), (1, 1)]:
        survival *= 1 - d / n
        expected.append(survival)
    assert km["survival"].to_numpy() == pytest.approx(expected)
    assert km["cdf"].to_numpy() == pytest.approx(1 - np.array(expected))
    # the interval at t = 2: Greenwood on the log(-log) scale
    s, v = expected[2], 1 / (9 * 8) + 1 / (8 * 7) + 1 / (7 * 6)
    spread = 1.959963984540054 * np.sqrt(v) / abs(np.log(s))
    assert (km.loc[2, "ci_low"], km.loc[2, "ci_high"]) == pytest.approx(
        (1 - np.exp(-np.exp(np.log(-np.log(s)) - spread)), 1 - np.exp(-np.exp(np.log(-np.log(s)) + spread))))


def test_kaplan_meier_is_unbiased_where_the_naive_cdf_is_not() -> None:
    rng = np.random.default_rng(14)
    truth = rng.exponential(20, 5000)
    late_seen = rng.random(5000) < 0.5  # half the late senders' calls reach the gate's record
    frame = pd.DataFrame({"delay_s": np.minimum(truth, 30), "censored": truth >= 30,
                          "late_delay_s": np.where((truth >= 30) & late_seen, truth, np.nan)})
    km = kaplan_meier(frame).set_index("delay_s")
    at_25 = km["cdf"][km.index <= 25].iloc[-1]
    assert at_25 == pytest.approx(1 - np.exp(-25 / 20), abs=0.02)
    naive = (frame.loc[~frame["censored"], "delay_s"] <= 25).mean()
    assert naive - (1 - np.exp(-25 / 20)) > 0.1


def test_misattribution_is_its_own_outcome_and_colour() -> None:
    frame = run_scenario({
        "bot": str(BOTS / "payment.toml"), "seed": 4,
        "defaults": {"conversations": 10, "delay_s": 5},
        "cases": [{"name": "other", "key": "other"}, {"name": "other3", "key": "other", "calls": 3},
                  {"name": "ok"}],
    }, driver="core")
    outcomes = outcome_table(frame, by=["case"])
    assert outcomes.loc["other", "misattributed"] == 1.0 and outcomes.loc["other3", "misattributed"] == 1.0
    assert outcomes.loc["ok", "success/received"] == 1.0 and outcomes.loc["ok", "misattributed"] == 0.0
    assert "success/received" not in outcomes.columns or outcomes.loc["other", "success/received"] == 0.0
    colour = outcome_colors(["misattributed"])[0]
    assert colour not in (OUTCOME_COLORS["success"], OUTCOME_COLORS["failure"], OUTCOME_COLORS["none"])
