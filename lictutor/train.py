"""The rate–distortion trainer every chapter uses, and the entropy-model fit that shares its loop.

:func:`train` minimises :class:`lictutor.losses.RateDistortionLoss`, ``λ · D + bpp``, on random
crops of the training photos; the entropy models' quantiles learn from the auxiliary loss with
an optimizer of their own. What it adds to a plain loop, each of which a reader would otherwise
write badly:

* a learning-rate schedule (linear warm-up, cosine decay: :func:`lr_factor`) and gradient
  clipping;
* a NaN/inf guard (on the loss and the gradient) that stops with a message naming the step;
* a tqdm bar showing bpp and PSNR;
* checkpoints every ``checkpoint_every`` steps, and on Ctrl-C (SIGINT) or SIGTERM, which stop
  the run between two steps; the next identical call resumes from there, says so, and gives
  the same weights as an uninterrupted run (batches and noise are functions of the step, not
  of a random-number state);
* a cache: a finished run is stored under ``$LICTUTOR_HOME/checkpoints`` by a key of its
  configuration (and of its warm-start weights), so re-running a notebook loads instead of
  retraining (:func:`lictutor.checkpoint.cache_path`); an entry that fails its checks is
  trained again, never used (:func:`lictutor.checkpoint.load_cached`);
* a warm start (``init_from``) from another run's weights, e.g. a neighbouring λ;
* knowledge distillation from a ``teacher``: the loss becomes ``rd · (λ·D + bpp) + Σ_t w_t ·
  KD_t`` with the weights of ``config.distill`` (:func:`lictutor.losses.distillation_loss`), held
  or decaying to 0 over training. The teacher's targets (ŷ, ẑ, x̂, Gaussian parameters,
  :func:`lictutor.intermediates.codec_forward`) are those of its evaluation-mode forward, with
  rounded latents (``round(y)`` for the context models, whose coder uses ``round(y − μ) + μ``),
  so they do not depend on the training noise and do not draw from it: the student's noise is
  the same as without a teacher. (With "noise", the student's ŷ differs from a target by its
  noise as well: ``E[(ŷ_s − ŷ_t)²]`` gains a constant 1/12, not a bias in the gradient.);
* an L1 penalty on the quantized latent, ``l1 · mean|ŷ|`` (Fu et al. 2023), added after the
  distillation terms, not weighted by their ``rd``: it pushes whole channels of ŷ to zero,
  which :class:`lictutor.models.FastLIC` then skips when coding;
* multi-process data parallelism (``torchrun``, DistributedDataParallel), equal to one process
  with the same global batch;
* ``update()`` of the entropy models at the end, so a trained model compresses right away.

:func:`fit_entropy_model` trains only the entropy model of a model whose transforms are fixed
(:class:`lictutor.config.EntropyFitConfig`), on crops of precomputed latents, with the same
loop (:class:`_Loop`). Checkpoints hold only tensors and plain Python values and load with
``weights_only=True`` (:mod:`lictutor.checkpoint`).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Dict

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm  # plain text bars: they render in terminals, notebooks and the built book

from lictutor import data, metrics, models, quantization
from lictutor.checkpoint import (  # noqa: F401 (CHECKPOINT_FORMAT, teacher_digest, weights_digest re-exported)
    CHECKPOINT_FORMAT, InitWeights, Teacher, cache_path, check_out, load_cached, load_finished,
    load_weights, read_checkpoint, save_checkpoint, state_dict_of, teacher_digest, teacher_model, weights_digest,
)
from lictutor.config import LATENT_STRIDE, TRANSFORMS, EntropyFitConfig, TrainConfig
from lictutor.config import budget_config  # noqa: F401 (re-exported: it lived here)
from lictutor.costs import record_training, run_summary, training_time  # noqa: F401 (re-exported for the chapters)
from lictutor.device import pick_device, seed_everything
from lictutor.errors import LictutorError
from lictutor.intermediates import codec_forward, record
from lictutor.losses import DISTORTIONS, RateDistortionLoss, add_l1_sparsity, distillation_loss, kd_factor  # noqa: F401 (DISTORTIONS re-exported)

__all__ = ["train", "fit_entropy_model", "lr_factor", "training_time", "run_summary"]

#: ``batch_losses(step) -> losses``: the losses of one step (``"loss"`` and ``"bpp"``, and
#: ``"mse"`` and further terms to log where there are), for :meth:`_Loop.run`
BatchLosses = Callable[[int], Dict[str, Tensor]]
#: the terms besides loss, bpp and mse that the history records: the RD loss and the L1 term
#: (``rd``, ``l1``) and every distillation term (``kd_<term>``)
_LOGGED = ("rd", "l1")


def lr_factor(step: int, config: TrainConfig) -> float:
    """The learning rate of ``step`` (0-based) over ``config.lr``: a linear warm-up over
    ``config.warmup`` steps, then a cosine decay from 1 to ``config.final_lr``."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    t = (step - config.warmup) / (config.steps - config.warmup)
    return config.final_lr + (1 - config.final_lr) * 0.5 * (1 + math.cos(math.pi * t))


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
    force: bool = False,
) -> tuple[nn.Module, dict]:
    """Train (or load from the cache) the model that ``config`` describes (see the module
    docstring for what the loop does).

    Returns ``(model, checkpoint)``: the model in eval mode with its entropy models updated,
    and the checkpoint dict with ``step``, ``history`` (one dict per ``log_every`` steps:
    step, loss, bpp, psnr, aux, lr of the global batch, the training time so far, and ``rd``,
    ``l1``, ``kd_<term>`` where they apply), ``train_time`` in seconds (the run's own, also
    when it comes from the cache) and ``cached`` (whether it did).

    ``init_from``: start from these weights (a checkpoint path or a state dict), part of the
    cache key; they may cover part of the model (e.g. only ``g_a``/``g_s`` of a factorized
    model in a hyperprior), the rest keeps its random initialization. ``out``: also write the
    final checkpoint there (atomically); a finished checkpoint of the same run found there is
    returned as from the cache; any other existing file is an error unless ``force``, checked
    before training starts. Periodic
    and interrupted checkpoints go next to the cache entry (``<entry>.part.pt``) and are
    resumed from there. ``stop_after``: stop (as if interrupted) after that many steps,
    leaving a checkpoint to resume. ``device``: default
    :func:`lictutor.device.pick_device`; under ``torchrun`` each process takes its own GPU.
    ``teacher``: distil from this model (or checkpoint path) with the weights of
    ``config.distill``; its parameters are part of the cache key.
    """
    if log_every < 1 or checkpoint_every < 0 or (stop_after is not None and stop_after < 1):
        raise LictutorError("log_every and stop_after must be >= 1 and checkpoint_every >= 0")
    init_state = state_dict_of(init_from) if init_from is not None else None
    teacher = _teacher(teacher, config)
    key, final = config.key(init_state, teacher), cache_path(config, init_state, teacher)
    out = None if out is None else check_out(Path(out), key, force)
    rank, world = _distributed()
    device = _train_device(device, world)
    found = None if stop_after is not None else (  # a finished run, in the cache or at out
        (load_cached(final, key, device) if cache else None) or load_finished(out, key, config.steps, device))
    if found is not None:
        model, ckpt = found
        record = {k: ckpt[k] for k in ("key", "step", "history", "train_time")}
        if rank == 0 and cache and not final.exists():  # found at out: back into the cache
            save_checkpoint(final, model, config, **record)
        if rank == 0 and out is not None and out.resolve() != final.resolve():
            save_checkpoint(out, model, config, **record)
        return _finished(key, model, ckpt, cached=True)
    model = _new_model(config, init_state, device)
    if teacher is not None:
        teacher.to(device).eval()
    loop = _Loop(model, config, world)
    work = final.with_name(final.stem + ".part.pt")
    loop.resume(work, key, announce=rank == 0)

    def save():
        save_checkpoint(work, model, config, key=key, **loop.progress(),
                        optimizer=loop.optimizer.state_dict(), aux_optimizer=loop.aux_optimizer.state_dict())

    batch_losses = _image_batches(config, model, teacher, device, rank, world)
    loop.run(batch_losses, desc=config.model, progress=progress and rank == 0, log_every=log_every,
             stop_after=stop_after, checkpoint_every=checkpoint_every, save=save if rank == 0 else None)
    ckpt = {"key": key, **loop.progress()}
    if loop.step < config.steps:  # stopped by stop_after
        return model.eval(), {**ckpt, "cached": False}
    model.update(force=True)
    model.eval()
    if rank == 0:
        if cache:
            save_checkpoint(final, model, config, **ckpt)
        if out is not None:
            save_checkpoint(out, model, config, **ckpt)
        work.unlink(missing_ok=True)
    return _finished(key, model, ckpt, cached=False)


