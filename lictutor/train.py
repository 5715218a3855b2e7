"""The rate–distortion trainer every chapter uses.

Minimises, as CompressAI's examples do (Ballé et al. 2017, eq. 2; 2018, eq. 7)::

    L = λ · 255² · MSE(x, x̂) + bpp        (distortion="mse")
    L = λ · (1 − MS-SSIM(x, x̂)) + bpp     (distortion="ms-ssim")
    L = λ · NLP(x, x̂) + bpp               (distortion="nlp", Ballé et al. 2016)

with bpp = Σ −log₂ p(ŷ) / (number of pixels). The entropy models' quantiles are trained
by the auxiliary loss on an optimizer of their own.

What it adds to a plain loop, each of which a reader would otherwise write badly:

* a learning-rate schedule (linear warm-up, cosine decay) and gradient clipping;
* a NaN/inf guard that stops with a message naming the step;
* a tqdm bar showing bpp and PSNR;
* checkpoints every ``checkpoint_every`` steps, and resume after an interruption that gives the
  same weights as an uninterrupted run (batches and noise are functions of the step, not of
  a random-number state);
* a cache: a finished run is stored under ``$LICTUTOR_HOME/checkpoints`` by a key of its
  configuration, so re-running a notebook loads instead of retraining;
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from lictutor import quantization
from lictutor.errors import LictutorError

__all__ = [
    "TrainConfig",
    "RateDistortionLoss",
    "train",
    "load_checkpoint",
    "save_checkpoint",
    "cache_path",
]

CHECKPOINT_FORMAT = "lictutor-checkpoint-1"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model (and so its cache key)."""

    model: str = "factorized"  #: name in :data:`lictutor.models.MODELS`
    model_args: dict = field(default_factory=dict)  #: e.g. ``{"N": 128, "M": 192}``
    lmbda: float = 0.0067
    distortion: str = "mse"  #: "mse", "ms-ssim" or "nlp"
    steps: int = 1000
    batch: int = 8
    crop: int = 128
    lr: float = 1e-3
    aux_lr: float = 1e-3
    warmup: int = 0  #: steps of linear warm-up
    final_lr: float = 0.01  #: cosine decay to ``lr * final_lr``; 1.0 keeps lr constant
    clip: float = 1.0  #: max gradient norm (0: no clipping)
    seed: int = 0
    images: str | None = None  #: training folder; None: the book's offline photos
    init: str | None = None  #: warm start from this checkpoint file (weights only)
    budget: str = ""  #: the budget that chose these settings, part of the cache key

    def key(self) -> str:
        """A short hash of the configuration: the checkpoint cache key."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class RateDistortionLoss(nn.Module):
    """``λ · D + bpp``, with D scaled as in CompressAI (255² · MSE for "mse")."""

    def __init__(self, lmbda: float, distortion: str = "mse"):
        super().__init__()
        if distortion not in ("mse", "ms-ssim", "nlp"):
            raise LictutorError(f"unknown distortion {distortion!r}; use mse, ms-ssim or nlp")
        self.lmbda, self.distortion = lmbda, distortion

    def forward(self, out: dict, x: torch.Tensor) -> dict:
        from lictutor import metrics

        num_pixels = x.size(0) * x.size(2) * x.size(3)
        bpp = metrics.bpp_from_likelihoods(out["likelihoods"], num_pixels)
        x_hat = out["x_hat"]
        mse = torch.mean((x_hat - x) ** 2)
        if self.distortion == "mse":
            dist = 255**2 * mse
        elif self.distortion == "ms-ssim":
            dist = 1 - metrics.ms_ssim(x_hat.clamp(0, 1), x)
        else:
            dist = metrics.nlp_distance(x_hat, x)
        return {"loss": self.lmbda * dist + bpp, "bpp": bpp, "mse": mse, "distortion": dist}


def cache_path(config: TrainConfig) -> Path:
    """Where the finished model of ``config`` is cached."""
    from lictutor.data import lictutor_home

    return lictutor_home() / "checkpoints" / f"{config.model}-{config.key()}.pt"


def save_checkpoint(path, model, config: TrainConfig, **extra) -> None:
    """Write atomically (a crash mid-write never leaves a half checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": config.model,
        "model_args": dict(config.model_args),
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "state_dict": model.state_dict(),
        **extra,
    }
    tmp = path.with_suffix(path.suffix + ".part")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu") -> tuple[nn.Module, dict]:
    """Load a checkpoint written by :func:`train`: returns ``(model, checkpoint dict)``.

    Loads with ``weights_only=True``: a checkpoint from an untrusted source cannot run code.
    Anything that is not a lictutor checkpoint gets a :class:`LictutorError`.
    """
    from lictutor import models

    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise LictutorError(f"no checkpoint at '{path}'") from None
    except Exception as err:
        raise LictutorError(f"cannot read checkpoint '{path}': {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise LictutorError(f"'{path}' is not a lictutor checkpoint")
    model = models.create(ckpt["model"], **ckpt["model_args"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as err:
        raise LictutorError(f"checkpoint '{path}' does not fit model {ckpt['model']!r}: {err}") from None
    return model.eval(), ckpt


def _lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay from 1 to ``final_lr``."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    t = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.final_lr + (1 - config.final_lr) * 0.5 * (1 + math.cos(math.pi * t))


def _distributed() -> tuple[int, int]:
    """(rank, world size), joining the process group when started by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _aux_parameters(model: nn.Module):
    return [p for n, p in model.named_parameters() if n.endswith("quantiles")]


def _main_parameters(model: nn.Module):
    return [p for n, p in model.named_parameters() if not n.endswith("quantiles")]


def train(
    config: TrainConfig,
    *,
    out: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    cache: bool = True,
    progress: bool = True,
    log_every: int = 10,
    device: str | torch.device | None = None,
    stop_after: int | None = None,
) -> tuple[nn.Module, dict]:
    """Train (or load from the cache) the model that ``config`` describes.

    Returns ``(model, checkpoint)``, the model in eval mode with its entropy models updated
    and the checkpoint holding ``history`` (a list of logged steps) and ``train_time``.

    ``out``: also write the final (and periodic) checkpoints there; an existing unfinished
    checkpoint there of the same configuration is resumed. ``stop_after``: stop (as if
    interrupted) after that many steps, leaving a checkpoint to resume.
    """
    from lictutor import data, models
    from lictutor.device import pick_device, seed_everything

    final = cache_path(config)
    if cache and final.exists() and stop_after is None:
        model, ckpt = load_checkpoint(final)
        if out is not None and Path(out).resolve() != final.resolve():
            save_checkpoint(out, model, config, **{k: ckpt[k] for k in ("history", "train_time", "step")})
        return model, ckpt

    rank, world = _distributed()
    if config.batch % world:
        raise LictutorError(f"batch {config.batch} is not divisible by {world} processes")
    device = torch.device(device) if device is not None else pick_device()
    seed_everything(config.seed)
    model = models.create(config.model, **config.model_args).to(device)
    if config.init:
        init_model, _ = load_checkpoint(config.init)
        model.load_state_dict(init_model.state_dict())
    optimizer = torch.optim.Adam(_main_parameters(model), lr=config.lr)
    aux_optimizer = torch.optim.Adam(_aux_parameters(model), lr=config.aux_lr)
    criterion = RateDistortionLoss(config.lmbda, config.distortion)
    step, history, elapsed = 0, [], 0.0

    work = Path(out) if out is not None else final.with_suffix(".part.pt")
    if work.exists():
        ckpt = torch.load(work, map_location=device, weights_only=True)
        if ckpt.get("format") == CHECKPOINT_FORMAT and ckpt.get("config") == json.loads(
            json.dumps(asdict(config), default=str)
        ):
            model.load_state_dict(ckpt["state_dict"])
            if "optimizer" in ckpt:
                optimizer.load_state_dict(ckpt["optimizer"])
                aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
            step, history, elapsed = ckpt["step"], ckpt["history"], ckpt.get("train_time", 0.0)

    net = model
    if world > 1:
        # The quantiles learn from the aux loss, a second backward pass that DDP's reducer
        # does not see: DDP ignores them and their gradients are averaged by hand below.
        quantiles = [n for n, _ in model.named_parameters() if n.endswith("quantiles")]
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, quantiles)
        net = nn.parallel.DistributedDataParallel(model)
    trainset = data.training_set(config.images, crop=config.crop, seed=config.seed)
    per_rank = config.batch // world
    bar = tqdm(total=config.steps, initial=step, disable=not progress or rank != 0, desc=config.model)
    start = time.perf_counter() - elapsed
    model.train()
    while step < config.steps:
        first = step * config.batch + rank * per_rank
        indices = list(range(first, first + per_rank))
        x = torch.stack([trainset[i] for i in indices]).to(device)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config)

        optimizer.zero_grad(set_to_none=True)
        with quantization.sample_seeds([config.seed * 1_000_003 + i for i in indices]):
            out_ = net(x)
        losses = criterion(out_, x)
        if not torch.isfinite(losses["loss"]):
            raise LictutorError(
                f"training diverged at step {step}: loss is {losses['loss'].item()} "
                f"(bpp {losses['bpp'].item():.4g}, mse {losses['mse'].item():.4g}); "
                "try a lower learning rate (lr) or stronger gradient clipping"
            )
        losses["loss"].backward()
        if config.clip:
            nn.utils.clip_grad_norm_(_main_parameters(model), config.clip)
        optimizer.step()

        aux_optimizer.zero_grad(set_to_none=True)
        aux = model.aux_loss()
        aux.backward()
        if world > 1:
            for p in _aux_parameters(model):
                dist.all_reduce(p.grad)
                p.grad /= world
        aux_optimizer.step()

        step += 1
        if step % log_every == 0 or step == config.steps:
            psnr = -10 * math.log10(max(losses["mse"].item(), 1e-10))
            history.append(
                {"step": step, "loss": losses["loss"].item(), "bpp": losses["bpp"].item(),
                 "psnr": psnr, "aux": aux.item(), "lr": optimizer.param_groups[0]["lr"]}
            )
            bar.set_postfix(bpp=f"{losses['bpp'].item():.3f}", psnr=f"{psnr:.2f}")
        bar.update(1)
        interrupted = stop_after is not None and step >= stop_after
        if rank == 0 and ((checkpoint_every and step % checkpoint_every == 0) or interrupted):
            save_checkpoint(
                work, model, config, step=step, history=history,
                train_time=time.perf_counter() - start,
                optimizer=optimizer.state_dict(), aux_optimizer=aux_optimizer.state_dict(),
            )
        if interrupted:
            bar.close()
            return model.eval(), {"step": step, "history": history}
    bar.close()

    model.update(force=True)
    model.eval()
    ckpt = {"step": step, "history": history, "train_time": time.perf_counter() - start}
    if rank == 0:
        if cache:
            save_checkpoint(final, model, config, **ckpt)
        if out is not None:
            save_checkpoint(out, model, config, **ckpt)
        elif work.exists():
            work.unlink()
    return model, ckpt
