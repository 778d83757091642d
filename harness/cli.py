"""The ``harness`` command: serve, run, validate, report (SPEC §5, §16), delays (§15.7).

Exit codes: 0 all good; 1 an expectation or threshold failed; 2 an input (file, option) is
invalid; 130 interrupted by Ctrl+C (SIGINT), 143 by SIGTERM.

Messages are plain text, printed as written (:func:`say`): a bracket in a file name, a TOML
table name (``[[cases]]``) or a mapping path (``data.items[0]``) is never read as markup. Rich
draws only the summary tables and the progress bar, from ``Text`` objects. Each command imports
what it needs when it runs, so ``harness --help`` and ``harness validate`` load neither pandas,
numpy nor Quart.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from ._groups import leaves

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from rich.console import Console
    from rich.table import Table

    from .core.bots import Bot
    from .runner.report import CaseResult

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # help is plain text: brackets stay brackets, and rich is not imported for it
    help="A webhook gate for chatbot flows, and a scenario harness that drives it.",
)

# typer prints an argument's Python type after its name (`FILE <list[Path]>`); the name says enough.
typer.core.TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign,assignment,misc]

BOT_SUFFIXES = (".toml", ".json")
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


def say(text: str) -> None:
    """Print a message to stderr exactly as written (the one place messages are printed)."""
    print(text, file=sys.stderr, flush=True)


def fail(text: str, code: int = 2) -> NoReturn:
    """Say what is wrong, in one sentence, and exit with ``code`` (2: the input is invalid)."""
    say(text)
    raise typer.Exit(code)


def _stdout_console() -> Console:
    from rich.console import Console

    # Summary tables are wide; when piped (CI logs, files), do not squeeze them into 80 columns.
    return Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 180)


@app.callback()
def root() -> None:
    """A webhook gate for chatbot flows, and a scenario harness that drives it."""


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line, with the structured fields passed as ``extra``.

    ``time`` is ISO 8601 in UTC with microseconds, as the API's timestamps (SPEC §16.3).
    """

    _standard = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        from .core.conversations import iso_timestamp

        return iso_timestamp(record.created)

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        line.update({k: v for k, v in vars(record).items() if k not in self._standard})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _without_server_banner(record: logging.LogRecord) -> bool:
    """Drop hypercorn's own "Running on …" line: ``harness serve`` prints its banner once."""
    return not (record.name.startswith("harness.web") and str(record.msg).startswith("Running on"))


def setup_logging(level: int) -> None:
    """JSON lines on stderr, times in UTC, for the server's own log and every library's."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(_without_server_banner)
    logging.basicConfig(level=level, handlers=[handler], force=True)


def bot_files(paths: list[Path]) -> list[Path]:
    """Files named directly, plus every ``.toml``/``.json`` file in the folders named.

    A folder with no such file is said (the gate still starts: bots can come through the API).
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in BOT_SUFFIXES)
            if not found:
                say(f"warning: --bots {path}: no bot files (.toml, .json) in this folder")
            files.extend(found)
        else:
            files.append(path)
    return files


def load_bots_or_exit(paths: list[Path]) -> list[Bot]:
    from .core.bots import InvalidBot, load_bot

    bots: list[Bot] = []
    failed = False
    for path in bot_files(paths):
        try:
            bots.append(load_bot(path))
        except InvalidBot as error:
            failed = True
            say(str(error))
    if failed:
        raise typer.Exit(2)
    return bots


