"""The joint autoregressive and hierarchical prior: a hyperprior *plus* a context model.

* :class:`JointAutoregressiveHierarchicalPriors` -- Minnen, Ballé & Toderici (2018),
  "Joint Autoregressive and Hierarchical Priors for Learned Image Compression"
  (NeurIPS 2018; CompressAI's ``mbt2018``). Same module and parameter names as
  ``compressai.models.JointAutoregressiveHierarchicalPriors``, so its checkpoints load,
  and the same bitstream: our ``compress`` writes CompressAI's bytes.

Self-contained on :class:`~lictutor.models.base.CompressionModel` so that it can be
read on its own: the transforms are the mean-scale hyperprior's, the new parts are
``context_prediction``, ``entropy_parameters`` and the serial coding loop.
"""

from __future__ import annotations

import time
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from lictutor.entropy import EntropyBottleneck, GaussianConditional, coder, get_scale_table, update_stale_tables
from lictutor.errors import LictutorError
from lictutor.layers import MaskedConv2d
from lictutor.models.base import CompressionModel, analysis_transform, pointwise_network, synthesis_transform
from lictutor.models.hyperprior import mean_scale_hyper_analysis, mean_scale_hyper_synthesis
from lictutor.quantization import quantize

__all__ = ["JointAutoregressiveHierarchicalPriors", "entropy_parameters", "PROGRESS_POSITIONS"]

#: latent positions from which ``compress``/``decompress(progress=True)`` show a bar: about
#: 15 s of serial coding on 2 CPU cores (a 1024×1024 image)
PROGRESS_POSITIONS = 4096


