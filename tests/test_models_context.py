"""lictutor.models.context.JointAutoregressiveHierarchicalPriors vs CompressAI's mbt2018."""

import compressai.models as cmodels
import numpy as np
import pytest
import torch

from _reference import assert_same_forward, randomize_
from lictutor import bitstream
from lictutor.errors import LictutorError
from lictutor.evaluate import compress_image, decompress_image
from lictutor.models.base import CompressionModel
from lictutor.models.context import JointAutoregressiveHierarchicalPriors as Ours

N, M = 8, 12


def _reference(seed=0):
    """CompressAI's mbt2018, random init, GDNs and density randomized, mask applied."""
    torch.manual_seed(seed)
    ref = cmodels.JointAutoregressiveHierarchicalPriors(N, M)
    randomize_(ref)
    with torch.no_grad():
        # y of a random-init g_a is tiny; make it span a few integers
        ref.g_a[6].weight.mul_(20)
        # CompressAI's decompress uses context_prediction.weight unmasked: it relies on
        # forward() having masked it in place (as in any trained checkpoint).
        ref.context_prediction.weight.mul_(ref.context_prediction.mask)
    return ref.eval()


def _image(seed=1, batch=2, size=64):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _loaded(ref):
    ours = Ours(N, M).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours


def test_state_dict_matches_compressai():
    ref, ours = cmodels.JointAutoregressiveHierarchicalPriors(N, M), Ours(N, M)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert set(our_sd) == set(ref_sd)
    shaped = {k for k, v in ref_sd.items() if v.numel()}  # CompressAI's empty tables
    assert all(our_sd[k].shape == ref_sd[k].shape for k in shaped)
    assert ours.downsampling_factor == ref.downsampling_factor == 64
    assert isinstance(ours, CompressionModel) and ours.context_prediction.mask_type == "A"
    assert Ours.from_state_dict(ref_sd).M == M


def test_eval_forward_matches_compressai():
    ref = _reference()
    ours = _loaded(ref)
    x = _image()
    assert_same_forward(ours, ref, x)


def test_compress_bytes_identical_and_decompress_exact():
    ref = _reference()
    ours = _loaded(ref)
    assert ours.entropy_bottleneck.tables_stale()  # compress builds the tables itself
    x = _image()
    c_our = ours.compress(x)
    assert ref.update() and not ours.update()  # ours were built by compress already
    c_ref = ref.compress(x)
    assert c_our["strings"] == c_ref["strings"]
    assert tuple(c_our["shape"]) == tuple(c_ref["shape"]) == (1, 1)
    assert sum(len(s) for s in c_our["strings"][0]) > 20  # y really costs bits

    # decoded y == rounded y (around the predicted means): capture g_s's input
    seen = []
    hook = ours.g_s.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].clone()))
    x_hat = ours.decompress(c_our["strings"], c_our["shape"])["x_hat"]
    hook.remove()
    with torch.no_grad():
        y = ours.g_a(x)
    assert seen[0].shape == y.shape
    # (the parallel masked convolution may differ in the last float bits, not by a whole step)
    torch.testing.assert_close(seen[0], _reference_y_hat(ours, x), atol=1e-4, rtol=0)
    assert (seen[0] - y).abs().max() <= 0.5 + 1e-5
    with torch.no_grad():
        assert torch.equal(x_hat, ref.decompress(c_ref["strings"], c_ref["shape"])["x_hat"])
    # deterministic
    assert ours.compress(x)["strings"] == c_our["strings"]
    assert torch.equal(ours.decompress(c_our["strings"], c_our["shape"])["x_hat"], x_hat)


def _reference_y_hat(model, x):
    """round(y - means) + means with the means of the context model on its own output:
    built position by position with the (parallel) masked convolution."""
    with torch.no_grad():
        y = model.g_a(x)
        psi = model.h_s(model.entropy_bottleneck(model.h_a(y))[0])
        y_hat = torch.zeros_like(y)
        for h in range(y.size(2)):
            for w in range(y.size(3)):
                _, means = model._gaussian_params(psi, model.context_prediction(y_hat))
                m = means[:, :, h, w]
                y_hat[:, :, h, w] = torch.round(y[:, :, h, w] - m) + m
    return y_hat


