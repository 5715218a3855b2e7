"""Measure what each chapter costs from an empty cache: run the chapters in book order in fresh
kernels sharing one new, empty ``LICTUTOR_HOME``, without writing the notebooks, and record per
chapter its wall time (with the earlier chapters' models cached, as a reader who runs the book
in order sees it) and the training time of every model it used (``lictutor.costs.training_time``:
from the checkpoints' records, so the same whether a model was trained or loaded -- the
chapter's cost from an empty cache).

    LICTUTOR_BUDGET=cpu python scripts/cold_cache_times.py book/0*.ipynb [--out times.json]

``--home DIR`` runs in that ``LICTUTOR_HOME`` instead of a new one: to measure later chapters
on top of a cache that holds exactly the earlier chapters' models (e.g. the one their
publishing run, ``scripts/run_notebook.py``, filled from empty).

Prints one Markdown table row per chapter as it finishes (for the README) and writes all rows
to ``--out`` (default ``cold_cache_times.json``).
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

PROBE = "import json as _j, lictutor.costs as _c\nprint('COLD-CACHE ' + _j.dumps(_c.training_time()))"


def measure(path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    start = time.perf_counter()
    NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    wall = time.perf_counter() - start
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    seconds, count = json.loads(text.split("COLD-CACHE ", 1)[1])
    return {"chapter": path.stem, "budget": os.environ.get("LICTUTOR_BUDGET", "(default)"),
            "wall_s": round(wall), "training_s": round(seconds), "models": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("cold_cache_times.json"))
    parser.add_argument("--home", type=Path, help="an existing LICTUTOR_HOME (default: a new, empty one)")
    args = parser.parse_args()
    os.environ["LICTUTOR_HOME"] = str(args.home) if args.home else tempfile.mkdtemp(prefix="lictutor-cold-")
    os.environ.setdefault("MPLBACKEND", "Agg")
    rows = []
    print("| chapter | budget | training time of its models (empty cache) | models | run, earlier chapters cached |")
    print("|---|---|---|---|---|")
    for path in args.notebooks:
        rows.append(measure(path))
        r = rows[-1]
        print(f"| {r['chapter']} | {r['budget']} | {r['training_s'] / 60:.1f} min | {r['models']} | "
              f"{r['wall_s'] / 60:.1f} min |", flush=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