def fit_entropy_model(config: EntropyFitConfig | TrainConfig, init_from: InitWeights, *, cache: bool = True,
                      progress: bool = True, device=None) -> tuple[nn.Module, dict]:
    """Train the entropy model of ``config.model`` on fixed transforms; returns
    ``(model, checkpoint)`` like :func:`train`, cached as ``entropy-<model>-<key>.pt``.

    ``init_from`` must hold ``g_a`` and ``g_s`` (see :func:`lictutor.zoo.transforms_of`), which
    stay fixed (:class:`lictutor.config.EntropyFitConfig`; a plain :class:`TrainConfig` gets the
    default ``shifts``). With the transforms frozen the distortion depends on no trainable
    parameter, so the loss is the rate alone and ``y = g_a(x)`` is computed once per training
    photo, flip and pixel offset. Each step draws ``config.batch`` crops of ``config.crop``
    pixels' worth of latent from those and minimizes their rate in bits per pixel under
    ``config.quantization`` -- about ten times faster than a full training step;
    ``config.lmbda`` plays no part.
    """
    if not isinstance(config, EntropyFitConfig):
        config = EntropyFitConfig.of(config)
    init_from = state_dict_of(init_from)
    device = pick_device() if device is None else torch.device(device)
    model = _new_model(config, init_from, device)
    missing = [k for k in model.state_dict() if k.split(".")[0] in TRANSFORMS and k not in init_from]
    if missing:
        raise LictutorError(f"init_from lacks the transforms' weights: {', '.join(missing[:3])}")
    path = cache_path(config, init_from)
    path = path.with_name("entropy-" + path.name)
    found = load_cached(path, path.stem, device) if cache else None
    if found is not None:
        return _finished(path.stem, *found, cached=True)
    loop = _Loop(model, config)
    loop.run(_latent_batches(config, model, device), desc=f"{config.model} entropy model", progress=progress)
    model.update(force=True)
    model.eval()
    ckpt = {"key": path.stem, **loop.progress()}
    if cache:
        save_checkpoint(path, model, config, **ckpt)
    return _finished(path.stem, model, ckpt, cached=False)


