"""The `harness` command: exit codes and messages a CI pipeline relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app

from .conftest import BOTS

runner = CliRunner()


def write_scenario(tmp_path: Path, case: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'name = "cli"\nbot = "{BOTS / "payment.toml"}"\n[defaults]\nconversations = 5\n[[cases]]\n{case}\n')
    return path


def test_run_passes_writes_results_and_reports(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, 'name = "ok"\ndelay_s = 2\nexpect = { outcome = "success", status = 200 }')
    out = tmp_path / "out" / "results.parquet"
    result = runner.invoke(app, ["run", str(scenario), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "scenario cli" in result.stdout and "5/5" in result.stdout
    assert out.is_file()
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0 and "5/5" in report.stdout


def test_run_exits_1_when_an_expectation_fails(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, 'name = "wrong"\ndelay_s = 2\nexpect = { status = 410 }')
    result = runner.invoke(app, ["run", str(scenario), "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 1
    assert runner.invoke(app, ["report", str(tmp_path / "r.csv")]).exit_code == 1


def test_run_exits_1_when_a_threshold_fails(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, 'name = "slow"\ndelay_s = 200\nthresholds = ["success_rate >= 0.9"]')
    result = runner.invoke(app, ["run", str(scenario)])
    assert result.exit_code == 1 and "✗ success_rate >= 0.9 (0)" in result.stdout


def test_run_exits_2_on_an_invalid_file_and_runs_nothing(tmp_path: Path) -> None:
    good = write_scenario(tmp_path, 'name = "ok"', "good.toml")
    bad = write_scenario(tmp_path, 'name = "bad"\ntimeout_s = 0', "bad.toml")
    result = runner.invoke(app, ["run", str(good), str(bad)])
    assert result.exit_code == 2
    assert f"{bad}: cases[0] (bad).timeout_s: must be an integer from 1 to 300, got 0" in result.stderr
    assert "scenario cli" not in result.stdout


@pytest.mark.parametrize("out", ["results.xlsx", "results"])
def test_run_refuses_an_unknown_output_format(tmp_path: Path, out: str) -> None:
    scenario = write_scenario(tmp_path, 'name = "ok"')
    result = runner.invoke(app, ["run", str(scenario), "--out", str(tmp_path / out)])
    assert result.exit_code == 2 and ".parquet or .csv" in result.stderr


def test_validate(tmp_path: Path) -> None:
    broken_bot = tmp_path / "bot.toml"
    broken_bot.write_text('id = "b"\nstart = "x"\n[blocks.x]\ntype = "webhook"\ntimeout_s = 0\nsuccess = "x"\n')
    ok = runner.invoke(app, ["validate", str(BOTS / "payment.toml"), str(write_scenario(tmp_path, 'name = "a"'))])
    assert ok.exit_code == 0 and "valid bot" in ok.stdout and "valid scenario" in ok.stdout
    bad = runner.invoke(app, ["validate", str(broken_bot), str(tmp_path / "missing.toml")])
    assert bad.exit_code == 2
    assert f"{broken_bot}: blocks.x.failure: missing edge" in bad.stderr
    assert f"{broken_bot}: blocks.x.timeout_s: must be an integer from 1 to 300, got 0" in bad.stderr
    assert "missing.toml: cannot read" in bad.stderr


def test_report_on_a_file_that_is_not_results(tmp_path: Path) -> None:
    other = tmp_path / "x.csv"
    other.write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["report", str(other)])
    assert result.exit_code == 2 and "not a results file" in result.stderr


def test_serve_refuses_invalid_bots_before_listening(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('id = "b"\n')
    result = runner.invoke(app, ["serve", "--bots", str(broken), "--port", "0"])
    assert result.exit_code == 2 and "broken.toml" in result.stderr


def test_run_against_an_unreachable_gate_says_so(tmp_path: Path) -> None:
    from harness.testing import free_port

    scenario = write_scenario(tmp_path, 'name = "ok"')
    result = runner.invoke(app, ["run", str(scenario), "--target", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "cannot reach the gate at http://127.0.0.1:" in result.stderr


def test_a_negative_seed_is_refused_with_exit_2(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, 'name = "ok"')
    result = runner.invoke(app, ["run", str(scenario), "--seed", "-3"])
    assert result.exit_code == 2 and "seed (given to the run): must be a non-negative integer, got -3" in result.stderr


def test_time_scale_says_which_cases_run_slower_and_refuses_timeouts_past_300_s(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, 'name = "short"\ntimeout_s = 1\ndelay_s = 0.5\nexpect = { outcome = "success" }\n'
                                        '[[cases]]\nname = "long"\ntimeout_s = 200\ndelay_s = 5')
    result = runner.invoke(app, ["run", str(scenario), "--time-scale", "0.1"])
    assert result.exit_code == 0, result.output
    assert "note: cli/short: runs at time scale 1, not 0.1: its timeouts (1 s after scaling) are whole seconds" \
        in result.stderr
    assert "cli/long" not in result.stderr  # 200 s → 20 s: as asked
    refused = runner.invoke(app, ["run", str(scenario), "--time-scale", "2"])
    assert refused.exit_code == 2 and "scenario cli" not in refused.stdout
    assert f"{scenario}: case long: time scale 2 makes a timeout longer than 300 s (200 s × 2)" in refused.stderr
