"""Entropy models: how many bits a latent costs, and the tables that code it.

* :class:`EntropyModel` -- the shared machinery: integer CDF tables
  (``_quantized_cdf``, ``_offset``, ``_cdf_length``) and coding symbols with them
  through CompressAI's rANS coder (``compressai.ans``; entropy coding itself is not
  the lesson here).
* :class:`EntropyBottleneck` -- the learned, fully factorized density of Ballé,
  Minnen, Singh, Hwang & Johnston (2018), "Variational image compression with a scale
  hyperprior", appendix 6.1.
* :class:`GaussianConditional` -- the conditional Gaussian of the same paper (sec. 3):
  each element has its own scale (and optionally mean), predicted by a hyperprior.

Written from scratch, with CompressAI's parameter and buffer names, so CompressAI
state dicts load into ours (and back). The tests compare likelihoods, the auxiliary
loss, the CDF tables and the compressed bytes with ``compressai.entropy_models``.

**When are the CDF tables rebuilt?** Forgetting ``update()`` after training is
CompressAI's most reported pitfall, so here ``compress`` and ``decompress`` rebuild
the tables themselves when they are *stale*:

* never built (``_offset`` is empty), or
* the density parameters (``quantiles``, ``matrices``, ``biases``, ``factors``)
  differ from those the tables were built from -- e.g. after an optimizer step.

Tables loaded from a checkpoint count as fresh for the parameters loaded with them,
so a published model decodes with exactly its published tables. ``update(force=False)``
itself keeps CompressAI's meaning (do nothing if tables exist); ``update(force=True)``
always rebuilds.

**Damaged strings.** CompressAI's rANS decoder trusts its input: it reads past the end of a
short string (an empty one crashes the process) and never reports an error, and its encoder
loops forever on values near 2³¹. So symbols must lie within ±:data:`MAX_SYMBOL`, strings are
decoded from a zero-padded copy, and a decoded string is accepted only if re-encoding its
symbols gives back exactly the same bytes -- anything else raises :class:`LictutorError`.
(Escape-coded values are raw bits, so a change to one of them is still a valid string: the
container's CRC is what catches such damage.)
"""

from __future__ import annotations

import math
import statistics
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lictutor.errors import LictutorError
from lictutor.layers import LowerBound
from lictutor.quantization import add_uniform_noise, dequantize, quantize

__all__ = [
    "EntropyModel",
    "EntropyBottleneck",
    "GaussianConditional",
    "get_scale_table",
    "pmf_to_quantized_cdf",
    "MAX_SYMBOL",
]

#: Largest magnitude of a coded symbol (integer offset from the median or mean). Values
#: outside the CDF tables are escape-coded 4 bits at a time; far beyond this the rANS
#: coder's 32-bit arithmetic overflows. A trained model stays orders of magnitude below.
MAX_SYMBOL = 2**24


def pmf_to_quantized_cdf(pmf: Sequence[float], precision: int = 16) -> Tensor:
    """Integer CDF (0 ... 2**precision) for a pmf, every symbol getting frequency >= 1.

    The last pmf entry is the tail mass (the escape symbol for out-of-range values).
    Uses CompressAI's C++ routine so that our tables are bit-identical to its.
    """
    from compressai._CXX import pmf_to_quantized_cdf as _cxx_pmf_to_quantized_cdf

    return torch.IntTensor(_cxx_pmf_to_quantized_cdf(list(pmf), precision))


