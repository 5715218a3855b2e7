"""Compute budgets: one notebook, four sizes of run.

Every chapter reads its knobs (training steps, crop size, batch, channel widths, λ values,
evaluation images) from the active :class:`Budget`, so the same notebook runs

* ``smoke``: in CI, each chapter in under 2 minutes on 2 CPU cores (checks that it runs);
* ``cpu``: the published outputs, each chapter within about 45 minutes on 2 CPU cores;
* ``gpu``: the papers' widths (N = 128, M = 192) on 256² crops, each chapter within about an
  hour on a Colab-class GPU (an NVIDIA T4, 16 GB) once the previous chapters' models are
  cached. Sized from measured costs (``benchmarks/budget_sizes.py``): a training step of
  8 crops of 256² is 131–171 GMAC (forward and backward, by family) and under 1 GB of
  activations, about 0.10–0.13 s on a T4 at a third of its float32 peak -- an *estimate*
  until measured on one -- so 5,000 steps cost about what 4,000 cost at the cpu budget
  (0.15–0.19 s a step on 2 cores);
* ``full``: paper-scale settings (500,000 steps, 8 λ): days per chapter, chosen explicitly.

The budget is chosen by ``LICTUTOR_BUDGET`` if set (any case); otherwise ``smoke`` when
``CI=true``, ``gpu`` when CUDA is available, and ``cpu`` without it -- also on Apple silicon
(``mps``), whose speed for these models has not been measured: the cpu budget fits any Mac.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

from lictutor.errors import LictutorError

__all__ = ["Budget", "BUDGETS", "get_budget", "budget_name"]


@dataclass(frozen=True)
class Budget:
    """The knobs a chapter may turn. Chapters use the fields they need and ignore the rest."""

    name: str
    steps: int  #: optimizer steps per trained model
    batch: int  #: crops per step
    crop: int  #: side of the square training crops (a multiple of 64)
    N: int  #: channels of the transforms' hidden layers
    M: int  #: channels of the latent y
    lmbdas: tuple[float, ...]  #: rate–distortion trade-offs λ, one model each
    lr: float  #: peak learning rate
    eval_images: int | None  #: how many evaluation images (None: all)
    eval_size: int | None  #: centre-crop side of evaluation images (None: full image)
    codec_points: int  #: quality settings per classical codec
    seeds: int  #: repetitions where a chapter reports mean and spread

    def with_(self, **changes) -> "Budget":
        """A copy with some knobs changed, e.g. ``budget.with_(steps=100)``."""
        return replace(self, **changes)

    def describe(self) -> str:
        """One line per knob, for printing at the top of a notebook."""
        return "\n".join(f"{k:>12}: {v}" for k, v in asdict(self).items())


BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        name="smoke", steps=20, batch=2, crop=64, N=16, M=24, lmbdas=(0.0067, 0.0483),
        lr=1e-3, eval_images=1, eval_size=256, codec_points=4, seeds=1,
    ),
    # cpu: N=64, M=96 on 8 crops of 128² at ~0.15 s/step on 2 cores; 4000 steps with a high
    # peak lr and cosine decay carry a factorized prior past JPEG (chapter 2), and other λ
    # warm-start from the middle one. At the top λ, 0.025, chapter 2's factorized prior reaches
    # 29.5 dB on the evaluation photos and 27.9 dB on the unseen ones (`lictutor train`, 5 λ,
    # 47 min): enough overlap with the JPEG 2000 and WebP curves for BD-rates against them.
    "cpu": Budget(
        name="cpu", steps=4000, batch=8, crop=128, N=64, M=96,
        lmbdas=(0.0018, 0.0035, 0.0067, 0.013, 0.025),
        lr=2e-3, eval_images=None, eval_size=None, codec_points=8, seeds=3,
    ),
    "gpu": Budget(
        name="gpu", steps=5000, batch=8, crop=256, N=128, M=192,
        lmbdas=(0.0018, 0.0035, 0.0067, 0.013, 0.025),
        lr=1e-3, eval_images=None, eval_size=None, codec_points=8, seeds=3,
    ),
    "full": Budget(
        name="full", steps=500_000, batch=16, crop=256, N=128, M=192,
        lmbdas=(0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800),
        lr=1e-4, eval_images=None, eval_size=None, codec_points=10, seeds=5,
    ),
}


def budget_name() -> str:
    """The name of the active budget, following the rule in the module docstring."""
    name = os.environ.get("LICTUTOR_BUDGET", "").strip().lower()
    if name:
        if name not in BUDGETS:
            raise LictutorError(
                f"LICTUTOR_BUDGET={name!r} is not a budget; choose one of {', '.join(BUDGETS)}"
            )
        return name
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        return "smoke"
    import torch  # imported here so that `import lictutor` stays light

    return "gpu" if torch.cuda.is_available() else "cpu"


def get_budget(name: str | None = None) -> Budget:
    """The budget called ``name``, or the active one when ``name`` is None."""
    name = budget_name() if name is None else str(name).strip().lower()
    if name not in BUDGETS:
        raise LictutorError(f"unknown budget {name!r}; choose one of {', '.join(BUDGETS)}")
    return BUDGETS[name]
