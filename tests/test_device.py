"""lictutor.device: the order in which a device is chosen, what seeding covers, and what
deterministic mode switches (PyTorch's own generators and kernels are PyTorch's to test)."""

import os
import random

import numpy as np
import pytest
import torch

from lictutor import LictutorWarning
from lictutor.device import MPS_FALLBACK, deterministic, float64, pick_device, seed_everything


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "cuda"), (False, True, "mps"), (False, False, "cpu"),
])
def test_pick_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setenv(MPS_FALLBACK, "1")
    assert pick_device().type == expected
    assert pick_device("cpu") == torch.device("cpu")  # a named device wins


def test_mps_without_the_cpu_fallback_says_so_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.delenv(MPS_FALLBACK, raising=False)
    with pytest.warns(LictutorWarning, match=f"using Apple's mps; set {MPS_FALLBACK}=1 before starting Python") as w:
        assert pick_device().type == "mps"
    assert "\n" not in str(w[0].message)


def test_float64_stays_on_its_device_except_mps():
    t = torch.ones(3, dtype=torch.float32)
    assert float64(t).dtype == torch.float64 and float64(t).device == t.device
    if torch.backends.mps.is_available():
        assert float64(t.to("mps")).device.type == "cpu"


def test_seed_everything_covers_python_numpy_and_torch():
    def draws():
        return random.random(), np.random.rand(), torch.rand(1).item()

    seed_everything(3)
    first = draws()
    seed_everything(3)
    assert draws() == first
    seed_everything(4)
    assert all(a != b for a, b in zip(draws(), first))


def test_deterministic_sets_every_switch_and_back(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # cuBLAS needs it to be deterministic
    finally:
        deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
