"""The book's committed outputs are clean: no stderr, errors, warnings, progress bars or
machine paths (``scripts/run_notebook.py``'s ``output_problems``, which also reports them
when a chapter is published)."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_SPEC = importlib.util.spec_from_file_location("run_notebook", ROOT / "scripts" / "run_notebook.py")
run_notebook = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(run_notebook)

#: chapters whose committed outputs predate these rules, until they are republished
NOT_YET_REPUBLISHED = {"05b_distilling_a_codec"}


@pytest.mark.parametrize("path", sorted((ROOT / "book").glob("*.ipynb")), ids=lambda p: p.stem)
def test_committed_outputs_are_clean(path):
    if path.stem in NOT_YET_REPUBLISHED:
        pytest.xfail("published before the output rules; republish it and remove it from NOT_YET_REPUBLISHED")
    assert run_notebook.output_problems(nbformat.read(path, as_version=4)) == []
