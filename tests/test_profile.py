"""lictutor.profile: parameter counts by side, MACs, peak memory, coding time, the table."""

import time

import pytest
import torch
import torch.nn as nn
from torchvision.ops import DeformConv2d

from lictutor import models
from lictutor.errors import LictutorError
from lictutor.layers import DeformableResidualBlock
from lictutor.profile import (
    count_macs,
    format_profile_table,
    median_time,
    parameter_counts,
    peak_memory,
    profile_model,
)

SMALL = {"N": 16, "M": 24}


@pytest.mark.parametrize("name", ["factorized", "hyperprior", "mean-scale", "context"])
def test_parameter_counts(name):
    model = models.create(name, **SMALL)
    counts = parameter_counts(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["decoder"] < counts["total"] and counts["encoder"] < counts["total"]

    def size(*names):
        return sum(p.numel() for n, m in model.named_children() if n in names for p in m.parameters())

    assert counts["encoder"] == counts["total"] - size("g_s")  # the sender needs all but g_s
    receiver = size("g_s", "h_s", "entropy_bottleneck", "gaussian_conditional", "context_prediction",
                    "entropy_parameters")
    assert counts["decoder"] == receiver == counts["total"] - size("g_a", "h_a")


def test_macs_of_one_convolution_are_the_analytic_count():
    conv = nn.Conv2d(3, 8, kernel_size=5, stride=2, padding=2)
    x = torch.rand(1, 3, 32, 32)
    assert count_macs(conv, x) == 8 * 3 * 5 * 5 * 16 * 16  # out channels · in · k² · output pixels
    deconv = nn.ConvTranspose2d(8, 3, kernel_size=5, stride=2, padding=2, output_padding=1)
    assert count_macs(deconv, torch.rand(1, 8, 16, 16)) == 8 * 3 * 5 * 5 * 16 * 16  # the same, transposed
    linear = nn.Linear(10, 4)
    assert count_macs(linear, torch.rand(5, 10)) == 5 * 10 * 4


def test_macs_of_a_deformable_convolution_are_its_convolution():
    conv = DeformConv2d(8, 16, kernel_size=3, padding=1, groups=2)
    x, offset = torch.rand(2, 8, 12, 12), torch.rand(2, 18, 12, 12)
    assert count_macs(conv, x, offset) == 2 * 16 * 12 * 12 * 4 * 3 * 3  # batch · out · pixels · in/groups · k²
    block = DeformableResidualBlock(8)  # conv1, offset and the deformable conv2: three 3x3 convolutions
    assert count_macs(block, torch.rand(1, 8, 10, 10)) == (8 + 18 + 8) * 8 * 9 * 100


def test_peak_memory_on_cpu():
    def two_at_once():
        a = torch.ones(1_000_000)  # 4 MB
        b = a + 1  # 4 MB more while a lives
        del a
        return (b * 2).sum()  # a freed: still 8 MB at most

    assert 8e6 <= peak_memory(two_at_once) < 9e6
    with pytest.raises(LictutorError, match="cpu or cuda"):
        peak_memory(two_at_once, device="meta")


def test_profile_model_rows_and_table():
    torch.manual_seed(0)
    rows = [profile_model(models.create(name, **SMALL), 64, 64, repeat=1, name=name)
            for name in ("hyperprior", "context")]
    hyper = rows[0]
    assert hyper["params"] == parameter_counts(models.create("hyperprior", **SMALL))["total"]
    assert hyper["size"] == "64x64" and hyper["device"] == "cpu"
    # the first layer of g_a alone: 16 · 3 · 25 MACs at each of 32 × 32 outputs
    assert hyper["macs_encoder"] > 16 * 3 * 25 * 32 * 32 and hyper["macs_decoder"] > 16 * 3 * 25 * 32 * 32
    # g_s's last layer writes the 3 × 64 × 64 image: at least that much memory
    assert hyper["memory_decoder"] >= 3 * 64 * 64 * 4 and hyper["memory_encoder"] > 0
    assert all(r["encode_s"] > 0 and r["decode_s"] > 0 for r in rows)
    assert rows[1]["params"] > hyper["params"] and rows[1]["macs_decoder"] > hyper["macs_decoder"]

    table = format_profile_table(rows + [{"model": "missing", "size": "64x64"}])
    lines = table.splitlines()
    assert len(lines) == 2 + 3 and len({len(line) for line in lines}) == 1  # aligned
    assert lines[0].split()[:3] == ["model", "size", "params"] and "decode ms" in lines[0]
    assert lines[2].startswith("hyperprior") and lines[4].split()[-1] == "-"
    assert "k" in lines[2].split()[2]  # 82.5k parameters

    with pytest.raises(LictutorError, match="multiple of 64"):
        profile_model(models.create("hyperprior", **SMALL), 32, 64)
    with pytest.raises(LictutorError, match="list of dicts"):
        format_profile_table(hyper)


def test_median_time_is_the_median_of_the_calls():
    durations = iter([0.05, 0.0, 0.02])
    calls = []

    def fn():
        calls.append(1)
        time.sleep(next(durations))

    t = median_time(fn, repeat=3)
    assert len(calls) == 3
    assert 0.02 <= t < 0.045
