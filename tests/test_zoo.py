"""lictutor.zoo: the book's recipes, the entropy-model fit on fixed transforms
(lictutor.train.fit_entropy_model), and the trainer's frozen modules and partial warm starts
they rely on."""

import pytest
import torch

import lictutor.train as train_module
from lictutor import data, metrics, models, zoo
from lictutor.budget import get_budget
from lictutor.config import EntropyFitConfig, TrainConfig, budget_config
from lictutor.errors import LictutorError
from lictutor.train import train

TINY = dict(model_args={"N": 8, "M": 12}, batch=2, crop=64, warmup=1, lr=1e-2)


def transforms():
    """Transforms of a random factorized model, ``g_a``'s output scaled up so that the
    latents cost several bits each (at initialization they are near zero)."""
    torch.manual_seed(1)
    state = zoo.transforms_of(models.create("factorized", N=8, M=12))
    state["g_a.6.weight"] = state["g_a.6.weight"] * 30
    return state


def test_transforms_of_keeps_only_g_a_and_g_s():
    state = transforms()
    assert state and all(k.startswith(("g_a.", "g_s.")) for k in state)


def test_fast_transforms_of_computes_what_the_factorized_transforms_compute():
    torch.manual_seed(0)
    factorized = models.create("factorized", N=8, M=12).eval()
    fast = models.create("fast", N=8, M=12).eval()
    state = zoo.fast_transforms_of(factorized)
    assert set(state) == set(zoo.transforms_of(fast))  # every weight of FastLIC's g_a and g_s
    fast.load_state_dict(state, strict=False)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = factorized.g_a(x)
        assert torch.allclose(fast.g_a(x), y, atol=1e-6)
        assert torch.allclose(fast.g_s(y), factorized.g_s(y), atol=1e-6)
    assert torch.equal(zoo.fast_transforms_of(factorized)["g_s.2.conv1.weight"], state["g_s.2.conv1.weight"])
    with pytest.raises(LictutorError, match="chapter 2's transforms"):
        zoo.fast_transforms_of(models.create("fast", N=8, M=12))


def test_fast_transforms_of_without_the_deformable_blocks_fit_fastlic_without_them():
    torch.manual_seed(0)
    factorized = models.create("factorized", N=8, M=12).eval()
    plain = models.create("fast", N=8, M=12, removed=zoo.FAST_DRM_BLOCKS).eval()
    state = zoo.fast_transforms_of(factorized, removed=zoo.FAST_DRM_BLOCKS)
    assert set(state) == set(zoo.transforms_of(plain))
    plain.load_state_dict(state, strict=False)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(plain.g_s(plain.g_a(x)), factorized.g_s(factorized.g_a(x)), atol=1e-6)


def test_partial_warm_start_loads_the_transforms_and_keeps_the_rest():
    init = transforms()
    model, _ = train(TrainConfig(model="hyperprior", steps=1, frozen=("g_a", "g_s"), **TINY),
                     init_from=init, progress=False)
    for k, v in init.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_unexpected_warm_start_weights_are_an_error():
    with pytest.raises(LictutorError, match="do not fit"):
        train(TrainConfig(model="hyperprior", steps=1, **TINY), init_from={"nope.weight": torch.zeros(1)},
              progress=False)


def test_frozen_modules_do_not_change_but_the_others_do():
    init = transforms()
    torch.manual_seed(0)
    start = models.create("hyperprior", N=8, M=12)
    start.load_state_dict(init, strict=False)
    model, _ = train(TrainConfig(model="hyperprior", steps=3, frozen=("g_a", "g_s"), **TINY),
                     init_from=start.state_dict(), progress=False)
    after = model.state_dict()
    for k, v in start.state_dict().items():
        same = torch.equal(after[k], v)
        if k.startswith(("g_a.", "g_s.")):
            assert same, k
    assert not torch.equal(after["h_s.0.weight"], start.state_dict()["h_s.0.weight"])


