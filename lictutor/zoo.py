"""The book's trained models: one recipe per family, so every chapter gets the same weights.

Each function trains through :func:`lictutor.train.train` (or
:func:`lictutor.train.fit_entropy_model`),
whose cache under ``$LICTUTOR_HOME/checkpoints`` makes a later chapter load what an earlier
one trained. Settings come from the active :class:`lictutor.budget.Budget`.

* :func:`factorized_models` -- chapter 2: a model trained from scratch at the middle λ, and
  every λ fine-tuned from it for half as many steps.
* :func:`hyperprior_models` -- chapters 3–4: a hyperprior-family model per λ (scale,
  mean-scale or context) warm-started from the factorized model's transforms ``g_a``/``g_s``
  at the same λ, in two stages:

  1. :func:`lictutor.train.fit_entropy_model`: with ``g_a``/``g_s`` frozen, the distortion
     does not depend on any trainable parameter, so the loss is the rate alone, and
     ``y = g_a(x)`` can be computed once per training photo and pixel offset
     (:attr:`lictutor.config.EntropyFitConfig.shifts`: chapter 3's two; chapter 4's sixteen,
     :data:`GRID_SHIFTS`, with which the mean-scale model overfits the 13 training photos a
     little less). The entropy model (``h_a``, ``h_s``, the bottleneck of ``z``, the context
     model) trains on random crops of those latents, about ten times faster than a full step;
  2. :func:`lictutor.train.train` fine-tunes everything jointly on ``λ·D + R``.

  The checkerboard models of chapter 7 take the same recipe, with chapter 3's two shifts:
  ``"checkerboard"`` has chapter 2's transforms as they are, ``"fast"`` has them with a
  deformable residual block inserted in each, which starts as the identity
  (:func:`fast_transforms_of`).

  Every family gets the same two stages with the same steps, so their comparison is fair;
  all of them have had more training than the factorized model they started from.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lictutor import models
from lictutor.budget import Budget
from lictutor.config import LATENT_STRIDE, TRANSFORMS, EntropyFitConfig, TrainConfig, budget_config
from lictutor.errors import LictutorError
from lictutor.train import fit_entropy_model, train  # fit_entropy_model re-exported: chapters use it from here

__all__ = ["factorized_models", "hyperprior_models", "hyperprior_stages", "transforms_of", "fast_transforms_of",
           "GRID_SHIFTS"]

FAST_DRM = {"g_a": 6, "g_s": 2}  #: where FastLIC's transforms hold their deformable residual block
#: every fourth pixel offset in each direction: 16 latent variants of each photo (and 16 mirrored)
#: for :func:`lictutor.train.fit_entropy_model`, against the two of
#: :data:`lictutor.config.DEFAULT_SHIFTS`
GRID_SHIFTS = tuple((dy, dx) for dy in range(0, LATENT_STRIDE, 4) for dx in range(0, LATENT_STRIDE, 4))


def transforms_of(model: nn.Module) -> dict:
    """The state dict of ``model``'s ``g_a`` and ``g_s`` (a warm start for another family)."""
    return {k: v for k, v in model.state_dict().items() if k.split(".")[0] in TRANSFORMS}


def fast_transforms_of(model: nn.Module, seed: int = 0) -> dict:
    """``g_a`` and ``g_s`` for a :class:`lictutor.models.FastLIC` that compute exactly what
    ``model``'s do (a chapter-2 warm start for chapter 7).

    FastLIC's transforms are chapter 2's with a deformable residual block inserted at 1/8 of
    the image size (:func:`lictutor.models.fast.fast_analysis_transform`), at
    ``g_a.6`` and ``g_s.2``: ``model``'s layers before it keep their index, the later ones
    move up by one. The blocks get a fresh initialization
    (seeded by ``seed``) with their last convolution ``conv2`` at zero, so each returns its
    input, ``x + LeakyReLU(0)``, until training moves ``conv2``.
    """
    state = transforms_of(model)
    try:
        N, M = state["g_a.0.weight"].size(0), state["g_a.6.weight"].size(0)
    except KeyError as err:
        raise LictutorError(f"fast_transforms_of: the model has no {err}; expected chapter 2's transforms") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = models.create("fast", N=N, M=M)
    out = {}
    for key, value in state.items():
        part, index, rest = key.split(".", 2)
        out[f"{part}.{int(index) + (int(index) >= FAST_DRM[part])}.{rest}"] = value
    for part, at in FAST_DRM.items():
        for name, value in getattr(fresh, part)[at].state_dict().items():
            out[f"{part}.{at}.{name}"] = torch.zeros_like(value) if name.startswith("conv2.") else value.clone()
    return out


def factorized_models(budget: Budget, progress: bool = True) -> dict[float, nn.Module]:
    """Chapter 2's factorized priors, ``{λ: model}``: one model trained from scratch at the
    middle λ for ``budget.steps``, then every λ, the middle one too, fine-tuned from it for
    half as many, so that each point of the curve has had the same training."""
    lmbdas = sorted(budget.lmbdas)
    base, _ = train(budget_config(budget, lmbdas[len(lmbdas) // 2]), progress=progress)
    return {lmbda: train(budget_config(budget, lmbda, steps=max(budget.steps // 2, 1)),
                         init_from=base.state_dict(), progress=progress)[0]
            for lmbda in lmbdas}


def hyperprior_stages(budget: Budget, lmbda: float, model: str, shifts=None,
                      **changes) -> tuple[EntropyFitConfig, TrainConfig]:
    """The two configurations of :func:`hyperprior_models` at ``lmbda``: the entropy-model
    fit (half the budget's steps, 16 crops of 256² a step, latents at the pixel offsets
    ``shifts``, default :data:`lictutor.config.DEFAULT_SHIFTS`) and the joint fine-tuning (an
    eighth of the steps at half the peak learning rate). ``changes`` apply to both."""
    fit = dict(steps=max(budget.steps // 2, 1), batch=16, crop=256, frozen=TRANSFORMS)
    joint = dict(steps=max(budget.steps // 8, 1), lr=budget.lr / 2)
    fit = EntropyFitConfig.of(budget_config(budget, lmbda, model=model, **{**fit, **changes}),
                              **({} if shifts is None else {"shifts": shifts}))
    joint = budget_config(budget, lmbda, model=model, **{**joint, **changes})
    return fit, joint


def hyperprior_models(budget: Budget, model: str = "hyperprior", progress: bool = True,
                      lmbdas=None, **changes) -> dict[float, nn.Module]:
    """``{λ: model}`` of a hyperprior family (``"hyperprior"``, ``"mean-scale"`` or
    ``"context"``) warm-started from :func:`factorized_models` (see the module docstring);
    ``lmbdas``: only these of the budget's λ; ``changes`` go to :func:`hyperprior_stages`
    (``shifts=GRID_SHIFTS``: chapter 4's stage 1). The checkerboard families
    (``"checkerboard"``, ``"fast"``) train the same way."""
    warm_start = fast_transforms_of if model == "fast" else transforms_of
    out = {}
    for lmbda, factorized in factorized_models(budget, progress=progress).items():
        if lmbdas is None or lmbda in lmbdas:
            fit, joint = hyperprior_stages(budget, lmbda, model, **changes)
            stage1, _ = fit_entropy_model(fit, warm_start(factorized), progress=progress)
            out[lmbda], _ = train(joint, init_from=stage1.state_dict(), progress=progress)
    return out
