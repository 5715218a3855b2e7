"""Execute chapter notebooks top to bottom, in place, to publish their outputs.

    python scripts/run_notebook.py book/00_ruler.ipynb [more.ipynb ...]

The budget comes from ``LICTUTOR_BUDGET`` as usual (``cpu`` for the published book, ``full`` on
a GPU). The notebook is run in a fresh kernel from its own folder; it is written back only if
every cell succeeds, so a failed run never replaces good outputs. Progress bars are kept in
their final state only: consecutive stream outputs are merged and each ``\r``-rewritten line
keeps its last version, as a terminal would show it; then the finished bars themselves are
dropped from stderr (they help a reader who runs the notebook, not one who reads it), and
whatever else a cell wrote to stderr stays, to be seen and fixed.
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


def run(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = drop_progress_bars(collapse_streams(cell.outputs))
    nbformat.write(nb, path)
    print(f"{path}: executed with LICTUTOR_BUDGET={os.environ.get('LICTUTOR_BUDGET', '(default)')} "
          f"in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        run(Path(arg))