def test_our_state_dict_loads_into_compressai():
    torch.manual_seed(3)
    ours = Ours(N, M).eval()
    with torch.no_grad():
        ours.g_a[6].weight.mul_(20)
    assert ours.update()
    ref = cmodels.JointAutoregressiveHierarchicalPriors(N, M).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = _image(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(ref(x)["x_hat"], ours(x)["x_hat"], atol=1e-5, rtol=1e-5)
        assert ref.compress(x)["strings"] == ours.compress(x)["strings"]


def test_damaged_strings_raise():
    ref = _reference()
    ours = _loaded(ref)
    x = _image(batch=1)
    c = ours.compress(x)
    y_string = c["strings"][0][0]
    for bad in (b"", y_string[: len(y_string) // 2], bytes([y_string[0] ^ 0xFF]) + y_string[1:]):
        with pytest.raises(LictutorError):
            ours.decompress([[bad], c["strings"][1]], c["shape"])
    with pytest.raises(LictutorError):
        ours.decompress([c["strings"][0]], c["shape"])


@pytest.mark.parametrize("mode", ["noise", "ste", "mixed"])
def test_training_forward_each_quantization(mode):
    torch.manual_seed(5)
    model = Ours(N, M).train()
    model.quantization = mode
    x = _image(batch=1)
    out = model(x)
    assert out["x_hat"].shape == x.shape
    assert out["likelihoods"]["y"].shape == (1, M, 4, 4)
    assert out["likelihoods"]["z"].shape == (1, N, 1, 1)
    bits = sum(-torch.log2(v).sum() for v in out["likelihoods"].values())
    (bits + 100 * ((out["x_hat"] - x) ** 2).mean() + model.aux_loss()).backward()
    assert model.context_prediction.weight.grad is not None
    assert torch.all(model.context_prediction.weight.grad[model.context_prediction.mask == 0] == 0)
    assert model.g_a[0].weight.grad.abs().sum() > 0
    model.quantization = "bogus"
    with pytest.raises(LictutorError):
        model(x)


def test_compress_image_roundtrip_70x90():
    ref = _reference(seed=2)
    model = _loaded(ref)
    img = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    blob = compress_image(model, img, "context")
    assert compress_image(model, img, "context") == blob
    decoded = decompress_image(model, blob, "context")
    assert decoded.shape == (70, 90, 3) and decoded.dtype == np.uint8
    assert np.array_equal(decompress_image(model, blob, "context"), decoded)
    # the same image CompressAI decodes from the same strings
    payload = bitstream.unpack(blob)
    ref.update()
    with torch.no_grad():
        x_ref = ref.decompress([list(g) for g in payload.strings], payload.shape)["x_hat"]
    expected = (x_ref[0, :, :70, :90].permute(1, 2, 0) * 255).round().clamp(0, 255)
    assert np.abs(decoded.astype(int) - expected.numpy().astype(int)).max() <= 1


def test_large_images_show_a_bar_and_an_estimate(monkeypatch, capsys):
    import lictutor.models.context as context

    torch.manual_seed(0)
    model = Ours(N=8, M=12).eval()
    img = (np.random.default_rng(0).random((128, 192, 3)) * 255).astype(np.uint8)
    quiet = compress_image(model, img, "context")  # 8×12 positions: under the threshold, no bar
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(context, "PROGRESS_POSITIONS", 96)
    blob = compress_image(model, img, "context", progress=True)
    err = capsys.readouterr()
    assert blob == quiet
    assert "context model: 8×12 latent positions, coded one after another: about" in err.out + err.err
    assert "8/8" in err.err  # the bar over the rows
    assert np.array_equal(decompress_image(model, blob, "context", progress=True),
                          decompress_image(model, blob, "context"))
