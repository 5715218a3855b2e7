"""Checkerboard context models: a context model whose decoder runs in two parallel passes.

* :class:`CheckerboardContext` -- He, Zheng, Sun, Wang & Qin (2021), "Checkerboard Context
  Model for Efficient Learned Image Compression" (CVPR 2021), on the transforms of the
  chapter-4 context model (Minnen et al. 2018). CompressAI implements the same context in
  ``compressai.latent_codecs.CheckerboardLatentCodec`` (``anchor_parity="even"``).
* :class:`CheckerboardCodec` -- what it shares with :class:`lictutor.models.FastLIC`
  (:mod:`lictutor.models.fast`): the hyperprior, the context convolution and the two-pass
  coding loop.

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

from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lictutor.entropy import EntropyBottleneck, GaussianConditional, get_scale_table
from lictutor.entropy import GaussianMixtureConditional  # noqa: F401 (re-exported: it lived here)
from lictutor.errors import LictutorError
from lictutor.layers import CheckerboardMaskedConv2d
from lictutor.losses import l1_sparsity  # noqa: F401 (re-exported: it lived here)
from lictutor.models.base import CompressionModel, analysis_transform, synthesis_transform
from lictutor.models.context import entropy_parameters
from lictutor.models.hyperprior import mean_scale_hyper_analysis, mean_scale_hyper_synthesis
from lictutor.quantization import quantize

__all__ = ["CheckerboardContext", "CheckerboardCodec", "checkerboard_split", "checkerboard_merge"]


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


#: ``code(step, params) -> values`` of one half of the active channels, step 0 for the anchors
#: and 1 for the non-anchors (see :meth:`CheckerboardCodec._two_passes`).
CodeFn = Callable[[int, Sequence[Tensor]], Tensor]


class CheckerboardCodec(CompressionModel):
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


class CheckerboardContext(CheckerboardCodec):
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
        self.entropy_parameters = entropy_parameters(M)  # cat(psi, phi) -> (scales, means)

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
