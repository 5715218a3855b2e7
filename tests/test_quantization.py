import compressai.entropy_models as em
import pytest
import torch

from lictutor.errors import LictutorError
from lictutor.quantization import (
    add_uniform_noise,
    dequantize,
    hard_round,
    quantize,
    quantize_mixed,
    sample_seeds,
    ste_round,
)


def test_noise_bounded_and_centered():
    torch.manual_seed(0)
    x = torch.zeros(200_000)
    u = add_uniform_noise(x)
    assert u.min() >= -0.5 and u.max() <= 0.5
    assert abs(u.mean().item()) < 5e-3
    assert abs(u.var().item() - 1 / 12) < 2e-3  # variance of U(-1/2, 1/2)


def test_noise_gradient_is_identity():
    x = torch.randn(10, requires_grad=True)
    add_uniform_noise(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(10))


def test_ste_rounds_forward_and_is_identity_backward():
    x = torch.tensor([-1.6, -0.4, 0.2, 0.51, 2.5], requires_grad=True)
    y = ste_round(x)
    assert torch.equal(y.detach(), torch.round(x.detach()))
    g = torch.randn(5)
    y.backward(g)
    assert torch.equal(x.grad, g)


def test_hard_round_has_zero_gradient():
    x = torch.randn(10, requires_grad=True)
    y = hard_round(x)
    assert torch.equal(y, torch.round(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(10))


def test_quantize_modes_around_medians():
    x = torch.tensor([[0.2, 1.7, -0.6]])
    m = torch.tensor([[0.4, 0.4, 0.4]])
    assert torch.equal(quantize(x, "round", m), torch.round(x - m) + m)
    assert torch.equal(quantize(x, "dequantize", m), quantize(x, "round", m))
    sym = quantize(x, "symbols", m)
    assert sym.dtype == torch.int32 and sym.tolist() == [[0, 1, -1]]
    assert torch.equal(dequantize(sym, m), quantize(x, "round", m))
    assert torch.equal(quantize(x, "ste", m), quantize(x, "round", m))
    assert torch.equal(quantize(x, "round"), torch.round(x))
    with pytest.raises(LictutorError):
        quantize(x, "floor")


def test_quantize_matches_compressai():
    ref = em.EntropyBottleneck(3)
    x, m = torch.randn(2, 3, 5) * 4, torch.randn(1, 3, 1)
    for mode in ("dequantize", "symbols"):
        assert torch.equal(quantize(x, mode, m), ref.quantize(x, mode, m))
    torch.manual_seed(1)
    a = ref.quantize(x, "noise")
    torch.manual_seed(1)
    assert torch.equal(quantize(x, "noise"), a)


def test_quantize_mixed():
    torch.manual_seed(0)
    x = (torch.randn(1000) * 3).requires_grad_(True)
    noisy, rounded = quantize_mixed(x)
    assert torch.equal(rounded.detach(), torch.round(x.detach()))
    assert (noisy - x).abs().max() <= 0.5
    assert not torch.equal(noisy, rounded)
    rounded.sum().backward()
    assert torch.equal(x.grad, torch.ones(1000))


def test_sample_seeds_noise_depends_only_on_each_samples_seed():
    x = torch.zeros(4, 3, 5, 5)
    with sample_seeds([10, 11, 12, 13]):
        full = add_uniform_noise(x)
        second_draw = add_uniform_noise(x)
    with sample_seeds([12, 13]):  # the same samples, split differently
        half = add_uniform_noise(x[2:])
    torch.manual_seed(0)
    a = add_uniform_noise(x)  # outside the block: the global random state again
    torch.manual_seed(0)
    assert torch.equal(a, add_uniform_noise(x))
    assert torch.equal(half, full[2:])
    assert not torch.equal(full[0], full[1])
    assert not torch.equal(second_draw, full)  # the k-th draw differs from the first
    assert full.abs().max() <= 0.5
    with pytest.raises(LictutorError):
        with sample_seeds([1, 2]):
            add_uniform_noise(x)