def test_frozen_names_are_checked():
    with pytest.raises(LictutorError, match="no module"):
        train(TrainConfig(model="hyperprior", steps=1, frozen=("g_x",), **TINY), progress=False)
    with pytest.raises(LictutorError, match="sequence of module names"):
        TrainConfig(frozen="g_a")


def test_frozen_is_part_of_the_key_only_when_set():
    plain = TrainConfig(**TINY)
    assert plain.key() == TrainConfig(frozen=(), **TINY).key()
    assert plain.key() != TrainConfig(frozen=("g_a",), **TINY).key()


@pytest.mark.parametrize("family", ["hyperprior", "mean-scale", "context"])
def test_fit_entropy_model_lowers_the_rate_and_keeps_the_transforms(family):
    init = transforms()
    config = TrainConfig(model=family, steps=30, frozen=("g_a", "g_s"), **TINY)
    model, ckpt = zoo.fit_entropy_model(config, init, progress=False)
    for k, v in init.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    bpp = [h["bpp"] for h in ckpt["history"]]
    assert len(bpp) == 3 and bpp[-1] < 0.8 * bpp[0]
    # the model codes right away
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = model.compress(x)
        assert model.decompress(out["strings"], out["shape"])["x_hat"].shape == x.shape


def test_fit_entropy_model_caches_and_checks_its_inputs(monkeypatch):
    init = transforms()
    config = TrainConfig(model="hyperprior", steps=2, frozen=("g_a", "g_s"), **TINY)
    first, _ = zoo.fit_entropy_model(config, init, progress=False)
    monkeypatch.setattr(train_module, "_training_latents", lambda *a: (_ for _ in ()).throw(AssertionError("trained")))
    again, _ = zoo.fit_entropy_model(config, init, progress=False)
    torch.testing.assert_close(again.state_dict()["h_s.0.weight"], first.state_dict()["h_s.0.weight"])
    with pytest.raises(LictutorError, match="frozen"):
        zoo.fit_entropy_model(TrainConfig(model="hyperprior", steps=2, **TINY), init, progress=False)
    with pytest.raises(LictutorError, match="lacks the transforms"):
        zoo.fit_entropy_model(config, {k: v for k, v in init.items() if k.startswith("g_a.")}, progress=False)


@pytest.mark.slow
def test_training_latents_one_per_photo_flip_and_shift():
    model = models.create("hyperprior", N=8, M=12)
    for shifts, augment in ((((0, 0), (8, 8)), data.DEFAULT_AUGMENT), (zoo.GRID_SHIFTS, ())):
        config = EntropyFitConfig(model="hyperprior", shifts=shifts, frozen=("g_a", "g_s"), augment=augment, **TINY)
        photos = data.training_photos(None, config.crop, augment)
        latents = train_module._training_latents(model, config, "cpu")
        assert len(latents) == 2 * len(shifts) * len(photos)
        names = [name for name, _ in photos]
        assert len(names) > len(data.train_images()) if augment else names == data.builtin_split()[0]
    assert len(set(zoo.GRID_SHIFTS)) == 16
    # a shift by 4 pixels gives other latents than the unshifted photo, not a translated copy
    first, second = latents[0], latents[1]
    assert first.shape[1] == 12 and not torch.allclose(first[..., :8, :8], second[..., :8, :8])


def test_hyperprior_stages_give_shifts_to_the_fit_only():
    budget = get_budget("smoke")
    fit, joint = zoo.hyperprior_stages(budget, budget.lmbdas[0], "mean-scale", shifts=zoo.GRID_SHIFTS)
    assert fit.shifts == zoo.GRID_SHIFTS and type(joint) is TrainConfig  # the joint stage has no shifts
    assert isinstance(fit, EntropyFitConfig) and fit.steps == budget.steps // 2 and joint.steps == budget.steps // 8
    assert fit.key() != zoo.hyperprior_stages(budget, budget.lmbdas[0], "mean-scale")[0].key()


