r"""Every loss the models here train on, with its equation.

**Rate–distortion** (:class:`RateDistortionLoss`), as CompressAI's examples (Ballé et al. 2017,
eq. 2; 2018, eq. 7)::

    L = λ · 255² · MSE(x, x̂) + bpp        (distortion="mse")
    L = λ · (1 − MS-SSIM(x, x̂)) + bpp     (distortion="ms-ssim")
    L = λ · NLP(x, x̂) + bpp               (distortion="nlp", Ballé, Laparra & Simoncelli 2016)

with bpp = Σ −log₂ p(ŷ) / (number of pixels). **L1 sparsity** (:func:`l1_sparsity`, Fu et al.
2023): ``mean |ŷ|``, added with a weight; it pushes whole channels of ŷ to zero.

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
(:func:`tempered_log_pmf`, :func:`entropy_model_kl`). :func:`codec_distill_losses` turns the
records of a student and a teacher (:func:`lictutor.intermediates.codec_forward`) into the
weighted terms (:data:`DEFAULT_WEIGHTS`, :func:`check_weights`) that
:func:`distillation_loss` adds to the rate–distortion loss, held or decaying over training
(:func:`kd_factor`).
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lictutor import metrics
from lictutor.errors import LictutorError
from lictutor.layers import LowerBoundFunction

__all__ = [
    "DISTORTIONS",
    "RateDistortionLoss",
    "l1_sparsity",
    "add_l1_sparsity",
    "soft_target_loss",
    "hard_soft_loss",
    "logit_matching_loss",
    "SCALE_BOUND",
    "integer_support",
    "discretized_gaussian_log_pmf",
    "tempered_log_pmf",
    "entropy_model_kl",
    "feature_loss",
    "KD_TERMS",
    "DEFAULT_WEIGHTS",
    "DECAYS",
    "check_weights",
    "kd_factor",
    "codec_distill_losses",
    "distillation_loss",
]

#: what :class:`RateDistortionLoss` can measure the distortion with
DISTORTIONS = ("mse", "ms-ssim", "nlp")

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


# --- rate and distortion --------------------------------------------------------------------


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


def l1_sparsity(out: Mapping[str, Tensor]) -> Tensor:
    """``mean |y_hat|`` of a model's forward output: the L1 penalty of Fu et al. (2023), to add
    to the rate-distortion loss with a weight, pushing whole channels of ``y_hat`` to zero
    (which :meth:`lictutor.models.FastLIC.compress` then skips)."""
    return out["y_hat"].abs().mean()


def add_l1_sparsity(losses: dict, output: Mapping[str, Tensor], weight: float) -> dict:
    """``losses`` with ``loss`` + ``weight · mean|ŷ|`` (:func:`l1_sparsity` of the model output),
    the penalty unweighted as ``l1``, and the loss without it as ``rd`` (unless ``losses`` has
    one already, from distillation).

    The mean runs over every element of the batch's ŷ, so the penalty's gradient with respect
    to an element is ``weight · sign(ŷ) / ŷ.numel()`` (0 where ŷ is exactly 0).
    """
    term = l1_sparsity(output)
    return {**losses, "loss": losses["loss"] + weight * term, "rd": losses.get("rd", losses["loss"]), "l1": term}


# --- Hinton's soft targets -------------------------------------------------------------------


def _check_temperature(T) -> None:
    if not (isinstance(T, (int, float)) and math.isfinite(T) and T > 0):
        raise LictutorError(f"the temperature T must be a finite number > 0, got {T!r}")


def _check_same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise LictutorError(
            f"{what}: the student's shape {tuple(student.shape)} differs from the teacher's "
            f"{tuple(teacher.shape)}"
        )


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


# --- distilling a codec -----------------------------------------------------------------------


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
    weighted per layer), from the records of :func:`lictutor.intermediates.codec_forward`:

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


def distillation_loss(losses: dict, student: Mapping[str, object], teacher: Mapping[str, object],
                      weights: Mapping, factor: float = 1.0) -> dict:
    """``losses`` (of :class:`RateDistortionLoss`) with ``loss`` = ``rd · (λ·D + bpp) + factor ·
    Σ w_t · KD_t``, the RD loss as ``rd`` and every distillation term ``t`` as ``kd_t``
    (:func:`codec_distill_losses` of the two records); ``factor`` is the decay schedule's
    (:func:`kd_factor`)."""
    terms = codec_distill_losses(student, teacher, weights)
    total = weights["rd"] * losses["loss"]
    for name, value in terms.items():  # "features" is weighted layer by layer already
        total = total + factor * (1.0 if name == "features" else weights[name]) * value
    return {**losses, "loss": total, "rd": losses["loss"], **{f"kd_{n}": v for n, v in terms.items()}}
