"""The scenario runner: determinism, key modes, sweeps, results, both drivers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness.runner import InvalidScenario, load_results, parse_scenario, run_scenario, save_results, summarize
from harness.runner.engine import derangement

from .conftest import BOTS, ROOT

PAYLOAD = {"data": {"amount": 42, "id": "pay_1", "items": [{"sku": "A1"}]}}


def scenario(*cases: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"name": "t", "bot": str(BOTS / "payment.toml"), "seed": 1,
            "defaults": {"conversations": 20, "payload": PAYLOAD}, "cases": list(cases), **top}


def test_same_seed_same_results_other_seed_other_delays() -> None:
    document = scenario(
        {"name": "mixed", "delay_s": {"dist": "lognormal", "median": 60, "sigma": 1.0}, "key": ["correct", "other"],
         "arrival_rate": 2, "calls": 2, "call_gap_s": 30},
    )
    first, second = run_scenario(document), run_scenario(document)
    assert first.equals(second)  # to the bit, keys included: in-process gates draw them from the seed
    assert first["conversation_key"].is_unique
    other = run_scenario(document, seed=2)
    assert not np.allclose(first["delay_s"], other["delay_s"])


@pytest.mark.parametrize(
    ("key", "status", "outcome"),
    [("correct", 200, "success"), ("missing", 422, "failure"), ("empty", 422, "failure"),
     ("wrong_type", 422, "failure"), ("random", 404, "failure"), ("other", 200, "success")],
)
def test_key_modes(key: str, status: int, outcome: str) -> None:
    frame = run_scenario(scenario({"name": key, "key": key, "delay_s": 5}))
    assert set(frame["first_status"]) == {status}
    assert set(frame["outcome"]) == {outcome}
    if key == "other":
        assert (frame["resolved_by"] != frame["conversation"]).all()
        # Each conversation was resolved by exactly one other party: a derangement.
        assert sorted(frame["resolved_by"]) == list(range(20))
    elif key == "correct":
        assert (frame["resolved_by"] == frame["conversation"]).all()
    else:
        assert frame["resolved_by"].isna().all() and (frame["reason"] == "timeout").all()
        assert (frame["waited_s"] == 120.0).all()


def test_timeout_override_uses_a_derived_bot_and_the_deadline_decides() -> None:
    frame = run_scenario(scenario(
        {"name": "edge", "timeout_s": 30, "delay_s": [29.999, 30, 30.001]},
    ))
    assert set(frame["bot"]) == {"payment.t30"}
    by_delay = frame.groupby("delay_s")["first_status"].unique()
    assert {delay: list(statuses) for delay, statuses in by_delay.items()} == {29.999: [200], 30.0: [410], 30.001: [410]}
    late = frame[frame["delay_s"] >= 30]
    assert (late["waited_s"] == 30.0).all() and (late["reason"] == "timeout").all()


def test_duplicates_are_refused_after_the_first_success() -> None:
    frame = run_scenario(scenario({"name": "dup", "calls": 4, "delay_s": 3}))
    assert set(frame["statuses"]) == {"200,409,409,409"}
    spaced = run_scenario(scenario({"name": "late_dup", "calls": 2, "call_gap_s": 200, "delay_s": 3, "key": "missing"}))
    assert set(spaced["statuses"]) == {"422,422"}


def test_never_calls_times_out_with_no_status() -> None:
    frame = run_scenario(scenario({"name": "never", "delay_s": "never"}))
    assert frame["first_status"].isna().all() and frame["delay_s"].isna().all()
    assert (frame["reason"] == "timeout").all() and (frame["statuses"] == "").all()


def test_sweeps_expand_to_the_product_with_variant_labels() -> None:
    frame = run_scenario(scenario(
        {"name": "grid", "conversations": 4, "timeout_s": [5, 10], "key": ["correct", "other"], "delay_s": 7},
    ))
    variants = list(dict.fromkeys(frame["variant"]))
    assert variants == ["timeout_s=5,key=correct", "timeout_s=5,key=other", "timeout_s=10,key=correct", "timeout_s=10,key=other"]
    assert (frame["case"] == "grid").all() and len(frame) == 16
    outcome = frame.groupby("variant", observed=True)["outcome"].first().to_dict()
    assert outcome == {"timeout_s=5,key=correct": "failure", "timeout_s=5,key=other": "failure",
                       "timeout_s=10,key=correct": "success", "timeout_s=10,key=other": "success"}


def test_a_list_inside_a_distribution_does_not_sweep() -> None:
    parsed = parse_scenario(scenario({"name": "c", "delay_s": {"dist": "choice", "values": [1, 2], "weights": [1, 3]}}))
    assert len(parsed.subcases) == 1 and parsed.subcases[0].variant == ""


def test_expectations_and_thresholds_are_judged() -> None:
    frame = run_scenario(scenario(
        {"name": "wrong_expectation", "delay_s": 5, "expect": {"outcome": "failure", "variables": {"amount": 41}},
         "thresholds": ["success_rate >= 0.5", "p95(waited_s) < 1"]},
    ))
    assert not frame["passed"].any()
    assert frame["failure"].iloc[0] == "outcome success != failure; variable amount 42 != 41"
    summary = summarize(frame).iloc[0]
    assert summary["expectations"] == "0/20" and not summary["thresholds_ok"]
    assert summary["thresholds"] == "✓ success_rate >= 0.5 (1); ✗ p95(waited_s) < 1 (5)"


def test_every_problem_is_reported_with_file_case_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'''
bot = "{BOTS / 'payment.toml'}"
seed = -1
[defaults]
conversations = 0
colour = "red"
[[cases]]
name = "a"
timeout_s = [10, 301]
delay_s = {{ dist = "pareto", shape = 2 }}
key = "other"
[[cases]]
name = "b"
block = "ask"
expect = {{ outcome = "maybe", status = 700 }}
thresholds = ["p42(waited_s) < 1", "success_rate ~ 1"]
payload = {{ conversation_key = "x" }}
signature = []
''')
    with pytest.raises(InvalidScenario) as caught:
        from harness.runner import load_scenario

        load_scenario(path)
    problems = [line.removeprefix(f"{path}: ") for line in caught.value.problems]
    assert problems == [
        "seed: must be a non-negative integer",
        "defaults.colour: unknown case field",
        "cases[0] (a).conversations: must be an integer from 1 to 1000000, got 0",
        "cases[0] (a).timeout_s: must be an integer from 1 to 300, got 301",
        "cases[0] (a).delay_s: dist must be one of fixed, uniform, exponential, lognormal, normal, gamma, weibull, choice, empirical, mixture, never; got 'pareto'",
        "cases[1] (b).conversations: must be an integer from 1 to 1000000, got 0",
        "cases[1] (b).signature: an empty list sweeps nothing",
        "cases[1] (b).block: 'ask' is not a webhook block of bot 'payment'",
        "cases[1] (b).payload.conversation_key: is set by the case's `key` mode; leave it out of the payload",
        "cases[1] (b).expect.outcome: must be success or failure, got 'maybe'",
        "cases[1] (b).expect.status: must be an HTTP status code, got 700",
        "cases[1] (b).thresholds: unknown metric 'p42(waited_s)'; use success_rate, failure_rate, timeout_rate, "
        "misattributed_rate, late_rate, early_rate or p50/p95/p99/mean/max of waited_s or delay_s, e.g. p95(waited_s)",
        "cases[1] (b).thresholds: 'success_rate ~ 1' is not \"metric op number\" (ops: < <= > >= ==)",
    ]


def test_other_needs_two_conversations() -> None:
    with pytest.raises(InvalidScenario, match="needs at least 2 conversations"):
        parse_scenario(scenario({"name": "solo", "key": "other", "conversations": 1}))


def test_a_broken_bot_is_reported_through_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "bot.toml").write_text('id = "x"\nstart = "w"\n[blocks.w]\ntype = "webhook"\ntimeout_s = 500\n')
    with pytest.raises(InvalidScenario) as caught:
        parse_scenario({"bot": "bot.toml", "cases": [{"name": "a"}]}, base_dir=tmp_path, source="s.toml")
    assert f"s.toml: bot ({tmp_path / 'bot.toml'}): blocks.w.timeout_s: must be an integer from 1 to 300, got 500" in caught.value.problems


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_results_round_trip_with_dtypes(tmp_path: Path, suffix: str) -> None:
    frame = run_scenario(scenario({"name": "a", "delay_s": [5, "never"], "expect": {"status": 200}, "thresholds": ["success_rate > 0.4"]}))
    path = save_results(frame, tmp_path / f"results{suffix}")
    loaded = load_results(path)
    assert loaded["case"].dtype == "category" and loaded["first_status"].dtype == "Int64"
    assert loaded["passed"].dtype == "boolean"
    pd.testing.assert_frame_equal(summarize(loaded), summarize(frame))
    if suffix == ".parquet":
        pd.testing.assert_frame_equal(loaded, frame)


def test_run_scenario_inside_a_running_asyncio_loop() -> None:
    async def notebook_cell() -> pd.DataFrame:
        return run_scenario(scenario({"name": "in_jupyter", "delay_s": 300, "timeout_s": 300}))

    frame = asyncio.run(notebook_cell())
    assert set(frame["first_status"]) == {410} and (frame["waited_s"] == 300.0).all()


def test_shipped_scenarios_are_valid() -> None:
    from harness.runner import load_scenario

    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        assert load_scenario(path).subcases, path


def test_derangement_has_no_fixed_point_and_is_a_permutation() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 3, 10, 1000):
        permutation = derangement(rng, n)
        assert sorted(permutation) == list(range(n)) and not (permutation == np.arange(n)).any()


# -- real time against a live `harness serve` ---------------------------------------------------


@pytest.mark.slow
def test_live_driver_matches_the_contract(server: str) -> None:
    document = scenario(
        {"name": "on_time", "conversations": 10, "timeout_s": 1, "delay_s": {"dist": "uniform", "low": 0, "high": 0.3},
         "expect": {"outcome": "success", "status": 200, "variables": {"amount": 42}}},
        {"name": "late", "conversations": 5, "timeout_s": 1, "delay_s": 1.3, "expect": {"outcome": "failure", "status": 410}},
        {"name": "other", "conversations": 6, "timeout_s": 2, "key": "other", "delay_s": 0.2,
         "thresholds": ["misattributed_rate == 1"]},
    )
    frame = run_scenario(document, target=server)
    assert frame["passed"].dropna().all(), frame[["case", "failure", "error"]]
    assert summarize(frame)["thresholds_ok"].all()
    late = frame[frame["case"] == "late"]
    assert (late["waited_s"] == 1.0).all()
    # A bot of the same id with other content on the target: the runner uses its own copy.
    assert set(frame["bot"]) <= {"payment.t1", "payment.t2"}


@pytest.mark.slow
def test_live_run_does_not_use_a_different_bot_with_the_same_id(server: str) -> None:
    import httpx

    from harness.core.bots import load_bot

    impostor = load_bot(BOTS / "payment.toml").to_dict()
    impostor["id"] = "payment.t3"
    impostor["blocks"]["wait_payment"]["timeout_s"] = 3
    impostor["blocks"]["paid"]["text"] = "something else"
    httpx.post(f"{server}/api/bots", json=impostor)
    frame = run_scenario(scenario({"name": "x", "conversations": 2, "timeout_s": 3, "delay_s": 0.1}), target=server)
    assert frame["bot"].iloc[0].startswith("payment.t3.") and (frame["outcome"] == "success").all()


@pytest.mark.slow
def test_live_runs_of_a_signed_bot_never_reuse_a_bot_whose_secret_they_cannot_see(server: str) -> None:
    document = {"bot": str(BOTS / "payment_signed.toml"), "seed": 1,
                "cases": [{"name": "signed", "conversations": 3, "timeout_s": 2, "delay_s": 0.1,
                           "expect": {"outcome": "success", "status": 200}}]}
    ids = []
    for _ in range(3):
        frame = run_scenario(document, target=server)
        assert frame["passed"].all(), frame[["failure", "error"]]
        ids.append(frame["bot"].iloc[0])
    assert ids[0] == "payment_signed.t2"
    assert ids[1] == ids[2] and ids[1].startswith("payment_signed.t2.")


@pytest.mark.slow
def test_sharded_run_gives_the_same_rows_as_one_process() -> None:
    document = scenario(
        {"name": "sweep", "conversations": 30, "timeout_s": [10, 60], "key": ["correct", "other"],
         "delay_s": {"dist": "exponential", "mean": 20}},
        {"name": "dup", "calls": 2, "call_gap_s": 5, "delay_s": 3, "arrival_rate": 4},
    )
    single = run_scenario(document, workers=1)
    sharded = run_scenario(document, workers=2)
    assert single.equals(sharded)  # to the bit, conversation keys included (SPEC §15.5)
    assert single.equals(run_scenario(document, workers=1, driver="core"))


def test_first_call_goes_out_exactly_at_the_delay_in_virtual_time() -> None:
    frame = run_scenario(scenario({"name": "d", "delay_s": {"dist": "uniform", "low": 0, "high": 100}}))
    assert (frame["first_call_s"] == frame["delay_s"]).all()


def test_form_encoded_callbacks_map_as_strings_and_repeat_lists() -> None:
    import tomllib

    bot = tomllib.loads((BOTS / "payment.toml").read_text())
    bot["blocks"]["wait_payment"]["mappings"] = {"amount": "amount", "tags": "tag"}
    frame_and_vars = run_scenario({
        "bot": bot, "seed": 1,
        "cases": [{"name": "form", "conversations": 5, "encoding": "form", "delay_s": 2,
                   "payload": {"amount": 42, "tag": ["a", "b"]},
                   "expect": {"outcome": "success", "status": 200, "variables": {"amount": "42", "tags": ["a", "b"]}}},
                  {"name": "form_missing_key", "conversations": 5, "encoding": "form", "key": "missing",
                   "expect": {"status": 422}}],
    })
    assert frame_and_vars["passed"].all(), frame_and_vars["failure"].tolist()


def test_form_encoding_refuses_what_a_form_cannot_carry() -> None:
    with pytest.raises(InvalidScenario) as caught:
        parse_scenario(scenario({"name": "f", "encoding": "form", "key": "wrong_type"},
                                {"name": "g", "encoding": "xml"}))
    problems = "\n".join(caught.value.problems)
    assert "cases[0] (f).payload: with encoding = \"form\", values must be text" in problems  # PAYLOAD is nested
    assert "cases[0] (f).key: a form cannot carry a key of the wrong type" in problems
    assert "cases[1] (g).encoding: must be json or form, got 'xml'" in problems


def test_time_scaled_cases_keep_whole_second_timeouts_in_proportion() -> None:
    from harness.runner.scenario import load_scenario, time_scaled

    payment = load_scenario(ROOT / "scenarios" / "payment.toml")
    scaled = {s.case: s for s in time_scaled(payment, 0.05).subcases}
    late = scaled["late"]  # 30 s: 1.5 s is no timeout a gate can wait, so the case runs at 2/30
    assert late.timeout_s == 2 and late.time_scale == pytest.approx(2 / 30)
    assert late.parties[0].thresholds[1].text == "p50(waited_s) == 2"
    assert scaled["on_time"].timeout_s == 6 and scaled["on_time"].time_scale == pytest.approx(0.05)
    with pytest.raises(InvalidScenario, match="case on_time: time scale 3 makes a timeout longer than 300 s"):
        time_scaled(payment, 3)
    frame = run_scenario(payment, time_scale=0.05, driver="core")  # virtual time: exact, every expectation holds
    assert frame["passed"].dropna().all()
