"""lictutor.distill: Hinton's soft targets, the tempered entropy-model KL, codec records, and
the trainer with a teacher."""

import json
import dataclasses
import math

import compressai.models as compressai_models
import pytest
import torch
import torch.nn.functional as F

from lictutor import distill, models
from lictutor.distill import (
    check_weights,
    codec_distill_losses,
    codec_forward,
    entropy_model_kl,
    hard_soft_loss,
    integer_support,
    logit_matching_loss,
    soft_target_loss,
    tempered_log_pmf,
)
from lictutor.entropy import GaussianConditional
from lictutor.errors import LictutorError
from lictutor.checkpoint import cache_path, save_checkpoint
from lictutor.config import TrainConfig
from lictutor.train import train

SMALL = {"N": 16, "M": 24}


def logits(seed, shape=(8, 10)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 3


# --- Hinton's soft targets --------------------------------------------------------------------


def test_soft_loss_at_T1_is_plain_kl():
    s, t = logits(0), logits(1)
    expected = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")
    torch.testing.assert_close(soft_target_loss(s, t, T=1.0), expected)
    assert soft_target_loss(t, t, T=3.0).item() == pytest.approx(0.0, abs=1e-12)


def test_high_temperature_limit_is_logit_matching():
    """Hinton et al. sec. 2.1: T²·KL → 1/(2N)·Σ(z − v)² of zero-mean logits, error O(1/T)."""
    s, t = logits(2), logits(3) + 5.0  # a shift of the logits changes neither side
    limit = logit_matching_loss(s, t).item()
    errors = [abs(soft_target_loss(s, t, T).item() - limit) / limit for T in (10.0, 100.0, 1000.0)]
    assert errors[2] < 1e-3
    assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5  # shrinks like 1/T
    centered = 0.5 * ((s - s.mean(1, keepdim=True)) - (t - t.mean(1, keepdim=True))).pow(2).mean()
    assert limit == pytest.approx(centered.item())


def test_gradient_magnitude_does_not_depend_on_temperature():
    """The soft targets' gradient scales as 1/T²; the T² factor makes it T-independent."""
    t = logits(5)
    norms, unscaled = [], []
    for T in (5.0, 50.0, 500.0):
        s = logits(4).requires_grad_()
        loss = soft_target_loss(s, t, T)
        (grad,) = torch.autograd.grad(loss, s)
        norms.append(grad.norm().item())
        unscaled.append(grad.norm().item() / T**2)
    assert max(norms) / min(norms) < 1.3
    assert norms[2] == pytest.approx(norms[1], rel=0.02)
    assert unscaled[0] / unscaled[2] == pytest.approx(1e4, rel=0.3)  # without T²: 1/T²
    # and the limit gradient is that of logit matching, (z − v)/N per example
    s = logits(4).requires_grad_()
    (limit,) = torch.autograd.grad(logit_matching_loss(s, t), s)
    (far,) = torch.autograd.grad(soft_target_loss(s, t, 1e4), s)
    torch.testing.assert_close(far, limit, rtol=1e-3, atol=1e-5)


def test_hard_soft_loss():
    s, t = logits(6), logits(7)
    labels = torch.arange(8) % 10
    torch.testing.assert_close(hard_soft_loss(s, t, labels, T=4.0, alpha=1.0), soft_target_loss(s, t, 4.0))
    torch.testing.assert_close(hard_soft_loss(s, t, labels, T=4.0, alpha=0.0), F.cross_entropy(s, labels))
    mixed = 0.3 * soft_target_loss(s, t, 4.0) + 0.7 * F.cross_entropy(s, labels)
    torch.testing.assert_close(hard_soft_loss(s, t, labels, T=4.0, alpha=0.3), mixed)
    with pytest.raises(LictutorError, match="alpha"):
        hard_soft_loss(s, t, labels, alpha=1.5)
    with pytest.raises(LictutorError, match="temperature"):
        soft_target_loss(s, t, T=0)
    with pytest.raises(LictutorError, match="shape"):
        soft_target_loss(s, t[:, :5])


# --- the tempered discretized Gaussian -------------------------------------------------------


def gaussian_params(seed, shape=(2, 3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(shape, generator=g) * 3
    scales = torch.rand(shape, generator=g) * 6 + 0.02  # some below the 0.11 bound
    return means, scales


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 10.0])
def test_tempered_categorical_sums_to_one(T):
    means, scales = gaussian_params(0)
    support = integer_support(means, K=16)
    assert support.shape == means.shape + (33,)
    p = tempered_log_pmf(support, means, scales, T).exp()
    torch.testing.assert_close(p.sum(-1), torch.ones_like(means))
    assert bool(torch.isfinite(p).all())


def test_at_T1_the_categorical_is_the_gaussian_conditional_likelihood():
    means, scales = gaussian_params(1)
    support = integer_support(means, K=16)
    gc = GaussianConditional(None)
    expected = gc.likelihood(support, scales.unsqueeze(-1), means.unsqueeze(-1))
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(tempered_log_pmf(support, means, scales, 1.0).exp(), expected, atol=1e-6, rtol=1e-4)
    # zero-mean (scale hyperprior): means None
    expected = gc.likelihood(support - means.round().unsqueeze(-1), scales.unsqueeze(-1))
    expected = expected / expected.sum(-1, keepdim=True)
    got = tempered_log_pmf(support - means.round().unsqueeze(-1), None, scales, 1.0).exp()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)


