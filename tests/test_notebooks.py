"""The notebooks: each one runs top to bottom on a fresh kernel, and each is committed with its outputs.

Executed headless with nbclient, as a reader's Jupyter would run them: kernel `python3`, working directory
`notebooks/` (their first cell puts the repository root on sys.path), one torch thread. The notebook is executed
in memory: the committed file, outputs included, is never overwritten. The first five take 2-3 minutes on 2 CPU cores
(notebook 05 trains for 25 steps and is about half of it), notebook 06 about a minute more; they use the shipped
toy base model (models/), so nothing is trained beforehand.
"""
import os

import pytest

from conftest import ENV, ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NB_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = [
    "01_soft_and_fuzzy_tokens.ipynb",
    "02_gaussian_logprob.ipynb",
    "03_shadow_greedy_stopping.ipynb",
    "04_rloo_and_pass_at_k.ipynb",
    "05_train_soft_deploy_hard.ipynb",
    "06_gradient_signal.ipynb",
]


def test_the_notebooks_are_there():
    assert sorted(f for f in os.listdir(NB_DIR) if f.endswith(".ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_with_outputs(name):
    """Readable on a code-hosting site: a markdown introduction naming the paper's equations or appendix, every
    code cell executed in order, no error outputs, and at least one figure."""
    nb = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and ("Eq." in first.source or "App." in first.source), name
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), f"{name}: not run top to bottom"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], f"{name}: committed with an error"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no figure"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_runs_top_to_bottom(name):
    nb = nbformat.read(os.path.join(NB_DIR, name), as_version=4)      # a copy in memory: the file stays as committed
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": NB_DIR}})
    client.execute(env=ENV)                                           # raises CellExecutionError on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
