r"""Knowledge distillation, chapter 5: a classifier's soft targets (Hinton, Vinyals & Dean
2015), and a codec's students.

The losses live in :mod:`lictutor.losses` (soft targets, the entropy-model KL, the codec
distillation terms and their weights), the recording of a codec's intermediate values in
:mod:`lictutor.intermediates`, and :func:`lictutor.train.train` trains with them; every name
chapters use is importable from here too. This module adds what the chapters build from them:

* :func:`fit_classifier` -- train a small classifier on in-memory tensors with any loss
  (chapter 5a's teachers and students);
* :func:`distill_recipes` -- the recipes chapter 5b compares (from scratch, latent + output,
  the tempered KL alone and added), and :func:`kl_rate_weight`, which puts the KL on the scale
  of the rate term;
* :func:`train_student`, :func:`train_students` -- a grid of students of several widths,
  trained with those recipes against a scratch twin with the same initialization and data.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lictutor.config import TrainConfig
from lictutor.errors import LictutorError
from lictutor.intermediates import codec_forward, record  # noqa: F401 (re-exported)
from lictutor.losses import (  # noqa: F401 (re-exported: the losses chapters 5a and 5b use)
    DECAYS, DEFAULT_WEIGHTS, KD_TERMS, SCALE_BOUND, check_weights, codec_distill_losses,
    discretized_gaussian_log_pmf, entropy_model_kl, feature_loss, hard_soft_loss, integer_support,
    kd_factor, logit_matching_loss, soft_target_loss, tempered_log_pmf,
)
from lictutor.train import train

__all__ = ["fit_classifier", "kl_rate_weight", "distill_recipes", "train_student", "train_students"]


def fit_classifier(
    model: nn.Module,
    inputs: Tensor,
    targets,
    loss_fn=None,
    *,
    epochs: int = 10,
    batch: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    augment=None,
    seed: int = 0,
) -> list:
    """Train a small classifier on in-memory tensors (chapter 5a's teachers and students).

    Adam with a cosine decay of ``lr`` to 0 over ``epochs`` passes; minibatches of ``batch``
    reshuffled every epoch. ``targets`` is a tensor or a tuple of tensors (e.g. labels and a
    teacher's logits) whose first dimension runs along ``inputs``; each minibatch calls
    ``loss_fn(logits, *targets_batch)`` (default: cross-entropy with labels).
    ``augment(x, generator)``, if given, transforms each training minibatch (input jitter).
    Shuffling, augmentation and dropout draw from a generator seeded with ``seed`` (the global
    random state is restored afterwards). Returns the mean loss of every epoch; the model is left
    in eval mode.
    """
    targets = targets if isinstance(targets, (tuple, list)) else (targets,)
    n = inputs.size(0)
    if any(t.size(0) != n for t in targets):
        raise LictutorError(f"fit_classifier: targets must have {n} rows like the inputs")
    if not (isinstance(epochs, int) and epochs >= 1 and isinstance(batch, int) and batch >= 1):
        raise LictutorError(f"fit_classifier: epochs and batch must be positive integers, got {epochs!r}, {batch!r}")
    loss_fn = loss_fn or F.cross_entropy
    steps = epochs * math.ceil(n / batch)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history = []
    with torch.random.fork_rng(devices=[inputs.device] if inputs.is_cuda else []):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            order, total = torch.randperm(n, generator=gen), 0.0
            for i in range(0, n, batch):
                idx = order[i:i + batch]
                x = inputs[idx] if augment is None else augment(inputs[idx], gen)
                loss = loss_fn(model(x), *(t[idx] for t in targets))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            history.append(total / n)
    model.eval()
    return history


def kl_rate_weight(M: int, rd: float = 0.4, downsampling: int = 16) -> float:
    """The weight that puts :func:`entropy_model_kl` (nats per latent element) on the scale of
    the rate term of ``rd · (λ·D + bpp)``: a model with ``M`` latent channels at a
    down-sampling of ``downsampling`` has ``M / downsampling²`` latent elements per pixel, and a
    nat is ``1/ln 2`` bits, so one nat per element is ``M / (downsampling² · ln 2)`` bpp."""
    if not (isinstance(M, int) and M >= 1 and isinstance(downsampling, int) and downsampling >= 1):
        raise LictutorError(f"M and downsampling must be positive integers, got {M!r}, {downsampling!r}")
    return rd * M / downsampling**2 / math.log(2)


def distill_recipes(
    temperatures: Sequence[float] = (1.0,),
    *,
    kl_weight: float = 0.2,
    K: int = 16,
    rd: float = 0.4,
    latent: float = 0.2,
    output: float = 0.2,
) -> Dict[str, dict]:
    """The training recipes of a student codec, ``{name: distillation weights}``, in this order:

    * ``"scratch"``: ``{}``, the RD loss alone, no teacher (the student's twin);
    * ``"latent+output"``: ``rd·RD + latent·MSE(ŷ_s, ŷ_t) + output·MSE(x̂_s, x̂_t)`` (Allemand
      et al. 2025: 0.4, 0.2, 0.2);
    * ``"KL T=<T>"`` for every ``T``: ``rd·RD + kl_weight·`` :func:`entropy_model_kl` at ``T``;
    * ``"latent+output+KL T=<T>"`` for every ``T``: both.

    Every dict is checked (:func:`lictutor.losses.check_weights`); temperatures are stored as floats, so
    ``T=2`` and ``T=2.0`` give one cache key.
    """
    base = {"rd": rd, "y": latent, "x_hat": output}
    check_weights(base)
    recipes: Dict[str, dict] = {"scratch": {}, "latent+output": dict(base)}
    temps = [float(T) for T in temperatures]
    if len(set(temps)) != len(temps):
        raise LictutorError(f"temperatures must differ from one another, got {list(temperatures)!r}")
    for prefix, extra in (("", {"rd": rd}), ("latent+output+", base)):
        for T in temps:
            weights = {**extra, "kl": kl_weight, "T": T, "K": K}
            check_weights(weights)
            recipes[f"{prefix}KL T={T:g}"] = weights
    return recipes


def train_student(config: TrainConfig, weights: Mapping, teacher: Optional[nn.Module] = None, **kwargs):
    """Train (or load from the cache) one student: ``config`` (a
    :class:`lictutor.config.TrainConfig`) with its ``distill`` set to ``weights``; empty
    ``weights`` train from scratch and ignore ``teacher``. ``kwargs`` go to
    :func:`lictutor.train.train`. Returns ``(model, checkpoint)``."""
    if weights and teacher is None:
        raise LictutorError("a distilled student needs a teacher")
    config = replace(config, distill=dict(weights))
    return train(config, teacher=teacher if weights else None, **kwargs)


def train_students(
    base: TrainConfig,
    plan: Mapping[int, Sequence[str]],
    recipes: Mapping[str, Mapping],
    teachers: Mapping[float, nn.Module],
    pretrain_steps: int = 0,
    **kwargs,
) -> Dict[tuple, tuple]:
    """Train a grid of students: for every width ``N`` in ``plan``, every recipe name in
    ``plan[N]`` (a key of ``recipes``) and every ``λ`` of ``teachers``, the student ``base``
    (a :class:`lictutor.config.TrainConfig`) with ``model_args["N"] = N``, ``lmbda = λ``,
    distilled from ``teachers[λ]``. All students of a width start from the same initialization
    and see the same batches and noise: recipes differ by their loss only. Returns
    ``{(N, recipe, λ): (model, checkpoint)}``.

    ``pretrain_steps`` > 0 first trains one model per width and ``λ`` from scratch on the RD
    loss alone, for that many steps (``base`` otherwise, so with its learning rate and
    schedule), and starts every recipe of that width and ``λ`` from it: the recipes then act on
    a student that has learned something already, and every student, twin or distilled, has
    had ``pretrain_steps + base.steps`` steps.
    """
    unknown = sorted({r for names in plan.values() for r in names} - set(recipes))
    if unknown:
        raise LictutorError(f"unknown recipes {', '.join(unknown)}; known: {', '.join(recipes)}")
    if isinstance(pretrain_steps, bool) or not (isinstance(pretrain_steps, int) and pretrain_steps >= 0):
        raise LictutorError(f"pretrain_steps must be an integer >= 0, got {pretrain_steps!r}")
    out = {}
    for N, names in plan.items():
        for lmbda, teacher in teachers.items():
            config = replace(base, model_args={**base.model_args, "N": N}, lmbda=lmbda)
            start = kwargs
            if pretrain_steps:
                first = replace(config, steps=pretrain_steps, warmup=min(config.warmup, pretrain_steps), distill={})
                start = {**kwargs, "init_from": train_student(first, {}, **kwargs)[0].state_dict()}
            for name in names:
                out[(N, name, lmbda)] = train_student(config, recipes[name], teacher, **start)
    return out
