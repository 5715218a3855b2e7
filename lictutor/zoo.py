"""The book's trained models: one recipe per family, so every chapter gets the same weights.

Each function trains through :func:`lictutor.train.train` (or
:func:`lictutor.train.fit_entropy_model`),
whose cache under ``$LICTUTOR_HOME/checkpoints`` makes a later chapter load what an earlier
one trained. Settings come from the active :class:`lictutor.budget.Budget`.

* :func:`factorized_models` -- chapter 2: a model trained from scratch at the middle λ
  (:func:`factorized_base`), and every λ fine-tuned from it for half as many steps at a lower learning rate
  (:data:`FINE_TUNE_LR`).
* :func:`hyperprior_models` -- chapters 3–4: a hyperprior-family model per λ (scale,
  mean-scale or context) warm-started from the factorized model's transforms ``g_a``/``g_s``
  at the same λ, in two stages:

  1. :func:`lictutor.train.fit_entropy_model`: with ``g_a``/``g_s`` frozen, the distortion
     does not depend on any trainable parameter, so the loss is the rate alone, and
     ``y = g_a(x)`` can be computed once per training photo and pixel offset
     (:attr:`lictutor.config.EntropyFitConfig.shifts`: chapter 3's two; chapter 4's sixteen,
     :data:`GRID_SHIFTS`, with which the mean-scale model overfits the training photos a
     little less). The entropy model (``h_a``, ``h_s``, the bottleneck of ``z``, the context
     model) trains on random crops of those latents, about ten times faster than a full step;
  2. :func:`lictutor.train.train` fine-tunes everything jointly on ``λ·D + R``.

  The checkerboard models of chapter 7 take the same recipe, with chapter 4's sixteen shifts:
  ``"checkerboard"`` has chapter 2's transforms as they are, ``"fast"`` has them with a
  deformable residual block inserted in each, which starts as the identity
  (:func:`fast_transforms_of`).

  Every family gets the same two stages with the same steps, so their comparison is fair;
  all of them have had more training than the factorized model they started from.
* :func:`trained_model` -- one model of any family at one λ by its recipe: what
  ``lictutor train`` trains, so the command line and the chapters share their models.

Every recipe trains on the same data, the budget's random crops of the book's training photos
with the augmentations of :data:`lictutor.data.DEFAULT_AUGMENT`, unless told otherwise
(``images=``, ``augment=``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from lictutor import models
from lictutor.budget import Budget
from lictutor.checkpoint import check_out
from lictutor.config import LATENT_STRIDE, TRANSFORMS, EntropyFitConfig, TrainConfig, budget_config
from lictutor.errors import LictutorError
from lictutor.train import fit_entropy_model, train  # fit_entropy_model re-exported: chapters use it from here

__all__ = ["factorized_base", "factorized_model", "factorized_models", "hyperprior_model", "hyperprior_models", "hyperprior_stages",
           "trained_model", "transforms_of", "fast_transforms_of", "FAST_DRM_BLOCKS", "FINE_TUNE_LR", "GRID_SHIFTS",
           "HYPERPRIOR_FAMILIES"]

#: the families trained by :func:`hyperprior_model`, on top of the factorized prior
HYPERPRIOR_FAMILIES = ("hyperprior", "mean-scale", "context", "checkerboard", "fast")
#: training settings that a warm start's factorized model shares with the model built on it
_DATA_SETTINGS = ("images", "augment", "seed")
#: a fine-tuning's peak learning rate, as a fraction of the budget's. At the full rate the first
#: steps after the warm-up undo the warm start: at λ = 0.025 (cpu budget) the PSNR of the training
#: crops fell from 25 dB to 4 dB at step 110 and took most of the 2,000 steps to climb back.
FINE_TUNE_LR = 0.25
FAST_DRM = {"g_a": 6, "g_s": 2}  #: where FastLIC's transforms hold their deformable residual block
#: the names of those blocks: ``model_args={"removed": FAST_DRM_BLOCKS}`` is FastLIC without them
FAST_DRM_BLOCKS = tuple(f"{part}.{at}" for part, at in FAST_DRM.items())
#: every fourth pixel offset in each direction: 16 latent variants of each photo (and 16 mirrored)
#: for :func:`lictutor.train.fit_entropy_model`, against the two of
#: :data:`lictutor.config.DEFAULT_SHIFTS`
GRID_SHIFTS = tuple((dy, dx) for dy in range(0, LATENT_STRIDE, 4) for dx in range(0, LATENT_STRIDE, 4))


def transforms_of(model: nn.Module) -> dict:
    """The state dict of ``model``'s ``g_a`` and ``g_s`` (a warm start for another family)."""
    return {k: v for k, v in model.state_dict().items() if k.split(".")[0] in TRANSFORMS}


