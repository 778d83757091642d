"""Delay models (SPEC §6, §9): empirical, mixture, never, callables; validation and determinism."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness.runner import InvalidScenario, load_scenario, parse_scenario, run_scenario
from harness.runner.distributions import DelayError, parse_delay

from .conftest import BOTS

MIXTURE = {"dist": "mixture", "components": [
    {"weight": 0.97, "dist": "lognormal", "median": 40, "sigma": 1.2}, {"weight": 0.03, "dist": "never"}]}
MODELS: list[Any] = [
    {"dist": "empirical", "values": [1, 2.5, float("nan"), 40]},
    MIXTURE,
    {"dist": "mixture", "components": [{"weight": 1, "dist": "empirical", "values": [3, 4]},
                                       {"weight": 2, "dist": "mixture", "components": [{"weight": 1, "dist": "uniform", "low": 0, "high": 9}]}]},
    {"dist": "never"},
    lambda rng, size: rng.exponential(10, size),
]


def write_scenario(directory: Path, delay: str, *, conversations: int = 4) -> Path:
    path = directory / "s.toml"
    path.write_text(f'bot = "{BOTS / "payment.toml"}"\n[[cases]]\nname = "obs"\nconversations = {conversations}\n'
                    f"delay_s = {delay}\n")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(InvalidScenario) as caught:
        load_scenario(path)
    return [line.removeprefix(f"{path}: ") for line in caught.value.problems]


@pytest.mark.parametrize("raw", MODELS, ids=["empirical", "mixture", "nested", "never", "callable"])
def test_same_seed_same_draws_bit_for_bit(raw: Any) -> None:
    delay = parse_delay(raw)
    first, second = (delay.sample(np.random.default_rng([7, 0]), 500) for _ in range(2))
    assert first.dtype == np.float64 and first.shape == (500,)
    assert first.tobytes() == second.tobytes()  # NaN included, bit for bit
    assert not (first < 0).any()


def test_empirical_values_draw_with_replacement_and_nan_is_never() -> None:
    draws = parse_delay({"dist": "empirical", "values": [5, float("nan")]}).sample(np.random.default_rng(1), 10_000)
    assert set(draws[~np.isnan(draws)]) == {5.0}
    assert 0.45 < np.isnan(draws).mean() < 0.55


def test_mixture_picks_components_by_weight() -> None:
    draws = parse_delay(MIXTURE).sample(np.random.default_rng(3), 40_000)
    assert 0.025 < np.isnan(draws).mean() < 0.035
    assert 35 < np.nanmedian(draws) < 45


def test_empirical_file_relative_to_the_scenario_read_once_at_load(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "delays.csv").write_text("id,delay_s\na,12\nb,\nc,30.5\n")
    path = write_scenario(tmp_path, '{ dist = "empirical", file = "data/delays.csv", column = "delay_s" }',
                          conversations=300)
    scenario = load_scenario(path)
    (tmp_path / "data" / "delays.csv").unlink()  # drawing needs the observations, not the file
    draws = scenario.subcases[0].delay.sample(np.random.default_rng(0), 300)
    assert set(draws[~np.isnan(draws)]) == {12.0, 30.5} and np.isnan(draws).any()
    assert scenario.subcases[0].delay.label == "empirical(data/delays.csv:delay_s)"


def test_empirical_parquet_file_runs(tmp_path: Path) -> None:
    pd.DataFrame({"delay_s": [1.0, 2.0, None]}).to_parquet(tmp_path / "delays.parquet")
    path = write_scenario(tmp_path, '{ dist = "empirical", file = "delays.parquet" }', conversations=30)
    frame = run_scenario(path)
    assert set(frame["delay_s"].dropna()) <= {1.0, 2.0}
    assert (frame.loc[frame["delay_s"].isna(), "reason"] == "timeout").all()
    assert (frame.loc[frame["delay_s"].notna(), "outcome"] == "success").all()


@pytest.mark.parametrize(("content", "delay", "problem"), [
    (None, '{ dist = "empirical", file = "gone.csv", column = "delay_s" }', "file gone.csv: not found"),
    ("x\n1\n", '{ dist = "empirical", file = "d.txt", column = "x" }', "file d.txt: must end in .csv or .parquet, got '.txt'"),
    ("id,seconds\na,1\n", '{ dist = "empirical", file = "d.csv", column = "delay_s" }',
     "file d.csv: no column 'delay_s'; columns: id, seconds"),
    ("id,seconds\na,1\n", '{ dist = "empirical", file = "d.csv" }',
     "file d.csv: say which column holds the delays (column = ...); columns: id, seconds"),
    ("delay_s\n1\n2\nsoon\n", '{ dist = "empirical", file = "d.csv", column = "delay_s" }',
     "file d.csv, column 'delay_s', row 3 (line 4): not a number of seconds: 'soon'"),
    ("delay_s\n1\n-2\n", '{ dist = "empirical", file = "d.csv", column = "delay_s" }',
     "file d.csv, column 'delay_s', row 2 (line 3): negative delay (-2)"),
    ("delay_s\n", '{ dist = "empirical", file = "d.csv", column = "delay_s" }', "file d.csv, column 'delay_s' is empty"),
    ("delay_s,x\n,1\n,2\n", '{ dist = "empirical", file = "d.csv", column = "delay_s" }',
     "file d.csv, column 'delay_s' has no delays, every one is empty or NaN"),
    (None, '{ dist = "empirical", values = [1, -3] }', "values[1]: negative delay (-3)"),
    (None, '{ dist = "empirical", values = [1, "2"] }', "values[1] must be a number of seconds (nan: never), got '2'"),
    (None, '{ dist = "empirical", values = [] }', "values is empty"),
    (None, '{ dist = "empirical" }', "dist 'empirical' needs either values = [...] or file"),
    (None, '{ dist = "never", after = 3 }', "unknown parameter(s) after for dist 'never'"),
    (None, '{ dist = "mixture", components = [{ weight = 0.9, dist = "lognormal", median = 40 }, { weight = 0.1, dist = "never" }] }',
     "components[0] (lognormal): dist 'lognormal' needs sigma"),
    (None, '{ dist = "mixture", components = [{ dist = "never" }] }', "components[0] (never): weight must be a non-negative number, got None"),
    (None, '{ dist = "mixture", components = [{ weight = 1, dist = "mixture", components = [{ weight = 1, dist = "pareto" }] }] }',
     "components[0] (mixture): components[0] (pareto): dist must be one of"),
    (None, '{ dist = "mixture", components = [] }', "dist 'mixture' needs components"),
])
def test_invalid_delays_name_file_case_field_and_reason(tmp_path: Path, content: str | None, delay: str, problem: str) -> None:
    if content is not None:
        (tmp_path / ("d.txt" if "d.txt" in delay else "d.csv")).write_text(content)
    [found] = problems_of(write_scenario(tmp_path, delay))
    assert found.startswith(f"cases[0] (obs).delay_s: {problem}")


def test_never_is_a_valid_table_at_the_top_and_in_a_mixture(tmp_path: Path) -> None:
    frame = run_scenario({"bot": str(BOTS / "payment.toml"), "cases": [
        {"name": "n", "conversations": 3, "timeout_s": 5, "delay_s": {"dist": "never"}},
        {"name": "m", "conversations": 3, "timeout_s": 5, "delay_s": {"dist": "mixture", "components": [{"weight": 1, "dist": "never"}]}},
    ]})
    assert frame["delay_s"].isna().all() and (frame["reason"] == "timeout").all()
    assert frame["statuses"].eq("").all()  # no call went out


def test_lists_inside_delay_tables_do_not_sweep_but_a_list_of_delays_does() -> None:
    parsed = parse_scenario({"bot": str(BOTS / "payment.toml"), "cases": [
        {"name": "one", "delay_s": MIXTURE},
        {"name": "one_more", "delay_s": {"dist": "empirical", "values": [1, 2, 3]}},
        {"name": "three", "delay_s": [MIXTURE, {"dist": "empirical", "values": list(range(10))}, {"dist": "never"}]},
    ]})
    assert [(s.case, s.variant) for s in parsed.subcases] == [
        ("one", ""), ("one_more", ""),
        ("three", "delay_s=mixture(2)"), ("three", "delay_s=empirical(n=10)"), ("three", "delay_s=never")]


def test_sweep_labels_stay_distinct() -> None:
    def heavy(rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.exponential(100, size)

    def mix(never: float) -> dict[str, Any]:
        return {"dist": "mixture", "components": [{"weight": 1 - never, "dist": "fixed", "value": 10},
                                                  {"weight": never, "dist": "never"}]}

    parsed = parse_scenario({"bot": str(BOTS / "payment.toml"), "cases": [
        {"name": "mixtures", "delay_s": [mix(0.1), mix(0.2)]},
        {"name": "functions", "delay_s": [heavy, lambda rng, size: np.zeros(size), lambda rng, size: np.ones(size)]},
    ]})
    assert [s.variant for s in parsed.subcases] == [
        "delay_s=mixture(0.9*10;0.1*never)", "delay_s=mixture(0.8*10;0.2*never)",
        "delay_s=callable(test_sweep_labels_stay_distinct.<locals>.heavy)#1",
        "delay_s=callable(test_sweep_labels_stay_distinct.<locals>.<lambda>)#2",
        "delay_s=callable(test_sweep_labels_stay_distinct.<locals>.<lambda>)#3"]


def fast_payers(rng: np.random.Generator, size: int) -> np.ndarray:
    delays = rng.uniform(0, 10, size)
    delays[::4] = np.nan  # every fourth customer never pays
    return delays


def test_a_callable_delay_in_a_dict_scenario() -> None:
    scenario = {"bot": str(BOTS / "payment.toml"), "seed": 2,
                "cases": [{"name": "fn", "conversations": 8, "timeout_s": 20, "delay_s": fast_payers}]}
    frame = run_scenario(scenario)
    assert frame["delay_s"].isna().sum() == 2 and (frame["delay_s"].dropna() <= 10).all()
    assert (frame["outcome"] == np.where(frame["delay_s"].isna(), "failure", "success")).all()
    assert frame["delay_s"].equals(run_scenario(scenario)["delay_s"])
    assert parse_scenario(scenario).subcases[0].delay.label == "callable(fast_payers)"


@pytest.mark.parametrize(("function", "problem"), [
    (lambda rng, size: -np.ones(size), "index 0 of its result: negative delay (-1)"),
    (lambda rng, size: np.ones(size - 1), "must return 5 delays (one per conversation), got shape (4,)"),
    (lambda rng, size: ["soon"] * size, "must return numbers (seconds; NaN = never), got an array of <U4"),
    (lambda rng, size: np.full(size, np.inf), "index 0 of its result: infinite delay (inf); use NaN (an empty cell) for a call that never comes"),
    (lambda rng, size: 1 / 0, "raised ZeroDivisionError: division by zero"),
])
def test_a_callable_with_bad_output_is_named_with_its_case(function: Any, problem: str) -> None:
    scenario = parse_scenario({"bot": str(BOTS / "payment.toml"),
                               "cases": [{"name": "broken", "conversations": 5, "delay_s": function}]}, source="<dict>")
    with pytest.raises(DelayError) as caught:
        scenario.subcases[0].delay.sample(np.random.default_rng(0), 5)
    message = str(caught.value)
    assert message.startswith("<dict>: cases[0] (broken).delay_s: callable ") and message.endswith(problem)


@pytest.mark.parametrize(("raw", "reference"), [
    ({"dist": "gamma", "shape": 2.5, "scale": 12}, lambda st: st.gamma(a=2.5, scale=12)),
    ({"dist": "weibull", "shape": 1.4, "scale": 50}, lambda st: st.weibull_min(c=1.4, scale=50)),
    ({"dist": "lognormal", "median": 20, "sigma": 1.0}, lambda st: st.lognorm(s=1.0, scale=20)),
], ids=["gamma", "weibull", "lognormal"])
def test_parametric_families_match_scipy_parameterisation(raw: dict[str, Any], reference: Any) -> None:
    """A fit made with scipy.stats converts to a delay table with the same parameters."""
    stats = pytest.importorskip("scipy.stats")
    draws = parse_delay(raw).sample(np.random.default_rng(11), 20_000)
    assert stats.kstest(draws, reference(stats).cdf).statistic < 0.015


def test_a_callable_from_a_notebook_like_main_runs_on_worker_processes() -> None:
    """A function defined in __main__ (a notebook cell, `python -c`) reaches spawned workers."""
    import subprocess
    import sys

    script = f"""
