"""The runner engine: same rows however a run is driven or spread; retries, key paths,
signature schemes, late calls; memory that does not grow with finished conversations."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import trio
import trio.testing

from harness.runner import InvalidScenario, parse_scenario, run_scenario, summarize
from harness.runner.drivers import in_core
from harness.runner.engine import execute

from .conftest import BOTS, ROOT

PAYLOAD = {"data": {"amount": 42, "id": "pay_1", "items": [{"sku": "A1"}]}}


def same_rows(first: pd.DataFrame, second: pd.DataFrame) -> None:
    """Equal to the bit, conversation keys included (in-process keys come from the seed, SPEC §15.5)."""
    pd.testing.assert_frame_equal(first, second)
    assert first.equals(second)


def bot(**webhook: Any) -> dict[str, Any]:
    """A bot that waits at 'wait' (timeout 30 s) and maps data.amount."""
    block = {"type": "webhook", "timeout_s": 30, "success": "ok", "failure": "late",
             "mappings": {"amount": "data.amount"}, **webhook}
    return {"id": "b", "start": "wait", "blocks": {"wait": block, "ok": {"type": "end"}, "late": {"type": "end"}}}


# -- the same rows, however the run is driven or spread -------------------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.toml")), ids=lambda p: p.stem)
def test_asgi_and_core_drivers_give_the_same_rows_on_the_shipped_suite(path: Path) -> None:
    same_rows(run_scenario(path, driver="asgi"), run_scenario(path, driver="core"))


SPREAD = {
    "name": "spread", "bot": str(BOTS / "payment.toml"), "seed": 5,
    "defaults": {"payload": PAYLOAD},
    "cases": [
        {"name": "big", "conversations": 400, "arrival_rate": 20, "timeout_s": 30,
         "delay_s": {"dist": "exponential", "mean": 20}, "calls": 2, "call_gap_s": 3},
        {"name": "unknown", "conversations": 60, "key": "random", "delay_s": 1},
        {"name": "other", "conversations": 40, "key": "other", "delay_s": {"dist": "uniform", "low": 0, "high": 50}},
        {"name": "sweep", "conversations": 50, "timeout_s": [10, 60], "delay_s": 20},
    ],
}


def test_a_large_case_is_cut_into_index_ranges_with_the_same_rows() -> None:
    from harness.runner import as_scenario
    from harness.runner.shards import plan_pieces

    pieces = plan_pieces(as_scenario(SPREAD), 2)  # 600 conversations: pieces of 75 at most
    big = [plan for piece in pieces for plan in piece if plan.subcase == 0]
    assert [(p.start, p.stop) for p in big] == [(0, 67), (67, 133), (133, 200), (200, 267), (267, 333), (333, 400)]
    other = [plan for piece in pieces for plan in piece if plan.subcase == 2]
    assert [(p.start, p.stop) for p in other] == [(0, 40)]  # keys depend on each other: never cut
    order = [(plan.subcase, plan.start) for piece in pieces for plan in piece]
    assert order == sorted(order)  # in the scenario's order: pieces are handed on as they come
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    single = run_scenario(SPREAD, workers=1, driver="core")
    with ThreadPoolExecutor(max_workers=2) as pool:
        same_rows(single, run_scenario(SPREAD, executor=pool, driver="core"))
    # The run tuned the garbage collector for its duration only (a notebook's process goes on).
    assert (gc.get_threshold(), gc.callbacks) == (thresholds, callbacks)


@pytest.mark.slow
def test_same_rows_on_one_or_two_processes_and_on_a_dask_cluster(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from harness.cli import app
    from harness.runner import load_results

    single = run_scenario(SPREAD, workers=1)
    same_rows(single, run_scenario(SPREAD, workers=2))
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        same_rows(single, run_scenario(SPREAD, executor=client.get_executor()))
        # The command line: harness run --dask ADDRESS
        path = ROOT / "scenarios" / "signatures.toml"
        result = CliRunner().invoke(app, ["run", str(path), "--dask", cluster.scheduler_address,
                                          "--out", str(tmp_path / "r.parquet")])
        assert result.exit_code == 0, result.output
        same_rows(run_scenario(path, workers=1), load_results(tmp_path / "r.parquet"))


@pytest.mark.slow
def test_a_script_without_a_main_guard_runs_on_several_processes(tmp_path: Path) -> None:
    script = tmp_path / "plain_script.py"
    script.write_text(textwrap.dedent(f"""
        import harness
        seen = []
        frame = harness.run_scenario({{
            "bot": {str(BOTS / 'payment.toml')!r}, "seed": 1,
            "cases": [{{"name": "many", "conversations": 4000, "delay_s": {{"dist": "uniform", "low": 0, "high": 200}}}}],
        }}, workers=2, driver="core")
        print("rows", len(frame), frame["outcome"].value_counts().to_dict())
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("rows 4000") == 1  # the script ran once: the workers did not re-run it


