"""The book's trained models: one recipe per family, so every chapter gets the same weights.

Each function trains through :func:`lictutor.train.train` (or :func:`fit_entropy_model`),
whose cache under ``$LICTUTOR_HOME/checkpoints`` makes a later chapter load what an earlier
one trained. Settings come from the active :class:`lictutor.budget.Budget`.

* :func:`factorized_models` -- chapter 2: a model trained from scratch at the middle λ, and
  every λ fine-tuned from it for half as many steps.
* :func:`hyperprior_models` -- chapters 3–4: a hyperprior-family model per λ (scale,
  mean-scale or context) warm-started from the factorized model's transforms ``g_a``/``g_s``
  at the same λ, in two stages:

  1. :func:`fit_entropy_model`: with ``g_a``/``g_s`` frozen, the distortion does not depend
     on any trainable parameter, so the loss is the rate alone, and ``y = g_a(x)`` can be
     computed once per training photo and pixel offset (``TrainConfig.shifts``: chapter 3's
     two; chapter 4's sixteen, :data:`GRID_SHIFTS`, with which the mean-scale model overfits
     the 13 training photos a little less). The entropy model (``h_a``, ``h_s``, the
     bottleneck of ``z``, the context model) trains on random crops of those latents, about
     ten times faster than a full step;
  2. :func:`lictutor.train.train` fine-tunes everything jointly on ``λ·D + R``.

  The checkerboard models of chapter 7 take the same recipe, with chapter 3's two shifts:
  ``"checkerboard"`` has chapter 2's transforms as they are, ``"fast"`` has them with a
  deformable residual block inserted in each, which starts as the identity
  (:func:`fast_transforms_of`).

  Every family gets the same two stages with the same steps, so their comparison is fair;
  all of them have had more training than the factorized model they started from.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
from tqdm import tqdm

from lictutor import data, metrics, models
from lictutor.budget import Budget
from lictutor.errors import LictutorError
from lictutor.train import (
    InitWeights, TrainConfig, _init_state, _load_weights, _lr_factor, budget_config, cache_path,
    load_checkpoint, save_checkpoint, train,
)

__all__ = [
    "fit_entropy_model", "factorized_models", "hyperprior_models", "hyperprior_stages",
    "transforms_of", "fast_transforms_of", "GRID_SHIFTS",
]

TRANSFORMS = ("g_a", "g_s")
FAST_DRM = {"g_a": 6, "g_s": 2}  #: where FastLIC's transforms hold their deformable residual block
LATENT_STRIDE = 16  #: down-sampling of g_a in every model here: a crop of 16k pixels is k latents
#: every fourth pixel offset in each direction: 16 latent variants of each photo (and 16 mirrored)
#: for :func:`fit_entropy_model`, against the two of the default ``TrainConfig.shifts``
GRID_SHIFTS = tuple((dy, dx) for dy in range(0, LATENT_STRIDE, 4) for dx in range(0, LATENT_STRIDE, 4))


def transforms_of(model: nn.Module) -> dict:
    """The state dict of ``model``'s ``g_a`` and ``g_s`` (a warm start for another family)."""
    return {k: v for k, v in model.state_dict().items() if k.split(".")[0] in TRANSFORMS}


def fast_transforms_of(model: nn.Module, seed: int = 0) -> dict:
    """``g_a`` and ``g_s`` for a :class:`lictutor.models.FastLIC` that compute exactly what
    ``model``'s do (a chapter-2 warm start for chapter 7).

    FastLIC's transforms are chapter 2's with a deformable residual block inserted at 1/8 of
    the image size (:func:`lictutor.models.checkerboard.fast_analysis_transform`), at
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


@torch.no_grad()
def _training_latents(model: nn.Module, config: TrainConfig, device) -> list[torch.Tensor]:
    """``g_a(x)`` of every training photo, as is and mirrored, at each pixel offset of
    ``config.shifts`` (``g_a`` down-samples by 16, so a shifted photo gives other latents).
    These variants stand in for the image trainer's random crops and flips."""
    f = model.downsampling_factor
    photos = data.folder_images(config.images) if config.images else data.train_images()
    latents = []
    for name, img in photos:
        for flip in (False, True):
            for dy, dx in config.shifts:
                h, w = (img.shape[0] - dy) // f * f, (img.shape[1] - dx) // f * f
                if min(h, w) < config.crop:
                    continue
                x = data.to_tensor(img[dy:dy + h, dx:dx + w]).unsqueeze(0).to(device)
                latents.append(model.g_a(x.flip(-1) if flip else x))
    if not latents:
        raise LictutorError(f"no training photo is at least {config.crop}×{config.crop} pixels")
    return latents


