"""lictutor.prune: removable decoder blocks, the ablation ranking, pruned models by name."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from lictutor import data, models
from lictutor.errors import LictutorError
from lictutor.evaluate import compress_image, decompress_image
from lictutor.layers import GDN, DeformableResidualBlock
from lictutor.models import FastLIC
from lictutor.prune import rank_decoder_blocks, rd_loss, removable_blocks, remove_blocks
from lictutor.checkpoint import load_checkpoint, save_checkpoint
from lictutor.config import TrainConfig
from lictutor.profile import parameter_counts
from lictutor.train import train

N, M = 16, 24
FAST_BLOCKS = ["g_s.1", "g_s.2", "g_s.4", "g_s.6"]  # three inverse GDNs and the DRM


@pytest.fixture(scope="module")
def photo():
    return data.builtin_photos()["astronaut"][40:168, 120:248]  # 128×128


def _model(seed=0, **kwargs):
    """A tiny FastLIC whose latents span a few integers (so images cost bits)."""
    torch.manual_seed(seed)
    net = FastLIC(N, M, components=1, **kwargs)
    with torch.no_grad():
        net.g_a[-1].weight.mul_(20)
    return net.eval()


def _same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_removable_blocks_keep_shapes_and_have_weights():
    net = _model().train()
    assert removable_blocks(net) == FAST_BLOCKS
    assert removable_blocks(net, ("g_a",)) == ["g_a.1", "g_a.3", "g_a.5", "g_a.6"]
    assert net.training  # mode restored
    assert removable_blocks(models.create("factorized", N=8, M=12)) == ["g_s.1", "g_s.3", "g_s.5"]
    assert removable_blocks(models.create("mean-scale", N=8, M=12), "h_s") == []  # ReLUs only
    with pytest.raises(LictutorError, match="no module 'nope'"):
        removable_blocks(net, ("nope",))
    with pytest.raises(LictutorError, match="not an nn.Sequential"):
        removable_blocks(net, ("entropy_bottleneck",))


def test_remove_blocks_returns_a_copy_whose_state_dict_is_a_subset():
    net = _model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pruned = remove_blocks(net, ["g_s.2", "g_s.1"])
    _same_state(net.state_dict(), before)  # the model is left as it was
    assert isinstance(net.g_s[2], DeformableResidualBlock) and net.removed == ()
    assert pruned.removed == ("g_s.1", "g_s.2")

    counts, full_counts = parameter_counts(pruned), parameter_counts(net)
    removed_params = sum(p.numel() for i in (1, 2) for p in net.g_s[i].parameters())
    assert counts["decoder"] == full_counts["decoder"] - removed_params
    assert counts["encoder"] == full_counts["encoder"]
    assert isinstance(pruned.g_s[1], nn.Identity) and isinstance(pruned.g_s[2], nn.Identity)
    kept = {k: v for k, v in before.items() if not k.startswith(("g_s.1.", "g_s.2."))}
    assert len(kept) < len(before)
    _same_state(pruned.state_dict(), kept)
    # the same model built by name loads it strictly, and its random init is the full model's
    torch.manual_seed(0)
    by_name = FastLIC(N, M, components=1, removed=("g_s.2", "g_s.1"))
    torch.manual_seed(0)
    full = FastLIC(N, M, components=1)
    _same_state(by_name.state_dict(), {k: v for k, v in full.state_dict().items() if k in kept})
    by_name.load_state_dict(pruned.state_dict())
    assert FastLIC.from_state_dict(pruned.state_dict()).removed == ("g_s.1", "g_s.2")
    y = torch.randn(1, M, 2, 2)
    with torch.no_grad():  # g_s without the blocks is the composition of the others
        expected = y
        for i, block in enumerate(net.g_s):
            if i not in (1, 2):
                expected = block(expected)
        torch.testing.assert_close(pruned.g_s(y), expected)


@pytest.mark.parametrize(
    "names, message",
    [
        (["g_s.0"], "cannot remove g_s.0"),  # a deconvolution: changes the shape
        (["g_s.3", "g_s.2"], "cannot remove g_s.3"),
        (["entropy_bottleneck.x"], "not an nn.Sequential"),
        ("g_s.2", "sequence of module names"),
        ([4], "sequence of module names"),
    ],
)
def test_bad_blocks(names, message):
    with pytest.raises(LictutorError, match=message):
        remove_blocks(_model(), names)
    with pytest.raises(LictutorError, match=message):
        models.create("fast", N=N, M=M, removed=names)


def test_removed_twice_is_an_error():
    pruned = remove_blocks(_model(), ["g_s.2"])
    assert removable_blocks(pruned) == ["g_s.1", "g_s.4", "g_s.6"]
    with pytest.raises(LictutorError, match="cannot remove g_s.2"):
        remove_blocks(pruned, ["g_s.2"])
    assert remove_blocks(pruned, ["g_s.6"]).removed == ("g_s.2", "g_s.6")


def test_rd_loss_takes_arrays_pairs_and_tensors(photo):
    net = _model()
    result = rd_loss(net, [photo], 0.01)
    assert result["loss"] == pytest.approx(0.01 * 255**2 * result["mse"] + result["bpp"])
    assert result["bpp"] > 0 and result["psnr"] == pytest.approx(-10 * np.log10(result["mse"]))
    assert rd_loss(net, [("astronaut", photo)], 0.01) == pytest.approx(result)
    assert rd_loss(net, data.to_tensor(photo)[None], 0.01) == pytest.approx(result)
    odd = photo[:100, :90]  # padded for the model, measured on the original pixels
    assert rd_loss(net, [odd], 0.01)["bpp"] > 0
    two = rd_loss(net, [photo, odd], 0.01)
    assert two["loss"] == pytest.approx((result["loss"] + rd_loss(net, [odd], 0.01)["loss"]) / 2)
    with pytest.raises(LictutorError, match="images"):
        rd_loss(net, [torch.zeros(1, 8, 8)], 0.01)


def test_rank_decoder_blocks_ablates_each_block(photo):
    net = _model().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ranking = rank_decoder_blocks(net, [photo], 0.01)
    _same_state(net.state_dict(), before)
    assert net.training and isinstance(net.g_s[2], DeformableResidualBlock) and isinstance(net.g_s[1], GDN)
    assert sorted(r["block"] for r in ranking) == FAST_BLOCKS
    deltas = [r["delta"] for r in ranking]
    assert deltas == sorted(deltas)
    base = rd_loss(net, [photo], 0.01)
    for row in ranking:
        alone = rd_loss(remove_blocks(net, [row["block"]]), [photo], 0.01)
        assert row["loss"] == pytest.approx(alone["loss"], rel=1e-6)
        assert row["delta"] == pytest.approx(alone["loss"] - base["loss"], rel=1e-6, abs=1e-9)
        assert row["bpp"] == pytest.approx(base["bpp"])  # g_s does not change the rate
        block = dict(net.named_modules())[row["block"]]
        assert row["params"] == sum(p.numel() for p in block.parameters()) > 0
    (only,) = rank_decoder_blocks(net, [photo], 0.01, blocks=["g_s.2"])
    assert only["block"] == "g_s.2" and only["loss"] == pytest.approx(
        next(r for r in ranking if r["block"] == "g_s.2")["loss"])


def test_pruned_model_codes_its_own_files(photo, tmp_path):
    net = _model()
    pruned = remove_blocks(net, ["g_s.2"])
    full_file = compress_image(net, photo, "fast")
    pruned_file = compress_image(pruned, photo, "fast")
    rec = decompress_image(pruned, pruned_file, "fast")
    assert rec.shape == photo.shape
    with torch.no_grad():  # what the pruned decoder makes of round(y)
        x_hat = pruned(data.to_tensor(photo)[None])["x_hat"]
    assert np.abs(rec.astype(int) - data.to_uint8(x_hat).astype(int)).max() <= 1
    # the decoder hash tells the two apart: neither decodes the other's file
    with pytest.raises(LictutorError):
        decompress_image(net, pruned_file, "fast")
    with pytest.raises(LictutorError):
        decompress_image(pruned, full_file, "fast")
    # saved and loaded by name: the checkpoint's model_args name the removed blocks
    args = {"N": N, "M": M, "components": 1, "removed": list(pruned.removed)}
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, pruned, TrainConfig(model="fast", model_args=args, crop=64))
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["model_args"]["removed"] == ["g_s.2"] and loaded.removed == ("g_s.2",)
    np.testing.assert_array_equal(decompress_image(loaded, pruned_file, "fast"), rec)
    assert compress_image(loaded, photo, "fast") == pruned_file


def test_train_a_pruned_student_from_its_weights():
    student = _model()
    pruned = remove_blocks(student, ["g_s.2"])
    config = TrainConfig(model="fast", model_args={"N": N, "M": M, "components": 1, "removed": ["g_s.2"]},
                         steps=1, batch=1, crop=64, warmup=0)
    assert config.key() != TrainConfig(model="fast", model_args={"N": N, "M": M, "components": 1},
                                       steps=1, batch=1, crop=64, warmup=0).key()
    model, _ = train(config, init_from=pruned.state_dict(), cache=False, progress=False)
    assert isinstance(model.g_s[2], nn.Identity) and model.removed == ("g_s.2",)
    with pytest.raises(LictutorError, match=r"unexpected \(g_s.2"):  # the unpruned weights: prune them first
        train(config, init_from=student.state_dict(), cache=False, progress=False)
