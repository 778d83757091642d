"""Several third parties per conversation and early calls, seen from the runner (SPEC §14.2–14.4).

The bot waits for two events in turn (authorised, then captured). Every expected row below is
derived from the parties' delays alone: party 0 calls ``wait_authorised`` at ``d0``, party 1
calls ``wait_captured`` at ``d1`` (both from the conversation's 201); the capture is early when
``d1 < d0`` and is then held (202) and used the moment the second wait opens.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness.runner import InvalidScenario, load_scenario, parse_scenario, run_scenario
from harness.runner.report import case_results, junit_xml, summary_json, verdict_line

from .conftest import BOTS, ROOT


def two_wait_bot(early_s: float = 30, first_timeout: int = 60, second_timeout: int = 60) -> dict[str, Any]:
    blocks: dict[str, Any] = {
        "ask": {"type": "message", "text": "pay", "next": "wait_authorised"},
        "wait_authorised": {"type": "webhook", "timeout_s": first_timeout, "success": "wait_captured",
                            "failure": "not_authorised", "mappings": {"pi": "pi"}},
        "wait_captured": {"type": "webhook", "timeout_s": second_timeout, "success": "paid", "failure": "not_captured",
                          "mappings": {"amount": "amount"}},
        "paid": {"type": "message", "text": "paid {{amount}}"},
        "not_authorised": {"type": "end"},
        "not_captured": {"type": "end"},
    }
    if early_s:
        blocks["wait_captured"]["early_s"] = early_s
    return {"id": "two", "name": "two events", "start": "ask", "blocks": blocks}


def two_party_scenario(first: dict[str, Any], second: dict[str, Any], *, bot: dict[str, Any] | None = None,
                       conversations: int = 40, **case: Any) -> dict[str, Any]:
    return {"name": "two", "bot": bot or two_wait_bot(), "seed": 3,
            "cases": [{"name": "c", "conversations": conversations,
                       "parties": [{"block": "wait_authorised", "payload": {"pi": "pi_1"}, **first},
                                   {"block": "wait_captured", "payload": {"amount": 42}, **second}], **case}]}


def party_rows(frame: pd.DataFrame, party: int) -> pd.DataFrame:
    return frame[frame["party"] == party].set_index("conversation").sort_index()


# -- scenario files ------------------------------------------------------------------------------


def test_party_fields_inherit_from_the_case_and_sweep_with_their_own_label() -> None:
    document = two_party_scenario({"delay_s": 2}, {"delay_s": [1, 3], "calls": 2}, timeout_s=20, key="correct")
    parsed = parse_scenario(document)
    assert [s.variant for s in parsed.subcases] == ["parties[1].delay_s=1", "parties[1].delay_s=3"]
    first, second = parsed.subcases[0].parties
    assert (first.block, first.timeout_s, first.calls) == ("wait_authorised", 20, 1)  # the case's timeout for every party
    assert (second.block, second.timeout_s, second.calls) == ("wait_captured", 20, 2)
    assert parsed.subcases[0].timeouts() == (("wait_authorised", 20), ("wait_captured", 20))


def test_invalid_parties_are_reported_with_their_index_and_field() -> None:
    document = two_party_scenario({"delay_s": -1, "colour": "red"}, {"block": "ask", "expect": {"outcome": "maybe"}},
                                  block="wait_authorised", modes=["simulated"])
    document["cases"][0]["parties"].append({"delay_s": 1})
    with pytest.raises(InvalidScenario) as caught:
        parse_scenario(document, source="s.toml")
    assert caught.value.problems == [
        "s.toml: cases[0] (c).modes: must be a non-empty list of distinct modes out of virtual, live, got ['simulated']",
        "s.toml: cases[0] (c).block: a case with parties names each party's block in its [[cases.parties]] table, "
        "not the case's",
        "s.toml: cases[0] (c).parties[0].colour: unknown party field; use block, timeout_s, delay_s, key, calls, "
        "call_gap_s, payload, signature, retry, encoding, expect, thresholds",
        "s.toml: cases[0] (c).parties[2].block: required: the webhook block this party calls",
        "s.toml: cases[0] (c).parties[0].delay_s: must not be negative, got -1",
        "s.toml: cases[0] (c).parties[1].block: 'ask' is not a webhook block of bot 'two'",
        "s.toml: cases[0] (c).parties[1].expect.outcome: must be success or failure, got 'maybe'",
    ]


def test_parties_cannot_sit_in_defaults_and_two_timeouts_for_one_block_are_refused() -> None:
    document = two_party_scenario({"timeout_s": 5}, {"block": "wait_authorised", "timeout_s": 6})
    document["defaults"] = {"parties": []}
    with pytest.raises(InvalidScenario) as caught:
        parse_scenario(document, source="s.toml")
    assert "s.toml: defaults.parties: parties belong to a case: list them under its [[cases.parties]]" in caught.value.problems


# -- rows, derived from the delays -----------------------------------------------------------------


@pytest.mark.parametrize("driver", ["asgi", "core"])
def test_rows_per_conversation_and_party_follow_from_the_delays(driver: str) -> None:
    document = two_party_scenario({"delay_s": {"dist": "uniform", "low": 0, "high": 10}},
                                  {"delay_s": {"dist": "uniform", "low": 0, "high": 10}}, conversations=60)
    frame = run_scenario(document, driver=driver)
    assert len(frame) == 120 and list(frame["party"].unique()) == [0, 1]
    first, second = party_rows(frame, 0), party_rows(frame, 1)
    assert (first["block"] == "wait_authorised").all() and (second["block"] == "wait_captured").all()
    assert (first["outcome"] == "success").all() and (first["reason"] == "received").all()
    assert not first["held"].any()
    np.testing.assert_allclose(first["waited_s"], first["delay_s"])
    early = second["delay_s"] < first["delay_s"]
    assert 0 < early.sum() < 60
    # An early capture is held (202) and used at once when the second wait opens.
    assert (second.loc[early, "held"]).all() and (second.loc[early, "first_status"] == 202).all()
    assert (second.loc[early, "reason"] == "received_early").all() and (second.loc[early, "waited_s"] == 0).all()
    # A later one resolves the open wait after the rest of its delay.
    assert not second.loc[~early, "held"].any() and (second.loc[~early, "reason"] == "received").all()
    np.testing.assert_allclose(second.loc[~early, "waited_s"], (second["delay_s"] - first["delay_s"])[~early])
    assert (second["outcome"] == "success").all()
    assert (second["resolved_by"] == second.index).all()  # the held call was this conversation's own
    (item,) = [r for r in case_results(frame) if r.party == 1]
    assert item.summary["early_rate"] == pytest.approx(early.mean())


def test_a_block_the_flow_never_reaches_is_never_opened_and_its_held_call_expires() -> None:
    frame = run_scenario(two_party_scenario({"delay_s": "never"}, {"delay_s": 2}, conversations=5))
    first, second = party_rows(frame, 0), party_rows(frame, 1)
    assert (first["reason"] == "timeout").all()
    assert second["outcome"].isna().all() and (second["reason"] == "never_opened").all()
    assert second["waited_s"].isna().all() and second["held"].all() and (second["statuses"] == "202").all()


def test_without_early_s_an_early_call_is_409_and_a_retry_recovers_it() -> None:
    bot = two_wait_bot(early_s=0)
    plain = run_scenario(two_party_scenario({"delay_s": 5}, {"delay_s": 1}, bot=bot, conversations=5))
    assert (party_rows(plain, 1)["statuses"] == "409").all() and (party_rows(plain, 1)["reason"] == "timeout").all()
    retried = run_scenario(two_party_scenario({"delay_s": 5}, {"delay_s": 1, "retry": {"delays_s": [10]}},
                                              bot=bot, conversations=5))
    second = party_rows(retried, 1)
    assert (second["statuses"] == "409,200").all() and (second["outcome"] == "success").all()
    np.testing.assert_allclose(second["waited_s"], 6.0)  # opened at 5 s, the retry came at 1 + 10 s


def test_a_held_call_is_not_retried_and_a_second_early_copy_is_already_held() -> None:
    frame = run_scenario(two_party_scenario(
        {"delay_s": 50}, {"delay_s": 5, "calls": 2, "call_gap_s": 1, "retry": {"delays_s": [1], "on": "non-2xx"}},
        conversations=5))
    second = party_rows(frame, 1)
    # 202 (2xx: no retry), 409 already_held (retried once: still held, 409 again); the held call
    # expired at 35 s, before the second wait opened at 50 s.
    assert (second["statuses"] == "202,409,409").all()
    assert (second["reason"] == "timeout").all() and second["held"].all()


def test_key_other_per_party_is_a_derangement_of_its_own() -> None:
    frame = run_scenario(two_party_scenario({"delay_s": 1, "key": "other"}, {"delay_s": 3, "key": "other"},
                                            conversations=30))
    first, second = party_rows(frame, 0), party_rows(frame, 1)
    for rows in (first, second):
        assert (rows["outcome"] == "success").all()
        assert (rows["resolved_by"] != rows.index).all() and sorted(rows["resolved_by"]) == list(range(30))
    assert not (first["resolved_by"] == second["resolved_by"]).all()  # two draws, not one


def test_a_case_without_parties_is_party_0_and_unchanged_in_every_other_column() -> None:
    document = {"name": "one", "bot": str(BOTS / "payment.toml"), "seed": 4,
                "cases": [{"name": "c", "conversations": 20, "delay_s": {"dist": "uniform", "low": 0, "high": 200}}]}
    frame = run_scenario(document)
    assert (frame["party"] == 0).all() and not frame["held"].any()
    explicit = run_scenario({**document, "cases": [{"name": "c", "conversations": 20,
                                                    "parties": [{"block": "wait_payment",
                                                                 "delay_s": {"dist": "uniform", "low": 0, "high": 200}}]}]})
    assert frame.equals(explicit)


def test_each_party_is_reported_as_an_item_with_its_own_expectations_and_thresholds() -> None:
    document = two_party_scenario({"delay_s": 5}, {"delay_s": [1, 8], "thresholds": ["early_rate == 1"]},
                                  expect={"outcome": "success"})
    results = case_results(run_scenario(document))
    assert [r.label for r in results] == ["c[parties[1].delay_s=1,party=0]", "c[parties[1].delay_s=1,party=1]",
                                          "c[parties[1].delay_s=8,party=0]", "c[parties[1].delay_s=8,party=1]"]
    assert [r.passed for r in results] == [True, True, True, False]  # the late capture is not early
    assert verdict_line(results) == "1 scenario, 4 cases: 1 failed (two/c[parties[1].delay_s=8,party=1])"
    cases = summary_json(results)["scenarios"][0]["cases"]
    assert [(c["party"], c["skipped"], c["early_rate"]) for c in cases] == [(0, False, 0.0), (1, False, 1.0),
                                                                           (0, False, 0.0), (1, False, 0.0)]
    names = [t.get("name") for t in junit_xml(results).getroot().iter("testcase")]
    assert names[1] == "c[parties[1].delay_s=1,party=1]"


# -- the shipped suite -------------------------------------------------------------------------------


def test_the_two_event_scenarios_show_what_early_s_recovers() -> None:
    held = run_scenario(ROOT / "scenarios" / "two_events.toml", driver="core")
    strict = run_scenario(ROOT / "scenarios" / "two_events_strict.toml", driver="core")
    assert all(r.passed for r in case_results(held)) and all(r.passed for r in case_results(strict))
    with_early = held[(held["case"] == "either_order") & (held["party"] == 1)].set_index("conversation")
    without = strict[(strict["case"] == "either_order") & (strict["party"] == 1)].set_index("conversation")
    assert (with_early["delay_s"] == without["delay_s"]).all()  # the same traffic
    early = with_early["reason"] == "received_early"
    assert (without.loc[early, "statuses"] == "409").all() and (without.loc[early, "outcome"] == "failure").all()
    assert (without.loc[~early, "outcome"] == "success").all()


def test_every_shipped_scenario_loads() -> None:
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        assert load_scenario(path).subcases, path


# -- summary files stay strict JSON ----------------------------------------------------------------------


def test_summary_and_junit_of_a_run_with_parties_are_written_by_the_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    summary, junit = tmp_path / "s.json", tmp_path / "j.xml"
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(ROOT / "scenarios" / "two_events.toml"),
                           "--driver", "core", "--summary-json", str(summary), "--junit-xml", str(junit)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "1 scenario, 14 cases: all passed"
    document = json.loads(summary.read_text())
    assert {c["party"] for c in document["scenarios"][0]["cases"]} == {0, 1}
    assert "either_order[party=1]" in {t.get("name") for t in ET.parse(junit).getroot().iter("testcase")}
    assert not math.isnan(document["scenarios"][0]["cases"][1]["success_rate"])


def test_progress_counts_each_start_as_it_happens_and_each_conversation_once() -> None:
    import trio

    from harness.runner import RunOptions, as_scenario, run_loaded_scenario

    events: list[tuple[str, float]] = []
    document = two_party_scenario({"delay_s": 100}, {"delay_s": 90}, conversations=20, arrival_rate=1)
    frame = run_loaded_scenario(as_scenario(document), RunOptions(
        workers=1, on_conversation_started=lambda: events.append(("started", trio.current_time())),
        on_conversation_done=lambda: events.append(("done", trio.current_time()))))
    assert len(frame) == 40  # two rows per conversation, one "done" each
    kinds = [kind for kind, _ in events]
    assert kinds.count("started") == kinds.count("done") == 20
    # Starts are counted while they happen (one a second, Poisson), long before the first finish.
    assert kinds[:20] == ["started"] * 20
    start_times = [at for kind, at in events if kind == "started"]
    assert start_times == sorted(start_times) and start_times[-1] - start_times[0] > 5
