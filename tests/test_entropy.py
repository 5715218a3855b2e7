"""lictutor.entropy.EntropyBottleneck vs compressai's, on identical parameters."""

import copy

import compressai.entropy_models as em
import pytest
import torch

from lictutor import models
from lictutor.entropy import EntropyBottleneck, update_stale_tables
from lictutor.errors import LictutorError


C = 6


def _randomized_reference(seed=0, channels=C):
    """A CompressAI EntropyBottleneck with a non-trivial random density."""
    torch.manual_seed(seed)
    ref = em.EntropyBottleneck(channels)
    with torch.no_grad():
        for p in ref.matrices:
            p.add_(0.3 * torch.randn_like(p))
        for p in ref.biases:
            p.copy_(torch.randn_like(p))
        for p in ref.factors:
            p.copy_(0.5 * torch.randn_like(p))
        ref._update_quantiles()  # realistic (non-integer) quantiles and medians
    return ref


def _pair(seed=0):
    ref = _randomized_reference(seed)
    ours = EntropyBottleneck(C)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _latent(seed=1):
    g = torch.Generator().manual_seed(seed)
    y = 6 * torch.randn(2, C, 8, 10, generator=g)
    y[0, 0, 0, 0] = 500.0  # far outside the coded range: escape-coded
    y[1, 2, 3, 4] = -700.0
    return y


def test_state_dict_keys_and_deterministic_init_match():
    ref, ours = em.EntropyBottleneck(5), EntropyBottleneck(5)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        if not k.startswith("biases"):  # biases are random at init
            assert torch.equal(ours.state_dict()[k], v), k
    ref.load_state_dict(ours.state_dict(), strict=True)  # and back


def _reference_likelihood(ref, y_tilde):
    """CompressAI's likelihood of a given (e.g. noisy) latent, through its _likelihood."""
    per_channel = y_tilde.transpose(0, 1)
    lik, _, _ = ref._likelihood(per_channel.reshape(ref.channels, 1, -1))
    lik = ref.likelihood_lower_bound(lik)
    return lik.reshape(per_channel.shape).transpose(0, 1)


def test_likelihoods_eval_and_train_match():
    ref, ours = _pair()
    y = _latent()
    ref.eval(), ours.eval()
    yh_ref, l_ref = ref(y)
    yh_our, l_our = ours(y)
    assert torch.equal(yh_our, yh_ref)
    torch.testing.assert_close(l_our, l_ref, atol=1e-5, rtol=1e-5)
    assert (l_our >= 1e-9).all() and (l_our <= 1).all()

    torch.manual_seed(7)
    y_tilde, l_our = ours(y, training=True)
    noise = y_tilde - y
    assert noise.abs().max() <= 0.5 and noise.abs().min() > 0
    torch.manual_seed(7)
    assert torch.equal(y_tilde, y + torch.empty_like(y).uniform_(-0.5, 0.5))
    torch.testing.assert_close(l_our, _reference_likelihood(ref, y_tilde), atol=1e-5, rtol=1e-5)


def test_rate_gradients_match():
    ref, ours = _pair()
    y = _latent()
    torch.manual_seed(3)
    noise = torch.empty_like(y).uniform_(-0.5, 0.5)
    grads = []
    for model in (ref, ours):
        model.zero_grad()
        x = y.clone().requires_grad_(True)
        if model is ours:
            torch.manual_seed(3)  # forward draws the same noise
            lik = ours(x, training=True)[1]
        else:
            lik = _reference_likelihood(ref, x + noise)
        (-torch.log2(lik).sum()).backward()
        grads.append((x.grad, [p.grad for p in model.matrices], [p.grad for p in model.biases]))
    (gx_r, gm_r, gb_r), (gx_o, gm_o, gb_o) = grads
    torch.testing.assert_close(gx_o, gx_r, atol=1e-4, rtol=1e-4)
    for a, b in zip(gm_o + gb_o, gm_r + gb_r):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)


def test_aux_loss_and_its_gradient_match():
    ref, ours = _pair()
    with torch.no_grad():
        for m in (ref, ours):
            m.quantiles.add_(torch.linspace(-1, 1, C * 3).reshape(C, 1, 3))
    l_ref, l_our = ref.loss(), ours.loss()
    torch.testing.assert_close(l_our, l_ref, atol=1e-5, rtol=1e-6)
    assert l_our.item() > 0.1
    l_ref.backward(), l_our.backward()
    torch.testing.assert_close(ours.quantiles.grad, ref.quantiles.grad)
    assert ours.matrices[0].grad is None  # the aux loss moves only the quantiles


def test_sign_trick_is_accurate_in_the_upper_tail():
    eb = EntropyBottleneck(1, init_scale=1.0)
    x = torch.tensor([[[25.0]]])  # deep in the upper tail
    plain, lower, upper = eb._likelihood(x, sign_trick=False)
    stable, _, _ = eb._likelihood(x)
    exact = torch.sigmoid(-lower.double()) - torch.sigmoid(-upper.double())
    assert plain.item() == 0.0  # 1 - 1 in float32
    assert 0 < stable.item()
    torch.testing.assert_close(stable.double(), exact, rtol=1e-4, atol=0)


def test_update_tables_and_bytes_identical():
    ref, ours = _pair()
    assert ref.update() and ours.update()
    assert not ours.update()  # CompressAI semantics: no-op without force
    for name in ("_quantized_cdf", "_offset", "_cdf_length"):
        assert torch.equal(getattr(ours, name), getattr(ref, name)), name
    assert ours._quantized_cdf.shape[0] == C and ours._quantized_cdf.dtype == torch.int32

    y = _latent()
    s_ref, s_our = ref.compress(y), ours.compress(y)
    assert s_our == s_ref and len(s_our) == 2
    y_hat = ours.decompress(s_our, y.shape[2:])
    assert torch.equal(y_hat, ours(y, training=False)[0])
    assert torch.equal(ref.decompress(s_our, y.shape[2:]), y_hat)


