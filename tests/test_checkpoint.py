"""lictutor.checkpoint: nothing in a checkpoint or a cache entry is used unchecked (issue 17)."""

import os
import signal

import pytest
import torch

import lictutor.train as train_module
from lictutor import LictutorWarning, models
from lictutor.checkpoint import (
    cache_path, content_digest, load_cached, load_checkpoint, read_checkpoint, save_checkpoint,
)
from lictutor.config import TrainConfig
from lictutor.errors import LictutorError
from lictutor.train import train

TINY = dict(model_args={"N": 8, "M": 12}, steps=4, batch=2, crop=32, warmup=1)


def tiny(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, **changes})


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def saved(path, model_args=None, config=None, **extra):
    """A checkpoint of a fresh tiny model; returns the dict as stored."""
    config = config or tiny()
    save_checkpoint(path, models.create("factorized", **(model_args or config.model_args)), config, **extra)
    return torch.load(path, weights_only=True)


def forged(path, ckpt):
    """Write ``ckpt`` with a digest that matches it: a crafted file, not a damaged one."""
    ckpt = {**ckpt, "digest": content_digest(ckpt)}
    torch.save(ckpt, path)
    return path


def flip_byte(path, where):
    data = bytearray(path.read_bytes())
    data[where] ^= 0x01
    path.write_bytes(bytes(data))


def tensor_data_offset(path, name="g_a.0.weight"):
    """Where the values of a tensor begin inside a checkpoint file (a zip of raw storages)."""
    ckpt = torch.load(path, weights_only=True)
    needle = ckpt["state_dict"][name].contiguous().numpy().tobytes()[:64]
    offset = path.read_bytes().find(needle)
    assert offset > 0
    return offset + 8


def test_every_checkpoint_carries_its_key_and_digest(tmp_path):
    ckpt = saved(tmp_path / "a.pt")
    assert ckpt["key"] == tiny().key() and ckpt["digest"] == content_digest(ckpt)
    assert read_checkpoint(tmp_path / "a.pt", key=tiny().key())["key"] == tiny().key()
    with pytest.raises(LictutorError, match="another run"):
        read_checkpoint(tmp_path / "a.pt", key=tiny(lmbda=0.05).key())


def test_a_flipped_byte_in_the_weights_is_refused(tmp_path):
    path = tmp_path / "a.pt"
    saved(path)
    flip_byte(path, tensor_data_offset(path))
    with pytest.raises(LictutorError, match="is damaged: its content does not match its SHA-256"):
        load_checkpoint(path)


def test_crafted_checkpoints_are_refused_in_one_line(tmp_path):
    ckpt = saved(tmp_path / "ok.pt")
    cases = {
        "N must be a whole number from 1 to 1024, got 100000": {**ckpt, "model_args": {"N": 100000, "M": 100000}},
        "N must be a whole number from 1 to 1024, got '16'": {**ckpt, "model_args": {"N": "16", "M": 12}},
        "its 'state_dict' is missing": {k: v for k, v in ckpt.items() if k != "state_dict"},
        "other than named tensors": {**ckpt, "state_dict": {**ckpt["state_dict"], "g_a.0.weight": 3.0}},
        r"\d+ missing \(g_s.0.weight, g_s.0.bias, g_s.1.beta, …\)": {**ckpt, "state_dict": {k: v for k, v in ckpt["state_dict"].items() if "g_s" not in k}},
        "NaN or infinite weights": {**ckpt, "state_dict": {**ckpt["state_dict"],
                                                          "g_s.0.weight": ckpt["state_dict"]["g_s.0.weight"] * float("nan")}},
        "unknown model": {**ckpt, "model": "nope"},
    }
    for expected, bad in cases.items():
        with pytest.raises(LictutorError, match=expected) as err:
            load_checkpoint(forged(tmp_path / "bad.pt", bad))
        assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)
    old = {**ckpt, "format": "lictutor-checkpoint-1"}
    with pytest.raises(LictutorError, match="older lictutor, without a checksum"):
        load_checkpoint(forged(tmp_path / "old.pt", old))


