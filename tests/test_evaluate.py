import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lictutor import LictutorError, bitstream, data, models
from lictutor.checkpoint import save_checkpoint
from lictutor.config import TrainConfig
from lictutor.evaluate import (channel_bits, compress_image, decompress_image, evaluate_model, latent_shape, pad,
                               relaxation_gap)
from lictutor.metrics import ms_ssim, psnr as metrics_psnr


@pytest.fixture(scope="module")
def photo():
    """A 768×512 natural photo (the built-in motorcycle scene, resized)."""
    img = data.builtin_photos()["motorcycle"]
    return np.array(Image.fromarray(img).resize((768, 512), Image.LANCZOS))


@pytest.fixture(scope="module")
def model(photo):
    """A small FactorizedPrior with latents and densities like a trained model's.

    A random initialization gives every channel the same tiny latents and the same density
    and tables, and a few dozen training steps hardly change that, so the coded size would
    be trivial and a mix-up of channels and CDF rows would go unseen. Here the latent
    channels of ``photo`` get spreads (standard deviations) from 0.3 to 30, and each channel's
    density is stretched to its spread (the first layer of the density network scales its
    input), so the tables differ per channel and fit the data (2 to 9 bits a symbol).
    """
    torch.manual_seed(0)
    net = models.create("factorized", N=16, M=24).eval()
    spread = torch.logspace(-0.5, 1.5, 24)
    with torch.no_grad():
        std = net.g_a(pad(data.to_tensor(photo)[None], 16)).std(dim=(0, 2, 3))
        net.g_a[-1].weight.mul_((spread / std).view(-1, 1, 1, 1))
        net.g_a[-1].bias.zero_()
        # The initial density is about a logistic of scale init_scale = 10.
        first = net.entropy_bottleneck.matrices[0]
        first.copy_((F.softplus(first) * (10 / spread).view(-1, 1, 1)).expm1().log())
    net.update(force=True, update_quantiles=True)
    return net


def reconstruction(model, img):
    """What the model's forward pass (eval mode: latents rounded) reconstructs, as uint8."""
    h, w = img.shape[:2]
    with torch.no_grad():
        x_hat = model(pad(data.to_tensor(img)[None], model.downsampling_factor))["x_hat"]
    return data.to_uint8(x_hat[..., :h, :w])


def test_pad_and_latent_shape():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    padded = pad(x, 4)
    assert padded.shape == (1, 1, 4, 4)
    assert torch.equal(padded[..., :2, :3], x)
    assert torch.equal(padded[..., 3, :3], x[..., 1, :])  # the last row, repeated
    assert torch.equal(padded[..., :2, 3], x[..., :, 2])  # the last column, repeated
    assert latent_shape(512, 768, 16) == (32, 48)
    assert latent_shape(37, 53, 16) == (3, 4)
    assert latent_shape(1, 1, 64) == (1, 1)


def test_coded_size_matches_the_likelihood_estimate(model, photo):
    """The entropy coder writes within 1% of Σ −log₂ p(ŷ) of the model's forward pass."""
    blob = compress_image(model, photo, "factorized")
    payload = bitstream.unpack(blob)
    coded_bits = 8 * sum(len(s) for group in payload.strings for s in group)
    with torch.no_grad():
        likelihoods = model(pad(data.to_tensor(photo)[None], 16))["likelihoods"]["y"]
    bits = -torch.log2(likelihoods)
    per_channel = bits.mean(dim=(0, 2, 3))
    assert per_channel.max() > 3 * per_channel.min()  # channels really differ
    estimate = bits.sum().item()
    assert coded_bits / (768 * 512) > 0.3  # a real bitstream, not a trivial one
    assert abs(coded_bits / estimate - 1) < 0.01
    # The container costs a fixed 44 bytes here (4 magic, 1 version, 11 model name,
    # 8 config hash, 4 image size, 5 shape, 7 string counts and lengths, 4 CRC).
    assert len(blob) - coded_bits // 8 == bitstream.overhead(payload) == 44


