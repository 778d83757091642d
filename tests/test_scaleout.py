"""Several real `harness serve` processes on one real PostgreSQL (SPEC §13), over real HTTP.

Real processes, real time, a real database: kill -9, the database stopped under load, a process
whose wall clock is off (run under `faketime`).
"""

from __future__ import annotations

import concurrent.futures
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest

from harness.testing import LocalPostgres, ServerProcess, free_port

pytestmark = pytest.mark.slow

TIMEOUT_S = 2
PAY = {
    "id": "pay", "start": "wait",
    "blocks": {
        "wait": {"type": "webhook", "timeout_s": TIMEOUT_S, "mappings": {"amount": "data.amount"},
                 "success": "ok", "failure": "late"},
        "ok": {"type": "message", "text": "paid {{amount}}"},
        "late": {"type": "message", "text": "too late"},
    },
}

PATIENT = {**PAY, "blocks": {**PAY["blocks"], "wait": {**PAY["blocks"]["wait"], "timeout_s": 120}}}


def serve(pg_url: str, log: Path, *prefix: str) -> ServerProcess:
    """`harness serve --store PG_URL`, optionally under a command prefix (e.g. faketime)."""
    argv = [*prefix, sys.executable, "-m", "harness.cli", "serve", "--port", "{port}", "--store", pg_url,
            "--log-level", "warning"]
    return ServerProcess(argv, log=log, start_timeout_s=30)


