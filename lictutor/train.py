"""The rate–distortion trainer every chapter uses.

Minimises, as CompressAI's examples do (Ballé et al. 2017, eq. 2; 2018, eq. 7)::

    L = λ · 255² · MSE(x, x̂) + bpp        (distortion="mse")
    L = λ · (1 − MS-SSIM(x, x̂)) + bpp     (distortion="ms-ssim")
    L = λ · NLP(x, x̂) + bpp               (distortion="nlp", Ballé, Laparra & Simoncelli 2016)

with bpp = Σ −log₂ p(ŷ) / (number of pixels). The entropy models' quantiles are trained
by the auxiliary loss on an optimizer of their own.

What it adds to a plain loop, each of which a reader would otherwise write badly:

* a learning-rate schedule (linear warm-up, cosine decay) and gradient clipping;
* a NaN/inf guard (on the loss and the gradient) that stops with a message naming the step;
* a tqdm bar showing bpp and PSNR;
* checkpoints every ``checkpoint_every`` steps, and resume after an interruption that gives the
  same weights as an uninterrupted run (batches and noise are functions of the step, not of
  a random-number state);
* a cache: a finished run is stored under ``$LICTUTOR_HOME/checkpoints`` by a key of its
  configuration (and of its warm-start weights), so re-running a notebook loads instead of
  retraining;
* a warm start (``init_from``) from another run's weights, e.g. a neighbouring λ;
* knowledge distillation from a ``teacher`` (:mod:`lictutor.distill`): the loss becomes
  ``rd · (λ·D + bpp) + Σ_t w_t · KD_t`` with the weights of ``config.distill``, held or
  decaying to 0 over training (``distill={..., "decay": "linear"}``);
* an L1 penalty on the quantized latent, ``l1 · mean|ŷ|`` (Fu et al. 2023): it pushes whole
  channels of ŷ to zero, which :class:`lictutor.models.FastLIC` then skips when coding;
* multi-process data parallelism (``torchrun``, DistributedDataParallel), equal to one process
  with the same global batch;
* ``update()`` of the entropy models at the end, so a trained model compresses right away.

Checkpoints hold only tensors and plain Python values and load with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping, Union

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from tqdm import tqdm  # plain text bars: they render in terminals, notebooks and the built book

from lictutor import distill, metrics, quantization
from lictutor.errors import LictutorError

__all__ = [
    "TrainConfig",
    "budget_config",
    "RateDistortionLoss",
    "train",
    "load_checkpoint",
    "save_checkpoint",
    "cache_path",
    "weights_digest",
    "teacher_digest",
    "add_l1_sparsity",
]

CHECKPOINT_FORMAT = "lictutor-checkpoint-1"
DISTORTIONS = ("mse", "ms-ssim", "nlp")

#: warm-start weights: a checkpoint written by :func:`train`, or a state dict
InitWeights = Union[str, os.PathLike, Mapping[str, Tensor]]
#: a distillation teacher: a model, or a checkpoint written by :func:`train`
Teacher = Union[nn.Module, str, os.PathLike]


#: fields added after the first checkpoints, with their defaults as :meth:`TrainConfig.to_dict` writes them
_LATER_FIELDS = {"frozen": [], "distill": {}, "l1": 0.0, "shifts": [[0, 0], [8, 8]]}


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
    #: knowledge-distillation weights (:func:`lictutor.distill.check_weights`), e.g.
    #: ``{"rd": 0.4, "y": 0.2, "x_hat": 0.2}``; empty: no distillation. Needs ``train(teacher=...)``
    distill: dict = field(default_factory=dict)
    #: weight of the L1 penalty ``mean|ŷ|`` added to the loss (Fu et al. 2023); 0: none.
    #: ŷ is the model output's ``"y_hat"``, the input of its ``g_s``
    l1: float = 0.0
    seed: int = 0
    images: str | None = None  #: training folder; None: the book's offline photos
    budget: str = ""  #: the budget that chose these settings, part of the cache key
    #: :func:`lictutor.zoo.fit_entropy_model` only: the pixel offsets ``(dy, dx)`` at which it
    #: computes each training photo's latents (``g_a`` down-samples by 16, so each offset gives
    #: other latents); see :data:`lictutor.zoo.GRID_SHIFTS`
    shifts: tuple = ((0, 0), (8, 8))

    def __post_init__(self):
        from lictutor import models

        if self.images is not None:  # a Path is fine too; stored as a string
            object.__setattr__(self, "images", os.fspath(self.images))
        if isinstance(self.frozen, str) or not all(isinstance(m, str) and m for m in self.frozen):
            raise LictutorError(f"frozen must be a sequence of module names, got {self.frozen!r}")
        object.__setattr__(self, "frozen", tuple(sorted(set(self.frozen))))
        pairs = self.shifts if isinstance(self.shifts, (list, tuple)) else ()
        if not pairs or not all(isinstance(p, (list, tuple)) and len(p) == 2 and
                                all(type(v) is int and 0 <= v < 16 for v in p) for p in pairs):
            raise LictutorError(f"shifts must be pixel offsets (dy, dx), integers in [0, 16), got {self.shifts!r}")
        object.__setattr__(self, "shifts", tuple(tuple(p) for p in pairs))
        if not isinstance(self.distill, Mapping):
            raise LictutorError(f"distill must be a dict of weights, got {self.distill!r}")
        if self.distill:  # defaults filled in: equal weights give equal cache keys
            object.__setattr__(self, "distill", distill.check_weights(self.distill))
        if self.model not in models.MODELS:
            raise LictutorError(f"unknown model {self.model!r}; available: {', '.join(models.MODELS)}")
        if self.quantization not in ("noise", "ste", "mixed"):
            raise LictutorError(f"unknown quantization {self.quantization!r}; use noise, ste or mixed")
        if self.distortion not in DISTORTIONS:
            raise LictutorError(f"unknown distortion {self.distortion!r}; use one of {', '.join(DISTORTIONS)}")
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
        factor = models.MODELS[self.model].downsampling_factor
        min_side = {"ms-ssim": metrics.MS_SSIM_MIN_SIDE, "nlp": metrics.NLP_MIN_SIDE}.get(self.distortion, 1)
        if self.crop % factor or self.crop < min_side:
            raise LictutorError(
                f"crop must be a multiple of {factor} (the model's down-sampling) and at least "
                f"{min_side} for distortion {self.distortion!r}, got {self.crop}"
            )

    def to_dict(self) -> dict:
        """The configuration as plain JSON values (what checkpoints store)."""
        try:
            return json.loads(json.dumps({f.name: getattr(self, f.name) for f in fields(self)}))
        except TypeError as err:
            raise LictutorError(f"the configuration must hold plain values (numbers, strings): {err}") from None

    @classmethod
    def from_dict(cls, d: Mapping) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`LictutorError`."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise LictutorError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**d)

    def key(self, init_from: InitWeights | None = None, teacher: Teacher | None = None) -> str:
        """A short hash of the configuration and of the *content* of the warm-start weights
        and of the teacher (:func:`teacher_digest`): the checkpoint cache key."""
        settings = self.to_dict()
        for name, default in _LATER_FIELDS.items():  # left out at their defaults so older keys still hold
            if settings[name] == default:
                del settings[name]
        if init_from is not None:
            settings["init_from"] = weights_digest(_init_state(init_from))
        if teacher is not None:
            settings["teacher"] = teacher_digest(teacher)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def budget_config(budget, lmbda: float, model: str = "factorized", **changes) -> TrainConfig:
    """The :class:`TrainConfig` a chapter trains with under ``budget``
    (a :class:`lictutor.budget.Budget`): its steps, batch, crop, widths ``N``/``M``, peak
    learning rate, and a warm-up of 5 % of the steps; ``changes`` override any field.

    Chapters that train the same model at the same λ share one configuration, so the
    checkpoint cache lets a later chapter load what an earlier one trained.
    """
    settings = dict(
        model=model, model_args={"N": budget.N, "M": budget.M}, lmbda=lmbda, steps=budget.steps,
        batch=budget.batch, crop=budget.crop, lr=budget.lr, warmup=budget.steps // 20, budget=budget.name,
    )
    settings.update(changes)
    if "steps" in changes and "warmup" not in changes:
        settings["warmup"] = settings["steps"] // 20
    return TrainConfig(**settings)


class RateDistortionLoss(nn.Module):
    """``λ · D + bpp`` with, as in CompressAI, D = 255² · MSE for "mse" and 1 − MS-SSIM for
    "ms-ssim"; for "nlp", D = :func:`lictutor.metrics.nlp_distance`, unscaled.

    The NLP distance grows roughly like the RMS error (about 0.16 for Gaussian noise at 34 dB
    PSNR, 0.28 at 28 dB), so its λ is on a scale of its own. Matching the slopes of the two
    distortions around 31 dB gives λ ≈ 4 for "nlp" where "mse" uses 0.0067 (a few hundred
    times larger); a starting point, not a calibration.
    """

    def __init__(self, lmbda: float, distortion: str = "mse"):
        super().__init__()
        if distortion not in DISTORTIONS:
            raise LictutorError(f"unknown distortion {distortion!r}; use one of {', '.join(DISTORTIONS)}")
        self.lmbda, self.distortion = lmbda, distortion

    def forward(self, out: dict, x: Tensor) -> dict:
        """``{"loss", "bpp", "mse", "distortion"}`` (0-dim tensors) for model output ``out``."""
        num_pixels = x.size(0) * x.size(2) * x.size(3)
        bpp = metrics.bpp_from_likelihoods(out["likelihoods"], num_pixels)
        x_hat = out["x_hat"]
        mse = torch.mean((x_hat - x) ** 2)
        if self.distortion == "mse":
            dist = 255**2 * mse
        elif self.distortion == "ms-ssim":
            dist = 1 - metrics.ms_ssim(x_hat, x)
        else:
            dist = metrics.nlp_distance(x_hat, x)
        return {"loss": self.lmbda * dist + bpp, "bpp": bpp, "mse": mse, "distortion": dist}


def cache_path(config: TrainConfig, init_from: InitWeights | None = None, teacher: Teacher | None = None) -> Path:
    """Where :func:`train` caches the finished model of ``config`` (warm-started from
    ``init_from``, distilled from ``teacher``): ``$LICTUTOR_HOME/checkpoints/<model>-<key>.pt``."""
    from lictutor.data import lictutor_home

    return lictutor_home() / "checkpoints" / f"{config.model}-{config.key(init_from, teacher)}.pt"


def save_checkpoint(path, model: nn.Module, config: TrainConfig, **extra) -> None:
    """Write ``model``'s weights, ``config`` and ``extra`` values to ``path``.

    Atomic: a crash mid-write never leaves a half checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": config.model,
        "model_args": dict(config.model_args),
        "config": config.to_dict(),
        "state_dict": model.state_dict(),
        **extra,
    }
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _read_checkpoint(path) -> dict:
    """The dict stored by :func:`save_checkpoint`, read with ``weights_only=True``."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LictutorError(f"no checkpoint at '{path}'") from None
    except Exception as err:  # truncated, not a torch file, or pickled code (refused)
        raise LictutorError(f"cannot read checkpoint '{path}': {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise LictutorError(f"'{path}' is not a lictutor checkpoint")
    return ckpt


def _load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], source: str, partial: bool = False) -> None:
    """Load ``state_dict`` into ``model``. ``partial``: some of the model's tensors may be
    missing (they keep their initialization), but every given tensor must fit one."""
    try:
        result = model.load_state_dict(state_dict, strict=not partial)
    except (RuntimeError, KeyError, TypeError) as err:
        raise LictutorError(f"the weights of {source} do not fit the model: {err}") from None
    if partial and result.unexpected_keys:
        raise LictutorError(f"the weights of {source} do not fit the model: unexpected "
                            f"{', '.join(result.unexpected_keys[:5])}")


def load_checkpoint(path, map_location="cpu") -> tuple[nn.Module, dict]:
    """Load a checkpoint written by :func:`train`: returns ``(model, checkpoint dict)``.

    Loads with ``weights_only=True``: a checkpoint from an untrusted source cannot run code.
    Anything that is not a lictutor checkpoint gets a :class:`LictutorError`.
    """
    from lictutor import models

    ckpt = _read_checkpoint(path)
    try:
        model = models.create(ckpt["model"], **ckpt["model_args"])
    except (KeyError, TypeError):
        raise LictutorError(f"checkpoint '{path}' does not name its model") from None
    _load_weights(model, ckpt.get("state_dict"), f"checkpoint '{path}'")
    return model.to(map_location).eval(), ckpt


def _init_state(init_from: InitWeights) -> Mapping[str, Tensor]:
    """The state dict of warm-start weights given as a checkpoint path or a state dict."""
    if isinstance(init_from, Mapping):
        return init_from
    return _read_checkpoint(init_from)["state_dict"]


def weights_digest(state_dict: Mapping[str, Tensor]) -> str:
    """A hash of the names, shapes and values of ``state_dict``'s tensors."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, Tensor):
            raise LictutorError(f"init_from: {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _teacher_model(teacher: Teacher) -> nn.Module:
    """The teacher as a model: itself, or loaded from a checkpoint written by :func:`train`."""
    if isinstance(teacher, nn.Module):
        return teacher
    if isinstance(teacher, (str, os.PathLike)):
        return load_checkpoint(teacher)[0]
    raise LictutorError(f"teacher must be a model or a checkpoint path, got {type(teacher).__name__}")


def teacher_digest(teacher: Teacher) -> str:
    """A hash of the teacher's class and of its parameters and masks (:func:`weights_digest`):
    what it computes in training. Its coding tables are left out: they change with
    ``update()``, not its outputs."""
    model = _teacher_model(teacher)
    state = {**dict(model.named_parameters()),
             **{n: b for n, b in model.named_buffers() if n.endswith("mask")}}
    return f"{type(model).__qualname__}:{weights_digest(state)}"


def _distillation_losses(losses: dict, student: dict, teacher: nn.Module, x: Tensor, weights: dict,
                         factor: float = 1.0) -> dict:
    """``losses`` with ``loss`` = ``rd · (λ·D + bpp) + factor · Σ w_t · KD_t``, the RD loss as
    ``rd`` and every distillation term ``t`` as ``kd_t`` (see
    :func:`lictutor.distill.codec_distill_losses`); ``factor`` is the decay schedule's
    (:func:`lictutor.distill.kd_factor`)."""
    with torch.no_grad():
        target = distill.codec_forward(teacher, x, list(weights["features"]))
    terms = distill.codec_distill_losses(student, target, weights)
    total = weights["rd"] * losses["loss"]
    for name, value in terms.items():  # "features" is weighted layer by layer already
        total = total + factor * (1.0 if name == "features" else weights[name]) * value
    return {**losses, "loss": total, "rd": losses["loss"], **{f"kd_{n}": v for n, v in terms.items()}}


def add_l1_sparsity(losses: dict, output: dict, weight: float) -> dict:
    """``losses`` with ``loss`` + ``weight · mean|ŷ|`` (the L1 penalty of Fu et al. 2023 on
    the model output's ``"y_hat"``, :func:`lictutor.models.checkerboard.l1_sparsity`), the
    penalty unweighted as ``l1``, and the loss without it as ``rd`` (unless ``losses`` has one
    already, from distillation).

    The mean runs over every element of the batch's ŷ, so the penalty's gradient with respect
    to an element is ``weight · sign(ŷ) / ŷ.numel()`` (0 where ŷ is exactly 0).
    """
    from lictutor.models.checkerboard import l1_sparsity

    term = l1_sparsity(output)
    return {**losses, "loss": losses["loss"] + weight * term, "rd": losses.get("rd", losses["loss"]), "l1": term}


def _lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay from 1 to ``final_lr``."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    t = (step - config.warmup) / (config.steps - config.warmup)
    return config.final_lr + (1 - config.final_lr) * 0.5 * (1 + math.cos(math.pi * t))


def _distributed() -> tuple[int, int]:
    """(rank, world size), joining the process group when started by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _is_aux(name: str) -> bool:
    """The entropy bottlenecks' ``quantiles`` learn from the aux loss only."""
    return name.endswith("quantiles")


def train(
    config: TrainConfig,
    *,
    init_from: InitWeights | None = None,
    out: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    cache: bool = True,
    progress: bool = True,
    log_every: int = 10,
    device: str | torch.device | None = None,
    stop_after: int | None = None,
    teacher: Teacher | None = None,
) -> tuple[nn.Module, dict]:
    """Train (or load from the cache) the model that ``config`` describes.

    Returns ``(model, checkpoint)``: the model in eval mode with its entropy models updated,
    and the checkpoint dict with ``step``, ``history`` (one dict per ``log_every`` steps:
    step, loss, bpp, psnr, aux, lr of the global batch, and the training time so far) and
    ``train_time`` in seconds.

    ``init_from``: start from these weights (a checkpoint path or a state dict) instead of a
    random initialization; they are part of the cache key. They may cover part of the model
    (e.g. only ``g_a``/``g_s`` of a factorized model in a hyperprior); the rest keeps its
    random initialization. ``out``: also write the final (and
    periodic) checkpoints there; an unfinished checkpoint of the same run found there is
    resumed, one of another run is an error. Without ``out``, periodic checkpoints go next to
    the cache entry and are resumed from there. ``stop_after``: stop (as if interrupted) after
    that many steps, leaving a checkpoint to resume. ``device``: default
    :func:`lictutor.device.pick_device`; under ``torchrun`` each process takes its own GPU.

    ``teacher``: distil from this model (or checkpoint path) with the weights of
    ``config.distill``; its parameters are part of the cache key. It is moved to the device and
    put in eval mode: its targets (ŷ, ẑ, x̂, Gaussian parameters) are those of its
    evaluation-mode forward, with rounded latents (``round(y)`` for the context models, whose
    coder uses ``round(y − μ) + μ``), so they do not depend on the training noise and do not
    draw from it -- the student's noise is the same as without a teacher. (With "noise", the student's
    ŷ differs from a target by its noise as well: ``E[(ŷ_s − ŷ_t)²]`` gains a constant 1/12,
    not a bias in the gradient.) The history then also holds ``rd`` (the RD loss) and every
    distillation term ``kd_<term>``.

    ``config.l1`` > 0: ``l1 · mean|ŷ|`` is added to the loss (after the distillation terms, not
    weighted by their ``rd``), with ŷ the model output's ``"y_hat"`` (what ``g_s`` sees); the history
    then also holds ``rd`` (the loss without the penalty) and ``l1`` (``mean|ŷ|``, unweighted).
    """
    from lictutor import data, models
    from lictutor.device import pick_device, seed_everything

    if log_every < 1 or checkpoint_every < 0 or (stop_after is not None and stop_after < 1):
        raise LictutorError("log_every and stop_after must be >= 1 and checkpoint_every >= 0")
    init_state = _init_state(init_from) if init_from is not None else None
    if teacher is not None:
        teacher = _teacher_model(teacher)
    if (teacher is None) != (not config.distill):
        raise LictutorError(
            "distillation needs both a teacher and config.distill weights (e.g. "
            "distill={'rd': 0.4, 'y': 0.2, 'x_hat': 0.2}); got "
            + ("no teacher" if teacher is None else "no weights")
        )
    key = config.key(init_state, teacher)
    final = cache_path(config, init_state, teacher)
    rank, world = _distributed()
    if world > 1 and torch.cuda.is_available() and device is None:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per process
    device = pick_device() if device is None else torch.device(device)
    if world > 1 and device.type == "cuda":
        torch.cuda.set_device(device)

    if cache and final.exists() and stop_after is None:
        model, ckpt = load_checkpoint(final, map_location=device)
        if out is not None and rank == 0 and Path(out).resolve() != final.resolve():
            save_checkpoint(out, model, config, **{k: ckpt[k] for k in ("key", "step", "history", "train_time")})
        return model, ckpt

    if config.batch % world:
        raise LictutorError(f"batch {config.batch} is not divisible by {world} processes")
    seed_everything(config.seed)
    model = models.create(config.model, **config.model_args)
    if init_state is not None:
        _load_weights(model, init_state, "init_from", partial=True)
    model.quantization = config.quantization
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    for name in config.frozen:
        module = dict(model.named_modules()).get(name)
        if module is None or name == "":
            raise LictutorError(f"frozen: the model {config.model!r} has no module {name!r}")
        for pname, p in module.named_parameters():
            p.requires_grad_(_is_aux(pname))
    main_params = [p for n, p in model.named_parameters() if not _is_aux(n) and p.requires_grad]
    if not main_params:
        raise LictutorError(f"frozen={config.frozen!r} leaves nothing of the model to train")
    aux_params = [p for n, p in model.named_parameters() if _is_aux(n)]
    optimizer = torch.optim.Adam(main_params, lr=config.lr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=config.aux_lr)
    criterion = RateDistortionLoss(config.lmbda, config.distortion)
    step, history, elapsed = 0, [], 0.0

    work = Path(out) if out is not None else final.with_name(final.stem + ".part.pt")
    if work.exists():
        ckpt = _read_checkpoint(work)
        if ckpt.get("key") != key:
            raise LictutorError(f"'{work}' holds a checkpoint of another run; remove it or choose another out")
        _load_weights(model, ckpt["state_dict"], f"checkpoint '{work}'")
        if "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
            aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
        step, history, elapsed = ckpt["step"], ckpt["history"], ckpt["train_time"]

    net = model
    if world > 1:
        # The quantiles learn from the aux loss, a second backward pass that DDP's reducer does
        # not see, so DDP must ignore them. Their gradient depends on the (replicated)
        # parameters only, not on the data: it is already the same in every process.
        quantiles = [n for n, _ in model.named_parameters() if _is_aux(n)]
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, quantiles)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    trainset = data.training_set(config.images, crop=config.crop, seed=config.seed)
    per_rank = config.batch // world
    bar = tqdm(total=config.steps, initial=step, disable=not progress or rank != 0, desc=config.model)
    start = time.perf_counter() - elapsed
    model.train()
    while step < config.steps:
        # The global batch of step s holds samples s·batch, ..., s·batch + batch − 1; each
        # sample's crop and noise depend on its index only, so a resumed run, or one split
        # over processes, sees exactly the same data.
        first = step * config.batch + rank * per_rank
        indices = range(first, first + per_rank)
        x = torch.stack([trainset[i] for i in indices]).to(device)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config)

        optimizer.zero_grad(set_to_none=True)
        with quantization.sample_seeds([config.seed * 1_000_003 + i for i in indices]):
            if teacher is None:
                output = net(x)
                losses = criterion(output, x)
            else:
                with distill.record(model, list(config.distill["features"])) as student:
                    output = net(x)
                losses = criterion(output, x)
                factor = distill.kd_factor(step, config.steps, config.distill.get("decay", "none"))
                losses = _distillation_losses(losses, {**student, **output}, teacher, x, config.distill, factor)
            if config.l1 > 0:
                losses = add_l1_sparsity(losses, output, config.l1)
        losses["loss"].backward()
        grad_norm = nn.utils.clip_grad_norm_(main_params, config.clip or math.inf)
        # Checked before the step, so the weights (and the last checkpoint) stay finite. Under
        # DDP a bad sample on one process makes the averaged gradient non-finite on all of them,
        # so every process stops here together.
        if not (torch.isfinite(losses["loss"]) and torch.isfinite(grad_norm)):
            raise LictutorError(
                f"training diverged at step {step + 1} of {config.steps}: loss {losses['loss'].item():.4g} "
                f"(bpp {losses['bpp'].item():.4g}, mse {losses['mse'].item():.4g}), gradient norm "
                f"{grad_norm.item():.4g}; try a lower learning rate (lr) or stronger gradient clipping"
            )
        optimizer.step()

        aux_optimizer.zero_grad(set_to_none=True)
        aux = model.aux_loss()
        aux.backward()
        aux_optimizer.step()

        step += 1
        if step % log_every == 0 or step == config.steps:
            terms = [k for k in losses if k in ("rd", "l1") or k.startswith("kd_")]  # distilling, l1 > 0
            values = torch.stack([losses[k] for k in ("loss", "bpp", "mse", *terms)]).detach()
            if world > 1:  # the mean over processes is the value of the global batch
                dist.all_reduce(values)
                values /= world
            loss, bpp, mse, *kd = values.tolist()
            psnr = -10 * math.log10(max(mse, 1e-10))
            history.append({"step": step, "loss": loss, "bpp": bpp, "psnr": psnr, "aux": aux.item(),
                            "lr": optimizer.param_groups[0]["lr"], "time": time.perf_counter() - start,
                            **dict(zip(terms, kd))})
            bar.set_postfix(bpp=f"{bpp:.3f}", psnr=f"{psnr:.2f}")
        bar.update(1)
        interrupted = stop_after is not None and step >= stop_after
        if rank == 0 and ((checkpoint_every and step % checkpoint_every == 0) or interrupted):
            save_checkpoint(
                work, model, config, key=key, step=step, history=history,
                train_time=time.perf_counter() - start,
                optimizer=optimizer.state_dict(), aux_optimizer=aux_optimizer.state_dict(),
            )
        if interrupted:
            break
    bar.close()
    model.requires_grad_(True)  # frozen only for this run: the returned model trains as any other
    ckpt = {"key": key, "step": step, "history": history, "train_time": time.perf_counter() - start}
    if step < config.steps:  # stopped by stop_after
        return model.eval(), ckpt

    model.update(force=True)
    model.eval()
    if rank == 0:
        if cache:
            save_checkpoint(final, model, config, **ckpt)
        if out is not None:
            save_checkpoint(out, model, config, **ckpt)
        elif work.exists():
            work.unlink()
    return model, ckpt
