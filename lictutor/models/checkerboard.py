"""Checkerboard context models: a context model whose decoder runs in two parallel passes.

* :class:`CheckerboardContext` -- He, Zheng, Sun, Wang & Qin (2021), "Checkerboard Context
  Model for Efficient Learned Image Compression" (CVPR 2021), on the transforms of the
  chapter-4 context model (Minnen et al. 2018). CompressAI implements the same context in
  ``compressai.latent_codecs.CheckerboardLatentCodec`` (``anchor_parity="even"``).
* :class:`FastLIC` -- after Fu, Liang, Liang, Wang, Fang, Zhang & Han (2023), "Fast and
  High-Performance Learned Image Compression With Improved Checkerboard Context Model,
  Deformable Residual Module, and Knowledge Distillation" (arXiv 2309.02529; IEEE TIP 33,
  2024): separate parameter networks for the two halves of the checkerboard and a Gaussian
  mixture for the non-anchors (:class:`GaussianMixtureConditional`), deformable residual
  modules in the transforms, and channel skipping for latents made sparse by an L1 penalty
  (:func:`l1_sparsity`). The paper published no code; the class docstring lists the
  details we had to choose.

**The checkerboard.** The positions ``(i, j)`` of the latent with ``i + j`` even are the
*anchors*, the others the *non-anchors*::

    A n A n        pass 1: every anchor, from the hyperprior alone
    n A n A        pass 2: every non-anchor, from the hyperprior and the decoded anchors
    A n A n                around it (a 5x5 CheckerboardMaskedConv2d)

Each pass is one set of tensor operations over the whole latent and one call to the rANS
coder per image, instead of the ``H_y x W_y`` serial steps of the chapter-4 model. The two
halves are coded as two strings, so a model's ``strings`` are
``[anchor_strings, non_anchor_strings, z_strings]`` (FastLIC appends a fourth group, the
channel masks), one string per image in each, which the chapter-2 container stores as they
are.
"""

from __future__ import annotations

import statistics
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lictutor.entropy import MAX_SYMBOL, EntropyBottleneck, GaussianConditional, get_scale_table
from lictutor.errors import LictutorError
from lictutor.layers import (
    GDN, CheckerboardMaskedConv2d, DeformableResidualBlock, LowerBound, conv, deconv,
)
from lictutor.models.base import CompressionModel, analysis_transform, synthesis_transform
from lictutor.models.hyperprior import mean_scale_hyper_analysis, mean_scale_hyper_synthesis
from lictutor.quantization import add_uniform_noise, quantize, ste_round

__all__ = [
    "CheckerboardContext", "FastLIC", "GaussianMixtureConditional",
    "checkerboard_split", "checkerboard_merge", "l1_sparsity",
]


