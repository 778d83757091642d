"""Generate ``processor_delays.csv``: 4,000 made-up payment-callback delays, fixed seed.

Stands in for a processor's real logs (time from "payment link shown" to "webhook received").
The truth behind it, which the fit notebook tries to recover without being told:

- 3 % of customers never pay: empty ``delay_s`` cell;
- of the rest, 80 % pay by card and the processor calls back after lognormal(median 30 s,
  sigma 0.7), and 20 % go through a slow path (3-D Secure, bank redirect) with lognormal(median
  80 s, sigma 0.5).

Run from the repository root: ``python3 notebooks/data/make_processor_delays.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ROWS, SEED = 4000, 20261125

rng = np.random.default_rng(SEED)
slow = rng.random(ROWS) < 0.20
delays = np.where(slow, rng.lognormal(np.log(80), 0.5, ROWS), rng.lognormal(np.log(30), 0.7, ROWS))
delays[rng.random(ROWS) < 0.03] = np.nan
frame = pd.DataFrame({"payment_id": [f"pay_{i:05d}" for i in range(ROWS)], "delay_s": delays.round(3)})
frame.to_csv(Path(__file__).with_name("processor_delays.csv"), index=False)