def test_temperature_flattens_the_categorical():
    means, scales = gaussian_params(2)
    support = integer_support(means, K=8)

    def entropy(T):
        log_p = tempered_log_pmf(support, means, scales, T)
        return -(log_p.exp() * log_p).sum(-1).mean().item()

    assert entropy(0.5) < entropy(1.0) < entropy(2.0) < entropy(20.0) < math.log(17)


def test_entropy_model_kl():
    means, scales = gaussian_params(3)
    for T in (1.0, 4.0):
        assert entropy_model_kl(means, scales, means, scales, T=T).item() == pytest.approx(0.0, abs=1e-6)
        assert entropy_model_kl(None, scales, None, scales, T=T).item() == pytest.approx(0.0, abs=1e-6)
    s_means = (means + 0.7).requires_grad_()
    s_scales = (scales * 1.5).requires_grad_()
    t_means, t_scales = means.clone().requires_grad_(), scales.clone().requires_grad_()
    kl = entropy_model_kl(s_means, s_scales, t_means, t_scales, T=2.0)
    assert kl.item() > 0 and math.isfinite(kl.item())
    kl.backward()
    assert s_means.grad.abs().sum() > 0 and s_scales.grad.abs().sum() > 0
    assert t_means.grad is None and t_scales.grad is None  # the teacher is a fixed target
    # far-apart distributions with the smallest scale: large but finite, no NaN anywhere
    tiny = torch.full((4,), 0.11)
    far = entropy_model_kl(torch.full((4,), 10.0, requires_grad=True), tiny, torch.zeros(4), tiny, T=1.0, K=16)
    assert math.isfinite(far.item()) and far.item() > 100
    with pytest.raises(LictutorError, match="shape"):
        entropy_model_kl(None, scales[:1], None, scales)
    with pytest.raises(LictutorError, match="K must be"):
        entropy_model_kl(None, scales, None, scales, K=0)


def test_a_student_that_can_match_the_teacher_drives_the_kl_to_zero():
    # Chapter 5b's anomaly: a codec student trained on the T = 1 KL ended with a higher T = 1
    # KL than students trained at T = 3 or 10. Here the student is free per-element (μ, σ), so
    # it can match exactly: at every temperature, training drives the T = 1 KL to about zero.
    # The loss has no floor that would stop it (no bug); how fast it gets there is the
    # optimizer's matter, which chapter 5b measures.
    torch.manual_seed(0)
    t_means, t_scales = torch.randn(100) * 2, torch.rand(100) * 3 + 0.05
    for T in (1.0, 3.0, 10.0):
        means, log_scales = torch.zeros(100, requires_grad=True), torch.zeros(100, requires_grad=True)
        opt = torch.optim.Adam([means, log_scales], lr=0.1)
        for _ in range(250):
            loss = entropy_model_kl(means, log_scales.exp(), t_means, t_scales, T=T)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            assert entropy_model_kl(means, log_scales.exp(), t_means, t_scales, T=1.0).item() < 0.005
            assert (means - t_means).abs().mean() < 0.03
            assert (log_scales.exp() - t_scales.clamp_min(0.11)).abs().mean() < 0.03