@app.command()
def serve(
    context: typer.Context,
    host: Annotated[str, typer.Option(metavar="HOST", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port to listen on (0: any free port).")] = 8000,
    bots: Annotated[list[Path] | None, typer.Option(
        "--bots", metavar="PATH", help="A bot file or a folder of them; repeat for more.")] = None,
    store: Annotated[str, typer.Option(
        metavar="STORE", envvar="HARNESS_STORE", show_envvar=True,
        help="memory, sqlite:PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME")] = "memory",
    public_url: Annotated[str | None, typer.Option(
        metavar="URL", help="Base URL in conversation and webhook URLs.")] = None,
    max_body: Annotated[int, typer.Option(metavar="BYTES", help="Largest webhook body accepted.")] = 1024 * 1024,
    api_token: Annotated[str | None, typer.Option(
        envvar="HARNESS_API_TOKEN", show_envvar=True, metavar="TOKEN",
        help="Require Authorization: Bearer TOKEN on /, /api/… and /metrics (open the page as /?token=TOKEN).")] = None,
    body_timeout: Annotated[float, typer.Option(
        metavar="SECONDS",
        help="Seconds a request body may take after its headers; then 408 and the connection closes.")] = 30.0,
    retention: Annotated[float, typer.Option(
        metavar="SECONDS",
        help="Seconds finished conversations stay in memory (then within 30 s: gone from memory; on SQLite still "
             "readable from disk).")] = 3600.0,
    log_level: Annotated[str, typer.Option(
        metavar="LEVEL", help="info logs one JSON line per resolution and per refused call; warning: errors only.")] = "info",
    graceful_timeout: Annotated[float, typer.Option(
        metavar="SECONDS",
        help="On SIGTERM or Ctrl+C, seconds the requests in flight may take to finish (new connections are "
             "refused meanwhile).")] = 30.0,
    workers: Annotated[int, typer.Option(
        metavar="N",
        help="Gate processes serving this host and port (needs a shared store: sqlite:PATH or postgresql://…).")] = 1,
    reuse_port: Annotated[bool, typer.Option(hidden=True, help="Listen with SO_REUSEPORT (set by --workers).")] = False,
) -> None:
    """Run the webhook gate on hypercorn (trio worker)."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        fail(f"--log-level: one of debug, info, warning, error; got {log_level!r}")
    if max_body < 1:
        fail("--max-body: must be at least 1 byte")
    if not 0 < body_timeout < float("inf"):
        fail("--body-timeout: must be a positive number of seconds")
    if not 0 <= retention < float("inf"):
        fail("--retention: must be a number of seconds >= 0")
    if not 0 <= graceful_timeout < float("inf"):
        fail("--graceful-timeout: must be a number of seconds >= 0")
    if not 0 <= port <= 65535:
        fail(f"--port: must be 0..65535, got {port}")
    import trio

    from .core.gate import Gate
    from .gc_tuning import keep_long_lived_state_out_of_gc
    from .store import open_store, store_clock
    from .web.http_guard import raise_open_file_limit
    from .web.server import serve as serve_gate

    setup_logging(level)
    raise_open_file_limit()  # every connection is a file descriptor; stalled clients must not exhaust them
    loaded = load_bots_or_exit(list(bots or []))
    if workers != 1:
        raise typer.Exit(_serve_workers(context, workers, host, port, store))
    try:
        gate_store = open_store(store)
    except (ValueError, OSError) as error:
        fail(f"--store {store}: {error}")
    gate = Gate(store=gate_store, public_url=public_url or f"http://{host}:{port}", retention=retention,
                clock=store_clock(gate_store))

    async def add_bots() -> None:
        for bot in loaded:
            existing = await gate_store.get_bot(bot.id)
            if existing is None:
                await gate.add_bot(bot)
            elif existing.to_dict() != bot.to_dict():
                say(f"bot {bot.id!r}: the store holds another version; keeping the stored one")

    async def stop_requested() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                say(f"{signal.Signals(signum).name}: finishing requests in flight, then stopping")
                return

    listening = False

    async def main() -> None:
        nonlocal listening
        await add_bots()
        async with trio.open_nursery() as nursery:
            url = await nursery.start(functools.partial(
                serve_gate, gate, host=host, port=port, max_body=max_body, public_url=public_url,
                api_token=api_token, body_timeout=body_timeout, graceful_timeout=graceful_timeout,
                shutdown_trigger=stop_requested, reuse_port=reuse_port))
            listening = True
            names = ", ".join(bot.id for bot in await gate_store.bots()) or "none"
            say(f"webhook gate on {url} (bots: {names}); Ctrl+C to stop")

    keep_long_lived_state_out_of_gc()
    try:
        trio.run(main)
    except* OSError as group:
        if listening:
            raise
        bind_error = leaves(group)[0]
        reason = "address already in use" if getattr(bind_error, "errno", None) == errno.EADDRINUSE else (
            getattr(bind_error, "strerror", None) or str(bind_error))
        fail(f"cannot listen on {host}:{port}: {reason}")
    say("stopped")


def _serve_workers(context: typer.Context, workers: int, host: str, port: int, store: str) -> int:
    """``serve --workers N``: check the store, reserve the address, supervise N ``serve`` processes
    listening on it with SO_REUSEPORT (the same options otherwise); the exit status."""
    import trio

    from .store import open_store
    from .web.workers import reserve_address, supervise, worker_command

    if workers < 1:
        fail("--workers: must be at least 1")
    if store == "memory":
        fail("--workers: several processes need a shared store (--store sqlite:PATH or postgresql://…); "
             "the memory store lives inside one process")
    try:  # once here, so a wrong or too-new store is one message, not one per worker
        checked = open_store(store)
    except (ValueError, OSError) as error:
        fail(f"--store {store}: {error}")
    trio.run(checked.close)
    try:
        reserved = reserve_address(host, port)
    except OSError as error:
        reason = "address already in use" if error.errno == errno.EADDRINUSE else (error.strerror or str(error))
        fail(f"cannot listen on {host}:{port}: {reason}")
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
        say(f"{workers} workers on http://{host}:{chosen}; Ctrl+C to stop")
        return supervise(lambda: worker_command(arguments), workers, env=env, say=say)


def _print_summary(results: list[CaseResult], loaded: list[Any] | None = None,
                   mode: str = "virtual") -> list[CaseResult]:
    """Print one table per scenario and the verdict line (last on stdout); return the verdicts.

    ``loaded``: the scenarios run, whose sub-cases left out by their ``modes`` are listed as skipped."""
    from rich.measure import Measurement

    from .runner.report import in_run_order, skipped_results, verdict_line

    out = _stdout_console()
    if loaded is not None:
        skipped = [result for scenario in loaded for result in skipped_results(scenario, mode)]
        results = in_run_order(loaded, results, skipped)
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
            _print_stacked(out, scenario, cases)
    print(verdict_line(results), flush=True)
    return results


def _wide_table(scenario: str, cases: list[CaseResult]) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"scenario {scenario}"), title_justify="left", show_lines=False)
    for column, justify in (("case", "left"), ("variant", "left"), ("n", "right"), ("success", "right"),
                            ("failure", "right"), ("timeout", "right"), ("misattr.", "right"),
                            ("statuses", "left"), ("waited p50/p95", "right"), ("expect", "right"),
                            ("thresholds", "left")):
        table.add_column(Text(column), justify=justify)  # type: ignore[arg-type]
    for result in cases:
        row = result.summary
        variant = ",".join(filter(None, (result.variant, f"party={result.party}" if result.named_party else "")))
        if result.skipped is not None:
            table.add_row(Text(result.case), Text(variant), Text("-"), *(Text("") for _ in range(7)),
                          Text(f"skipped: {result.skipped}"), style="dim")
            continue
        cells = (result.case, variant, str(row["n"]), f"{row['success_rate']:.1%}", f"{row['failure_rate']:.1%}",
                 f"{row['timeout_rate']:.1%}", f"{row['misattributed_rate']:.1%}", row["statuses"],
                 f"{row['p50_waited_s']:.2f}/{row['p95_waited_s']:.2f} s", _expectations(row),
                 row["thresholds"].replace("; ", "\n"))
        table.add_row(*map(Text, cells), style=None if result.passed else "red")  # Text: names are not markup
    return table


def _expectations(row: dict[str, object]) -> str:
    return f"{row['expectations']}" + (f" ({row['errors']} errors)" if row["errors"] else "")


def _print_stacked(out: Console, scenario: str, cases: list[CaseResult]) -> None:
    """The narrow layout: a few short lines per case, nothing cut."""
    from rich.text import Text

    out.print(Text(f"scenario {scenario}", style="italic"))
    for result in cases:
        row = result.summary
        if result.skipped is not None:
            out.print(Text(f"- {result.label}  skipped: {result.skipped}", style="dim"))
            continue
        lines = [
            f"{'✓' if result.passed else '✗'} {result.label}  n {row['n']}, expect {_expectations(row)}",
            f"    success {row['success_rate']:.1%}  failure {row['failure_rate']:.1%}  "
            f"timeout {row['timeout_rate']:.1%}  misattr. {row['misattributed_rate']:.1%}",
            f"    statuses {row['statuses']}  waited p50/p95 {row['p50_waited_s']:.2f}/{row['p95_waited_s']:.2f} s",
            *(f"    {text}" for text in row["thresholds"].split("; ") if text != "-"),
        ]
        out.print(Text("\n".join(lines), style="" if result.passed else "red"))


def _scenario_files(paths: list[Path]) -> list[Path]:
    """The scenario files named, and the ``.toml`` files of the folders named.

    Bots given where scenarios belong get one sentence, not a field error per bot field: a folder
    (or a file) holding only bots is a common first mistake (``harness run scenarios/bots``).
    """
    from .core.bots import read_document

    def is_bot(file: Path) -> bool:
        try:
            document = read_document(file)
        except ValueError:
            return False  # the scenario loader says what is wrong with it
        return isinstance(document, dict) and "blocks" in document and "cases" not in document

    files: list[Path] = []
    for path in paths:
        found = sorted(path.glob("*.toml")) if path.is_dir() else [path]
        if path.is_dir() and not found:
            fail(f"{path}: no scenario files (*.toml) in this folder")
        if found and all(is_bot(file) for file in found):
            what = "these are bots" if path.is_dir() else "this is a bot"
            fail(f"{path}: {what}, not scenarios; run a scenario file that names its bot "
                 "(bot = \"bots/….toml\"), e.g. harness run scenarios/payment.toml")
        files.extend(file for file in found if not (path.is_dir() and is_bot(file)))
    return files


class _Interruption:
    """Turns SIGTERM into the Ctrl+C a run already stops for, and remembers which signal came."""

    def __init__(self) -> None:
        self.signal = signal.SIGINT

    def __enter__(self) -> _Interruption:
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.signal = signal.SIGTERM
        signal.raise_signal(signal.SIGINT)  # trio (or the default handler) delivers it as KeyboardInterrupt

    def __exit__(self, *exc_info: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED[self.signal]


@app.command()
def run(
    scenarios: Annotated[list[Path], typer.Argument(metavar="SCENARIO", help="Scenario files (or folders of them).")],
    target: Annotated[list[str] | None, typer.Option(
        metavar="URL", help="URL of a live gate; omitted: in-process virtual time. Repeat it for several gates on one "
                            "store: conversations start on each in turn, each call goes to another one.")] = None,
    out: Annotated[Path | None, typer.Option(metavar="FILE", help="Write every row to this .parquet or .csv file.")] = None,
    seed: Annotated[int | None, typer.Option(metavar="N", help="Override the scenarios' seeds.")] = None,
    concurrency: Annotated[int, typer.Option(metavar="N", help="With --target: requests in flight at most.")] = 64,
    api_token: Annotated[str | None, typer.Option(
        envvar="HARNESS_API_TOKEN", show_envvar=True, metavar="TOKEN", help="With --target: the gate's --api-token.")] = None,
    workers: Annotated[int | None, typer.Option(
        metavar="N",
        help="Virtual time: processes to spread sub-cases (and large cases) over (default: one per core for large runs).")] = None,
    driver: Annotated[str, typer.Option(
        metavar="asgi|core",
        help="Virtual time: asgi drives the real Quart app in process; core the same webhook handling without HTTP.")] = "asgi",
    dask: Annotated[str | None, typer.Option(
        "--dask", metavar="ADDRESS",
        help="Virtual time: spread the work over the Dask cluster at ADDRESS (tcp://host:8786); needs the dask extra.")] = None,
    junit_xml: Annotated[Path | None, typer.Option(
        "--junit-xml", metavar="FILE", help="Write a JUnit report: one testcase per case or sub-case.")] = None,
    summary_json: Annotated[Path | None, typer.Option(
        "--summary-json", metavar="FILE", help="Write the per-case summary as JSON (SPEC §12).")] = None,
    time_scale: Annotated[float, typer.Option(
        "--time-scale", metavar="FACTOR", help="Multiply every duration (delays, gaps, retries, arrivals, timeouts, time thresholds) "
        "by this factor, e.g. 0.1 for a quick live rehearsal.")] = 1.0,
) -> None:
    """Run scenarios and print a summary per case. Exit 1 if an expectation or threshold fails.

    Ctrl+C or SIGTERM stops the run within seconds and still writes --out, --junit-xml and
    --summary-json for the conversations that finished (exit 130 or 143).
    """
    if driver not in ("asgi", "core"):
        fail(f"--driver: one of asgi, core; got {driver!r}")
    if not 0 < time_scale < float("inf"):
        fail(f"--time-scale: a positive number; got {time_scale!r}")
    if out is not None and out.suffix.lower() not in (".parquet", ".csv"):
        fail(f"--out {out}: results go to a .parquet or .csv file")
    for option, report_path in (("--junit-xml", junit_xml), ("--summary-json", summary_json)):
        if report_path is not None and report_path.is_dir():
            fail(f"{option} {report_path}: is a folder; give a file name")
    if dask is not None and target is not None:
        fail("--dask spreads a virtual-time run; it cannot be combined with --target")
    if concurrency < 1:
        fail(f"--concurrency: must be at least 1, got {concurrency}")
    from .runner.scenario import InvalidScenario, load_scenario, slower_than_asked, time_scaled

    loaded, invalid = [], False
    for path in _scenario_files(scenarios):
        try:
            scenario = time_scaled(load_scenario(path, seed=seed), time_scale)  # refused here, before any run
            notes = slower_than_asked(scenario, time_scale)
            loaded.append(scenario)
            for note in notes:
                say(f"note: {note}")
        except InvalidScenario as error:
            invalid = True
            for line in error.problems:
                say(line)
    if invalid:
        raise typer.Exit(2)
    if not loaded:
        fail("no scenario files given")

    import time

    from .runner import ResultsWriter, RunError, RunOptions, stream_loaded_scenario, to_frame
    from .runner.api import runnable
    from .runner.engine import RunInterrupted
    from .runner.progress import progress_display
    from .runner.report import Verdicts, write_junit_xml, write_summary_json

    # Rows stream from the runner piece by piece: appended to --out as they come and tallied per
    # sub-case (counts, measured waits, a few examples), so memory does not grow with the rows.
    total = sum(subcase.conversations for scenario in loaded
                for subcase in runnable(scenario, live=target is not None).subcases)
    results: list[CaseResult] = []
    durations_s: dict[str, float] = {}
    interrupted: int | None = None  # the exit code, once a signal stopped the run
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(ResultsWriter(out)) if out is not None else None
        interruption = stack.enter_context(_Interruption())
        executor = stack.enter_context(_dask_executor(dask)) if dask is not None else None
        for scenario in loaded:
            conversations = sum(subcase.conversations for subcase in runnable(scenario, live=target is not None).subcases)
            began = time.monotonic()
            verdicts = Verdicts()
            try:
                with progress_display(scenario.name, conversations, console=_stderr_console()) as progress:
                    pieces = stream_loaded_scenario(scenario, RunOptions(
                        target=target, concurrency=concurrency, workers=workers, executor=executor, driver=driver,
                        progress=progress, api_token=api_token))  # time-scaled when loaded
                    for piece in pieces:
                        if writer is not None:
                            writer.write(piece)
                        verdicts.add(piece)
            except RunError as error:
                fail(f"{scenario.source}: {error}", 1)
            except (RunInterrupted, KeyboardInterrupt) as error:
                with _ignoring_interrupts():  # writing what finished must not be cut short by a second Ctrl+C
                    if isinstance(error, RunInterrupted) and error.finished:
                        piece = to_frame(error.finished)
                        if writer is not None:
                            writer.write(piece)
                        verdicts.add(piece)
                interrupted = interruption.exit_code
            finally:
                results.extend(verdicts.results())
                durations_s[scenario.name] = durations_s.get(scenario.name, 0.0) + time.monotonic() - began
            if interrupted is not None:
                break
    with _ignoring_interrupts():
        finished = sum(result.summary["n"] for result in results if result.party == 0)  # a row per party
        if writer is not None:
            say(f"{writer.rows} rows written to {out}")
        if interrupted is not None:
            say(f"interrupted: {finished} of {total} conversations finished")
        else:
            results = _print_summary(results, loaded, "live" if target is not None else "virtual")
        if junit_xml is not None:
            write_junit_xml(results, junit_xml, durations_s=durations_s)
        if summary_json is not None:
            write_summary_json(results, summary_json, interrupted=interrupted is not None)
    if interrupted is not None:
        raise typer.Exit(interrupted)
    raise typer.Exit(0 if all(result.passed for result in results) else 1)


@contextlib.contextmanager
def _ignoring_interrupts() -> Iterator[None]:
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


@contextlib.contextmanager
def _dask_executor(address: str) -> Iterator[Executor]:
    """A ``concurrent.futures`` executor on the Dask cluster at ``address``."""
    try:
        from distributed import Client
    except ImportError:
        fail("--dask needs Dask: python3 -m pip install 'webhook-gate-harness[dask]'")
    try:
        client = Client(address, timeout=10)
    except OSError as error:
        fail(f"--dask {address}: cannot reach the scheduler: {error}")
    with client:
        yield client.get_executor()


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(
        metavar="FILE", help="Bot and scenario files (.toml or .json).")]) -> None:
    """Validate bot and scenario files; list every problem. Exit 0, or 2 if any is invalid."""
    from .core.bots import InvalidBot, parse_bot, read_document
    from .runner.scenario import InvalidScenario, parse_scenario

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
                say(line)
        else:
            print(f"{path}: valid {kind}", flush=True)
    raise typer.Exit(2 if invalid else 0)


@app.command()
def report(results: Annotated[Path, typer.Argument(
        metavar="RESULTS", help="A results file from `harness run --out` (.parquet or .csv).")]) -> None:
    """Print the summary table of a saved results file. Exit 1 if it records a failure."""
    from .runner.report import Verdicts
    from .runner.results import iter_results

    tallied = Verdicts()  # a piece (row group) at a time: the file is never held whole
    try:
        for piece in iter_results(results):
            tallied.add(piece)
    except (ValueError, OSError) as error:
        fail(f"{results}: {error}" if str(results) not in str(error) else str(error))
    verdicts = tallied.results()
    _print_summary(verdicts)
    raise typer.Exit(0 if all(verdict.passed for verdict in verdicts) else 1)


@app.command()
def delays(
    store: Annotated[str, typer.Option(help="The gate's store: sqlite:PATH or postgresql://…")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the rows (.csv or .parquet).")],
    bot: Annotated[str | None, typer.Option(help="Only this bot (exact id).")] = None,
    block: Annotated[str | None, typer.Option(help="Only this webhook block.")] = None,
) -> None:
    """Export every resolved wait as a delay observation (timeouts right-censored). Exit 2 on a bad store."""
    from .store.export import ExportError, export_delays, write_delays

    try:
        frame = export_delays(store, bot=bot, block=block)
        write_delays(frame, out_file)
    except ExportError as error:
        fail(str(error))
    except OSError as error:
        fail(f"--out {out_file}: cannot be written: {error}")
    print(f"{len(frame)} waits ({int(frame['censored'].sum())} timed out, "
          f"{int(frame['late_delay_s'].notna().sum())} with a late call) written to {out_file}")

def main() -> None:
    app()


if __name__ == "__main__":
    main()
