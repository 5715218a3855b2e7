"""A discretized Gaussian mixture for integer latents, coded with one CDF table per element:
the non-anchor prior of :class:`lictutor.models.FastLIC` (Cheng, Sun, Takeuchi & Katto 2020).
"""

from __future__ import annotations

import statistics
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lictutor.device import float64
from lictutor.entropy import coder
from lictutor.entropy.gaussian import standard_normal_cdf
from lictutor.errors import LictutorError
from lictutor.layers import LowerBound

__all__ = ["GaussianMixtureConditional"]


class GaussianMixtureConditional(nn.Module):
    r"""A discretized Gaussian mixture for integer values, coded with one CDF per element.

    Cheng, Sun, Takeuchi & Katto (2020), "Learned Image Compression with Discretized
    Gaussian Mixture Likelihoods and Attention Modules" (CVPR 2020), eq. (8):

    .. math::
        p(v) = \sum_k w_k \Big[\Phi\Big(\frac{v - \mu_k + 1/2}{\sigma_k}\Big)
                              - \Phi\Big(\frac{v - \mu_k - 1/2}{\sigma_k}\Big)\Big]

    with ``w = softmax(logits)`` over the K components of each element, ``σ_k`` bounded
    below by ``scale_bound`` and ``p`` by ``likelihood_bound`` (as
    :class:`~lictutor.entropy.GaussianConditional`, whose upper-tail trick it uses).
    Parameters are (..., K) tensors; ``values`` have their shape without the K.

    **Coding.** A mixture has too many parameters for a table of CDFs fixed in advance (a
    Gaussian needs only its scale, :meth:`~lictutor.entropy.GaussianConditional.build_indexes`), so every
    element gets its own 16-bit CDF, built by encoder and decoder alike from the same
    parameters: on the integers ``c - r ... c + r`` around ``c = round(sum_k w_k μ_k)``,
    with ``r`` the power of two that holds every component's ``μ_k ± 6.1 σ_k`` (all but
    ``tail_mass``), at most ``max_radius``; values beyond are escape-coded by the rANS
    coder. Building ``n`` tables costs time: this is what the mixture's bits cost.
    Damaged strings raise :class:`LictutorError` (:mod:`lictutor.entropy.coder`).

    Args:
        scale_bound: lower bound on ``σ_k``.
        tail_mass: mass of each component left outside its table's range.
        likelihood_bound: likelihoods are clamped from below to this value.
        max_radius: largest ``r`` of a table.
    """

    precision = 16  #: bits of the CDFs (CompressAI's rANS coder)

    def __init__(
        self,
        scale_bound: float = 0.11,
        tail_mass: float = 1e-9,
        likelihood_bound: float = 1e-9,
        max_radius: int = 128,
    ):
        super().__init__()
        self.lower_bound_scale = LowerBound(scale_bound)
        self.likelihood_lower_bound = LowerBound(likelihood_bound)
        self.tail_z = -statistics.NormalDist().inv_cdf(tail_mass / 2)
        self.max_radius = int(max_radius)

    def _pmf(self, values: Tensor, logits: Tensor, means: Tensor, scales: Tensor) -> Tensor:
        """``p(values)``; ``values`` (...), parameters (..., K)."""
        weights = torch.softmax(logits, -1)
        scales = self.lower_bound_scale(scales)
        magnitude = (values.unsqueeze(-1) - means).abs()
        upper = standard_normal_cdf((0.5 - magnitude) / scales)
        lower = standard_normal_cdf((-0.5 - magnitude) / scales)
        return (weights * (upper - lower)).sum(-1)

    def likelihood(self, values: Tensor, logits: Tensor, means: Tensor, scales: Tensor) -> Tensor:
        """``p(values)``, bounded below by ``likelihood_bound``; differentiable."""
        return self.likelihood_lower_bound(self._pmf(values, logits, means, scales))

    @torch.no_grad()
    def _tables(self, logits: Tensor, means: Tensor, scales: Tensor):
        """``(centres, (cdfs, lengths, offsets))``: one CDF per element, in order."""
        K = logits.size(-1)
        logits, means = float64(logits.reshape(-1, K)), float64(means.reshape(-1, K))
        scales = float64(self.lower_bound_scale(scales.reshape(-1, K)))
        centres = torch.round((torch.softmax(logits, -1) * means).sum(-1))
        if not bool(torch.isfinite(centres).all() & torch.isfinite(scales).all()):
            raise LictutorError("mixture parameters are not finite (has the model diverged?)")
        reach = ((means - centres[:, None]).abs() + self.tail_z * scales).amax(-1)
        reach = reach.clamp(1, self.max_radius)
        radius = torch.exp2(torch.ceil(torch.log2(reach))).long().clamp_max(self.max_radius)
        # Elements of equal radius are tabulated together; the rANS coder takes a list of
        # CDFs (of any lengths) and an offset (the table's first value, -r) per element.
        cdfs: List[List[int]] = [[]] * len(centres)
        for r in radius.unique().tolist():
            at = torch.nonzero(radius == r).squeeze(1)
            offsets = torch.arange(-r, r + 1, dtype=torch.double, device=at.device)
            support = centres[at, None] + offsets
            pmf = self._pmf(support, logits[at, None], means[at, None], scales[at, None])
            tail = (1 - pmf.sum(-1, keepdim=True)).clamp_min(0)  # the escape symbol's share
            rows = _quantized_cdf(torch.cat((pmf, tail), -1), self.precision).tolist()
            for i, row in zip(at.tolist(), rows):
                cdfs[i] = row
        radius = radius.tolist()
        return centres, (cdfs, [2 * r + 3 for r in radius], [-r for r in radius])

    @torch.no_grad()
    def compress(self, values: Tensor, logits: Tensor, means: Tensor, scales: Tensor) -> bytes:
        """One string for ``values`` (integers, as floats); parameters shaped ``values``
        plus K."""
        centres, tables = self._tables(logits, means, scales)
        symbols = float64(values.reshape(-1)) - centres
        coder.check_range(symbols)
        return coder.encode(symbols.long().tolist(), list(range(len(centres))), tables)

    @torch.no_grad()
    def decompress(self, string: bytes, logits: Tensor, means: Tensor, scales: Tensor) -> Tensor:
        """Inverse of :meth:`compress`: the values, shaped like ``means`` without the K."""
        centres, tables = self._tables(logits, means, scales)
        symbols = coder.decode(string, list(range(len(centres))), tables, "mixture")
        decoded = torch.tensor(symbols, dtype=torch.int64, device=centres.device)
        return (decoded.double() + centres).to(means).reshape(means.shape[:-1])


def _quantized_cdf(pmf: Tensor, precision: int) -> Tensor:
    """Integer CDFs (n, L + 1) from pmfs (n, L): every bin gets at least 1 of the
    ``2**precision`` counts (so every symbol stays codable), the rest in proportion to its
    probability, and the rounding remainder goes to the likeliest bin."""
    total, bins = 1 << precision, pmf.size(-1)
    pmf = pmf / pmf.sum(-1, keepdim=True)
    freq = 1 + torch.floor(pmf * (total - bins)).long()
    freq[torch.arange(len(freq), device=freq.device), pmf.argmax(-1)] += total - freq.sum(-1)
    return F.pad(torch.cumsum(freq, -1), (1, 0)).int()