def test_progress_callbacks_count_every_conversation_started_and_done() -> None:
    from harness.runner import RunOptions, as_scenario, run_loaded_scenario

    started: list[int] = []
    done: list[int] = []
    frame = run_loaded_scenario(as_scenario(SPREAD), RunOptions(
        workers=1, driver="core", on_conversation_started=lambda: started.append(1),
        on_conversation_done=lambda: done.append(1)))
    assert len(started) == len(done) == len(frame) == 600


# -- third-party retries (SPEC §8.4) ---------------------------------------------------------------


def two_waits_bot() -> dict[str, Any]:
    """Waits 10 s at 'first', then (whatever happened) at 'second' for 30 s."""
    return {"id": "two", "start": "first", "blocks": {
        "first": {"type": "webhook", "timeout_s": 10, "success": "second", "failure": "second"},
        "second": {"type": "webhook", "timeout_s": 30, "success": "ok", "failure": "late"},
        "ok": {"type": "end"}, "late": {"type": "end"}}}


@pytest.mark.parametrize(("on", "statuses", "outcome", "waited_s"), [
    ("non-2xx", "409,409,200", "success", 2.0),  # 409 at 2 s and 7 s (still at 'first'), 200 at 12 s
    ([409], "409,409,200", "success", 2.0),
    ("5xx", "409", "failure", 30.0),
    ([500, 503], "409", "failure", 30.0),
])
def test_retries_follow_the_delays_from_each_answer_and_stop_at_the_first_2xx(on: Any, statuses: str, outcome: str,
                                                                            waited_s: float) -> None:
    frame = run_scenario({"bot": two_waits_bot(), "seed": 1, "cases": [
        {"name": "r", "conversations": 3, "block": "second", "delay_s": 2,
         "retry": {"delays_s": [5, 5, 5, 5], "on": on}}]})
    assert set(frame["statuses"]) == {statuses}
    assert set(frame["first_status"]) == {409} and set(frame["outcome"]) == {outcome}
    assert set(frame["waited_s"]) == {waited_s}


def test_retries_after_late_calls_count_every_410() -> None:
    frame = run_scenario({"bot": bot(), "seed": 1, "cases": [
        {"name": "late", "conversations": 4, "delay_s": 45, "retry": {"delays_s": [1, 2]},
         "thresholds": ["late_rate == 1"]},
        {"name": "on_time", "conversations": 4, "delay_s": 5, "retry": {"delays_s": [1, 2]},
         "thresholds": ["late_rate == 0"]}]})
    late = frame[frame["case"] == "late"]
    assert set(late["statuses"]) == {"410,410,410"} and set(late["late_calls"]) == {3}
    assert set(frame[frame["case"] == "on_time"]["late_calls"]) == {0}
    summary = summarize(frame)
    assert summary["thresholds_ok"].all() and list(summary["late_rate"]) == [1.0, 0.0]


def test_retry_is_validated_with_clear_messages() -> None:
    with pytest.raises(InvalidScenario) as caught:
        parse_scenario({"bot": bot(), "cases": [
            {"name": "a", "retry": {"delays_s": [], "on": "4xx"}},
            {"name": "b", "retry": {"delays_s": [1, -2], "on": [200, 404], "backoff": 2}},
            {"name": "c", "retry": 5}]}, source="s.toml")
    assert caught.value.problems == [
        "s.toml: cases[0] (a).retry.delays_s: must be a list of 1 to 100 non-negative numbers of seconds, got []",
        "s.toml: cases[0] (a).retry.on: must be \"non-2xx\", \"5xx\" or a list of statuses, got '4xx'",
        "s.toml: cases[1] (b).retry.backoff: unknown field; use delays_s and on",
        "s.toml: cases[1] (b).retry.delays_s: must be a list of 1 to 100 non-negative numbers of seconds, got [1, -2]",
        "s.toml: cases[1] (b).retry.on: a list of statuses must hold HTTP statuses outside 2xx (a 2xx ends the "
        "retries), got [200, 404]",
        "s.toml: cases[2] (c).retry: must be a table like { delays_s = [5, 30, 120], on = \"non-2xx\" }",
    ]