def test_truncated_and_empty_files_say_so(tmp_path):
    path = tmp_path / "a.pt"
    saved(path)
    data = path.read_bytes()
    for cut in (data[: len(data) // 2], b""):
        path.write_bytes(cut)
        with pytest.raises(LictutorError, match=r"cannot read checkpoint '.*': not a complete PyTorch file$"):
            load_checkpoint(path)


@pytest.mark.parametrize("damage", ["flipped byte", "another λ", "another model", "truncated", "empty"])
def test_a_bad_cache_entry_is_trained_again_not_used(damage, tmp_path):
    config = tiny()
    fresh, _ = train(config, cache=False, progress=False)
    entry = cache_path(config)
    entry.parent.mkdir(parents=True)
    if damage == "flipped byte":
        train(config, progress=False)
        flip_byte(entry, tensor_data_offset(entry))
    elif damage == "another λ":
        train(tiny(lmbda=0.05), out=entry, cache=False, progress=False, force=True)
    elif damage == "another model":
        other = tiny(model="hyperprior", model_args={"N": 8, "M": 12}, crop=64)
        train(other, out=entry, cache=False, progress=False, force=True)  # a hyperprior copied over it
    else:
        train(config, progress=False)
        entry.write_bytes(entry.read_bytes()[:1000] if damage == "truncated" else b"")
    with pytest.warns(LictutorWarning, match=rf"cache entry {entry.name} not used .*; moved to {entry.name}.bad"):
        model, ckpt = train(config, progress=False)
    assert not ckpt["cached"] and same_weights(model, fresh)
    assert entry.with_name(entry.name + ".bad").exists()
    again, ckpt = train(config, progress=False)  # the new entry is good
    assert ckpt["cached"] and same_weights(again, fresh)


def test_load_cached_without_an_entry_is_none(tmp_path):
    assert load_cached(tmp_path / "none.pt", "key") is None


def test_out_is_never_replaced_unasked(tmp_path):
    config = tiny()
    train(config, progress=False)  # cached: the case that used to overwrite
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG precious")
    other = tmp_path / "other.pt"
    train(tiny(lmbda=0.05), out=other, progress=False)
    before = other.read_bytes()
    for cache in (True, False):
        for target in (photo, other):
            with pytest.raises(LictutorError, match="does not hold this run's checkpoint; use --force"):
                train(config, out=target, cache=cache, progress=False)
    assert photo.read_bytes() == b"\x89PNG precious" and other.read_bytes() == before
    model, ckpt = train(config, out=photo, progress=False, force=True)
    assert ckpt["cached"] and same_weights(load_checkpoint(photo)[0], model)


def interrupt_at(monkeypatch, step, signum):
    """Deliver ``signum`` to this process during training step ``step`` (1-based), as Ctrl-C
    or ``kill`` would."""
    original = train_module._Loop._update

    def update(self, losses, desc):
        aux = original(self, losses, desc)
        if self.step + 1 == step:
            signal.raise_signal(signum)
        return aux

    monkeypatch.setattr(train_module._Loop, "_update", update)
    return original


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_between_steps_and_the_rerun_resumes(signum, monkeypatch, tmp_path, capsys):
    config = tiny(steps=6)
    monkeypatch.setenv("LICTUTOR_HOME", str(tmp_path / "reference"))
    reference, ref_ckpt = train(config, progress=False, log_every=1)
    monkeypatch.setenv("LICTUTOR_HOME", str(tmp_path / "home"))
    original = interrupt_at(monkeypatch, 3, signum)
    with pytest.raises(KeyboardInterrupt, match="stopped at step 3 of 6; running the same again resumes"):
        train(config, progress=False, log_every=1)
    monkeypatch.setattr(train_module._Loop, "_update", original)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    part = cache_path(config).with_name(cache_path(config).stem + ".part.pt")
    assert read_checkpoint(part, key=config.key())["step"] == 3
    capsys.readouterr()
    resumed, ckpt = train(config, progress=False, log_every=1)
    assert "resuming factorized (λ = 0.0067) at step 3 of 6" in capsys.readouterr().out
    assert same_weights(resumed, reference) and not part.exists()
    assert [h["loss"] for h in ckpt["history"]] == [h["loss"] for h in ref_ckpt["history"]]


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "a.pt"
    saved(path)
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        open(f, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        saved(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["a.pt"]


class _Payload:
    """What a malicious checkpoint pickles: unpickling it would run a shell command."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({**saved(tmp_path / "ok.pt"), "evil": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(LictutorError, match=r"^refused checkpoint '.*evil.pt': .*nothing in it was run\)$"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
