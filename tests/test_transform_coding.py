import numpy as np
import pytest
from scipy.fft import dctn

from lictutor import data, transform_coding as tc
from lictutor.errors import LictutorError


def test_dct_basis_is_orthonormal_and_matches_scipy():
    B = tc.dct_basis(8)
    np.testing.assert_allclose(B @ B.T, np.eye(64), atol=1e-12)
    block = np.random.default_rng(0).normal(size=(8, 8))
    np.testing.assert_allclose(B @ block.ravel(), dctn(block, norm="ortho").ravel(), atol=1e-12)


def test_blocks_round_trip():
    x = np.arange(24 * 40, dtype=float).reshape(24, 40)
    np.testing.assert_array_equal(tc.from_blocks(tc.to_blocks(x, 8), (24, 40), 8), x)


def test_klt_is_orthonormal_with_a_dc_like_first_row():
    images = [img for _, img in data.train_images()[:2]]
    K = tc.klt_basis(images, 8)
    np.testing.assert_allclose(K @ K.T, np.eye(64), atol=1e-8)
    assert abs(abs(K[0] @ tc.dct_basis(8)[0]) - 1) < 0.05  # the top component is the block mean


def test_transform_code_rate_and_distortion_move_with_the_step():
    img = data.eval_images(count=1, size=128)[0][1]
    fine, bits_fine = tc.transform_code(img, tc.dct_basis(), 2.0)
    coarse, bits_coarse = tc.transform_code(img, tc.dct_basis(), 40.0)
    err = lambda rec: np.mean((rec.astype(float) - img) ** 2)
    assert err(fine) < 1.0 < err(coarse)  # step 2: only rounding error left
    assert bits_coarse < bits_fine / 3
    curve = tc.transform_code_curve([("a", img)], tc.dct_basis(), [40, 10, 20])
    assert curve["results"]["bpp"] == sorted(curve["results"]["bpp"])
    assert curve["results"]["psnr-rgb"] == sorted(curve["results"]["psnr-rgb"])


def test_bad_input():
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(LictutorError, match="smaller than one"):
        tc.transform_code(img, tc.dct_basis(), 1.0)
    with pytest.raises(LictutorError, match="positive"):
        tc.transform_code(np.zeros((16, 16, 3), np.uint8), tc.dct_basis(), 0)


def test_neighbour_pairs_are_adjacent_blocks():
    img = data.eval_images(count=1, size=64)[0][1]
    a, b = tc.neighbour_pairs([img], tc.dct_basis(), 0)
    dc = tc.to_blocks(tc.ycbcr(img)[..., 0], 8).mean(axis=1) * 8  # DC = 8 × block mean
    grid = dc.reshape(8, 8)
    np.testing.assert_allclose(a, grid[:, :-1].ravel())
    np.testing.assert_allclose(b, grid[:, 1:].ravel())
    np.testing.assert_allclose(tc.rgb(tc.ycbcr(img)), img, atol=1e-9)
