"""Rows stream out of a run in bounded pieces: the frame and the files are the ones a whole run
gives, while no piece holds more than its share of conversations."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.runner import (
    ResultsWriter,
    RunOptions,
    as_scenario,
    concat_results,
    load_results,
    run_scenario,
    save_results,
    shards,
    stream_loaded_scenario,
    to_frame,
)
from harness.runner.report import Verdicts, case_results

from .conftest import BOTS

PAYLOAD = {"data": {"amount": 42, "id": "pay_1", "items": [{"sku": "A1"}]}}
MIXED = {
    "name": "mixed", "bot": str(BOTS / "payment.toml"), "seed": 3,
    "defaults": {"payload": PAYLOAD, "timeout_s": 30},
    "cases": [
        {"name": "big", "conversations": 230, "arrival_rate": 10, "delay_s": {"dist": "exponential", "mean": 25},
         "expect": {"outcome": "success"}, "thresholds": ["success_rate >= 0.5"]},
        {"name": "errors_first", "conversations": 30, "key": "missing", "delay_s": 1},  # no outcome: empty categories
        {"name": "other", "conversations": 70, "key": "other", "delay_s": 2},
        {"name": "sweep", "conversations": 40, "timeout_s": [5, 60], "delay_s": {"dist": "uniform", "low": 0, "high": 20},
         "signature": "valid"},
    ],
}
SMALL_PIECES = 50


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards, "PIECE_CONVERSATIONS", SMALL_PIECES)


def whole_run(document: dict) -> pd.DataFrame:
    """The reference: every sub-case in one trio run against one gate, typed at once."""
    return to_frame(shards.run_virtual(as_scenario(document), driver="core"))


def without_keys(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="conversation_key")


def test_pieces_are_bounded_in_order_and_give_the_rows_of_one_whole_run(small_pieces: None) -> None:
    pieces = list(stream_loaded_scenario(as_scenario(MIXED), RunOptions(workers=1, driver="core")))
    # `other` (70 conversations) stays whole: its keys depend on each other.
    assert [len(piece) for piece in pieces] == [46, 46, 46, 46, 46, 30, 70, 40, 40]
    frame = concat_results(pieces)
    reference = whole_run(MIXED)
    pd.testing.assert_frame_equal(without_keys(frame), without_keys(reference))
    assert list(frame["case"].cat.categories) == ["big", "errors_first", "other", "sweep"]
    assert frame["conversation_key"].notna().sum() == reference["conversation_key"].notna().sum() == 410
    # The public entry point is the same path.
    pd.testing.assert_frame_equal(without_keys(run_scenario(MIXED, workers=1, driver="core")), without_keys(reference))


TWO_PARTIES = {
    "name": "two", "bot": str(BOTS / "payment_two_events.toml"), "seed": 5,
    "cases": [
        {"name": "pair", "conversations": 120, "parties": [
            {"block": "wait_authorised", "delay_s": {"dist": "uniform", "low": 0, "high": 6},
             "payload": {"type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1"}}}},
            {"block": "wait_captured", "delay_s": {"dist": "uniform", "low": 0, "high": 6},
             "payload": {"type": "checkout.session.completed", "data": {"object": {"amount_total": 4200}}}}]},
        {"name": "pair_other", "conversations": 70, "parties": [
            {"block": "wait_authorised", "delay_s": 1, "payload": {"data": {"object": {"id": "pi_1"}}}},
            {"block": "wait_captured", "delay_s": 2, "key": "other",
             "payload": {"data": {"object": {"amount_total": 4200}}}}]},
    ],
}


def test_a_case_with_parties_is_cut_by_conversation_and_keeps_its_seeded_keys(small_pieces: None) -> None:
    pieces = list(stream_loaded_scenario(as_scenario(TWO_PARTIES), RunOptions(workers=1, driver="core")))
    # A row per party: 40 conversations (80 rows) a piece; a party with key = "other" keeps its case whole.
    assert [(len(piece), set(piece["case"].astype(str))) for piece in pieces] == [
        (80, {"pair"}), (80, {"pair"}), (80, {"pair"}), (140, {"pair_other"})]
    # Within a cut case, each piece lists its parties in turn; the rows, keys included, are the whole run's.
    in_order = ["case", "party", "conversation"]
    frame = concat_results(pieces).sort_values(in_order, kind="stable").reset_index(drop=True)
    reference = whole_run(TWO_PARTIES)
    pd.testing.assert_frame_equal(frame, reference.sort_values(in_order, kind="stable").reset_index(drop=True))
    assert frame["conversation_key"].notna().all()
    # The frame run_scenario returns lists them as the whole run does: party by party, in order.
    returned = run_scenario(TWO_PARTIES, workers=1, driver="core")
    pd.testing.assert_frame_equal(returned, reference)
    assert list(returned["party"][:121]) == [0] * 120 + [1]


def test_verdicts_tallied_piece_by_piece_are_those_of_the_whole_frame(small_pieces: None) -> None:
    document = {**MIXED, "cases": [{**case, "thresholds": ["p50(waited_s) <= 1", "success_rate >= 0.99"]}
                                   if case["name"] == "sweep" else case for case in MIXED["cases"]]}
    verdicts = Verdicts()
    for piece in stream_loaded_scenario(as_scenario(document), RunOptions(workers=1, driver="core")):
        verdicts.add(piece)
    streamed = verdicts.results()
    whole = case_results(whole_run(document))
    assert [(r.label, r.summary["n"], r.passed) for r in streamed] == [
        ("big", 230, False), ("errors_first", 30, True), ("other", 70, True),
        ("sweep[timeout_s=5]", 40, False), ("sweep[timeout_s=60]", 40, False)]
    # "big" is cut over five pieces: its failure message and examples are the ones of all its rows.
    without_key_prefixes = [(r.summary, r.message.count("#"), [e["conversation"] for e in r.examples],
                             [(t.expr, t.value, t.passed) for t in r.thresholds]) for r in streamed]
    assert without_key_prefixes == [(r.summary, r.message.count("#"), [e["conversation"] for e in r.examples],
                                     [(t.expr, t.value, t.passed) for t in r.thresholds]) for r in whole]
    assert "threshold failed: p50(waited_s) <= 1" in streamed[3].message


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_file_written_piece_by_piece_reads_back_as_the_whole_frame(tmp_path: Path, suffix: str,
                                                                     small_pieces: None) -> None:
    path = tmp_path / f"streamed{suffix}"
    with ResultsWriter(path) as writer:
        for piece in stream_loaded_scenario(as_scenario(MIXED), RunOptions(workers=1, driver="core")):
            writer.write(piece)
    assert writer.rows == 410
    frame = whole_run(MIXED)
    whole = save_results(frame, tmp_path / f"whole{suffix}")
    streamed = load_results(path)
    pd.testing.assert_frame_equal(without_keys(streamed), without_keys(load_results(whole)))
    if suffix == ".parquet":
        assert pq.ParquetFile(path).metadata.num_row_groups == 9  # a row group per piece, written as it came
        pd.testing.assert_frame_equal(without_keys(streamed), without_keys(frame))
        assert pd.read_parquet(path)["outcome"].dtype == "category"  # plain pandas reads categories too


def test_an_empty_writer_leaves_a_results_file_with_every_column(tmp_path: Path) -> None:
    with ResultsWriter(tmp_path / "empty.parquet"):
        pass
    assert list(load_results(tmp_path / "empty.parquet").columns) == list(to_frame([]).columns)
    with pytest.raises(ValueError, match=r"x\.json: results go to a \.parquet or \.csv file"):
        ResultsWriter(tmp_path / "x.json")


def test_cli_writes_pieces_and_summarises_the_same_as_the_whole_frame(tmp_path: Path, small_pieces: None) -> None:
    import json

    scenario = tmp_path / "mixed.json"
    scenario.write_text(json.dumps(MIXED))
    out, summary = tmp_path / "r.parquet", tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["run", str(scenario), "--driver", "core", "--workers", "1", "--out", str(out),
                                      "--summary-json", str(summary)])
    assert result.exit_code == 1, result.output  # some of "big" time out: its expectation fails
    assert "410 rows written to" in result.output
    assert pq.ParquetFile(out).metadata.num_row_groups == 9
    report = CliRunner().invoke(app, ["report", str(out)])
    # The verdict line (last on stdout) is the same from the streamed run and from the saved file.
    assert report.stdout.strip().splitlines()[-1] == result.stdout.strip().splitlines()[-1]
    assert "failed (mixed/big)" in result.stdout.strip().splitlines()[-1]
    cases = json.loads(summary.read_text())["scenarios"][0]["cases"]
    assert [case["n"] for case in cases] == [230, 30, 70, 40, 40]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_results_file_is_read_and_reported_piece_by_piece(tmp_path: Path, suffix: str, small_pieces: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.runner import results

    monkeypatch.setattr(results, "RESULTS_PER_CSV_PIECE", 64)  # the CSV in blocks of 64 lines
    path = tmp_path / f"r{suffix}"
    with ResultsWriter(path) as writer:
        for piece in stream_loaded_scenario(as_scenario(MIXED), RunOptions(workers=1, driver="core")):
            writer.write(piece)
    pieces = list(results.iter_results(path))
    assert [len(piece) for piece in pieces] == ([46, 46, 46, 46, 46, 30, 70, 40, 40] if suffix == ".parquet"
                                                else [64] * 6 + [26])
    whole = load_results(path)
    pd.testing.assert_frame_equal(concat_results(pieces), whole)
    report = CliRunner().invoke(app, ["report", str(path)])
    assert report.exit_code == 1  # "big" fails its expectation
    # The table and verdict of the file read in pieces are those of its rows at once.
    verdicts = Verdicts()
    for piece in pieces:
        verdicts.add(piece)
    assert [r.to_json() for r in verdicts.results()] == [r.to_json() for r in case_results(whole)]
    assert "failed (mixed/big)" in report.stdout.strip().splitlines()[-1]


def test_a_results_file_cut_short_is_refused_by_name(tmp_path: Path) -> None:
    path = save_results(whole_run(MIXED), tmp_path / "r.parquet")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = CliRunner().invoke(app, ["report", str(path)])
    assert result.exit_code == 2 and f"{path}: cannot read results" in result.stderr
