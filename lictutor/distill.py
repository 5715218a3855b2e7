r"""Knowledge distillation: Hinton's soft targets, and the losses that distil a learned codec.

**Soft targets** (Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network",
sec. 2). A softmax at temperature ``T``, ``q_i = exp(z_i/T) / Σ_j exp(z_j/T)``, softens the
teacher's output; the student matches it by the cross-entropy of the two tempered softmaxes
(here the KL divergence: the same gradient, and 0 for a perfect match), multiplied by ``T²``
because the gradient scales as ``1/T²`` (end of sec. 2). As ``T → ∞`` with zero-mean logits
(sec. 2.1)::

    T² · KL(softmax(v/T) ‖ softmax(z/T))  →  1/(2N) · Σ_i (z_i − v_i)²     (N classes)

so distillation at high temperature *is* logit matching (:func:`logit_matching_loss`).

**Distilling a codec** (as Allemand et al. 2025, "Efficient learned image compression through
knowledge distillation": ``0.2·MSE(ŷ_s, ŷ_t) + 0.2·MSE(x̂_s, x̂_t) + 0.4·RD``). A codec has no
softmax, but its entropy model gives every latent element a categorical distribution: the
discretized Gaussian over the integers ``k`` (Ballé et al. 2018, sec. 3),

    p(k) = Φ((k + ½ − μ)/σ) − Φ((k − ½ − μ)/σ),

which temperature softens exactly as it softens a softmax: ``p_T(k) ∝ p(k)^{1/T}``
(:func:`tempered_log_pmf`, :func:`entropy_model_kl`). :func:`record` and :func:`codec_forward`
collect a model's intermediate values (ŷ, ẑ, the Gaussian parameters, features of named layers)
with forward hooks during its ordinary forward pass, so any model with lictutor's (and
CompressAI's) module names can be student or teacher; :func:`codec_distill_losses` turns two
such records into the weighted distillation terms that :func:`lictutor.train.train` adds to the
rate–distortion loss. :func:`distill_recipes` names the recipes chapter 5b compares (from
scratch, latent + output, the tempered KL alone and added) and :func:`train_students` trains a
grid of students of several widths with them.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Dict, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lictutor.errors import LictutorError
from lictutor.layers import LowerBoundFunction

__all__ = [
    "soft_target_loss",
    "hard_soft_loss",
    "logit_matching_loss",
    "fit_classifier",
    "integer_support",
    "discretized_gaussian_log_pmf",
    "tempered_log_pmf",
    "entropy_model_kl",
    "record",
    "codec_forward",
    "feature_loss",
    "codec_distill_losses",
    "check_weights",
    "kd_factor",
    "KD_TERMS",
    "DEFAULT_WEIGHTS",
    "kl_rate_weight",
    "distill_recipes",
    "train_student",
    "train_students",
]

#: distillation terms of a codec, each weighted by ``weights[name]`` (see :func:`check_weights`)
KD_TERMS = ("y", "z", "x_hat", "kl", "features")

#: weights of the distillation loss ``rd · (λ·D + bpp) + Σ weights[t] · KD_t``; ``T`` and ``K``
#: are the temperature and the support half-width of the entropy-model KL, ``features`` maps
#: layer names to weights
DEFAULT_WEIGHTS = {"rd": 1.0, "y": 0.0, "z": 0.0, "x_hat": 0.0, "kl": 0.0, "features": {}, "T": 1.0, "K": 16}

#: schedules of the distillation terms' weights over training (an optional ``weights["decay"]``):
#: ``"none"`` keeps them, ``"linear"`` and ``"cosine"`` take them from full at the first step
#: to 0 at the last, so a student learns from its teacher early and from the data late (chapter
#: 7's three-step distillation; Fu et al. 2023 give no schedule, these are our choices)
DECAYS = ("none", "linear", "cosine")

#: GaussianConditional's default lower bound on σ
SCALE_BOUND = 0.11


def _check_temperature(T) -> None:
    if not (isinstance(T, (int, float)) and math.isfinite(T) and T > 0):
        raise LictutorError(f"the temperature T must be a finite number > 0, got {T!r}")


def _check_same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise LictutorError(
            f"{what}: the student's shape {tuple(student.shape)} differs from the teacher's "
            f"{tuple(teacher.shape)}"
        )


# --- Hinton's soft targets -------------------------------------------------------------------


def soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, T: float = 1.0) -> Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))``, softmax over classes (dim 1), summed over
    classes (and any further dimensions), mean over the batch.

    Logits are ``(batch, classes, ...)``; the teacher's get no gradient.
    """
    _check_temperature(T)
    _check_same_shape(student_logits, teacher_logits, "soft_target_loss")
    if student_logits.dim() < 2:
        raise LictutorError(f"logits must be (batch, classes, ...), got shape {tuple(student_logits.shape)}")
    log_q = F.log_softmax(student_logits / T, dim=1)
    log_p = F.log_softmax(teacher_logits.detach() / T, dim=1)
    kl = F.kl_div(log_q, log_p, reduction="sum", log_target=True) / student_logits.size(0)
    return T**2 * kl


