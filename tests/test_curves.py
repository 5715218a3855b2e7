"""lictutor.curves: the one evaluation loop of classical and learned codecs."""

import math
import warnings

import numpy as np
import pytest

from lictutor import data
from lictutor.curves import METRICS, by_rate, mean_over_images, measure
from lictutor.errors import LictutorError
from lictutor.metrics import psnr


def _images():
    big = data.eval_images(count=1, size=192)[0][1]
    return [("big", big), ("small", big[:64, :80])]


def _drop_bits(bits):
    """A codec of raw pixel bytes that keeps the top ``bits`` of every sample, behind an 8-byte
    header holding the image size."""
    def encode(img):
        return np.array(img.shape[:2], np.uint32).tobytes() + (img >> (8 - bits)).astype(np.uint8).tobytes()

    def decode(blob):
        h, w = np.frombuffer(blob[:8], np.uint32)
        return (np.frombuffer(blob[8:], np.uint8).reshape(h, w, 3) << (8 - bits)).astype(np.uint8)

    return encode, decode


def test_measure_codes_every_image_at_every_setting():
    images = _images()
    values = measure([_drop_bits(2), _drop_bits(6)], images, desc="test", progress=False, extras={"bytes": len})
    assert set(values) == {*METRICS, "bytes"} and values["bpp"].shape == (2, 2)
    for i, bits in enumerate((2, 6)):
        for j, (_, img) in enumerate(images):
            h, w = img.shape[:2]
            assert values["bytes"][i, j] == 8 + 3 * h * w
            assert values["bpp"][i, j] == 8 * values["bytes"][i, j] / (h * w)  # the header counts too
            assert values["psnr-rgb"][i, j] == psnr(img, (img >> (8 - bits)) << (8 - bits))
    assert math.isnan(values["ms-ssim-rgb"][0, 1]) and not math.isnan(values["ms-ssim-rgb"][0, 0])
    assert values["psnr-rgb"][1, 0] > values["psnr-rgb"][0, 0] and (values["encoding_time"] >= 0).all()
    with pytest.raises(LictutorError, match="at least one"):
        measure([], images, desc="test")


def test_means_leave_nan_out_without_a_warning_and_points_sort_by_rate():
    values = np.array([[1.0, np.nan], [np.nan, np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        means = mean_over_images(values)
    assert means[0] == 1.0 and math.isnan(means[1])
    assert by_rate({"bpp": [0.5, 0.1, 0.3], "q": [1, 2, 3]}) == {"bpp": [0.1, 0.3, 0.5], "q": [2, 3, 1]}
