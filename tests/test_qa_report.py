"""What CI reads from `harness run`: the verdict line, JUnit XML, summary JSON, narrow tables, progress."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.runner import RunOptions, load_scenario, run_loaded_scenario, run_scenario
from harness.runner.progress import Counts, PlainProgress

from .conftest import BOTS, ROOT

runner = CliRunner()


def write(tmp_path: Path, name: str, *cases: str, conversations: int = 4) -> Path:
    path = tmp_path / f"{name}.toml"
    body = "\n".join(f"[[cases]]\n{case}" for case in cases)
    path.write_text(f'name = "{name}"\nbot = "{BOTS / "payment.toml"}"\nseed = 5\n'
                    f"[defaults]\nconversations = {conversations}\n{body}\n")
    return path


ON_TIME = 'name = "on_time"\ndelay_s = 3\nexpect = { outcome = "success", status = 200 }'
LATE_SWEEP = ('name = "late"\ntimeout_s = [5, 30]\ndelay_s = 10\nexpect = { outcome = "success" }\n'
              'thresholds = ["late_rate == 0", "p95(delay_s) <= 60"]')
NEVER = 'name = "never"\ndelay_s = "never"\nthresholds = ["p95(delay_s) <= 5"]'


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


def test_verdict_line_singular_when_all_pass(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(write(tmp_path, "one", ON_TIME))])
    assert result.exit_code == 0
    assert last_line(result.stdout) == "1 scenario, 1 case: all passed"


def test_verdict_line_counts_sub_cases_and_names_the_failures(tmp_path: Path) -> None:
    files = [write(tmp_path, "a", ON_TIME, LATE_SWEEP), write(tmp_path, "b", ON_TIME, NEVER)]
    result = runner.invoke(app, ["run", *map(str, files)])
    assert result.exit_code == 1
    assert last_line(result.stdout) == "2 scenarios, 5 cases: 2 failed (a/late[timeout_s=5], b/never)"
    report = runner.invoke(app, ["report", str(_saved(tmp_path, files))])
    assert report.exit_code == 1 and last_line(report.stdout) == last_line(result.stdout)


def _saved(tmp_path: Path, files: list[Path]) -> Path:
    out = tmp_path / "results.parquet"
    runner.invoke(app, ["run", *map(str, files), "--out", str(out)])
    return out


def test_junit_xml_and_summary_json(tmp_path: Path) -> None:
    files = [write(tmp_path, "a", ON_TIME, LATE_SWEEP), write(tmp_path, "b", NEVER)]
    junit, summary = tmp_path / "junit.xml", tmp_path / "summary.json"
    result = runner.invoke(app, ["run", *map(str, files), "--junit-xml", str(junit), "--summary-json", str(summary)])
    assert result.exit_code == 1

    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == ("4", "2")
    suites = {suite.get("name"): suite for suite in root.iter("testsuite")}
    assert [case.get("name") for case in suites["a"].iter("testcase")] == ["on_time", "late[timeout_s=5]",
                                                                          "late[timeout_s=30]"]
    failed = suites["a"].find("testcase[@name='late[timeout_s=5]']/failure")
    assert failed is not None and failed.get("message") == "expectations: 4 of 4 conversations failed"
    assert "outcome failure != success (4×)" in (failed.text or "")
    assert "threshold failed: late_rate == 0 (measured 1)" in (failed.text or "")
    assert "#0 key" in (failed.text or "") and "statuses 410 outcome failure (timeout)" in (failed.text or "")
    assert suites["a"].find("testcase[@name='on_time']/failure") is None

    text = summary.read_text()
    assert "NaN" not in text
    document = json.loads(text)
    assert document["passed"] is False and [s["name"] for s in document["scenarios"]] == ["a", "b"]
    late5 = document["scenarios"][0]["cases"][1]
    assert {key: late5[key] for key in ("case", "variant", "n", "passed", "success_rate", "failure_rate",
                                        "timeout_rate", "misattributed_rate", "late_rate")} == {
        "case": "late", "variant": "timeout_s=5", "n": 4, "passed": False, "success_rate": 0.0,
        "failure_rate": 1.0, "timeout_rate": 1.0, "misattributed_rate": 0.0, "late_rate": 1.0}
    assert late5["waited_s"] == {"p50": 5.0, "p95": 5.0, "p99": 5.0, "mean": 5.0, "max": 5.0}
    assert late5["thresholds"] == [{"expr": "late_rate == 0", "value": 1.0, "passed": False},
                                   {"expr": "p95(delay_s) <= 60", "value": 10.0, "passed": True}]
    never = document["scenarios"][1]
    assert never["passed"] is False
    assert never["cases"][0]["thresholds"] == [{"expr": "p95(delay_s) <= 5", "value": None, "passed": False}]


def test_late_rate_counts_conversations_answered_410() -> None:
    frame = run_scenario({"bot": str(BOTS / "payment.toml"), "cases": [
        {"name": "mixed", "conversations": 20, "timeout_s": 10, "delay_s": {"dist": "uniform", "low": 0, "high": 20},
         "thresholds": ["late_rate <= 0.9"]}]})
    answered_410 = frame["statuses"].str.contains("410").mean()
    assert 0 < answered_410 < 1
    from harness.runner import summarize

    assert summarize(frame)["late_rate"].iloc[0] == pytest.approx(answered_410)


def test_an_80_column_terminal_gets_stacked_rows_not_cut_words(tmp_path: Path) -> None:
    scenario = write(tmp_path, "narrow", ON_TIME, LATE_SWEEP)
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(scenario)], env=env,
                            capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in result.stdout
    assert "✗ late[timeout_s=5]  n 4, expect 0/4" in lines
    assert "    ✗ late_rate == 0 (1)" in lines and "    statuses 410×4  waited p50/p95 5.00/5.00 s" in lines
    assert lines[-1] == "1 scenario, 3 cases: 1 failed (narrow/late[timeout_s=5])"


def test_a_wide_terminal_keeps_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the console is made per run and takes the terminal's width
    result = runner.invoke(app, ["run", str(write(tmp_path, "wide", ON_TIME, LATE_SWEEP))])
    header = next(line for line in result.stdout.splitlines() if "case" in line and "variant" in line)
    assert all(name in header for name in ("success", "misattr.", "waited p50/p95", "thresholds"))


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(write(tmp_path, "prog", ON_TIME, conversations=6))])
    assert "prog: 6 conversations" in result.stderr
    assert "prog: 6/6 started, 6/6 finished (100%)" in result.stderr


def test_plain_progress_writes_a_line_every_interval_while_nothing_happens() -> None:
    stream = io.StringIO()
    with PlainProgress("slow", 3, stream=stream, interval_s=0.05) as progress:
        progress.started(2)
        time.sleep(0.3)
        progress.finished()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "slow: 3 conversations"
    assert len(lines) >= 4 and lines[1].startswith("slow: 2/3 started, 0/3 finished (0%), ")
    assert lines[-1].startswith("slow: 2/3 started, 1/3 finished (33%), ")


def test_the_runner_reports_every_start_and_finish(tmp_path: Path) -> None:
    counts = Counts("c", 7)
    run_loaded_scenario(load_scenario(write(tmp_path, "c", ON_TIME, conversations=7)), RunOptions(progress=counts))
    assert counts.counts() == (7, 7)


def test_run_scenario_progress_shows_a_bar(capsys: pytest.CaptureFixture[str]) -> None:
    run_scenario({"name": "bar", "bot": str(BOTS / "payment.toml"), "cases": [{"conversations": 5}]}, progress=True)
    err = capsys.readouterr().err
    assert "bar: 100%" in err and "5/5" in err and "started 5" in err


@pytest.mark.slow
def test_run_scenario_progress_is_a_widget_bar_in_jupyter() -> None:
    pytest.importorskip("ipywidgets")
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import harness\n"
        f"frame = harness.run_scenario({{'bot': {str(BOTS / 'payment.toml')!r}, 'cases': [{{'conversations': 30}}]}},"
        " progress=True)\nlen(frame)"))
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    assert any("application/vnd.jupyter.widget-view+json" in output.get("data", {}) for output in outputs)
    assert outputs[-1]["data"]["text/plain"] == "30"
