"""lictutor.train: the loss, the schedule, checkpoints, the cache, resuming and DDP."""

import json
import math
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import lictutor.train as train_module
from lictutor import costs, data, metrics, models, quantization
from lictutor.budget import BUDGETS
from lictutor.checkpoint import CHECKPOINT_FORMAT, cache_path, content_digest, load_checkpoint, save_checkpoint
from lictutor.config import EntropyFitConfig, TrainConfig, budget_config
from lictutor.device import seed_everything
from lictutor.errors import LictutorError
from lictutor.losses import RateDistortionLoss, add_l1_sparsity
from lictutor.train import train

TINY = dict(model_args={"N": 8, "M": 12}, steps=5, batch=2, crop=32, warmup=1)


def tiny(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, **changes})


def no_training(monkeypatch):
    """Make any training step fail: what runs afterwards must load, not train."""

    def fail(step, config):
        raise AssertionError("trained instead of loading")

    monkeypatch.setattr(train_module, "lr_factor", fail)


def assert_same_weights(a, b, atol=0.0, buffers=True):
    """Equal parameters (and buffers, the CDF tables included) of two models."""
    sa, sb = (m.state_dict() if buffers else dict(m.named_parameters()) for m in (a, b))
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=atol, msg=name)


# --- the loss -------------------------------------------------------------------------------


def test_rate_distortion_loss_by_hand():
    x = torch.zeros(1, 3, 4, 4)
    out = {"x_hat": torch.full_like(x, 0.1), "likelihoods": {"y": torch.full((1, 2, 2, 2), 0.5)}}
    losses = RateDistortionLoss(0.01)(out, x)
    # 8 latents of probability 1/2 = 8 bits over 16 pixels; MSE = 0.01
    assert losses["bpp"].item() == pytest.approx(0.5)
    assert losses["mse"].item() == pytest.approx(0.01)
    assert losses["loss"].item() == pytest.approx(0.01 * 255**2 * 0.01 + 0.5, rel=1e-6)


@pytest.mark.parametrize("distortion, side", [("ms-ssim", 176), ("nlp", 64)])
def test_perceptual_distortions(distortion, side):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, side, side, generator=g)
    x_hat = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    likelihoods = {"y": torch.full((1, 2, 2, 2), 0.5)}
    loss = RateDistortionLoss(2.0, distortion)
    same = loss({"x_hat": x, "likelihoods": likelihoods}, x)
    assert same["distortion"].item() == pytest.approx(0.0, abs=1e-6)
    noisy = loss({"x_hat": x_hat, "likelihoods": likelihoods}, x)
    d = 1 - metrics.ms_ssim(x_hat, x) if distortion == "ms-ssim" else metrics.nlp_distance(x_hat, x)
    assert noisy["loss"].item() == pytest.approx(2.0 * d.item() + noisy["bpp"].item(), rel=1e-5)


def test_unknown_distortion():
    with pytest.raises(LictutorError, match="unknown distortion"):
        RateDistortionLoss(0.01, "l1")


# --- the configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": "nope"}, "unknown model"),
        ({"distortion": "l1"}, "unknown distortion"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"batch": 2.5}, "batch must be a positive integer"),
        ({"lmbda": 0}, "lmbda must be positive"),
        ({"lmbda": float("inf")}, "lmbda must be a finite number"),
        ({"lr": -1e-3}, "lr must be a finite number >= 0"),
        ({"warmup": 6}, "warmup"),
        ({"crop": 72}, "multiple of 16"),
        ({"distortion": "ms-ssim"}, "at least 161"),
        ({"model_args": {"N": object()}}, "plain values"),
        ({"quantization": "dither"}, "unknown quantization"),
    ],
)
def test_bad_config(changes, message):
    with pytest.raises(LictutorError, match=message):
        tiny(**changes).key()


def test_config_round_trip_and_unknown_keys():
    config = tiny(lmbda=0.013, budget="smoke", images=None)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(LictutorError, match="unknown training settings: lambda"):
        TrainConfig.from_dict({"lambda": 0.01})


