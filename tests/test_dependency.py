"""lictutor.dependency: magnitude correlations, on cases whose answer is known."""

import numpy as np
import pytest
import torch

from lictutor import data, dependency, models
from lictutor.errors import LictutorError


def test_independent_coefficients_have_no_dependency():
    rng = np.random.default_rng(0)
    d = dependency.magnitude_dependency([rng.standard_normal((6, 64, 64)) for _ in range(3)], top=6)
    assert abs(d["neighbour"]) < 0.05 and abs(d["neighbour_signed"]) < 0.05 and abs(d["across"]) < 0.05
    assert sorted(d["channels"]) == list(range(6))


def test_a_shared_gain_gives_correlated_magnitudes_but_not_correlated_signs():
    """A Gaussian scale mixture: y_c = s · n_c with one slowly varying scale s for all channels,
    what a linear transform leaves in photos (magnitudes tied, signs not)."""
    rng = np.random.default_rng(1)
    s = np.exp(np.repeat(np.repeat(rng.standard_normal((8, 8)), 8, 0), 8, 1))  # constant on 8×8 patches
    y = s * rng.standard_normal((4, 64, 64))
    d = dependency.magnitude_dependency([y], top=4)
    assert d["neighbour"] > 0.3 and d["across"] > 0.3 and abs(d["neighbour_signed"]) < 0.05
    divided = y / s  # the ideal divisive normalization removes it
    assert dependency.magnitude_dependency([divided], top=4)["across"] < 0.05


def test_top_keeps_the_channels_of_largest_variance_and_an_offset_is_not_a_magnitude():
    rng = np.random.default_rng(2)
    y = rng.standard_normal((5, 16, 16)) * np.array([1, 5, 0.1, 3, 0.2])[:, None, None]
    y[2] += 100  # a large constant offset: no variance, no magnitude
    d = dependency.magnitude_dependency([y], top=2)
    assert d["channels"] == [1, 3] and abs(d["neighbour"]) < 0.2 and abs(d["neighbour"] - d["neighbour_signed"]) > 0


def test_latent_dependency_of_a_model_and_bad_input():
    torch.manual_seed(0)
    model = models.create("factorized", N=8, M=12, nonlinearity="identity").eval()
    images = data.eval_images(count=1, size=64)
    d = dependency.latent_dependency(model, images, top=4)
    assert len(d["channels"]) == 4 and -1 <= d["neighbour"] <= 1
    with pytest.raises(LictutorError, match="at least one image"):
        dependency.latent_dependency(model, [])
    with pytest.raises(LictutorError, match="C×H×W"):
        dependency.magnitude_dependency([np.zeros((4, 4))])


def test_dead_channels_counts_relu_units_that_never_fire():
    torch.manual_seed(0)
    model = models.create("factorized", N=8, M=12, nonlinearity="relu").eval()
    with torch.no_grad():
        model.g_a[0].bias[:3] = -1e3  # three channels of the first convolution can never be positive
    dead = dependency.dead_channels(model, data.eval_images(count=1, size=64))
    assert set(dead) == {"g_a.1", "g_a.3", "g_a.5", "g_s.1", "g_s.3", "g_s.5"}
    assert dead["g_a.1"][0] >= 3 and dead["g_a.1"][1] == 8


def test_normalization_effect_of_a_diagonal_gdn_is_a_per_channel_gain():
    torch.manual_seed(0)
    model = models.create("factorized", N=8, M=12).eval()  # γ starts diagonal: no other channel counts
    effect = dependency.normalization_effect(model, data.eval_images(count=1, size=64), top=4)
    assert set(effect) == {"g_a.1", "g_a.3", "g_a.5"}
    assert all(e["others"] == 0 for e in effect.values())
    with torch.no_grad():  # every channel divided by the energy of the others only
        gdn = model.g_a[1]
        gdn.gamma.copy_(gdn.gamma_reparam.init(100 * (torch.ones(8, 8) - torch.eye(8))))  # far above β = 1
    assert dependency.normalization_effect(model, data.eval_images(count=1, size=64), top=4)["g_a.1"]["others"] > 0.9
