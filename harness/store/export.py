"""``harness delays``: every resolved wait a store holds, as delay observations (SPEC §15.7).

The gate's own record is the analyst's best source of callback delays, but a plain list of
the calls that made it in time is biased towards fast senders: a wait that timed out says only
"the call had not come by ``timeout_s``". So each row is an observation for survival analysis:

- resolved by a call: ``delay_s`` = ``waited_s`` (for ``received_early``, the held call's time
  minus the wait's opening, ``<= 0``), ``censored`` false;
- timed out: right-censored at its timeout (``delay_s`` = ``timeout_s``, ``censored`` true), and
  when a late call came for it, ``late_delay_s`` = ``timeout_s`` + the first late call's
  ``after_deadline_s`` — the earliest late call at that block after the wait's deadline and
  before the conversation's next wait there: the sender's real delay.

The tables are read directly with SQL (the column names the SQLite and PostgreSQL stores share),
read-only, so an export can run beside a live gate. :func:`harness.analysis.kaplan_meier` and
``fit_delays(values, censored=...)`` take the result.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["COLUMNS", "ExportError", "export_delays", "write_delays"]

COLUMNS = ["bot", "block", "opened_at", "timeout_s", "outcome", "reason", "delay_s", "censored", "late_delay_s"]
_SUFFIXES = (".csv", ".parquet")


class ExportError(ValueError):
    """The store or the output cannot be used; the message says which and why."""


def export_delays(store: str, *, bot: str | None = None, block: str | None = None) -> pd.DataFrame:
    """One row per resolved wait in ``store`` (``sqlite:PATH`` or ``postgresql://…``), oldest first.

    ``bot`` is an exact bot id, ``block`` a block name. Columns: :data:`COLUMNS` (times in unix
    seconds). Raise :class:`ExportError` for the memory store, a missing file or a database
    that is not a gate's.
    """
    waits, late, early = _read(store, bot, block)
    return _observations(waits, late, early)


def write_delays(frame: pd.DataFrame, out: Path) -> None:
    """Write an export as ``.csv`` or ``.parquet`` (by the suffix)."""
    if out.suffix.lower() not in _SUFFIXES:
        raise ExportError(f"--out {out}: must end in .csv or .parquet, got {out.suffix or 'no suffix'!r}")
    if out.suffix.lower() == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)


_WAITS = """
SELECT c.bot AS bot, w.key AS key, w.idx AS idx, w.block AS block, w.opened_at AS opened_at,
       w.deadline AS deadline, w.timeout_s AS timeout_s, w.outcome AS outcome, w.reason AS reason,
       w.waited_s AS waited_s
FROM waits w JOIN conversations c ON c.key = w.key
WHERE ({bot} IS NULL OR c.bot = {bot}) AND ({block} IS NULL OR w.block = {block})
"""
_LATE = """
SELECT l.key AS key, l.block AS block, l.at AS at, l.after_deadline_s AS after_deadline_s
FROM late_calls l JOIN conversations c ON c.key = l.key
WHERE ({bot} IS NULL OR c.bot = {bot}) AND ({block} IS NULL OR l.block = {block})
"""
_EARLY = """
SELECT e.key AS key, e.block AS block, e.at AS at
FROM early_calls e JOIN conversations c ON c.key = e.key
WHERE e.outcome = 'used' AND ({bot} IS NULL OR c.bot = {bot}) AND ({block} IS NULL OR e.block = {block})
"""


def _read(store: str, bot: str | None, block: str | None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    if store == "memory":
        raise ExportError("--store memory: the memory store lives inside a running gate and keeps nothing "
                          "to export; use the gate's --store sqlite:PATH or postgresql://…")
    if store.startswith("sqlite:"):
        return _read_sqlite(Path(store.removeprefix("sqlite:")), bot, block)
    if store.startswith(("postgresql://", "postgres://")):
        return _read_postgres(store, bot, block)
    raise ExportError(f"--store {store!r}: expected sqlite:PATH or postgresql://…")


def _read_sqlite(path: Path, bot: str | None, block: str | None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    if not path.is_file():
        raise ExportError(f"--store sqlite:{path}: no such file (looked for {path.resolve()})")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise ExportError(f"--store sqlite:{path}: cannot open: {error}") from None
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        _check_tables(tables, f"sqlite:{path}")
        params = {"bot": bot, "block": block}
        names = {"bot": ":bot", "block": ":block"}
        waits = pd.read_sql_query(_WAITS.format(**names), db, params=params)
        late = pd.read_sql_query(_LATE.format(**names), db, params=params)
        early = pd.read_sql_query(_EARLY.format(**names), db, params=params) if "early_calls" in tables else None
    except (sqlite3.Error, pd.errors.DatabaseError) as error:
        raise ExportError(f"--store sqlite:{path}: cannot be read as a gate store: {error}") from None
    finally:
        db.close()
    return waits, late, _empty_early() if early is None else early


def _read_postgres(url: str, bot: str | None, block: str | None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    try:
        import psycopg  # optional: only a PostgreSQL export needs it
    except ImportError:
        raise ExportError("--store postgresql://…: needs psycopg (pip install 'psycopg[binary]')") from None
    try:
        with psycopg.connect(url) as db:
            db.read_only = True
            with db.cursor() as cursor:
                cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
                tables = {name for (name,) in cursor.fetchall()}
                _check_tables(tables, "postgresql")
                names = {"bot": "%(bot)s::text", "block": "%(block)s::text"}
                params = {"bot": bot, "block": block}
                frames = []
                for query in (_WAITS, _LATE, *((_EARLY,) if "early_calls" in tables else ())):
                    cursor.execute(query.format(**names), params)
                    columns = [column.name for column in cursor.description or ()]
                    frames.append(pd.DataFrame(cursor.fetchall(), columns=columns))
    except psycopg.Error as error:
        raise ExportError(f"--store postgresql: cannot read the store: {error}") from None
    waits, late = frames[0], frames[1]
    early = frames[2] if len(frames) == 3 else _empty_early()
    return _as_numbers(waits), _as_numbers(late), _as_numbers(early)


def _check_tables(tables: set[str], shown: str) -> None:
    missing = sorted({"bots", "conversations", "waits", "late_calls"} - tables)
    if missing:
        raise ExportError(f"--store {shown}: not a gate store (no table {', '.join(missing)})")


def _empty_early() -> pd.DataFrame:
    return pd.DataFrame({"key": pd.Series(dtype=str), "block": pd.Series(dtype=str), "at": pd.Series(dtype=float)})


def _as_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """PostgreSQL hands back Decimals for numeric columns; make times and seconds floats."""
    for column in ("opened_at", "deadline", "waited_s", "at", "after_deadline_s"):
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def _observations(waits: pd.DataFrame, late: pd.DataFrame, early: pd.DataFrame) -> pd.DataFrame:
    waits = waits.sort_values(["key", "block", "opened_at", "idx"], ignore_index=True)
    # The next wait of the same conversation at the same block (open ones included) bounds
    # which late calls belong to this one.
    next_opened = waits.groupby(["key", "block"], sort=False)["opened_at"].shift(-1).to_numpy(dtype=float)
    resolved = waits["outcome"].notna().to_numpy()
    timed_out = resolved & (waits["reason"].astype("object") == "timeout").to_numpy()
    early_flag = (waits["reason"].astype("object") == "received_early").to_numpy()
    timeout = waits["timeout_s"].to_numpy(dtype=float)
    delay = np.where(timed_out, timeout, waits["waited_s"].to_numpy(dtype=float))
    late_delay = np.full(len(waits), np.nan)
    late_by = _group(late)
    early_by = _group(early)
    opened = waits["opened_at"].to_numpy(dtype=float)
    deadline = waits["deadline"].to_numpy(dtype=float)
    for row, (key, block) in enumerate(zip(waits["key"], waits["block"])):
        if timed_out[row] and (key, block) in late_by:
            calls = late_by[(key, block)]
            inside = (calls["at"] >= deadline[row]) & ~(calls["at"] >= next_opened[row])
            if inside.any():
                late_delay[row] = timeout[row] + float(calls.loc[inside].sort_values("at")["after_deadline_s"].iloc[0])
        elif early_flag[row]:
            held = early_by.get((key, block))
            before = held.loc[held["at"] <= opened[row], "at"] if held is not None else pd.Series(dtype=float)
            delay[row] = float(before.max()) - opened[row] if not before.empty else 0.0
    out = pd.DataFrame({
        "bot": waits["bot"].astype(str), "block": waits["block"].astype(str), "opened_at": opened,
        "timeout_s": waits["timeout_s"].astype("Int64"), "outcome": waits["outcome"], "reason": waits["reason"],
        "delay_s": delay, "censored": timed_out, "late_delay_s": late_delay,
    })[resolved]
    return out.sort_values(["opened_at", "bot", "block"], kind="stable", ignore_index=True)[COLUMNS]


def _group(calls: pd.DataFrame) -> dict[tuple[Any, Any], pd.DataFrame]:
    return {(key, block): rows for (key, block), rows in calls.groupby(["key", "block"], sort=False)}