def test_cache_key_covers_what_determines_the_model(tmp_path):
    base = tiny()
    assert tiny().key() == base.key()
    changed = [tiny(lmbda=0.013), tiny(budget="cpu"), tiny(seed=1), tiny(model_args={"N": 8, "M": 16}),
               tiny(distortion="nlp"), tiny(steps=6)]
    assert len({base.key(), *(c.key() for c in changed)}) == 1 + len(changed)
    # the warm-start weights count by content, whether given as a state dict or a file
    torch.manual_seed(1)
    init = models.create("factorized", N=8, M=12)
    path = tmp_path / "init.pt"
    save_checkpoint(path, init, base)
    assert base.key(init.state_dict()) == base.key(path) != base.key()
    assert cache_path(base, path).parent == cache_path(base).parent
    torch.manual_seed(2)
    assert base.key(models.create("factorized", N=8, M=12).state_dict()) != base.key(path)


def test_lr_schedule():
    config = tiny(steps=10, warmup=2, final_lr=0.1)
    factors = [train_module.lr_factor(s, config) for s in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0]  # linear warm-up, then the cosine starts at 1
    assert all(a > b for a, b in zip(factors[2:], factors[3:]))  # decays ...
    assert factors[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))  # ... towards 0.1
    assert {train_module.lr_factor(s, tiny(final_lr=1.0)) for s in range(1, 5)} == {1.0}


# --- training, the cache, resuming ----------------------------------------------------------


def test_train_caches_and_compresses(home, monkeypatch, capsys, tmp_path):
    config = tiny()
    model, ckpt = train(config, log_every=2)
    assert [h["step"] for h in ckpt["history"]] == [2, 4, 5]
    assert all(math.isfinite(h["bpp"]) and h["bpp"] > 0 and math.isfinite(h["psnr"]) for h in ckpt["history"])
    assert ckpt["history"][-1]["lr"] == pytest.approx(config.lr * train_module.lr_factor(4, config))
    err = capsys.readouterr().err
    assert "bpp=" in err and "psnr=" in err  # the progress bar
    # trained, then update()d: the tables are those of the final weights, ready to code
    assert not model.training and not model.entropy_bottleneck.tables_stale()
    x = torch.rand(1, 3, 32, 32)
    coded = model.compress(x)
    assert model.decompress(coded["strings"], coded["shape"])["x_hat"].shape == x.shape

    assert cache_path(config).is_file() and cache_path(config).is_relative_to(home)
    no_training(monkeypatch)
    again, ckpt_again = train(config, progress=False, out=tmp_path / "copy.pt")
    assert_same_weights(model, again)
    assert ckpt_again["train_time"] == ckpt["train_time"]
    assert again.compress(x)["strings"] == coded["strings"]
    copy, _ = load_checkpoint(tmp_path / "copy.pt")
    assert_same_weights(model, copy)


