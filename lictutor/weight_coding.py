r"""Network weights as bits: quantized, entropy-coded, and sent in a ``.lic`` section.

Helminger et al. (2021), "Microdosing: Knowledge Distillation for GAN based Compression"
(chapter 6), specialize a small part of a decoder to a subset of content on the encoder side
and send those weights with the latents; the rate then counts them. Here each tensor ``w`` is
quantized with one step ``Δ`` for all,

.. math::  q = \operatorname{round}(w / \Delta), \qquad \hat w = \Delta\, q,

and its integers are coded with CompressAI's rANS coder under a discretized Laplace density
fitted to them (scale ``b`` = the mean of ``|q|``, its maximum-likelihood value), on the
integers ``−r … r`` with ``r = max |q|``:

.. math::  P(k) = F_b(k + \tfrac12) - F_b(k - \tfrac12), \qquad F_b \text{ the Laplace CDF.}

Section layout (big-endian): ``f32`` Δ, ``u16`` tensors; per tensor ``u32`` elements, ``f32``
b, ``u32`` r, ``u32`` string length, the string. The names, order and shapes come from the
decoder's own module (:func:`decode_weights` takes them), so they cost no bits; a section that
does not fit them raises :class:`LictutorError`, and the container's CRC catches other damage.
"""

from __future__ import annotations

import math
import struct
from typing import Dict, Mapping

import torch
from torch import Tensor

from lictutor.entropy import coder
from lictutor.errors import LictutorError

__all__ = ["quantize_weights", "encode_weights", "decode_weights", "stored_step"]

SECTION_TAG = "WGTS"  #: the ``.lic`` section (:class:`lictutor.bitstream.Payload`) that holds them
_PRECISION = 16


def quantize_weights(tensors: Mapping[str, Tensor], step: float) -> Dict[str, Tensor]:
    """``Δ · round(w / Δ)`` of every tensor: the weights the decoder will have (``Δ`` as the
    section stores it, in single precision)."""
    step = stored_step(step)
    return {name: (torch.round(w.detach().double() / step) * step).to(w) for name, w in tensors.items()}


def encode_weights(tensors: Mapping[str, Tensor], step: float) -> bytes:
    """The section bytes for ``tensors`` (in their order) quantized with ``step``."""
    step = stored_step(step)
    if len(tensors) >= 2**16:
        raise LictutorError("cannot code more than 65,535 weight tensors in one section")
    out = bytearray(struct.pack(">fH", step, len(tensors)))
    for name, w in tensors.items():
        q = torch.round(w.detach().double().flatten() / step)
        if not bool(torch.isfinite(q).all()) or (q.numel() and float(q.abs().max()) > coder.MAX_SYMBOL):
            raise LictutorError(f"weights {name!r} are not finite or too large for the step {step:g}")
        radius = int(q.abs().max()) if q.numel() else 0
        scale = _f32(float(q.abs().mean())) if q.numel() else 0.0  # as the decoder reads it back
        string = coder.encode(q.long().tolist(), [0] * q.numel(), _tables(scale, radius))
        out += struct.pack(">IfII", q.numel(), scale, radius, len(string)) + string
    return bytes(out)


def decode_weights(data: bytes, like: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """The weights of a section, shaped, typed and placed like the tensors of ``like`` (the
    decoder's own, in the order they were encoded); a section that does not fit raises
    :class:`LictutorError`."""
    view, pos = bytes(data), 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(view):
            raise LictutorError("damaged weight section (truncated)")
        values = struct.unpack(">" + fmt, view[pos : pos + size])
        pos += size
        return values

    step, count = take("fH")
    if count != len(like):
        raise LictutorError(f"the weight section holds {count} tensors; this decoder has {len(like)}")
    if not (math.isfinite(step) and step > 0):
        raise LictutorError("damaged weight section (step)")
    out = {}
    for name, ref in like.items():
        numel, scale, radius, length = take("IfII")
        if numel != ref.numel():
            raise LictutorError(f"the weight section's {name!r} has {numel} values; this decoder's has {ref.numel()}")
        if not (math.isfinite(scale) and scale >= 0) or radius > coder.MAX_SYMBOL or pos + length > len(view):
            raise LictutorError("damaged weight section")
        string = view[pos : pos + length]
        pos += length
        q = coder.decode(string, [0] * numel, _tables(scale, radius), f"weights {name!r}")
        out[name] = (torch.tensor(q, dtype=torch.float64) * step).to(ref).reshape(ref.shape)
    if pos != len(view):
        raise LictutorError("damaged weight section (trailing bytes)")
    return out


def _tables(scale: float, radius: int) -> coder.Tables:
    """One table: the discretized Laplace of ``scale`` on ``−radius … radius``, its tail (and
    the escape symbol's) the rest."""
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    b = max(scale, 1e-3)
    cdf = lambda v: torch.where(v < 0, 0.5 * torch.exp(v / b), 1 - 0.5 * torch.exp(-v / b))  # noqa: E731
    pmf = cdf(k + 0.5) - cdf(k - 0.5)
    tail = max(1.0 - float(pmf.sum()), 1e-9)
    row = coder.pmf_to_quantized_cdf([*pmf.tolist(), tail], _PRECISION).tolist()
    return [row], [len(row)], [-radius]


def stored_step(step) -> float:
    """``step`` as a section stores it (single precision); not a positive finite number:
    :class:`LictutorError`."""
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not (0 < step < 1e38 and _f32(step) > 0):
        raise LictutorError(f"the quantization step must be a positive number, got {step!r}")
    return _f32(step)


def _f32(value: float) -> float:
    """``value`` rounded to single precision, as a section stores it."""
    return struct.unpack(">f", struct.pack(">f", value))[0]
