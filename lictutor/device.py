"""Where to run, and how to make runs repeatable."""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch
from torch import Tensor

from lictutor.errors import LictutorWarning

__all__ = ["pick_device", "float64", "seed_everything", "deterministic"]

#: set before Python starts, it makes PyTorch run the operations Apple's mps lacks on the CPU
MPS_FALLBACK = "PYTORCH_ENABLE_MPS_FALLBACK"


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA if available, then Apple's MPS, else the CPU; ``prefer`` forces one by name.

    On ``mps``, lictutor computes in float64 (which mps lacks) on the CPU (:func:`float64`);
    other missing operations (torchvision's deformable convolution) stop with PyTorch's error
    unless :data:`MPS_FALLBACK` ``=1`` was set before Python started, which a
    :class:`LictutorWarning` says in one line when it was not.
    """
    if prefer is not None:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        if os.environ.get(MPS_FALLBACK) != "1":
            warnings.warn(f"using Apple's mps; set {MPS_FALLBACK}=1 before starting Python so that operations "
                          "it lacks run on the CPU (or pass device='cpu')", LictutorWarning, stacklevel=2)
        return torch.device("mps")
    return torch.device("cpu")


def float64(t: Tensor) -> Tensor:
    """``t`` in float64: on its device, or on the CPU where the device has none (mps)."""
    return (t.cpu() if t.device.type == "mps" else t).double()


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