def _finished(key: str, model: nn.Module, ckpt: dict, cached: bool) -> tuple[nn.Module, dict]:
    """What :func:`train` and :func:`fit_entropy_model` return for a finished run, recorded
    for :func:`training_time`."""
    record_training(key, ckpt["train_time"])
    return model, {**ckpt, "cached": cached}


class _Loop:
    """The optimization loop :func:`train` and :func:`fit_entropy_model` share: Adam on the
    trainable parameters with the schedule of :func:`lr_factor` (``LambdaLR``) and gradient
    clipping, the NaN guard, the aux step on the entropy bottlenecks' quantiles, the history,
    the progress bar and periodic checkpoints. What a step's losses are is the caller's
    (:data:`BatchLosses`)."""

    def __init__(self, model: nn.Module, config: TrainConfig, world: int = 1):
        self.model, self.config, self.world = model, config, world
        if config.batch % world:
            raise LictutorError(f"batch {config.batch} is not divisible by {world} processes")
        modules = dict(model.named_modules())
        for name in config.frozen:
            if name not in modules or name == "":
                raise LictutorError(f"frozen: the model {config.model!r} has no module {name!r}")
            for pname, p in modules[name].named_parameters():
                p.requires_grad_(_is_aux(pname))
        self.params = [p for n, p in model.named_parameters() if not _is_aux(n) and p.requires_grad]
        if not self.params:
            raise LictutorError(f"frozen={config.frozen!r} leaves nothing of the model to train")
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr)
        self.aux_optimizer = torch.optim.Adam([p for n, p in model.named_parameters() if _is_aux(n)],
                                              lr=config.aux_lr)
        self.step, self.history, self.elapsed, self.start = 0, [], 0.0, time.perf_counter()

    def resume(self, path: Path, key: str, announce: bool = True) -> None:
        """Continue from the unfinished checkpoint of this run at ``path``, if there is one,
        and (``announce``) say so in one line."""
        if not path.exists():
            return
        ckpt = read_checkpoint(path, key)
        if announce:
            print(f"resuming {self.config.model} (λ = {self.config.lmbda:g}) at step {ckpt['step']} of "
                  f"{self.config.steps}, from the checkpoint an interrupted run left")
        load_weights(self.model, ckpt["state_dict"], f"checkpoint '{path}'")
        if "optimizer" in ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
        self.step, self.history, self.elapsed = ckpt["step"], ckpt["history"], ckpt["train_time"]
        self.start = time.perf_counter() - self.elapsed

    def progress(self) -> dict:
        """``{"step", "history", "train_time"}`` so far (what a checkpoint records)."""
        return {"step": self.step, "history": self.history, "train_time": time.perf_counter() - self.start}

    def run(self, batch_losses: BatchLosses, *, desc: str, progress: bool = True, log_every: int = 10,
            stop_after: int | None = None, checkpoint_every: int = 0, save=None) -> None:
        """Steps until ``config.steps`` (or ``stop_after`` steps, then ``save()``), with
        ``save()`` every ``checkpoint_every`` steps too; the trained parameters are trainable
        again afterwards. SIGINT or SIGTERM stop the loop after the step they arrive in, with
        ``save()``, raising :class:`KeyboardInterrupt` (:func:`_signals_between_steps`)."""
        config = self.config
        if self.step >= config.steps:  # resumed from a finished run's checkpoint: nothing to do
            return
        for group in self.optimizer.param_groups:  # a resumed optimizer has it already
            group.setdefault("initial_lr", config.lr)
        schedule = LambdaLR(self.optimizer, lambda s: lr_factor(s, config), last_epoch=self.step - 1)
        self.start = time.perf_counter() - self.elapsed
        self.model.train()
        with tqdm(total=config.steps, initial=self.step, disable=not progress, desc=desc) as bar, \
                _signals_between_steps() as caught:
            while self.step < config.steps:
                losses = batch_losses(self.step)
                aux = self._update(losses, desc)
                self.step += 1
                if self.step % log_every == 0 or self.step == config.steps:
                    self._log(losses, aux, bar)
                if self.step < config.steps:
                    schedule.step()  # the learning rate of the next step
                bar.update(1)
                interrupted = bool(caught) or (stop_after is not None and self.step >= stop_after)
                if save is not None and ((checkpoint_every and self.step % checkpoint_every == 0) or interrupted):
                    save()
                if caught:
                    bar.close()
                    resume = "; running the same again resumes from there" if save is not None else ""
                    raise KeyboardInterrupt(f"{desc} stopped at step {self.step} of {config.steps}{resume}")
                if interrupted:
                    break
        self.model.requires_grad_(True)  # frozen only for this run: the model trains as any other

    def _update(self, losses: Dict[str, Tensor], desc: str) -> Tensor:
        """One optimizer step on ``losses["loss"]`` and one on the aux loss; returns the latter."""
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = nn.utils.clip_grad_norm_(self.params, self.config.clip or math.inf)
        # Checked before the step, so the weights (and the last checkpoint) stay finite. Under
        # DDP a bad sample on one process makes the averaged gradient non-finite on all of them,
        # so every process stops here together.
        if not (torch.isfinite(losses["loss"]) and torch.isfinite(grad_norm)):
            parts = ", ".join(f"{k} {losses[k].item():.4g}" for k in ("bpp", "mse") if k in losses)
            raise LictutorError(
                f"training ({desc}) diverged at step {self.step + 1} of {self.config.steps}: loss "
                f"{losses['loss'].item():.4g} ({parts}), gradient norm {grad_norm.item():.4g}; try a "
                "lower learning rate (lr) or stronger gradient clipping"
            )
        self.optimizer.step()
        self.aux_optimizer.zero_grad(set_to_none=True)
        aux = self.model.aux_loss()
        aux.backward()
        self.aux_optimizer.step()
        return aux

    def _log(self, losses: Dict[str, Tensor], aux: Tensor, bar) -> None:
        """Append the step's values (means over processes) to the history and show them."""
        names = [k for k in ("loss", "bpp", "mse") if k in losses]
        terms = [k for k in losses if k in _LOGGED or k.startswith("kd_")]
        values = torch.stack([losses[k] for k in (*names, *terms)]).detach()
        if self.world > 1:  # the mean over processes is the value of the global batch
            dist.all_reduce(values)
            values /= self.world
        logged = dict(zip((*names, *terms), values.tolist()))
        entry = {"step": self.step, "loss": logged["loss"], "bpp": logged["bpp"]}
        shown = {"bpp": f"{logged['bpp']:.3f}"}
        if "mse" in logged:
            entry["psnr"] = -10 * math.log10(max(logged["mse"], 1e-10))
            shown["psnr"] = f"{entry['psnr']:.2f}"
        entry.update(aux=aux.item(), lr=self.optimizer.param_groups[0]["lr"],
                     time=time.perf_counter() - self.start, **{k: logged[k] for k in terms})
        self.history.append(entry)
        bar.set_postfix(**shown)


