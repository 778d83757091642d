from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.analysis import (
    OUTCOME_COLORS,
    delay_quantile,
    ecdf,
    extra_time_table,
    fit_delays,
    late_payers,
    minimal_timeout,
    misattribution,
    outcome_colors,
    outcome_table,
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
