import subprocess
import sys

import pytest
import torch

from lictutor import LictutorError
from lictutor.budget import BUDGETS, budget_name, get_budget


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("LICTUTOR_BUDGET", raising=False)
    monkeypatch.delenv("CI", raising=False)
    return monkeypatch


def test_explicit_budget_wins_over_ci(clean_env):
    clean_env.setenv("CI", "true")
    clean_env.setenv("LICTUTOR_BUDGET", "cpu")
    assert budget_name() == "cpu"
    assert get_budget().name == "cpu"


def test_ci_means_smoke(clean_env):
    clean_env.setenv("CI", "true")
    assert get_budget().name == "smoke"


def test_default_follows_cuda_and_full_is_only_chosen(clean_env):
    clean_env.setattr(torch.cuda, "is_available", lambda: True)
    assert budget_name() == "gpu"
    clean_env.setattr(torch.cuda, "is_available", lambda: False)
    assert budget_name() == "cpu"
    clean_env.setattr(torch.backends.mps, "is_available", lambda: True)  # Apple silicon
    assert budget_name() == "cpu"
    for name in ("full", "FULL", " gpu "):
        clean_env.setenv("LICTUTOR_BUDGET", name)
        assert budget_name() == name.strip().lower() and get_budget().name == name.strip().lower()


def test_unknown_budget_is_a_clear_error(clean_env):
    clean_env.setenv("LICTUTOR_BUDGET", "huge")
    with pytest.raises(LictutorError, match="smoke, cpu, gpu, full"):
        get_budget()
    with pytest.raises(LictutorError):
        get_budget("tiny")


def test_budgets_grow_from_smoke_to_full():
    smoke, cpu, gpu, full = (BUDGETS[k] for k in ("smoke", "cpu", "gpu", "full"))
    for knob in ("steps", "crop", "N", "M", "codec_points"):
        assert getattr(smoke, knob) < getattr(cpu, knob) <= getattr(gpu, knob) <= getattr(full, knob), knob
    for b in BUDGETS.values():
        assert b.crop % 64 == 0, "hyperprior models need crops divisible by 64"
        assert list(b.lmbdas) == sorted(b.lmbdas)
    assert len(BUDGETS["cpu"].lmbdas) >= 4


def test_with_and_describe():
    b = get_budget("smoke").with_(steps=7)
    assert b.steps == 7 and get_budget("smoke").steps != 7
    assert "steps: 7" in b.describe()


def test_import_is_light():
    """`import lictutor` must not pull in torch (it takes seconds)."""
    code = "import sys, lictutor, lictutor.budget; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