import numpy as np, harness
def paid_within_ten(rng, size):
    return rng.uniform(0, 10, size)
scenario = {{"bot": {str(BOTS / "payment.toml")!r}, "seed": 1,
            "cases": [{{"name": "f", "conversations": 50, "timeout_s": [5, 20], "delay_s": paid_within_ten}}]}}
spread = harness.run_scenario(scenario, driver="core", workers=2)
alone = harness.run_scenario(scenario, driver="core", workers=1)
assert spread["delay_s"].equals(alone["delay_s"]) and spread["outcome"].equals(alone["outcome"])
rates = spread.groupby("timeout_s")["outcome"].apply(lambda o: (o == "success").mean())
print(" ".join(f"{{timeout}}={{rate:g}}" for timeout, rate in rates.items()))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rates = done.stdout.strip().splitlines()[-1]
    assert rates.startswith("5=0.") and rates.endswith(" 20=1")  # uniform(0, 10): about half by 5 s, all by 20 s


@pytest.mark.parametrize("driver", ["core", "asgi"])
def test_a_delay_callable_returning_bad_values_is_a_clear_scenario_error(driver: str) -> None:
    def negative(rng: np.random.Generator, size: int) -> np.ndarray:
        return -np.ones(size)

    scenario = {"bot": str(BOTS / "payment.toml"), "cases": [{"name": "broken", "conversations": 3, "delay_s": negative}]}
    with pytest.raises(InvalidScenario) as caught:
        run_scenario(scenario, driver=driver)
    assert "cases[0] (broken).delay_s: callable " in str(caught.value)
    assert "negative delay" in str(caught.value)
