import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lictutor import codecs, data, evaluate, zoo
from lictutor.budget import get_budget
from lictutor.checkpoint import cache_path, load_checkpoint
from lictutor.cli import main
from lictutor.config import budget_config

COMMANDS = ("baselines", "train", "compress", "decompress", "eval")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three small PNG crops of built-in photos, one of an odd size."""
    photos = data.builtin_photos()
    root = tmp_path_factory.mktemp("images")
    data.save_image(photos["astronaut"][:48, :64], root / "a.png")
    data.save_image(photos["coffee"][100:148, 200:264], root / "b.png")
    data.save_image(photos["chelsea"][50:87, 100:153], root / "c.png")  # 37×53
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny models trained through the CLI (smoke budget, 2 steps), at two λ."""
    root = tmp_path_factory.mktemp("train")
    paths = [root / "low.pt", root / "high.pt"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LICTUTOR_HOME", str(root / "home"))  # the training cache goes here
        for path, lmbda in zip(paths, ("0.002", "0.05")):
            args = ["train", "--budget", "smoke", "--steps", "2", "--lmbda", lmbda, "--out", str(path), "--quiet"]
            assert main(args) == 0
    return paths


def run(capsys, *args):
    """``main(args)`` in-process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_baselines_writes_curves_from_real_bytes(folder, tmp_path, capsys):
    out = tmp_path / "baselines.json"
    code, stdout, _ = run(capsys, "baselines", "--images", folder, "--json", out, "--quiet")
    assert code == 0 and f"wrote {out}" in stdout
    curves = json.loads(out.read_text())
    names = codecs.available_codecs()
    assert [c["name"] for c in curves] == [codecs.get_codec(n).label for n in names]
    images = data.folder_images(folder)
    for name, curve in zip(names, curves):
        res = curve["results"]
        assert len(res["bpp"]) >= 5 and res["bpp"] == sorted(res["bpp"])
        codec = codecs.get_codec(name)
        for i in (0, -1):  # the cheapest and the dearest point, re-encoded here
            sizes = [len(codec.encode(img, res["quality"][i])) for _, img in images]
            bpp = np.mean([8 * n / (img.shape[0] * img.shape[1]) for n, (_, img) in zip(sizes, images)])
            assert res["bpp"][i] == pytest.approx(bpp), name


def test_train_shares_the_books_recipe_and_cache(tmp_path, capsys):
    """`lictutor train` trains what the chapters train (lictutor.zoo.trained_model: the
    factorized prior fine-tuned from the base at the middle λ; a hyperprior on top of it), so
    a model trained by either is found in the cache by the other (LICTUTOR_HOME: conftest.py)."""
    smoke = get_budget("smoke").with_(steps=40)
    code, stdout, _ = run(capsys, "train", "--budget", "smoke", "--steps", 40, "--lmbda", 0.0067, "--out",
                          tmp_path / "m.pt", "--quiet")
    assert code == 0 and "by the book's recipe (budget smoke, 40 steps)" in stdout
    _, book = zoo.factorized_model(smoke, 0.0067, progress=False)
    assert book["cached"] and load_checkpoint(tmp_path / "m.pt")[1]["key"] == book["key"]
    config = load_checkpoint(tmp_path / "m.pt")[1]["config"]
    assert config["steps"] == 20 and config["warmup"] == 1 and config["augment"] == list(data.DEFAULT_AUGMENT)
    code, _, _ = run(capsys, "train", "--model", "hyperprior", "--budget", "smoke", "--steps", 40, "--lmbda",
                     0.0067, "--out", tmp_path / "h.pt", "--quiet")
    _, book = zoo.hyperprior_model(smoke, 0.0067, "hyperprior", progress=False)
    assert code == 0 and book["cached"] and load_checkpoint(tmp_path / "h.pt")[1]["key"] == book["key"]


def test_train_compress_decompress_eval(checkpoints, folder, tmp_path, capsys):
    low, high = checkpoints
    ckpt = load_checkpoint(low)[1]
    assert ckpt["model"] == "factorized" and ckpt["model_args"] == {"N": 16, "M": 24}
    assert ckpt["config"]["steps"] == 1 and ckpt["config"]["lmbda"] == 0.002  # fine-tuned for half the steps

    lic, png = tmp_path / "c.lic", tmp_path / "c.png"
    code, stdout, _ = run(capsys, "compress", "--checkpoint", low, folder / "c.png", lic)
    assert code == 0 and f"{lic.stat().st_size} bytes" in stdout
    model, _ = load_checkpoint(low)
    img = data.load_image(folder / "c.png")
    assert lic.read_bytes() == evaluate.compress_image(model, img, "factorized")

    code, stdout, _ = run(capsys, "decompress", "--checkpoint", low, lic, png)
    assert code == 0 and "53×37" in stdout
    assert np.array_equal(data.load_image(png), evaluate.decompress_image(model, lic.read_bytes(), "factorized"))

    out = tmp_path / "eval.json"
    code, stdout, _ = run(capsys, "eval", "--checkpoint", low, high, "--images", folder, "--json", out, "--quiet")
    assert code == 0
    curve = json.loads(out.read_text())  # one curve, as CompressAI's eval_model writes
    assert curve["name"] == "lictutor factorized"
    images = data.folder_images(folder)

    def mean_bpp(path):  # from the sizes of the files
        net, _ = load_checkpoint(path)
        return np.mean([8 * len(evaluate.compress_image(net, im, "factorized")) / im[..., 0].size for _, im in images])

    assert curve["results"]["bpp"] == pytest.approx(sorted([mean_bpp(low), mean_bpp(high)]))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: lictutor {command}")


def test_errors_are_one_line(checkpoints, folder, tmp_path, capsys):
    low, high = checkpoints
    lic = tmp_path / "a.lic"
    assert run(capsys, "compress", "--checkpoint", low, folder / "a.png", lic)[0] == 0
    (tmp_path / "empty").mkdir()
    cases = {
        "frobnicate": ("frobnicate",),
        "required": ("compress",),
        "unknown model": ("train", "--model", "nope", "--lmbda", "0.01", "--out", tmp_path / "x.pt"),
        "lmbda": ("train", "--lmbda", "-1", "--out", tmp_path / "x.pt", "--budget", "smoke"),
        "unknown budget": ("train", "--lmbda", "0.01", "--out", tmp_path / "x.pt", "--budget", "huge"),
        "no checkpoint": ("compress", "--checkpoint", tmp_path / "missing.pt", folder / "a.png", tmp_path / "b.lic"),
        "not a PyTorch file": ("compress", "--checkpoint", lic, folder / "a.png", tmp_path / "b.lic"),
        "cannot read image": ("compress", "--checkpoint", low, tmp_path / "missing.png", tmp_path / "b.lic"),
        "is a folder": ("compress", "--checkpoint", low, folder / "a.png", tmp_path / "empty"),
        "other weights": ("decompress", "--checkpoint", high, lic, tmp_path / "a.png"),
        "not a .lic file": ("decompress", "--checkpoint", low, folder / "a.png", tmp_path / "a.png"),
        "no images": ("eval", "--checkpoint", low, "--images", tmp_path / "empty"),
        "unknown codec": ("baselines", "--images", folder, "--codecs", "jpeg,bpg"),
    }
    for expected, args in cases.items():
        code, _, err = run(capsys, *args)
        assert code == 1, args
        assert err.startswith("lictutor: error: ") and err.count("\n") == 1, err
        assert expected in err, err
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.lic").exists()


@pytest.mark.slow
def test_python_dash_m(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lictutor", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert all(command in done.stdout for command in COMMANDS)
    done = subprocess.run([sys.executable, "-m", "lictutor", "decompress", "--checkpoint",
                           str(tmp_path / "missing.pt"), "x.lic", "x.png"], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr == f"lictutor: error: no checkpoint at '{tmp_path / 'missing.pt'}'\n"


# --- nothing lost, nothing trusted blindly (issue 17) ------------------------------------------


def test_outputs_never_replace_inputs_or_existing_files(checkpoints, folder, tmp_path, capsys):
    low, _ = checkpoints
    photo = tmp_path / "photo.png"
    photo.write_bytes((folder / "a.png").read_bytes())
    original = photo.read_bytes()
    code, _, err = run(capsys, "compress", "--checkpoint", low, photo, photo)
    assert code == 1 and "is the input" in err and photo.read_bytes() == original
    lic = tmp_path / "a.lic"
    assert run(capsys, "compress", "--checkpoint", low, photo, lic)[0] == 0
    coded = lic.read_bytes()
    code, _, err = run(capsys, "decompress", "--checkpoint", low, lic, lic)
    assert code == 1 and "is the input" in err and lic.read_bytes() == coded
    code, _, err = run(capsys, "compress", "--checkpoint", low, photo, low)
    assert code == 1 and "is the input" in err and load_checkpoint(low)
    code, _, err = run(capsys, "decompress", "--checkpoint", low, lic, photo)
    assert code == 1 and "already exists; use --force" in err and photo.read_bytes() == original
    code, _, _ = run(capsys, "decompress", "--checkpoint", low, lic, photo, "--force")
    assert code == 0 and photo.read_bytes() != original
    code, _, err = run(capsys, "decompress", "--checkpoint", low, lic, tmp_path / "out.jpg")
    assert code == 1 and "decompress writes PNG; name the output 'out.png'" in err
    assert not (tmp_path / "out.jpg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.lic", "photo.png"]  # no temporary files left


def test_train_out_is_never_replaced_unasked(tmp_path, capsys):
    args = ["train", "--budget", "SMOKE", "--steps", 2, "--lmbda", 0.0067, "--quiet"]
    assert run(capsys, *args, "--out", tmp_path / "m.pt")[0] == 0  # now cached; the budget's case is ignored
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG precious")
    code, _, err = run(capsys, *args, "--out", photo)
    assert code == 1 and "does not hold this run's checkpoint; use --force" in err
    assert photo.read_bytes() == b"\x89PNG precious"
    code, out, _ = run(capsys, *args, "--out", tmp_path / "copy.pt")
    assert code == 0 and "copied from the cache; it trained for" in out


def test_ctrl_c_leaves_a_checkpoint_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    import signal

    import lictutor.train as train_module

    monkeypatch.setenv("LICTUTOR_HOME", str(tmp_path / "reference"))
    reference, _ = zoo.factorized_model(get_budget("smoke").with_(steps=6), 0.0067, progress=False)
    monkeypatch.setenv("LICTUTOR_HOME", str(tmp_path / "home"))
    original = train_module._Loop._update

    def update(self, losses, desc):
        aux = original(self, losses, desc)
        if self.step == 3:  # in the 4th step
            signal.raise_signal(signal.SIGINT)
        return aux

    args = ["train", "--budget", "smoke", "--steps", 6, "--lmbda", 0.0067, "--out", tmp_path / "m.pt", "--quiet"]
    monkeypatch.setattr(train_module._Loop, "_update", update)
    code, _, err = run(capsys, *args)
    # the recipe's first stage, the base model at the budget's middle λ, is stopped
    assert code == 130 and err == ("lictutor: interrupted: factorized stopped at step 4 of 6; "
                                   "running the same again resumes from there\n")
    assert not (tmp_path / "m.pt").exists()
    monkeypatch.setattr(train_module._Loop, "_update", original)
    code, out, _ = run(capsys, *args)
    assert code == 0 and "resuming factorized (λ = 0.0483) at step 4 of 6" in out
    resumed = load_checkpoint(tmp_path / "m.pt")[0].state_dict()
    assert all(torch.equal(resumed[k], v) for k, v in reference.state_dict().items())


def test_a_damaged_cache_entry_is_one_warning_and_trained_again(tmp_path, capsys):
    args = ["train", "--budget", "smoke", "--steps", 2, "--lmbda", 0.0067, "--quiet"]
    assert run(capsys, *args, "--out", tmp_path / "a.pt")[0] == 0
    entry = next(p for p in cache_path(budget_config(get_budget("smoke"), 0.0067)).parent.glob("factorized-*.pt")
                 if load_checkpoint(p)[1]["key"] == load_checkpoint(tmp_path / "a.pt")[1]["key"])
    entry.write_bytes(entry.read_bytes()[:-100])
    code, out, err = run(capsys, *args, "--out", tmp_path / "b.pt")
    assert code == 0 and "copied from the cache" not in out
    assert err.startswith(f"lictutor: warning: cache entry {entry.name} not used") and err.count("\n") == 1
    assert (tmp_path / "a.pt").read_bytes() != b"" and load_checkpoint(tmp_path / "b.pt")


def test_eval_and_baselines_skip_unreadable_images_and_fail_at_the_end(checkpoints, folder, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("a.png", "c.png"):
        (mixed / name).write_bytes((folder / name).read_bytes())
    (mixed / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    low, _ = checkpoints
    for command in (["eval", "--checkpoint", low], ["baselines", "--codecs", "jpeg"]):
        out = tmp_path / f"{command[0]}.json"
        code, stdout, err = run(capsys, *command, "--images", mixed, "--json", out, "--quiet")
        assert code == 1 and "2 images from" in stdout and f"wrote {out}" in stdout
        lines = err.splitlines()
        assert lines[0].startswith("lictutor: warning: skipped: cannot read image") and "b.png" in lines[0]
        assert lines[1].startswith("lictutor: error: 1 image(s)") and len(lines) == 2
        assert json.loads(out.read_text())
        code, _, err = run(capsys, *command, "--images", mixed, "--json", out, "--quiet")
        assert code == 1 and "already exists" in err  # checked before any work
    for bad in ("-1", "0", "two"):
        code, _, err = run(capsys, "eval", "--checkpoint", low, "--images", folder, "--max-images", bad)
        assert code == 1 and "expected a whole number of at least 1" in err
    code, stdout, _ = run(capsys, "baselines", "--codecs", "jpeg", "--images", folder, "--max-images", 2, "--quiet")
    assert code == 0 and stdout.startswith("2 images from")
    code, _, err = run(capsys, "eval", "--checkpoint", low, "--images", folder / "a.png")
    assert code == 1 and "is a file; expected a folder of images" in err
