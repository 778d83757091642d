"""Generate ``gate_delays.csv``: a ``harness delays`` export of a real served gate, fixed seed.

What it does, as an operator would, in about half a minute of real time:

1. starts ``harness serve --store sqlite:<temp>/gate.db`` on a free port;
2. runs a live scenario against it (``harness run --target``): 600 payment conversations,
   arriving at 30 per second, on the payment bot with a 4 s timeout; the senders' delays are
   two populations and some never call:
   - 70 %: lognormal(median 1.5 s, sigma 0.6) — card payments;
   - 25 %: lognormal(median 6 s, sigma 0.5) — a slow path (3-D Secure, bank redirect);
   - 5 %: never;
   a sender calls at its delay whether or not the wait is still open, so the late ones are
   answered 410 and recorded as late calls;
3. exports the store with ``harness delays --store sqlite:… --out gate_delays.csv``.

Run from the repository root: ``python3 notebooks/data/make_gate_delays.py``. The delays are
seeded, the gate's clock is real: on an idle machine a rerun gives the same senders, timings
within milliseconds. On a saturated one the live runner itself falls behind (the 600 arrivals
spread over more than their 20 s and every call goes out late), which shows as longer delays in
the export — the gate records what it saw. The shipped file's arrivals span 20.9 s.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from harness.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("gate_delays.csv")
TIMEOUT_S, CONVERSATIONS, RATE, SEED = 4, 600, 30, 20261128
SCENARIO = f"""
name = "gate-delays"
bot = "{ROOT / 'scenarios' / 'bots' / 'payment.toml'}"
seed = {SEED}

[defaults]
payload = {{ data = {{ amount = 42, id = "pay_1", items = [{{ sku = "A1" }}] }} }}

[[cases]]
name = "production"
conversations = {CONVERSATIONS}
arrival_rate = {RATE}
timeout_s = {TIMEOUT_S}
delay_s = {{ dist = "mixture", components = [
  {{ weight = 0.70, dist = "lognormal", median = 1.5, sigma = 0.6 }},
  {{ weight = 0.25, dist = "lognormal", median = 6, sigma = 0.5 }},
  {{ weight = 0.05, dist = "never" }},
] }}
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        database, scenario = Path(folder) / "gate.db", Path(folder) / "gate_delays.toml"
        scenario.write_text(SCENARIO)
        server = ServerProcess.harness_serve("--store", f"sqlite:{database}", "--log-level", "warning")
        try:
            # Exit 0 or 1 (exploratory cases have no expectation; 1 would mean a threshold failed).
            subprocess.run([sys.executable, "-m", "harness.cli", "run", str(scenario), "--target", server.url], check=False)
        finally:
            server.stop()
        subprocess.run([sys.executable, "-m", "harness.cli", "delays", "--store", f"sqlite:{database}",
                        "--out", str(OUT)], check=True)


if __name__ == "__main__":
    main()
