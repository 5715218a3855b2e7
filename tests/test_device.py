import torch

from lictutor.device import deterministic, pick_device, seed_everything


def test_pick_device_cpu_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device().type == "cpu"
    assert pick_device("cpu") == torch.device("cpu")


def test_pick_device_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device().type == "cuda"


def test_seed_everything_repeats():
    seed_everything(3)
    a = torch.randn(5)
    seed_everything(3)
    assert torch.equal(a, torch.randn(5))


def test_deterministic_switch():
    try:
        deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
