"""lictutor.layers vs compressai.layers on identical parameters."""

import compressai.layers as compressai_layers
import pytest
import torch

from lictutor.errors import LictutorError
from lictutor.layers import GDN, DegradationAwareBlock, LowerBound, conv, deconv


def _randomized_pair(C, inverse, seed=0):
    """A CompressAI GDN with random (non-trivial) beta/gamma, and ours loaded from it."""
    torch.manual_seed(seed)
    ref = compressai_layers.GDN(C, inverse=inverse)
    with torch.no_grad():
        beta = 0.5 + torch.rand(C)
        gamma = 0.2 * torch.rand(C, C) + 0.1 * torch.eye(C)
        ref.beta.copy_(ref.beta_reparam.init(beta))
        ref.gamma.copy_(ref.gamma_reparam.init(gamma))
    ours = GDN(C, inverse=inverse)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def test_gdn_state_dict_keys_and_init_match():
    ref, ours = compressai_layers.GDN(6), GDN(6)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    # and the other way round
    ref.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize("inverse", [False, True])
def test_gdn_matches_compressai_forward_and_gradients(inverse):
    ref, ours = _randomized_pair(8, inverse)
    x = torch.randn(2, 8, 7, 9)
    x_ref = x.clone().requires_grad_(True)
    x_our = x.clone().requires_grad_(True)
    y_ref, y_our = ref(x_ref), ours(x_our)
    torch.testing.assert_close(y_our, y_ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y_our, x)  # the layer does something

    w = torch.randn_like(y_ref)
    (y_ref * w).sum().backward()
    (y_our * w).sum().backward()
    torch.testing.assert_close(x_our.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.beta.grad, ref.beta.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.gamma.grad, ref.gamma.grad, atol=1e-5, rtol=1e-5)


def test_gdn_formula():
    """y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2), IGDN multiplies."""
    _, ours = _randomized_pair(4, False, seed=1)
    x = torch.randn(1, 4, 3, 3)
    beta = ours.beta_reparam(ours.beta).detach()
    gamma = ours.gamma_reparam(ours.gamma).detach()
    norm = beta[None, :, None, None] + torch.einsum("ij,bjhw->bihw", gamma, x**2)
    torch.testing.assert_close(ours(x), x / norm.sqrt(), atol=1e-6, rtol=1e-5)
    ours.inverse = True
    torch.testing.assert_close(ours(x), x * norm.sqrt(), atol=1e-6, rtol=1e-5)


def test_beta_stays_above_beta_min_after_a_step_pushing_it_negative():
    beta_min = 1e-6
    gdn = GDN(4, beta_min=beta_min)
    opt = torch.optim.SGD(gdn.parameters(), lr=10.0)
    x = torch.randn(2, 4, 5, 5)
    for _ in range(3):
        opt.zero_grad()
        # Larger beta -> smaller |y|: maximizing |y| pushes beta down hard.
        (-gdn(x).abs().sum()).backward()
        opt.step()
    beta = gdn.beta_reparam(gdn.beta)
    gamma = gdn.gamma_reparam(gdn.gamma)
    assert (gdn.beta < gdn.beta_reparam.lower_bound.bound).all()  # the raw value did go below
    assert (beta >= beta_min - 1e-12).all()
    assert (gamma >= 0).all()


def test_lower_bound_gradient_rule():
    lb = LowerBound(1.0)
    x = torch.tensor([0.0, 0.0, 2.0, 2.0], requires_grad=True)
    y = lb(x)
    assert torch.equal(y.detach(), torch.tensor([1.0, 1.0, 2.0, 2.0]))
    # below the bound: gradient passes only if it would push x up (negative grad)
    y.backward(torch.tensor([1.0, -1.0, 1.0, -1.0]))
    assert torch.equal(x.grad, torch.tensor([0.0, -1.0, 1.0, -1.0]))


def test_conv_deconv_shapes_and_padding():
    c, d = conv(3, 8), deconv(8, 3)
    assert c.padding == (2, 2) and d.output_padding == (1, 1)
    x = torch.randn(1, 3, 32, 48)
    assert c(x).shape == (1, 8, 16, 24)
    assert d(c(x)).shape == x.shape
    c9, d9 = conv(3, 4, kernel_size=9, stride=4), deconv(4, 3, kernel_size=9, stride=4)
    assert d9(c9(x)).shape == x.shape


def test_degradation_aware_block_starts_as_the_identity_and_follows_its_condition():
    torch.manual_seed(0)
    block = DegradationAwareBlock(6, condition=4)
    x, c = torch.randn(2, 6, 8, 8), torch.randn(4)
    torch.testing.assert_close(block(x, c), x)  # conv2 starts at zero
    torch.nn.init.normal_(block.conv2.weight, std=0.1)
    a, b = torch.randn(4), torch.randn(4)
    out = block(x, torch.stack((a, b)))
    assert out.shape == x.shape
    torch.testing.assert_close(out[0], block(x[:1], a)[0])  # each image gets its own vector
    torch.testing.assert_close(out[1], block(x[1:], b)[0])
    assert not torch.allclose(out[0], block(x[:1], b)[0])  # the vector changes what the block does
    c = torch.randn(4, requires_grad=True)
    block(x, c).square().sum().backward()
    assert c.grad.abs().sum() > 0  # a subset's vector can be fitted on the encoder side
    with pytest.raises(LictutorError, match="has 6 channels"):
        block(torch.randn(1, 5, 8, 8), a)
    with pytest.raises(LictutorError, match="3 conditioning vectors for a batch of 2"):
        block(x, torch.randn(3, 4))
