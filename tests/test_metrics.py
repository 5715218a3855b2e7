import math

import numpy as np
import pytest
import torch

from lictutor.errors import LictutorError
from lictutor.metrics import (bd_psnr, bd_rate, bpp_from_bytes, bpp_from_likelihoods, entropy_bits, ms_ssim, psnr,
                              rate_difference)


def random_image(h=32, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- PSNR -------------------------------------------------------------------------------


def test_psnr_constant_error_of_one_on_uint8():
    a = np.full((16, 16, 3), 100, np.uint8)
    assert psnr(a, a + 1) == pytest.approx(10 * math.log10(255**2), abs=1e-9)  # 48.13 dB
    assert psnr(a, a + 1) == pytest.approx(48.1308, abs=1e-4)


def test_psnr_hand_computed_tensor():
    a = torch.zeros(3, 4, 4)
    b = torch.full((3, 4, 4), 0.1)  # MSE = 0.01 → 20 dB at peak 1
    assert psnr(a, b) == pytest.approx(20.0, abs=1e-5)
    assert psnr(a, b, peak=2) == pytest.approx(20.0 + 20 * math.log10(2), abs=1e-5)


def test_psnr_identical_is_inf():
    a = random_image()
    assert psnr(a, a.copy()) == float("inf")
    t = torch.rand(3, 8, 8)
    assert psnr(t, t.clone()) == float("inf")


def test_psnr_uint8_and_tensor_agree():
    a, b = random_image(seed=1), random_image(seed=2)
    ta = torch.from_numpy(a).permute(2, 0, 1).float() / 255
    tb = torch.from_numpy(b).permute(2, 0, 1).float() / 255
    assert psnr(ta, tb) == pytest.approx(psnr(a, b), abs=1e-4)
    assert psnr(a[:, ::-1], b[:, ::-1]) == pytest.approx(psnr(a, b))  # views with negative strides work


def test_psnr_batch_is_mean_of_per_image_psnr():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.01)])  # 20 dB and 40 dB
    assert psnr(x, y) == pytest.approx(30.0, abs=1e-4)


def test_psnr_rejects_bad_inputs():
    with pytest.raises(LictutorError, match="same shape"):
        psnr(random_image(32, 32), random_image(32, 48))
    with pytest.raises(LictutorError, match="uint8"):
        psnr(random_image(), random_image().astype(np.float32) / 255)
    with pytest.raises(LictutorError):
        psnr([1, 2, 3], [1, 2, 3])


# --- MS-SSIM ----------------------------------------------------------------------------


