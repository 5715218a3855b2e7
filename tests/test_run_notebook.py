"""scripts/run_notebook.py: what a published notebook keeps of its streams."""

import importlib.util
from pathlib import Path

import nbformat

_SPEC = importlib.util.spec_from_file_location(
    "run_notebook", Path(__file__).resolve().parent.parent / "scripts" / "run_notebook.py")
run_notebook = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(run_notebook)


def _stream(name, text):
    return nbformat.v4.new_output("stream", name=name, text=text)


def test_bars_keep_their_last_frame_then_leave_stderr_but_everything_else_stays():
    outputs = [_stream("stderr", "train:  50%|█████     | 1/2 [00:00<00:01, 1.0it/s]\r"
                                 "train: 100%|██████████| 2/2 [00:01<00:00, 1.9it/s, bpp=0.3]\n"),
               _stream("stderr", "UserWarning: something to fix\n"),
               _stream("stdout", "bpp 0.3\n")]
    merged = run_notebook.collapse_streams(outputs)
    assert merged[0].text == "train: 100%|██████████| 2/2 [00:01<00:00, 1.9it/s, bpp=0.3]\nUserWarning: something to fix\n"
    kept = run_notebook.drop_progress_bars(merged)
    assert [(o.name, o.text) for o in kept] == [("stderr", "UserWarning: something to fix\n"), ("stdout", "bpp 0.3\n")]
    assert run_notebook.drop_progress_bars([_stream("stderr", "ev: 100%|█| 4/4 [00:01<00:00, 3.9it/s]\n\n")]) == []


def test_output_problems_finds_each_kind():
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="/work/x/.venv/lib/tqdm/auto.py:21: TqdmWarning: no\n"),
        nbformat.v4.new_output("stream", name="stdout", text="evaluate: 100%|██████████| 4/4 [00:01<00:00, 3.9it/s]\n"),
        nbformat.v4.new_output("error", ename="ValueError", evalue="", traceback=[]),
    ]
    clean = nbformat.v4.new_code_cell("y")
    clean.outputs = [nbformat.v4.new_output("stream", name="stdout", text="bpp 0.218, PSNR 26.73 dB\n")]
    problems = run_notebook.output_problems(nbformat.v4.new_notebook(cells=[clean, cell]))
    assert [p.split(":")[0] for p in problems] == ["cell 1"] * 5
    assert any("stderr" in p for p in problems) and any("machine path" in p for p in problems)
    assert any("TqdmWarning" in p for p in problems) and any("progress bar" in p for p in problems)
    assert any("ValueError" in p for p in problems)