def test_resume_gives_the_uninterrupted_result(home, monkeypatch):
    config = tiny()
    reference, ref_ckpt = train(config, cache=False, progress=False, log_every=1)

    original = train_module.lr_factor

    def interrupt(step, cfg):
        if step == 3:
            raise KeyboardInterrupt  # in the 4th step
        return original(step, cfg)

    monkeypatch.setattr(train_module, "lr_factor", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(config, checkpoint_every=2, progress=False, log_every=1)
    monkeypatch.setattr(train_module, "lr_factor", original)
    # the last checkpoint (step 2) lies next to the cache entry, which does not exist yet
    part = cache_path(config).with_name(cache_path(config).stem + ".part.pt")
    assert torch.load(part, weights_only=True)["step"] == 2 and not cache_path(config).exists()

    _, stopped = train(config, progress=False, log_every=1, stop_after=4)  # resumes, stops again
    assert stopped["step"] == 4 and torch.load(part, weights_only=True)["step"] == 4
    resumed, ckpt = train(config, progress=False, log_every=1)
    assert_same_weights(reference, resumed, atol=1e-6)
    assert [h["loss"] for h in ckpt["history"]] == pytest.approx([h["loss"] for h in ref_ckpt["history"]], rel=1e-6)
    assert cache_path(config).is_file() and not part.exists()


def test_out_holding_another_run_is_an_error(tmp_path):
    out = tmp_path / "run.pt"
    other = tiny(lmbda=0.05)
    save_checkpoint(out, models.create("factorized", N=8, M=12), other, key=other.key(), step=1,
                    history=[], train_time=0.0)
    with pytest.raises(LictutorError, match="does not hold this run's checkpoint; use --force"):
        train(tiny(), out=out, cache=False, progress=False)


def test_warm_start(monkeypatch, tmp_path):
    torch.manual_seed(1)
    init = models.create("factorized", N=8, M=12)
    config = tiny(steps=1, warmup=0, lr=1e-9, aux_lr=1e-9)
    model, _ = train(config, init_from=init.state_dict(), progress=False)
    assert_same_weights(init, model, atol=1e-6, buffers=False)  # one step of lr 1e-9 from init

    path = tmp_path / "init.pt"
    save_checkpoint(path, init, config)
    no_training(monkeypatch)  # the same weights from a file: the same cache entry
    from_file, _ = train(config, init_from=path, progress=False)
    assert_same_weights(model, from_file)

    with pytest.raises(LictutorError, match="do not fit"):
        train(config, init_from=models.create("factorized", N=16, M=12).state_dict(), progress=False)


def test_nan_guard_names_the_step():
    with pytest.raises(LictutorError, match=r"diverged at step \d of 5: loss nan"):
        train(tiny(lr=1e30), cache=False, progress=False)


def test_trains_with_the_nlp_distortion():
    _, ckpt = train(tiny(distortion="nlp", lmbda=2.0, steps=2), cache=False, progress=False, log_every=1)
    assert len(ckpt["history"]) == 2 and all(math.isfinite(h["loss"]) for h in ckpt["history"])


@pytest.mark.parametrize("mode", ["ste", "mixed"])
def test_trains_with_other_relaxations(mode):
    model, ckpt = train(tiny(quantization=mode, steps=2), cache=False, progress=False, log_every=1)
    assert model.quantization == mode and all(math.isfinite(h["loss"]) for h in ckpt["history"])
    assert tiny(quantization=mode).key() != tiny().key()


# --- checkpoint files -----------------------------------------------------------------------


class Payload:
    """Pickled as a class instance: weights_only loading must refuse it."""


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(LictutorError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(LictutorError, match="cannot read"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "payload": Payload()}, tmp_path / "code.pt")
    with pytest.raises(LictutorError, match="refused checkpoint .*nothing in it was run"):
        load_checkpoint(tmp_path / "code.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(LictutorError, match="not a lictutor checkpoint"):
        load_checkpoint(tmp_path / "other.pt")

    config = tiny()
    save_checkpoint(tmp_path / "ok.pt", models.create("factorized", N=8, M=12), config)
    ckpt = torch.load(tmp_path / "ok.pt", weights_only=True)
    ckpt["model_args"] = {"N": 16, "M": 12}
    ckpt["digest"] = content_digest(ckpt)  # crafted, not damaged
    torch.save(ckpt, tmp_path / "wrong.pt")
    with pytest.raises(LictutorError, match="do not fit"):
        load_checkpoint(tmp_path / "wrong.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(LictutorError, match="cannot read"):
        load_checkpoint(tmp_path / "truncated.pt")


# --- several processes ----------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from lictutor.train import TrainConfig, train

    config = TrainConfig.from_dict(json.loads(sys.argv[1]))
    train(config, out=sys.argv[2], cache=False, progress=False, log_every=1)
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path):
    config = tiny(steps=3, batch=4)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes share the cores
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), json.dumps(config.to_dict()), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    single, ckpt = train(config, cache=False, progress=False, log_every=1)
    parallel, ddp_ckpt = load_checkpoint(out)
    assert_same_weights(single, parallel, atol=1e-5, buffers=False)  # CDF tables are integers
    for a, b in zip(ckpt["history"], ddp_ckpt["history"]):  # logged over the global batch
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["bpp"] == pytest.approx(a["bpp"], rel=1e-5)


def test_budget_config_follows_the_budget():
    smoke = BUDGETS["smoke"]
    config = budget_config(smoke, 0.01)
    assert (config.steps, config.batch, config.crop, config.lr) == (smoke.steps, smoke.batch, smoke.crop, smoke.lr)
    assert config.model_args == {"N": smoke.N, "M": smoke.M} and config.budget == "smoke"
    assert config.warmup == smoke.steps // 20
    short = budget_config(smoke, 0.01, steps=10, quantization="ste")
    assert (short.steps, short.warmup, short.quantization) == (10, 0, "ste")


# --- the L1 penalty on ŷ (Fu et al. 2023) ------------------------------------------------------

FAST = dict(model="fast", model_args={"N": 16, "M": 24}, steps=1, batch=2, crop=64, warmup=0)


def test_l1_leaves_older_cache_keys_alone():
    # l1 at 0 is left out of the key, so keys stay as they were before TrainConfig had an l1
    # field (the values pinned are those since issue 23 changed the default data on purpose)
    assert TrainConfig().key() == "09c7719e739c98a2"
    assert TrainConfig(**FAST).key() == TrainConfig(**FAST, l1=0).key() == "174da5d187bea2b1"
    assert TrainConfig(l1=0.0).key() == TrainConfig().key()
    assert TrainConfig(l1=0.01).key() != TrainConfig().key()
    assert TrainConfig(l1=0.01).key() != TrainConfig(l1=0.02).key()
    assert TrainConfig(l1=1).key() == TrainConfig(l1=1.0).key()
    config = TrainConfig(**FAST, l1=0.25)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for bad in (-0.1, float("nan"), "0.1"):
        with pytest.raises(LictutorError, match="l1 must be a finite number"):
            TrainConfig(l1=bad)


def test_checkpoints_from_before_augmentations_read_as_trained_without_them():
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "augment"}
    assert TrainConfig.from_dict(old).augment == () and TrainConfig().augment == data.DEFAULT_AUGMENT
    assert TrainConfig(augment=["scales", "colour", "scales"]).augment == ("colour", "scales")
    assert TrainConfig(augment=()).key() != TrainConfig().key()
    with pytest.raises(LictutorError, match="unknown augmentation"):
        TrainConfig(augment=("mixup",))