@pytest.fixture
def gates(pg_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    processes = [serve(pg_url, tmp_path / f"gate{number}.log") for number in range(3)]
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()


def start(url: str) -> dict:
    response = httpx.post(f"{url}/api/bots/pay/conversations", timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def read(url: str, key: str) -> dict:
    response = httpx.get(f"{url}/api/conversations/{key}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_bot_registered_anywhere_is_served_everywhere(gates: list[ServerProcess]) -> None:
    first, second, third = (gate.url for gate in gates)
    assert httpx.post(f"{first}/api/bots", json=PAY).status_code == 201
    time.sleep(1.0)  # the contract's bound
    assert httpx.get(f"{second}/api/bots/pay").status_code == 200
    assert httpx.post(f"{second}/api/bots", json=PAY).json()["error"] == "bot_exists"
    key = start(third)["conversation_key"]
    # Started on the third, read and called through the others.
    assert read(first, key)["status"] == "waiting"
    accepted = httpx.post(f"{second}/webhooks/pay/wait", json={"conversation_key": key, "data": {"amount": 7}})
    assert accepted.status_code == 200, accepted.text
    assert read(first, key)["transcript"][-1]["text"] == "paid 7"
    assert read(third, key)["waits"][0]["reason"] == "received"


def test_concurrent_calls_spread_over_processes_resolve_a_wait_once(gates: list[ServerProcess]) -> None:
    urls = [gate.url for gate in gates]
    assert httpx.post(f"{urls[0]}/api/bots", json=PATIENT).status_code == 201
    keys = [start(urls[number % 3])["conversation_key"] for number in range(4)]

    def call(number: int, key: str) -> int:
        url = urls[number % 3]
        return httpx.post(f"{url}/webhooks/pay/wait", json={"conversation_key": key, "data": {"amount": number}},
                          timeout=15).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        for key in keys:
            statuses = list(pool.map(call, range(24), [key] * 24))
            assert statuses.count(200) == 1, statuses
            assert set(statuses) <= {200, 409}, statuses
            conversation = read(urls[1], key)
            assert [wait["outcome"] for wait in conversation["waits"]] == ["success"]
            assert len(conversation["transcript"]) == 1


def test_waits_of_a_killed_process_time_out_on_the_others(gates: list[ServerProcess], pg_url: str) -> None:
    doomed, *alive = gates
    assert httpx.post(f"{doomed.url}/api/bots", json=PAY).status_code == 201
    keys = [start(doomed.url)["conversation_key"] for _ in range(5)]
    doomed.kill()  # kill -9: its timers die with it
    time.sleep(TIMEOUT_S + 2.5)
    for key in keys:
        conversation = read(alive[0].url, key)
        wait = conversation["waits"][0]
        assert (wait["outcome"], wait["reason"], wait["waited_s"]) == ("failure", "timeout", float(TIMEOUT_S))
        assert conversation["transcript"][-1]["text"] == "too late"
    with psycopg.connect(pg_url) as connection:
        lateness = connection.execute("SELECT max(resolved_at - deadline) FROM waits").fetchone()[0]
    assert lateness <= 2.0


def test_the_database_stopped_under_load_then_back(gates: list[ServerProcess], postgres: LocalPostgres,
                                                   pg_url: str) -> None:
    urls = [gate.url for gate in gates]
    assert httpx.post(f"{urls[0]}/api/bots", json=PAY).status_code == 201
    started: list[str] = []
    answers: list[tuple[float, int, str, str | None]] = []  # (at, status, error code, Retry-After)

    def load(seconds: float) -> None:
        until = time.monotonic() + seconds
        number = 0
        while time.monotonic() < until:
            url = urls[number % 3]
            number += 1
            began = time.monotonic()
            try:
                response = httpx.post(f"{url}/api/bots/pay/conversations", timeout=10)
            except httpx.TransportError:
                continue
            answers.append((time.monotonic() - began, response.status_code,
                            response.json().get("error", "") if response.status_code != 201 else "",
                            response.headers.get("Retry-After")))
            if response.status_code == 201:
                key = response.json()["conversation_key"]
                started.append(key)
                if number % 2:  # half of them are called, through another process
                    httpx.post(f"{urls[number % 3]}/webhooks/pay/wait", json={"conversation_key": key}, timeout=10)

    load(1.0)
    postgres.stop()
    try:
        load(3.0)
        health = httpx.get(f"{urls[1]}/healthz", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "degraded", health.text
    finally:
        postgres.start()
    time.sleep(10.0)  # the contract: reconnect within 10 s
    load(1.0)
    refused = [answer for answer in answers if answer[1] != 201]
    assert refused, "no request noticed the database was down"
    assert all(status == 503 and error == "store_unavailable" and retry for _, status, error, retry in refused), refused
    assert all(took < 5.0 for took, *_ in refused)
    assert answers[-1][1] == 201
    for url in urls:
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    time.sleep(TIMEOUT_S + 2.5)
    with psycopg.connect(pg_url) as connection:
        stored = {row[0] for row in connection.execute("SELECT key FROM conversations")}
        per_key = connection.execute(
            "SELECT key, count(*), count(outcome) FROM waits GROUP BY key").fetchall()
    assert set(started) <= stored  # nothing answered 201 was lost
    assert all(total == 1 and resolved == 1 for _, total, resolved in per_key)  # each wait resolved, once


@pytest.mark.skipif(shutil.which("faketime") is None, reason="needs faketime (apt-get install faketime; .ci/run does)")
def test_a_process_whose_clock_is_off_agrees_on_deadlines(pg_url: str, tmp_path: Path) -> None:
    honest = serve(pg_url, tmp_path / "honest.log")
    # Its wall clock 90 s ahead: libfaketime preloaded through `env`, which execs, so stopping the
    # server reaches it (the `faketime` wrapper forks, and its child outlived the test).
    ahead = serve(pg_url, tmp_path / "ahead.log", "env", "FAKETIME=+90s", "LD_PRELOAD=/usr/$LIB/faketime/libfaketime.so.1")
    try:
        assert httpx.post(f"{ahead.url}/api/bots", json=PAY).status_code == 201
        conversation = start(ahead.url)
        key = conversation["conversation_key"]
        opened = conversation["waits"][0]["opened_at"]
        # Times shown are the database's: both processes show the same instants, near real time.
        assert read(honest.url, key)["waits"][0]["opened_at"] == opened
        assert abs(_unix(opened) - time.time()) < 5
        # Before the deadline, a call through either process is on time.
        accepted = httpx.post(f"{honest.url}/webhooks/pay/wait", json={"conversation_key": key})
        assert accepted.status_code == 200
        late_key = start(honest.url)["conversation_key"]
        time.sleep(TIMEOUT_S + 0.3)
        refused = httpx.post(f"{ahead.url}/webhooks/pay/wait", json={"conversation_key": late_key})
        assert refused.json()["error"] == "wait_expired"
        late = read(honest.url, late_key)["late_calls"][0]
        assert 0 <= late["after_deadline_s"] < 2 and abs(_unix(late["at"]) - time.time()) < 5
    finally:
        honest.stop()
        ahead.stop()


def test_serve_workers_share_one_port_and_stop_together(pg_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "workers.log").open("w")
    supervisor = subprocess.Popen([sys.executable, "-m", "harness.cli", "serve", "--workers", "3", "--port",
                                   str(port), "--store", pg_url, "--log-level", "warning"], stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        give_up_at = time.monotonic() + 90  # three interpreters starting on a busy machine
        while time.monotonic() < give_up_at:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert httpx.post(f"{url}/api/bots", json=PATIENT).status_code == 201
        keys = {start(url)["conversation_key"] for _ in range(30)}
        for key in keys:  # fresh connections land on any worker; every one knows every conversation
            assert httpx.post(f"{url}/webhooks/pay/wait", json={"conversation_key": key}).status_code == 200
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0
        log.close()
    text = (tmp_path / "workers.log").read_text()
    assert text.count("stopped") >= 3, text


def test_serve_workers_needs_a_shared_store() -> None:
    done = subprocess.run([sys.executable, "-m", "harness.cli", "serve", "--workers", "2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "shared store" in done.stderr and "Traceback" not in done.stderr


def test_a_newer_schema_is_refused(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE harness_schema (version integer)")
        connection.execute("INSERT INTO harness_schema VALUES (999)")
    done = subprocess.run([sys.executable, "-m", "harness.cli", "serve", "--port", "0", "--store", pg_url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "999" in done.stderr and "Traceback" not in done.stderr


def _unix(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


RUN_COLUMNS = ["case", "conversation", "statuses", "first_status", "late_calls", "outcome", "reason", "resolved_by",
               "conversation_status", "passed"]


def _metric(url: str, name: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines() if line.startswith(name))


def test_run_with_two_targets_crosses_gates_and_rows_match_one_target(pg_url: str, tmp_path: Path) -> None:
    """`harness run --target A --target B` (SPEC §13.5): starts alternate A, B, A, …; each call goes to
    the other gate; the rows say what one target's rows say."""
    scenario = tmp_path / "two.toml"
    scenario.write_text(
        f'name = "two"\nbot = "{Path(__file__).resolve().parent.parent / "scenarios" / "bots" / "payment.toml"}"\n'
        "seed = 3\n"
        '[[cases]]\nname = "ok"\nconversations = 7\ntimeout_s = 2\ndelay_s = 0.1\n'
        'expect = { outcome = "success", status = 200 }\n'
        '[[cases]]\nname = "late"\nconversations = 2\ntimeout_s = 1\ndelay_s = 1.6\n'
        'expect = { outcome = "failure", status = 410 }\n')
    first, second = serve(pg_url, tmp_path / "a.log"), serve(pg_url, tmp_path / "b.log")
    try:
        def run(*targets: str, out: Path) -> None:
            done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(scenario), "--out", str(out),
                                   *[part for url in targets for part in ("--target", url)]],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr

        run(first.url, second.url, out=tmp_path / "two.csv")
        # 9 conversations: 5 started on the first gate, 4 on the second; each called through the other.
        assert (_metric(first.url, "harness_waits_opened_total"), _metric(second.url, "harness_waits_opened_total")) == (5, 4)
        assert (_metric(first.url, "harness_webhook_calls_total"), _metric(second.url, "harness_webhook_calls_total")) == (4, 5)
        run(first.url, out=tmp_path / "one.csv")
        assert _metric(first.url, "harness_webhook_calls_total") == 4 + 9
    finally:
        first.stop()
        second.stop()
    import pandas as pd

    one, two = (pd.read_csv(tmp_path / name).sort_values(["case", "conversation"])[RUN_COLUMNS].reset_index(drop=True)
                for name in ("one.csv", "two.csv"))
    pd.testing.assert_frame_equal(one, two)
    assert list(two["outcome"]) == ["failure"] * 2 + ["success"] * 7  # sorted by case: late, then ok
