"""Fast learned image compression after Fu, Liang, Liang, Wang, Fang, Zhang & Han (2023), "Fast
and High-Performance Learned Image Compression With Improved Checkerboard Context Model,
Deformable Residual Module, and Knowledge Distillation" (arXiv 2309.02529; IEEE TIP 33, 2024).

:class:`FastLIC` is the checkerboard model of :mod:`lictutor.models.checkerboard` with separate
parameter networks for the two halves of the checkerboard and a Gaussian mixture for the
non-anchors (:class:`~lictutor.entropy.GaussianMixtureConditional`), deformable residual
modules in the transforms (:func:`fast_analysis_transform`, :func:`fast_synthesis_transform`),
and channel skipping for latents made sparse by an L1 penalty
(:func:`lictutor.losses.l1_sparsity`). The paper published no code; the class docstring lists
the details we had to choose. Its knowledge distillation is a training procedure
(:mod:`lictutor.distill`, :mod:`lictutor.prune`).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from lictutor.entropy import GaussianMixtureConditional
from lictutor.errors import LictutorError
from lictutor.layers import GDN, DeformableResidualBlock, conv, deconv
from lictutor.models.base import pointwise_network
from lictutor.models.checkerboard import CheckerboardCodec, checkerboard_merge, checkerboard_split
from lictutor.models.context import entropy_parameters
from lictutor.prune import removable_blocks, remove_blocks_
from lictutor.quantization import add_uniform_noise, quantize, ste_round

__all__ = ["FastLIC", "fast_analysis_transform", "fast_synthesis_transform"]


def fast_analysis_transform(N: int, M: int) -> nn.Sequential:
    """``g_a`` of :class:`FastLIC`: :func:`~lictutor.models.base.analysis_transform` with a
    :class:`~lictutor.layers.DeformableResidualBlock` after its third stage (at 1/8 of the
    image size, N channels): ``g_a.6``."""
    return nn.Sequential(
        conv(3, N), GDN(N),
        conv(N, N), GDN(N),
        conv(N, N), GDN(N),
        DeformableResidualBlock(N),
        conv(N, M),
    )  # fmt: skip


def fast_synthesis_transform(N: int, M: int) -> nn.Sequential:
    """``g_s`` of :class:`FastLIC`: the mirror, with the deformable residual block after the
    first stage (at 1/8 of the image size): ``g_s.2``."""
    return nn.Sequential(
        deconv(M, N), GDN(N, inverse=True),
        DeformableResidualBlock(N),
        deconv(N, N), GDN(N, inverse=True),
        deconv(N, N), GDN(N, inverse=True),
        deconv(N, 3),
    )  # fmt: skip


class FastLIC(CheckerboardCodec):
    r"""Fast learned image compression after Fu et al. (2023), without distillation.

    The checkerboard model of :class:`~lictutor.models.CheckerboardContext` with the paper's three changes
    to the codec (its knowledge distillation is a training procedure, :mod:`lictutor.distill`):

    1. **Improved checkerboard context**: two parameter networks and two probability
       models instead of one. ``entropy_parameters_anchor(psi)`` gives the anchors, which
       have no context (so it sees the 2M hyperprior channels only, not a zero context), a
       Gaussian; ``entropy_parameters_nonanchor(cat(psi, phi))`` gives the non-anchors a
       mixture of ``components`` Gaussians (:class:`~lictutor.entropy.GaussianMixtureConditional`).
    2. **Deformable residual modules** (:class:`~lictutor.layers.DeformableResidualBlock`)
       in ``g_a`` and ``g_s``, widening their receptive field (see
       :func:`fast_analysis_transform`).
    3. **L1 sparsity and channel skipping**: trained with an L1 penalty on ``y_hat``
       (:func:`lictutor.losses.l1_sparsity`; ``forward`` returns ``"y_hat"`` for it, as every model does), many channels of
       ``y_hat`` are entirely zero for a given image. :meth:`compress` then codes a bitmask
       of the non-zero channels (``ceil(M / 8)`` bytes, a fourth string group), and neither
       the entropy coder nor the context convolution touches the others; the decoder sets
       them to zero. Decoding gives the same image with or without skipping.

    **Where we depart from the paper or choose where it is silent:**

    * *Mixture coding.* Three components by default, softmax weights (the mixture of
      Cheng et al. 2020 and their choice of K; we do not take it from the paper). The rANS coder takes one CDF table per element for
      it, built on the fly (see :class:`~lictutor.entropy.GaussianMixtureConditional`), which costs decoding
      time; ``components=1`` codes the non-anchors with a plain Gaussian and the scale table
      instead, like the anchors (the faster variant, to compare).
    * *Integer latents.* ``y_hat = round(y)`` (STE or noise in training), instead of
      ``round(y - mean) + mean`` as in chapter 4: a channel is then either exactly zero or
      not, which is what makes skipping well defined and exact. The mixture codes these
      integers with its exact (continuous) means. A Gaussian half codes
      ``y_hat - round(mean)`` with the scale table's Gaussian, which cannot be off-centre:
      rounding the mean costs a little rate where the scale is small and the mean far from
      an integer. The rate term of :meth:`forward` uses the same rounded means (STE in
      training), so it is what the coder pays, up to the scale table.
    * *Sizes and placement.* One DRM in ``g_a`` and one in ``g_s``, each at 1/8 of the
      image size (``g_a.6``, ``g_s.2``): there a 3x3 deformable kernel spans the most pixels,
      and it costs a quarter of what it would at 1/4 (on a CPU, a deformable convolution is
      several times slower than a plain one); the anchor network is three 1x1 convolutions
      2M -> 2M -> 2M -> 2M with leaky ReLUs; the non-anchor network is the context model's
      ``entropy_parameters`` (4M -> 10M/3 -> 8M/3) ending in 3 x components x M channels
      (weight logits, means, scales; 2M for ``components=1``); hyper transforms as the
      mean-scale hyperprior.
    * *Skipping covers the coder and the context.* The 1x1 parameter networks still compute
      all M channels (their cost is small next to the context convolution and the coder).

    ``strings = [anchor_strings, non_anchor_strings, z_strings, channel_masks]``.

    Args:
        N: channels of the hidden layers (and of ``z``).
        M: channels of ``y``.
        components: Gaussians in the non-anchors' mixture; 1 for a single Gaussian coded
            with the scale table.
        removed: blocks replaced by ``nn.Identity``, e.g. ``("g_s.2",)``: a decoder pruned
            by :mod:`lictutor.prune` (step 3 of Fu et al.'s distillation), built by name
            from its ``model_args``. The kept weights keep their names and initialization.
        decoder_N: channels of ``g_s``'s hidden layers (default ``N``): a narrower synthesis,
            the smaller decoder a student of Fu et al.'s distillation may have while it keeps
            the teacher's encoder and entropy model (whose weights then load into it, all but
            ``g_s``'s).
    """

    def __init__(self, N: int = 192, M: int = 192, components: int = 3, removed: Sequence[str] = (),
                 decoder_N: int | None = None):
        super().__init__()
        if int(components) < 1:
            raise LictutorError(f"components must be at least 1, got {components}")
        self._hyper(N, M)
        self.components = int(components)
        self.g_a = fast_analysis_transform(N, M)
        self.g_s = fast_synthesis_transform(N if decoder_N is None else int(decoder_N), M)
        self.entropy_parameters_anchor = pointwise_network(M * 2, M * 2, M * 2, M * 2)  # psi -> (scales, means)
        outputs = M * 2 if self.components == 1 else M * 3 * self.components
        self.entropy_parameters_nonanchor = entropy_parameters(M, outputs)
        if self.components > 1:
            self.gaussian_mixture = GaussianMixtureConditional()
        self.removed: Tuple[str, ...] = ()
        if removed:
            remove_blocks_(self, removed)  # sets self.removed

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor]) -> "FastLIC":
        """A model sized after ``state_dict`` (N and M from ``g_a.0`` and ``g_a.7``, the
        decoder's width from ``g_s.0``, the components from the non-anchor network's output,
        the removed blocks of ``g_s`` from the absent ones), loaded."""
        try:
            N, M = state_dict["g_a.0.weight"].size(0), state_dict["g_a.7.weight"].size(0)
            decoder_N = state_dict["g_s.0.weight"].size(1)  # ConvTranspose2d: (in, out, k, k)
            outputs = state_dict["entropy_parameters_nonanchor.4.weight"].size(0)
        except KeyError as err:
            raise LictutorError(f"FastLIC.from_state_dict: no {err} in the state dict") from None
        net = cls(N, M, components=1 if outputs == 2 * M else outputs // (3 * M),
                  decoder_N=None if decoder_N == N else decoder_N)
        gone = [b for b in removable_blocks(net) if not any(k.startswith(b + ".") for k in state_dict)]
        if gone:  # a pruned model's (see the argument removed)
            remove_blocks_(net, gone)
        net.load_state_dict(state_dict)
        return net

    def _anchor_params(self, psi: Tensor) -> Tuple[Tensor, Tensor]:
        scales, means = self.entropy_parameters_anchor(psi).chunk(2, 1)
        return scales, means

    def _nonanchor_params(self, psi: Tensor, phi: Tensor) -> Tuple[Tensor, ...]:
        """``(scales, means)``, or ``(logits, means, scales)`` of the mixture, each
        (B, M, H, W/2, components)."""
        params = self.entropy_parameters_nonanchor(torch.cat((psi, phi), 1))
        if self.components == 1:
            scales, means = params.chunk(2, 1)
            return scales, means
        B, _, H, W = params.shape
        logits, means, scales = params.reshape(B, 3, self.components, self.M, H, W).permute(
            1, 0, 3, 4, 5, 2
        )
        return logits, means, scales

    @torch.no_grad()
    def anchor_bits(self, x: Tensor) -> Tuple[float, float]:
        """The ideal bits of the anchors of ``round(g_a(x))``, ``(rounded, exact)``: under the
        anchors' Gaussians centred on their rounded means, as :meth:`compress` codes them (up
        to the scale table's scales), and on their exact means, which the scale table cannot
        hold. The difference is what rounding the means costs this model (chapter 7)."""
        was_training = self.training
        self.eval()
        try:
            y = self.g_a(x)
            z_hat, _ = self.entropy_bottleneck(self.h_a(y))
            scales, means = self._anchor_params(checkerboard_split(self.h_s(z_hat))[0])
            anchors = checkerboard_split(torch.round(y))[0]
            bits = [-torch.log2(self.gaussian_conditional.likelihood(anchors, scales, mu)).sum()
                    for mu in (torch.round(means), means)]
        finally:
            self.train(was_training)
        return float(bits[0]), float(bits[1])

    def _coding_means(self, means: Tensor) -> Tensor:
        return torch.round(means)

    def _encode_half(self, step: int, values: Tensor, params: Sequence[Tensor]):
        if step == 0 or self.components == 1:
            return super()._encode_half(step, values, params)
        return self.gaussian_mixture.compress(values, *params), values

    def _decode_half(self, step: int, string: bytes, params: Sequence[Tensor]) -> Tensor:
        if step == 0 or self.components == 1:
            return super()._decode_half(step, string, params)
        return self.gaussian_mixture.decompress(string, *params)

    def _likelihoods(self, step: int, values: Tensor, params: Sequence[Tensor]) -> Tensor:
        """The probability the coder gives ``values`` of one half (STE-rounded Gaussian
        means, see the class docstring)."""
        if step == 0 or self.components == 1:
            scales, means = params
            return self.gaussian_conditional.likelihood(values, scales, ste_round(means))
        return self.gaussian_mixture.likelihood(values, *params)

    def entropy_forward(self, y: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``ŷ`` and ``{"y", "z"}`` likelihoods.

        ``ŷ`` is ``round(y)`` in evaluation and, in training, ``y`` plus noise
        (``quantization="noise"``) or STE-rounded (``"ste"``, ``"mixed"``); ``g_s`` and the
        context see it. The rate of ``y`` is the likelihood of ``y_hat`` (of ``y`` plus noise
        for ``"mixed"``) under the probability models the coder uses.
        """
        mode = self.quantization
        z_hat, z_likelihoods = self.entropy_bottleneck(self.h_a(y), mode=mode)
        psi = self.h_s(z_hat)
        if self.training:
            y_hat = quantize(y, "noise" if mode == "noise" else "ste")
            y_rate = add_uniform_noise(y) if mode == "mixed" else y_hat
        else:
            y_hat = y_rate = torch.round(y)
        psi_anchor, psi_non_anchor = checkerboard_split(psi)
        _, phi = checkerboard_split(self.context_prediction(y_hat))
        rate_anchor, rate_non_anchor = checkerboard_split(y_rate)
        y_likelihoods = checkerboard_merge(
            self._likelihoods(0, rate_anchor, self._anchor_params(psi_anchor)),
            self._likelihoods(1, rate_non_anchor, self._nonanchor_params(psi_non_anchor, phi)),
        )
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}

    @torch.no_grad()
    def compress(self, x: Tensor, skip_zero_channels: bool = True) -> Dict[str, object]:
        """``{"strings": [anchor_strings, non_anchor_strings, z_strings, channel_masks],
        "shape": z's (h, w)}``, one string per image in each list.

        ``skip_zero_channels``: leave the channels of ``round(y)`` that are all zero out of
        the coding (their mask bit is 0); with False every mask bit is 1. Builds stale CDF
        tables first.
        """

        def active(y_hat: Tensor) -> Tensor:
            if not skip_zero_channels:
                return self._all_channels()
            return y_hat[0].flatten(1).ne(0).any(1)

        out = self._compress(x, torch.round, active)
        masks = [_pack_mask(m) for m in out["active"]]
        return {"strings": [*out["strings"], masks], "shape": out["shape"]}

    def coded_channels(self, strings: List[List[bytes]], index: int = 0) -> Tensor:
        """Which of the M channels of image ``index`` :meth:`compress` coded (a bool tensor),
        read from the channel mask in ``strings``; the others were all zero and skipped. A
        damaged mask raises :class:`LictutorError`."""
        if len(strings) != 4 or not 0 <= index < len(strings[3]):
            raise LictutorError(f"FastLIC strings hold no channel mask for image {index}")
        return _unpack_mask(strings[3][index], self.M, "cpu")

    @torch.no_grad()
    def decompress(self, strings: List[List[bytes]], shape: Sequence[int]) -> Dict[str, Tensor]:
        """Inverse of :meth:`compress`; ``x_hat`` clamped to [0, 1]. A damaged string or
        channel mask raises :class:`LictutorError`."""
        device = self.gaussian_conditional.scale_table.device
        y_hat = self._decompress(
            strings, shape, 4, lambda i: _unpack_mask(strings[3][i], self.M, device)
        )
        return {"x_hat": self.g_s(y_hat).clamp_(0, 1)}


def _pack_mask(active: Tensor) -> bytes:
    """The channel mask as bytes: one bit per channel, first channel in the highest bit."""
    return np.packbits(active.cpu().numpy().astype(np.uint8)).tobytes()


def _unpack_mask(data: bytes, channels: int, device) -> Tensor:
    """Inverse of :func:`_pack_mask`; a mask of the wrong length or with padding bits set
    raises :class:`LictutorError`."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != -(-channels // 8):
        raise LictutorError(f"damaged channel mask: expected {-(-channels // 8)} bytes")
    bits = np.unpackbits(np.frombuffer(bytes(data), dtype=np.uint8))
    if bits[channels:].any():
        raise LictutorError("damaged channel mask: padding bits set")
    return torch.from_numpy(bits[:channels].astype(bool)).to(device)
