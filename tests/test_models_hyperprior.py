"""lictutor.models.hyperprior vs compressai.models.ScaleHyperprior / MeanScaleHyperprior."""

import compressai.models as cmodels
import numpy as np
import pytest
import torch

from _reference import assert_same_forward, randomize_
from lictutor.evaluate import compress_image, decompress_image
from lictutor.models.hyperprior import MeanScaleHyperprior, ScaleHyperprior


N, M = 8, 12

# (ours, CompressAI's, model name for lictutor.evaluate)
PAIRS = [
    pytest.param(ScaleHyperprior, "ScaleHyperprior", "hyperprior", id="hyperprior"),
    pytest.param(MeanScaleHyperprior, "MeanScaleHyperprior", "mean-scale", id="mean-scale"),
]


def _reference(ref_name, seed=0):
    """CompressAI's model, random init, with its GDNs and the z density randomized."""
    torch.manual_seed(seed)
    ref = getattr(cmodels, ref_name)(N, M)
    randomize_(ref)
    with torch.no_grad():
        # spread y, z and the predicted scales/means over many integers and table scales
        ref.g_a[6].weight.mul_(40)
        ref.h_a[4].weight.mul_(40)
        ref.h_s[4].weight.mul_(20)
    return ref.eval()


def _image(seed=1, batch=2, size=(64, 64)):
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _loaded(ours_cls, ref):
    ours = ours_cls(N, M).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours


@pytest.mark.parametrize("ours_cls, ref_name, _name", PAIRS)
def test_state_dict_keys_match_compressai(ours_cls, ref_name, _name):
    ref, ours = getattr(cmodels, ref_name)(N, M), ours_cls(N, M)
    ref.update()  # fills the tables and the scale table, as in a saved checkpoint
    ours.update()
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert all(our_sd[k].shape == v.shape for k, v in ref_sd.items())
    assert ours.downsampling_factor == ref.downsampling_factor == 64
    # and from_state_dict finds the sizes
    net = ours_cls.from_state_dict(ref_sd)
    assert (net.N, net.M) == (N, M)


@pytest.mark.parametrize("ours_cls, ref_name, _name", PAIRS)
def test_forward_matches_compressai(ours_cls, ref_name, _name):
    ref = _reference(ref_name)
    ours = _loaded(ours_cls, ref)  # strict, from a model never update()d
    assert ours.gaussian_conditional.scale_table.numel() == 64  # default table restored
    x = _image()
    assert_same_forward(ours, ref, x)


@pytest.mark.parametrize("ours_cls, ref_name, _name", PAIRS)
def test_compress_bytes_identical_and_decompress_exact(ours_cls, ref_name, _name):
    ref = _reference(ref_name)
    ours = _loaded(ours_cls, ref)
    ref.update()
    ours.update()
    x = _image()
    ref_out, our_out = ref.compress(x), ours.compress(x)
    assert our_out["strings"] == ref_out["strings"]
    assert tuple(our_out["shape"]) == tuple(ref_out["shape"]) == (1, 1)

    rec = ours.decompress(our_out["strings"], our_out["shape"])["x_hat"]
    ref_rec = ref.decompress(ref_out["strings"], ref_out["shape"])["x_hat"]
    torch.testing.assert_close(rec, ref_rec, atol=1e-5, rtol=1e-5)
    assert rec.min() >= 0 and rec.max() <= 1
    # exact: decoding reproduces the eval-mode forward pass (rounded latents), twice alike
    with torch.no_grad():
        fwd = ours(x)["x_hat"].clamp(0, 1)
    torch.testing.assert_close(rec, fwd, atol=1e-6, rtol=0)
    again = ours.decompress(our_out["strings"], our_out["shape"])["x_hat"]
    assert torch.equal(rec, again)


@pytest.mark.parametrize("ours_cls, ref_name, _name", PAIRS)
def test_tables_built_automatically(ours_cls, ref_name, _name):
    # no update(): compress builds the tables itself, and matches an update()d CompressAI
    ref = _reference(ref_name)
    ours = _loaded(ours_cls, ref)
    x = _image(batch=1)
    out = ours.compress(x)
    ref.update()
    assert out["strings"] == ref.compress(x)["strings"]


@pytest.mark.parametrize("ours_cls, ref_name, name", PAIRS)
def test_evaluate_round_trip_odd_size(ours_cls, ref_name, name):
    ours = _loaded(ours_cls, _reference(ref_name))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    data = compress_image(ours, img, name)
    rec = decompress_image(ours, data, name)
    assert rec.shape == img.shape and rec.dtype == np.uint8
    assert np.array_equal(rec, decompress_image(ours, data, name))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    out = ours.compress(torch.nn.functional.pad(x, (0, 38, 0, 58), mode="replicate"))
    assert tuple(out["shape"]) == (2, 2)


@pytest.mark.parametrize("ours_cls", [ScaleHyperprior, MeanScaleHyperprior])
@pytest.mark.parametrize("mode", ["noise", "ste", "mixed"])
def test_training_forward_modes(ours_cls, mode):
    torch.manual_seed(0)
    net = ours_cls(N, M).train()
    net.quantization = mode
    x = _image(batch=1)
    out = net(x)
    assert out["x_hat"].shape == x.shape
    assert out["likelihoods"]["y"].shape == (1, M, 4, 4)
    assert out["likelihoods"]["z"].shape == (1, N, 1, 1)
    bits = sum(-torch.log2(v).sum() for v in out["likelihoods"].values())
    loss = bits + ((out["x_hat"] - x) ** 2).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.g_a.parameters())
    assert any(p.grad.abs().sum() > 0 for p in net.h_a.parameters())  # rate of z reaches h_a
    if mode != "noise":  # the decoder sees rounded latents: x_hat is the eval-mode one
        with torch.no_grad():
            expected = net.eval()(x)["x_hat"]
        torch.testing.assert_close(out["x_hat"].detach(), expected, atol=1e-6, rtol=0)