def fast_transforms_of(model: nn.Module, seed: int = 0, removed=()) -> dict:
    """``g_a`` and ``g_s`` for a :class:`lictutor.models.FastLIC` that compute exactly what
    ``model``'s do (a chapter-2 warm start for chapter 7).

    FastLIC's transforms are chapter 2's with a deformable residual block inserted at 1/8 of
    the image size (:func:`lictutor.models.fast.fast_analysis_transform`), at
    ``g_a.6`` and ``g_s.2``: ``model``'s layers before it keep their index, the later ones
    move up by one. The blocks get a fresh initialization
    (seeded by ``seed``) with their last convolution ``conv2`` at zero, so each returns its
    input, ``x + LeakyReLU(0)``, until training moves ``conv2``. ``removed``: blocks whose
    weights are left out, for a FastLIC built without them (``removed=FAST_DRM_BLOCKS``: the
    transforms of ``model`` exactly, at FastLIC's indices).
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
    gone = tuple(f"{block}." for block in removed)
    return {k: v for k, v in out.items() if not k.startswith(gone)}


def factorized_base(budget: Budget, progress: bool = True, nonlinearity: str = "gdn", M: int | None = None,
                    **options) -> tuple[nn.Module, dict]:
    """The model every λ of chapter 2's curve is fine-tuned from, ``(model, checkpoint)``:
    trained from scratch at the budget's middle λ for ``budget.steps``. ``nonlinearity``
    replaces GDN in both transforms (:data:`lictutor.models.base.NONLINEARITIES`; chapter 1's
    comparison) and ``M`` the budget's number of latent channels (chapter 4's bottleneck
    study), everything else the same; ``options`` are training settings (``images``,
    ``augment``, ``seed``) for :func:`lictutor.config.budget_config`."""
    lmbdas = sorted(budget.lmbdas)
    return train(budget_config(budget, lmbdas[len(lmbdas) // 2], **_architecture(budget, nonlinearity, M), **options),
                 progress=progress)


def factorized_model(budget: Budget, lmbda: float, progress: bool = True, nonlinearity: str = "gdn",
                     M: int | None = None, **options) -> tuple[nn.Module, dict]:
    """Chapter 2's factorized prior at ``lmbda``, ``(model, checkpoint)``: the
    :func:`factorized_base` model fine-tuned at ``lmbda`` (the middle λ too) for half as many
    steps, with a peak learning rate of :data:`FINE_TUNE_LR` times the budget's.
    ``nonlinearity`` and ``M`` as for :func:`factorized_base`. ``options`` go to
    :func:`lictutor.train.train` (``out``, ``force``) or, if they are training settings
    (``images``, ``augment``, ``seed``), to both configurations."""
    run = _checked_run(options)
    tuned = budget_config(budget, lmbda, steps=max(budget.steps // 2, 1), lr=budget.lr * FINE_TUNE_LR,
                          **_architecture(budget, nonlinearity, M), **options)  # checked before training
    base, _ = factorized_base(budget, progress, nonlinearity, M, **options)
    return train(tuned, init_from=base.state_dict(), progress=progress, **run)


def _architecture(budget: Budget, nonlinearity: str = "gdn", M: int | None = None) -> dict:
    """The ``model_args`` change for a model with ``M`` latent channels (default the budget's)
    and, for a factorized model, ``nonlinearity`` in place of GDN; none for GDN at the budget's
    ``M``, so that those models keep the cache keys they always had. An unknown name or a bad
    ``M`` is reported when the first model is built, before any training."""
    if nonlinearity == "gdn" and M in (None, budget.M):
        return {}
    extra = {} if nonlinearity == "gdn" else {"nonlinearity": nonlinearity}
    return {"model_args": {"N": budget.N, "M": budget.M if M is None else M, **extra}}


def factorized_models(budget: Budget, progress: bool = True, lmbdas=None, **options) -> dict[float, nn.Module]:
    """Chapter 2's factorized priors, ``{λ: model}`` for every λ of the budget, or for
    ``lmbdas`` (:func:`factorized_model`), so that each point of the curve has had the same
    training."""
    return {lmbda: factorized_model(budget, lmbda, progress, **options)[0]
            for lmbda in sorted(budget.lmbdas if lmbdas is None else lmbdas)}


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


def hyperprior_model(budget: Budget, lmbda: float, model: str = "hyperprior", progress: bool = True,
                     out=None, force: bool = False, M: int | None = None, **changes) -> tuple[nn.Module, dict]:
    """A hyperprior-family ``model`` at ``lmbda``, ``(model, checkpoint)``, warm-started
    from :func:`factorized_model` at the same λ (see the module docstring). ``M``: latent
    channels in place of the budget's, for this model and the factorized one (chapter 4's
    bottleneck study). ``changes`` go to :func:`hyperprior_stages` (``shifts=GRID_SHIFTS``:
    chapter 4's stage 1); the training settings among them (``images``, ``augment``, ``seed``)
    to the factorized model too."""
    run = _checked_run({"out": out, "force": force})
    fit, joint = hyperprior_stages(budget, lmbda, model, **_architecture(budget, M=M), **changes)  # checked before training
    removed = fit.model_args.get("removed", ())
    warm_start = (lambda m: fast_transforms_of(m, removed=removed)) if model == "fast" else transforms_of
    factorized, _ = factorized_model(budget, lmbda, progress, M=M,
                                     **{k: v for k, v in changes.items() if k in _DATA_SETTINGS})
    stage1, _ = fit_entropy_model(fit, warm_start(factorized), progress=progress)
    return train(joint, init_from=stage1.state_dict(), progress=progress, **run)


def hyperprior_models(budget: Budget, model: str = "hyperprior", progress: bool = True,
                      lmbdas=None, **changes) -> dict[float, nn.Module]:
    """``{λ: model}`` of a hyperprior family (``"hyperprior"``, ``"mean-scale"`` or
    ``"context"``) for the budget's λ, or only these ``lmbdas`` of them
    (:func:`hyperprior_model`). The checkerboard families (``"checkerboard"``, ``"fast"``)
    train the same way."""
    return {lmbda: hyperprior_model(budget, lmbda, model, progress, **changes)[0]
            for lmbda in sorted(budget.lmbdas) if lmbdas is None or lmbda in lmbdas}


def trained_model(budget: Budget, model: str, lmbda: float, progress: bool = True,
                  **options) -> tuple[nn.Module, dict]:
    """``model`` at ``lmbda`` by the book's recipe for its family, ``(model, checkpoint)``:
    what ``lictutor train`` trains, so that it and the chapters share models through the cache.

    The factorized prior: :func:`factorized_model`; the hyperprior families:
    :func:`hyperprior_model`, with chapter 4's sixteen shifts for every family but chapter 3's
    ``"hyperprior"`` (``"mean-scale"``, ``"context"``, and chapter 7's ``"checkerboard"`` and
    ``"fast"``); any other model (chapter 1's ``"factorized2017"``): trained from scratch
    with :func:`lictutor.config.budget_config`. ``options``: ``out``, ``force`` and training
    settings (``images``, ``augment``, ``seed``)."""
    if model == "factorized":
        return factorized_model(budget, lmbda, progress, **options)
    if model in HYPERPRIOR_FAMILIES:
        shifts = {} if model == "hyperprior" else {"shifts": GRID_SHIFTS}
        return hyperprior_model(budget, lmbda, model, progress, **shifts, **options)
    run = _checked_run(options)
    return train(budget_config(budget, lmbda, model=model, **options), progress=progress, **run)


def _checked_run(options: dict) -> dict:
    """``out`` and ``force`` taken out of ``options`` for the last stage of a recipe, with
    ``out`` checked now (:func:`lictutor.checkpoint.check_out`), before the first stage trains."""
    run = {k: options.pop(k) for k in ("out", "force") if k in options}
    if run.get("out") is not None:
        check_out(Path(run["out"]), None, run.get("force", False))
    return run
