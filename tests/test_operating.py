"""Operating it (SPEC §16): the real `harness` command in a subprocess, as a user meets it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.testing import ServerProcess

from .conftest import BOTS, ROOT

HARNESS = [sys.executable, "-m", "harness.cli"]


def harness(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def test_brackets_in_messages_are_text_and_never_crash(tmp_path: Path) -> None:
    bot = tmp_path / "odd[b].toml"
    bot.write_text('id = "odd"\nstart = "w"\n[blocks.w]\ntype = "webhook"\ntimeout_s = 30\nsuccess = "e"\n'
                   'failure = "e"\n[blocks.w.mappings]\nx = "data.items[/x]"\n[blocks.e]\ntype = "end"\n')
    result = harness("validate", str(bot))
    no_traceback(result)
    assert result.returncode == 2
    assert "data.items[/x]" in result.stderr and "[n]" in result.stderr and str(bot) in result.stderr
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "s"\nbot = "odd[b].toml"\ncases = []\n')
    result = harness("run", str(scenario))
    no_traceback(result)
    assert result.returncode == 2 and "[[cases]]" in result.stderr, result.stderr


def test_help_shows_readable_types() -> None:
    for command in ((), ("serve",), ("run",), ("validate",), ("report",)):
        result = harness(*command, "--help")
        assert result.returncode == 0
        for python_type in ("<str>", "<int>", "<bool>", "<float>", "<path>", "list[Path]"):
            assert python_type not in result.stdout, (command, result.stdout)
    assert "--port PORT" in harness("serve", "--help").stdout


def test_help_and_validate_import_neither_pandas_numpy_nor_quart() -> None:
    probe = ("import sys, runpy\n"
             "sys.argv = ['harness'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('harness.cli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'pandas', 'numpy', 'quart', 'hypercorn'})\n"
             "print('HEAVY', heavy, file=sys.stderr)\n")
    for args in (["--help"], ["validate", str(BOTS / "payment.toml"), str(ROOT / "scenarios" / "payment.toml")]):
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
        assert "HEAVY []" in result.stderr, (args, result.stderr)


def test_run_on_a_bots_folder_says_so_in_one_sentence() -> None:
    result = harness("run", str(BOTS))
    no_traceback(result)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "these are bots, not scenarios" in result.stderr


def test_serve_on_an_address_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = harness("serve", "--port", str(port), timeout=60)
    no_traceback(result)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], result.stderr


def test_serve_on_an_empty_bots_folder_warns_and_prints_its_banner_once(tmp_path: Path) -> None:
    empty = tmp_path / "bots"
    empty.mkdir()
    log = tmp_path / "serve.log"
    with ServerProcess.harness_serve("--bots", str(empty), log=log):
        pass
    text = log.read_text()
    assert f"--bots {empty}: no bot files" in text
    assert text.count("webhook gate on http://") == 1 and "Running on" not in text


def write_slow_scenario(tmp_path: Path, conversations: int = 40) -> Path:
    scenario = tmp_path / "slow.toml"
    scenario.write_text(f'name = "slow"\nbot = "{BOTS / "payment.toml"}"\nseed = 3\n[defaults]\n'
                        f'conversations = {conversations}\n[[cases]]\nname = "spread"\n'
                        'delay_s = { dist = "uniform", low = 0.2, high = 30 }\nexpect = { outcome = "success" }\n')
    return scenario


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_live_run_stops_at_once_and_writes_what_finished(tmp_path: Path, signum: int,
                                                                        code: int) -> None:
    scenario = write_slow_scenario(tmp_path)
    out, summary, junit = tmp_path / "rows.csv", tmp_path / "summary.json", tmp_path / "junit.xml"
    with ServerProcess.harness_serve(log=tmp_path / "serve.log") as server:
        run = subprocess.Popen([*HARNESS, "run", str(scenario), "--target", server.url, "--out", str(out),
                                "--summary-json", str(summary), "--junit-xml", str(junit)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(6)  # starts take well under a second; a few calls (delays 0.2..30 s) are in
        assert run.poll() is None
        run.send_signal(signum)
        signalled = time.monotonic()
        stdout, stderr = run.communicate(timeout=30)
        stopped_s = time.monotonic() - signalled
    assert run.returncode == code, stderr
    assert "Traceback" not in stderr + stdout
    assert stopped_s < 4  # SPEC: within 2 s; a loaded CI machine gets some slack for interpreter exit
    line = next(line for line in stderr.splitlines() if line.startswith("interrupted:"))
    finished = int(line.split()[1])
    assert line == f"interrupted: {finished} of 40 conversations finished" and 0 < finished < 40
    assert len(out.read_text().splitlines()) == finished + 1  # header + one row per finished conversation
    document = json.loads(summary.read_text())
    assert document["interrupted"] is True and document["scenarios"][0]["cases"][0]["n"] == finished
    assert "<testcase" in junit.read_text()


def test_refused_calls_are_logged_as_json_lines_with_utc_times(tmp_path: Path) -> None:
    import re

    import httpx

    log = tmp_path / "serve.log"
    key = "abcdefSECRETPARTofTHEkey123"
    with ServerProcess.harness_serve("--bots", str(BOTS / "payment.toml"), log=log) as server:
        webhook = f"{server.url}/webhooks/payment/wait_payment"
        assert httpx.post(webhook, json={"conversation_key": key, "card": "4242-body"}).status_code == 404
        assert httpx.post(webhook, json={"no_key": 1}).status_code == 422
        refused = httpx.get(f"{server.url}/api/dashboard").json()["refused"]
    assert [(r["status"], r["error"], r["bot"], r["block"]) for r in refused] == [
        (422, "missing_conversation_key", "payment", "wait_payment"),
        (404, "unknown_conversation", "payment", "wait_payment")]
    text = log.read_text()
    assert key not in text and "4242-body" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    refusals = [line for line in lines if line["message"] == "webhook call refused"]
    assert [(r["status"], r["error"], r["bot"], r["block"], r["key"], r["level"]) for r in refusals] == [
        (404, "unknown_conversation", "payment", "wait_payment", key[:6], "INFO"),
        (422, "missing_conversation_key", "payment", "wait_payment", None, "INFO")]
    assert lines and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["time"]) for line in lines)
