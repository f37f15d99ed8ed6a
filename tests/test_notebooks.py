"""The two notebooks run end to end in SMALL mode, and are committed without outputs."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_both_notebooks_exist_and_are_stored_without_outputs():
    assert {p.name for p in NOTEBOOKS} == {"regularized_lstm.ipynb", "attention.ipynb"}
    for p in NOTEBOOKS:
        nb = nbformat.read(p, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{p.name}: strip outputs"
        assert 'os.environ.get("LSTMKIT_NOTEBOOK_MODE", "SMALL")' in nb.cells[1].source


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_end_to_end_in_small_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("LSTMKIT_NOTEBOOK_MODE", "SMALL")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "mode: SMALL" in text
    if path.stem == "regularized_lstm":
        assert "epoch 2: train NLL" in text and "beam 4:" in text
    else:
        assert "CER on these 8" in text
    assert list(tmp_path.glob("runs/*/metrics.jsonl"))             # the run folder went to the working dir
