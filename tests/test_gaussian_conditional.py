"""lictutor.entropy.GaussianConditional vs compressai's, on identical inputs."""

import compressai.entropy_models as em
import compressai.models.base as cbase
import compressai.models.utils as cutils
import pytest
import torch

from lictutor import LictutorError
from lictutor.entropy import GaussianConditional, get_scale_table


@pytest.fixture(scope="module")
def updated_pair():
    """Both models with the default scale table and built CDF tables."""
    ref, ours = em.GaussianConditional(None), GaussianConditional(None)
    ref.update_scale_table(cbase.get_scale_table())
    ours.update_scale_table(get_scale_table())
    return ref, ours


def _data(seed=0, shape=(2, 4, 6, 7)):
    g = torch.Generator().manual_seed(seed)
    y = 8 * torch.randn(shape, generator=g)
    scales = torch.exp(torch.randn(shape, generator=g) * 2)  # ~0.02 ... 50: below the bound too
    means = 3 * torch.randn(shape, generator=g)
    return y, scales, means


def _reference_likelihood(ref, values, scales, means):
    return ref.likelihood_lower_bound(ref._likelihood(values, scales, means))


def test_scale_table_matches_compressai():
    assert torch.equal(get_scale_table(), cbase.get_scale_table())
    assert torch.equal(get_scale_table(0.2, 20, 10), cbase.get_scale_table(0.2, 20, 10))


def test_state_dict_keys_and_values_match():
    for table in (None, [0.11, 0.5, 2.0]):
        ref, ours = em.GaussianConditional(table), GaussianConditional(table)
        assert list(ours.state_dict()) == list(ref.state_dict())
        for k, v in ref.state_dict().items():
            assert torch.equal(ours.state_dict()[k], v), k


def test_tables_identical(updated_pair):
    ref, ours = updated_pair
    assert torch.equal(ours.scale_table, ref.scale_table)
    assert torch.equal(ours._quantized_cdf, ref._quantized_cdf)
    assert torch.equal(ours._offset, ref._offset)
    assert torch.equal(ours._cdf_length, ref._cdf_length)
    assert not ours.tables_stale()
    assert ours.update() is False  # tables exist, not forced
    assert ours.update_scale_table([1.0, 2.0]) is False  # CompressAI's meaning: no-op
    assert torch.equal(ours.scale_table, ref.scale_table)