def test_factorized_models_fine_tune_every_lambda_from_one_model(monkeypatch):
    budget = get_budget("smoke").with_(steps=4, N=8, M=12, lmbdas=(0.01, 0.02, 0.04))
    calls = []

    def fake_train(config, init_from=None, progress=True, **run):
        calls.append((config.lmbda, config.steps, init_from, config.lr))
        return models.create("factorized", N=8, M=12), {}

    monkeypatch.setattr(zoo, "train", fake_train)
    trained = zoo.factorized_models(budget, progress=False)
    assert sorted(trained) == [0.01, 0.02, 0.04]
    base = [c for c in calls if c[2] is None]  # asked for before each λ; the cache trains it once
    assert base and all(c[:2] == (0.02, 4) and c[3] == budget.lr for c in base)  # the middle λ from scratch
    tuned = [c for c in calls if c[2] is not None]
    assert sorted(c[0] for c in tuned) == [0.01, 0.02, 0.04]  # then every λ, the middle one too
    assert all(steps == 2 and lr == budget.lr * zoo.FINE_TUNE_LR for _, steps, _, lr in tuned)


def test_trained_model_is_the_chapters_recipe_for_each_family(monkeypatch):
    """What ``lictutor train`` trains (trained_model) is the model a chapter gets for that λ:
    the same configurations, in the same order, whose cache keys are then shared."""
    budget = get_budget("smoke").with_(steps=4, N=8, M=12, lmbdas=(0.01, 0.02, 0.04))
    calls = []

    def fake_train(config, init_from=None, progress=True, **run):
        calls.append((config.key(), run))
        return models.create(config.model, **config.model_args), {}

    monkeypatch.setattr(zoo, "train", fake_train)
    monkeypatch.setattr(zoo, "fit_entropy_model", lambda config, init, progress=True: fake_train(config))
    zoo.factorized_models(budget, progress=False)
    book = [key for key, _ in calls]
    calls.clear()
    zoo.trained_model(budget, "factorized", 0.04, progress=False, out="m.pt", force=True)
    assert [key for key, _ in calls] == [book[0], book[-1]]  # the base, then λ's fine-tuning
    assert calls[-1][1] == {"out": "m.pt", "force": True} and calls[0][1] == {}  # only the last is written
    calls.clear()
    zoo.hyperprior_models(budget, "context", progress=False, lmbdas=(0.01,), shifts=zoo.GRID_SHIFTS)
    book = [key for key, _ in calls]
    calls.clear()
    zoo.trained_model(budget, "context", 0.01, progress=False)  # chapter 4's sixteen shifts
    assert [key for key, _ in calls] == book and len(book) == 4  # base, fine-tuning, fit, joint
    calls.clear()
    zoo.hyperprior_models(budget, "fast", progress=False, lmbdas=(0.01,), shifts=zoo.GRID_SHIFTS)
    book = [key for key, _ in calls]
    calls.clear()
    zoo.trained_model(budget, "fast", 0.01, progress=False)  # chapter 7's models, sixteen shifts too
    assert [key for key, _ in calls] == book
    calls.clear()
    zoo.trained_model(budget, "factorized2017", 0.01, progress=False, augment=())
    assert calls == [(budget_config(budget, 0.01, model="factorized2017", augment=()).key(), {})]


@pytest.mark.slow
def test_hyperprior_models_one_per_lambda_from_the_factorized_transforms():
    budget = get_budget("smoke").with_(steps=4, N=8, M=12)
    factorized = zoo.factorized_models(budget, progress=False)
    trained = zoo.hyperprior_models(budget, "mean-scale", progress=False)
    assert sorted(trained) == sorted(budget.lmbdas) == sorted(factorized)
    fit, joint = zoo.hyperprior_stages(budget, budget.lmbdas[0], "mean-scale")
    assert fit.frozen == ("g_a", "g_s") and joint.frozen == () and fit.crop == 256
    assert isinstance(trained[budget.lmbdas[0]], models.MeanScaleHyperprior)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert metrics.bpp_from_likelihoods(trained[budget.lmbdas[0]](x)["likelihoods"], 64 * 64) > 0