class EntropyModel(nn.Module):
    """Base class: likelihood lower bound, CDF tables, coding with per-symbol indexes.

    A subclass defines the density (``forward`` returns ``(y_hat, likelihoods)``) and
    ``update(force)``, which fills three buffers:

    * ``_quantized_cdf`` (n_cdfs, max_len + 2) int32: one integer CDF per row;
    * ``_cdf_length`` (n_cdfs,): used length of each row (pmf length + 2);
    * ``_offset`` (n_cdfs,): the symbol coded by entry 0 of each row.

    Each element of the latent is coded with the row given by its ``index``.
    """

    #: buffers whose size is only known after ``update()``; resized when loading.
    _dynamic_buffers: Tuple[str, ...] = ("_quantized_cdf", "_offset", "_cdf_length")

    _offset: Tensor
    _quantized_cdf: Tensor
    _cdf_length: Tensor

    def __init__(self, likelihood_bound: float = 1e-9, entropy_coder_precision: int = 16):
        super().__init__()
        self.entropy_coder_precision = int(entropy_coder_precision)
        self.use_likelihood_bound = likelihood_bound > 0
        if self.use_likelihood_bound:
            self.likelihood_lower_bound = LowerBound(likelihood_bound)
        self.register_buffer("_offset", torch.IntTensor())
        self.register_buffer("_quantized_cdf", torch.IntTensor())
        self.register_buffer("_cdf_length", torch.IntTensor())

    # -- tables -------------------------------------------------------------------

    def update(self, force: bool = False) -> bool:
        """Build the CDF tables; return True if they were (re)built."""
        raise NotImplementedError

    def tables_stale(self) -> bool:
        """True if the CDF tables must be (re)built before coding."""
        return self._offset.numel() == 0

    def _ensure_tables(self) -> None:
        if self.tables_stale():
            self.update(force=True)

    def _pmf_to_cdf(
        self, pmf: Tensor, tail_mass: Tensor, pmf_length: Tensor, max_length: int
    ) -> Tensor:
        """One quantized CDF per row of ``pmf`` (its first ``pmf_length[i]`` entries
        plus the tail mass), zero-padded to ``max_length + 2``."""
        cdf = torch.zeros((len(pmf_length), max_length + 2), dtype=torch.int32)
        for i, p in enumerate(pmf):
            prob = torch.cat((p[: pmf_length[i]], tail_mass[i]), dim=0)
            row = pmf_to_quantized_cdf(prob.tolist(), self.entropy_coder_precision)
            cdf[i, : row.size(0)] = row
        return cdf.to(pmf.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Tables have a data-dependent size: give our buffers the incoming size first
        # (CompressAI does this in CompressionModel.load_state_dict, and only when ours
        # are empty; doing it here makes any container -- and re-loading -- work).
        for name in self._dynamic_buffers:
            incoming = state_dict.get(prefix + name)
            ours = getattr(self, name)
            if incoming is not None and ours is not None and incoming.shape != ours.shape:
                setattr(self, name, ours.new_empty(incoming.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- coding -------------------------------------------------------------------

    def compress_with_indexes(
        self, x: Tensor, indexes: Tensor, medians: Optional[Tensor] = None
    ) -> List[bytes]:
        """Round ``x`` around ``medians`` and rANS-code each batch item: one string each.

        ``indexes`` (same shape as ``x``) picks the CDF row of every element.
        """
        from compressai import ans

        if x.dim() < 2:
            raise LictutorError(f"expected a batched (B, C, ...) tensor, got {tuple(x.shape)}")
        if x.shape != indexes.shape:
            raise LictutorError(
                "x and indexes must have the same shape, "
                f"got {tuple(x.shape)} and {tuple(indexes.shape)}"
            )
        centered = x if medians is None else x - medians
        if not bool(torch.all(centered.abs() <= MAX_SYMBOL)):  # also False for NaN
            raise LictutorError(
                f"cannot entropy-code latent values beyond ±{MAX_SYMBOL} or not finite "
                "(has the model diverged?)"
            )
        self._ensure_tables()
        symbols = quantize(x, "symbols", medians)
        cdfs, lengths, offsets = self._tables_as_lists()
        encoder = ans.RansEncoder()
        return [
            encoder.encode_with_indexes(
                symbols[i].reshape(-1).tolist(),
                indexes[i].reshape(-1).int().tolist(),
                cdfs,
                lengths,
                offsets,
            )
            for i in range(symbols.size(0))
        ]

    def decompress_with_indexes(
        self,
        strings: Sequence[bytes],
        indexes: Tensor,
        medians: Optional[Tensor] = None,
        dtype: torch.dtype = torch.float,
    ) -> Tensor:
        """Inverse of :meth:`compress_with_indexes`: decoded symbols + ``medians``."""
        from compressai import ans

        if not isinstance(strings, (list, tuple)) or not all(
            isinstance(s, (bytes, bytearray)) for s in strings
        ):
            raise LictutorError("strings must be a list of bytes, one per batch item")
        if len(strings) != indexes.size(0):
            raise LictutorError(
                f"got {len(strings)} strings for a batch of {indexes.size(0)} index maps"
            )
        self._ensure_tables()
        tables = self._tables_as_lists()
        decoder, encoder = ans.RansDecoder(), ans.RansEncoder()
        symbols = torch.empty(indexes.shape, dtype=torch.int32)
        for i, s in enumerate(strings):
            s, index = bytes(s), indexes[i].reshape(-1).int().tolist()
            # Zeros after the string keep a damaged string's reads inside our buffer (a valid
            # string reads none of them): 4 bytes per symbol, plus what escape codes can read.
            padding = bytes(8 * len(index) + 16 * len(s) + 4096)
            values = decoder.decode_with_indexes(s + padding, index, *tables)
            decoded = torch.tensor(values, dtype=torch.int64)
            too_large = bool(decoded.abs().gt(MAX_SYMBOL).any())  # checked first: see MAX_SYMBOL
            if too_large or encoder.encode_with_indexes(values, index, *tables) != s:
                raise LictutorError(f"damaged entropy-coded string (item {i} of the batch)")
            symbols[i] = decoded.to(torch.int32).reshape(symbols[i].shape)
        symbols = symbols.to(indexes.device)
        return dequantize(symbols, medians, dtype)

    def _tables_as_lists(self):
        return (
            self._quantized_cdf.tolist(),
            self._cdf_length.reshape(-1).int().tolist(),
            self._offset.reshape(-1).int().tolist(),
        )


def _trust_loaded_tables(module: "EntropyBottleneck", incompatible_keys) -> None:
    # load_state_dict post-hook: runs after the ParameterLists (children) are loaded.
    if module._tables_were_loaded:
        module._tables_built_from = module._density_params()
    module._tables_were_loaded = False


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

        # Staleness bookkeeping for the CDF tables (see the module docstring).
        self._tables_built_from: Optional[Tensor] = None
        self._tables_were_loaded = False
        self.register_load_state_dict_post_hook(_trust_loaded_tables)

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

    def tables_stale(self) -> bool:
        if self._offset.numel() == 0 or self._tables_built_from is None:
            return True
        current = self._density_params()
        built = self._tables_built_from
        return current.shape != built.shape or not torch.equal(current, built)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._tables_were_loaded = state_dict.get(prefix + "_offset") is not None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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

        self._quantized_cdf = self._pmf_to_cdf(pmf, tail_mass, pmf_length, max_length)
        self._offset = -minima
        self._cdf_length = pmf_length + 2
        self._tables_built_from = self._density_params()
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

        Rebuilds stale CDF tables first (see the module docstring).
        """
        if x.dim() < 3 or x.size(1) != self.channels:
            raise LictutorError(
                f"expected (B, {self.channels}, H, ...) input, got shape {tuple(x.shape)}"
            )
        indexes, medians = self._channel_maps(x.size(0), x.shape[2:], x.device)
        return self.compress_with_indexes(x, indexes, medians)

    def decompress(self, strings: Sequence[bytes], size: Sequence[int]) -> Tensor:
        """Decode ``strings`` (one per batch item) to a (B, C, *size) tensor."""
        indexes, medians = self._channel_maps(len(strings), tuple(size), self.quantiles.device)
        return self.decompress_with_indexes(strings, indexes, medians, medians.dtype)


# -- the conditional Gaussian ------------------------------------------------------

#: CompressAI's (and tensorflow-compression's examples') scale table: 64 scales spaced
#: logarithmically from 0.11 to 256.
SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256, 64


def get_scale_table(
    min: float = SCALES_MIN, max: float = SCALES_MAX, levels: int = SCALES_LEVELS
) -> Tensor:
    """``levels`` scales spaced logarithmically from ``min`` to ``max`` (CompressAI's)."""
    return torch.exp(torch.linspace(math.log(min), math.log(max), levels))


def _standardized_cumulative(x: Tensor) -> Tensor:
    """Φ(x), the standard normal CDF, as ``erfc(-x/√2) / 2`` (precise for x << 0)."""
    return 0.5 * torch.erfc(-(2**-0.5) * x)


class GaussianConditional(EntropyModel):
    r"""Conditional Gaussian entropy model (Ballé et al. 2018, sec. 3).

    Every element ``y`` has its own scale ``σ`` (and mean ``μ``, 0 if not given), e.g.
    predicted by a hyperprior. The probability of the rounded value -- and the density
    of the noisy one -- is the Gaussian integrated over the unit bin:

    .. math::
        p(\hat y) = \Phi\Big(\frac{\hat y - \mu + 1/2}{\sigma}\Big)
                  - \Phi\Big(\frac{\hat y - \mu - 1/2}{\sigma}\Big)

    By symmetry this equals ``Φ((½ − |ŷ−μ|)/σ) − Φ((−½ − |ŷ−μ|)/σ)``, which is how it
    is computed (as CompressAI does): both arguments lie in the *lower* tail, where
    ``Φ`` (via ``erfc``) is accurate, instead of subtracting two numbers close to 1.

    ``σ`` is bounded below by ``scale_bound`` (0.11): a tiny scale would put all the
    mass on one integer and give huge, unstable gradients.

    **Coding.** The coder cannot use one CDF per element, so the scales are quantized to
    a *scale table* (:func:`get_scale_table`): :meth:`build_indexes` maps every ``σ`` to
    the smallest table scale ``>= σ`` (rounding up wastes a few bits, rounding down could
    cost many), and :meth:`update` builds one integer CDF per table scale, on the
    integers ``-c ... c`` with ``c = ceil(σ_k · Φ⁻¹(1 − tail_mass/2))``. Values are coded
    as ``round(y − μ)`` with the CDF row of their index.

    Parameter and buffer names are CompressAI's (``scale_table``, ``scale_bound``,
    ``lower_bound_scale.bound``, ``likelihood_lower_bound.bound``, ``_quantized_cdf``,
    ``_offset``, ``_cdf_length``), so state dicts load both ways. As for
    :class:`EntropyBottleneck`, ``compress``/``decompress`` rebuild stale tables
    themselves: never built, or ``scale_table`` changed since they were built.

    Args:
        scale_table: increasing positive scales, or None (set one later with
            :meth:`update_scale_table` before coding).
        scale_bound: lower bound on ``σ``; None means ``scale_table[0]``.
        tail_mass: probability mass outside the coded range (escape-coded).
        likelihood_bound: likelihoods are clamped from below to this value.
        entropy_coder_precision: bits of the integer CDFs (16, as CompressAI).
    """

    _dynamic_buffers = EntropyModel._dynamic_buffers + ("scale_table",)

    scale_table: Tensor
    scale_bound: Tensor

    def __init__(
        self,
        scale_table: Optional[Sequence[float]] = None,
        scale_bound: Optional[float] = 0.11,
        tail_mass: float = 1e-9,
        likelihood_bound: float = 1e-9,
        entropy_coder_precision: int = 16,
    ):
        super().__init__(likelihood_bound, entropy_coder_precision)
        table = self._prepare_scale_table(scale_table) if scale_table is not None else None
        if scale_bound is None:
            if table is None:
                raise LictutorError("scale_bound=None needs a scale_table (its first scale)")
            scale_bound = float(table[0])
        if not float(scale_bound) > 0:  # also rejects NaN
            raise LictutorError(f"scale_bound must be positive, got {scale_bound}")
        self.tail_mass = float(tail_mass)
        self.lower_bound_scale = LowerBound(float(scale_bound))
        self.register_buffer("scale_table", table if table is not None else torch.Tensor())
        self.register_buffer("scale_bound", torch.Tensor([float(scale_bound)]))
        # CompressAI models saved before update() hold an empty scale_table; loading one
        # puts this table back, so that coding tables can still be built on demand.
        self._default_scale_table = table

        # Staleness bookkeeping for the CDF tables (see EntropyBottleneck).
        self._tables_built_from: Optional[Tensor] = None
        self._tables_were_loaded = False
        self.register_load_state_dict_post_hook(_trust_loaded_tables)

    @staticmethod
    def _prepare_scale_table(scale_table) -> Tensor:
        try:
            table = torch.Tensor(tuple(float(s) for s in scale_table))
        except (TypeError, ValueError) as e:
            raise LictutorError(f"scale_table must be a sequence of numbers ({e})") from None
        if table.numel() < 1:
            raise LictutorError("scale_table is empty")
        if not bool(torch.all(table > 0) & torch.all(torch.isfinite(table))):
            raise LictutorError("scale_table must hold positive, finite scales")
        if table.numel() > 1 and not bool(torch.all(table[1:] > table[:-1])):
            raise LictutorError("scale_table must be strictly increasing")
        return table

    # -- the density --------------------------------------------------------------

    @staticmethod
    def _check_shapes(
        inputs: Tensor, scales: Optional[Tensor] = None, means: Optional[Tensor] = None
    ) -> None:
        """``scales`` and ``means`` must broadcast to ``inputs``' shape and hold no NaN."""
        for name, t in (("scales", scales), ("means", means)):
            if t is None:
                continue
            try:
                shape = torch.broadcast_shapes(inputs.shape, t.shape)
            except RuntimeError:
                shape = None
            if shape != inputs.shape:
                raise LictutorError(
                    f"{name} of shape {tuple(t.shape)} do not match the inputs' shape "
                    f"{tuple(inputs.shape)}"
                )
            if bool(torch.isnan(t).any()):
                raise LictutorError(f"{name} contain NaN (has the hyperprior diverged?)")

    def likelihood(
        self, values: Tensor, scales: Tensor, means: Optional[Tensor] = None
    ) -> Tensor:
        """``p(v) = Φ((v−μ+½)/σ) − Φ((v−μ−½)/σ)`` for ``values`` taken as they are.

        ``σ = max(scales, scale_bound)``; ``scales``/``means`` broadcast to ``values``.
        Noisy values give the density of ``y + u``; rounded ones the coder's pmf.
        Bounded below by ``likelihood_bound``.
        """
        self._check_shapes(values, scales, means)
        centered = values if means is None else values - means
        scales = self.lower_bound_scale(scales)
        magnitude = torch.abs(centered)  # the upper-tail trick, see the class docstring
        upper = _standardized_cumulative((0.5 - magnitude) / scales)
        lower = _standardized_cumulative((-0.5 - magnitude) / scales)
        likelihood = upper - lower
        if self.use_likelihood_bound:
            likelihood = self.likelihood_lower_bound(likelihood)
        return likelihood

    def forward(
        self,
        inputs: Tensor,
        scales: Tensor,
        means: Optional[Tensor] = None,
        training: Optional[bool] = None,
        mode: Optional[str] = None,
    ) -> Tuple[Tensor, Tensor]:
        """``(y_hat, likelihoods)``, both shaped like ``inputs``.

        Training: ``y_hat = y + U(-1/2, 1/2)``; evaluation: ``y_hat = round(y − μ) + μ``.
        ``mode`` (``"noise"``, ``"ste"`` or ``"mixed"``) picks the training relaxation
        exactly as in :meth:`EntropyBottleneck.forward`; in evaluation it is ignored.
        """
        if training is None:
            training = self.training
        self._check_shapes(inputs, scales, means)
        mode = (mode or "noise") if training else "dequantize"
        if mode not in ("noise", "ste", "mixed", "dequantize"):
            raise LictutorError(f"unknown training quantization {mode!r}; use noise, ste or mixed")
        outputs = quantize(inputs, "noise" if mode == "mixed" else mode, means)
        likelihood = self.likelihood(outputs, scales, means)
        if mode == "mixed":
            outputs = quantize(inputs, "ste", means)
        return outputs, likelihood

    # -- tables -------------------------------------------------------------------

    def _density_params(self) -> Tensor:
        return self.scale_table.detach().reshape(-1).cpu().clone()

    def tables_stale(self) -> bool:
        if self._offset.numel() == 0 or self._tables_built_from is None:
            return True
        current, built = self._density_params(), self._tables_built_from
        return current.shape != built.shape or not torch.equal(current, built)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._tables_were_loaded = state_dict.get(prefix + "_offset") is not None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.scale_table.numel() == 0 and self._default_scale_table is not None:
            self.scale_table = self._default_scale_table.to(self.scale_bound.device)

    def update_scale_table(self, scale_table, force: bool = False) -> bool:
        """Set ``scale_table`` and build its CDF tables; return True if done.

        As in CompressAI, does nothing (returns False) if tables exist and ``force`` is
        False -- a published model keeps its published table.
        """
        if self._offset.numel() > 0 and not force:
            return False
        table = self._prepare_scale_table(scale_table)
        self.scale_table = table.to(self.scale_table.device)
        self.update(force=True)
        return True

    @torch.no_grad()
    def update(self, force: bool = False) -> bool:
        """Build one integer CDF per table scale, exactly as CompressAI does.

        Scale ``σ_k`` gets the integers ``-c_k ... c_k``, ``c_k = ceil(σ_k · z)`` with
        ``Φ(-z) = tail_mass / 2``; its pmf plus both tails (the escape symbol) is
        quantized to a ``entropy_coder_precision``-bit CDF. Returns False (and does
        nothing) if tables exist and ``force`` is False.
        """
        if self._offset.numel() > 0 and not force:
            return False
        if self.scale_table.numel() == 0:
            raise LictutorError(
                "GaussianConditional has no scale table: call "
                "update_scale_table(get_scale_table()) first"
            )
        multiplier = -statistics.NormalDist().inv_cdf(self.tail_mass / 2)  # z above
        pmf_center = torch.ceil(self.scale_table * multiplier).int()
        pmf_length = 2 * pmf_center + 1
        max_length = int(pmf_length.max().item())

        # Row k: |symbol| for the symbols -c_k ... c_k (then padding up to max_length).
        samples = torch.arange(max_length, device=pmf_center.device).int()
        samples = torch.abs(samples - pmf_center[:, None]).float()
        scales = self.scale_table.unsqueeze(1).float()
        upper = _standardized_cumulative((0.5 - samples) / scales)
        lower = _standardized_cumulative((-0.5 - samples) / scales)
        pmf = upper - lower
        tail_mass = 2 * lower[:, :1]  # both tails beyond ±c_k (symmetric)

        self._quantized_cdf = self._pmf_to_cdf(pmf, tail_mass, pmf_length, max_length)
        self._offset = -pmf_center
        self._cdf_length = pmf_length + 2
        self._tables_built_from = self._density_params()
        return True

    def build_indexes(self, scales: Tensor) -> Tensor:
        """Index (int32, shaped like ``scales``) of the smallest table scale ``>= σ``.

        ``σ = max(scales, scale_bound)``; scales above the table get its last index.
        """
        if self.scale_table.numel() == 0:
            raise LictutorError(
                "GaussianConditional has no scale table: call "
                "update_scale_table(get_scale_table()) first"
            )
        if bool(torch.isnan(scales).any()):
            raise LictutorError("scales contain NaN (has the hyperprior diverged?)")
        scales = self.lower_bound_scale(scales.detach())
        # number of table[:-1] entries below sigma == CompressAI's counting loop
        boundaries = self.scale_table[:-1].to(scales.dtype).contiguous()
        indexes = torch.searchsorted(boundaries, scales.contiguous().reshape(-1))
        return indexes.reshape(scales.shape).int()

    # -- coding -------------------------------------------------------------------

    def _check_indexes(self, indexes: Tensor) -> None:
        if not isinstance(indexes, Tensor) or indexes.is_floating_point():
            raise LictutorError("indexes must be an integer tensor (see build_indexes)")
        self._ensure_tables()
        n = self._offset.numel()
        if indexes.numel() and not (int(indexes.min()) >= 0 and int(indexes.max()) < n):
            raise LictutorError(f"indexes must lie in [0, {n}) (the scale table's size)")

    def compress(
        self, inputs: Tensor, indexes: Tensor, means: Optional[Tensor] = None
    ) -> List[bytes]:
        """Code ``round(y − μ)`` of each batch item with the CDFs picked by ``indexes``.

        ``indexes`` (from :meth:`build_indexes`) has the shape of ``inputs``; ``means``
        broadcasts to it. Rebuilds stale CDF tables first.
        """
        if means is not None:
            self._check_shapes(inputs, means=means)
        self._check_indexes(indexes)
        return self.compress_with_indexes(inputs, indexes, means)

    def decompress(
        self,
        strings: Sequence[bytes],
        indexes: Tensor,
        means: Optional[Tensor] = None,
        dtype: torch.dtype = torch.float,
    ) -> Tensor:
        """Decode ``strings`` to ``symbols + μ``, shaped like ``indexes``.

        Note the order: CompressAI's is ``(strings, indexes, dtype, means)``.
        """
        if isinstance(means, torch.dtype):
            raise LictutorError("decompress(strings, indexes, means=None, dtype=...): "
                                "pass dtype by keyword")
        if means is not None:
            self._check_shapes(torch.empty(indexes.shape, device="meta"), means=means)
        self._check_indexes(indexes)
        return self.decompress_with_indexes(strings, indexes, means, dtype)