def test_decoded_image_is_the_models_quantized_reconstruction(model, photo):
    blob = compress_image(model, photo, "factorized")
    decoded = decompress_image(model, blob, "factorized")
    assert decoded.shape == photo.shape and decoded.dtype == np.uint8
    assert np.array_equal(decoded, reconstruction(model, photo))


def test_coding_is_deterministic(model, photo):
    crop = photo[100:300, 200:450]
    first = compress_image(model, crop, "factorized")
    assert compress_image(model, crop, "factorized") == first
    assert np.array_equal(decompress_image(model, first, "factorized"),
                          decompress_image(model, first, "factorized"))


@pytest.mark.parametrize("size", [(37, 53), (1, 1), (16, 17), (65, 3)])
def test_any_image_size(model, photo, size):
    h, w = size
    img = photo[200:200 + h, 300:300 + w]
    blob = compress_image(model, img, "factorized")
    assert bitstream.unpack(blob).image_size == size
    assert bitstream.unpack(blob).shape == latent_shape(h, w, 16)
    decoded = decompress_image(model, blob, "factorized")
    assert decoded.shape == (h, w, 3)
    assert np.array_equal(decoded, reconstruction(model, img))


def test_grayscale_and_rgba_files_are_coded_as_rgb(model, photo, tmp_path):
    gray = photo[:40, :56].mean(axis=2).round().astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")  # mode L
    rgba = np.dstack([photo[:40, :56], np.full((40, 56), 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")  # half transparent

    loaded = data.load_image(tmp_path / "gray.png")
    blob = compress_image(model, loaded, "factorized")
    assert blob == compress_image(model, np.repeat(gray[:, :, None], 3, axis=2), "factorized")
    assert decompress_image(model, blob, "factorized").shape == (40, 56, 3)

    loaded = data.load_image(tmp_path / "rgba.png")
    assert loaded.shape == (40, 56, 3)
    assert loaded.min() >= 127  # composited onto white
    assert np.array_equal(decompress_image(model, compress_image(model, loaded, "factorized"), "factorized"),
                          reconstruction(model, loaded))


@pytest.mark.parametrize(
    "img",
    [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32),
     np.zeros((0, 8, 3), np.uint8), np.zeros((70000, 1, 3), np.uint8), "image.png"],
)
def test_bad_images_are_refused(model, img):
    with pytest.raises(LictutorError):
        compress_image(model, img, "factorized")


def test_decoding_needs_the_same_model_and_decoder(model, photo):
    img = photo[:64, :64]
    blob = compress_image(model, img, "factorized")
    with pytest.raises(LictutorError, match="not 'factorized2017'"):
        decompress_image(models.create("factorized2017", N=24), blob, "factorized2017")
    other = models.create("factorized", N=16, M=24).eval()  # same configuration, other weights
    with pytest.raises(LictutorError, match="other weights"):
        decompress_image(other, blob, "factorized")
    # A different encoder with the same decoder (e.g. a distilled one) still decodes.
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.g_a[0].weight.mul_(0.5)
    assert np.array_equal(decompress_image(other, blob, "factorized"), reconstruction(model, img))
    with pytest.raises(LictutorError, match="bytes"):
        decompress_image(model, "not bytes", "factorized")


def test_stale_tables_are_rebuilt_before_coding(model, photo):
    img = photo[:48, :48]
    net = models.create("factorized", N=16, M=24).eval()
    net.load_state_dict(model.state_dict())
    with torch.no_grad():
        net.entropy_bottleneck.quantiles.add_(0.25)  # as an optimizer step would
    blob = compress_image(net, img, "factorized")
    assert np.array_equal(decompress_image(net, blob, "factorized"), reconstruction(net, img))
    with pytest.raises(LictutorError, match="other weights"):  # the tables moved with it
        decompress_image(model, blob, "factorized")


def test_evaluate_model_reports_real_bytes(model, photo, tmp_path):
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, model, TrainConfig(model="factorized", model_args={"N": 16, "M": 24}))
    other = models.create("factorized", N=16, M=24)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.g_a[-1].weight.mul_(0.25)  # another rate
    images = [("big", photo[:192, :256]), ("small", photo[300:340, 100:150])]

    result = evaluate_model([ckpt, (other, "factorized")], images, progress=False)
    res = result["results"]
    assert result["name"] == "lictutor factorized"
    assert set(res) == {"bpp", "header_bytes", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}
    assert all(len(v) == 2 for v in res.values())

    def mean_bpp(net):  # from the sizes of the files
        return np.mean([8 * len(compress_image(net, img, "factorized")) / img[..., 0].size for _, img in images])

    assert res["bpp"] == pytest.approx(sorted([mean_bpp(model), mean_bpp(other)]))  # sorted by rate
    first = model if res["bpp"][0] == pytest.approx(mean_bpp(model)) else other
    assert res["header_bytes"] == [44, 44]
    decoded = decompress_image(first, compress_image(first, images[0][1], "factorized"), "factorized")
    assert res["ms-ssim-rgb"][0] == pytest.approx(ms_ssim(images[0][1], decoded))  # the big one only
    assert all(math.isfinite(v) and v > 0 for k in ("psnr-rgb", "encoding_time", "decoding_time")
               for v in res[k])

    with pytest.raises(LictutorError):
        evaluate_model([], images)
    with pytest.raises(LictutorError, match="checkpoint path or a"):
        evaluate_model(model, images)
    with pytest.raises(LictutorError, match="no checkpoint|cannot read"):
        evaluate_model(tmp_path / "missing.pt", images)


def test_relaxation_gap_measures_noisy_rounded_and_file(model, photo):
    img = photo[:128, :192]
    gap = relaxation_gap(model, [("photo", img)], "factorized", seed=3)
    assert gap == relaxation_gap(model, [("photo", img)], "factorized", seed=3)  # noise from the seed
    assert not model.training  # mode restored
    rounded = reconstruction(model, img)
    assert gap["rounded_psnr"] == pytest.approx(metrics_psnr(img, rounded))
    with torch.no_grad():
        lik = model(pad(data.to_tensor(img)[None], 16))["likelihoods"]["y"]
    assert gap["rounded_bpp"] == pytest.approx(-torch.log2(lik).sum().item() / img[..., 0].size, rel=1e-5)
    assert gap["file_bpp"] == 8 * len(compress_image(model, img, "factorized")) / img[..., 0].size
    # the noise moves the latents by up to half a step: a different, finite rate and a different image
    assert math.isfinite(gap["noisy_bpp"]) and gap["noisy_bpp"] != gap["rounded_bpp"]
    assert gap["noisy_psnr"] != gap["rounded_psnr"]


def test_channel_bits_splits_the_rate_by_channel(model, photo):
    img = photo[:128, :192]
    bits = channel_bits(model, [("photo", img), ("again", img)])
    assert bits.shape == (24,) and not model.training
    with torch.no_grad():
        lik = model(pad(data.to_tensor(img)[None], 16))["likelihoods"]["y"]
    assert bits.sum().item() * lik[0, 0].numel() == pytest.approx(-torch.log2(lik).sum().item(), rel=1e-5)
    # the fixture gives channel spreads from 0.3 to 30: wider channels cost more bits
    assert bits[-1] > bits[0] + 3
    relaxed = channel_bits(model, [("photo", img)], relaxed=True, seed=3)
    torch.manual_seed(3)
    model.train()
    with torch.no_grad():
        noisy = model(pad(data.to_tensor(img)[None], 16))["likelihoods"]["y"]
    model.eval()
    assert relaxed.sum().item() * lik[0, 0].numel() == pytest.approx(-torch.log2(noisy).sum().item(), rel=1e-5)
    assert not torch.allclose(relaxed, bits) and torch.equal(relaxed, channel_bits(model, [("photo", img)], True, 3))
    with pytest.raises(LictutorError, match="at least one image"):
        channel_bits(model, [])
