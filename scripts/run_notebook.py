"""Execute chapter notebooks top to bottom, in place, to publish their outputs.

    python scripts/run_notebook.py book/00_ruler.ipynb [more.ipynb ...]

The budget comes from ``LICTUTOR_BUDGET`` as usual (``cpu`` for the published book, ``full`` on
a GPU). The notebook is run in a fresh kernel from its own folder; it is written back only if
every cell succeeds, so a failed run never replaces good outputs. Progress bars are kept in
their final state only: consecutive stream outputs are merged and each ``\r``-rewritten line
keeps its last version, as a terminal would show it; then the finished bars themselves are
dropped from stderr (they help a reader who runs the notebook, not one who reads it), and
whatever else a cell wrote to stderr stays, to be seen and fixed.

Figures are drawn with Jupyter's inline backend whatever ``MPLBACKEND`` says: the kernel
inherits the environment, and under ``MPLBACKEND=Agg`` (as ``make test`` sets it) a notebook
would run without error and publish no figure at all.
"""

import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def collapse_streams(outputs: list) -> list:
    """Merge consecutive stdout/stderr outputs and resolve carriage returns (tqdm updates)."""
    merged = []
    for out in outputs:
        if out.output_type == "stream" and merged and merged[-1].output_type == "stream" \
                and merged[-1].name == out.name:
            merged[-1].text += out.text
        else:
            merged.append(out)
    for out in merged:
        if out.output_type == "stream":
            out.text = "\n".join(line.rsplit("\r", 1)[-1] if line.rstrip("\r") else line
                                 for line in out.text.split("\n"))
    return merged


#: a tqdm bar's line: "desc: 100%|██████████| 16/16 [00:03<00:00,  4.46it/s, bpp=0.3]"
PROGRESS_BAR = re.compile(r"^.*\d+%\|[^|]*\| *\d+/\d+ \[[^\]]*\]\s*$")


def drop_progress_bars(outputs: list) -> list:
    """Remove progress-bar lines from stderr streams, and the streams they leave blank."""
    kept = []
    for out in outputs:
        if out.output_type == "stream" and out.name == "stderr":
            out.text = "\n".join(line for line in out.text.split("\n") if not PROGRESS_BAR.match(line))
            if not out.text.strip():
                continue
        kept.append(out)
    return kept


#: the backend a Jupyter kernel draws figures into the notebook with
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


#: what a published output must not hold: a machine's paths and warnings
MACHINE_PATH = re.compile(r"/tmp/|/work/|/home/|/root/|/Users/|\.venv|site-packages")
WARNING = re.compile(r"\w*Warning\b")


def output_problems(nb) -> list[str]:
    """What keeps a notebook's committed outputs from being clean, one line per problem:
    stderr streams, errors, warnings, progress-bar frames and machine paths."""
    problems = []
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.output_type == "error":
                problems.append(f"cell {index}: an error ({out.ename})")
                continue
            text = out.get("text", "") if out.output_type == "stream" else str(out.get("data", {}).get("text/plain", ""))
            if out.output_type == "stream" and out.name == "stderr":
                problems.append(f"cell {index}: writes to stderr: {text.strip()[:80]!r}")
            for what, pattern in (("a machine path", MACHINE_PATH), ("a warning", WARNING)):
                if found := pattern.search(text):
                    problems.append(f"cell {index}: shows {what}: {found.group(0)!r}")
            if any(PROGRESS_BAR.match(line) for line in text.split("\n")):
                problems.append(f"cell {index}: shows a progress bar")
    return problems


def run(path: Path) -> None:
    os.environ["MPLBACKEND"] = INLINE_BACKEND  # the kernel inherits it
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = drop_progress_bars(collapse_streams(cell.outputs))
    nbformat.write(nb, path)
    for problem in output_problems(nb):
        print(f"{path}: {problem}")
    print(f"{path}: executed with LICTUTOR_BUDGET={os.environ.get('LICTUTOR_BUDGET', '(default)')} "
          f"in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        run(Path(arg))