def hard_soft_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, T: float = 1.0, alpha: float = 0.5
) -> Tensor:
    """``alpha · soft_target_loss + (1 − alpha) · cross-entropy(student, labels)``.

    Hinton et al. (sec. 2) found a small weight on the hard labels best; the ``T²`` inside the
    soft term keeps the balance when ``T`` changes.
    """
    if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise LictutorError(f"alpha must be a number in [0, 1], got {alpha!r}")
    soft = soft_target_loss(student_logits, teacher_logits, T)
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def logit_matching_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``1/(2N) · Σ_i (z_i − v_i)²`` of the zero-mean logits, mean over the batch: the
    ``T → ∞`` limit of :func:`soft_target_loss` (Hinton et al. 2015, sec. 2.1)."""
    _check_same_shape(student_logits, teacher_logits, "logit_matching_loss")
    z = student_logits - student_logits.mean(dim=1, keepdim=True)
    v = teacher_logits.detach() - teacher_logits.detach().mean(dim=1, keepdim=True)
    return 0.5 * ((z - v) ** 2).mean(dim=1).sum() / student_logits.size(0)


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


# --- the entropy model as a categorical distribution ------------------------------------------


def integer_support(center: Tensor, K: int) -> Tensor:
    """The integers ``round(center) + k``, ``k = −K, ..., K``: shape ``center.shape + (2K+1,)``."""
    if not (isinstance(K, int) and K >= 1):
        raise LictutorError(f"the support half-width K must be a positive integer, got {K!r}")
    offsets = torch.arange(-K, K + 1, device=center.device, dtype=center.dtype)
    return torch.round(center.detach()).unsqueeze(-1) + offsets


def discretized_gaussian_log_pmf(
    values: Tensor, means: Optional[Tensor], scales: Tensor, scale_bound: float = SCALE_BOUND
) -> Tensor:
    """``log p(v)``, ``p(v) = Φ((v−μ+½)/σ) − Φ((v−μ−½)/σ)``, ``σ = max(scales, scale_bound)``.

    ``values`` has one more (last) dimension than ``means``/``scales``: the support. As
    :class:`lictutor.entropy.GaussianConditional` does, both arguments of ``Φ`` are taken in the
    lower tail (``|v − μ|``); the difference is formed in log space (``log_ndtr``), so tail
    values far beyond float precision keep finite logarithms: tempering raises them to
    ``1/T``, where a floor (the coder's 1e-9) would weigh a lot. The bound passes gradients
    that push σ up (:class:`lictutor.layers.LowerBoundFunction`).
    """
    bound = torch.tensor([float(scale_bound)], device=scales.device, dtype=scales.dtype)
    sigma = LowerBoundFunction.apply(scales, bound).unsqueeze(-1)
    centered = values if means is None else values - means.unsqueeze(-1)
    magnitude = torch.abs(centered)
    upper = torch.special.log_ndtr((0.5 - magnitude) / sigma)
    lower = torch.special.log_ndtr((-0.5 - magnitude) / sigma)
    # log(Φ(b) − Φ(a)) = log Φ(b) + log(1 − Φ(a)/Φ(b)); the clamp keeps σ → ∞ finite
    return upper + torch.log(-torch.expm1(torch.clamp(lower - upper, max=-1e-30)))


def tempered_log_pmf(
    values: Tensor, means: Optional[Tensor], scales: Tensor, T: float = 1.0, scale_bound: float = SCALE_BOUND
) -> Tensor:
    """``log p_T`` over the support ``values`` (last dimension): ``p_T(k) ∝ p(k)^{1/T}``,
    renormalised over the support (at ``T = 1``: the discretized Gaussian given the support)."""
    _check_temperature(T)
    return F.log_softmax(discretized_gaussian_log_pmf(values, means, scales, scale_bound) / T, dim=-1)


def entropy_model_kl(
    student_means: Optional[Tensor],
    student_scales: Tensor,
    teacher_means: Optional[Tensor],
    teacher_scales: Tensor,
    T: float = 1.0,
    K: int = 16,
    scale_bound: float = SCALE_BOUND,
) -> Tensor:
    """``T² · KL(p_T^teacher ‖ p_T^student)`` of every latent element's discretized Gaussian,
    mean over the elements. Means ``None`` are 0 (scale hyperprior).

    Both distributions are taken on one shared support: the ``2K+1`` integers around the
    teacher's rounded mean (:func:`integer_support`) -- the values the teacher's coder
    spends its bits on, up to the truncation: for scales beyond about K/2 the support cuts off
    tail mass, and both distributions are renormalised over it. The teacher gets no gradient.
    """
    _check_same_shape(student_scales, teacher_scales, "entropy_model_kl (scales)")
    center = teacher_means if teacher_means is not None else torch.zeros_like(teacher_scales)
    support = integer_support(center.detach(), K)
    t_means = None if teacher_means is None else teacher_means.detach()
    log_p = tempered_log_pmf(support, t_means, teacher_scales.detach(), T, scale_bound)
    log_q = tempered_log_pmf(support, student_means, student_scales, T, scale_bound)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    return T**2 * kl.mean()


# --- intermediate values of a codec ----------------------------------------------------------


@contextmanager
def record(model: nn.Module, features: Sequence[str] = ()) -> Iterator[Dict[str, object]]:
    """Collect, during the forward passes run inside the block, a codec's intermediate values.

    Yields a dict filled with ``"y"`` (output of ``g_a``), ``"y_hat"`` (input of ``g_s``: what
    the decoder sees), ``"z_hat"`` (output of ``entropy_bottleneck``, for models that also have
    a ``gaussian_conditional``), ``"scales"``/``"means"`` (the Gaussian parameters the
    ``gaussian_conditional`` is called with, ``means`` None for a zero-mean model), and
    ``"features"``: the outputs of the modules named in ``features`` (names as in
    ``model.named_modules()``, e.g. ``"g_s.3"``). Hooks, not a re-implementation of the
    forward pass: it works for every model in :mod:`lictutor.models` (the context model
    included) and for CompressAI's, under DistributedDataParallel too.
    """
    modules = dict(model.named_modules())
    for name in ("g_a", "g_s", *features):
        if name not in modules or name == "":
            raise LictutorError(
                f"the model {type(model).__name__} has no module {name!r}; some it has: "
                f"{', '.join(list(n for n in modules if n)[:12])}, ..."
            )
    got: Dict[str, object] = {"features": {}}

    def gaussian(module, args, kwargs):
        got["scales"] = args[1] if len(args) > 1 else kwargs["scales"]
        got["means"] = args[2] if len(args) > 2 else kwargs.get("means")

    hooks = [
        modules["g_a"].register_forward_hook(lambda m, args, out: got.__setitem__("y", out)),
        modules["g_s"].register_forward_pre_hook(lambda m, args: got.__setitem__("y_hat", args[0])),
    ]
    if "gaussian_conditional" in modules:
        hooks.append(modules["gaussian_conditional"].register_forward_pre_hook(gaussian, with_kwargs=True))
        if "entropy_bottleneck" in modules:
            hooks.append(modules["entropy_bottleneck"].register_forward_hook(
                lambda m, args, out: got.__setitem__("z_hat", out[0])))
    for name in features:
        hooks.append(modules[name].register_forward_hook(
            lambda m, args, out, name=name: got["features"].__setitem__(name, out)))
    try:
        yield got
    finally:
        for hook in hooks:
            hook.remove()


def codec_forward(model: nn.Module, x: Tensor, features: Sequence[str] = ()) -> Dict[str, object]:
    """``model(x)`` (its ``x_hat`` and ``likelihoods``) together with what :func:`record`
    collects during that one pass."""
    with record(model, features) as got:
        out = model(x)
    return {**got, **out}


def feature_loss(
    student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], weights: Mapping[str, float]
) -> Tensor:
    """``Σ_name weights[name] · MSE(student[name], teacher[name])`` over recorded features.

    Student and teacher features must have the same shape (a narrower student needs a
    projection, not provided here).
    """
    total = 0.0
    for name, w in weights.items():
        _check_same_shape(student[name], teacher[name], f"features of {name!r}")
        total = total + w * F.mse_loss(student[name], teacher[name].detach())
    return torch.as_tensor(total)


def codec_distill_losses(
    student: Mapping[str, object], teacher: Mapping[str, object], weights: Mapping
) -> Dict[str, Tensor]:
    """The distillation terms with a positive weight, unweighted (``"features"`` already
    weighted per layer), from the records of :func:`codec_forward`:

    * ``"y"``: ``MSE(ŷ_s, ŷ_t)``, ``"z"``: ``MSE(ẑ_s, ẑ_t)`` (latent units);
    * ``"x_hat"``: ``MSE(x̂_s, x̂_t)`` (pixels in [0, 1]);
    * ``"kl"``: :func:`entropy_model_kl` at ``weights["T"]``, ``weights["K"]``;
    * ``"features"``: :func:`feature_loss`.
    """
    weights = check_weights(weights)
    terms = {}
    for name, key in (("y", "y_hat"), ("z", "z_hat"), ("x_hat", "x_hat")):
        if weights[name] > 0:
            if key not in student or key not in teacher:
                raise LictutorError(f"distillation term {name!r}: the models have no {key} (no hyperprior?)")
            _check_same_shape(student[key], teacher[key], f"distillation term {name!r} ({key})")
            terms[name] = F.mse_loss(student[key], teacher[key].detach())
    if weights["kl"] > 0:
        if "scales" not in student or "scales" not in teacher:
            raise LictutorError(
                "distillation term 'kl' needs the Gaussian parameters of both models: recorded when a "
                "model's forward calls its gaussian_conditional module (the factorized and fast models do not)"
            )
        terms["kl"] = entropy_model_kl(student["means"], student["scales"], teacher["means"], teacher["scales"],
                                       T=weights["T"], K=weights["K"])
    if weights["features"]:
        terms["features"] = feature_loss(student["features"], teacher["features"], weights["features"])
    return terms


def check_weights(weights: Mapping) -> dict:
    """:data:`DEFAULT_WEIGHTS` updated with ``weights``, checked: unknown names, negative or
    non-finite weights, ``T <= 0``, ``K`` not a positive integer, or no positive distillation
    weight raise :class:`LictutorError`."""
    if not isinstance(weights, Mapping):
        raise LictutorError(f"distillation weights must be a dict, got {type(weights).__name__}")
    unknown = set(weights) - set(DEFAULT_WEIGHTS) - {"decay"}
    if unknown:
        raise LictutorError(
            f"unknown distillation weights: {', '.join(sorted(map(str, unknown)))}; "
            f"use {', '.join(DEFAULT_WEIGHTS)}"
        )
    full = {**DEFAULT_WEIGHTS, **weights}
    layers = full["features"]
    if not isinstance(layers, Mapping) or not all(isinstance(n, str) and n for n in layers):
        raise LictutorError(f"features must map layer names to weights, e.g. {{'g_s.3': 0.1}}, got {layers!r}")
    values = {n: full[n] for n in ("rd", "y", "z", "x_hat", "kl")}
    values.update({f"features[{n!r}]": w for n, w in layers.items()})
    for name, w in values.items():
        if isinstance(w, bool) or not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise LictutorError(f"distillation weight {name} must be a finite number >= 0, got {w!r}")
    _check_temperature(full["T"])
    if isinstance(full["K"], bool) or not (isinstance(full["K"], int) and full["K"] >= 1):
        raise LictutorError(f"the support half-width K must be a positive integer, got {full['K']!r}")
    if not any(full[n] > 0 for n in ("y", "z", "x_hat", "kl")) and not any(w > 0 for w in layers.values()):
        raise LictutorError(f"no distillation term has a positive weight: set one of {', '.join(KD_TERMS)}")
    # numbers as floats: {"y": 1} and {"y": 1.0} are one recipe, with one cache key
    full.update({n: float(full[n]) for n in ("rd", "y", "z", "x_hat", "kl", "T")})
    full["features"] = {n: float(w) for n, w in layers.items()}
    decay = full.pop("decay", "none")
    if decay not in DECAYS:
        raise LictutorError(f"unknown decay {decay!r}; use one of {', '.join(DECAYS)}")
    if decay != "none":  # absent by default, so the weights (and cache keys) of older recipes hold
        full["decay"] = decay
    return full


def kd_factor(step: int, steps: int, decay: str = "none") -> float:
    """The factor on the distillation terms at ``step`` (0-based) of ``steps`` under ``decay``
    (:data:`DECAYS`): 1 throughout for ``"none"``; from 1 at step 0 to 0 at the last step,
    ``1 - s`` for ``"linear"`` and ``(1 + cos πs) / 2`` for ``"cosine"``, ``s = step / (steps - 1)``."""
    if decay not in DECAYS:
        raise LictutorError(f"unknown decay {decay!r}; use one of {', '.join(DECAYS)}")
    if decay == "none" or steps <= 1:
        return 1.0
    s = min(max(step / (steps - 1), 0.0), 1.0)
    return 1.0 - s if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * s))


# --- students of a codec (chapter 5b) ---------------------------------------------------------


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

    Every dict is checked (:func:`check_weights`); temperatures are stored as floats, so
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


def train_student(config, weights: Mapping, teacher: Optional[nn.Module] = None, **kwargs):
    """Train (or load from the cache) one student: ``config`` (a
    :class:`lictutor.train.TrainConfig`) with its ``distill`` set to ``weights``; empty
    ``weights`` train from scratch and ignore ``teacher``. ``kwargs`` go to
    :func:`lictutor.train.train`. Returns ``(model, checkpoint)``."""
    from dataclasses import replace

    from lictutor.train import train

    if weights and teacher is None:
        raise LictutorError("a distilled student needs a teacher")
    config = replace(config, distill=dict(weights))
    return train(config, teacher=teacher if weights else None, **kwargs)


def train_students(
    base,
    plan: Mapping[int, Sequence[str]],
    recipes: Mapping[str, Mapping],
    teachers: Mapping[float, nn.Module],
    pretrain_steps: int = 0,
    **kwargs,
) -> Dict[tuple, tuple]:
    """Train a grid of students: for every width ``N`` in ``plan``, every recipe name in
    ``plan[N]`` (a key of ``recipes``) and every ``λ`` of ``teachers``, the student ``base``
    (a :class:`lictutor.train.TrainConfig`) with ``model_args["N"] = N``, ``lmbda = λ``,
    distilled from ``teachers[λ]``. All students of a width start from the same initialization
    and see the same batches and noise: recipes differ by their loss only. Returns
    ``{(N, recipe, λ): (model, checkpoint)}``.

    ``pretrain_steps`` > 0 first trains one model per width and ``λ`` from scratch on the RD
    loss alone, for that many steps (``base`` otherwise, so with its learning rate and
    schedule), and starts every recipe of that width and ``λ`` from it: the recipes then act on
    a student that has learned something already, and every student, twin or distilled, has
    had ``pretrain_steps + base.steps`` steps.
    """
    from dataclasses import replace

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