def test_shifts_leave_older_cache_keys_alone():
    fit = dict(frozen=("g_a", "g_s"))
    assert EntropyFitConfig(**fit).key() == EntropyFitConfig(**fit, shifts=[[0, 0], [8, 8]]).key()
    # the key this configuration has as a TrainConfig, where shifts used to be a field
    assert EntropyFitConfig(**fit).key() == TrainConfig(**fit).key() == "e753c0238831c1ba"
    grid = EntropyFitConfig(**fit, shifts=((0, 0), (0, 4)))
    assert grid.key() != EntropyFitConfig(**fit).key() and grid.shifts == ((0, 0), (0, 4))
    assert EntropyFitConfig.from_dict(json.loads(json.dumps(grid.to_dict()))) == grid
    for bad in ((), (0, 8), ((0, 16),), ((-1, 0),), ((0.5, 0),), ((True, 0),), "08"):
        with pytest.raises(LictutorError, match="shifts must be pixel offsets"):
            EntropyFitConfig(**fit, shifts=bad)
    # checkpoints written before shifts moved out of TrainConfig store it at its default
    assert TrainConfig.from_dict({**TrainConfig().to_dict(), "shifts": [[0, 0], [8, 8]]}) == TrainConfig()
    old_fit = {**TrainConfig(**fit).to_dict(), "shifts": [[0, 0], [0, 4]]}  # chapter 4's fits stored other shifts
    assert TrainConfig.from_dict(old_fit) == EntropyFitConfig(**fit, shifts=((0, 0), (0, 4)))


def test_a_finished_run_at_out_is_not_trained_again(tmp_path):
    config = tiny(steps=2, warmup=2)  # the schedule has no cosine part at all
    model, ckpt = train(config, out=tmp_path / "run.pt", cache=False, progress=False)
    again, ckpt_again = train(config, out=tmp_path / "run.pt", cache=False, progress=False)
    assert ckpt_again["step"] == 2 and ckpt_again["history"] == ckpt["history"]
    assert ckpt_again["train_time"] >= ckpt["train_time"]  # the run's own time, not this call's
    assert_same_weights(model, again)


def test_l1_gradient_is_the_weighted_sign():
    torch.manual_seed(0)
    net = models.create("fast", N=16, M=24).train()
    net.quantization = "ste"
    x = torch.rand(2, 3, 64, 64)
    out = net(x)
    y_hat = out["y_hat"]
    losses = RateDistortionLoss(0.01)(out, x)
    (rd_grad,) = torch.autograd.grad(losses["loss"], y_hat, retain_graph=True)
    total = add_l1_sparsity(losses, out, 0.3)
    assert total["rd"] is losses["loss"] and total["l1"] == y_hat.abs().mean()
    torch.testing.assert_close(total["loss"], losses["loss"] + 0.3 * y_hat.abs().mean())
    (grad,) = torch.autograd.grad(total["loss"], y_hat)
    torch.testing.assert_close(grad - rd_grad, 0.3 * torch.sign(y_hat) / y_hat.numel())


