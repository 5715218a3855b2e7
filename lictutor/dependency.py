"""The statistical dependency a transform leaves in its coefficients (chapter 1).

A linear transform can make its coefficients *uncorrelated*, but not *independent*: near an
edge or in a texture many coefficients are large together, so their **magnitudes** stay
correlated (Simoncelli's "bow tie", :func:`lictutor.plot.conditional_histogram`). Divisive
normalization (GDN, Ballé, Laparra & Simoncelli 2016) divides each response by the energy of
its neighbours to remove that dependency. A coder that codes each coefficient on its own pays
for whatever dependency is left, so it is worth measuring:

* ``neighbour``: the correlation of ``|y_c(i, j)|`` with ``|y_c(i, j + 1)|``, the same channel
  at horizontally adjacent positions;
* ``neighbour_signed``: the same for ``y`` itself (what a linear transform decorrelates);
* ``across``: the correlation of ``|y_c|`` with ``|y_d|`` at the same position, over pairs of
  channels ``c ≠ d``.

Two more measurements say why: :func:`normalization_effect`, what each GDN of an encoder does
to the dependency across its channels and how much of its denominators other channels supply,
and :func:`dead_channels`, the ReLU units that never fire.

Each channel is first centred on its mean (so ``|y_c|`` is the size of its deviation, not of an
offset), and each correlation is averaged over the ``top`` channels with the largest variance
(channels a model leaves unused are nearly constant, and their correlations are noise),
pooled over images.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import torch

from lictutor.errors import LictutorError
from lictutor.images import pad, to_tensor

__all__ = ["magnitude_dependency", "latent_dependency", "dead_channels", "normalization_effect"]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 where either side is constant."""
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / scale) if scale > 0 else 0.0


def magnitude_dependency(latents, top: int = 8) -> dict:
    """``{"neighbour", "neighbour_signed", "across", "channels"}`` for ``latents``, a list of
    ``C×H×W`` arrays (one per image, same ``C``): the module docstring's three correlations
    over the ``top`` channels of largest variance, which ``"channels"`` lists."""
    latents = [np.asarray(y, dtype=np.float64) for y in latents]
    if not latents or any(y.ndim != 3 or y.shape[0] != latents[0].shape[0] or y.shape[2] < 2 for y in latents):
        raise LictutorError("magnitude_dependency needs C×H×W latents with the same C and W ≥ 2")
    total = sum(y.size / y.shape[0] for y in latents)
    mean = sum(y.sum(axis=(1, 2)) for y in latents) / total
    latents = [y - mean[:, None, None] for y in latents]
    variance = sum((y ** 2).sum(axis=(1, 2)) for y in latents) / total
    channels = [int(c) for c in np.argsort(-variance)[:max(1, min(top, variance.size))]]

    def pooled(fn, c):
        return np.concatenate([fn(y[c]).ravel() for y in latents])

    neighbour = [_corr(pooled(lambda t: np.abs(t[:, :-1]), c), pooled(lambda t: np.abs(t[:, 1:]), c)) for c in channels]
    signed = [_corr(pooled(lambda t: t[:, :-1], c), pooled(lambda t: t[:, 1:], c)) for c in channels]
    across = [_corr(pooled(np.abs, c), pooled(np.abs, d)) for c, d in combinations(channels, 2)]
    return {"neighbour": float(np.mean(neighbour)), "neighbour_signed": float(np.mean(signed)),
            "across": float(np.mean(across)) if across else float("nan"), "channels": channels}


def latent_dependency(model, images, top: int = 8) -> dict:
    """:func:`magnitude_dependency` of ``y = g_a(x)`` of ``model`` over ``images``
    (``(name, uint8 H×W×3)`` pairs; each padded to the model's down-sampling as for coding)."""
    if not images:
        raise LictutorError("latent_dependency needs at least one image")
    device = next(model.parameters()).device
    with torch.no_grad():
        latents = [model.g_a(pad(to_tensor(img)[None], model.downsampling_factor).to(device))[0].cpu().numpy()
                   for _, img in images]
    return magnitude_dependency(latents, top)


def _images_through(model, images, modules):
    """``{name: [(input, output), ...]}`` of the named ``modules`` of ``model``, one pair of
    ``C×H×W`` arrays per image, recorded with forward hooks while ``model`` codes ``images``."""
    seen = {name: [] for name in modules}
    hooks = [module.register_forward_hook(lambda mod, inp, out, name=name: seen[name].append(
        (inp[0][0].detach().cpu().numpy(), out[0].detach().cpu().numpy()))) for name, module in modules.items()]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for _, img in images:
                model(pad(to_tensor(img)[None], model.downsampling_factor).to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def dead_channels(model, images) -> dict:
    """``{name: (dead, channels)}`` for every ReLU of ``model``: how many of its output channels
    are never positive on ``images``, units that pass no signal (and, once dead, get no gradient)."""
    relus = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.ReLU)}
    seen = _images_through(model, images, relus)
    return {name: (int((~np.any([(out > 0).any(axis=(1, 2)) for _, out in pairs], axis=0)).sum()), pairs[0][1].shape[0])
            for name, pairs in seen.items()}


def normalization_effect(model, images, top: int = 8) -> dict:
    """What each GDN of ``model``'s ``g_a`` does on ``images``: ``{name: {"before", "after",
    "others"}}``, the ``across`` magnitude correlation (:func:`magnitude_dependency`) of its input
    ``u`` and of its output, over the ``top`` input channels of largest variance, and the share of
    its denominators ``β_i + Σ_j γ_ij u_j²`` (summed over channels and positions) that the other
    channels ``j ≠ i`` supply: 0 for a per-channel gain, as GDN starts (γ diagonal)."""
    gdns = {f"g_a.{i}": m for i, m in enumerate(model.g_a) if hasattr(m, "gamma_reparam")}
    out = {}
    for name, pairs in _images_through(model, images, gdns).items():
        channels = magnitude_dependency([u for u, _ in pairs], top)["channels"]
        before, after = (magnitude_dependency([t[channels] for t in ts], top)["across"] for ts in zip(*pairs))
        gdn = gdns[name]
        gamma = gdn.gamma_reparam(gdn.gamma).detach().cpu().numpy().astype(np.float64)
        beta = gdn.beta_reparam(gdn.beta).detach().cpu().numpy().astype(np.float64)
        energy = sum((u.astype(np.float64) ** 2).sum(axis=(1, 2)) for u, _ in pairs)  # Σ over positions of u_j²
        positions = sum(u[0].size for u, _ in pairs)
        others = (gamma - np.diag(np.diag(gamma))) @ energy
        out[name] = {"before": before, "after": after, "others": float(others.sum() / (gamma @ energy + beta * positions).sum())}
    return out