def test_ms_ssim_identical_is_one_and_noise_lowers_it():
    a = random_image(192, 200, seed=3)
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    noisy = np.clip(a.astype(int) + np.random.default_rng(4).integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert 0 < ms_ssim(a, noisy) < 1


def test_ms_ssim_uint8_and_tensor_agree():
    a, b = random_image(170, 170, seed=5), random_image(170, 170, seed=6)
    ta = torch.from_numpy(a).permute(2, 0, 1).float() / 255
    tb = torch.from_numpy(b).permute(2, 0, 1).float() / 255
    assert isinstance(ms_ssim(a, b), float)
    assert ms_ssim(ta, tb).item() == pytest.approx(ms_ssim(a, b), abs=1e-6)
    assert ms_ssim(ta[None], tb[None]).item() == pytest.approx(ms_ssim(a, b), abs=1e-6)


def test_ms_ssim_is_differentiable_for_tensors():
    x = torch.rand(1, 3, 170, 170)
    x_hat = (x + 0.05 * torch.randn_like(x)).clamp(0, 1).requires_grad_()
    loss = 1 - ms_ssim(x_hat, x)
    loss.backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0


def test_ms_ssim_small_image_is_a_clear_error():
    a = random_image(160, 300)
    with pytest.raises(LictutorError, match="at least 161 pixels"):
        ms_ssim(a, a)


def test_ms_ssim_rejects_mismatched_shapes():
    with pytest.raises(LictutorError, match="same shape"):
        ms_ssim(random_image(170, 170), random_image(170, 180))


# --- bpp --------------------------------------------------------------------------------


def test_bpp_from_bytes():
    assert bpp_from_bytes(1000, 100, 80) == pytest.approx(1.0)
    assert bpp_from_bytes(24576, 512, 768) == pytest.approx(0.5)
    with pytest.raises(LictutorError):
        bpp_from_bytes(10, 0, 5)


def test_bpp_from_likelihoods_matches_formula_and_is_differentiable():
    y = torch.full((1, 4, 2, 2), 0.5, requires_grad=True)  # 16 symbols × 1 bit
    z = torch.full((1, 2, 1, 1), 0.25)  # 2 symbols × 2 bits
    bpp = bpp_from_likelihoods({"y": y, "z": z}, num_pixels=10)
    assert bpp.item() == pytest.approx((16 + 4) / 10)
    assert bpp_from_likelihoods(z, num_pixels=4).item() == pytest.approx(1.0)
    bpp.backward()
    assert y.grad is not None and torch.all(y.grad < 0)  # higher likelihood → fewer bits


# --- Bjøntegaard delta ------------------------------------------------------------------

# VCEG-M33 worked example (G. Bjøntegaard, "Calculation of average PSNR differences between
# RD-curves", VCEG-M33, 2001), as reproduced in tbr/bjontegaard_cpp `example.cpp`
# (https://github.com/tbr/bjontegaard_cpp), which asserts BD-PSNR 0.800713 dB and
# BD-rate −13.261773 % (cubic fit, rounded to 6 decimals).
M33_RATE_A = [90.33, 181.03, 332.99, 547.79]
M33_PSNR_A = [27.95, 31.17, 34.44, 38.11]
M33_RATE_B = [127.1719, 186.14, 307.2924, 481.5588]
M33_PSNR_B = [29.9286, 32.4165, 34.7013, 37.4561]

# JCTVC-E137 data, as used by Netflix VMAF's `python/test/calculate_bd_rate_test.py`
# (CalculateBdRateJCTVCTest, https://github.com/Netflix/vmaf), which expects BD-rates of
# −0.00465215420752807 and −0.018779823450567612 (fractions, PCHIP interpolation).
E137 = [
    (
        [108048.8736, 61279.976, 33905.6656, 18883.6928],
        [43.6471, 40.3953, 37.247, 34.2911],
        [108061.2784, 61299.9936, 33928.7472, 18910.912],
        [43.6768, 40.4232, 37.2761, 34.3147],
        -0.465215420752807,
    ),
    (
        [40433.8848, 7622.7456, 2394.488, 1017.6184],
        [37.5761, 35.3756, 33.8977, 32.0603],
        [40370.12, 7587.0024, 2390.0944, 1017.0984],
        [37.5982, 35.4025, 33.9194, 32.0822],
        -1.8779823450567612,
    ),
]


def test_bd_vceg_m33_worked_example_cubic():
    """VCEG-M33 example: BD-rate −13.261773 %, BD-PSNR 0.800713 dB (tbr/bjontegaard_cpp)."""
    args = (M33_RATE_A, M33_PSNR_A, M33_RATE_B, M33_PSNR_B)
    assert bd_rate(*args, method="cubic") == pytest.approx(-13.261773, abs=1e-6)
    assert bd_psnr(*args, method="cubic") == pytest.approx(0.800713, abs=1e-6)


def test_bd_etro_nine_point_example_cubic():
    """ETRO barb512 curves with 9 points (least-squares cubic), from tbr/bjontegaard_cpp
    `example.cpp`: BD-PSNR 0.072297 dB, BD-rate −0.903450 %."""
    rate_a = [2.99899, 1.99884, 1.49673, 0.99707, 0.745941, 0.596436, 0.495148, 0.29425, 0.244049]
    psnr_a = [48.6681, 43.8357, 41.3982, 38.0124, 35.5122, 33.8673, 32.6658, 29.4505, 28.484]
    rate_b = [2.997253, 1.968292, 1.472565, 0.994965, 0.748871, 0.58902, 0.499176, 0.296753, 0.249634]
    psnr_b = [48.5637, 43.7318, 41.2727, 38.0001, 35.6375, 33.9057, 32.8318, 29.6851, 28.8244]
    args = (rate_a, psnr_a, rate_b, psnr_b)
    assert bd_rate(*args, method="cubic") == pytest.approx(-0.903450, abs=1e-6)
    assert bd_psnr(*args, method="cubic") == pytest.approx(0.072297, abs=1e-6)


@pytest.mark.parametrize("rate_a, psnr_a, rate_b, psnr_b, expected", E137)
def test_bd_rate_jctvc_e137_pchip(rate_a, psnr_a, rate_b, psnr_b, expected):
    """JCTVC-E137 curves; expected −0.465215 % and −1.877982 % (Netflix VMAF tests, PCHIP).
    Exact PCHIP integration reproduces them to about 1e-10 %."""
    assert bd_rate(rate_a, psnr_a, rate_b, psnr_b, method="pchip") == pytest.approx(expected, abs=1e-8)


def test_bd_rate_akima_matches_fau_bjontegaard_package():
    """Inputs from the README of FAU-LMS/bjontegaard (ffmpeg libx265 presets). The README prints
    no result; −4.425245157 % (akima) and −4.417485351 % (pchip) are what `bjontegaard` 1.3.0
    returns for them, as a cross-check against an independent implementation."""
    args = (
        [9487.76, 4593.60, 2486.44, 1358.24],
        [40.037, 38.615, 36.845, 34.851],
        [9787.80, 4469.00, 2451.52, 1356.24],
        [40.121, 38.651, 36.970, 34.987],
    )
    assert bd_rate(*args) == pytest.approx(-4.425245157, abs=1e-8)
    assert bd_rate(*args, method="pchip") == pytest.approx(-4.417485351, abs=1e-8)


@pytest.mark.parametrize("method", ["akima", "pchip", "cubic"])
def test_bd_sanity(method):
    rate = np.array([0.1, 0.25, 0.5, 1.0, 2.0])
    dist = np.array([26.0, 29.5, 32.0, 35.0, 38.5])
    assert bd_rate(rate, dist, rate, dist, method) == pytest.approx(0.0, abs=1e-9)
    assert bd_psnr(rate, dist, rate, dist, method) == pytest.approx(0.0, abs=1e-9)
    # the same quality at 90 % of the rate: log-rate shifts uniformly, so exactly −10 %
    assert bd_rate(rate, dist, 0.9 * rate, dist, method) == pytest.approx(-10.0, abs=1e-9)
    assert bd_psnr(rate, dist, rate, dist + 1, method) == pytest.approx(1.0, abs=1e-9)
    # order of the points does not matter; swapping anchor and test flips the sign
    assert bd_rate(rate[::-1], dist[::-1], 0.9 * rate, dist, method) == pytest.approx(-10.0, abs=1e-9)
    assert bd_rate(0.9 * rate, dist, rate, dist, method) > 0


@pytest.mark.parametrize("method", ["akima", "pchip", "cubic"])
def test_bd_rate_over_an_interval(method):
    """The test curve's log-rate gap to the anchor grows by 0.02 per dB (zero at 30 dB), so
    its BD-rate depends on the range it is averaged over: exp(mean gap) − 1."""
    dist = np.arange(26.0, 38.5, 2.0)
    rate = np.exp(dist / 3)
    test = rate * np.exp(0.02 * (dist - 30))
    assert bd_rate(rate, dist, test, dist, method, interval=(28, 32)) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(rate, dist, test, dist, method, interval=(32, 36)) == pytest.approx(100 * math.expm1(0.08), abs=1e-9)
    assert bd_rate(rate, dist, test, dist, method, interval=(26, 38)) == pytest.approx(bd_rate(rate, dist, test, dist, method))
    for outside in ((25, 30), (30, 39), (32, 32)):
        with pytest.raises(LictutorError, match="not a range inside the one both curves cover"):
            bd_rate(rate, dist, test, dist, method, interval=outside)


def test_bd_rejects_bad_curves():
    rate, dist = [0.1, 0.2, 0.4, 0.8], [28.0, 31.0, 34.0, 37.0]
    with pytest.raises(LictutorError, match="at least 4"):
        bd_rate(rate[:3], dist[:3], rate, dist, method="cubic")
    with pytest.raises(LictutorError, match="at least 2"):
        bd_rate(rate[:1], dist[:1], rate, dist, method="akima")
    with pytest.raises(LictutorError, match="monotonic"):
        bd_rate(rate, [28.0, 31.0, 30.0, 37.0], rate, dist)
    with pytest.raises(LictutorError, match="do not overlap"):
        bd_rate(rate, dist, rate, [d + 20 for d in dist])
    with pytest.raises(LictutorError, match="do not overlap"):
        bd_psnr(rate, dist, [r * 100 for r in rate], dist)
    with pytest.raises(LictutorError, match="positive rates"):
        bd_rate([0.0, 0.2, 0.4, 0.8], dist, rate, dist)
    with pytest.raises(LictutorError, match="3 rates but 4"):
        bd_rate(rate[:3], dist, rate, dist)
    with pytest.raises(LictutorError, match="unknown BD interpolation"):
        bd_rate(rate, dist, rate, dist, method="linear")


def test_entropy_bits():
    assert entropy_bits([7, 7, 7]) == 0.0
    assert entropy_bits([0, 1, 2, 3] * 5) == pytest.approx(2.0)
    assert entropy_bits([0, 0, 0, 1]) == pytest.approx(0.811278, abs=1e-6)
    with pytest.raises(LictutorError):
        entropy_bits([])


@pytest.mark.parametrize("method", ["akima", "pchip", "cubic"])
def test_rate_difference_is_what_bd_rate_averages(method):
    """The log-rate gap grows by 0.02 per dB (zero at 30 dB): the difference at each quality is
    exp(gap) − 1, nan outside the shared range, and BD-rate is exp of the mean log-gap."""
    dist = np.arange(26.0, 38.5, 2.0)
    rate = np.exp(dist / 3)
    test = rate * np.exp(0.02 * (dist - 30))
    quality = np.array([25.0, 26.0, 30.0, 34.0, 38.0, 39.0])
    diff = rate_difference(rate, dist, test, dist, quality, method)
    assert np.isnan(diff[[0, -1]]).all()
    assert diff[1:-1] == pytest.approx(100 * np.expm1(0.02 * (quality[1:-1] - 30)), abs=1e-9)
    grid = np.linspace(26, 38, 2001)
    mean_log = np.log1p(rate_difference(rate, dist, test, dist, grid, method) / 100).mean()
    assert 100 * math.expm1(mean_log) == pytest.approx(bd_rate(rate, dist, test, dist, method), abs=1e-3)
    with pytest.raises(LictutorError, match="not monotonic"):
        rate_difference(rate, dist[::-1].copy(), test, dist, quality, method)
