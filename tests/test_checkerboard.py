"""Chapter 7: the checkerboard mask, the deformable residual block, CheckerboardContext and
FastLIC (two-pass coding, channel skipping, damaged files)."""

import copy
import random

import compressai.entropy_models as entropy_models
import compressai.latent_codecs as latent_codecs
import compressai.layers as compressai_layers
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _reference import randomize_
from lictutor import LictutorError, bitstream, data, models
from lictutor.entropy import GaussianConditional, GaussianMixtureConditional, get_scale_table
from lictutor.evaluate import compress_image, decompress_image
from lictutor.layers import CheckerboardMaskedConv2d, DeformableResidualBlock
from lictutor.checkpoint import load_weights
from lictutor.losses import l1_sparsity
from lictutor.models import CheckerboardContext, FastLIC
from lictutor.models.checkerboard import checkerboard_merge, checkerboard_split
from lictutor.models.context import JointAutoregressiveHierarchicalPriors

N, M = 16, 24
#: the models under test: name -> (registered name, constructor)
VARIANTS = {
    "checkerboard": ("checkerboard", lambda: CheckerboardContext(N, M)),
    "fast": ("fast", lambda: FastLIC(N, M)),  # Gaussian mixture for the non-anchors
    "fast-gaussian": ("fast", lambda: FastLIC(N, M, components=1)),
}


def _model(name, seed=0):
    """A tiny model with GDNs and densities randomized and latents spanning a few integers."""
    torch.manual_seed(seed)
    net = randomize_(VARIANTS[name][1]())
    with torch.no_grad():
        net.g_a[-1].weight.mul_(20)
        for p in net.context_prediction.parameters():
            p.mul_(3)
    return net.eval()


@pytest.fixture(scope="module")
def photo():
    return data.builtin_photos()["astronaut"][40:168, 120:248]  # 128×128, a 2×2 z


def _tensor(img):
    return data.to_tensor(img)[None]


def _decoded_y_hat(model, strings, shape):
    """``(x_hat, y_hat)`` of ``model.decompress``, y_hat captured at g_s's input."""
    seen = []
    hook = model.g_s.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].clone()))
    x_hat = model.decompress(strings, shape)["x_hat"]
    hook.remove()
    return x_hat, seen[0]


def _anchor_mask(height, width):
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((i + j) % 2 == 0)[None, None]


# -- layers -------------------------------------------------------------------------


