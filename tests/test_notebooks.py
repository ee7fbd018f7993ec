"""The notebooks in `notebooks/` run from top to bottom without an error (executed in a fresh kernel)."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def test_the_notebooks_are_there():
    assert [path.name for path in NOTEBOOKS] == [
        "01_quickstart_points_boxes_conversion.ipynb",
        "02_text_to_mask_heatmaps.ipynb",
        "03_fine_tuning_with_trainer.ipynb",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_executes_without_errors(path):
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},  # the notebooks find their files relative to notebooks/
    )
    client.execute()  # raises CellExecutionError, naming the cell and the error, if a cell fails
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, [f"{error['ename']}: {error['evalue']}" for error in errors]
