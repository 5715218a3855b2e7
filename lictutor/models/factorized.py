"""Factorized-prior codecs: an autoencoder whose latent is coded by an EntropyBottleneck.

* :class:`FactorizedPrior` -- Ballé, Minnen, Singh, Hwang & Johnston (2018),
  "Variational image compression with a scale hyperprior", the "factorized prior"
  baseline (CompressAI's ``bmshj2018-factorized``; same module names, so its
  checkpoints load).
* :class:`FactorizedPrior2017` -- Ballé, Laparra & Simoncelli (2017), "End-to-end
  optimized image compression" (chapter 2's model).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from lictutor.entropy import EntropyBottleneck
from lictutor.errors import LictutorError
from lictutor.layers import GDN, conv, deconv
from lictutor.models.base import CompressionModel, analysis_transform, synthesis_transform

__all__ = ["FactorizedPrior", "FactorizedPrior2017"]


class _FactorizedCodec(CompressionModel):
    """``x -> g_a -> y -> EntropyBottleneck -> y_hat -> g_s -> x_hat``.

    Subclasses set ``g_a``, ``g_s`` and ``entropy_bottleneck``.
    """

    g_a: nn.Module
    g_s: nn.Module
    entropy_bottleneck: EntropyBottleneck

    def entropy_forward(self, y: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``ŷ`` and ``{"y": likelihoods}`` from the factorized density alone."""
        y_hat, y_likelihoods = self.entropy_bottleneck(y, mode=self.quantization)
        return y_hat, {"y": y_likelihoods}

    @torch.no_grad()
    def compress(self, x: Tensor) -> Dict[str, object]:
        """``{"strings": [y_strings], "shape": (h, w)}``, one string per image.

        Builds the CDF tables first if they are missing or stale (see :mod:`lictutor.entropy.base`).
        """
        y = self.g_a(x)
        y_strings = self.entropy_bottleneck.compress(y)
        return {"strings": [y_strings], "shape": y.size()[-2:]}

    @torch.no_grad()
    def decompress(self, strings: List[List[bytes]], shape: Sequence[int]) -> Dict[str, Tensor]:
        """Inverse of :meth:`compress`; ``x_hat`` clamped to [0, 1]."""
        if not isinstance(strings, (list, tuple)) or len(strings) != 1:
            raise LictutorError("strings must be [y_strings], as returned by compress()")
        y_hat = self.entropy_bottleneck.decompress(strings[0], shape)
        x_hat = self.g_s(y_hat).clamp_(0, 1)
        return {"x_hat": x_hat}


class FactorizedPrior(_FactorizedCodec):
    """Ballé et al. 2018's factorized-prior model (CompressAI ``bmshj2018-factorized``).

    ``g_a``: four 5x5 stride-2 convolutions with GDN between them (3 -> N -> N -> N -> M);
    ``g_s``: the mirror, transposed convolutions with IGDN. Down-sampling 16.
    CompressAI's pretrained models use N=128, M=192 (quality 1-5) and N=192, M=320
    (quality 6-8).

    Args:
        N: channels of the hidden layers.
        M: channels of the latent ``y``.
        nonlinearity: what sits between the convolutions, ``"gdn"`` (the paper's GDN/IGDN),
            ``"relu"`` or ``"identity"`` (a learned *linear* transform): chapter 1 trains all
            three to measure what GDN buys (:data:`lictutor.models.base.NONLINEARITIES`).
    """

    def __init__(self, N: int = 128, M: int = 192, nonlinearity: str = "gdn"):
        super().__init__()
        self.entropy_bottleneck = EntropyBottleneck(M)
        self.g_a = analysis_transform(N, M, nonlinearity)
        self.g_s = synthesis_transform(N, M, nonlinearity)
        self.N, self.M = int(N), int(M)


class FactorizedPrior2017(_FactorizedCodec):
    """Ballé, Laparra & Simoncelli (2017), "End-to-end optimized image compression".

    Three stages per transform: a 9x9 convolution
    with down-sampling by 4, then two 5x5 convolutions down-sampling by 2 (16 in
    all), N channels throughout and ``y`` has N channels too (M = N). The paper used
    N = 128 for grey-scale and N = 192 for RGB images.

    Uncertain details, and what we chose:

    * The paper puts GDN after *every* analysis stage (and IGDN before every
      synthesis stage). We follow Ballé's own reference code instead
      (tensorflow-compression ``models/bls2017.py``, "a close approximation of the
      paper"): GDN after the first two analysis stages only, the last analysis
      convolution without bias, and synthesis stages ``deconv -> IGDN``, the last one
      (9x9, up 4, to 3 channels) without IGDN.
    * The paper's density was a non-parametric piecewise-linear model per channel;
      like bls2017.py we use the 2018 deep factorized density (:class:`EntropyBottleneck`).
    * Padding follows :func:`lictutor.layers.conv` ("same", like the reference code's
      ``same_zeros``), so H and W should be multiples of 16.

    CompressAI has no such model, so there is no checkpoint to load.
    """

    def __init__(self, N: int = 192):
        super().__init__()
        self.entropy_bottleneck = EntropyBottleneck(N)
        last = nn.Conv2d(N, N, 5, stride=2, padding=2, bias=False)
        self.g_a = nn.Sequential(
            conv(3, N, kernel_size=9, stride=4), GDN(N),
            conv(N, N), GDN(N),
            last,
        )  # fmt: skip
        self.g_s = nn.Sequential(
            deconv(N, N), GDN(N, inverse=True),
            deconv(N, N), GDN(N, inverse=True),
            deconv(N, 3, kernel_size=9, stride=4),
        )  # fmt: skip
        self.N = self.M = int(N)
