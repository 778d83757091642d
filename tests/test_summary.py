"""A sub-case's verdict is tallied piece by piece as rows arrive (harness run keeps no rows): the
summary, the thresholds' figures, the failure message and its example conversations are the ones
the whole frame gives, wherever the run was cut."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.runner import as_scenario, shards, to_frame
from harness.runner.report import CaseResult, Verdicts, case_results
from harness.runner.summary import Tally, summarize_rows

from .conftest import BOTS

SCENARIO = {
    "name": "cut", "bot": str(BOTS / "payment.toml"), "seed": 9,
    "defaults": {"payload": {"data": {"amount": 42}}, "timeout_s": 30},
    "cases": [
        {"name": "mixed", "conversations": 120, "delay_s": {"dist": "exponential", "mean": 20}, "expect": {"outcome": "success"}},
        {"name": "fixed", "conversations": 60, "delay_s": [1, 40]},  # equal waits: examples must keep arrival order
        {"name": "pair", "conversations": 40, "parties": [
            {"block": "wait_payment", "delay_s": {"dist": "uniform", "low": 0, "high": 50}},
            {"block": "wait_payment", "delay_s": 3, "key": "missing"}]},
    ],
}
METRICS = ["success_rate", "failure_rate", "timeout_rate", "late_rate", "misattributed_rate",
           "p50(waited_s)", "p95(waited_s)", "max(waited_s)", "mean(delay_s)", "p99(delay_s)"]


@functools.cache
def run() -> pd.DataFrame:
    return to_frame(shards.run_virtual(as_scenario(SCENARIO), driver="core"))


def seen(results: list[CaseResult]) -> list[tuple[Any, ...]]:
    return [(r.label, r.named_party, r.to_json(), r.message, r.examples) for r in results]


@settings(max_examples=40, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=299), max_size=12).map(sorted),
    thresholds=st.lists(st.tuples(st.sampled_from(METRICS), st.sampled_from(["<=", ">=", "==", "<", ">"]),
                                  st.sampled_from([0, 0.5, 1, 3, 30, 1000])), max_size=3),
    failed=st.lists(st.integers(min_value=0, max_value=299), max_size=8),
    errors=st.lists(st.integers(min_value=0, max_value=299), max_size=4),
)
def test_any_cut_of_the_rows_gives_the_verdicts_of_the_whole(cuts: list[int], thresholds: list[tuple[str, str, float]],
                                                             failed: list[int], errors: list[int]) -> None:
    frame = run().copy()
    if thresholds:
        frame["thresholds"] = pd.Categorical(["; ".join(f"{m} {op} {limit}" for m, op, limit in thresholds)] * len(frame))
    frame.loc[frame.index[failed], "passed"] = False
    frame.loc[frame.index[failed], "failure"] = [f"expected success, got {n % 3}" for n in range(len(failed))]
    frame.loc[frame.index[errors], "error"] = "bot failed"
    verdicts = Verdicts()
    for start, stop in zip([0, *cuts], [*cuts, len(frame)]):
        verdicts.add(frame.iloc[start:stop])
    assert seen(verdicts.results()) == seen(case_results(frame))


def test_a_failed_threshold_shows_the_conversations_that_pulled_it_the_wrong_way() -> None:
    frame = run()
    rows = frame[frame["variant"] == "delay_s=40"].assign(thresholds="max(waited_s) <= 10")
    tally = Tally()
    for piece in np.array_split(np.arange(len(rows)), 7):
        tally.add(rows.iloc[piece])
    verdicts = tally.verdicts()
    assert verdicts == [("max(waited_s) <= 10", False, 30.0)]  # the 40 s deliveries time out at 30 s
    examples = tally.examples([("max(waited_s) <= 10", 30.0)])
    # The longest waits, equal ones in the order the conversations ran.
    longest = rows[rows["waited_s"] == 30.0]["conversation"].head(5).tolist()
    assert len(rows) == 60 and len(longest) == 5
    assert [example["conversation"] for example in examples] == longest
    assert summarize_rows(rows)["max_waited_s"] == 30.0


def test_a_tally_keeps_the_measured_waits_not_the_rows() -> None:
    frame = run()
    tally = Tally()
    tally.add(frame)
    kept = sum(values.nbytes for values in (tally.values("waited_s"), tally.values("delay_s")))
    assert kept <= 2 * 8 * len(frame)  # 8 bytes a measured value; the rows themselves are let go
    assert not any(isinstance(value, (pd.DataFrame, pd.Series)) for value in vars(tally).values())


def test_rows_without_late_calls_count_late_conversations_from_their_statuses() -> None:
    # Results saved before late_calls existed (or plain row dicts) summarise from statuses alone.
    rows = to_frame([{"scenario": "s", "case": "c", "variant": "", "conversation": n, "outcome": outcome,
                      "statuses": statuses} for n, (outcome, statuses) in
                     enumerate([("success", "200"), ("failure", "410"), ("success", "410,200"), (None, "")])])
    assert rows["late_calls"].isna().all()
    summary = summarize_rows(rows)
    assert (summary["late_rate"], summary["success_rate"], summary["statuses"]) == (0.5, 0.5, "200×2 410×2")


def test_thresholds_on_the_same_rate_or_column_each_keep_one_set_of_examples() -> None:
    frame = run().assign(thresholds="failure_rate <= 0; failure_rate <= 0; p95(waited_s) <= 1; max(waited_s) <= 1")
    verdicts = Verdicts()
    for piece in np.array_split(np.arange(len(frame)), 9):
        verdicts.add(frame.iloc[piece])
    streamed = verdicts.results()
    assert seen(streamed) == seen(case_results(frame))
    pair = next(result for result in streamed if result.label == "pair[party=1]")
    conversations = [example["conversation"] for example in pair.examples]
    assert len(conversations) == 5 and len(set(conversations)) == 5  # no conversation shown twice
