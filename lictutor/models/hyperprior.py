"""Hyperprior codecs: the latent ``y`` is coded with a Gaussian whose parameters are sent as
side information ``z``, itself coded by an EntropyBottleneck.

* :class:`ScaleHyperprior` -- Ballé, Minnen, Singh, Hwang & Johnston (2018), "Variational
  image compression with a scale hyperprior" (CompressAI's ``bmshj2018-hyperprior``).
* :class:`MeanScaleHyperprior` -- Minnen, Ballé & Toderici (2018), "Joint autoregressive and
  hierarchical priors for learned image compression", its hyperprior-only model with a mean
  *and* a scale per element (CompressAI's ``mbt2018-mean``).

Same module names and layers as CompressAI's, so its state dicts (checkpoints) load.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from lictutor.entropy import EntropyBottleneck, GaussianConditional, get_scale_table
from lictutor.errors import LictutorError
from lictutor.layers import conv, deconv
from lictutor.models.base import CompressionModel, analysis_transform, synthesis_transform

__all__ = ["ScaleHyperprior", "MeanScaleHyperprior"]


def mean_scale_hyper_analysis(N: int, M: int) -> nn.Sequential:
    """``h_a`` of the mean-scale and context models (Minnen et al. 2018): leaky ReLUs."""
    return nn.Sequential(
        conv(M, N, kernel_size=3, stride=1), nn.LeakyReLU(inplace=True),
        conv(N, N), nn.LeakyReLU(inplace=True),
        conv(N, N),
    )  # fmt: skip


def mean_scale_hyper_synthesis(N: int, M: int) -> nn.Sequential:
    """``h_s`` of the mean-scale and context models: 2M outputs (scales and means, or the
    hyperprior half of the context model's entropy parameters), no final activation."""
    return nn.Sequential(
        deconv(N, M), nn.LeakyReLU(inplace=True),
        deconv(M, M * 3 // 2), nn.LeakyReLU(inplace=True),
        conv(M * 3 // 2, M * 2, kernel_size=3, stride=1),
    )  # fmt: skip


class ScaleHyperprior(CompressionModel):
    """Ballé et al. 2018's scale hyperprior (CompressAI ``bmshj2018-hyperprior``).

    ``y = g_a(x)`` is coded with a zero-mean Gaussian (:class:`GaussianConditional`) whose
    scale for every element is predicted by ``h_s`` from the side information
    ``z = h_a(|y|)``, coded first with a factorized density (:class:`EntropyBottleneck`).
    ``g_a``/``g_s`` are those of the factorized model (down-sampling 16); ``h_a`` down-samples
    by 4 more (64 in all). The rate is that of ``y`` plus that of ``z``.

    CompressAI's pretrained models use N=128, M=192 (quality 1-5) and N=192, M=320 (6-8).

    Args:
        N: channels of the hidden layers and of ``z``.
        M: channels of ``y``.
    """

    downsampling_factor = 64

    def __init__(self, N: int = 128, M: int = 192):
        super().__init__()
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.g_a = analysis_transform(N, M)
        self.g_s = synthesis_transform(N, M)
        self.h_a = nn.Sequential(
            conv(M, N, kernel_size=3, stride=1), nn.ReLU(inplace=True),
            conv(N, N), nn.ReLU(inplace=True),
            conv(N, N),
        )  # fmt: skip
        self.h_s = nn.Sequential(
            deconv(N, N), nn.ReLU(inplace=True),
            deconv(N, N), nn.ReLU(inplace=True),
            conv(N, M, kernel_size=3, stride=1), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.gaussian_conditional = GaussianConditional(get_scale_table())
        self.N, self.M = int(N), int(M)

    # The two places where the mean-scale model differs.

    def _hyper_analysis(self, y: Tensor) -> Tensor:
        """``z``: the scale hyperprior sees only magnitudes, ``h_a(|y|)``."""
        return self.h_a(torch.abs(y))

    def _gaussian_params(self, z_hat: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """``(scales, means)`` of ``y`` predicted from ``z_hat``; zero mean here (None)."""
        return self.h_s(z_hat), None

    def entropy_forward(self, y: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``ŷ`` and ``{"y", "z"}`` likelihoods: ``z`` through the entropy bottleneck, then
        ``y`` through a Gaussian with the parameters ``h_s`` predicts from ``ẑ``."""
        z = self._hyper_analysis(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z, mode=self.quantization)
        scales, means = self._gaussian_params(z_hat)
        y_hat, y_likelihoods = self.gaussian_conditional(
            y, scales, means=means, mode=self.quantization
        )
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}

    @torch.no_grad()
    def compress(self, x: Tensor) -> Dict[str, object]:
        """``{"strings": [y_strings, z_strings], "shape": (h, w) of z}``, a string per image.

        ``z`` is coded first, then decoded again so that the encoder predicts the scales from
        exactly the ``z_hat`` the decoder will see. Stale CDF tables are rebuilt first.
        """
        y = self.g_a(x)
        z = self._hyper_analysis(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        scales, means = self._gaussian_params(z_hat)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_strings = self.gaussian_conditional.compress(y, indexes, means=means)
        return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}

    @torch.no_grad()
    def decompress(self, strings: List[List[bytes]], shape: Sequence[int]) -> Dict[str, Tensor]:
        """Inverse of :meth:`compress`: ``z_hat``, then the scales, then ``y_hat``;
        ``x_hat`` clamped to [0, 1]."""
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise LictutorError("strings must be [y_strings, z_strings], as returned by compress()")
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        scales, means = self._gaussian_params(z_hat)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_hat = self.gaussian_conditional.decompress(
            strings[0], indexes, means=means, dtype=z_hat.dtype
        )
        x_hat = self.g_s(y_hat).clamp_(0, 1)
        return {"x_hat": x_hat}


class MeanScaleHyperprior(ScaleHyperprior):
    """Minnen, Ballé & Toderici (2018)'s mean-scale hyperprior (CompressAI ``mbt2018-mean``).

    As :class:`ScaleHyperprior`, but ``h_s`` predicts a mean as well as a scale for every
    element of ``y`` (2M output channels: scales, then means), ``h_a`` sees ``y`` itself
    rather than ``|y|``, and the hyper-transforms use leaky ReLUs (``h_s`` has none at the
    end: means may be negative). Values are coded as ``round(y - mean)``.

    Args:
        N: channels of the hidden layers and of ``z``.
        M: channels of ``y``.
    """

    def __init__(self, N: int = 128, M: int = 192):
        super().__init__(N, M)
        self.h_a = mean_scale_hyper_analysis(N, M)
        self.h_s = mean_scale_hyper_synthesis(N, M)

    def _hyper_analysis(self, y: Tensor) -> Tensor:
        return self.h_a(y)

    def _gaussian_params(self, z_hat: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        scales, means = self.h_s(z_hat).chunk(2, 1)
        return scales, means