def entropy_parameters(M: int, outputs: int | None = None) -> nn.Sequential:
    """``entropy_parameters`` of Minnen et al. (2018): 1×1 convolutions from ``cat(psi, phi)``
    (4M channels) through 10M/3 and 8M/3 to ``outputs`` (default 2M: a scale and a mean per
    channel), so the parameters at a position depend only on ``psi`` and ``phi`` there."""
    return pointwise_network(M * 12 // 3, M * 10 // 3, M * 8 // 3, outputs or M * 6 // 3)


class JointAutoregressiveHierarchicalPriors(CompressionModel):
    r"""Minnen, Ballé & Toderici (2018): mean-scale hyperprior + autoregressive context.

    ::

        x -> g_a -> y -> h_a -> z -> [EntropyBottleneck] -> z_hat -> h_s -> psi  (hyper)
                    y -> Q -> y_hat -> context_prediction -> phi                 (context)
                    entropy_parameters(cat(psi, phi)) -> (scales, means)
                    y_hat --[GaussianConditional(scales, means)]--> g_s -> x_hat

    Every element of ``y`` is coded with a Gaussian whose mean and scale depend on two
    sources: the hyperprior ``psi = h_s(z_hat)`` (side information, sent first) and the
    context ``phi``, a 5x5 *masked* convolution (mask type "A", see
    :class:`~lictutor.layers.MaskedConv2d`) of the already decoded ``y_hat`` values above
    and to the left of it (all ``M`` channels). ``entropy_parameters`` is a stack of 1x1
    convolutions, so the parameters at position ``(i, j)`` depend only on ``psi[i, j]``
    and ``phi[i, j]``.

    **The cost: decoding is serial.** In training, and in :meth:`forward`, all of
    ``y_hat`` is known, so the context is one masked convolution over the whole latent.
    The decoder does not have ``y_hat``: it must decode position ``(0, 0)``, then use it
    to predict ``(0, 1)``, and so on in raster order. :meth:`decompress` therefore runs
    ``H_y x W_y`` steps (``H_y = H / 16``), each a 5x5 convolution on a crop, the
    ``entropy_parameters`` network on one position and one call to the rANS decoder --
    e.g. 48 x 32 = 1536 small sequential steps for a 768 x 512 Kodak image, none of
    which can run in parallel, so a GPU barely helps (CompressAI warns against it).
    :meth:`compress` mirrors the same loop (it could use one masked convolution, as all of
    ``y_hat`` is known, but the loop keeps encoder and decoder bit-exact; the rANS coder
    itself runs once over all symbols). Later work (checkerboard and channel-wise context
    models) trades a little rate for parallel decoding.

    **Down-sampling 64.** ``y`` is 16 times smaller than ``x`` and ``z`` 4 times smaller
    than ``y``; the coding loop assumes ``y`` is exactly 4 times ``z``, so inputs must be
    multiples of 64 (``downsampling_factor``; :func:`lictutor.evaluate.compress_image`
    pads).

    **Quantization in** :meth:`forward` (as CompressAI, extended to ``quantization``):
    the context model and ``g_s`` see ``y_hat`` -- ``y`` plus uniform noise ("noise"),
    ``ste_round(y)`` ("ste" and "mixed") in training, ``round(y)`` in evaluation.
    The rate term comes from ``gaussian_conditional(y, scales, means, mode=quantization)``,
    which draws its own noise ("noise", "mixed") or rounds around the predicted mean
    ("ste"). In evaluation the likelihoods are those of ``round(y - means) + means``,
    the values :meth:`compress` codes, while ``x_hat`` is ``g_s(round(y))`` -- CompressAI's
    behaviour, kept so results and checkpoints compare; the decoded image
    (:meth:`decompress`) uses ``round(y - means) + means`` and may differ slightly.

    Args:
        N: channels of the hidden layers (and of ``z``).
        M: channels of ``y``. CompressAI's pretrained ``mbt2018`` uses N=192, M=192
            (quality 1-4) and N=192, M=320 (5-8).
    """

    downsampling_factor = 64  # 2 ** (4 + 2): g_a down-samples by 16, h_a by 4 more

    def __init__(self, N: int = 192, M: int = 192):
        super().__init__()
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.g_a = analysis_transform(N, M)
        self.g_s = synthesis_transform(N, M)
        self.h_a = mean_scale_hyper_analysis(N, M)
        # psi: 2M channels at y's resolution (hyperprior half of the entropy parameters)
        self.h_s = mean_scale_hyper_synthesis(N, M)
        self.gaussian_conditional = GaussianConditional(get_scale_table())
        self.entropy_parameters = entropy_parameters(M)  # cat(psi, phi) -> (scales, means)
        # phi: 2M channels from the causal 5x5 neighbourhood of y_hat
        self.context_prediction = MaskedConv2d(
            M, 2 * M, kernel_size=5, padding=2, stride=1, mask_type="A"
        )
        self.N, self.M = int(N), int(M)

    # -- training / evaluation ----------------------------------------------------

    def _gaussian_params(self, psi: Tensor, phi: Tensor):
        """``(scales, means)`` from the hyperprior and context features."""
        scales, means = self.entropy_parameters(torch.cat((psi, phi), dim=1)).chunk(2, 1)
        return scales, means

    def entropy_forward(self, y: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``ŷ`` and ``{"y", "z"}`` likelihoods; see the class docstring for what is
        quantized how. All of ``ŷ`` is known here, so the context is one masked convolution."""
        mode = self.quantization
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z, mode=mode)
        psi = self.h_s(z_hat)

        if self.training:
            y_hat = quantize(y, "noise" if mode == "noise" else "ste")
        else:
            y_hat = quantize(y, "dequantize")
        phi = self.context_prediction(y_hat)
        scales, means = self._gaussian_params(psi, phi)
        _, y_likelihoods = self.gaussian_conditional(y, scales, means, mode=mode)
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}

    # -- coding -------------------------------------------------------------------

    kernel_size = 5  # of context_prediction
    padding = 2  # (kernel_size - 1) // 2

    def _params_at(self, y_hat: Tensor, psi: Tensor, h: int, w: int):
        """``(scales, means)``, each (1, M), at latent position ``(h, w)``.

        ``y_hat`` is padded by 2 on every side, so the 5x5 crop starting at ``(h, w)`` is
        centred on the position; the masked convolution of that crop (no padding) gives
        the context feature of that one position.
        """
        k = self.kernel_size
        crop = y_hat[:, :, h : h + k, w : w + k]
        weight = self.context_prediction.weight * self.context_prediction.mask
        phi = F.conv2d(crop, weight, bias=self.context_prediction.bias)
        scales, means = self._gaussian_params(psi[:, :, h : h + 1, w : w + 1], phi)
        return scales.reshape(1, -1), means.reshape(1, -1)

    def _raster(self, y_hat: Tensor, psi: Tensor, code, progress: bool = False) -> Tuple[List[int], List[int]]:
        """The serial loop over one image's latent positions in raster order, which the encoder
        and the decoder both run, so that they compute bit-identical parameters.

        At every position the Gaussian parameters come from ``psi`` and the values of ``y_hat``
        (padded by 2) coded before it; ``code(h, w, means, index)`` codes or decodes the M values
        at padded position ``(h, w)`` with the CDF rows ``index``, writes into ``y_hat`` what the
        decoder sees there and returns their symbols. Returns every symbol and index, in order.
        ``progress``: from :data:`PROGRESS_POSITIONS` positions on, a bar over the rows and,
        after the first, a one-line estimate of the time left.
        """
        symbols: List[int] = []
        indexes: List[int] = []
        p = self.padding
        rows, cols = psi.size(2), psi.size(3)
        shown = progress and rows * cols >= PROGRESS_POSITIONS
        start = time.perf_counter()
        with tqdm(total=rows, desc="context model", unit="row", disable=not shown) as bar:
            for h in range(rows):
                for w in range(cols):
                    scales, means = self._params_at(y_hat, psi, h, w)
                    index = self.gaussian_conditional.build_indexes(scales).reshape(-1).tolist()
                    symbols.extend(code(h + p, w + p, means, index))
                    indexes.extend(index)
                bar.update(1)
                if shown and h == 0:
                    left = (time.perf_counter() - start) * (rows - 1)
                    bar.write(f"context model: {rows}×{cols} latent positions, coded one after another: "
                              f"about {left:.0f} s left at the first row's pace")
        return symbols, indexes

    @torch.no_grad()
    def compress(self, x: Tensor, progress: bool = False) -> Dict[str, object]:
        """``{"strings": [y_strings, z_strings], "shape": z's (h, w)}``, one string per
        image in each list; the same bytes as CompressAI's ``compress``.

        ``z`` is coded by the entropy bottleneck; ``y`` position by position in raster
        order (see the class docstring), then rANS-coded in one go. Builds stale CDF
        tables first. ``progress``: a bar for large images (:meth:`_raster`).
        """
        update_stale_tables(self)
        y = self.g_a(x)
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        psi = self.h_s(z_hat)

        height, width = z_hat.size(2) * 4, z_hat.size(3) * 4
        if (height, width) != tuple(y.shape[-2:]):
            raise LictutorError(
                f"input size {tuple(x.shape[-2:])} is not a multiple of {self.downsampling_factor}"
            )
        p = self.padding
        y_hat = F.pad(y, (p, p, p, p))  # overwritten by the quantized values as we go
        tables = self.gaussian_conditional.tables_as_lists()
        y_strings = []
        for i in range(y.size(0)):
            item = y_hat[i : i + 1]

            def code(h: int, w: int, means: Tensor, index: List[int]) -> List[int]:
                value = item[:, :, h, w]
                coder.check_range(value - means)
                q = quantize(value, "symbols", means)
                item[:, :, h, w] = q + means  # what the decoder will see
                return q.reshape(-1).tolist()

            y_strings.append(coder.encode(*self._raster(item, psi[i : i + 1], code, progress), tables))
        return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}

    @torch.no_grad()
    def decompress(self, strings: List[List[bytes]], shape: Sequence[int], progress: bool = False) -> Dict[str, Tensor]:
        """Inverse of :meth:`compress`; ``x_hat`` clamped to [0, 1].

        The serial part: each of the ``H_y x W_y`` positions needs the values decoded
        before it. A damaged string raises :class:`LictutorError` (as everywhere, the string is
        decoded from a zero-padded copy and must re-encode to exactly itself:
        :mod:`lictutor.entropy.coder`).
        """
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise LictutorError("strings must be [y_strings, z_strings], as returned by compress()")
        y_strings = strings[0]
        if not isinstance(y_strings, (list, tuple)) or not all(
            isinstance(s, (bytes, bytearray)) for s in y_strings
        ):
            raise LictutorError("y_strings must be a list of bytes, one per image")
        update_stale_tables(self)
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        if len(y_strings) != z_hat.size(0):
            raise LictutorError(f"got {len(y_strings)} y strings for {z_hat.size(0)} z strings")
        psi = self.h_s(z_hat)

        height, width = z_hat.size(2) * 4, z_hat.size(3) * 4
        p = self.padding
        # zeros around the latent, so every 5x5 crop exists; decoded values fill it in
        y_hat = torch.zeros(
            (z_hat.size(0), self.M, height + 2 * p, width + 2 * p), device=z_hat.device
        )
        tables = self.gaussian_conditional.tables_as_lists()
        for i, string in enumerate(y_strings):
            decoder, item = coder.stream_decoder(string, self.M * height * width), y_hat[i : i + 1]

            def code(h: int, w: int, means: Tensor, index: List[int]) -> List[int]:
                values = decoder.decode_stream(index, *tables)
                coder.check_symbols(values, f"image {i}")  # before garbage feeds the context
                item[:, :, h, w] = torch.tensor(values, dtype=torch.float, device=means.device).reshape(1, -1) + means
                return values

            coder.check_decoded(*self._raster(item, psi[i : i + 1], code, progress), tables, string, f"image {i}")

        y_hat = y_hat[:, :, p : p + height, p : p + width]
        x_hat = self.g_s(y_hat).clamp_(0, 1)
        return {"x_hat": x_hat}