@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("k", [3, 5])
def test_checkerboard_conv_matches_compressai(mask_type, k):
    torch.manual_seed(0)
    ours = CheckerboardMaskedConv2d(3, 4, k, padding=k // 2, mask_type=mask_type)
    theirs = compressai_layers.CheckerboardMaskedConv2d(3, 4, k, padding=k // 2, mask_type=mask_type)
    theirs.load_state_dict(ours.state_dict())
    assert torch.equal(ours.mask, theirs.mask)
    x = torch.randn(2, 3, 9, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


def test_checkerboard_mask_sees_only_anchors():
    assert CheckerboardMaskedConv2d(1, 1, 3).mask[0, 0].tolist() == [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    torch.manual_seed(1)
    layer = CheckerboardMaskedConv2d(2, 3, 5, padding=2)
    anchors = _anchor_mask(8, 10)
    x = torch.randn(1, 2, 8, 10)
    changed = torch.where(anchors, x, torch.randn_like(x))  # other values at the non-anchors
    with torch.no_grad():
        a, b = layer(x), layer(changed)
    assert torch.equal(checkerboard_split(a)[1], checkerboard_split(b)[1])
    assert not torch.equal(a, b)  # at the anchors it does see the non-anchors (zeroed by the models)


def test_split_and_merge():
    t = torch.arange(2 * 3 * 4 * 6).reshape(2, 3, 4, 6)
    anchors, non_anchors = checkerboard_split(t)
    assert anchors.shape == non_anchors.shape == (2, 3, 4, 3)
    mask = _anchor_mask(4, 6).expand_as(t)
    assert torch.equal(anchors.flatten(), t[mask])
    assert torch.equal(non_anchors.flatten(), t[~mask])
    assert torch.equal(checkerboard_merge(anchors, non_anchors), t)
    with pytest.raises(LictutorError, match="even width"):
        checkerboard_split(torch.zeros(1, 1, 2, 3))


def test_deformable_block_starts_as_compressai_residual_block():
    torch.manual_seed(2)
    drm = DeformableResidualBlock(6)
    plain = compressai_layers.ResidualBlock(6, 6)
    state = {k: v for k, v in drm.state_dict().items() if not k.startswith("offset.")}
    plain.load_state_dict(state)
    x = torch.randn(2, 6, 7, 9)
    torch.testing.assert_close(drm(x), plain(x), rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(drm.offset.weight) == 0 and torch.count_nonzero(drm.offset.bias) == 0


def test_deformable_block_learns_offsets():
    torch.manual_seed(3)
    drm = DeformableResidualBlock(4)
    x = torch.randn(1, 4, 8, 8)
    drm(x).square().sum().backward()
    assert drm.offset.weight.grad.abs().sum() > 0 and drm.offset.bias.grad.abs().sum() > 0
    before = drm(x).detach()
    with torch.no_grad():
        drm.offset.bias.fill_(0.7)  # every tap sampled 0.7 px away: another output
    assert not torch.allclose(drm(x), before)


# -- the Gaussian mixture --------------------------------------------------------------


def _mixture_params(n, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, K, generator=g)
    means = 6 * torch.randn(n, K, generator=g)
    scales = torch.exp(2 * torch.rand(n, K, generator=g) - 1.5)  # 0.2 ... 1.6
    return logits, means, scales


def test_mixture_of_equal_gaussians_is_the_gaussian():
    logits, means, scales = _mixture_params(500, 1)
    v = torch.round(means[:, 0] + 3 * torch.randn(500))
    gmm = GaussianMixtureConditional()
    same = gmm.likelihood(v, torch.zeros(500, 3), means.expand(-1, 3), scales.expand(-1, 3))
    gauss = GaussianConditional(get_scale_table()).likelihood(v, scales[:, 0], means[:, 0])
    torch.testing.assert_close(same, gauss, rtol=1e-5, atol=1e-9)


def test_mixture_coding_is_exact_and_costs_its_likelihood():
    K, n = 3, 4000
    logits, means, scales = _mixture_params(n, K)
    gmm = GaussianMixtureConditional()
    pick = torch.multinomial(torch.softmax(logits, -1), 1, generator=torch.Generator().manual_seed(1))
    v = torch.round(means.gather(1, pick) + scales.gather(1, pick) * torch.randn(n, 1)).squeeze(1)
    v[:5] = torch.tensor([300.0, -300.0, 1e6, -129.0, 129.0])  # beyond every table: escape codes
    string = gmm.compress(v, logits, means, scales)
    assert torch.equal(gmm.decompress(string, logits, means, scales), v)
    ideal = -torch.log2(gmm.likelihood(v[5:], logits[5:], means[5:], scales[5:])).sum()
    assert 8 * len(string) < 1.02 * ideal + 400  # 16-bit tables, escapes: a little more
    for bad in (b"", string[:-1], string[: len(string) // 2], bytes([string[0] ^ 4]) + string[1:]):
        with pytest.raises(LictutorError, match="damaged"):
            gmm.decompress(bad, logits, means, scales)
    with pytest.raises(LictutorError, match="cannot entropy-code"):
        gmm.compress(torch.full((n,), float("nan")), logits, means, scales)


# -- models: structure ------------------------------------------------------------


def test_registered_and_sized():
    for name, cls in {"checkerboard": CheckerboardContext, "fast": FastLIC}.items():
        assert models.MODELS[name] is cls
        net = models.create(name, N=N, M=M)
        assert net.downsampling_factor == 64 and (net.N, net.M) == (N, M)
        assert type(cls.from_state_dict(net.state_dict())) is cls
    for k in (1, 2, 3):
        net = FastLIC.from_state_dict(FastLIC(N, M, components=k).state_dict())
        assert (net.M, net.components) == (M, k)
    with pytest.raises(LictutorError, match="components"):
        FastLIC(N, M, components=0)


def test_fast_student_with_a_narrower_decoder(photo):
    """Fu et al.'s smaller student decoder: g_s narrower, the encoder and entropy model the
    teacher's, whose weights (all but g_s's) load into it; it codes and decodes."""
    teacher = _model("fast", seed=2)
    student = models.create("fast", N=N, M=M, decoder_N=8)
    assert student.g_s[0].out_channels == 8 and student.g_a[0].out_channels == N
    g_s_params = lambda m: sum(p.numel() for p in m.g_s.parameters())  # noqa: E731
    assert g_s_params(student) < g_s_params(teacher) / 2.5  # half the width: about a third of the weights
    rebuilt = FastLIC.from_state_dict(student.state_dict())
    assert rebuilt.g_s[0].out_channels == 8 and FastLIC.from_state_dict(teacher.state_dict()).g_s[0].out_channels == N
    kept = {k: v for k, v in teacher.state_dict().items() if not k.startswith("g_s.")}
    load_weights(student, kept, "the teacher", partial=True)
    torch.testing.assert_close(student.g_a[0].weight, teacher.g_a[0].weight)
    with pytest.raises(LictutorError, match="do not fit"):
        load_weights(student, teacher.state_dict(), "the teacher", partial=True)
    student.eval()
    x = _tensor(photo)
    out = student.compress(x)
    x_hat = student.decompress(out["strings"], out["shape"])["x_hat"]
    assert x_hat.shape == x.shape
    with pytest.raises(LictutorError, match="decoder_N must be a whole number"):
        models.create("fast", N=N, M=M, decoder_N=0)


def test_fast_anchor_bits_with_rounded_and_exact_means(photo):
    """The rounded-mean bits are what the model's own likelihoods charge the anchors; with
    means already on the integers, rounding them costs nothing."""
    model = _model("fast-gaussian", seed=3)
    x = _tensor(photo)
    rounded, exact = model.anchor_bits(x)
    with torch.no_grad():
        anchor_likelihoods = checkerboard_split(model(x)["likelihoods"]["y"])[0]
    assert rounded == pytest.approx(float(-torch.log2(anchor_likelihoods).sum()), rel=1e-5)
    assert exact > 0 and exact != rounded
    last = model.entropy_parameters_anchor[-1]
    with torch.no_grad():  # the means' half of the anchor network's output: constant integers
        last.weight[M:].zero_()
        last.bias[M:] = 2.0
    assert model.anchor_bits(x)[0] == pytest.approx(model.anchor_bits(x)[1])
    assert model.training is False


def test_context_model_weights_load_into_checkerboard():
    state = JointAutoregressiveHierarchicalPriors(N, M).state_dict()
    del state["context_prediction.mask"]  # the raster mask must not replace the checkerboard's
    net = CheckerboardContext(N, M)
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == ["context_prediction.mask"] and not result.unexpected_keys
    assert torch.equal(net.g_s[0].weight, state["g_s.0.weight"])
    assert net.context_prediction.mask[0, 0].tolist() == CheckerboardMaskedConv2d(1, 1, 5).mask[0, 0].tolist()


# -- models: forward = explicit two passes -------------------------------------------


def _explicit(net, x, anchor_values=None):
    """``(y, psi, anchor_params, nonanchor_params)``, full size, the slow and obvious way:
    anchors from the hyperprior alone, non-anchors from the hyperprior and a masked
    convolution of the anchors only (of ``anchor_values``, default ``round(y)``)."""
    y = net.g_a(x)
    psi = net.h_s(net.entropy_bottleneck(net.h_a(y), mode="ste")[0])
    anchors = _anchor_mask(*y.shape[-2:])
    known = torch.round(y) if anchor_values is None else anchor_values
    ctx = net.context_prediction
    phi = F.conv2d(known * anchors, ctx.weight * ctx.mask, ctx.bias, padding=2)
    if isinstance(net, FastLIC):
        params_a = net.entropy_parameters_anchor(psi)
        params_n = net.entropy_parameters_nonanchor(torch.cat((psi, phi), 1))
    else:
        params_a = net.entropy_parameters(torch.cat((psi, torch.zeros_like(phi)), 1))
        params_n = net.entropy_parameters(torch.cat((psi, phi), 1))
    return y, psi, params_a, params_n


def _mixture_likelihood(v, params, K):
    """Cheng et al.'s eq. (8), written out: params (B, 3*K*M, H, W) = logits, means, scales."""
    B, _, H, W = params.shape
    logits, means, scales = params.reshape(B, 3, K, -1, H, W).unbind(1)
    weights = torch.softmax(logits, 1)
    scales = scales.clamp_min(0.11)
    cdf = lambda t: 0.5 * (1 + torch.erf(t / 2**0.5))  # noqa: E731
    p = (weights * (cdf((v[:, None] - means + 0.5) / scales) - cdf((v[:, None] - means - 0.5) / scales))).sum(1)
    return p.clamp_min(1e-9)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_training_forward_is_the_two_pass_computation(name, photo):
    net = _model(name).train()
    net.quantization = "ste"  # deterministic
    x = _tensor(photo)
    out = net(x)
    with torch.no_grad():
        y, _, params_a, params_n = _explicit(net, x)
        gc = net.gaussian_conditional
        anchors = _anchor_mask(*y.shape[-2:])
        if name == "checkerboard":
            scales, means = torch.where(anchors, params_a, params_n).chunk(2, 1)
            expected = gc(y, scales, means, mode="ste")[1]
        else:
            y_hat = torch.round(y)
            assert torch.equal(out["y_hat"], y_hat)
            scales, means = params_a.chunk(2, 1)
            expected_a = gc.likelihood(y_hat, scales, torch.round(means))
            if net.components == 1:
                scales, means = params_n.chunk(2, 1)
                expected_n = gc.likelihood(y_hat, scales, torch.round(means))
            else:
                expected_n = _mixture_likelihood(y_hat, params_n, net.components)
            expected = torch.where(anchors, expected_a, expected_n)
    torch.testing.assert_close(out["likelihoods"]["y"], expected, rtol=1e-5, atol=1e-6)
    assert (out["likelihoods"]["y"] < 0.99).float().mean() > 0.5  # y really costs bits


@pytest.mark.parametrize("mode", ["noise", "ste", "mixed"])
def test_fast_trains_with_l1_sparsity(mode, photo):
    net = _model("fast").train()
    net.quantization = mode
    out = net(_tensor(photo))
    rate = sum(-torch.log2(v).sum() for v in out["likelihoods"].values())
    loss = rate + F.mse_loss(out["x_hat"], _tensor(photo)) + 0.1 * l1_sparsity(out)
    loss.backward()
    assert torch.isfinite(loss)
    assert l1_sparsity(out) == out["y_hat"].abs().mean()
    for module in (net.g_a[6].offset, net.entropy_parameters_anchor[0], net.entropy_parameters_nonanchor[0]):
        assert module.weight.grad.abs().sum() > 0


# -- models: coding -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_round_trip_exact_and_deterministic(name, photo):
    net = _model(name)
    x = _tensor(photo)
    c = net.compress(x)
    assert len(c["strings"]) == (3 if name == "checkerboard" else 4) and tuple(c["shape"]) == (2, 2)
    assert all(len(group) == 1 for group in c["strings"])
    assert min(len(c["strings"][0][0]), len(c["strings"][1][0])) > 100  # both halves cost bits
    x_hat, y_hat = _decoded_y_hat(net, c["strings"], c["shape"])
    with torch.no_grad():
        if name == "checkerboard":
            # round(y - means) + means, anchors first; the non-anchors' means from those anchors
            y, _, params_a, _ = _explicit(net, x)
            means_a = params_a.chunk(2, 1)[1]
            first = torch.round(y - means_a) + means_a  # right at the anchors
            _, _, _, params_n = _explicit(net, x, anchor_values=first)
            means_n = params_n.chunk(2, 1)[1]
            expected = torch.where(_anchor_mask(*y.shape[-2:]), first, torch.round(y - means_n) + means_n)
            torch.testing.assert_close(y_hat, expected, rtol=0, atol=1e-4)
            assert (y_hat - y).abs().max() <= 0.5 + 1e-5
        else:
            assert torch.equal(y_hat, torch.round(net.g_a(x)))  # exactly forward's y_hat
            assert torch.equal(y_hat, net(x)["y_hat"])
        assert torch.equal(x_hat, net.g_s(y_hat).clamp(0, 1))
    again = net.compress(x)
    assert again["strings"] == c["strings"]
    assert torch.equal(net.decompress(again["strings"], again["shape"])["x_hat"], x_hat)


def test_checkerboard_writes_compressai_bytes(photo):
    """Same anchors, context and Gaussian coding as CompressAI's CheckerboardLatentCodec
    (whose parameter network takes cat(phi, psi) where ours takes cat(psi, phi))."""
    net = _model("checkerboard")
    parameters = copy.deepcopy(net.entropy_parameters)
    with torch.no_grad():
        w = net.entropy_parameters[0].weight
        parameters[0].weight.copy_(torch.cat((w[:, 2 * M :], w[:, : 2 * M]), 1))
    context = compressai_layers.CheckerboardMaskedConv2d(M, 2 * M, 5, padding=2)
    context.load_state_dict(net.context_prediction.state_dict())
    gc = entropy_models.GaussianConditional(None)
    gc.update_scale_table(get_scale_table())
    ref = latent_codecs.CheckerboardLatentCodec(
        latent_codec={"y": latent_codecs.GaussianConditionalLatentCodec(gaussian_conditional=gc)},
        entropy_parameters=parameters,
        context_prediction=context,
    ).eval()
    x = _tensor(photo)
    ours = net.compress(x)
    with torch.no_grad():
        y = net.g_a(x)
        psi = net.h_s(net.entropy_bottleneck.decompress(ours["strings"][2], ours["shape"]))
        theirs = ref.compress(y, psi)
    assert ours["strings"][:2] == theirs["strings"]
    _, y_hat = _decoded_y_hat(net, ours["strings"], ours["shape"])
    torch.testing.assert_close(y_hat, theirs["y_hat"], rtol=0, atol=1e-5)  # means: float order


@pytest.mark.parametrize("name", list(VARIANTS))
def test_batch_codes_each_image_as_alone(name, photo):
    net = _model(name)
    x = _tensor(photo)
    pair = torch.cat((x, x.flip(-1)))
    both = net.compress(pair)
    for i in range(2):
        alone = net.compress(pair[i : i + 1])
        assert [group[i] for group in both["strings"]] == [group[0] for group in alone["strings"]]
    x_hat = net.decompress(both["strings"], both["shape"])["x_hat"]
    alone_hat = net.decompress(alone["strings"], alone["shape"])["x_hat"]
    torch.testing.assert_close(x_hat[1:], alone_hat, rtol=0, atol=1e-5)  # g_s batched or not


@pytest.mark.parametrize("name", ["fast", "fast-gaussian"])
def test_fast_skips_zero_channels_exactly(name, photo):
    net = _model(name, seed=4)
    zero = [0, 3, 4, 5, 11, 17, 23]
    with torch.no_grad():
        net.g_a[-1].weight[zero] = 0
        net.g_a[-1].bias[zero] = 0
    x = _tensor(photo)
    skipped, full = net.compress(x), net.compress(x, skip_zero_channels=False)
    assert skipped["strings"][2] == full["strings"][2]  # same z
    mask = np.unpackbits(np.frombuffer(skipped["strings"][3][0], dtype=np.uint8))[:M]
    assert np.flatnonzero(mask == 0).tolist() == zero
    assert torch.nonzero(~net.coded_channels(skipped["strings"])).flatten().tolist() == zero
    assert full["strings"][3] == [b"\xff\xff\xff"] and bool(net.coded_channels(full["strings"]).all())
    with pytest.raises(LictutorError, match="no channel mask for image 1"):
        net.coded_channels(skipped["strings"], index=1)
    coded = lambda c: len(c["strings"][0][0]) + len(c["strings"][1][0])  # noqa: E731
    assert coded(skipped) <= coded(full)
    x_skip, y_skip = _decoded_y_hat(net, skipped["strings"], skipped["shape"])
    x_full, y_full = _decoded_y_hat(net, full["strings"], full["shape"])
    assert torch.equal(y_skip, y_full) and torch.equal(x_skip, x_full)
    assert y_skip[:, zero].count_nonzero() == 0

    # Where the model expects bits in those channels, skipping saves them.
    with torch.no_grad():
        net.entropy_parameters_anchor[-1].bias[zero] += 5  # the anchors' scales
    skipped = net.compress(x)
    assert coded(skipped) < coded(net.compress(x, skip_zero_channels=False))

    # Neither the coder nor the context touches a skipped channel: poison its context taps.
    with torch.no_grad():
        net.context_prediction.weight[:, zero] = float("nan")
    again = net.compress(x)
    assert again["strings"] == skipped["strings"]
    assert torch.equal(net.decompress(again["strings"], again["shape"])["x_hat"], x_skip)


def test_fast_all_channels_zero(photo):
    net = _model("fast")
    with torch.no_grad():
        net.g_a[-1].weight.zero_()
        net.g_a[-1].bias.zero_()
    c = net.compress(_tensor(photo))
    assert c["strings"][0] == c["strings"][1] == [b""] and c["strings"][3] == [bytes(3)]
    x_hat, y_hat = _decoded_y_hat(net, c["strings"], c["shape"])
    assert y_hat.count_nonzero() == 0
    with pytest.raises(LictutorError, match="damaged"):
        net.decompress([[b"x"], *c["strings"][1:]], c["shape"])


# -- damaged strings and files ------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_damaged_strings_raise(name, photo):
    net = _model(name)
    c = net.compress(_tensor(photo))
    strings, shape = c["strings"], c["shape"]
    for g in (0, 1):
        s = strings[g][0]
        for bad in (b"", s[: len(s) // 2], s[:-1], bytes([s[0] ^ 0x10]) + s[1:]):
            damaged = [list(group) for group in strings]
            damaged[g] = [bad]
            with pytest.raises(LictutorError, match="damaged"):
                net.decompress(damaged, shape)
    with pytest.raises(LictutorError, match="strings must be"):
        net.decompress(strings[:2], shape)
    with pytest.raises(LictutorError, match="one string per image"):
        net.decompress([strings[0] * 2, *strings[1:]], shape)
    if name != "checkerboard":
        for bad in (b"", b"\xff\xff", b"\xff\xff\xff\x00", b"\xff\xff\xfe"):
            with pytest.raises(LictutorError, match="damaged"):
                net.decompress([*strings[:3], [bad]], shape)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_damaged_files_raise(name, photo):
    net = _model(name)
    name = VARIANTS[name][0]
    img = photo[:100, :90]  # padded to 128×128
    blob = compress_image(net, img, name)
    good = decompress_image(net, blob, name)
    assert good.shape == img.shape
    assert len(bitstream.unpack(blob).strings) == (3 if name == "checkerboard" else 4)
    rng = random.Random(7)
    cases = [blob[:n] for n in (0, 10, len(blob) // 2, len(blob) - 1)]
    for _ in range(20):
        b = bytearray(blob)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        cases.append(bytes(b))
    for g in range(len(bitstream.unpack(blob).strings)):  # CRC fixed: the decoder must object
        p = bitstream.unpack(blob)
        s = p.strings[g][0]
        p.strings[g] = [s[:-2] if g != 3 else s + b"\x00"]
        cases.append(bitstream.pack(p))
    for bad in cases:
        with pytest.raises(LictutorError):
            decompress_image(net, bad, name)
    assert (decompress_image(net, blob, name) == good).all()
