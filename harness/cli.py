"""The ``harness`` command: serve, run, validate, report (SPEC §5).

Exit codes: 0 all good; 1 an expectation or threshold failed; 2 an input file is invalid.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .core.bots import Bot, InvalidBot, load_bot

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="A webhook gate for chatbot flows, and a scenario harness that drives it.",
)
err = Console(stderr=True, soft_wrap=True)
out = Console()

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
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    bots: Annotated[Optional[list[Path]], typer.Option("--bots", help="Bot files or folders to load.")] = None,
    store: Annotated[str, typer.Option(help="memory, or sqlite:PATH")] = "memory",
    public_url: Annotated[Optional[str], typer.Option(help="Base URL in conversation and webhook URLs.")] = None,
    max_body: Annotated[int, typer.Option(help="Largest webhook body accepted, in bytes.")] = 1024 * 1024,
) -> None:
    """Run the webhook gate on hypercorn (trio worker)."""
    import trio

    from .core.gate import Gate
    from .server import serve as serve_gate
    from .store import open_store

    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    if max_body < 1:
        err.print("--max-body: must be at least 1 byte")
        raise typer.Exit(2)
    loaded = load_bots_or_exit(list(bots or []))
    try:
        gate_store = open_store(store)
    except ValueError as error:
        err.print(f"--store: {error}")
        raise typer.Exit(2) from None
    gate = Gate(store=gate_store, public_url=public_url or f"http://{host}:{port}")
    for bot in loaded:
        existing = gate_store.get_bot(bot.id)
        if existing is None:
            gate.add_bot(bot)
        elif existing.to_dict() != bot.to_dict():
            err.print(f"bot {bot.id!r}: the store holds another version; keeping the stored one")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(lambda task_status: serve_gate(
                gate, host=host, port=port, max_body=max_body, public_url=public_url, task_status=task_status))
            names = ", ".join(bot.id for bot in gate_store.bots()) or "none"
            err.print(f"webhook gate on {url} (bots: {names}); Ctrl+C to stop", highlight=False)

    try:
        trio.run(main)
    except KeyboardInterrupt:
        err.print("stopped")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
