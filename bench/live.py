"""Live mode against Locust: webhook resolutions/s against one ``harness serve``, same run.

A fresh ``harness serve`` (payment bot, in-memory store, warning-level logs) is pinned to one core
(``taskset -c 0``); the load client is pinned to the other (``taskset -c 1``):

* **harness** — ``run_scenario(..., target=URL)``: N conversations started at once, each called
  back at once (``delay_s = 0``) with its key, at most 64 requests in flight. A resolution is a
  200; the figure is N ÷ the run's wall time (bot registration included).
* **locust** — Locust headless in one process, 64 ``FastHttpUser`` users (its fastest client),
  each looping: start a conversation, call its webhook with the key. The figure is Locust's own
  rate of webhook requests answered 200.

Both make the same two requests per resolution. Rounds alternate; the table shows medians. With
``--before CHECKOUT`` the live mode of another checkout runs too, in the same rounds.

    python3 -m bench.live                       # 20k conversations / 20 s of Locust, 3 rounds
    python3 -m bench.live --quick               # 1,000 conversations, no Locust (CI)
    python3 -m bench.live --before /work/main
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.testing import ServerProcess

from ._report import header, row

ROOT = Path(__file__).resolve().parent.parent
BOT = ROOT / "scenarios" / "bots" / "payment.toml"
PAYLOAD = {"data": {"amount": 42, "id": "pay_1", "items": [{"sku": "A1"}]}}
USERS = 64

LOCUSTFILE = f"""
from locust import FastHttpUser, task

PAYLOAD = {PAYLOAD!r}

class Payer(FastHttpUser):
    @task
    def pay(self):
        key = self.client.post("/api/bots/payment/conversations", json={{}}, name="start").json()["conversation_key"]
        self.client.post("/webhooks/payment/wait_payment", json={{**PAYLOAD, "conversation_key": key}}, name="webhook")
"""

RUNNER = """
import json, sys, time
from harness.runner import run_scenario
document, target = json.loads(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
frame = run_scenario(document, target=target)
seconds = time.perf_counter() - start
resolved = int((frame["first_status"] == 200).sum())
print(json.dumps({"seconds": seconds, "resolved": resolved, "errors": int(frame["error"].notna().sum())}))
"""


def pinned(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def serve() -> ServerProcess:
    return ServerProcess([*pinned(0), sys.executable, "-m", "harness.cli", "serve", "--port", "{port}",
                          "--bots", str(BOT), "--log-level", "warning"])


def harness_live(conversations: int, code_path: str) -> float:
    document = {"bot": str(BOT), "seed": 1, "cases": [
        {"name": "live", "conversations": conversations, "delay_s": 0, "payload": PAYLOAD}]}
    with serve() as server:
        output = subprocess.run([*pinned(1), sys.executable, "-P", "-c", RUNNER, json.dumps(document), server.url],
                                check=True, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": code_path}).stdout
    result = json.loads(output.strip().splitlines()[-1])
    assert result["resolved"] == conversations and result["errors"] == 0, result
    return conversations / result["seconds"]


def locust(seconds: int) -> float:
    with tempfile.TemporaryDirectory() as folder, serve() as server:
        locustfile = Path(folder) / "locustfile.py"
        locustfile.write_text(LOCUSTFILE)
        subprocess.run([*pinned(1), sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
                        "-u", str(USERS), "-r", str(USERS), "-t", f"{seconds}s", "--host", server.url,
                        "--csv", str(Path(folder) / "stats"), "--only-summary", "--loglevel", "WARNING"],
                       check=True, capture_output=True, text=True)
        stats = (Path(folder) / "stats_stats.csv").read_text().splitlines()
    columns = stats[0].split(",")
    for line in stats[1:]:
        values = dict(zip(columns, line.split(",")))
        if values["Name"] == "webhook":
            requests, failures = int(values["Request Count"]), int(values["Failure Count"])
            return (requests - failures) / seconds
    raise RuntimeError("Locust reported no webhook requests")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small, harness only, for CI")
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--seconds", type=int, default=20, help="how long Locust runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", metavar="CHECKOUT", help="also the live mode of another checkout")
    args = parser.parse_args(argv)
    n, rounds = (1_000, 1) if args.quick else (args.conversations, args.rounds)
    here = str(ROOT)
    rates: dict[str, list[float]] = {"harness live": []}
    if args.before:
        rates["harness live (before)"] = []
    if not args.quick:
        rates["locust"] = []
    for _ in range(rounds):
        rates["harness live"].append(harness_live(n, here))
        if args.before:
            rates["harness live (before)"].append(harness_live(n, args.before))
        if not args.quick:
            rates["locust"].append(locust(args.seconds))
    header(f"live: resolutions/s against one harness serve (server on core 0, client on core 1), median of {rounds}")
    row("client", "resolutions/s", "vs locust", "rounds", widths=(24, 16, 12, 30))
    reference = statistics.median(rates["locust"]) if "locust" in rates else None
    for label, values in rates.items():
        rate = statistics.median(values)
        ratio = f"{rate / reference:.2f}" if reference else "-"
        row(label, f"{rate:,.0f}", ratio, " ".join(f"{v:,.0f}" for v in values), widths=(24, 16, 12, 30))


if __name__ == "__main__":
    main()
