"""What determines a trained model: :class:`TrainConfig`, the settings a budget gives a chapter
(:func:`budget_config`), and :class:`EntropyFitConfig` for training an entropy model on fixed
transforms.

A configuration holds plain values only, so it is stored in every checkpoint
(:meth:`TrainConfig.to_dict`) and hashed into the checkpoint cache's key (:meth:`TrainConfig.key`),
together with the content of the warm-start weights and of the teacher.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Mapping

from lictutor import data, metrics, models
from lictutor.budget import Budget
from lictutor.checkpoint import InitWeights, Teacher, state_dict_of, teacher_digest, weights_digest
from lictutor.errors import LictutorError
from lictutor.losses import DISTORTIONS, check_weights

__all__ = ["TrainConfig", "EntropyFitConfig", "budget_config", "DEFAULT_SHIFTS", "TRANSFORMS", "LATENT_STRIDE"]

#: down-sampling of ``g_a`` in every model here: a crop of 16k pixels is k latents
LATENT_STRIDE = 16
#: the pixel offsets at which :class:`EntropyFitConfig` computes each training photo's latents
#: by default
DEFAULT_SHIFTS = ((0, 0), (8, 8))
#: the transforms an entropy-model fit keeps fixed (it must freeze both)
TRANSFORMS = ("g_a", "g_s")

#: fields added after the first checkpoints, with their defaults as :meth:`TrainConfig.to_dict`
#: writes them: left out of the cache key at these values, so that older keys still hold
_LATER_FIELDS = {"frozen": [], "distill": {}, "l1": 0.0, "shifts": [list(s) for s in DEFAULT_SHIFTS]}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model (and so its cache key).

    Invalid values raise :class:`LictutorError` when the configuration is made.
    """

    model: str = "factorized"  #: name in :data:`lictutor.models.MODELS`
    model_args: dict = field(default_factory=dict)  #: e.g. ``{"N": 128, "M": 192}``
    lmbda: float = 0.0067
    distortion: str = "mse"  #: "mse", "ms-ssim" or "nlp"
    quantization: str = "noise"  #: training relaxation: "noise", "ste" or "mixed"
    steps: int = 1000
    batch: int = 8  #: global batch, split evenly over processes
    crop: int = 128  #: side of the square training crops, a multiple of the model's down-sampling
    lr: float = 1e-3
    aux_lr: float = 1e-3
    warmup: int = 0  #: steps of linear warm-up
    final_lr: float = 0.01  #: cosine decay to ``lr * final_lr``; 1.0 keeps lr constant
    clip: float = 1.0  #: max gradient norm (0: no clipping)
    #: modules whose parameters stay fixed, e.g. ``("g_a", "g_s")`` (entropy bottlenecks'
    #: quantiles keep learning: they only set the coder's range)
    frozen: tuple = ()
    #: knowledge-distillation weights (:func:`lictutor.losses.check_weights`), e.g.
    #: ``{"rd": 0.4, "y": 0.2, "x_hat": 0.2}``; empty: no distillation. Needs ``train(teacher=...)``
    distill: dict = field(default_factory=dict)
    #: weight of the L1 penalty ``mean|ŷ|`` added to the loss (Fu et al. 2023); 0: none.
    #: ŷ is the model output's ``"y_hat"``, the input of its ``g_s``
    l1: float = 0.0
    seed: int = 0
    #: training folder or data set name (:func:`lictutor.data.image_folder`); None: the
    #: book's offline photos
    images: str | None = None
    #: training augmentations, names in :data:`lictutor.data.AUGMENTATIONS`; ``()``: plain
    #: random crops with left-right flips (the only kind before they came)
    augment: tuple = data.DEFAULT_AUGMENT
    budget: str = ""  #: the budget that chose these settings, part of the cache key

    def __post_init__(self):
        if self.images is not None:  # a Path is fine too; stored as a string
            object.__setattr__(self, "images", os.fspath(self.images))
        object.__setattr__(self, "augment", data.check_augment(self.augment))
        if isinstance(self.frozen, str) or not all(isinstance(m, str) and m for m in self.frozen):
            raise LictutorError(f"frozen must be a sequence of module names, got {self.frozen!r}")
        object.__setattr__(self, "frozen", tuple(sorted(set(self.frozen))))
        if not isinstance(self.distill, Mapping):
            raise LictutorError(f"distill must be a dict of weights, got {self.distill!r}")
        if self.distill:  # defaults filled in: equal weights give equal cache keys
            object.__setattr__(self, "distill", check_weights(self.distill))
        if self.model not in models.MODELS:
            raise LictutorError(f"unknown model {self.model!r}; available: {', '.join(models.MODELS)}")
        if self.quantization not in ("noise", "ste", "mixed"):
            raise LictutorError(f"unknown quantization {self.quantization!r}; use noise, ste or mixed")
        if self.distortion not in DISTORTIONS:
            raise LictutorError(f"unknown distortion {self.distortion!r}; use one of {', '.join(DISTORTIONS)}")
        self._check_numbers()
        factor = models.MODELS[self.model].downsampling_factor
        min_side = {"ms-ssim": metrics.MS_SSIM_MIN_SIDE, "nlp": metrics.NLP_MIN_SIDE}.get(self.distortion, 1)
        if self.crop % factor or self.crop < min_side:
            raise LictutorError(
                f"crop must be a multiple of {factor} (the model's down-sampling) and at least "
                f"{min_side} for distortion {self.distortion!r}, got {self.crop}"
            )

    def _check_numbers(self) -> None:
        for name in ("steps", "batch", "crop"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise LictutorError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("lmbda", "lr", "aux_lr", "final_lr", "clip", "l1"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise LictutorError(f"{name} must be a finite number >= 0, got {value!r}")
        object.__setattr__(self, "l1", float(self.l1))  # l1=1 and l1=1.0: one cache key
        for name in ("lmbda", "lr", "aux_lr"):
            if getattr(self, name) == 0:
                raise LictutorError(f"{name} must be positive, got 0")
        if not isinstance(self.warmup, int) or not 0 <= self.warmup <= self.steps:
            raise LictutorError(f"warmup must be an integer in [0, steps], got {self.warmup!r} for {self.steps} steps")

    def to_dict(self) -> dict:
        """The configuration as plain JSON values (what checkpoints store)."""
        try:
            return json.loads(json.dumps({f.name: getattr(self, f.name) for f in fields(self)}))
        except TypeError as err:
            raise LictutorError(f"the configuration must hold plain values (numbers, strings): {err}") from None

    @classmethod
    def from_dict(cls, d: Mapping) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`LictutorError`.

        Checkpoints written before ``shifts`` moved to :class:`EntropyFitConfig` store it for every
        run: at its default it is dropped, other values give the :class:`EntropyFitConfig` of the
        entropy-model fit they came from. Checkpoints written before ``augment`` came trained
        without augmentations: a missing ``augment`` reads as ``()``."""
        known = {f.name for f in fields(cls)}
        d = {"augment": [], **d}  # checkpoints from before augmentations trained without them
        if "shifts" in d and "shifts" not in known:
            if d["shifts"] != _LATER_FIELDS["shifts"]:
                return EntropyFitConfig.from_dict(d)
            d = {k: v for k, v in d.items() if k != "shifts"}
        unknown = set(d) - known
        if unknown:
            raise LictutorError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**d)

    def key(self, init_from: InitWeights | None = None, teacher: Teacher | None = None) -> str:
        """A short hash of the configuration and of the *content* of the warm-start weights
        and of the teacher (:func:`lictutor.checkpoint.teacher_digest`): the checkpoint cache key."""
        settings = self.to_dict()
        for name, default in _LATER_FIELDS.items():  # left out at their defaults so older keys still hold
            if name in settings and settings[name] == default:
                del settings[name]
        if init_from is not None:
            settings["init_from"] = weights_digest(state_dict_of(init_from))
        if teacher is not None:
            settings["teacher"] = teacher_digest(teacher)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EntropyFitConfig(TrainConfig):
    """A :class:`TrainConfig` for :func:`lictutor.train.fit_entropy_model`: the entropy model
    of ``model`` trained on the latents of fixed transforms ``g_a``/``g_s`` (``frozen`` must
    name both; ``l1`` and ``distill`` must be unset, the loss is the rate alone), plus where
    those latents come from.

    ``g_a`` down-samples by :data:`LATENT_STRIDE`, so each pixel offset of a training photo gives other latents:
    ``shifts`` are the offsets ``(dy, dx)`` at which the fit computes each photo's latents, as
    is and mirrored. ``crop`` is then the side, in pixels, of the latent crops it draws.
    """

    shifts: tuple = DEFAULT_SHIFTS

    def __post_init__(self):
        super().__post_init__()
        pairs = self.shifts if isinstance(self.shifts, (list, tuple)) else ()
        if not pairs or not all(isinstance(p, (list, tuple)) and len(p) == 2 and
                                all(type(v) is int and 0 <= v < LATENT_STRIDE for v in p) for p in pairs):
            raise LictutorError(f"shifts must be pixel offsets (dy, dx), integers in [0, {LATENT_STRIDE}), "
                                f"got {self.shifts!r}")
        object.__setattr__(self, "shifts", tuple(tuple(p) for p in pairs))
        if not set(TRANSFORMS) <= set(self.frozen):
            raise LictutorError(f"fit_entropy_model trains with g_a and g_s frozen; got frozen={self.frozen!r}")
        if self.l1 or self.distill:
            raise LictutorError("fit_entropy_model minimizes the rate alone: l1 and distill must be unset")

    @classmethod
    def of(cls, config: TrainConfig, **changes) -> "EntropyFitConfig":
        """``config`` as an :class:`EntropyFitConfig`, with ``changes`` (e.g. ``shifts``)."""
        return cls(**{**{f.name: getattr(config, f.name) for f in fields(config)}, **changes})


def budget_config(budget: Budget, lmbda: float, model: str = "factorized", **changes) -> TrainConfig:
    """The :class:`TrainConfig` a chapter trains with under ``budget``: its steps, batch, crop,
    widths ``N``/``M`` (for the models that take them), peak learning rate, and a warm-up of
    5 % of the steps; the book's training data (:func:`lictutor.data.default_training_images`:
    CLIC 2020 when ``LICTUTOR_ONLINE=1``, else the built-in photos) and augmentations;
    ``changes`` override any field.

    Chapters that train the same model at the same λ share one configuration, so the
    checkpoint cache lets a later chapter load what an earlier one trained; the command line
    (``lictutor train``) trains with it too.
    """
    settings = dict(
        model=model, model_args=_widths(model, budget), lmbda=lmbda, steps=budget.steps,
        batch=budget.batch, crop=budget.crop, lr=budget.lr, warmup=budget.steps // 20, budget=budget.name,
        images=data.default_training_images(),
    )
    settings.update(changes)
    if "steps" in changes and "warmup" not in changes:
        settings["warmup"] = settings["steps"] // 20
    return TrainConfig(**settings)


def _widths(model: str, budget: Budget) -> dict:
    """``{"N": budget.N, "M": budget.M}``, less the widths ``model`` does not take."""
    cls = models.MODELS.get(model)  # TrainConfig reports an unknown name
    accepted = inspect.signature(cls).parameters if cls is not None else {"N": None, "M": None}
    return {k: v for k, v in {"N": budget.N, "M": budget.M}.items() if k in accepted}
