"""The analysts' notebooks run top to bottom (small sizes) and are stored without outputs.

Executed with nbclient from a plain pytest test: nbmake's collection does not work beside
pytest-trio's ``trio_mode`` (see shared/NOTES.md), and one test command is simpler for everyone.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Papermill-style: a cell inserted after the one tagged "parameters" shrinks the run for CI.
SMALL = {
    "timeout_exploration.ipynb": "conversations = 150\ntimeouts = [5, 30, 120, 300]\nmax_conversations = 300\nfine_points = 4",
    "key_mismatch.ipynb": "conversations = 40",
    "results_from_file.ipynb": "",
    "fit_processor_delays.ipynb": "conversations = 150\ntimeouts = [120, 150, 180, 210]\n"
                                  "decision_timeouts = [60, 120, 180, 240]\ndecision_conversations = 200\nn_boot = 200",
    "decide_from_gate.ipynb": "conversations = 200\ndecision_timeouts = [2, 4, 8, 16]\nn_boot = 200",
    "two_events.ipynb": "conversations = 60\ngaps = [-4, -1, 0, 1, 4]",
}

pytestmark = pytest.mark.slow


def test_every_notebook_has_a_small_setting() -> None:
    assert {path.name for path in NOTEBOOKS} == set(SMALL)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path: Path) -> None:
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, f"strip outputs of {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_top_to_bottom(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    position = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(position + 1, nbformat.v4.new_code_cell(SMALL[path.name]))
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the notebook should draw its plots"
    if path.name == "timeout_exploration.ipynb":
        text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        assert "The shortest timeout that gives ≥ 99% success for this delay distribution is" in text \
            or "No timeout up to" in text
    if path.name == "fit_processor_delays.ipynb":
        text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        assert "Best fit: lognormal" in text and "observed: " in text  # the shipped data is a lognormal mixture
        assert "Cost decision (3 € per late payer, 0.002 € per second of waiting): the cheapest timeout is" in text
    if path.name == "decide_from_gate.ipynb":
        text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        assert "Median delay: naive" in text and "Decision: timeout" in text
