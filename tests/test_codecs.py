import numpy as np
import pytest
from skimage import data

from lictutor import codecs
from lictutor.errors import LictutorError
from lictutor.metrics import psnr

NAMES = codecs.available_codecs()


@pytest.fixture(scope="module")
def photo():
    """skimage's astronaut (512×512) downscaled 2× by averaging: a 256×256 natural photo."""
    img = data.astronaut().astype(np.float64)
    return np.round(img.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))).astype(np.uint8)


def low_mid_high(codec):
    """Three settings from the codec's defaults, ordered from fewest to most bits."""
    q = codec.qualities
    return [q[1], q[len(q) // 2], q[-2]]


def test_registry():
    assert {"jpeg", "jpeg2000", "webp", "avif", "hevc"} <= set(NAMES)
    for name in NAMES:
        assert len(codecs.get_codec(name).qualities) >= 6
    with pytest.raises(LictutorError, match="available: jpeg"):
        codecs.get_codec("bpg")


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_and_monotonic_rate_distortion(name, photo):
    codec = codecs.get_codec(name)
    rates, psnrs = [], []
    for quality in low_mid_high(codec):
        stream = codec.encode(photo, quality)
        rec = codec.decode(stream)
        assert isinstance(stream, bytes)
        assert rec.dtype == np.uint8 and rec.shape == photo.shape
        rates.append(8 * len(stream) / (256 * 256))
        psnrs.append(psnr(photo, rec))
    assert rates == sorted(rates) and len(set(rates)) == 3
    assert psnrs == sorted(psnrs) and psnrs[0] > 20


@pytest.mark.parametrize("name", NAMES)
def test_corrupt_bytes_raise(name, photo):
    codec = codecs.get_codec(name)
    stream = codec.encode(photo, codec.qualities[len(codec.qualities) // 2])
    for bad in (b"", b"not an image at all", stream[: len(stream) // 3]):
        with pytest.raises(LictutorError, match="cannot decode"):
            codec.decode(bad)


def test_decode_checks_the_format(photo):
    jpeg = codecs.get_codec("jpeg").encode(photo, 50)
    with pytest.raises(LictutorError):
        codecs.get_codec("webp").decode(jpeg)


def test_encode_rejects_bad_input(photo):
    jpeg = codecs.get_codec("jpeg")
    with pytest.raises(LictutorError, match="uint8 H×W×3"):
        jpeg.encode(photo.astype(np.float32), 50)
    with pytest.raises(LictutorError, match="uint8 H×W×3"):
        jpeg.encode(photo[..., 0], 50)
    with pytest.raises(LictutorError, match=r"quality must be in \[1, 95\]"):
        jpeg.encode(photo, 0)


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_codec_schema(name, photo):
    codec = codecs.get_codec(name)
    qualities = [codec.qualities[i] for i in np.linspace(0, len(codec.qualities) - 1, 5).round().astype(int)]
    out = codecs.evaluate_codec(name, [("a", photo), ("b", photo[:, ::-1].copy())], qualities, progress=False)
    assert out["name"] == codec.label and codec.library in out["description"]
    res = out["results"]
    assert set(res) == {"psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time", "quality"}
    assert all(len(v) == 5 for v in res.values())
    assert res["bpp"] == sorted(res["bpp"])
    assert sorted(res["quality"]) == sorted(qualities)
    assert all(0 < m <= 1 for m in res["ms-ssim-rgb"])
    assert all(t > 0 for t in res["encoding_time"] + res["decoding_time"])


def test_evaluate_codec_per_image_and_small_images(photo):
    small = photo[:128, :128].copy()
    images = [("big", photo), ("small", small)]
    out = codecs.evaluate_codec("jpeg", images, [20, 50, 80], progress=False, per_image=True)
    per = out["per_image"]
    assert set(per) == {"big", "small"}
    assert np.isnan(per["small"]["ms-ssim-rgb"]).all()  # too small for 5-scale MS-SSIM
    assert out["results"]["ms-ssim-rgb"] == pytest.approx(per["big"]["ms-ssim-rgb"])  # mean skips the NaNs
    mean_bpp = (np.array(per["big"]["bpp"]) + np.array(per["small"]["bpp"])) / 2
    assert out["results"]["bpp"] == pytest.approx(mean_bpp.tolist())


@pytest.mark.parametrize("name", NAMES)
def test_encode_at_bpp(name, photo):
    target = 0.5
    quality, stream, rec = codecs.encode_at_bpp(name, photo, target)
    bpp = 8 * len(stream) / (256 * 256)
    assert target / 1.5 < bpp < target * 1.5
    assert rec.shape == photo.shape
    assert stream == codecs.get_codec(name).encode(photo, quality)


def test_encode_at_bpp_out_of_reach_returns_the_nearest_end(photo):
    quality, _, _ = codecs.encode_at_bpp("jpeg", photo, 0.001)
    assert quality == 1


def test_evaluate_codec_points_spread_over_the_range(photo):
    images = [("photo", photo)]
    curve = codecs.evaluate_codec("jpeg", images, points=4, progress=False)
    qualities = codecs.CODECS["jpeg"].qualities
    assert sorted(curve["results"]["quality"]) == [qualities[0], qualities[3], qualities[7], qualities[-1]]
    with pytest.raises(LictutorError, match="at least 2"):
        codecs.evaluate_codec("jpeg", images, points=1, progress=False)