@contextmanager
def _signals_between_steps():
    """Within the block, SIGINT (Ctrl-C, a notebook's interrupt) and SIGTERM only append to
    the yielded list, which the loop checks after each step, so that a run never stops
    halfway through an optimizer step; a second signal stops at once. Signal handlers can
    be set in the main thread only: elsewhere the signals act as usual."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum, frame):
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _is_aux(name: str) -> bool:
    """The entropy bottlenecks' ``quantiles`` learn from the aux loss only."""
    return name.endswith("quantiles")


def _teacher(teacher: Teacher | None, config: TrainConfig) -> nn.Module | None:
    """The teacher as a model; it and ``config.distill`` come together or not at all."""
    if teacher is not None:
        teacher = teacher_model(teacher)
    if (teacher is None) != (not config.distill):
        raise LictutorError(
            "distillation needs both a teacher and config.distill weights (e.g. "
            "distill={'rd': 0.4, 'y': 0.2, 'x_hat': 0.2}); got "
            + ("no teacher" if teacher is None else "no weights")
        )
    return teacher


def _distributed() -> tuple[int, int]:
    """(rank, world size), joining the process group when started by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _train_device(device, world: int) -> torch.device:
    """``device``, else :func:`lictutor.device.pick_device`; one GPU per process under DDP."""
    if world > 1 and torch.cuda.is_available() and device is None:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    device = pick_device() if device is None else torch.device(device)
    if world > 1 and device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _new_model(config: TrainConfig, init_state, device: torch.device) -> nn.Module:
    """The model of ``config``, seeded, with the warm-start weights loaded, on ``device``."""
    seed_everything(config.seed)
    model = models.create(config.model, **config.model_args)
    if init_state is not None:
        load_weights(model, init_state, "init_from", partial=True)
    model.quantization = config.quantization
    return model.to(device)


def _image_batches(config: TrainConfig, model: nn.Module, teacher: nn.Module | None, device,
                   rank: int, world: int) -> BatchLosses:
    """The losses of a training step on image crops: the RD loss, with distillation from
    ``teacher`` and the L1 penalty where ``config`` asks for them."""
    net = model
    if world > 1:
        # The quantiles learn from the aux loss, a second backward pass that DDP's reducer does
        # not see, so DDP must ignore them. Their gradient depends on the (replicated)
        # parameters only, not on the data: it is already the same in every process.
        quantiles = [n for n, _ in model.named_parameters() if _is_aux(n)]
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, quantiles)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    trainset = data.training_set(config.images, crop=config.crop, seed=config.seed, augment=config.augment)
    criterion = RateDistortionLoss(config.lmbda, config.distortion)
    per_rank, features = config.batch // world, list(config.distill.get("features", ()))

    def batch_losses(step: int) -> Dict[str, Tensor]:
        # The global batch of step s holds samples s·batch, ..., s·batch + batch − 1; each
        # sample's crop and noise depend on its index only, so a resumed run, or one split
        # over processes, sees exactly the same data.
        first = step * config.batch + rank * per_rank
        indices = range(first, first + per_rank)
        x = torch.stack([trainset[i] for i in indices]).to(device)
        with quantization.sample_seeds([config.seed * 1_000_003 + i for i in indices]):
            with record(model, features) if teacher is not None else nullcontext({}) as student:
                output = net(x)
            losses = criterion(output, x)
            if teacher is not None:
                with torch.no_grad():
                    target = codec_forward(teacher, x, features)
                factor = kd_factor(step, config.steps, config.distill.get("decay", "none"))
                losses = distillation_loss(losses, {**student, **output}, target, config.distill, factor)
            if config.l1 > 0:
                losses = add_l1_sparsity(losses, output, config.l1)
        return losses

    return batch_losses


@torch.no_grad()
def _training_latents(model: nn.Module, config: EntropyFitConfig, device) -> list[Tensor]:
    """``g_a(x)`` of every training photo, as is and mirrored, at each pixel offset of
    ``config.shifts`` (``g_a`` down-samples by 16, so a shifted photo gives other latents).
    These variants stand in for the image trainer's random crops and flips. The photos are
    :func:`lictutor.data.training_photos`': with the smaller copies and the dead-leaves images
    that ``config.augment`` asks for; its per-crop changes (rotations, colour) do not apply."""
    f = model.downsampling_factor
    photos = data.training_photos(config.images, config.crop, config.augment)
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


def _latent_batches(config: EntropyFitConfig, model: nn.Module, device) -> BatchLosses:
    """The loss of an entropy-model step: the rate, in bits per pixel, of ``config.batch``
    random crops of the training latents (:func:`_training_latents`)."""
    latents = _training_latents(model, config, device)
    side = config.crop // LATENT_STRIDE
    gen = torch.Generator().manual_seed(config.seed)

    def batch_losses(step: int) -> Dict[str, Tensor]:
        crops = []
        for i in torch.randint(len(latents), (config.batch,), generator=gen).tolist():
            y = latents[i]
            top = torch.randint(y.shape[2] - side + 1, (1,), generator=gen).item()
            left = torch.randint(y.shape[3] - side + 1, (1,), generator=gen).item()
            crops.append(y[0, :, top:top + side, left:left + side])
        _, likelihoods = model.entropy_forward(torch.stack(crops))
        bpp = metrics.bpp_from_likelihoods(likelihoods, config.batch * config.crop**2)
        return {"loss": bpp, "bpp": bpp}

    return batch_losses