def test_state_dict_loads_both_ways(updated_pair):
    ref, ours = updated_pair
    fresh = GaussianConditional(None)  # empty buffers: resized on load
    fresh.load_state_dict(ref.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert not fresh.tables_stale()  # loaded tables are trusted, not rebuilt
    fresh.load_state_dict(ref.state_dict(), strict=True)  # reloading works too

    # CompressAI's own module does not resize its buffers; its models do it first with
    # update_registered_buffers (as CompressionModel.load_state_dict does).
    back = em.GaussianConditional(None)
    names = ["_quantized_cdf", "_offset", "_cdf_length", "scale_table"]
    prefixed = {"." + k: v for k, v in ours.state_dict().items()}
    cutils.update_registered_buffers(back, "", names, prefixed)
    back.load_state_dict(ours.state_dict(), strict=True)
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


@pytest.mark.parametrize("with_means", [False, True])
def test_eval_forward_matches_compressai(updated_pair, with_means):
    ref, ours = updated_pair
    y, scales, means = _data()
    means = means if with_means else None
    ref_out, ref_lik = ref(y, scales, means, training=False)
    out, lik = ours(y, scales, means, training=False)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(lik, ref_lik, rtol=0, atol=1e-5)
    centered = out if means is None else out - means
    torch.testing.assert_close(centered, torch.round(centered), rtol=0, atol=1e-4)


def test_train_likelihood_matches_compressai(updated_pair):
    ref, ours = updated_pair
    y, scales, means = _data(1)
    noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
    torch.testing.assert_close(
        ours.likelihood(noisy, scales, means),
        _reference_likelihood(ref, noisy, scales, means),
        rtol=0,
        atol=1e-5,
    )
    # Same seed, same noise (drawn on the input as it comes, like CompressAI).
    torch.manual_seed(5)
    ref_out, ref_lik = ref(y, scales, means, training=True)
    torch.manual_seed(5)
    out, lik = ours(y, scales, means, training=True)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(lik, ref_lik, rtol=0, atol=1e-5)


def test_likelihood_gradients_match_compressai(updated_pair):
    ref, ours = updated_pair
    y, scales, means = _data(2, shape=(1, 3, 5, 5))
    grads = []
    for fn in (lambda *a: _reference_likelihood(ref, *a), ours.likelihood):
        v, s = y.clone().requires_grad_(), scales.clone().requires_grad_()
        torch.log2(fn(v, s, means)).sum().backward()
        grads.append((v.grad, s.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_training_modes():
    gc = GaussianConditional(None)
    y, scales, means = _data(3)
    y.requires_grad_()
    out, lik = gc(y, scales, means, training=True, mode="ste")
    torch.testing.assert_close(out, torch.round(y - means) + means)
    out.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))  # identity gradient
    torch.testing.assert_close(lik, gc.likelihood(out, scales, means))

    torch.manual_seed(0)
    out, lik = gc(y, scales, means, training=True, mode="mixed")
    torch.manual_seed(0)
    noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
    torch.testing.assert_close(out, torch.round(y - means) + means)
    torch.testing.assert_close(lik, gc.likelihood(noisy, scales, means))

    out, _ = gc(y, scales, means, training=False, mode="ste")  # mode ignored in eval
    torch.testing.assert_close(out, torch.round(y - means) + means)
    with pytest.raises(LictutorError):
        gc(y, scales, means, training=True, mode="bogus")


def test_scale_bound_applied():
    gc = GaussianConditional(None)
    assert gc.scale_bound.item() == pytest.approx(0.11)
    y = torch.tensor([[0.0, 1.0, 3.0]])
    tiny = gc.likelihood(y, torch.full_like(y, 1e-4))
    at_bound = gc.likelihood(y, torch.full_like(y, 0.11))
    assert torch.equal(tiny, at_bound)
    assert torch.equal(gc.likelihood(y, torch.full_like(y, -3.0)), at_bound)
    assert tiny[0, 2] == pytest.approx(1e-9)  # likelihood bound: never 0
    # the bound lets gradients push small scales up (LowerBound), not further down
    s = torch.full_like(y, 0.01).requires_grad_()
    (-gc.likelihood(y, s)[0, 1]).backward()
    assert s.grad[0, 1] < 0

    other = GaussianConditional([0.5, 1.0], scale_bound=None)  # bound = first table scale
    assert other.scale_bound.item() == 0.5
    assert torch.equal(
        other.likelihood(y, torch.full_like(y, 0.2)), other.likelihood(y, torch.full_like(y, 0.5))
    )


def test_build_indexes_match_compressai(updated_pair):
    ref, ours = updated_pair
    _, scales, _ = _data(4)
    table = ref.scale_table
    special = torch.cat([table, table * (1 + 1e-6), torch.tensor([0.0, -1.0, 1e-3, 1e4, 256.0])])
    for s in (scales, special.reshape(1, 1, -1)):
        idx = ours.build_indexes(s)
        assert idx.dtype == torch.int32 and idx.shape == s.shape
        assert torch.equal(idx, ref.build_indexes(s))


@pytest.mark.parametrize("with_means", [False, True])
def test_compress_identical_bytes_and_round_trip(updated_pair, with_means):
    ref, ours = updated_pair
    y, scales, means = _data(5)
    means = means if with_means else None
    y[0, 0, 0, 0] = 900.0  # far outside every table: escape-coded
    y[1, 3, 5, 6] = -2500.0
    indexes = ours.build_indexes(scales)
    strings = ours.compress(y, indexes, means)
    assert strings == ref.compress(y, indexes, means)
    decoded = ours.decompress(strings, indexes, means)
    expected = ref.decompress(strings, indexes, means=means)
    assert torch.equal(decoded, expected)
    out, _ = ours(y, scales, means, training=False)
    assert torch.equal(decoded, out)  # exactly what the decoder sees in evaluation


def test_tables_built_on_demand_and_rebuilt_when_stale():
    gc = GaussianConditional([0.2, 1.0, 5.0])
    assert gc.tables_stale()
    y, scales, _ = _data(6, shape=(1, 2, 3, 3))
    idx = gc.build_indexes(scales)
    strings = gc.compress(y, idx)  # builds the tables itself
    assert not gc.tables_stale()
    gc.scale_table = torch.tensor([0.3, 3.0, 30.0])  # changed table: stale
    assert gc.tables_stale()
    idx = gc.build_indexes(scales)
    strings = gc.compress(y, idx)
    assert torch.equal(gc.decompress(strings, idx), torch.round(y))
    ref = em.GaussianConditional([0.3, 3.0, 30.0])
    ref.update()
    assert torch.equal(gc._quantized_cdf, ref._quantized_cdf)


def test_bad_inputs_raise_lictutor_error(updated_pair):
    _, ours = updated_pair
    y, scales, means = _data(7, shape=(1, 2, 3, 3))
    nan_scales = scales.clone()
    nan_scales[0, 1, 2, 2] = float("nan")
    nan_means = means.clone()
    nan_means[0, 0, 0, 0] = float("nan")
    idx = ours.build_indexes(scales)
    bad_calls = [
        lambda: ours(y, nan_scales),
        lambda: ours.likelihood(y, nan_scales),
        lambda: ours(y, scales, nan_means),
        lambda: ours.build_indexes(nan_scales),
        lambda: ours(y, scales[:, :1, :2]),  # shape mismatch
        lambda: ours(y, scales, means[..., :2]),
        lambda: ours.likelihood(y[:, :1], scales),  # scales would enlarge the output
        lambda: ours.compress(y, idx[..., :2]),
        lambda: ours.compress(y, idx, means[..., :2]),
        lambda: ours.compress(y, idx.float()),
        lambda: ours.compress(y, idx + 64),  # beyond the table
        lambda: ours.compress(y * float("nan"), idx),
        lambda: ours.decompress([b"x"], idx, torch.float),
        lambda: ours.decompress([b"x", b"y"], idx),
        lambda: ours.decompress([b"\x00\x01"], idx),
        lambda: ours.decompress(ours.compress(y, idx), idx, means[..., :2]),
        lambda: GaussianConditional(None).update(),
        lambda: GaussianConditional(None).build_indexes(scales),
        lambda: GaussianConditional([]),
        lambda: GaussianConditional([1.0, 0.5]),
        lambda: GaussianConditional([0.0, 1.0]),
        lambda: GaussianConditional([0.1, float("nan")]),
        lambda: GaussianConditional(None, scale_bound=0.0),
        lambda: GaussianConditional(None, scale_bound=None),
    ]
    for i, call in enumerate(bad_calls):
        with pytest.raises(LictutorError):
            call()
            pytest.fail(f"bad call {i} did not raise")


def test_loading_an_empty_scale_table_keeps_the_default():
    # CompressAI models saved before update() store an empty scale_table.
    ours = GaussianConditional(get_scale_table())
    state = {k: v for k, v in ours.state_dict().items()}
    state["scale_table"] = torch.Tensor()
    ours.load_state_dict(state)
    torch.testing.assert_close(ours.scale_table, get_scale_table())
    bare = GaussianConditional(None)  # built without a table: nothing to restore
    bare.load_state_dict(state)
    assert bare.scale_table.numel() == 0
