"""The ``harness`` command: serve, run, validate, report (SPEC §5).

Exit codes: 0 all good; 1 an expectation or threshold failed; 2 an input file is invalid.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from .core.bots import Bot, InvalidBot, load_bot
from .gc_tuning import keep_long_lived_state_out_of_gc

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

    from .runner.report import CaseResult

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="A webhook gate for chatbot flows, and a scenario harness that drives it.",
)
err = Console(stderr=True, soft_wrap=True)
# Summary tables are wide; when piped (CI logs, files), do not squeeze them into 80 columns.
out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 180)

BOT_SUFFIXES = (".toml", ".json")


@app.callback()
def root() -> None:
    """A webhook gate for chatbot flows, and a scenario harness that drives it."""


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line, with the structured fields passed as ``extra``."""

    _standard = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        line.update({k: v for k, v in vars(record).items() if k not in self._standard})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def bot_files(paths: list[Path]) -> list[Path]:
    """Files named directly, plus every ``.toml``/``.json`` file in the folders named."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in BOT_SUFFIXES))
        else:
            files.append(path)
    return files


def load_bots_or_exit(paths: list[Path]) -> list[Bot]:
    bots: list[Bot] = []
    failed = False
    for path in bot_files(paths):
        try:
            bots.append(load_bot(path))
        except InvalidBot as error:
            failed = True
            err.print(f"[red]{error}[/red]", highlight=False)
    if failed:
        raise typer.Exit(2)
    return bots


@app.command()
def serve(
    context: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    bots: Annotated[list[Path] | None, typer.Option("--bots", help="Bot files or folders to load.")] = None,
    store: Annotated[str, typer.Option(
        envvar="HARNESS_STORE", show_envvar=True,
        help="memory, sqlite:PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME")] = "memory",
    public_url: Annotated[str | None, typer.Option(help="Base URL in conversation and webhook URLs.")] = None,
    max_body: Annotated[int, typer.Option(help="Largest webhook body accepted, in bytes.")] = 1024 * 1024,
    api_token: Annotated[str | None, typer.Option(
        envvar="HARNESS_API_TOKEN", show_envvar=True,
        help="Require Authorization: Bearer TOKEN on /, /api/… and /metrics (open the page as /?token=TOKEN).")] = None,
    body_timeout: Annotated[float, typer.Option(
        help="Seconds a request body may take after its headers; then 408 and the connection closes.")] = 30.0,
    retention: Annotated[float, typer.Option(
        help="Seconds finished conversations stay in memory (then within 30 s: gone from memory; on SQLite still "
             "readable from disk).")] = 3600.0,
    log_level: Annotated[str, typer.Option(help="info logs one JSON line per resolution; warning: errors only.")] = "info",
    workers: Annotated[int, typer.Option(
        help="Gate processes serving this host and port (needs a shared store: sqlite:PATH or postgresql://…).")] = 1,
    reuse_port: Annotated[bool, typer.Option(hidden=True, help="Listen with SO_REUSEPORT (set by --workers).")] = False,
) -> None:
    """Run the webhook gate on hypercorn (trio worker)."""
    import trio

    from .core.gate import Gate
    from .store import open_store, store_clock
    from .web.http_guard import raise_open_file_limit
    from .web.server import serve as serve_gate

    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        err.print(f"--log-level: one of debug, info, warning, error; got {log_level!r}")
        raise typer.Exit(2)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    logging.basicConfig(level=level, handlers=[handler])
    if max_body < 1:
        err.print("--max-body: must be at least 1 byte")
        raise typer.Exit(2)
    if not 0 < body_timeout < float("inf"):
        err.print("--body-timeout: must be a positive number of seconds")
        raise typer.Exit(2)
    if not 0 <= retention < float("inf"):
        err.print("--retention: must be a number of seconds >= 0")
        raise typer.Exit(2)
    raise_open_file_limit()  # every connection is a file descriptor; stalled clients must not exhaust them
    loaded = load_bots_or_exit(list(bots or []))
    if workers != 1:
        raise typer.Exit(_serve_workers(context, workers, host, port, store))
    try:
        gate_store = open_store(store)
    except ValueError as error:
        err.print(f"--store: {error}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    gate = Gate(store=gate_store, public_url=public_url or f"http://{host}:{port}", retention=retention,
                clock=store_clock(gate_store))

    async def add_bots() -> None:
        for bot in loaded:
            existing = await gate_store.get_bot(bot.id)
            if existing is None:
                await gate.add_bot(bot)
            elif existing.to_dict() != bot.to_dict():
                err.print(f"bot {bot.id!r}: the store holds another version; keeping the stored one")

    async def stop_requested() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                err.print(f"{signal.Signals(signum).name}: finishing requests in flight, then stopping")
                return

    async def main() -> None:
        await add_bots()
        async with trio.open_nursery() as nursery:
            url = await nursery.start(functools.partial(
                serve_gate, gate, host=host, port=port, max_body=max_body, public_url=public_url,
                api_token=api_token, body_timeout=body_timeout, shutdown_trigger=stop_requested,
                reuse_port=reuse_port))
            names = ", ".join(bot.id for bot in await gate_store.bots()) or "none"
            err.print(f"webhook gate on {url} (bots: {names}); Ctrl+C to stop", highlight=False)

    keep_long_lived_state_out_of_gc()
    trio.run(main)
    err.print("stopped")


def _serve_workers(context: typer.Context, workers: int, host: str, port: int, store: str) -> int:
    """``serve --workers N``: check the store, reserve the address, supervise N ``serve`` processes
    listening on it with SO_REUSEPORT (the same options otherwise); the exit status."""
    import trio

    from .store import open_store
    from .web.workers import reserve_address, supervise, worker_command

    if workers < 1:
        err.print("--workers: must be at least 1")
        return 2
    if store == "memory":
        err.print("--workers: several processes need a shared store (--store sqlite:PATH or postgresql://…); "
                  "the memory store lives inside one process", highlight=False, markup=False)
        return 2
    try:  # once here, so a wrong or too-new store is one message, not one per worker
        checked = open_store(store)
    except ValueError as error:
        err.print(f"--store: {error}", highlight=False, markup=False)
        return 2
    trio.run(checked.close)
    try:
        reserved = reserve_address(host, port)
    except OSError as error:
        err.print(f"cannot listen on {host}:{port}: {error.strerror or error}", highlight=False, markup=False)
        return 2
    with reserved:
        chosen = reserved.getsockname()[1]
        env = dict(os.environ)
        arguments: list[str] = []
        for parameter in context.command.params:
            name, value = parameter.name or "", context.params.get(parameter.name or "")
            if name in ("workers", "port", "reuse_port") or value is None or not parameter.opts:
                continue
            if isinstance(parameter.envvar, str):
                env[parameter.envvar] = str(value)  # secrets stay out of the process list
            elif getattr(parameter, "is_flag", False):
                arguments += [parameter.opts[0]] if value else list(parameter.secondary_opts[:1])
            elif parameter.multiple:
                for item in value:
                    arguments += [parameter.opts[0], str(item)]
            else:
                arguments += [parameter.opts[0], str(value)]
        arguments += ["--port", str(chosen), "--reuse-port"]
        err.print(f"{workers} workers on http://{host}:{chosen}; Ctrl+C to stop", highlight=False, markup=False)
        return supervise(lambda: worker_command(arguments), workers, env=env,
                         say=lambda text: err.print(text, highlight=False, markup=False))


def _print_summary(frame: pd.DataFrame) -> list[CaseResult]:
    """Print one table per scenario and the verdict line (last on stdout); return the verdicts."""
    from rich.measure import Measurement

    from .runner.report import case_results, verdict_line

    results = case_results(frame)
    scenarios: dict[str, list[CaseResult]] = {}
    for result in results:
        scenarios.setdefault(result.scenario, []).append(result)
    for scenario, cases in scenarios.items():
        table = _wide_table(scenario, cases)
        # Wide when every column fits without cutting a word (cells may wrap); else one block per case.
        # (Measured without the console's width limit, which would clamp the measurement.)
        if Measurement.get(out, out.options.update_width(1 << 16), table).minimum <= out.width:
            out.print(table)
        else:
            _print_stacked(scenario, cases)
    out.print(verdict_line(results), soft_wrap=True, highlight=False, markup=False)
    return results


def _wide_table(scenario: str, cases: list[CaseResult]) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"scenario {scenario}"), title_justify="left", show_lines=False)
    for column, justify in (("case", "left"), ("variant", "left"), ("n", "right"), ("success", "right"),
                            ("failure", "right"), ("timeout", "right"), ("misattr.", "right"),
                            ("statuses", "left"), ("waited p50/p95", "right"), ("expect", "right"),
                            ("thresholds", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for result in cases:
        row = result.summary
        cells = (result.case, result.variant, str(row["n"]), f"{row['success_rate']:.1%}", f"{row['failure_rate']:.1%}",
                 f"{row['timeout_rate']:.1%}", f"{row['misattributed_rate']:.1%}", row["statuses"],
                 f"{row['p50_waited_s']:.2f}/{row['p95_waited_s']:.2f} s", _expectations(row),
                 row["thresholds"].replace("; ", "\n"))
        table.add_row(*map(Text, cells), style=None if result.passed else "red")  # Text: names are not markup
    return table


def _expectations(row: dict[str, object]) -> str:
    return f"{row['expectations']}" + (f" ({row['errors']} errors)" if row["errors"] else "")


def _print_stacked(scenario: str, cases: list[CaseResult]) -> None:
    """The narrow layout: a few short lines per case, nothing cut."""
    from rich.text import Text

    out.print(Text(f"scenario {scenario}", style="italic"))
    for result in cases:
        row = result.summary
        lines = [
            f"{'✓' if result.passed else '✗'} {result.label}  n {row['n']}, expect {_expectations(row)}",
            f"    success {row['success_rate']:.1%}  failure {row['failure_rate']:.1%}  "
            f"timeout {row['timeout_rate']:.1%}  misattr. {row['misattributed_rate']:.1%}",
            f"    statuses {row['statuses']}  waited p50/p95 {row['p50_waited_s']:.2f}/{row['p95_waited_s']:.2f} s",
            *(f"    {text}" for text in row["thresholds"].split("; ") if text != "-"),
        ]
        out.print(Text("\n".join(lines), style="" if result.passed else "red"))


def _scenario_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.toml")) if path.is_dir() else [path])
    return files


@app.command()
def run(
    scenarios: Annotated[list[Path], typer.Argument(help="Scenario files (or folders of them).")],
    target: Annotated[list[str] | None, typer.Option(
        help="URL of a live gate; omitted: in-process virtual time. Repeat it for several gates on one store: "
             "conversations start on each in turn, each call goes to another one.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write every row to this .parquet or .csv file.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the scenarios' seeds.")] = None,
    concurrency: Annotated[int, typer.Option(help="With --target: requests in flight at most.")] = 64,
    api_token: Annotated[str | None, typer.Option(
        envvar="HARNESS_API_TOKEN", show_envvar=True, help="With --target: the gate's --api-token.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Virtual time: processes to spread sub-cases (and large cases) over (default: one per core for large runs).")] = None,
    driver: Annotated[str, typer.Option(
        help="Virtual time: asgi drives the real Quart app in process; core the same webhook handling without HTTP.")] = "asgi",
    dask: Annotated[str | None, typer.Option(
        "--dask", metavar="ADDRESS",
        help="Virtual time: spread the work over the Dask cluster at ADDRESS (tcp://host:8786); needs the dask extra.")] = None,
    junit_xml: Annotated[Path | None, typer.Option(
        "--junit-xml", help="Write a JUnit report: one testcase per case or sub-case.")] = None,
    summary_json: Annotated[Path | None, typer.Option(
        "--summary-json", help="Write the per-case summary as JSON (SPEC §12).")] = None,
) -> None:
    """Run scenarios and print a summary per case. Exit 1 if an expectation or threshold fails."""
    import time

    import pandas as pd

    from .runner import InvalidScenario, RunError, load_scenario, run_loaded_scenario, save_results
    from .runner.progress import progress_display
    from .runner.report import write_junit_xml, write_summary_json

    if driver not in ("asgi", "core"):
        err.print(f"--driver: one of asgi, core; got {driver!r}")
        raise typer.Exit(2)
    if out is not None and out.suffix.lower() not in (".parquet", ".csv"):
        err.print(f"--out {out}: results go to a .parquet or .csv file")
        raise typer.Exit(2)
    for option, report_path in (("--junit-xml", junit_xml), ("--summary-json", summary_json)):
        if report_path is not None and report_path.is_dir():
            err.print(f"{option} {report_path}: is a folder; give a file name")
            raise typer.Exit(2)
    loaded, invalid = [], False
    for path in _scenario_files(scenarios):
        try:
            loaded.append(load_scenario(path, seed=seed))
        except InvalidScenario as error:
            invalid = True
            for line in error.problems:
                err.print(f"[red]{line}[/red]", highlight=False)
    if invalid or not loaded:
        if not loaded and not invalid:
            err.print("no scenario files given")
        raise typer.Exit(2)

    if dask is not None and target is not None:
        err.print("--dask spreads a virtual-time run; it cannot be combined with --target")
        raise typer.Exit(2)
    frames, durations_s = [], dict[str, float]()
    with contextlib.ExitStack() as stack:
        executor = stack.enter_context(_dask_executor(dask)) if dask is not None else None
        for scenario in loaded:
            total = sum(subcase.conversations for subcase in scenario.subcases)
            began = time.monotonic()
            with progress_display(scenario.name, total, console=err) as progress:
                try:
                    frames.append(run_loaded_scenario(scenario, target=target, concurrency=concurrency,
                                                      workers=workers, executor=executor, driver=driver,
                                                      progress=progress, api_token=api_token))
                except RunError as error:
                    err.print(f"[red]{scenario.source}: {error}[/red]", highlight=False)
                    raise typer.Exit(1) from None
            durations_s[scenario.name] = durations_s.get(scenario.name, 0.0) + time.monotonic() - began
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if out is not None:
        save_results(frame, out)
        err.print(f"{len(frame)} rows written to {out}")
    results = _print_summary(frame)
    if junit_xml is not None:
        write_junit_xml(results, junit_xml, durations_s=durations_s)
    if summary_json is not None:
        write_summary_json(results, summary_json)
    raise typer.Exit(0 if all(result.passed for result in results) else 1)


@contextlib.contextmanager
def _dask_executor(address: str) -> Iterator[Executor]:
    """A ``concurrent.futures`` executor on the Dask cluster at ``address``."""
    try:
        from distributed import Client
    except ImportError:
        err.print("--dask needs Dask: python3 -m pip install 'webhook-gate-harness[dask]'")
        raise typer.Exit(2) from None
    try:
        client = Client(address, timeout=10)
    except OSError as error:
        err.print(f"--dask {address}: cannot reach the scheduler: {error}")
        raise typer.Exit(2) from None
    with client:
        yield client.get_executor()


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="Bot and scenario files (.toml or .json).")]) -> None:
    """Validate bot and scenario files; list every problem. Exit 0, or 2 if any is invalid."""
    from .core.bots import parse_bot, read_document
    from .runner import InvalidScenario, parse_scenario

    invalid = False
    for path in files:
        problems: list[str] = []
        kind = "file"
        try:
            document = read_document(path)
            if isinstance(document, dict) and "cases" in document:
                kind = "scenario"
                parse_scenario(document, base_dir=path.parent, source=str(path))
            elif isinstance(document, dict) and "blocks" in document:
                kind = "bot"
                parse_bot(document, source=str(path))
            else:
                problems.append(f"{path}: neither a bot (no `blocks`) nor a scenario (no `cases`)")
        except ValueError as error:  # unreadable file, InvalidBot, InvalidScenario
            if isinstance(error, InvalidScenario):
                problems.extend(error.problems)
            elif isinstance(error, InvalidBot):
                problems.extend(f"{path}: {problem}" for problem in error.problems)
            else:
                problems.append(str(error))
        if problems:
            invalid = True
            for line in problems:
                err.print(f"[red]{line}[/red]", highlight=False)
        else:
            out.print(f"{path}: valid {kind}", highlight=False)
    raise typer.Exit(2 if invalid else 0)


@app.command()
def report(results: Annotated[Path, typer.Argument(help="A results file from `harness run --out`.")]) -> None:
    """Print the summary table of a saved results file. Exit 1 if it records a failure."""
    from .runner import load_results

    try:
        frame = load_results(results)
    except ValueError as error:
        err.print(str(error))
        raise typer.Exit(2) from None
    raise typer.Exit(0 if all(result.passed for result in _print_summary(frame)) else 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
