"""`CompressionModel`: what every learned codec here shares.

Mirrors CompressAI's ``compressai.models.CompressionModel`` (same method names), so
its checkpoints load: ``aux_loss()``, ``update()``, and a ``load_state_dict`` that
copes with the CDF tables' data-dependent sizes and with old parameter names.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, Mapping, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from lictutor.entropy import EntropyBottleneck, EntropyModel
from lictutor.errors import LictutorError
from lictutor.layers import GDN, conv, deconv

__all__ = ["CompressionModel", "analysis_transform", "synthesis_transform", "pointwise_network", "NONLINEARITIES"]


#: the nonlinearities :func:`analysis_transform` and :func:`synthesis_transform` can put between
#: their convolutions: GDN/IGDN (Ballé et al. 2016), ReLU (the usual CNN choice), or none at all,
#: which leaves a *learned linear* transform (chapter 1's comparison)
NONLINEARITIES = ("gdn", "relu", "identity")


def _nonlinearity(kind: str, channels: int, inverse: bool) -> nn.Module:
    if kind not in NONLINEARITIES:
        raise LictutorError(f"unknown nonlinearity {kind!r}; use one of {', '.join(NONLINEARITIES)}")
    if kind == "gdn":
        return GDN(channels, inverse=inverse)
    return nn.ReLU() if kind == "relu" else nn.Identity()


def analysis_transform(N: int, M: int, nonlinearity: str = "gdn") -> nn.Sequential:
    """``g_a`` of Ballé et al. 2018 (shared by the factorized, hyperprior and context models):
    four 5×5 stride-2 convolutions with GDN between them, 3 → N → N → N → M channels.
    ``nonlinearity`` (:data:`NONLINEARITIES`) replaces GDN at the same positions, so the
    convolutions keep their module names (``g_a.0``, ``g_a.2``, …)."""
    return nn.Sequential(
        conv(3, N), _nonlinearity(nonlinearity, N, False),
        conv(N, N), _nonlinearity(nonlinearity, N, False),
        conv(N, N), _nonlinearity(nonlinearity, N, False),
        conv(N, M),
    )  # fmt: skip


def synthesis_transform(N: int, M: int, nonlinearity: str = "gdn") -> nn.Sequential:
    """``g_s``: the mirror of :func:`analysis_transform`, transposed convolutions and IGDN
    (or ``nonlinearity``, as there)."""
    return nn.Sequential(
        deconv(M, N), _nonlinearity(nonlinearity, N, True),
        deconv(N, N), _nonlinearity(nonlinearity, N, True),
        deconv(N, N), _nonlinearity(nonlinearity, N, True),
        deconv(N, 3),
    )  # fmt: skip


def pointwise_network(*widths: int) -> nn.Sequential:
    """1×1 convolutions ``widths[0] → widths[1] → ...`` with leaky ReLUs between them: a network
    applied to every latent position on its own (the context models' entropy parameters)."""
    layers: list = []
    for i in range(len(widths) - 1):
        if i:
            layers.append(nn.LeakyReLU(inplace=True))
        layers.append(nn.Conv2d(widths[i], widths[i + 1], 1))
    return nn.Sequential(*layers)


# CompressAI < 1.1 stored the entropy bottleneck's parameters as "_matrix0", ...;
# the published checkpoints still use those names.
_OLD_KEY = re.compile(r"^(?P<module>.*)\._(?P<kind>matrix|bias|factor)(?P<i>\d+)$")
_NEW_NAME = {"matrix": "matrices", "bias": "biases", "factor": "factors"}


class CompressionModel(nn.Module):
    """Base class for models with one or more entropy models.

    Subclasses define ``g_a``, ``g_s``, :meth:`entropy_forward` (how the latent is
    quantized and what it costs), ``compress(x)`` and ``decompress(strings, shape)``.
    """

    #: total down-sampling of the analysis transform; pad inputs to a multiple of it.
    downsampling_factor: int = 16
    #: how ``forward`` relaxes quantization in training: "noise", "ste" or "mixed"
    #: (see :mod:`lictutor.quantization`); the trainer sets it from its config.
    quantization: str = "noise"

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor]) -> "CompressionModel":
        """A model sized after ``state_dict`` (e.g. a CompressAI checkpoint), loaded.

        For the models built on :func:`analysis_transform`: N and M are read from the
        output channels of its first and last convolutions (``g_a.0``, ``g_a.6``).
        """
        try:
            N, M = state_dict["g_a.0.weight"].size(0), state_dict["g_a.6.weight"].size(0)
        except KeyError as err:
            raise LictutorError(f"{cls.__name__}.from_state_dict: no {err} in the state dict") from None
        net = cls(N, M)
        net.load_state_dict(state_dict)
        return net

    def forward(self, x: Tensor) -> Dict[str, object]:
        """Training/evaluation pass: ``{"x_hat", "y_hat", "likelihoods"}`` with
        ``x_hat = g_s(y_hat)``; the rate in bits is ``-log2`` of all likelihoods, summed."""
        y_hat, likelihoods = self.entropy_forward(self.g_a(x))
        return {"x_hat": self.g_s(y_hat), "y_hat": y_hat, "likelihoods": likelihoods}

    def entropy_forward(self, y: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``(ŷ, likelihoods)`` for the latent ``y = g_a(x)``: relaxed quantization in
        training (see ``quantization``), rounding in evaluation. Everything the rate
        depends on runs here, so the entropy model can be trained on ``y`` alone
        (:func:`lictutor.train.fit_entropy_model`)."""
        raise NotImplementedError

    def aux_loss(self) -> Tensor:
        """Sum of the entropy bottlenecks' quantile losses (train with its own optimizer,
        on the ``quantiles`` parameters only)."""
        losses = [m.loss() for m in self.modules() if isinstance(m, EntropyBottleneck)]
        return sum(losses) if losses else torch.zeros(())

    def update(self, force: bool = False, update_quantiles: bool = False) -> bool:
        """Build the CDF tables of every entropy model; True if any was (re)built.

        Not needed before ``compress``, which rebuilds stale tables itself; call it to
        choose *when* the cost is paid, or with ``force=True`` to rebuild regardless.
        """
        updated = False
        for m in self.modules():
            if isinstance(m, EntropyBottleneck):
                updated |= m.update(force=force, update_quantiles=update_quantiles)
            elif isinstance(m, EntropyModel):
                updated |= m.update(force=force)
        return updated

    def load_state_dict(
        self, state_dict: Mapping[str, Tensor], strict: bool = True, assign: bool = False
    ):
        """``nn.Module.load_state_dict`` that also accepts CompressAI's old key names.

        (Resizing of the CDF-table buffers happens in ``EntropyModel`` itself.)
        """
        bottlenecks = {n for n, m in self.named_modules() if isinstance(m, EntropyBottleneck)}
        renamed = OrderedDict()
        for key, value in state_dict.items():
            old = _OLD_KEY.match(key)
            if old and old["module"] in bottlenecks:
                key = f"{old['module']}.{_NEW_NAME[old['kind']]}.{old['i']}"
            renamed[key] = value
        return super().load_state_dict(renamed, strict=strict, assign=assign)