# --- codec records and losses ----------------------------------------------------------------


def test_codec_forward_records_one_pass():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    model = models.create("hyperprior", **SMALL).eval()
    rec = codec_forward(model, x, features=["g_s.1"])
    ref = model(x)
    torch.testing.assert_close(rec["x_hat"], ref["x_hat"])
    torch.testing.assert_close(rec["y_hat"], torch.round(rec["y"]))  # eval: rounded, zero mean
    assert rec["means"] is None and rec["scales"].shape == rec["y"].shape
    assert rec["z_hat"].shape == (2, 16, 1, 1) and rec["features"]["g_s.1"].shape == (2, 16, 8, 8)
    assert set(rec["likelihoods"]) == {"y", "z"}

    mean_scale = codec_forward(models.create("mean-scale", **SMALL).eval(), x)
    assert mean_scale["means"].shape == mean_scale["scales"].shape == mean_scale["y"].shape
    context = codec_forward(models.create("context", **SMALL).eval(), x)
    assert context["means"].shape == context["y"].shape and "z_hat" in context
    factorized = codec_forward(models.create("factorized", **SMALL).eval(), x)
    assert "scales" not in factorized and "z_hat" not in factorized
    with pytest.raises(LictutorError, match="no module 'g_s.99'"):
        codec_forward(model, x, features=["g_s.99"])
    assert not model.g_s._forward_pre_hooks and not model.g_a._forward_hooks  # hooks removed


