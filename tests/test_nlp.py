"""The normalized Laplacian pyramid distance (lictutor.metrics.nlp_distance)."""

import math

import numpy as np
import pytest
import torch

from lictutor import data
from lictutor.errors import LictutorError
from lictutor.metrics import _nlp_transform, _sqrt0, nlp_distance, psnr


def photo(size=64):
    """A crop of a built-in photo, 1×3×size×size in [0, 1]."""
    _, img = data.train_images()[0]
    return data.to_tensor(img[:size, :size])[None]


def test_identical_images_are_at_distance_zero():
    x = photo()
    assert nlp_distance(x, x.clone()).item() == 0.0
    img = (x[0].permute(1, 2, 0) * 255).round().byte().numpy()
    assert nlp_distance(img, img.copy()) == 0.0  # NumPy in, float out


def test_grows_with_the_noise_level():
    x = photo()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    distances = [nlp_distance(x + s / 255 * noise, x).item() for s in (1, 2, 4, 8, 16)]
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


def test_constant_images_by_hand():
    # A constant image has an empty band-pass (the low-pass filter sums to 1, the expansion
    # reproduces constants): only the 2×2 low-pass residual of a 64×64 image differs. There,
    # z = v / (σ₆ + P₆ ∗ |v|) with σ₆ = 0.2782 and P₆ weighing a pixel's one horizontal
    # neighbour by 0.2215 (left column) or 0.0717 (right column); the distance is the RMS
    # difference of z averaged over the six levels. (Float32 rounding leaves ~1e-6 in the
    # band-pass levels.)
    a, b = 0.25, 0.75
    x, y = torch.full((1, 3, 64, 64), a), torch.full((1, 3, 64, 64), b)

    def z(v, neighbour_weight):
        return v / (0.2782 + neighbour_weight * v)

    left = z(a, 0.2215) - z(b, 0.2215)
    right = z(a, 0.0717) - z(b, 0.0717)
    expected = math.sqrt((left**2 + right**2) / 2) / 6
    assert nlp_distance(x, y).item() == pytest.approx(expected, rel=1e-4)


def test_divisive_normalization_masks_noise_in_texture():
    # The same noise costs more on a flat area than on a busy texture (contrast masking);
    # the MSE cannot tell the two apart.
    rng = np.random.default_rng(0)
    x = torch.full((1, 3, 64, 128), 0.5)
    x[..., 64:] = torch.from_numpy(rng.uniform(0.2, 0.8, (1, 3, 64, 64))).float()
    noise = torch.from_numpy(rng.normal(0, 0.02, (1, 3, 64, 64))).float()
    on_flat, on_texture = x.clone(), x.clone()
    on_flat[..., :64] += noise
    on_texture[..., 64:] += noise
    assert psnr(on_flat, x) == pytest.approx(psnr(on_texture, x), abs=1e-3)
    assert nlp_distance(on_flat, x).item() > 1.5 * nlp_distance(on_texture, x).item()


def test_every_channel_counts():
    # R, G and B are scored as three grey images and averaged: noise in the blue channel alone
    # costs about a third of the same noise in all three.
    x = photo()
    noise = 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    blue_only = x.clone()
    blue_only[:, 2] += noise[:, 2]
    ratio = nlp_distance(blue_only, x).item() / nlp_distance(x + noise, x).item()
    assert 0.25 < ratio < 0.45


def test_batch_is_the_mean_over_images():
    x = torch.cat([photo(), photo().flip(-1)])
    y = (x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    each = [nlp_distance(y[i : i + 1], x[i : i + 1]).item() for i in range(2)]
    assert nlp_distance(y, x).item() == pytest.approx(sum(each) / 2, rel=1e-6)


def test_gradient_matches_finite_differences():
    # nlp_distance computes in float32, too coarse for finite differences through the
    # pyramid's many |·| kinks; check the same computation in float64 with gradcheck, and
    # that it is the same computation.
    g = torch.Generator().manual_seed(2)
    x = photo(20)[:, :1].double()
    y = (x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)).requires_grad_()

    def distance(y):
        levels = zip(_nlp_transform(x), _nlp_transform(y))
        return torch.stack([_sqrt0(((zx - zy) ** 2).mean()) for zx, zy in levels]).mean()

    assert torch.autograd.gradcheck(distance, (y,), eps=1e-6, atol=1e-6, fast_mode=True)
    grey = nlp_distance(y.detach().expand(1, 3, 20, 20), x.expand(1, 3, 20, 20))
    assert grey.item() == pytest.approx(distance(y).item(), rel=1e-5)


def test_gradient_is_finite_for_identical_images():
    x = photo().requires_grad_()
    nlp_distance(x, x.detach()).backward()
    assert torch.isfinite(x.grad).all() and not x.grad.any()


def test_bad_input():
    with pytest.raises(LictutorError, match="same shape"):
        nlp_distance(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 48))
    with pytest.raises(LictutorError, match="at least 17 pixels"):
        nlp_distance(torch.rand(1, 3, 16, 64), torch.rand(1, 3, 16, 64))
    with pytest.raises(LictutorError, match="H×W×3"):
        nlp_distance(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
