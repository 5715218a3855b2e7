"""The learned, fully factorized density of Ballé, Minnen, Singh, Hwang & Johnston (2018),
"Variational image compression with a scale hyperprior", appendix 6.1: the prior of the
factorized models and of every hyperprior's side information ``z``.

Written from scratch with CompressAI's parameter and buffer names, so CompressAI state dicts
load into ours (and back); the tests compare likelihoods, the auxiliary loss, the CDF tables
and the compressed bytes with ``compressai.entropy_models.EntropyBottleneck``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lictutor.entropy.base import EntropyModel
from lictutor.errors import LictutorError
from lictutor.quantization import quantize

__all__ = ["EntropyBottleneck"]


class EntropyBottleneck(EntropyModel):
    r"""Fully factorized learned density, one per channel (Ballé et al. 2018, app. 6.1).

    The cumulative distribution of each channel is a small monotone network

    .. math::
        c(x) = f_K \circ \dots \circ f_1(x),\quad
        f_k(x) = g_k(H^{(k)} x + b^{(k)}),\quad
        g_k(x) = x + a^{(k)} \odot \tanh(x),\quad f_K = \mathrm{sigmoid}(H^{(K)} x + b^{(K)})

    with ``H = softplus(matrices[k])`` (positive, so ``c`` is increasing) and
    ``a = tanh(factors[k])`` (> -1, so each ``g_k`` is increasing). ``filters`` are the
    hidden widths: (3, 3, 3, 3) gives K = 5 layers, 1 -> 3 -> 3 -> 3 -> 3 -> 1.
    :meth:`_logits_cumulative` returns the logits (pre-sigmoid) of ``c``.

    The probability of a rounded value -- and the density of a noisy one, the density
    convolved with the unit box -- is ``p(y) = c(y + 1/2) - c(y - 1/2)``.

    ``quantiles`` (C, 1, 3) track the ``tail_mass/2``, 1/2 and ``1 - tail_mass/2``
    quantiles of each channel, trained by :meth:`loss` (the "aux loss"). They set the
    median around which values are rounded and the support of the CDF tables.

    Args:
        channels: number of channels C.
        init_scale: initial spread of the density (and of the quantiles, ±init_scale).
        filters: hidden widths of the cumulative network.
        tail_mass: probability mass left outside the coded range (escape-coded).
        likelihood_bound: likelihoods are clamped from below to this value.
        entropy_coder_precision: bits of the integer CDFs (16, as CompressAI).
    """

    def __init__(
        self,
        channels: int,
        init_scale: float = 10,
        filters: Tuple[int, ...] = (3, 3, 3, 3),
        tail_mass: float = 1e-9,
        likelihood_bound: float = 1e-9,
        entropy_coder_precision: int = 16,
    ):
        super().__init__(likelihood_bound, entropy_coder_precision)
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        self.init_scale = float(init_scale)
        self.tail_mass = float(tail_mass)

        # Initialization of tensorflow-compression: the network starts as (roughly) a
        # logistic of scale init_scale.
        widths = (1,) + self.filters + (1,)
        scale = self.init_scale ** (1 / (len(self.filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(self.filters) + 1):
            init = math.log(math.expm1(1 / scale / widths[i + 1]))  # softplus^-1
            matrix = torch.full((channels, widths[i + 1], widths[i]), init)
            bias = torch.empty(channels, widths[i + 1], 1).uniform_(-0.5, 0.5)
            self.matrices.append(nn.Parameter(matrix))
            self.biases.append(nn.Parameter(bias))
            if i < len(self.filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))

        init = torch.tensor([-self.init_scale, 0.0, self.init_scale])
        self.quantiles = nn.Parameter(init.repeat(channels, 1, 1))  # (C, 1, 3)
        target = math.log(2 / self.tail_mass - 1)  # logit(1 - tail_mass / 2)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]))

    # -- the density --------------------------------------------------------------

    def _logits_cumulative(self, inputs: Tensor, stop_gradient: bool) -> Tensor:
        """Logits of c(inputs); ``inputs`` is (C, 1, N), one row of values per channel.

        ``stop_gradient`` detaches the network's parameters (the aux loss must move
        only ``quantiles``).
        """
        logits = inputs
        for i in range(len(self.filters) + 1):
            matrix, bias = self.matrices[i], self.biases[i]
            if stop_gradient:
                matrix, bias = matrix.detach(), bias.detach()
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.filters):
                factor = self.factors[i].detach() if stop_gradient else self.factors[i]
                logits = logits + torch.tanh(factor) * torch.tanh(logits)
        return logits

    def _likelihood(
        self, inputs: Tensor, stop_gradient: bool = False, sign_trick: bool = True
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """``(c(x + 1/2) - c(x - 1/2), lower logits, upper logits)``.

        With ``sign_trick`` (tensorflow-compression's formulation) the difference is
        taken on the side of the median where the sigmoids are small: in the upper
        tail ``sigmoid(u) - sigmoid(l)`` subtracts two numbers close to 1 and loses
        all precision in float32, while the equal ``sigmoid(-l) - sigmoid(-u)`` does
        not. (CompressAI 1.2.x dropped the trick -- its issue #182 -- so :meth:`update`
        calls this with ``sign_trick=False`` to build bit-identical tables.) Unlike
        ``-sign(l + u)``, our sign is never 0 (which would give a likelihood of 0).
        """
        lower = self._logits_cumulative(inputs - 0.5, stop_gradient)
        upper = self._logits_cumulative(inputs + 0.5, stop_gradient)
        if sign_trick:
            sign = torch.where(lower + upper > 0, -1.0, 1.0).to(lower.dtype).detach()
            likelihood = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        else:
            likelihood = torch.sigmoid(upper) - torch.sigmoid(lower)
        return likelihood, lower, upper

    def _get_medians(self) -> Tensor:
        return self.quantiles[:, :, 1:2]  # (C, 1, 1)

    def forward(self, x: Tensor, training: Optional[bool] = None,
                mode: Optional[str] = None) -> Tuple[Tensor, Tensor]:
        """``(y_hat, likelihoods)``, both shaped like ``x`` (B, C, ...).

        Training: ``y_hat = x + U(-1/2, 1/2)``. Evaluation: ``y_hat = round(x - m) + m``
        with ``m`` the channel medians. ``training`` defaults to ``self.training``.

        ``mode`` picks another training relaxation (:mod:`lictutor.quantization`):
        ``"noise"`` (the default above), ``"ste"`` (rounded values with an identity
        gradient, for both ``y_hat`` and the likelihoods) or ``"mixed"`` (``y_hat``
        rounded with STE for the decoder, likelihoods of the noisy values for the rate).
        In evaluation ``mode`` is ignored: values are always rounded.

        The noise is drawn on ``x`` as it comes, batch first (so that
        :func:`lictutor.quantization.sample_seeds` works); CompressAI draws it after
        reshaping to (C, 1, N), so the same seed puts the same numbers on different
        elements -- the tests compare train-mode likelihoods on a given noisy input.
        """
        if training is None:
            training = self.training
        if x.dim() < 2 or x.size(1) != self.channels:
            raise LictutorError(
                f"expected (B, {self.channels}, ...) input, got shape {tuple(x.shape)}"
            )
        medians = self._get_medians().reshape(1, self.channels, *([1] * (x.dim() - 2)))
        mode = (mode or "noise") if training else "dequantize"
        if mode not in ("noise", "ste", "mixed", "dequantize"):
            raise LictutorError(f"unknown training quantization {mode!r}; use noise, ste or mixed")
        outputs = quantize(x, "noise" if mode == "mixed" else mode, medians)

        likelihood = self.likelihood(outputs)
        if mode == "mixed":
            outputs = quantize(x, "ste", medians)
        return outputs, likelihood

    def likelihood(self, values: Tensor) -> Tensor:
        """``p(v) = c(v + 1/2) − c(v − 1/2)`` for ``values`` (B, C, ...) taken as they are.

        ``c`` is the learned cumulative of the channel. For noisy values this is the density
        of ``y + u`` (the learned density convolved with a unit box); at rounded values it
        is the probability mass the coder uses. Bounded below by ``likelihood_bound``.
        """
        # (B, C, ...) -> (C, B, ...) -> (C, 1, N): a row of values per channel.
        perm = (1, 0, *range(2, values.dim()))  # swaps B and C; its own inverse
        per_channel = values.permute(*perm)
        likelihood, _, _ = self._likelihood(per_channel.reshape(self.channels, 1, -1))
        if self.use_likelihood_bound:
            likelihood = self.likelihood_lower_bound(likelihood)
        return likelihood.reshape(per_channel.shape).permute(*perm).contiguous()

    def loss(self) -> Tensor:
        """Aux loss: ``sum |logit c(quantiles) - target|``, moving only ``quantiles``
        towards the ``tail_mass/2``, 1/2 and ``1 - tail_mass/2`` quantiles."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.target).sum()

    # -- tables -------------------------------------------------------------------

    def _density_params(self) -> Tensor:
        params = [self.quantiles, *self.matrices, *self.biases, *self.factors]
        return torch.cat([p.detach().reshape(-1) for p in params]).cpu()

    @torch.no_grad()
    def update(self, force: bool = False, update_quantiles: bool = False) -> bool:
        """Build the CDF tables from the current density, exactly as CompressAI does.

        Channel ``c`` gets the integers ``m_c - minima_c, ..., m_c + maxima_c`` around
        its median ``m_c``, with ``minima``/``maxima`` the ceiled distances to the
        outer quantiles; their pmf plus the two tails' mass (one escape symbol) is
        quantized to a 16-bit CDF. Returns False (and does nothing) if tables exist
        and ``force`` is False. ``update_quantiles`` first re-fits ``quantiles`` by
        bisection (:meth:`_update_quantiles`).
        """
        if self._offset.numel() > 0 and not force:
            return False
        if update_quantiles:
            self._update_quantiles()

        medians = self.quantiles[:, 0, 1]
        minima = torch.clamp(torch.ceil(medians - self.quantiles[:, 0, 0]).int(), min=0)
        maxima = torch.clamp(torch.ceil(self.quantiles[:, 0, 2] - medians).int(), min=0)

        pmf_start = medians - minima
        pmf_length = maxima + minima + 1
        max_length = int(pmf_length.max().item())
        samples = torch.arange(max_length, device=medians.device)
        samples = samples[None, :] + pmf_start[:, None, None]  # (C, 1, max_length)

        pmf, lower, upper = self._likelihood(samples, stop_gradient=True, sign_trick=False)
        pmf = pmf[:, 0, :]
        # Mirrors CompressAI: the upper tail is taken at the last column of the padded
        # sample grid (max_length), not at each channel's own last symbol.
        tail_mass = torch.sigmoid(lower[:, 0, :1]) + torch.sigmoid(-upper[:, 0, -1:])

        self._set_tables(self._pmf_to_cdf(pmf, tail_mass, pmf_length, max_length), -minima, pmf_length + 2)
        return True

    @torch.no_grad()
    def _update_quantiles(self, search_radius=1e5, rtol=1e-4, atol=1e-3) -> None:
        """Set ``quantiles`` by bisection on ``logit c(q) = target`` (CompressAI's fast
        alternative to training them with the aux loss)."""
        shape = (self.channels, 1, 1)
        for i, target in enumerate(self.target):
            low = torch.full(shape, -search_radius, device=self.quantiles.device)
            high = torch.full(shape, search_radius, device=self.quantiles.device)
            f = lambda y: self._logits_cumulative(y, stop_gradient=True)  # noqa: E731
            low = torch.where(target <= f(high), low, high)
            high = torch.where(f(low) <= target, high, low)
            while not torch.isclose(low, high, rtol=rtol, atol=atol).all():
                mid = (low + high) / 2
                f_mid = f(mid)
                low = torch.where(f_mid <= target, mid, low)
                high = torch.where(f_mid >= target, mid, high)
            self.quantiles[:, :, i] = ((low + high) / 2)[:, :, 0]

    # -- coding -------------------------------------------------------------------

    def _channel_maps(self, batch: int, spatial: Sequence[int], device) -> Tuple[Tensor, Tensor]:
        C, n = self.channels, len(spatial)
        view = (1, C) + (1,) * n
        indexes = torch.arange(C, dtype=torch.int32, device=device).view(view)
        indexes = indexes.expand(batch, C, *spatial)
        medians = self._get_medians().detach().reshape(view)
        return indexes, medians

    def compress(self, x: Tensor) -> List[bytes]:
        """Code ``round(x - median)`` of each batch item of ``x`` (B, C, ...) to bytes.

        Rebuilds stale CDF tables first (see :mod:`lictutor.entropy.base`).
        """
        if x.dim() < 3 or x.size(1) != self.channels:
            raise LictutorError(
                f"expected (B, {self.channels}, H, ...) input, got shape {tuple(x.shape)}"
            )
        indexes, medians = self._channel_maps(x.size(0), x.shape[2:], x.device)
        return self.compress_with_indexes(x, indexes, medians)

    def decompress(self, strings: Sequence[bytes], size: Sequence[int]) -> Tensor:
        """Decode ``strings`` (one per batch item) to a ``(B, C, *size)`` tensor."""
        indexes, medians = self._channel_maps(len(strings), tuple(size), self.quantiles.device)
        return self.decompress_with_indexes(strings, indexes, medians, medians.dtype)
