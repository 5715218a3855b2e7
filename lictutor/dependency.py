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

__all__ = ["magnitude_dependency", "latent_dependency"]


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