def checkerboard_split(t: Tensor) -> Tuple[Tensor, Tensor]:
    """``(anchors, non_anchors)`` of a (B, C, H, W) tensor, each (B, C, H, W/2).

    Row ``i`` of ``anchors`` holds the anchors of row ``i`` (columns 0, 2, ... on even rows,
    1, 3, ... on odd rows); the same for ``non_anchors``. Differentiable.
    """
    B, C, H, W = t.shape
    if W % 2:
        raise LictutorError(f"a checkerboard needs an even width, got {W}")
    anchors, non_anchors = t.new_empty(B, C, H, W // 2), t.new_empty(B, C, H, W // 2)
    anchors[..., 0::2, :], anchors[..., 1::2, :] = t[..., 0::2, 0::2], t[..., 1::2, 1::2]
    non_anchors[..., 0::2, :], non_anchors[..., 1::2, :] = t[..., 0::2, 1::2], t[..., 1::2, 0::2]
    return anchors, non_anchors


def checkerboard_merge(anchors: Tensor, non_anchors: Tensor) -> Tensor:
    """Inverse of :func:`checkerboard_split`. Differentiable."""
    B, C, H, half = anchors.shape
    t = anchors.new_empty(B, C, H, 2 * half)
    t[..., 0::2, 0::2], t[..., 1::2, 1::2] = anchors[..., 0::2, :], anchors[..., 1::2, :]
    t[..., 0::2, 1::2], t[..., 1::2, 0::2] = non_anchors[..., 0::2, :], non_anchors[..., 1::2, :]
    return t


def l1_sparsity(out: Mapping[str, Tensor]) -> Tensor:
    """``mean |y_hat|`` of a :class:`FastLIC` forward output: the L1 penalty of Fu et al.,
    to add to the rate-distortion loss with a weight, pushing whole channels of ``y_hat`` to
    zero (which :meth:`FastLIC.compress` then skips)."""
    return out["y_hat"].abs().mean()


#: ``code(step, params) -> values`` of one half of the active channels, step 0 for the anchors
#: and 1 for the non-anchors (see :meth:`_CheckerboardCodec._two_passes`).
CodeFn = Callable[[int, Sequence[Tensor]], Tensor]


class _CheckerboardCodec(CompressionModel):
    """What the two checkerboard models share: the hyperprior, the context convolution,
    and the two-pass coding loop. Subclasses define the parameter networks
    (:meth:`_anchor_params`, :meth:`_nonanchor_params`), ``entropy_forward`` and what is coded."""

    downsampling_factor = 64  # 2 ** (4 + 2): g_a down-samples by 16, h_a by 4 more

    def _hyper(self, N: int, M: int) -> None:
        """The modules common to both models (same names as the chapter-4 context model)."""
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.h_a = mean_scale_hyper_analysis(N, M)
        self.h_s = mean_scale_hyper_synthesis(N, M)  # psi: 2M channels at y's resolution
        self.gaussian_conditional = GaussianConditional(get_scale_table())
        # phi: 2M channels from the anchors in the 5x5 neighbourhood of a non-anchor
        self.context_prediction = CheckerboardMaskedConv2d(M, 2 * M, kernel_size=5, padding=2)
        self.N, self.M = int(N), int(M)

    # The parameters of a half: tensors shaped (B, M, H, W/2, ...), the channels in dim 1.

    def _anchor_params(self, psi: Tensor) -> Tuple[Tensor, ...]:
        """The parameters of the anchors from their hyperprior features ``psi``."""
        raise NotImplementedError

    def _nonanchor_params(self, psi: Tensor, phi: Tensor) -> Tuple[Tensor, ...]:
        """The parameters of the non-anchors from ``psi`` and their context ``phi``."""
        raise NotImplementedError

    # -- coding -------------------------------------------------------------------

    def _side_information(self, x: Tensor):
        """``(y, z_strings, psi, shape)``: ``psi`` from the ``z_hat`` the decoder will see."""
        y = self.g_a(x)
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        if tuple(y.shape[-2:]) != (4 * z.size(2), 4 * z.size(3)):
            raise LictutorError(
                f"input size {tuple(x.shape[-2:])} is not a multiple of {self.downsampling_factor}"
            )
        return y, z_strings, self.h_s(z_hat), z.size()[-2:]

    def _coding_means(self, means: Tensor) -> Tensor:
        """The means the coder rounds around (values are coded as ``round(v - mean)``)."""
        return means

    def _encode_half(self, step: int, values: Tensor, params: Sequence[Tensor]):
        """``(string, decoded values)`` of one half of one image: by default with the
        Gaussian ``params = (scales, means)`` and the scale table."""
        scales, means = params
        means = self._coding_means(means)
        gc = self.gaussian_conditional
        (string,) = gc.compress(values, gc.build_indexes(scales), means=means)
        return string, quantize(values, "dequantize", means)

    def _decode_half(self, step: int, string: bytes, params: Sequence[Tensor]) -> Tensor:
        """Inverse of :meth:`_encode_half`."""
        scales, means = params
        gc = self.gaussian_conditional
        return gc.decompress([string], gc.build_indexes(scales), means=self._coding_means(means))

    def _two_passes(self, psi: Tensor, active: Tensor, code: CodeFn) -> Tensor:
        """``y_hat`` (1, M, H, W) of one image, coded or decoded by ``code`` in two passes.

        The encoder and the decoder both run this very function, so they compute
        bit-identical parameters. Only the ``active`` channels (a bool mask over the M
        channels) are coded and seen by the context; the others are zero.
        """
        height, width = psi.shape[-2:]
        y_hat = psi.new_zeros(1, self.M, height, width)
        if not bool(active.any()):
            return y_hat
        psi_anchor, psi_non_anchor = checkerboard_split(psi)

        # Pass 1: the anchors, from the hyperprior alone.
        anchors = code(0, [p[:, active] for p in self._anchor_params(psi_anchor)])

        # Pass 2: the non-anchors, from the hyperprior and the decoded anchors.
        ctx = self.context_prediction
        weight = (ctx.weight * ctx.mask)[:, active]
        known = checkerboard_merge(anchors, torch.zeros_like(anchors))
        _, phi = checkerboard_split(F.conv2d(known, weight, ctx.bias, padding=ctx.padding))
        params = self._nonanchor_params(psi_non_anchor, phi)
        non_anchors = code(1, [p[:, active] for p in params])

        y_hat[:, active] = checkerboard_merge(anchors, non_anchors)
        return y_hat

    def _encode(self, values: Tensor, psi: Tensor, active: Tensor) -> List[bytes]:
        """``[anchor_string, non_anchor_string]`` of one image: ``values`` (1, M, H, W) rounded
        around the coding means (empty strings if no channel is active)."""
        halves = checkerboard_split(values[:, active])
        strings: List[bytes] = []

        def code(step: int, params: Sequence[Tensor]) -> Tensor:
            string, decoded = self._encode_half(step, halves[step], params)
            strings.append(string)
            return decoded  # what the decoder will get

        self._two_passes(psi, active, code)
        return strings or [b"", b""]

    def _decode(self, strings: Sequence[bytes], psi: Tensor, active: Tensor) -> Tensor:
        """Inverse of :meth:`_encode`: ``y_hat`` (1, M, H, W) of one image."""
        if not bool(active.any()) and any(strings):
            raise LictutorError("damaged entropy-coded string (no channel is coded)")

        def code(step: int, params: Sequence[Tensor]) -> Tensor:
            return self._decode_half(step, strings[step], params)

        return self._two_passes(psi, active, code)

    def _all_channels(self) -> Tensor:
        device = self.gaussian_conditional.scale_table.device
        return torch.ones(self.M, dtype=torch.bool, device=device)

    def _compress(self, x: Tensor, values: Callable[[Tensor], Tensor], active) -> Dict[str, object]:
        """``{"strings": [anchors, non_anchors, z], "shape"}`` and the active channels of each
        image, ``active(values_i)``; ``values(y)`` is what is rounded and coded."""
        y, z_strings, psi, shape = self._side_information(x)
        coded = values(y)
        groups: List[List[bytes]] = [[], []]
        masks = []
        for i in range(x.size(0)):
            masks.append(active(coded[i : i + 1]))
            for group, s in zip(groups, self._encode(coded[i : i + 1], psi[i : i + 1], masks[-1])):
                group.append(s)
        return {"strings": [*groups, z_strings], "shape": shape, "active": masks}

    def _decompress(self, strings, shape, groups: int, active) -> Tensor:
        """``y_hat`` of every image; ``active(i)`` gives image ``i``'s coded channels."""
        if not isinstance(strings, (list, tuple)) or len(strings) != groups:
            raise LictutorError(
                f"strings must be {groups} lists (anchors, non-anchors, z"
                f"{', channels' if groups == 4 else ''}), as returned by compress()"
            )
        z_hat = self.entropy_bottleneck.decompress(strings[2], shape)
        n = z_hat.size(0)
        for group in strings:
            if not isinstance(group, (list, tuple)) or len(group) != n:
                raise LictutorError(f"every string group must hold one string per image ({n})")
        psi = self.h_s(z_hat)
        y_hat = [
            self._decode((strings[0][i], strings[1][i]), psi[i : i + 1], active(i))
            for i in range(n)
        ]
        return torch.cat(y_hat)


class CheckerboardContext(_CheckerboardCodec):
    r"""He et al. (2021): the chapter-4 context model with a checkerboard context.

    ::

        x -> g_a -> y -> h_a -> z -> [EntropyBottleneck] -> z_hat -> h_s -> psi     (hyper)
        anchors:      entropy_parameters(cat(psi, 0))         -> (scales, means)
        non-anchors:  entropy_parameters(cat(psi, phi))       -> (scales, means)
                      phi = context_prediction(y_hat)  (CheckerboardMaskedConv2d, 5x5)
        y_hat --[GaussianConditional(scales, means)]--> g_s -> x_hat

    Module names and shapes are those of
    :class:`~lictutor.models.context.JointAutoregressiveHierarchicalPriors` (``g_a``,
    ``g_s``, ``h_a``, ``h_s``, ``entropy_bottleneck``, ``entropy_parameters``,
    ``context_prediction``), so its state dict loads, e.g. to start from a trained
    chapter-4 model -- all but ``context_prediction.mask``, which must stay the
    checkerboard's: load with that key removed.

    **Training** (:meth:`forward`) is one pass, as in the context model: the masked
    convolution of the whole ``y_hat`` gives every non-anchor its context from the anchors
    around it, and the anchors get a zero context (the ``entropy_parameters`` network then
    sees ``cat(psi, 0)`` there, as He et al. and CompressAI do). Quantization as in the
    context model: noisy or STE-rounded ``y`` in training, ``round(y)`` in evaluation, the
    rate from ``gaussian_conditional(y, scales, means, mode=quantization)``.

    **Coding** (:meth:`compress`, :meth:`decompress`): two passes per image, each fully
    parallel; values are coded as ``round(y - mean)`` around the predicted means, like the
    context model (so the decoded ``y_hat`` is ``round(y - means) + means``). Anchors and
    non-anchors are two strings: ``strings = [anchor_strings, non_anchor_strings,
    z_strings]``; the first two are the bytes CompressAI's ``CheckerboardLatentCodec``
    writes with the same weights (its parameter network takes ``cat(phi, psi)``).

    Args:
        N: channels of the hidden layers (and of ``z``).
        M: channels of ``y``.
    """

    def __init__(self, N: int = 192, M: int = 192):
        super().__init__()
        self._hyper(N, M)
        self.g_a = analysis_transform(N, M)
        self.g_s = synthesis_transform(N, M)
        # cat(psi, phi): 4M channels -> (scales, means): 2M channels, all 1x1
        self.entropy_parameters = nn.Sequential(
            nn.Conv2d(M * 12 // 3, M * 10 // 3, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 10 // 3, M * 8 // 3, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 8 // 3, M * 6 // 3, 1),
        )  # fmt: skip

    def _anchor_params(self, psi: Tensor) -> Tuple[Tensor, Tensor]:
        no_context = torch.zeros_like(psi)  # phi has 2M channels, as psi
        scales, means = self.entropy_parameters(torch.cat((psi, no_context), 1)).chunk(2, 1)
        return scales, means

    def _nonanchor_params(self, psi: Tensor, phi: Tensor) -> Tuple[Tensor, Tensor]:
        scales, means = self.entropy_parameters(torch.cat((psi, phi), 1)).chunk(2, 1)
        return scales, means

    def entropy_forward(self, y: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``ŷ`` and ``{"y", "z"}`` likelihoods, as the chapter-4 context model."""
        mode = self.quantization
        z_hat, z_likelihoods = self.entropy_bottleneck(self.h_a(y), mode=mode)
        psi = self.h_s(z_hat)
        if self.training:
            y_hat = quantize(y, "noise" if mode == "noise" else "ste")
        else:
            y_hat = quantize(y, "dequantize")
        # Both halves in one go: every non-anchor's context comes from the anchors of y_hat
        # (the mask sees no other position); the anchors get none.
        psi_anchor, psi_non_anchor = checkerboard_split(psi)
        _, phi = checkerboard_split(self.context_prediction(y_hat))
        scales_a, means_a = self._anchor_params(psi_anchor)
        scales_n, means_n = self._nonanchor_params(psi_non_anchor, phi)
        scales, means = checkerboard_merge(scales_a, scales_n), checkerboard_merge(means_a, means_n)
        _, y_likelihoods = self.gaussian_conditional(y, scales, means, mode=mode)
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}

    @torch.no_grad()
    def compress(self, x: Tensor) -> Dict[str, object]:
        """``{"strings": [anchor_strings, non_anchor_strings, z_strings], "shape": z's (h, w)}``,
        one string per image in each list. Builds stale CDF tables first."""
        out = self._compress(x, lambda y: y, lambda y: self._all_channels())
        return {"strings": out["strings"], "shape": out["shape"]}

    @torch.no_grad()
    def decompress(self, strings: List[List[bytes]], shape: Sequence[int]) -> Dict[str, Tensor]:
        """Inverse of :meth:`compress`; ``x_hat`` clamped to [0, 1]. A damaged string
        raises :class:`LictutorError`."""
        y_hat = self._decompress(strings, shape, 3, lambda i: self._all_channels())
        return {"x_hat": self.g_s(y_hat).clamp_(0, 1)}


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


class FastLIC(_CheckerboardCodec):
    r"""Fast learned image compression after Fu et al. (2023), without distillation.

    The checkerboard model of :class:`CheckerboardContext` with the paper's three changes
    to the codec (its knowledge distillation is a training procedure, :mod:`lictutor.distill`):

    1. **Improved checkerboard context**: two parameter networks and two probability
       models instead of one. ``entropy_parameters_anchor(psi)`` gives the anchors, which
       have no context (so it sees the 2M hyperprior channels only, not a zero context), a
       Gaussian; ``entropy_parameters_nonanchor(cat(psi, phi))`` gives the non-anchors a
       mixture of ``components`` Gaussians (:class:`GaussianMixtureConditional`).
    2. **Deformable residual modules** (:class:`~lictutor.layers.DeformableResidualBlock`)
       in ``g_a`` and ``g_s``, widening their receptive field (see
       :func:`fast_analysis_transform`).
    3. **L1 sparsity and channel skipping**: trained with an L1 penalty on ``y_hat``
       (:func:`l1_sparsity`; ``forward`` returns ``"y_hat"`` for it, as every model does), many channels of
       ``y_hat`` are entirely zero for a given image. :meth:`compress` then codes a bitmask
       of the non-zero channels (``ceil(M / 8)`` bytes, a fourth string group), and neither
       the entropy coder nor the context convolution touches the others; the decoder sets
       them to zero. Decoding gives the same image with or without skipping.

    **Where we depart from the paper or choose where it is silent:**

    * *Mixture coding.* Three components by default, softmax weights (the mixture of
      Cheng et al. 2020 and their choice of K; we do not take it from the paper). The rANS coder takes one CDF table per element for
      it, built on the fly (see :class:`GaussianMixtureConditional`), which costs decoding
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
    """

    def __init__(self, N: int = 192, M: int = 192, components: int = 3, removed: Sequence[str] = ()):
        super().__init__()
        if int(components) < 1:
            raise LictutorError(f"components must be at least 1, got {components}")
        self._hyper(N, M)
        self.components = int(components)
        self.g_a = fast_analysis_transform(N, M)
        self.g_s = fast_synthesis_transform(N, M)
        self.entropy_parameters_anchor = nn.Sequential(
            nn.Conv2d(M * 2, M * 2, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 2, M * 2, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 2, M * 2, 1),
        )  # fmt: skip
        outputs = M * 2 if self.components == 1 else M * 3 * self.components
        self.entropy_parameters_nonanchor = nn.Sequential(
            nn.Conv2d(M * 12 // 3, M * 10 // 3, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 10 // 3, M * 8 // 3, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 8 // 3, outputs, 1),
        )  # fmt: skip
        if self.components > 1:
            self.gaussian_mixture = GaussianMixtureConditional()
        self.removed: Tuple[str, ...] = ()
        if removed:
            from lictutor.prune import remove_blocks_  # sets self.removed

            remove_blocks_(self, removed)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor]) -> "FastLIC":
        """A model sized after ``state_dict`` (N and M from ``g_a.0`` and ``g_a.7``, the
        components from the non-anchor network's output, the removed blocks of ``g_s`` from
        the absent ones), loaded."""
        try:
            N, M = state_dict["g_a.0.weight"].size(0), state_dict["g_a.7.weight"].size(0)
            outputs = state_dict["entropy_parameters_nonanchor.4.weight"].size(0)
        except KeyError as err:
            raise LictutorError(f"FastLIC.from_state_dict: no {err} in the state dict") from None
        net = cls(N, M, components=1 if outputs == 2 * M else outputs // (3 * M))
        from lictutor.prune import removable_blocks, remove_blocks_

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
    Gaussian needs only its scale, :meth:`GaussianConditional.build_indexes`), so every
    element gets its own 16-bit CDF, built by encoder and decoder alike from the same
    parameters: on the integers ``c - r ... c + r`` around ``c = round(sum_k w_k μ_k)``,
    with ``r`` the power of two that holds every component's ``μ_k ± 6.1 σ_k`` (all but
    ``tail_mass``), at most ``max_radius``; values beyond are escape-coded by the rANS
    coder. Building ``n`` tables costs time: this is what the mixture's bits cost.
    Damaged strings raise :class:`LictutorError`, as in :mod:`lictutor.entropy` (decoded
    from a zero-padded copy, and re-encoded to exactly the same bytes).

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
        upper = _normal_cdf((0.5 - magnitude) / scales)
        lower = _normal_cdf((-0.5 - magnitude) / scales)
        return (weights * (upper - lower)).sum(-1)

    def likelihood(self, values: Tensor, logits: Tensor, means: Tensor, scales: Tensor) -> Tensor:
        """``p(values)``, bounded below by ``likelihood_bound``; differentiable."""
        return self.likelihood_lower_bound(self._pmf(values, logits, means, scales))

    @torch.no_grad()
    def _tables(self, logits: Tensor, means: Tensor, scales: Tensor):
        """``(centres, (cdfs, lengths, offsets))``: one CDF per element, in order."""
        K = logits.size(-1)
        logits, means = logits.reshape(-1, K).double(), means.reshape(-1, K).double()
        scales = self.lower_bound_scale(scales.reshape(-1, K)).double()
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
        from compressai import ans

        centres, tables = self._tables(logits, means, scales)
        symbols = values.reshape(-1).double() - centres
        if not bool(torch.all(symbols.abs() <= MAX_SYMBOL)):  # also False for NaN
            raise LictutorError(
                f"cannot entropy-code latent values beyond ±{MAX_SYMBOL} or not finite "
                "(has the model diverged?)"
            )
        indexes = list(range(len(centres)))
        return ans.RansEncoder().encode_with_indexes(symbols.long().tolist(), indexes, *tables)

    @torch.no_grad()
    def decompress(self, string: bytes, logits: Tensor, means: Tensor, scales: Tensor) -> Tensor:
        """Inverse of :meth:`compress`: the values, shaped like ``means`` without the K."""
        from compressai import ans

        if not isinstance(string, (bytes, bytearray)):
            raise LictutorError("the mixture-coded string must be bytes")
        string = bytes(string)
        centres, tables = self._tables(logits, means, scales)
        indexes = list(range(len(centres)))
        # Zeros after the string keep a damaged string's reads inside our buffer.
        padding = bytes(8 * len(indexes) + 16 * len(string) + 4096)
        symbols = ans.RansDecoder().decode_with_indexes(string + padding, indexes, *tables)
        decoded = torch.tensor(symbols, dtype=torch.int64, device=centres.device)
        if bool(decoded.abs().gt(MAX_SYMBOL).any()) or ans.RansEncoder().encode_with_indexes(
            symbols, indexes, *tables
        ) != string:
            raise LictutorError("damaged entropy-coded string (mixture)")
        return (decoded.double() + centres).to(means.dtype).reshape(means.shape[:-1])


def _normal_cdf(x: Tensor) -> Tensor:
    """Φ(x) as ``erfc(-x/√2) / 2``, precise for x << 0 (as in :mod:`lictutor.entropy`)."""
    return 0.5 * torch.erfc(-(2**-0.5) * x)


def _quantized_cdf(pmf: Tensor, precision: int) -> Tensor:
    """Integer CDFs (n, L + 1) from pmfs (n, L): every bin gets at least 1 of the
    ``2**precision`` counts (so every symbol stays codable), the rest in proportion to its
    probability, and the rounding remainder goes to the likeliest bin."""
    total, bins = 1 << precision, pmf.size(-1)
    pmf = pmf / pmf.sum(-1, keepdim=True)
    freq = 1 + torch.floor(pmf * (total - bins)).long()
    freq[torch.arange(len(freq), device=freq.device), pmf.argmax(-1)] += total - freq.sum(-1)
    return F.pad(torch.cumsum(freq, -1), (1, 0)).int()