def fit_entropy_model(config: TrainConfig, init_from: InitWeights, *, cache: bool = True,
                      progress: bool = True, device=None) -> tuple[nn.Module, dict]:
    """Train the entropy model of ``config.model`` on fixed transforms; returns
    ``(model, checkpoint)`` like :func:`lictutor.train.train`.

    ``init_from`` must hold ``g_a`` and ``g_s`` (see :func:`transforms_of`), which stay
    fixed (``config.frozen`` must name both). Each step draws ``config.batch`` crops of
    ``config.crop`` pixels' worth of latent from the training photos and minimizes their
    rate in bits per pixel under ``config.quantization``; ``config.lmbda`` plays no part.
    """
    from lictutor.device import pick_device, seed_everything

    if not set(TRANSFORMS) <= set(config.frozen):
        raise LictutorError(f"fit_entropy_model trains with g_a and g_s frozen; got frozen={config.frozen!r}")
    if config.l1 or config.distill:
        raise LictutorError("fit_entropy_model minimizes the rate alone: l1 and distill must be unset")
    init_from = _init_state(init_from)
    seed_everything(config.seed)
    model = models.create(config.model, **config.model_args)
    _load_weights(model, init_from, "init_from", partial=True)
    missing = [k for k in model.state_dict() if k.split(".")[0] in TRANSFORMS and k not in init_from]
    if missing:
        raise LictutorError(f"init_from lacks the transforms' weights: {', '.join(missing[:3])}")
    unknown = set(config.frozen) - {name for name, _ in model.named_modules()}
    if unknown:
        raise LictutorError(f"frozen: the model {config.model!r} has no module {', '.join(sorted(unknown))}")
    path = cache_path(config, init_from)
    path = path.with_name("entropy-" + path.name)
    device = pick_device() if device is None else torch.device(device)
    if cache and path.exists():
        return load_checkpoint(path, map_location=device)

    model.quantization = config.quantization
    model.to(device).train()
    for name, p in model.named_parameters():  # the quantiles learn from the aux loss regardless
        p.requires_grad_(name.endswith("quantiles") or not any(name.startswith(f + ".") for f in config.frozen))
    main = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("quantiles")]
    aux = [p for n, p in model.named_parameters() if n.endswith("quantiles")]
    optimizer = torch.optim.Adam(main, lr=config.lr)
    aux_optimizer = torch.optim.Adam(aux, lr=config.aux_lr)
    latents = _training_latents(model, config, device)
    side = config.crop // LATENT_STRIDE
    gen = torch.Generator().manual_seed(config.seed)
    history, start = [], time.perf_counter()
    for step in tqdm(range(config.steps), disable=not progress, desc=f"{config.model} entropy model"):
        crops = []
        for i in torch.randint(len(latents), (config.batch,), generator=gen).tolist():
            y = latents[i]
            top = torch.randint(y.shape[2] - side + 1, (1,), generator=gen).item()
            left = torch.randint(y.shape[3] - side + 1, (1,), generator=gen).item()
            crops.append(y[0, :, top:top + side, left:left + side])
        y = torch.stack(crops)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config)
        _, likelihoods = model.entropy_forward(y)
        bpp = metrics.bpp_from_likelihoods(likelihoods, config.batch * config.crop**2)
        optimizer.zero_grad(set_to_none=True)
        bpp.backward()
        norm = nn.utils.clip_grad_norm_(main, config.clip or math.inf)
        if not (torch.isfinite(bpp) and torch.isfinite(norm)):
            raise LictutorError(f"entropy-model training diverged at step {step + 1}: bpp {bpp.item():.4g}; "
                                "try a lower learning rate")
        optimizer.step()
        aux_optimizer.zero_grad(set_to_none=True)
        model.aux_loss().backward()
        aux_optimizer.step()
        if (step + 1) % 10 == 0 or step + 1 == config.steps:
            history.append({"step": step + 1, "bpp": bpp.item(), "time": time.perf_counter() - start})
    model.requires_grad_(True)
    model.update(force=True)
    model.eval()
    ckpt = {"key": path.stem, "step": config.steps, "history": history, "train_time": time.perf_counter() - start}
    if cache:
        save_checkpoint(path, model, config, **ckpt)
    return model, ckpt


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
                      **changes) -> tuple[TrainConfig, TrainConfig]:
    """The two configurations of :func:`hyperprior_models` at ``lmbda``: the entropy-model
    fit (half the budget's steps, 16 crops of 256² a step, latents at the pixel offsets
    ``shifts``, default ``TrainConfig.shifts``) and the joint fine-tuning (an eighth of the
    steps at half the peak learning rate). ``changes`` apply to both."""
    fit = dict(steps=max(budget.steps // 2, 1), batch=16, crop=256, frozen=TRANSFORMS)
    if shifts is not None:
        fit["shifts"] = shifts
    joint = dict(steps=max(budget.steps // 8, 1), lr=budget.lr / 2)
    fit = budget_config(budget, lmbda, model=model, **{**fit, **changes})
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
