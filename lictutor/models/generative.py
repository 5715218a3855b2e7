r"""Chapter 6's codecs: a HiFiC-style generator on the mean-scale hyperprior, and Microdosing's
small student decoder.

Mentzer, Toderici, Tschannen & Agustsson (2020), "High-Fidelity Generative Image Compression"
(HiFiC), decode with a generator whose first part is a stack of residual blocks at the latent's
resolution: that is where a GAN codec makes its textures, and most of its decoder's weights.
Helminger, Azevedo, Djelouah, Gross & Schroers (2021), "Microdosing: Knowledge Distillation for
GAN based Compression", replace that stack by a small one of degradation-aware blocks
(:class:`lictutor.layers.DegradationAwareBlock`), distilled from the teacher, and specialize it
per subset of content: the conditioning vector (and, if wanted, the small stack's weights) is
fitted on the encoder side and sent with the latents (:mod:`lictutor.weight_coding`).

Both models keep chapter 4's :class:`~lictutor.models.MeanScaleHyperprior` for everything but
the stack, whose names are ``g_s.texture.*``; the rest of ``g_s`` keeps the names
``g_s.0`` … ``g_s.6``, so chapter 4's weights load into either model as they are (all but the
stack's, which starts as the identity: the new model decodes exactly as the old one did). The
adversarial part of their training is in :mod:`lictutor.adversarial`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from lictutor.errors import LictutorError
from lictutor.layers import DegradationAwareBlock, conv
from lictutor.models.base import synthesis_transform
from lictutor.models.hyperprior import MeanScaleHyperprior
from lictutor.weight_coding import SECTION_TAG, decode_weights, encode_weights, stored_step

__all__ = ["ResidualStack", "ConditionedStack", "GenerativeHyperprior", "MicrodosingStudent"]


def _zero(module: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


class _ResidualBlock(nn.Module):
    """``x + conv(LeakyReLU(conv(x)))``, 3×3 convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv(channels, channels, kernel_size=3, stride=1)
        self.conv2 = conv(channels, channels, kernel_size=3, stride=1)
        self.leaky_relu = nn.LeakyReLU(0.1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.leaky_relu(self.conv1(x)))


class ResidualStack(nn.Module):
    """HiFiC's texture stack at the latent resolution:
    ``ŷ + tail(blocks(head(ŷ)))``, ``head`` and ``tail`` 3×3 convolutions between the latent's
    ``M`` channels and the stack's ``width``; ``tail`` starts at zero (the identity)."""

    def __init__(self, M: int, width: int, blocks: int):
        super().__init__()
        self.head = conv(M, width, kernel_size=3, stride=1)
        self.blocks = nn.Sequential(*(_ResidualBlock(width) for _ in range(blocks)))
        self.tail = _zero(conv(width, M, kernel_size=3, stride=1))

    def forward(self, y_hat: Tensor) -> Tensor:
        return y_hat + self.tail(self.blocks(self.head(y_hat)))


class ConditionedStack(nn.Module):
    """Microdosing's small texture stack: :class:`~lictutor.layers.DegradationAwareBlock` s
    conditioned on one learned vector, ``condition`` (the part a subset of content gets its
    own of); ``ŷ + tail(blocks(head(ŷ), c))``, ``tail`` at zero to start."""

    def __init__(self, M: int, width: int, blocks: int, condition: int):
        super().__init__()
        self.head = conv(M, width, kernel_size=3, stride=1)
        self.blocks = nn.ModuleList(DegradationAwareBlock(width, condition) for _ in range(blocks))
        self.tail = _zero(conv(width, M, kernel_size=3, stride=1))
        self.condition = nn.Parameter(torch.zeros(condition))

    def forward(self, y_hat: Tensor) -> Tensor:
        h = self.head(y_hat)
        for block in self.blocks:
            h = block(h, self.condition)
        return y_hat + self.tail(h)


def _synthesis_with(texture: nn.Module, N: int, M: int) -> nn.Sequential:
    """``g_s``: ``texture``, then chapter 4's synthesis under its own names ``0`` … ``6``."""
    return nn.Sequential(OrderedDict([("texture", texture), *((str(i), m) for i, m in enumerate(synthesis_transform(N, M)))]))


def _count(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    """How many numbered children ``prefix.<i>.`` the state dict holds."""
    found = {k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)}
    return len([i for i in found if i.isdigit()])


