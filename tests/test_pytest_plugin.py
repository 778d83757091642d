"""`pytest PATH` on scenario files (SPEC §12): collection, verdicts, reports, selection."""

from __future__ import annotations

import tomllib
from importlib.metadata import entry_points
from xml.etree import ElementTree as ET

import pandas  # noqa: F401 — loaded here, not first inside pytester's in-process runs (numpy cannot load twice)
import pytest

from .conftest import BOTS, ROOT

pytest_plugins = ["pytester"]

# Installed from this checkout, the package registers the plugin itself (pytest11 entry point);
# from another checkout (a helper's worktree on PYTHONPATH) load it by name instead.
REGISTERED = any(ep.value == "harness.pytest_plugin" for ep in entry_points(group="pytest11"))
PLUGIN = () if REGISTERED else ("-p", "harness.pytest_plugin")

SCENARIO = f'''
name = "pay"
bot = "{BOTS / 'payment.toml'}"
seed = 3
[defaults]
conversations = 4
payload = {{ data = {{ amount = 42, id = "p", items = [{{ sku = "A1" }}] }} }}

[[cases]]
name = "on_time"
delay_s = 5
expect = {{ outcome = "success", status = 200 }}
thresholds = ["success_rate == 1"]

[[cases]]
name = "sweep"
timeout_s = [5, 30]
delay_s = 10
expect = {{ status = 200 }}
'''

BOT = (BOTS / "payment.toml").read_text()


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A folder with a scenario, a bot TOML and an unrelated TOML, under pytest-trio's trio_mode."""
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makefile(".toml", pay=SCENARIO, bot=BOT, other='title = "not a scenario"\n')
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider", *args)


def test_the_package_registers_the_plugin_as_a_pytest11_entry_point() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["pytest11"] == {"harness": "harness.pytest_plugin"}


def test_one_item_per_case_and_sub_case_bots_and_other_toml_ignored(suite: pytest.Pytester) -> None:
    result = run(suite, "--collect-only", "-q")
    assert result.ret == 0
    ids = [line for line in result.outlines if "::" in line]
    assert ids == ["pay.toml::on_time", "pay.toml::sweep[timeout_s=5]", "pay.toml::sweep[timeout_s=30]"]


def test_verbose_ids_read_as_the_file_and_the_case(suite: pytest.Pytester) -> None:
    result = run(suite, "-v")
    lines = [line for line in result.outlines if " PASSED" in line or " FAILED" in line]
    assert lines and all(line.startswith("pay.toml::") for line in lines), lines
    assert "pay::toml" not in result.stdout.str()


def test_a_failing_sub_case_names_its_expectations_with_examples(suite: pytest.Pytester) -> None:
    result = run(suite, "-rN")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*pay/sweep[[]timeout_s=5[]] failed",
        "expectations: 4 of 4 conversations failed",
        "  status 410 != 200 (4×)",
        "example conversations (4):",
        "  #0 key ??????… statuses 410 outcome failure (timeout) waited 5 s: status 410 != 200",
    ])
    assert "pay.toml::sweep[timeout_s=30] PASSED" not in result.stdout.str()  # -v not given: quiet dots
    assert "Traceback" not in result.stdout.str()


def test_a_failed_threshold_is_named_with_its_measured_value(pytester: pytest.Pytester) -> None:
    on_time = 'delay_s = 5\nexpect = { outcome = "success", status = 200 }\n'
    pytester.makefile(".toml", slow=SCENARIO.replace(on_time, "delay_s = 200\n"))
    result = run(pytester, "-k", "on_time")
    result.assert_outcomes(failed=1, deselected=2)
    result.stdout.fnmatch_lines([
        "threshold failed: success_rate == 1 (measured 0)",
        "example conversations (4):",
        "  #0 key * statuses 410 outcome failure (timeout) waited 120 s",
    ])


def test_k_selects_items_and_x_stops_at_the_first_failure(suite: pytest.Pytester) -> None:
    run(suite, "-k", "30 or on_time").assert_outcomes(passed=2, deselected=1)
    suite.makefile(".toml", more=SCENARIO.replace('name = "pay"', 'name = "more"'))
    run(suite, "-x").assert_outcomes(passed=1, failed=1)  # pay.toml's sweep[timeout_s=5] stops the session


def test_junitxml_has_a_testcase_per_item_with_the_failure_text(suite: pytest.Pytester) -> None:
    run(suite, "--junitxml=report.xml")
    cases = {case.get("name"): case for case in ET.parse(suite.path / "report.xml").iter("testcase")}
    assert set(cases) == {"on_time", "sweep[timeout_s=5]", "sweep[timeout_s=30]"}
    failure = cases["sweep[timeout_s=5]"].find("failure")
    assert failure is not None and "status 410 != 200 (4×)" in (failure.text or "")
    assert cases["on_time"].find("failure") is None
    properties = {p.get("name"): p.get("value") for p in cases["on_time"].iter("property")}
    assert properties["success_rate"] == "1.0" and properties["n"] == "4"


def test_an_invalid_scenario_is_a_collection_error_naming_file_field_and_reason(suite: pytest.Pytester) -> None:
    suite.makefile(".toml", broken=SCENARIO.replace("timeout_s = [5, 30]", "timeout_s = [5, 0]"))
    suite.makefile(".toml", garbled="[[cases]]\nname = \n")
    result = run(suite)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        "*ERROR collecting broken.toml*",
        "*broken.toml: cases[[]1[]] (sweep).timeout_s: must be an integer from 1 to 300, got 0",
        "*ERROR collecting garbled.toml*",
        "*garbled.toml: does not parse: *",
    ])


def test_scenario_paths_limit_discovery_but_not_files_named(suite: pytest.Pytester) -> None:
    suite.makeini("[pytest]\ntrio_mode = true\nharness_scenario_paths = suite\n")
    (suite.path / "suite").mkdir()
    (suite.path / "suite" / "kept.toml").write_text(SCENARIO)
    collected = run(suite, "--collect-only", "-q").outlines
    assert [line for line in collected if "::" in line][0] == "suite/kept.toml::on_time"
    assert not any(line.startswith("pay.toml") for line in collected)
    named = run(suite, "--collect-only", "-q", "pay.toml").outlines
    assert "pay.toml::on_time" in named
    (suite.path / "elsewhere").mkdir()
    (suite.path / "elsewhere" / "theirs.toml").write_text(SCENARIO)
    walked = run(suite, "--collect-only", "-q", "elsewhere").outlines
    assert "elsewhere/theirs.toml::on_time" in walked  # a folder named on the command line is searched whole


def test_async_tests_still_run_under_trio_mode_beside_scenarios(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_async="import trio\nasync def test_sleeps():\n    await trio.sleep(0)\n")
    run(suite, "-k", "sleeps or on_time").assert_outcomes(passed=2, deselected=2)


def test_xdist_runs_the_items_in_workers(suite: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    run(suite, "-n", "2", "--dist", "loadfile").assert_outcomes(passed=2, failed=1)
