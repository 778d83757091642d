from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.analysis import (
    ecdf,
    minimal_timeout,
    misattribution,
    outcome_table,
    status_table,
    success_curve,
    wilson_interval,
)
from harness.runner import run_scenario

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


def test_success_curve_and_minimal_timeout() -> None:
    frame = frame_of({10: ["success"] * 50 + ["failure"] * 50, 60: ["success"] * 99 + ["failure"], 30: ["success"] * 90 + ["failure"] * 10})
    curve = success_curve(frame)
    assert list(curve["timeout_s"]) == [10, 30, 60]
    assert list(curve["success_rate"]) == [0.5, 0.9, 0.99]
    assert (curve["ci_low"] <= curve["success_rate"]).all() and (curve["success_rate"] <= curve["ci_high"]).all()
    assert minimal_timeout(curve, 0.99) == 60
    assert minimal_timeout(curve, 0.9) == 30
    assert minimal_timeout(curve, 0.995) is None
    assert minimal_timeout(curve, 0.99, conservative=True) is None  # 99/100 is not enough evidence


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
