"""lictutor.models.FactorizedPrior vs compressai.models.FactorizedPrior."""

import compressai.models as cmodels
import pytest
import torch

from _reference import randomize_
from lictutor import models
from lictutor.errors import LictutorError
from lictutor.models import CompressionModel, FactorizedPrior, FactorizedPrior2017

N, M = 32, 48


def _reference(seed=0):
    """CompressAI's bmshj2018-factorized, random init, GDNs and density randomized."""
    torch.manual_seed(seed)
    ref = cmodels.FactorizedPrior(N, M)
    randomize_(ref)
    return ref.eval()


def _image(seed=1, batch=2):
    return torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_state_dict_keys_match_compressai_at_published_sizes():
    for n, m in [(128, 192), (192, 320)]:
        ref, ours = cmodels.FactorizedPrior(n, m), FactorizedPrior(n, m)
        ref_sd, our_sd = ref.state_dict(), ours.state_dict()
        assert list(our_sd) == list(ref_sd)
        assert all(our_sd[k].shape == v.shape for k, v in ref_sd.items())
    assert ours.downsampling_factor == ref.downsampling_factor == 16


def test_forward_matches_compressai():
    ref = _reference()
    ours = FactorizedPrior(N, M).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = _image()
    with torch.no_grad():
        out_ref, out_our = ref(x), ours(x)
    torch.testing.assert_close(out_our["x_hat"], out_ref["x_hat"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        out_our["likelihoods"]["y"], out_ref["likelihoods"]["y"], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(ours.aux_loss(), ref.aux_loss(), atol=1e-4, rtol=1e-6)


def test_compress_bytes_identical_and_decompress_exact():
    ref = _reference()
    ours = FactorizedPrior(N, M).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert ref.update() and ours.update()
    x = _image()
    with torch.no_grad():
        c_ref, c_our = ref.compress(x), ours.compress(x)
        assert c_our["strings"] == c_ref["strings"]
        assert tuple(c_our["shape"]) == tuple(c_ref["shape"]) == (4, 4)
        x_hat = ours.decompress(c_our["strings"], c_our["shape"])["x_hat"]
        assert torch.equal(x_hat, ours(x)["x_hat"].clamp(0, 1))
        assert torch.equal(ref.decompress(c_our["strings"], c_our["shape"])["x_hat"], x_hat)


def test_our_state_dict_loads_into_compressai():
    torch.manual_seed(3)
    ours = FactorizedPrior(N, M).eval()
    ours.update()
    ref = cmodels.FactorizedPrior(N, M).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = _image(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(ref(x)["x_hat"], ours(x)["x_hat"], atol=1e-5, rtol=1e-5)
        assert ref.compress(x)["strings"] == ours.compress(x)["strings"]


def test_updated_compressai_checkpoint_and_old_key_names_load():
    ref = _reference()
    ref.update()
    sd = ref.state_dict()
    old = {k.replace("entropy_bottleneck.matrices.", "entropy_bottleneck._matrix")
           .replace("entropy_bottleneck.biases.", "entropy_bottleneck._bias")
           .replace("entropy_bottleneck.factors.", "entropy_bottleneck._factor"): v
           for k, v in sd.items()}  # fmt: skip
    assert "entropy_bottleneck._matrix0" in old
    ours = FactorizedPrior.from_state_dict(old)
    assert (ours.N, ours.M) == (N, M)
    for k, v in sd.items():
        assert torch.equal(ours.state_dict()[k], v), k
    assert not ours.entropy_bottleneck.tables_stale()


def test_compress_without_update_and_after_training():
    torch.manual_seed(4)
    model = FactorizedPrior(N, M)
    x = _image(batch=1)

    def roundtrip():
        model.eval()
        out = model.compress(x)  # no update() anywhere in this test
        x_hat = model.decompress(out["strings"], out["shape"])["x_hat"]
        with torch.no_grad():
            assert torch.equal(x_hat, model(x)["x_hat"].clamp(0, 1))
        return out["strings"]

    first = roundtrip()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    out = model(x)
    rate = -torch.log2(out["likelihoods"]["y"]).sum()
    (rate + 100 * ((out["x_hat"] - x) ** 2).mean() + model.aux_loss()).backward()
    opt.step()
    assert model.entropy_bottleneck.tables_stale()
    assert roundtrip() != first


def test_factorized_prior_2017():
    torch.manual_seed(0)
    model = FactorizedPrior2017(N=16).eval()
    assert isinstance(model, CompressionModel) and model.downsampling_factor == 16
    sd = model.state_dict()
    assert sd["g_a.0.weight"].shape == (16, 3, 9, 9) and model.g_a[0].stride == (4, 4)
    assert sd["g_s.4.weight"].shape == (16, 3, 9, 9)
    assert "g_a.4.bias" not in sd and "entropy_bottleneck.quantiles" in sd
    x = _image(batch=1)
    with torch.no_grad():
        out = model(x)
    assert out["x_hat"].shape == x.shape
    assert out["likelihoods"]["y"].shape == (1, 16, 4, 4)
    comp = model.compress(x)
    x_hat = model.decompress(comp["strings"], comp["shape"])["x_hat"]
    with torch.no_grad():
        assert torch.equal(x_hat, model(x)["x_hat"].clamp(0, 1))
    twin = FactorizedPrior2017(N=16).eval()
    twin.load_state_dict(model.state_dict(), strict=True)
    assert twin.compress(x)["strings"] == comp["strings"]


def test_create_by_name():
    m = models.create("factorized", N=8, M=12)
    assert isinstance(m, FactorizedPrior) and (m.N, m.M) == (8, 12)
    assert isinstance(models.create("factorized2017", N=8), FactorizedPrior2017)
    with pytest.raises(LictutorError):
        models.create("nope")
    with pytest.raises(LictutorError):
        models.create("factorized", K=3)


def test_from_state_dict_needs_the_2018_transforms():
    with pytest.raises(LictutorError, match="g_a.6.weight"):
        FactorizedPrior2017.from_state_dict(FactorizedPrior2017(N=8).state_dict())


@pytest.mark.parametrize("kind", ["relu", "identity"])
def test_nonlinearity_replaces_gdn_and_keeps_the_convolutions(kind):
    """Chapter 1's controls: the convolutions keep their names and shapes; ``identity`` leaves a
    linear map (the code of a sum is the sum of the codes, up to the bias)."""
    gdn, other = FactorizedPrior(N, M), models.create("factorized", N=N, M=M, nonlinearity=kind)
    convs = {k: v.shape for k, v in gdn.state_dict().items() if ".beta" not in k and ".gamma" not in k}
    assert {k: v.shape for k, v in other.state_dict().items()} == convs
    assert not any(isinstance(m, type(gdn.g_a[1])) for m in other.modules())
    a, b = _image(1, 1), _image(2, 1)
    with torch.no_grad():
        zero = other.g_a(torch.zeros_like(a))
        linear = torch.allclose(other.g_a(a + b) - zero, (other.g_a(a) - zero) + (other.g_a(b) - zero), atol=1e-5)
    assert linear == (kind == "identity")
    out = other(a)
    assert out["x_hat"].shape == a.shape and out["likelihoods"]["y"].shape[1] == M
    with pytest.raises(LictutorError, match="unknown nonlinearity 'tanh'"):
        models.create("factorized", N=8, M=12, nonlinearity="tanh")