def test_fit_entropy_model_also_freezes_what_config_frozen_names():
    init = transforms()
    config = TrainConfig(model="hyperprior", steps=3, frozen=("g_a", "g_s", "h_a"), **TINY)
    model, _ = zoo.fit_entropy_model(config, init, progress=False)
    torch.manual_seed(0)  # the fit's seed: h_a keeps its initialization
    fresh = models.create("hyperprior", N=8, M=12)
    torch.testing.assert_close(model.state_dict()["h_a.0.weight"], fresh.state_dict()["h_a.0.weight"])
    assert not torch.equal(model.state_dict()["h_s.0.weight"], fresh.state_dict()["h_s.0.weight"])
    with pytest.raises(LictutorError, match="rate alone"):
        zoo.fit_entropy_model(TrainConfig(model="hyperprior", steps=1, frozen=("g_a", "g_s"), l1=0.1, **TINY),
                              init, progress=False)


def _record_training(monkeypatch, *functions):
    """Replace the zoo's training ``functions`` by one that records each config and returns
    an untrained model of it; the list of configs, in call order."""
    configs = []

    def fake_train(config, init_from=None, progress=True, **run):
        configs.append(config)
        return models.create(config.model, **config.model_args), {}

    for name in functions:
        monkeypatch.setattr(zoo, name, fake_train)
    return configs


def test_factorized_model_nonlinearity_changes_only_the_architecture(monkeypatch):
    """Chapter 1's controls: the same recipe with GDN replaced; GDN's cache keys do not move."""
    budget = get_budget("smoke").with_(steps=4, N=8, M=12, lmbdas=(0.01, 0.02, 0.04))
    configs = _record_training(monkeypatch, "train")
    gdn = [c.key() for c in (zoo.factorized_model(budget, 0.01, progress=False), configs)[1]]
    configs.clear()
    assert [c.key() for c in (zoo.factorized_model(budget, 0.01, progress=False, nonlinearity="gdn"), configs)[1]] == gdn
    configs.clear()
    model, _ = zoo.factorized_model(budget, 0.01, progress=False, nonlinearity="relu")
    assert [c.model_args for c in configs] == [{"N": 8, "M": 12, "nonlinearity": "relu"}] * 2
    assert [c.lmbda for c in configs] == [0.02, 0.01] and not set(c.key() for c in configs) & set(gdn)
    assert isinstance(model.g_a[1], torch.nn.ReLU)
    configs.clear()
    zoo.factorized_base(budget, progress=False, nonlinearity="identity", seed=1)  # chapter 1's second seed
    assert [(c.lmbda, c.steps, c.seed, c.model_args["nonlinearity"]) for c in configs] == [(0.02, 4, 1, "identity")]
    configs.clear()
    assert sorted(zoo.factorized_models(budget, progress=False, lmbdas=(0.04, 0.01))) == [0.01, 0.04]
    with pytest.raises(LictutorError, match="unknown nonlinearity 'tanh'"):
        zoo.factorized_model(budget, 0.01, progress=False, nonlinearity="tanh")


def test_hyperprior_model_bottleneck_size_reaches_every_stage(monkeypatch):
    """Chapter 4's bottleneck study: ``M`` changes the factorized warm start and both stages,
    and the budget's own ``M`` keeps the cache keys it always had."""
    budget = get_budget("smoke").with_(steps=8, N=8, M=12, lmbdas=(0.01, 0.02, 0.04))
    configs = _record_training(monkeypatch, "train", "fit_entropy_model")
    zoo.hyperprior_model(budget, 0.04, "mean-scale", progress=False)
    default = [c.key() for c in configs]
    configs.clear()
    zoo.hyperprior_model(budget, 0.04, "mean-scale", progress=False, M=12)
    assert [c.key() for c in configs] == default
    configs.clear()
    model, _ = zoo.hyperprior_model(budget, 0.04, "mean-scale", progress=False, M=20)
    assert [(c.model, c.model_args["M"]) for c in configs] == [
        ("factorized", 20), ("factorized", 20), ("mean-scale", 20), ("mean-scale", 20)]
    assert not set(c.key() for c in configs) & set(default)
    assert model.g_a[-1].out_channels == 20