# -- key_path (SPEC §8.1) and signature schemes (§8.2) ------------------------------------------------


def test_the_key_is_written_at_the_blocks_key_path_in_json_and_forms() -> None:
    stripe_like = bot(key_path="data.object.metadata.conversation_key", mappings={"amount": "data.object.amount"})
    frame = run_scenario({"bot": stripe_like, "seed": 1, "cases": [
        {"name": "nested", "conversations": 3, "payload": {"data": {"object": {"amount": 7}}},
         "expect": {"outcome": "success", "status": 200, "variables": {"amount": 7}}},
        {"name": "missing", "conversations": 3, "key": "missing", "payload": {"data": {"object": {"amount": 7}}},
         "expect": {"status": 422}}]})
    assert frame["passed"].all(), frame["failure"].tolist()
    form = run_scenario({"bot": bot(key_path="ref", mappings={"amount": "amount"}), "seed": 1, "cases": [
        {"name": "form", "conversations": 3, "encoding": "form", "payload": {"amount": 7},
         "expect": {"outcome": "success", "status": 200, "variables": {"amount": "7"}}}]})
    assert form["passed"].all(), form["failure"].tolist()
    with pytest.raises(InvalidScenario, match=r"payload.data.object.metadata.conversation_key: is set by the case"):
        parse_scenario({"bot": stripe_like, "cases": [
            {"name": "x", "payload": {"data": {"object": {"metadata": {"conversation_key": "k"}}}}}]})


SECRETS = {"harness": "s3cret", "stripe": "whsec_stripe_like", "standard-webhooks": "whsec_c2VjcmV0LWJ5dGVz",
           "hmac-sha256": "gh-secret"}


@pytest.mark.parametrize("scheme", list(SECRETS))
def test_each_signature_scheme_resolves_valid_calls_and_refuses_the_rest(scheme: str) -> None:
    modes = ["valid", "missing", "wrong"] + ([] if scheme == "hmac-sha256" else ["stale"])
    frame = run_scenario({"bot": bot(secret=SECRETS[scheme], signature=scheme, signature_header="X-Hub-Signature-256"),
                          "seed": 1, "cases": [{"name": "s", "conversations": 2, "delay_s": 3, "signature": modes}]})
    statuses = frame.groupby("signature", observed=True)["first_status"].unique().map(list).to_dict()
    assert statuses == {"valid": [200], **{mode: [401] for mode in modes[1:]}}


def test_a_stale_signature_with_the_hmac_scheme_is_a_validation_error() -> None:
    with pytest.raises(InvalidScenario) as caught:
        parse_scenario({"bot": bot(secret="x", signature="hmac-sha256"),
                        "cases": [{"name": "st", "signature": ["valid", "stale"]}]}, source="s.toml")
    assert caught.value.problems == [
        "s.toml: cases[0] (st).signature: \"stale\" needs a timestamp, and the block's hmac-sha256 scheme has none"]


# -- memory -------------------------------------------------------------------------------------


def test_finished_conversations_cost_the_runner_and_its_gate_little_memory() -> None:
    """20,000 conversations arriving over time: traced memory stays under 1 KiB per conversation
    at its peak, rows included — rows are compact, and neither the runner nor the in-process gate
    keeps a finished conversation (kept in the gate, they alone would take about 1.4 KiB each)."""
    thanks = bot()
    thanks["blocks"]["ok"] = {"type": "message", "text": "Thanks, we received {{amount}}."}
    scenario = parse_scenario({"bot": thanks, "seed": 1, "cases": [
        {"name": "steady", "conversations": 20_000, "arrival_rate": 200, "timeout_s": 10,
         "delay_s": {"dist": "uniform", "low": 0, "high": 12}, "payload": PAYLOAD}]})

    async def main() -> tuple[int, int]:
        async with in_core() as driver:
            tracemalloc.start()
            baseline, _ = tracemalloc.get_traced_memory()
            blocks = await execute(scenario, driver)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert blocks[0].length == 20_000
            assert driver.gate is not None and await driver.gate.open_wait_count() == 0
            return baseline, peak

    baseline, peak = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert (peak - baseline) / 20_000 < 1024
