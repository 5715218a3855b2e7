"""lictutor.synthetic: dead-leaves images, deterministic, with a photo's power spectrum."""

import numpy as np
import pytest

from lictutor import data
from lictutor.errors import LictutorError
from lictutor.synthetic import dead_leaves, dead_leaves_set


def spectrum_slope(img: np.ndarray) -> float:
    """Slope of the log radially averaged power spectrum of ``img``'s grey levels against log
    frequency, over the middle frequencies: about −2 for natural images (power ∝ 1/f²)."""
    grey = img.astype(float).mean(axis=2)
    power = np.abs(np.fft.fftshift(np.fft.fft2(grey - grey.mean()))) ** 2
    n = grey.shape[0]
    y, x = np.indices(power.shape)
    radius = np.hypot(y - n // 2, x - n // 2).astype(int).ravel()
    radial = np.bincount(radius, power.ravel()) / np.bincount(radius)
    f = np.arange(4, n // 4)
    return float(np.polyfit(np.log(f), np.log(radial[f]), 1)[0])


def test_dead_leaves_are_deterministic_colour_images():
    img = dead_leaves(64, seed=3)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert np.array_equal(img, dead_leaves(64, seed=3)) and not np.array_equal(img, dead_leaves(64, seed=4))
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 100  # many leaves, shaded
    assert np.abs(img[..., 0].astype(int) - img[..., 2]).max() > 20  # in colour
    with pytest.raises(LictutorError, match="at least 8"):
        dead_leaves(4)


def test_dead_leaves_have_the_spectrum_of_the_training_photos():
    """Power falls with frequency as in the photos (slopes of −2.3 to −2.6 here; the leaves
    that are drawn out of focus fall faster, to about −4), unlike white noise (0)."""
    photos = [spectrum_slope(data.center_crop(img, 256)) for _, img in data.train_images()[:4]]
    leaves = [spectrum_slope(img) for _, img in dead_leaves_set(4, 256)]
    assert all(-3.0 < s < -2.0 for s in photos), photos
    assert all(-4.5 < s < -2.0 for s in leaves) and min(abs(s - p) for s in leaves for p in photos) < 0.2, leaves
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert spectrum_slope(noise) > -0.3


def test_dead_leaves_set_is_one_image_per_seed_and_cached():
    first = dead_leaves_set(3, 32, seed=1)
    assert [name for name, _ in first] == ["leaves-0", "leaves-1", "leaves-2"]
    assert dead_leaves_set(3, 32, seed=1) is first
    assert not np.array_equal(first[0][1], first[1][1])
    assert not np.array_equal(first[0][1], dead_leaves_set(3, 32, seed=2)[0][1])
