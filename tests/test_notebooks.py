"""Every committed notebook runs in the tiny profile and keeps its checked outputs.

For each notebooks/NN_*.ipynb, papermill injects the tiny profile's parameters (no execution) into a
copy at build/nbval/notebooks/ that keeps the committed outputs, and `pytest --nbval-lax` runs the
copy in a subprocess: every cell must run without error, and cells whose first line is
`# NBVAL_CHECK_OUTPUT` must print what the committed (cpu-profile) run printed. The copy runs in
build/nbval/notebooks, so the notebook's relative `../figures` and `../results` land in build/nbval.

Register a notebook's tiny parameters in helpers.running.reproduce.PROFILES; each tiny run must take about
2 minutes at most (TINY_BUDGET_SECONDS, with slack for a busy machine).
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from helpers.running.reproduce import PROFILES, find_notebooks, profile_parameters

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "nbval"
NOTEBOOKS = find_notebooks(REPO / "notebooks") if (REPO / "notebooks").is_dir() else []
TINY_BUDGET_SECONDS = 240


def tiny_copy(notebook: Path) -> Path:
    """The notebook with tiny-profile parameters injected (committed outputs kept) under build/nbval."""
    nb = load_notebook_node(str(notebook))  # papermill's reader: also a notebook it never executed gets its metadata
    parameters = profile_parameters(notebook, "tiny")
    if parameters:
        nb = parameterize_notebook(nb, parameters)
    target = BUILD / "notebooks" / notebook.name
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(target))
    return target


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_tiny_and_keeps_checked_outputs(notebook):
    if "tiny" not in PROFILES.get(notebook.stem, {}):
        pytest.fail(f"{notebook.name} has no tiny-profile parameters: add PROFILES[{notebook.stem!r}]['tiny'] "
                    "in helpers/reproduce.py (a tiny-<family> model, contexts of tens of tokens) so CI can run it.")
    copy = tiny_copy(notebook)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-cell-timeout=300",
         "-p", "no:cacheprovider", "-q", "-o", "addopts=", str(copy.relative_to(REPO))],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    print(f"{notebook.name}: nbval (tiny profile) {seconds:.0f} s")
    assert proc.returncode == 0, (
        f"{notebook.name} failed under nbval in the tiny profile (copy: {copy.relative_to(REPO)}). A failing "
        "# NBVAL_CHECK_OUTPUT cell means the notebook now prints something else than its committed run: "
        "fix the change, or re-run `make reproduce` and commit the new outputs.\n" + proc.stdout[-6000:])
    assert seconds < TINY_BUDGET_SECONDS, (f"{notebook.name} took {seconds:.0f} s in the tiny profile; "
                                           "shrink its tiny parameters in helpers.running.reproduce.PROFILES")