def test_update_quantiles_matches():
    torch.manual_seed(5)
    ref = em.EntropyBottleneck(3)
    ours = EntropyBottleneck(3)
    ours.load_state_dict(ref.state_dict())
    ref.update(update_quantiles=True)
    ours.update(update_quantiles=True)
    assert torch.equal(ours.quantiles, ref.quantiles)
    assert torch.equal(ours._quantized_cdf, ref._quantized_cdf)


def test_load_updated_state_dict_resizes_buffers_and_trusts_tables():
    ref = _randomized_reference(2)
    ref.update()
    ours = EntropyBottleneck(C)
    ours.load_state_dict(ref.state_dict(), strict=True)  # CompressAI's own EB can't do this
    assert torch.equal(ours._quantized_cdf, ref._quantized_cdf)
    assert not ours.tables_stale()
    # tables loaded with the parameters are used as they are, even if hand-edited
    sd = ref.state_dict()
    sd["_quantized_cdf"] = sd["_quantized_cdf"].clone()
    ours.load_state_dict(sd)
    assert not ours.tables_stale()
    # re-loading different-sized tables into an updated model also works
    other = _randomized_reference(3)
    other.update()
    ours.load_state_dict(other.state_dict())
    assert torch.equal(ours._quantized_cdf, other._quantized_cdf)
    # a state dict without tables (e.g. saved before update) leaves them stale
    fresh = em.EntropyBottleneck(C)
    ours.load_state_dict(fresh.state_dict())
    assert ours.tables_stale()


def test_compress_updates_stale_tables_by_itself():
    ref, ours = _pair()
    y = _latent()
    strings = ours.compress(y)  # no update() call
    ref.update()
    assert strings == ref.compress(y)

    # a training step changes the density: tables are stale, compress rebuilds them
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    _, lik = ours(y, training=True)
    (-torch.log2(lik).sum() + ours.loss()).backward()
    opt.step()
    assert ours.tables_stale()
    assert not ours.update()  # update(force=False) keeps CompressAI's meaning...
    strings = ours.compress(y)  # ...but compress notices and rebuilds
    assert not ours.tables_stale()
    twin = copy.deepcopy(ours)
    twin.update(force=True)
    assert torch.equal(twin._quantized_cdf, ours._quantized_cdf)
    assert torch.equal(ours.decompress(strings, y.shape[2:]), ours(y, training=False)[0])


def test_bad_inputs_raise_lictutor_error():
    eb = EntropyBottleneck(4)
    with pytest.raises(LictutorError):
        eb(torch.randn(1, 3, 2, 2))
    with pytest.raises(LictutorError):
        eb.compress(torch.randn(1, 3, 2, 2))
    with pytest.raises(LictutorError):
        eb.decompress("not a list", (2, 2))


def test_training_relaxations_ste_and_mixed():
    torch.manual_seed(0)
    eb = EntropyBottleneck(3).train()
    y = (torch.randn(2, 3, 4, 4) * 3).requires_grad_()
    medians = eb.quantiles[:, 0, 1].detach().reshape(1, 3, 1, 1)
    rounded = torch.round(y - medians) + medians
    ste, lik_ste = eb(y, mode="ste")
    torch.testing.assert_close(ste, rounded)
    _, lik_round = eb(y, training=False)
    torch.testing.assert_close(lik_ste, lik_round)  # the rate of the rounded values
    ste.sum().backward()
    torch.testing.assert_close(y.grad, torch.ones_like(y))  # identity gradient
    mixed, lik_mixed = eb(y, mode="mixed")
    torch.testing.assert_close(mixed, rounded)
    assert not torch.allclose(lik_mixed, lik_round)  # noisy values' likelihoods
    with pytest.raises(LictutorError, match="quantization"):
        eb(y, mode="bogus")


def test_likelihood_is_a_density_that_sums_to_one_at_the_integers():
    torch.manual_seed(0)
    eb = EntropyBottleneck(2)
    grid = torch.arange(-300.0, 301.0).reshape(1, 1, -1).expand(1, 2, -1)
    pmf = eb.likelihood(grid)
    torch.testing.assert_close(pmf.sum(-1), torch.ones(1, 2), atol=1e-3, rtol=0)
    fine = torch.linspace(-300, 300, 60001).reshape(1, 1, -1).expand(1, 2, -1)
    area = torch.trapezoid(eb.likelihood(fine), fine, dim=-1)  # a density of y + u
    torch.testing.assert_close(area, torch.ones(1, 2), atol=1e-3, rtol=0)


def test_update_stale_tables_rebuilds_only_what_changed():
    from_scratch = models.create("hyperprior", N=8, M=12)
    assert update_stale_tables(from_scratch)  # never built: both entropy models
    assert not update_stale_tables(from_scratch)
    built = from_scratch.gaussian_conditional._quantized_cdf
    with torch.no_grad():
        from_scratch.entropy_bottleneck.quantiles.add_(0.5)  # as an optimizer step would
    assert from_scratch.entropy_bottleneck.tables_stale() and not from_scratch.gaussian_conditional.tables_stale()
    assert update_stale_tables(from_scratch) and not from_scratch.entropy_bottleneck.tables_stale()
    assert from_scratch.gaussian_conditional._quantized_cdf is built  # not rebuilt
