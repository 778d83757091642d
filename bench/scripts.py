"""Script execution: the worker-process pool (real time) against inline runs (virtual time).

The gate runs a real-time script in one of a few prestarted worker processes, so that a script
the engine cannot interrupt (huge ``BigInt`` work) can be killed (SPEC §17.3). What that costs
per script is measured against the baseline, in the same run: the same script run inline in
this process (what virtual time does). Also reported: the server's memory for the workers.

    python3 -m bench.scripts           # 2,000 scripts each way
    python3 -m bench.scripts --quick   # 200
"""

from __future__ import annotations

import argparse
import time

import psutil
import trio

from harness.core import js

from ._report import header, row

# The seed's snippet: what most bots run.
CODE = """
const conversation_url = wn.getConversationVariable("Conversation URL");
function getLastPartOfUrl(url) { const parts = url.split('/'); return parts[parts.length - 1]; }
wn.setConversationVariable("conversation_key", getLastPartOfUrl(conversation_url));
"""
VARIABLES = {"Conversation URL": "http://gate/c/abc", "conversation_key": "abc", "amount": 42}


async def pooled(count: int) -> tuple[float, float, float]:
    """Seconds per script through the pool: one at a time, then 8 conversations at once; worker RSS."""
    js.prestart_script_workers()
    await js.run_script_async(CODE, VARIABLES)  # the workers are up
    started = time.perf_counter()
    for _ in range(count):
        await js.run_script_async(CODE, VARIABLES)
    serial = (time.perf_counter() - started) / count

    async def conversation(n: int) -> None:
        for _ in range(n):
            await js.run_script_async(CODE, VARIABLES)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(conversation, count // 8)
    concurrent = (time.perf_counter() - started) / (count // 8 * 8)
    workers = [child.memory_info().rss for child in psutil.Process().children()]
    return serial, concurrent, sum(workers) / max(len(workers), 1) / 2**20


def inline(count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        js.run_script(CODE, VARIABLES)
    return (time.perf_counter() - started) / count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    count = 200 if parser.parse_args(argv).quick else 2000
    header(f"Scripts: worker pool ({js.SCRIPT_WORKERS} processes) vs inline, {count} runs")
    baseline = inline(count)
    serial, concurrent, worker_mib = trio.run(pooled, count)
    row("", "ms/script", "vs inline", widths=(28, 12, 12))
    row("inline (baseline)", f"{baseline * 1000:.3f}", "1.00", widths=(28, 12, 12))
    row("pool, one at a time", f"{serial * 1000:.3f}", f"{serial / baseline:.2f}", widths=(28, 12, 12))
    row("pool, 8 conversations", f"{concurrent * 1000:.3f}", f"{concurrent / baseline:.2f}", widths=(28, 12, 12))
    print(f"   memory: {worker_mib:.0f} MiB RSS per worker process")


if __name__ == "__main__":
    main()
