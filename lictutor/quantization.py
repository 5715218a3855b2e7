"""Quantization, and the three ways around its zero gradient.

Rounding is piecewise constant: its derivative is 0 almost everywhere, so a loss that
sees ``round(y)`` sends no gradient back to the encoder. Learned codecs therefore
train with a differentiable stand-in:

* **additive uniform noise** (Ballé et al. 2017, sec. 2.2): ``y + u``,
  ``u ~ U(-1/2, 1/2)``. The density of ``y + u`` is the density of ``y`` convolved
  with a unit box, which matches the probability mass of ``round(y)`` at the integers
  -- so it is the right proxy for the *rate* term.
* **straight-through estimator** (Theis et al. 2017, "Lossy image compression with
  compressive autoencoders", sec. 2.1): ``round`` in the forward pass, identity in
  the backward pass. The decoder sees exactly the values it will see at test time.
* **mixed** (Minnen & Singh 2020, "Channel-wise autoregressive entropy models",
  used by CompressAI's later models): noise for the rate, STE for the
  decoder input -- :func:`quantize_mixed` returns both.

For reproducible training, :func:`sample_seeds` makes the noise of every sample a
function of that sample's own seed (not of a global random state or of which other
samples share its batch): resuming, or splitting a batch over processes, then draws
the very same noise.

Rounding is done *around a center* (the median of the entropy model, or the mean of
a Gaussian): ``round(y - m) + m``. Integer ``symbols = round(y - m)`` are what the
entropy coder writes; ``symbols + m`` is the dequantized value.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from lictutor.errors import LictutorError

__all__ = [
    "add_uniform_noise",
    "ste_round",
    "hard_round",
    "quantize",
    "dequantize",
    "quantize_mixed",
    "sample_seeds",
    "QUANTIZE_MODES",
]

QUANTIZE_MODES = ("noise", "ste", "round", "dequantize", "symbols")


# (seeds, number of noise tensors drawn so far) while sample_seeds() is active
_SAMPLE_SEEDS: ContextVar[Optional[Tuple[List[int], List[int]]]] = ContextVar(
    "lictutor_sample_seeds", default=None
)


@contextmanager
def sample_seeds(seeds: Sequence[int]) -> Iterator[None]:
    """Within the block, :func:`add_uniform_noise` draws sample ``i``'s noise from ``seeds[i]``.

    Every noisy tensor must then have the batch as its first dimension, of size
    ``len(seeds)``. The k-th tensor drawn in the block (e.g. ``y`` then ``z`` in a
    hyperprior model) uses the seed pair ``(seeds[i], k)``.
    """
    token = _SAMPLE_SEEDS.set(([int(s) for s in seeds], [0]))
    try:
        yield
    finally:
        _SAMPLE_SEEDS.reset(token)


def _mixed_seed(seed: int, draw: int) -> int:
    digest = hashlib.blake2b(f"{seed},{draw}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def add_uniform_noise(x: Tensor) -> Tensor:
    """``x + u`` with ``u ~ U(-1/2, 1/2)`` i.i.d.: the training proxy for rounding.

    Outside :func:`sample_seeds` the noise is ``torch.empty_like(x).uniform_(-0.5, 0.5)``
    (what CompressAI draws); inside, each sample's noise comes from its own seed.
    """
    state = _SAMPLE_SEEDS.get()
    if state is None:
        return x + torch.empty_like(x).uniform_(-0.5, 0.5)
    seeds, drawn = state
    if x.dim() == 0 or x.size(0) != len(seeds):
        raise LictutorError(
            f"sample_seeds got {len(seeds)} seeds but the noisy tensor has shape "
            f"{tuple(x.shape)}; its first dimension must be the batch"
        )
    noise = torch.empty_like(x)
    for i, seed in enumerate(seeds):
        generator = torch.Generator(device=x.device).manual_seed(_mixed_seed(seed, drawn[0]))
        noise[i].uniform_(-0.5, 0.5, generator=generator)
    drawn[0] += 1
    return x + noise


def ste_round(x: Tensor) -> Tensor:
    """Round in the forward pass, identity (gradient 1) in the backward pass.

    ``(round(x) - x).detach() + x`` equals ``round(x)``, but autograd only sees
    the ``+ x``.
    """
    return (torch.round(x) - x).detach() + x


def hard_round(x: Tensor) -> Tensor:
    """Plain rounding (half to even, like ``torch.round``). Its gradient is 0."""
    return torch.round(x)


def quantize(x: Tensor, mode: str, medians: Optional[Tensor] = None) -> Tensor:
    """Quantize ``x`` around ``medians`` (broadcastable to ``x``; ``None`` means 0).

    Modes:
        ``"noise"``: ``x + U(-1/2, 1/2)`` (the center does not matter for noise).
        ``"ste"``: ``ste_round(x - m) + m``.
        ``"round"`` / ``"dequantize"`` (same thing, CompressAI's name):
        ``round(x - m) + m``, float, zero gradient.
        ``"symbols"``: ``round(x - m)`` as ``int32``, what the entropy coder writes.
    """
    if mode == "noise":
        return add_uniform_noise(x)
    if mode not in QUANTIZE_MODES:
        raise LictutorError(f"unknown quantization mode {mode!r}; use one of {QUANTIZE_MODES}")

    centered = x if medians is None else x - medians
    if mode == "ste":
        q = ste_round(centered)
        return q if medians is None else q + medians
    q = torch.round(centered)
    if mode == "symbols":
        return q.int()
    return q if medians is None else q + medians


def dequantize(symbols: Tensor, medians: Optional[Tensor] = None, dtype=torch.float) -> Tensor:
    """Inverse of ``quantize(..., "symbols")``: ``symbols + m`` as a float tensor."""
    if medians is None:
        return symbols.to(dtype)
    return symbols.type_as(medians) + medians


def quantize_mixed(x: Tensor, medians: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The "mixed" quantization: returns ``(x_noisy, x_ste)``.

    Use ``x_noisy`` in the entropy model (rate term, a smooth proxy of the
    probability mass), and ``x_ste`` -- really rounded values, identity gradient --
    as the synthesis transform's input (distortion term).
    """
    return add_uniform_noise(x), quantize(x, "ste", medians)