def test_trainer_loss_is_rd_plus_l1_of_y_hat():
    _, plain = train(TrainConfig(**FAST), cache=False, progress=False, log_every=1)
    _, sparse = train(TrainConfig(**FAST, l1=0.5), cache=False, progress=False, log_every=1)
    (h0,), (h1,) = plain["history"], sparse["history"]
    assert "l1" not in h0 and "rd" not in h0  # the history of runs without l1 is unchanged
    assert h1["rd"] == pytest.approx(h0["loss"], rel=1e-5)  # same weights, data and noise
    assert h1["bpp"] == pytest.approx(h0["bpp"], rel=1e-5)
    assert h1["loss"] == pytest.approx(h1["rd"] + 0.5 * h1["l1"], rel=1e-6)
    # l1 is mean|ŷ| of the first step's forward pass, redone here by hand
    seed_everything(0)
    net = models.create("fast", N=16, M=24).train()
    trainset = data.training_set(None, crop=64, seed=0)
    x = torch.stack([trainset[i] for i in range(2)])
    with quantization.sample_seeds([i for i in range(2)]):
        out = net(x)
    assert h1["l1"] == pytest.approx(out["y_hat"].abs().mean().item(), rel=1e-5)


def test_l1_works_for_every_model_family():
    _, ckpt = train(tiny(steps=2, l1=0.1), cache=False, progress=False, log_every=1)  # factorized
    for h in ckpt["history"]:
        assert h["l1"] > 0 and h["loss"] == pytest.approx(h["rd"] + 0.1 * h["l1"], rel=1e-6)


def test_frozen_modules_are_trainable_again_in_the_returned_model():
    model, _ = train(tiny(steps=1, frozen=("g_a",)), cache=False, progress=False)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(LictutorError, match="nothing of the model to train"):
        train(tiny(steps=1, frozen=("g_a", "g_s", "entropy_bottleneck")), cache=False, progress=False)


def test_l1_with_distillation_into_a_pruned_student():
    """Step 3 of Fu et al.'s distillation: a student without its DRM, a teacher, and the L1 term."""
    torch.manual_seed(1)
    teacher = models.create("fast", N=16, M=24)
    weights = {"rd": 1.0, "y": 0.2, "x_hat": 0.2}
    config = TrainConfig(**{**FAST, "model_args": {"N": 16, "M": 24, "removed": ["g_s.2"]}}, distill=weights, l1=0.5)
    model, ckpt = train(config, teacher=teacher, cache=False, progress=False, log_every=1)
    (h,) = ckpt["history"]
    assert h["loss"] == pytest.approx(h["rd"] + 0.2 * h["kd_y"] + 0.2 * h["kd_x_hat"] + 0.5 * h["l1"], rel=1e-5)
    assert model.removed == ("g_s.2",)


def test_training_time_counts_each_model_once_trained_or_loaded(monkeypatch):
    monkeypatch.setattr(costs, "_RETURNED", {})
    _, first = train(tiny(), progress=False)
    _, again = train(tiny(), progress=False)  # from the cache: its record, not this call's time
    _, other = train(tiny(lmbda=0.05), progress=False)
    assert again["cached"] and again["train_time"] == first["train_time"]
    assert costs.training_time() == (first["train_time"] + other["train_time"], 2)
    train(tiny(steps=9), progress=False, stop_after=2)  # unfinished: not counted
    assert costs.training_time()[1] == 2
    minutes = (first["train_time"] + other["train_time"]) / 60
    line = costs.run_summary("smoke", time.perf_counter() - 65)
    assert line == f"budget smoke: chapter ran in 65 s; its 2 models took {minutes:.1f} min to train from an empty cache"


def test_run_summary_of_a_chapter_that_trains_nothing(monkeypatch):
    monkeypatch.setattr(costs, "_RETURNED", {})
    assert costs.run_summary("cpu", time.perf_counter() - 35) == "budget cpu: chapter ran in 35 s; it trains no models"
