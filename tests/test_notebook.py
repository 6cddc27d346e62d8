"""compare.ipynb runs top to bottom, and is stored without outputs (they belong to a run, not to git)."""
import json

import pytest

from conftest import REPO

NOTEBOOK = REPO / "compare.ipynb"


def test_compare_notebook_is_stored_without_outputs():
    cells = [cell for cell in json.loads(NOTEBOOK.read_text())["cells"] if cell["cell_type"] == "code"]
    assert cells and all(cell["outputs"] == [] and cell["execution_count"] is None for cell in cells)


def test_compare_notebook_runs_top_to_bottom():
    nbformat = pytest.importorskip("nbformat", reason="notebook check: pip install -r requirements-dev.txt")
    nbclient = pytest.importorskip("nbclient", reason="notebook check: pip install -r requirements-dev.txt")
    pytest.importorskip("ipykernel", reason="notebook check: pip install -r requirements-dev.txt")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Executed in memory from the repository root; the file on disk keeps no outputs.
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}}).execute()
    tables = [output["data"]["text/markdown"] for cell in notebook.cells for output in cell.get("outputs", [])
              if "text/markdown" in output.get("data", {})]
    assert any("vox fixture" in table for table in tables)
