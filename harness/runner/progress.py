"""Progress of a run: how many conversations have started and finished (SPEC §10).

The runner reports to a :class:`Progress` — two methods, both safe to call from any thread
and cheap enough to call once per conversation:

- ``started(n=1)`` when a conversation's start request has returned (its wait is open);
- ``finished(n=1)`` when its result row is complete.

Displays (context managers; leaving one prints its last state):

- :class:`TerminalProgress` — a rich bar on an interactive terminal;
- :class:`PlainProgress` — a plain line at least every ``interval_s`` seconds (CI logs, files);
- :class:`NotebookProgress` — a tqdm bar (``tqdm.auto``: a widget in Jupyter);
- :data:`NO_PROGRESS` — reports nothing.

:func:`progress_display` picks the first two by whether the stream is a terminal.

``run_loaded_scenario(scenario, RunOptions(progress=P))`` hands ``P.started`` and ``P.finished`` to the engine as
its ``on_conversation_started`` / ``on_conversation_done`` callbacks; work spread over processes
reports both in batches (per finished shard on a foreign executor).
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import IO, Any, Protocol, runtime_checkable

__all__ = ["Progress", "NO_PROGRESS", "Counts", "TerminalProgress", "PlainProgress", "NotebookProgress",
           "progress_display"]


@runtime_checkable
class Progress(Protocol):
    """Where the runner reports conversations starting and finishing."""

    def started(self, n: int = 1) -> None:
        """``n`` more conversations have started (their start request returned)."""

    def finished(self, n: int = 1) -> None:
        """``n`` more conversations have finished (their result row is complete)."""


class _NoProgress:
    def started(self, n: int = 1) -> None:
        pass

    def finished(self, n: int = 1) -> None:
        pass


NO_PROGRESS: Progress = _NoProgress()

class Counts:
    """Thread-safe started/finished counters out of ``total``: the base of every display."""

    def __init__(self, description: str, total: int) -> None:
        self.description, self.total = description, total
        self._started = self._finished = 0
        self._lock = threading.Lock()
        self._began = time.monotonic()

    def started(self, n: int = 1) -> None:
        with self._lock:
            self._started += n
        self._changed()

    def finished(self, n: int = 1) -> None:
        with self._lock:
            self._finished += n
        self._changed()

    def counts(self) -> tuple[int, int]:
        """``(started, finished)``; started is never shown below finished."""
        with self._lock:
            return max(self._started, self._finished), self._finished

    def elapsed_s(self) -> float:
        return time.monotonic() - self._began

    def line(self) -> str:
        """``payment: 120/200 started, 80/200 finished (40%), 12 s``."""
        started, finished = self.counts()
        share = f" ({finished / self.total:.0%})" if self.total else ""
        return (f"{self.description}: {started}/{self.total} started, {finished}/{self.total} finished{share}, "
                f"{self.elapsed_s():.0f} s")

    def _changed(self) -> None:
        """Displays that redraw on every change override this."""

    def __enter__(self) -> Counts:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Show the last state and release the display."""


class PlainProgress(Counts):
    """A plain line on ``stream`` when the run starts, every ``interval_s`` seconds, and at the end.

    For logs that are not a terminal (CI): a timer thread writes the lines, so a run that waits
    for long timeouts still shows it is alive, and a fast run writes just two lines.
    """

    def __init__(self, description: str, total: int, *, stream: IO[str], interval_s: float = 10.0) -> None:
        super().__init__(description, total)
        self.stream, self.interval_s = stream, interval_s
        self._stop = threading.Event()
        self._write(f"{description}: {total} conversations")
        self._thread = threading.Thread(target=self._tick, name="harness-progress", daemon=True)
        self._thread.start()

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write(self.line())

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._write(self.line())


class TerminalProgress(Counts):
    """A rich progress bar (finished out of total, with the started count) on a terminal console."""

    def __init__(self, description: str, total: int, *, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        super().__init__(description, total)
        self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("started {task.fields[started]}"), TextColumn("finished"),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)
        self._task = self._bar.add_task(description, total=total, started=0)
        self._bar.start()

    def _changed(self) -> None:
        started, finished = self.counts()
        self._bar.update(self._task, completed=finished, started=started)

    def close(self) -> None:
        self._bar.stop()


class NotebookProgress(Counts):
    """A tqdm bar (``tqdm.auto``: a widget in Jupyter, text elsewhere) of finished conversations."""

    def __init__(self, description: str, total: int) -> None:
        from tqdm.auto import tqdm

        super().__init__(description, total)
        self._bar = tqdm(total=total, desc=description, unit="conv")
        self._shown = 0

    def _changed(self) -> None:
        started, finished = self.counts()
        with self._lock:  # tqdm's update is relative: hand it each finish exactly once
            step, self._shown = finished - self._shown, finished
        self._bar.set_postfix_str(f"started {started}", refresh=False)
        if step:
            self._bar.update(step)

    def close(self) -> None:
        self._changed()
        self._bar.close()


def progress_display(description: str, total: int, *, console: Any, interval_s: float = 10.0) -> Counts:
    """A bar when ``console`` (a rich Console) is a terminal, plain lines on its file otherwise."""
    if console.is_terminal:
        return TerminalProgress(description, total, console=console)
    return PlainProgress(description, total, stream=console.file, interval_s=interval_s)