def test_compressai_models_are_recorded_too():
    """Same module names, so a CompressAI model (e.g. a pretrained teacher) records the same values."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    theirs = compressai_models.ScaleHyperprior(16, 24).eval()
    ours = models.ScaleHyperprior(16, 24)
    ours.load_state_dict(theirs.state_dict())
    a, b = codec_forward(ours.eval(), x), codec_forward(theirs, x)
    for key in ("y", "y_hat", "z_hat", "scales", "x_hat"):
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert b["means"] is None


def test_codec_distill_losses():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    teacher = models.create("mean-scale", **SMALL).eval()
    weights = {"y": 1.0, "z": 1.0, "x_hat": 1.0, "kl": 1.0, "T": 2.0, "features": {"g_s.3": 0.5}}
    rec = codec_forward(teacher, x, ["g_s.3"])
    same = codec_distill_losses(rec, rec, weights)
    assert set(same) == {"y", "z", "x_hat", "kl", "features"}
    assert all(v.item() == pytest.approx(0.0, abs=1e-6) for v in same.values())

    student = models.create("mean-scale", **SMALL).train()
    terms = codec_distill_losses(codec_forward(student, x, ["g_s.3"]), rec, weights)
    assert all(v.item() > 0 for v in terms.values())
    sum(terms.values()).backward()
    assert student.g_a[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert set(codec_distill_losses(rec, rec, {"y": 0.2})) == {"y"}  # only positive weights

    narrow = codec_forward(models.create("mean-scale", N=8, M=24).eval(), x, ["g_s.3"])
    with pytest.raises(LictutorError, match=r"'z'.*shape"):
        codec_distill_losses(narrow, rec, {"z": 1.0})
    with pytest.raises(LictutorError, match=r"g_s.3.*shape"):
        codec_distill_losses(narrow, rec, {"features": {"g_s.3": 1.0}})
    factorized = codec_forward(models.create("factorized", **SMALL).eval(), x)
    with pytest.raises(LictutorError, match="'kl' needs the Gaussian parameters"):
        codec_distill_losses(factorized, factorized, {"kl": 1.0})


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"y": 0.2, "ydot": 1}, "unknown distillation weights: ydot"),
        ({"y": -0.2}, "weight y must be a finite number >= 0"),
        ({"x_hat": float("nan")}, "weight x_hat"),
        ({"y": 1, "T": 0}, "temperature"),
        ({"y": 1, "K": 2.5}, "K must be a positive integer"),
        ({"rd": 1.0}, "no distillation term"),
        ({"features": ["g_s.1"]}, "features must map layer names"),
        ({"features": {"g_s.1": -1}}, r"features\['g_s.1'\]"),
        ([("y", 1)], "must be a dict"),
    ],
)
def test_bad_weights(weights, message):
    with pytest.raises(LictutorError, match=message):
        check_weights(weights)


def test_weights_defaults():
    assert check_weights({"y": 0.2}) == {**distill.DEFAULT_WEIGHTS, "y": 0.2}
    config = TrainConfig(distill={"y": 0.2, "features": {"g_s.1": 0.1}})
    assert config == TrainConfig(distill={"y": 0.2, "rd": 1.0, "T": 1.0, "features": {"g_s.1": 0.1}})
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_integer_and_float_weights_are_one_recipe():
    config = TrainConfig(distill={"y": 1, "rd": 1, "T": 2, "features": {"g_s.1": 1}})
    assert config.key() == TrainConfig(distill={"y": 1.0, "rd": 1.0, "T": 2.0, "features": {"g_s.1": 1.0}}).key()
    assert isinstance(config.distill["K"], int)


def test_decay_is_kept_only_when_it_decays():
    assert "decay" not in check_weights({"y": 0.2, "decay": "none"})
    assert check_weights({"y": 0.2, "decay": "linear"})["decay"] == "linear"
    assert TrainConfig(distill={"y": 0.2, "decay": "none"}).key() == TrainConfig(distill={"y": 0.2}).key()
    assert TrainConfig(distill={"y": 0.2, "decay": "cosine"}).key() != TrainConfig(distill={"y": 0.2}).key()
    with pytest.raises(LictutorError, match="unknown decay 'exp'"):
        check_weights({"y": 0.2, "decay": "exp"})


def test_kd_factor_schedules():
    assert [distill.kd_factor(s, 5) for s in range(5)] == [1.0] * 5
    assert [distill.kd_factor(s, 5, "linear") for s in range(5)] == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    assert [distill.kd_factor(s, 5, "cosine") for s in range(5)] == pytest.approx(
        [1, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4), 0])
    assert distill.kd_factor(0, 1, "linear") == 1.0  # a one-step run distils at full weight
    with pytest.raises(LictutorError, match="unknown decay"):
        distill.kd_factor(0, 5, "step")


# --- the trainer with a teacher ---------------------------------------------------------------

STUDENT = dict(model="hyperprior", model_args=SMALL, steps=3, batch=2, crop=64, warmup=0, lmbda=0.013)


def test_plain_cache_keys_are_unchanged():
    """Cache keys do not change by accident: a field added with a default that keeps the old
    behaviour (`distill`, `l1`, `frozen`) leaves them as they were. `augment` (issue 23) changed
    them on purpose, since the book's training photos and augmentations changed with it: models
    trained on the old photos are not taken for new ones."""
    assert TrainConfig().key() == "09c7719e739c98a2"
    assert TrainConfig(**STUDENT).key() == "306a58afa903145a"
    assert TrainConfig(frozen=("g_a",)).key() == "ece5f3faa9bf8f61"
    assert TrainConfig(distill={}, l1=0.0, frozen=()).key() == TrainConfig().key()


def test_train_with_a_teacher(tmp_path):
    torch.manual_seed(1)
    teacher = models.create("hyperprior", **SMALL)
    weights = {"rd": 1.0, "y": 0.2, "x_hat": 0.2, "kl": 0.1, "T": 2.0}
    config = TrainConfig(**STUDENT, distill=weights)
    model, ckpt = train(config, teacher=teacher, progress=False, log_every=1)
    assert [h["step"] for h in ckpt["history"]] == [1, 2, 3]
    for h in ckpt["history"]:
        assert {"rd", "kd_y", "kd_x_hat", "kd_kl"} <= set(h) and "kd_z" not in h
        kd = 0.2 * h["kd_y"] + 0.2 * h["kd_x_hat"] + 0.1 * h["kd_kl"]
        assert h["loss"] == pytest.approx(h["rd"] + kd, rel=1e-5)
    assert not teacher.training and not model.training

    # the teacher is part of the key, by its parameters: as a model or as a checkpoint file
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, teacher, TrainConfig(**STUDENT))
    assert cache_path(config, teacher=path) == cache_path(config, teacher=teacher)
    assert cache_path(config, teacher=teacher).is_file()
    torch.manual_seed(2)
    other = models.create("hyperprior", **SMALL)
    keys = {config.key(teacher=teacher), config.key(teacher=other), TrainConfig(**STUDENT).key()}
    assert len(keys) == 3

    # a decaying schedule scales the distillation terms, not the RD loss
    decayed = {**weights, "decay": "linear"}
    ckpt = train(TrainConfig(**STUDENT, distill=decayed), teacher=teacher, cache=False, progress=False, log_every=1)[1]
    for h, factor in zip(ckpt["history"], (1.0, 0.5, 0.0)):
        kd = 0.2 * h["kd_y"] + 0.2 * h["kd_x_hat"] + 0.1 * h["kd_kl"]
        assert h["loss"] == pytest.approx(h["rd"] + factor * kd, rel=1e-5)

    # the teacher draws none of the student's noise: its RD loss is that of plain training
    plain = train(TrainConfig(**{**STUDENT, "steps": 1}), cache=False, progress=False, log_every=1)[1]
    first = train(TrainConfig(**{**STUDENT, "steps": 1}, distill=weights), teacher=path, cache=False,
                  progress=False, log_every=1)[1]
    assert first["history"][0]["rd"] == pytest.approx(plain["history"][0]["loss"], rel=1e-6)


def test_teacher_and_weights_go_together():
    torch.manual_seed(1)
    teacher = models.create("hyperprior", **SMALL)
    with pytest.raises(LictutorError, match="no weights"):
        train(TrainConfig(**STUDENT), teacher=teacher, cache=False, progress=False)
    with pytest.raises(LictutorError, match="no teacher"):
        train(TrainConfig(**STUDENT, distill={"y": 0.2}), cache=False, progress=False)
    with pytest.raises(LictutorError, match="teacher must be a model or a checkpoint path"):
        train(TrainConfig(**STUDENT, distill={"y": 0.2}), teacher=42, cache=False, progress=False)
    with pytest.raises(LictutorError, match="distill must be a dict"):
        TrainConfig(distill=[0.2])
    wide = models.create("hyperprior", N=16, M=32)  # another M: ŷ cannot be compared
    with pytest.raises(LictutorError, match=r"'y'.*shape"):
        train(TrainConfig(**STUDENT, distill={"y": 0.2}), teacher=wide, cache=False, progress=False)


# --- fit_classifier (chapter 5a's small trainer) ----------------------------------------------


def _toy_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y


def _toy_net(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 2))


def test_fit_classifier_learns_and_is_reproducible():
    x, y = _toy_problem()
    runs = []
    for _ in range(2):
        net = _toy_net(1)
        state = torch.get_rng_state()
        history = distill.fit_classifier(net, x, y, epochs=30, batch=32, lr=1e-2, seed=3)
        assert torch.equal(torch.get_rng_state(), state)  # the global random state is left alone
        runs.append(net)
    assert len(history) == 30 and history[-1] < history[0] / 3
    assert not runs[0].training
    with torch.no_grad():
        assert (runs[0](x).argmax(1) == y).float().mean() > 0.95
        torch.testing.assert_close(runs[0](x), runs[1](x))


def test_fit_classifier_passes_target_tuples_and_augments():
    x, y = _toy_problem()
    teacher = torch.randn(120, 2)
    seen, augmented = [], []

    def loss_fn(out, labels, soft):
        seen.append((labels.shape, soft.shape))
        return hard_soft_loss(out, soft, labels, T=2.0, alpha=0.9)

    def jitter(batch, gen):
        augmented.append(len(batch))
        return batch + 0.01 * torch.randn(batch.shape, generator=gen)

    distill.fit_classifier(_toy_net(0), x, (y, teacher), loss_fn, epochs=2, batch=50, augment=jitter)
    assert seen[0] == (torch.Size([50]), torch.Size([50, 2])) and seen[2][0] == torch.Size([20])
    assert augmented == [50, 50, 20] * 2
    with pytest.raises(LictutorError, match="rows"):
        distill.fit_classifier(_toy_net(0), x, y[:10])
    with pytest.raises(LictutorError, match="epochs"):
        distill.fit_classifier(_toy_net(0), x, y, epochs=0)


# --- students of a codec (chapter 5b) -----------------------------------------------------------


def test_kl_rate_weight():
    # 96 channels at a down-sampling of 16: 0.375 elements per pixel, 1/ln 2 bits per nat
    assert distill.kl_rate_weight(96) == pytest.approx(0.4 * 0.375 / math.log(2))
    assert distill.kl_rate_weight(192, rd=1.0) == pytest.approx(0.75 / math.log(2))
    with pytest.raises(LictutorError, match="positive integers"):
        distill.kl_rate_weight(0)


def test_distill_recipes():
    recipes = distill.distill_recipes((1, 3), kl_weight=0.25, K=8)
    assert list(recipes) == ["scratch", "latent+output", "KL T=1", "KL T=3",
                             "latent+output+KL T=1", "latent+output+KL T=3"]
    assert recipes["scratch"] == {}
    assert recipes["latent+output"] == {"rd": 0.4, "y": 0.2, "x_hat": 0.2}
    assert recipes["KL T=3"] == {"rd": 0.4, "kl": 0.25, "T": 3.0, "K": 8}
    assert recipes["latent+output+KL T=1"] == {"rd": 0.4, "y": 0.2, "x_hat": 0.2, "kl": 0.25, "T": 1.0, "K": 8}
    # T=2 and T=2.0 are one recipe, one cache key
    assert distill.distill_recipes((2,))["KL T=2"] == distill.distill_recipes((2.0,))["KL T=2"]
    with pytest.raises(LictutorError, match="temperature"):
        distill.distill_recipes((0,))
    with pytest.raises(LictutorError, match="differ"):
        distill.distill_recipes((2, 2.0))


def test_train_students_grid():
    torch.manual_seed(1)
    teachers = {0.013: models.create("hyperprior", **SMALL)}
    recipes = distill.distill_recipes((2,), K=4)
    base = TrainConfig(**{**STUDENT, "steps": 2})
    plan = {8: ["scratch", "latent+output+KL T=2"], 4: ["scratch"]}
    grid = distill.train_students(base, plan, recipes, teachers, progress=False, log_every=1)
    assert set(grid) == {(8, "scratch", 0.013), (8, "latent+output+KL T=2", 0.013), (4, "scratch", 0.013)}
    model, ckpt = grid[(8, "latent+output+KL T=2", 0.013)]
    assert model.g_a[0].out_channels == 8 and model.g_a[-1].out_channels == SMALL["M"]
    assert {"kd_y", "kd_x_hat", "kd_kl"} <= set(ckpt["history"][0])
    scratch = grid[(8, "scratch", 0.013)][1]
    assert "rd" not in scratch["history"][0]
    # the twins see the same data and noise: equal RD loss at the first step
    assert ckpt["history"][0]["rd"] == pytest.approx(scratch["history"][0]["loss"], rel=1e-6)
    # a second call loads from the cache
    again = distill.train_students(base, {8: ["scratch"]}, recipes, teachers, progress=False)
    assert again[(8, "scratch", 0.013)][1]["key"] == scratch["key"]
    with pytest.raises(LictutorError, match="unknown recipes"):
        distill.train_students(base, {8: ["KL T=9"]}, recipes, teachers)
    with pytest.raises(LictutorError, match="needs a teacher"):
        distill.train_student(base, recipes["latent+output"], None)


def test_train_students_from_a_shared_pretraining():
    torch.manual_seed(1)
    teachers = {0.013: models.create("hyperprior", **SMALL)}
    recipes = distill.distill_recipes((2,), K=4)
    base = TrainConfig(**{**STUDENT, "steps": 1})
    plan = {8: ["scratch", "latent+output"]}
    grid = distill.train_students(base, plan, recipes, teachers, pretrain_steps=2, progress=False, log_every=1)
    config = dataclasses.replace(base, model_args={**base.model_args, "N": 8})
    pretrained, _ = distill.train_student(dataclasses.replace(config, steps=2, warmup=0), {}, progress=False)
    state = pretrained.state_dict()  # loaded from the cache: the pretraining ran once, from scratch
    assert cache_path(config, init_from=state).is_file()  # the twin started from it
    assert cache_path(dataclasses.replace(config, distill=recipes["latent+output"]), init_from=state,
                      teacher=teachers[0.013]).is_file()
    plain = distill.train_students(base, plan, recipes, teachers, progress=False, log_every=1)
    assert grid[(8, "scratch", 0.013)][1]["key"] != plain[(8, "scratch", 0.013)][1]["key"]
    with pytest.raises(LictutorError, match="pretrain_steps"):
        distill.train_students(base, plan, recipes, teachers, pretrain_steps=-1)
