"""Virtual-time runner throughput against a bare loop making the same requests.

Both sides run under ``trio.testing.MockClock(autojump_threshold=0)`` and call a quart-trio app's
ASGI callable the same way (:class:`harness.runner.drivers.AsgiClient`). The bare side's app
answers the same routes with canned JSON and no gate logic; its loop makes, per conversation, the
same requests as the runner's ``asgi`` driver: start the conversation, call the webhook after the
delay (the runner reads outcomes from its in-process gate, not over HTTP). The ratio (runner
conversations/s ÷ bare conversations/s) is the cost of the gate, the flow engine and the runner's
bookkeeping on top of the framework.

    python3 -m bench.virtual_time              # 1k, 10k, 50k conversations; sharding at 4k, 20k
    python3 -m bench.virtual_time --quick      # 300; sharding at 4k, for CI

A second table shows what spreading a sweep's sub-cases over two processes (both cores) gains.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import trio
import trio.testing
from quart import Response
from quart_trio import QuartTrio

from harness.runner import run_scenario
from harness.runner.drivers import AsgiClient

from ._report import header, row

TIMEOUT_S = 300
PAYLOAD = {"data": {"amount": 42, "id": "pay_1", "items": [{"sku": "A1"}]}}


def scenario(conversations: int) -> dict:
    return {
        "name": "bench",
        "bot": "scenarios/bots/payment.toml",
        "seed": 1,
        "defaults": {"payload": PAYLOAD},
        "cases": [{"name": "mixed", "conversations": conversations, "timeout_s": TIMEOUT_S,
                   "delay_s": {"dist": "uniform", "low": 0, "high": 400}}],
    }


def bare_app() -> QuartTrio:
    app = QuartTrio("bare")
    keys = itertools.count()

    def answer(body: dict, status: int = 200) -> Response:
        return Response(json.dumps(body), status=status, content_type="application/json")

    @app.post("/api/bots")
    async def create_bot() -> Response:
        return answer({"id": "bare"}, 201)

    @app.post("/api/bots/<bot>/conversations")
    async def start(bot: str) -> Response:
        return answer({"conversation_key": f"k{next(keys)}", "status": "waiting", "waits": []}, 201)

    @app.post("/webhooks/<bot>/<block>")
    async def webhook(bot: str, block: str) -> Response:
        from quart import request

        body = json.loads(await request.get_data())
        return answer({"status": "accepted", "conversation_key": body["conversation_key"]})

    return app


async def bare_loop(conversations: int) -> None:
    delays = np.random.default_rng(1).uniform(0, 400, conversations)
    client = AsgiClient(bare_app())

    async def one(delay: float) -> None:
        started = await client.request("POST", "/api/bots/bare/conversations")
        opened_at = trio.current_time()
        key = started.json()["conversation_key"]
        await trio.sleep_until(opened_at + delay)
        body = json.dumps({**PAYLOAD, "conversation_key": key}).encode()
        await client.request("POST", "/webhooks/bare/wait", content=body, headers={"Content-Type": "application/json"})

    await client.request("POST", "/api/bots", json={})
    async with trio.open_nursery() as nursery:
        for delay in delays:
            nursery.start_soon(one, float(delay))


def sweep_scenario(conversations: int) -> dict:
    """The same work split into 4 sub-cases (a timeout sweep), so it can be sharded."""
    document = scenario(conversations // 4)
    document["cases"][0]["timeout_s"] = [60, 120, 240, 300]
    return document


def measure_sharding(conversations: int) -> tuple[float, float]:
    timings = []
    for workers in (1, 2):
        start = time.perf_counter()
        run_scenario(sweep_scenario(conversations), workers=workers)
        timings.append(time.perf_counter() - start)
    return timings[0], timings[1]


def measure(conversations: int) -> tuple[float, float]:
    start = time.perf_counter()
    trio.run(bare_loop, conversations, clock=trio.testing.MockClock(autojump_threshold=0))
    bare = time.perf_counter() - start
    start = time.perf_counter()
    frame = run_scenario(scenario(conversations))
    gate = time.perf_counter() - start
    assert len(frame) == conversations and frame["outcome"].notna().all()
    return bare, gate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small size, for CI")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000, 10_000, 50_000])
    args = parser.parse_args(argv)
    sizes = [300] if args.quick else args.sizes
    header("virtual time: runner vs bare loop (same requests, same transport, MockClock)")
    row("conversations", "bare conv/s", "runner conv/s", "ratio", "runner s", "µs/conv")
    for size in sizes:
        bare, gate = measure(size)
        row(size, f"{size / bare:,.0f}", f"{size / gate:,.0f}", f"{bare / gate:.2f}", f"{gate:.2f}",
            f"{gate / size * 1e6:,.0f}")
    header("virtual time: one process vs two (4-sub-case sweep, sharded; process start-up included)")
    row("conversations", "1 process s", "2 processes s", "speed-up")
    for size in ([4_000] if args.quick else [4_000, 20_000]):
        one, two = measure_sharding(size)
        row(size, f"{one:.2f}", f"{two:.2f}", f"{one / two:.2f}")


if __name__ == "__main__":
    main()
