"""HTTP throughput: webhook resolutions/s of ``harness serve`` against a bare quart-trio route.

Both servers run as separate processes on hypercorn's trio worker. The bare one has a single
route that parses a JSON POST and answers JSON. The gate's calls each resolve a different
waiting conversation (created beforehand, not timed), so every request does the full work:
body read, parse, key lookup, checks, mapping, resolution, flow continuation, answer.

The load client is a small HTTP/1.1 client on raw trio sockets (keep-alive, ``--connections``
concurrent connections, one request in flight per connection), so the client costs little next
to the servers. Same bodies, same sizes, same client for both.

    python3 -m bench.http_throughput                # 10k requests, 32 connections
    python3 -m bench.http_throughput --quick        # 1k requests
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import httpx
import numpy as np
import trio

from harness.testing import ServerProcess

from ._report import header, row

BOT = {"id": "bench", "start": "w", "blocks": {
    "w": {"type": "webhook", "timeout_s": 300, "success": "ok", "failure": "late",
          "mappings": {"amount": "data.amount", "sku": "data.items[0].sku"}},
    "ok": {"type": "message", "text": "paid {{amount}}"}, "late": {"type": "end"}}}


def bare_server(port: int) -> None:
    """The baseline: one JSON POST route on the same stack (quart-trio + hypercorn trio worker)."""
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from quart import Response, request
    from quart_trio import QuartTrio

    app = QuartTrio("bare")

    @app.post("/hook")
    async def hook() -> Response:
        body = json.loads(await request.get_data())
        return Response(json.dumps({"status": "accepted", "conversation_key": body.get("conversation_key")}),
                        content_type="application/json")

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    trio.run(serve, app, config)


async def drive(port: int, requests: list[tuple[str, bytes]], connections: int) -> tuple[float, np.ndarray, list[int]]:
    """Send every request over ``connections`` keep-alive connections; return elapsed, latencies, statuses."""
    latencies = np.zeros(len(requests))
    statuses = [0] * len(requests)
    queue = iter(range(len(requests)))

    async def connection() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buffer = b""
        async with stream:
            for index in queue:
                path, body = requests[index]
                head = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode()
                started = time.perf_counter()
                await stream.send_all(head + body)
                while b"\r\n\r\n" not in buffer:
                    buffer += await stream.receive_some(65536)
                head_end = buffer.index(b"\r\n\r\n") + 4
                lines = buffer[:head_end].decode("latin-1").split("\r\n")
                length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
                while len(buffer) < head_end + length:
                    buffer += await stream.receive_some(65536)
                buffer = buffer[head_end + length:]
                latencies[index] = time.perf_counter() - started
                statuses[index] = int(lines[0].split()[1])

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(connection)
    return time.perf_counter() - started, latencies, statuses


def payload(key: str) -> bytes:
    return json.dumps({"conversation_key": key, "data": {"amount": 42, "id": "pay_1", "items": [{"sku": "A1"}]}}).encode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/gate rounds; medians are reported")
    parser.add_argument("--log-level", default="info", help="the gate's --log-level (default: info, as shipped)")
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_server:
        bare_server(args.bare_server)
        return
    total = 1_000 if args.quick else args.requests
    rounds = 1 if args.quick else args.rounds

    gate = ServerProcess.harness_serve("--log-level", args.log_level)
    bare = ServerProcess([sys.executable, "-m", "bench.http_throughput", "--bare-server", "{port}"], health_path="/")
    results: dict[str, list[tuple[float, np.ndarray]]] = {"bare": [], "gate": []}
    try:
        with httpx.Client(base_url=gate.url) as client:
            client.post("/api/bots", json=BOT).raise_for_status()
            keys = [client.post("/api/bots/bench/conversations").json()["conversation_key"]
                    for _ in range(total * rounds)]
        for round_keys in (keys[i * total:(i + 1) * total] for i in range(rounds)):
            for name, port, path in (("bare", bare.port, "/hook"), ("gate", gate.port, "/webhooks/bench/w")):
                elapsed, latency, statuses = trio.run(
                    drive, port, [(path, payload(key)) for key in round_keys], args.connections)
                assert set(statuses) == {200}, (name, set(statuses))
                results[name].append((elapsed, latency))
    finally:
        gate.stop()
        bare.stop()

    header(f"HTTP throughput: {total:,} JSON POSTs over {args.connections} keep-alive connections, "
           f"{rounds} alternating round(s), medians")
    row("", "requests/s", "p50 ms", "p99 ms", widths=(22, 14, 12, 12))
    for name, label in (("bare", "bare quart-trio route"), ("gate", "gate resolutions")):
        rate = float(np.median([total / elapsed for elapsed, _ in results[name]]))
        p50 = float(np.median([np.percentile(latency, 50) for _, latency in results[name]])) * 1000
        p99 = float(np.median([np.percentile(latency, 99) for _, latency in results[name]])) * 1000
        row(label, f"{rate:,.0f}", f"{p50:.2f}", f"{p99:.2f}", widths=(22, 14, 12, 12))
    ratios = [bare[0] / gate[0] for bare, gate in zip(results["bare"], results["gate"])]
    print(f"   ratio gate/bare: {np.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
