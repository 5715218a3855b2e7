"""The conditional Gaussian of Ballé, Minnen, Singh, Hwang & Johnston (2018), "Variational
image compression with a scale hyperprior", sec. 3: each latent element has its own scale (and
optionally mean), predicted by a hyperprior; the scale table that codes it; and the standard
normal CDF every Gaussian here is computed with.

Written from scratch with CompressAI's parameter and buffer names, so CompressAI state dicts
load into ours (and back); the tests compare likelihoods, tables and bytes with
``compressai.entropy_models.GaussianConditional``.
"""

from __future__ import annotations

import math
import statistics
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from lictutor.entropy.base import EntropyModel
from lictutor.errors import LictutorError
from lictutor.layers import LowerBound
from lictutor.quantization import quantize

__all__ = ["GaussianConditional", "get_scale_table", "standard_normal_cdf", "SCALES_MIN", "SCALES_MAX",
           "SCALES_LEVELS"]

#: CompressAI's (and tensorflow-compression's examples') scale table: 64 scales spaced
#: logarithmically from 0.11 to 256.
SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256, 64


def get_scale_table(
    min: float = SCALES_MIN, max: float = SCALES_MAX, levels: int = SCALES_LEVELS
) -> Tensor:
    """``levels`` scales spaced logarithmically from ``min`` to ``max`` (CompressAI's)."""
    return torch.exp(torch.linspace(math.log(min), math.log(max), levels))


def standard_normal_cdf(x: Tensor) -> Tensor:
    """Φ(x), the standard normal CDF, as ``erfc(-x/√2) / 2`` (precise for x << 0, where
    ``1 + erf(x/√2)`` would lose every digit)."""
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
    :class:`~lictutor.entropy.EntropyBottleneck`, ``compress``/``decompress`` rebuild stale tables
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
        upper = standard_normal_cdf((0.5 - magnitude) / scales)
        lower = standard_normal_cdf((-0.5 - magnitude) / scales)
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
        exactly as in :meth:`lictutor.entropy.EntropyBottleneck.forward`; in evaluation it is ignored.
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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
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
        upper = standard_normal_cdf((0.5 - samples) / scales)
        lower = standard_normal_cdf((-0.5 - samples) / scales)
        pmf = upper - lower
        tail_mass = 2 * lower[:, :1]  # both tails beyond ±c_k (symmetric)

        self._set_tables(self._pmf_to_cdf(pmf, tail_mass, pmf_length, max_length), -pmf_center, pmf_length + 2)
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

    def compress(self, inputs: Tensor, indexes: Tensor, means: Optional[Tensor] = None) -> List[bytes]:
        """Code ``round(y − μ)`` of each batch item with the CDFs picked by ``indexes``.

        ``indexes`` (from :meth:`build_indexes`) has the shape of ``inputs``; ``means``
        broadcasts to it. Rebuilds stale CDF tables first.
        """
        if means is not None:
            self._check_shapes(inputs, means=means)
        self._check_indexes(indexes)
        return self.compress_with_indexes(inputs, indexes, means)

    def decompress(self, strings: Sequence[bytes], indexes: Tensor, means: Optional[Tensor] = None,
                   dtype: torch.dtype = torch.float) -> Tensor:
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
