"""Where to run, and how to make runs repeatable."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["pick_device", "seed_everything", "deterministic"]


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA if available, then Apple's MPS, else the CPU; ``prefer`` forces one by name."""
    if prefer is not None:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def deterministic(enabled: bool = True) -> None:
    """Ask PyTorch for bit-reproducible kernels (slower on GPU; errors on ops that have none).

    Entropy coding needs the encoder and decoder to compute *identical* probabilities, so
    reproducibility matters more here than in most of deep learning.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
