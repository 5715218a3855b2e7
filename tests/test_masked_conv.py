import compressai.layers as compressai_layers
import pytest
import torch

from lictutor import LictutorError
from lictutor.layers import MaskedConv2d


def _pair(mask_type, c_in=3, c_out=4, k=5, seed=0):
    """Our layer and CompressAI's, with identical weights."""
    torch.manual_seed(seed)
    ours = MaskedConv2d(c_in, c_out, k, padding=k // 2, mask_type=mask_type)
    theirs = compressai_layers.MaskedConv2d(c_in, c_out, k, padding=k // 2, mask_type=mask_type)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("k", [3, 5])
def test_matches_compressai(mask_type, k):
    ours, theirs = _pair(mask_type, k=k)
    assert torch.equal(ours.mask, theirs.mask)
    x = torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


def test_mask_picture():
    a = MaskedConv2d(1, 1, 3, mask_type="A").mask[0, 0]
    b = MaskedConv2d(1, 1, 3, mask_type="B").mask[0, 0]
    assert a.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert b.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_state_dict_loads_from_compressai(mask_type):
    torch.manual_seed(1)
    theirs = compressai_layers.MaskedConv2d(3, 4, 5, padding=2, mask_type=mask_type)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = theirs(x)  # also writes the masked weight into theirs.weight
    ours = MaskedConv2d(3, 4, 5, padding=2, mask_type=mask_type)
    ours.load_state_dict(theirs.state_dict())  # strict: same keys (weight, bias, mask)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-6)


def _input_grad(net, x, i, j):
    """d out[:, :, i, j].sum() / d x, summed over batch and channels: (H, W)."""
    x = x.clone().requires_grad_(True)
    net(x)[:, :, i, j].sum().backward()
    return x.grad.abs().sum(dim=(0, 1))


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_causal_gradients(mask_type):
    torch.manual_seed(2)
    H, W = 7, 8
    layer = MaskedConv2d(2, 3, 5, padding=2, mask_type=mask_type)
    x = torch.randn(1, 2, H, W)
    rank = torch.arange(H * W).reshape(H, W)  # raster-order index of each pixel
    for i, j in [(0, 0), (3, 4), (6, 7), (2, 0), (5, 7)]:
        g = _input_grad(layer, x, i, j)
        seen = g != 0
        after = rank > rank[i, j] if mask_type == "B" else rank >= rank[i, j]
        assert not seen[after].any(), (i, j)
        # ...and it does see the unmasked taps inside the 5x5 window.
        di, dj = torch.meshgrid(torch.arange(H) - i, torch.arange(W) - j, indexing="ij")
        in_window = (di.abs() <= 2) & (dj.abs() <= 2)
        assert seen[in_window & ~after].all(), (i, j)


def test_causal_stack_perturbation():
    """A then B layers: output (i, j) is unchanged when inputs at and after (i, j) change."""
    torch.manual_seed(3)
    H, W = 6, 6
    net = torch.nn.Sequential(
        MaskedConv2d(2, 4, 5, padding=2, mask_type="A"),
        torch.nn.ReLU(),
        MaskedConv2d(4, 4, 3, padding=1, mask_type="B"),
        torch.nn.ReLU(),
        MaskedConv2d(4, 2, 3, padding=1, mask_type="B"),
    )
    x = torch.randn(1, 2, H, W)
    flat = x.flatten(2)
    with torch.no_grad():
        y = net(x)
        for r in range(H * W):
            x2 = flat.clone()
            x2[:, :, r:] = torch.randn_like(x2[:, :, r:])  # change pixel r and all after it
            y2 = net(x2.reshape_as(x)).flatten(2)
            # outputs strictly before pixel r do not change; output r itself does not
            # either, because the first layer is of type A.
            assert torch.equal(y2[:, :, : r + 1], y.flatten(2)[:, :, : r + 1]), r
            if r + 1 < H * W:  # ...while the later outputs do see the changed inputs
                assert not torch.equal(y2[:, :, r + 1 :], y.flatten(2)[:, :, r + 1 :])


def test_weight_not_modified_and_masked_taps_get_no_gradient():
    layer = MaskedConv2d(2, 2, 3, padding=1, mask_type="A")
    w0 = layer.weight.detach().clone()
    layer(torch.randn(1, 2, 4, 4)).sum().backward()
    assert torch.equal(layer.weight.detach(), w0)
    assert torch.all(layer.weight.grad[layer.mask == 0] == 0)


@pytest.mark.parametrize("bad", ["C", "a", "", None])
def test_bad_mask_type(bad):
    with pytest.raises(LictutorError):
        MaskedConv2d(1, 1, 3, mask_type=bad)


def test_repr_mentions_mask_type():
    assert "mask_type='B'" in repr(MaskedConv2d(1, 1, 3, mask_type="B"))