class GenerativeHyperprior(MeanScaleHyperprior):
    """The HiFiC-style teacher of chapter 6: chapter 4's mean-scale hyperprior with a residual
    stack (:class:`ResidualStack`) at the start of ``g_s``. Trained with the adversarial and
    perceptual terms of :mod:`lictutor.adversarial`, it is a GAN codec; trained on rate and
    MSE alone, a mean-scale hyperprior with a deeper decoder.

    Args:
        N: channels of the hidden layers and of ``z``.
        M: channels of ``y``.
        blocks: residual blocks in the stack (HiFiC: 9).
        width: channels of the stack (default ``N``; HiFiC: 960).
    """

    def __init__(self, N: int = 128, M: int = 192, blocks: int = 4, width: int | None = None):
        super().__init__(N, M)
        if int(blocks) < 1:
            raise LictutorError(f"the residual stack needs at least one block, got {blocks}")
        self.g_s = _synthesis_with(ResidualStack(M, width or N, int(blocks)), N, M)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor]) -> "GenerativeHyperprior":
        """A model sized after ``state_dict`` (the stack's blocks and width from its keys), loaded."""
        try:
            N, M = state_dict["g_a.0.weight"].size(0), state_dict["g_a.6.weight"].size(0)
            width = state_dict["g_s.texture.head.weight"].size(0)
        except KeyError as err:
            raise LictutorError(f"{cls.__name__}.from_state_dict: no {err} in the state dict") from None
        net = cls(N, M, blocks=_count(state_dict, "g_s.texture.blocks."), width=width)
        net.load_state_dict(state_dict)
        return net


class MicrodosingStudent(MeanScaleHyperprior):
    """Microdosing's student (Helminger et al. 2021): the teacher's encoder and entropy model,
    and a decoder whose texture stack is a small :class:`ConditionedStack`. Distilled from a
    :class:`GenerativeHyperprior`; its ``g_s.texture.condition`` (and optionally the small stack's
    other weights) is what a subset of content is specialized in and sends.

    **Sending the specialized part.** :meth:`compress` quantizes the ``g_s`` parameters named
    in ``send`` (by default the conditioning vector) with ``weight_step`` and puts them in the
    file's weight section (:mod:`lictutor.weight_coding`); :meth:`decompress` decodes with the
    weights it finds there, not its own. So a decoder that has the general student decodes the
    files of a student specialized to a subset, and the file's size counts what was sent (a
    subset's images could share one section; the chapter amortizes it). The sent weights are
    left out of the configuration hash that files are checked against
    (:func:`lictutor.evaluate.compress_image`).

    Args:
        N, M: as the teacher's.
        blocks: degradation-aware blocks (default 1).
        width: channels of the stack (default ``N // 2``).
        condition: length of the conditioning vector (default 8).
        send: names of the ``g_s`` parameters each file carries (default: the conditioning vector).
        weight_step: the quantization step of the sent weights.
    """

    def __init__(self, N: int = 128, M: int = 192, blocks: int = 1, width: int | None = None, condition: int = 8,
                 send: Sequence[str] = ("g_s.texture.condition",), weight_step: float = 1 / 64):
        super().__init__(N, M)
        if int(blocks) < 1 or int(condition) < 1:
            raise LictutorError("the student's stack needs at least one block and a condition of length 1 or more")
        stack = ConditionedStack(M, width or max(N // 2, 1), int(blocks), int(condition))
        self.g_s = _synthesis_with(stack, N, M)
        params = dict(self.named_parameters())
        unknown = [n for n in send if n not in params or not n.startswith("g_s.")]
        if unknown:
            raise LictutorError(f"cannot send {', '.join(map(str, unknown))}: not a parameter of the decoder")
        self.send, self.weight_step = tuple(send), stored_step(weight_step)

    def sent_weights(self) -> Dict[str, Tensor]:
        """The parameters named in ``send``, in that order."""
        params = dict(self.named_parameters())
        return {n: params[n] for n in self.send}

    @torch.no_grad()
    def compress(self, x: Tensor) -> Dict[str, object]:
        """As the mean-scale hyperprior's, with the weights named in ``send`` in ``"sections"``."""
        out = super().compress(x)
        if self.send:
            out["sections"] = {SECTION_TAG: encode_weights(self.sent_weights(), self.weight_step)}
        return out

    @torch.no_grad()
    def decompress(self, strings: List[List[bytes]], shape: Sequence[int],
                   sections: Optional[Mapping[str, bytes]] = None) -> Dict[str, Tensor]:
        """As the mean-scale hyperprior's; with a weight section in ``sections``, decoded with
        the weights it holds (the model's own are restored afterwards)."""
        if not sections or SECTION_TAG not in sections:
            return super().decompress(strings, shape)
        params, like = dict(self.named_parameters()), self.sent_weights()
        sent = decode_weights(sections[SECTION_TAG], like)
        own = {n: p.detach().clone() for n, p in like.items()}
        try:
            for n, value in sent.items():
                params[n].copy_(value)
            return super().decompress(strings, shape)
        finally:
            for n, value in own.items():
                params[n].copy_(value)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor]) -> "MicrodosingStudent":
        """A model sized after ``state_dict`` (blocks, width and condition from the stack's keys), loaded."""
        try:
            N, M = state_dict["g_a.0.weight"].size(0), state_dict["g_a.6.weight"].size(0)
            width = state_dict["g_s.texture.head.weight"].size(0)
            condition = state_dict["g_s.texture.condition"].numel()
        except KeyError as err:
            raise LictutorError(f"{cls.__name__}.from_state_dict: no {err} in the state dict") from None
        net = cls(N, M, blocks=_count(state_dict, "g_s.texture.blocks."), width=width, condition=condition)
        net.load_state_dict(state_dict)
        return net
