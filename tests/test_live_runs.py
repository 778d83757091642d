"""Live runs that interleave for real (SPEC §16.4): a real ``harness serve`` subprocess, the real
clock, many conversations starting as a Poisson process, short timeouts.

Virtual time runs one request at a time, so it cannot show a call racing a start; these can.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.runner import RunOptions, load_scenario, run_loaded_scenario, run_scenario
from harness.runner.report import case_results, in_run_order, skipped_results, verdict_line
from harness.testing import ServerProcess

from .conftest import BOTS, ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def suite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``harness serve --bots scenarios/bots``: the README's live setup."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    process = ServerProcess([sys.executable, "-m", "harness.cli", "serve", "--port", "{port}",
                             "--bots", str(ROOT / "scenarios" / "bots")], log=log, start_timeout_s=90)
    try:
        yield process.url
    finally:
        process.stop()


def mismatched(arrival_rate: float | None, conversations: int) -> dict[str, Any]:
    return {"name": f"other-{arrival_rate}", "conversations": conversations, "key": "other", "timeout_s": 120,
            "delay_s": {"dist": "exponential", "mean": 0.05}, "expect": {"outcome": "success", "status": 200},
            "thresholds": ["misattributed_rate == 1"],
            **({"arrival_rate": arrival_rate} if arrival_rate else {})}


def test_a_call_carrying_another_conversations_key_waits_for_that_start(suite_server: str) -> None:
    # Starts overlap (Poisson at 200/s, and all at once), calls follow within ~50 ms: without the
    # rule, a call whose key's conversation is still starting goes out without a key (422) and
    # that conversation waits out its timeout. (The timeout is long because a loaded server may
    # take many seconds to start them all, and a caller's key may be a much earlier start's.)
    document = {"name": "race", "bot": str(BOTS / "payment.toml"), "seed": 5,
                "defaults": {"payload": {"data": {"amount": 1}}},
                "cases": [mismatched(200, 300), mismatched(None, 100)]}
    frame = run_scenario(document, target=suite_server)
    assert frame["error"].isna().all(), frame["error"].dropna().head().tolist()
    assert not (frame["first_status"] == 422).any()
    assert (frame["first_status"] == 200).all(), frame["statuses"].value_counts().to_dict()
    assert (frame["outcome"] == "success").all()
    assert (frame["resolved_by"] != frame["conversation"]).all()


def test_the_payment_suite_passes_live_with_its_waits_shortened(suite_server: str) -> None:
    # Every case of the shipped file as written, at a tenth of its durations (--time-scale 0.1)
    # and 20 conversations each, so that a loaded CI machine runs it in well under a minute.
    scenario = load_scenario(ROOT / "scenarios" / "payment.toml")
    scenario = replace(scenario, subcases=[replace(s, conversations=min(s.conversations, 20)) for s in scenario.subcases])
    frame = run_loaded_scenario(scenario, RunOptions(target=suite_server, time_scale=0.1))
    results = in_run_order([scenario], case_results(frame), skipped_results(scenario, "live"))
    assert verdict_line(results) == "1 scenario, 14 cases: all passed, 1 skipped (payment-callbacks/just_in_time)", \
        "\n".join(r.message for r in results if not r.passed)
    late = frame[frame["case"] == "late"]
    assert (late["waited_s"] == 3.0).all() and (late["timeout_s"] == 3).all()  # 30 s at a tenth, on the gate's clock
    assert set(frame[frame["case"] == "on_time"]["bot"]) == {"payment.t12"}  # 120 s at a tenth: a derived bot


def test_time_scale_and_skipped_cases_through_the_command_line(suite_server: str, tmp_path: Path) -> None:
    scenario = tmp_path / "quick.toml"
    scenario.write_text(f"""
name = "quick"
bot = "{BOTS / 'payment.toml'}"
[defaults]
conversations = 5
[[cases]]
name = "late"
timeout_s = 20
delay_s = 30
expect = {{ outcome = "failure", status = 410 }}
thresholds = ["max(waited_s) == 20"]
[[cases]]
name = "only_in_virtual_time"
modes = ["virtual"]
""")
    summary, junit = tmp_path / "summary.json", tmp_path / "junit.xml"
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(scenario), "--target", suite_server,
                           "--time-scale", "0.1", "--summary-json", str(summary), "--junit-xml", str(junit)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "1 scenario, 2 cases: all passed, 1 skipped (quick/only_in_virtual_time)"
    cases = json.loads(summary.read_text())["scenarios"][0]["cases"]
    assert [(c["case"], c["skipped"], c["n"]) for c in cases] == [("late", False, 5), ("only_in_virtual_time", True, 0)]
    skipped = ET.parse(junit).getroot().find(".//testcase[@name='only_in_virtual_time']/skipped")
    assert skipped is not None and "virtual" in skipped.get("message", "")


def test_a_time_scaled_live_run_keeps_every_case_in_proportion(suite_server: str) -> None:
    """At 0.05 a 30 s timeout would be 1.5 s, which a gate cannot wait (whole seconds): the case runs
    at 2/30 instead, its delays and thresholds with it, so a call at the deadline is still refused;
    and the bot's early_s window shrinks too, so a capture held too long still expires."""
    payment = load_scenario(ROOT / "scenarios" / "payment.toml")
    payment = replace(payment, subcases=[replace(s, conversations=20) for s in payment.subcases
                                         if s.case in ("late", "at_the_deadline")])
    frame = run_loaded_scenario(payment, RunOptions(target=suite_server, time_scale=0.05))
    assert (frame["outcome"] == "failure").all() and (frame["timeout_s"] == 2).all()
    assert (frame["waited_s"] == 2.0).all()
    two = load_scenario(ROOT / "scenarios" / "two_events.toml")
    two = replace(two, subcases=[replace(s, conversations=20) for s in two.subcases if s.case == "held_call_expires"])
    rows = run_loaded_scenario(two, RunOptions(target=suite_server, time_scale=0.05))
    capture = rows[rows["party"] == 1]
    assert (capture["reason"] == "timeout").all() and capture["held"].all()  # held (202), then expired unused
    assert set(rows["bot"]) == {"payment_two_events.t3.wait_captured.t3.e0.05"}
