"""Building blocks of the transforms: GDN / IGDN, the conv / deconv helpers, the masked
convolutions of the context models, the deformable residual block of chapter 7 and the
degradation-aware block of chapter 6.

Written from scratch in plain PyTorch, but with CompressAI's module, parameter and
buffer names, so that a CompressAI ``GDN`` state dict loads into ours and back::

    beta, gamma,
    beta_reparam.pedestal, beta_reparam.lower_bound.bound,
    gamma_reparam.pedestal, gamma_reparam.lower_bound.bound

The tests check outputs and gradients against ``compressai.layers.GDN``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import DeformConv2d

from lictutor.errors import LictutorError

__all__ = [
    "LowerBoundFunction",
    "LowerBound",
    "NonNegativeParametrizer",
    "GDN",
    "conv",
    "deconv",
    "MaskedConv2d",
    "CheckerboardMaskedConv2d",
    "DeformableResidualBlock",
    "DegradationAwareBlock",
]


class LowerBoundFunction(torch.autograd.Function):
    """``max(x, bound)`` whose gradient does not die below the bound.

    The true derivative of ``max(x, bound)`` is 0 for ``x < bound``: a parameter that
    fell below its bound would be stuck there forever. Instead (as in Ballé's
    tensorflow-compression ``lower_bound`` op) the gradient passes through when ``x``
    is at/above the bound, *or* when the gradient would push ``x`` up (``grad < 0``,
    since the optimizer steps along ``-grad``). It is blocked only when it would push
    ``x`` further below the bound.
    """

    @staticmethod
    def forward(ctx, x: Tensor, bound: Tensor) -> Tensor:
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        x, bound = ctx.saved_tensors
        pass_through = (x >= bound) | (grad_output < 0)
        return pass_through * grad_output, None


class LowerBound(nn.Module):
    """Module form of :class:`LowerBoundFunction`; the bound is a buffer ``bound``."""

    bound: Tensor

    def __init__(self, bound: float):
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(bound)]))

    def forward(self, x: Tensor) -> Tensor:
        return LowerBoundFunction.apply(x, self.bound)


class NonNegativeParametrizer(nn.Module):
    """Store a parameter ``p >= minimum`` as ``s`` with ``p = max(s, b)**2 - pedestal``.

    Ballé, Laparra & Simoncelli (2016), sec. 3 / appendix: optimizing ``sqrt(p)``
    instead of ``p`` makes the gradient steps near zero small, and the lower bound
    ``b = sqrt(minimum + pedestal)`` keeps ``p >= minimum``. The small pedestal
    (``reparam_offset**2 = 2**-36``) keeps the square root away from 0, where its
    derivative blows up. ``init(p)`` is the inverse map, used to store initial values.
    """

    pedestal: Tensor

    def __init__(self, minimum: float = 0.0, reparam_offset: float = 2**-18):
        super().__init__()
        self.minimum = float(minimum)
        self.reparam_offset = float(reparam_offset)
        pedestal = self.reparam_offset**2
        self.register_buffer("pedestal", torch.tensor([pedestal]))
        self.lower_bound = LowerBound((self.minimum + pedestal) ** 0.5)

    def init(self, p: Tensor) -> Tensor:
        """The stored value ``s`` for a desired (non-negative) value ``p``."""
        return torch.sqrt(torch.max(p + self.pedestal, self.pedestal))

    def forward(self, s: Tensor) -> Tensor:
        return self.lower_bound(s) ** 2 - self.pedestal


class GDN(nn.Module):
    r"""Generalized divisive normalization (and its approximate inverse, IGDN).

    Ballé, Laparra & Simoncelli (2016), "Density modeling of images using a
    generalized normalization transformation", eq. (1) with exponents 2 and 1/2, as
    used in Ballé et al. 2017 (eq. 4) and 2018:

    .. math::
        y_i = \frac{x_i}{\sqrt{\beta_i + \sum_j \gamma_{ij} x_j^2}}
        \qquad\text{(GDN)},\qquad
        \hat x_i = y_i \sqrt{\beta_i + \sum_j \gamma_{ij} y_j^2}
        \qquad\text{(IGDN, one fixed-point step of the inverse)}.

    The sum over channels ``j`` at each pixel is a 1x1 convolution of ``x**2`` with
    weight ``gamma`` and bias ``beta``. ``beta`` (init 1, kept ``>= beta_min``) and
    ``gamma`` (init ``gamma_init * I``, kept ``>= 0``) are stored through
    :class:`NonNegativeParametrizer`.

    Args:
        in_channels: number of channels C of the input (B, C, H, W).
        inverse: IGDN (multiply by the norm) instead of GDN (divide by it).
        beta_min: lower bound on beta, keeps the denominator away from 0.
        gamma_init: initial value of the diagonal of gamma.
    """

    def __init__(
        self,
        in_channels: int,
        inverse: bool = False,
        beta_min: float = 1e-6,
        gamma_init: float = 0.1,
    ):
        super().__init__()
        self.inverse = bool(inverse)

        # Registration order (beta, gamma, beta_reparam, gamma_reparam) gives the same
        # state-dict key order as CompressAI.
        self.beta_reparam = NonNegativeParametrizer(minimum=float(beta_min))
        self.beta = nn.Parameter(self.beta_reparam.init(torch.ones(in_channels)))

        self.gamma_reparam = NonNegativeParametrizer()
        gamma = float(gamma_init) * torch.eye(in_channels)
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma))

    def forward(self, x: Tensor) -> Tensor:
        C = x.size(1)
        beta = self.beta_reparam(self.beta)  # (C,)
        gamma = self.gamma_reparam(self.gamma)  # (C, C): gamma[i, j] weighs x_j^2 for y_i
        norm = F.conv2d(x**2, gamma.reshape(C, C, 1, 1), beta)  # beta_i + sum_j gamma_ij x_j^2
        if self.inverse:
            return x * torch.sqrt(norm)
        return x * torch.rsqrt(norm)

    def extra_repr(self) -> str:
        return f"{self.beta.numel()}, inverse={self.inverse}"


def conv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    """Strided convolution with "same" padding: (H, W) -> (H/stride, W/stride)."""
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2
    )


def deconv(
    in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2
) -> nn.ConvTranspose2d:
    """Transposed convolution, the mirror of :func:`conv`: (H, W) -> (H*stride, W*stride)."""
    return nn.ConvTranspose2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        output_padding=stride - 1,
    )


class MaskedConv2d(nn.Conv2d):
    """A ``Conv2d`` that only sees the pixels before the current one in raster order.

    The causal convolution of PixelCNN (van den Oord et al. 2016) and of the context
    model of Minnen, Ballé & Toderici (2018): the kernel is multiplied by a fixed 0/1
    ``mask`` that zeroes the taps at and after the centre. For a 5x5 kernel::

        type "A"          type "B"
        1 1 1 1 1         1 1 1 1 1
        1 1 1 1 1         1 1 1 1 1
        1 1 0 0 0         1 1 1 0 0      row of the centre: left of it (A),
        0 0 0 0 0         0 0 0 0 0      or up to and including it (B)
        0 0 0 0 0         0 0 0 0 0

    So with stride 1 and "same" padding (``padding=kernel_size // 2``) output ``(i, j)``
    depends only on inputs before ``(i, j)`` (type "A", the first layer: a pixel must
    not see itself) or up to and including ``(i, j)`` (type "B", later layers, whose
    input at ``(i, j)`` already depends only on earlier pixels). The same mask is used
    for all channel pairs.

    Takes the arguments of ``nn.Conv2d`` plus ``mask_type``. The buffer is named
    ``mask`` as in ``compressai.layers.MaskedConv2d``, so state dicts load both ways.
    Unlike CompressAI, which overwrites ``weight`` with ``weight * mask`` at every
    forward, we only multiply on the fly: same outputs, ``weight`` left untouched,
    and the masked taps get zero gradient.
    """

    mask: Tensor

    def __init__(self, *args, mask_type: str = "A", **kwargs):
        super().__init__(*args, **kwargs)
        if mask_type not in ("A", "B"):
            raise LictutorError(f'mask_type must be "A" or "B", not {mask_type!r}')
        self.mask_type = mask_type

        _, _, h, w = self.weight.shape
        mask = torch.ones_like(self.weight.data)
        # Centre row: zero from the centre (type A) or just right of it (type B) on.
        mask[:, :, h // 2, w // 2 + (mask_type == "B") :] = 0
        mask[:, :, h // 2 + 1 :, :] = 0  # all rows below the centre
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_type={self.mask_type!r}"


class CheckerboardMaskedConv2d(MaskedConv2d):
    """A ``Conv2d`` that only sees the *anchors* of a checkerboard.

    He, Zheng, Sun, Wang & Qin (2021), "Checkerboard Context Model for Efficient Learned
    Image Compression" (CVPR 2021). The latent is split like a checkerboard into *anchors*,
    the positions ``(i, j)`` with ``i + j`` even, and *non-anchors*, those with ``i + j``
    odd (CompressAI's ``anchor_parity="even"``). The anchors are decoded first, all at
    once; then every non-anchor is predicted from the anchors around it, again all at
    once. The mask keeps the kernel taps at an odd offset from the centre: for a 5x5
    kernel (type "A")::

        0 1 0 1 0
        1 0 1 0 1
        0 1 0 1 0      centred on a non-anchor, the 1s fall on anchors only
        1 0 1 0 1
        0 1 0 1 0

    Type "B" also keeps the centre tap. The output is meaningful at the non-anchors only
    (at an anchor, the taps fall on non-anchors): the models zero it at the anchors.

    Same arguments, buffer name (``mask``) and mask as
    ``compressai.layers.CheckerboardMaskedConv2d``; like :class:`MaskedConv2d`, the mask
    is applied on the fly and ``weight`` is left untouched.
    """

    def __init__(self, *args, mask_type: str = "A", **kwargs):
        super().__init__(*args, mask_type=mask_type, **kwargs)
        _, _, h, w = self.mask.shape
        self.mask.fill_(1)
        self.mask[:, :, 0::2, 0::2] = 0  # taps at an even offset from the centre
        self.mask[:, :, 1::2, 1::2] = 0
        self.mask[:, :, h // 2, w // 2] = float(mask_type == "B")


class DeformableResidualBlock(nn.Module):
    """The deformable residual module (DRM) of Fu, Liang, Liang, Wang, Fang, Zhang & Han (2023),
    "Fast and High-Performance Learned Image Compression With Improved Checkerboard Context
    Model, Deformable Residual Module, and Knowledge Distillation" (arXiv 2309.02529).

    A residual block whose second convolution is *deformable* (Dai et al. 2017, "Deformable
    Convolutional Networks"; :class:`torchvision.ops.DeformConv2d`): every tap of its 3x3
    kernel samples the input at the tap's position plus a learned, per-pixel offset, so the
    block can widen and reshape its receptive field where the image needs it::

        x -> conv1 -> LeakyReLU -> h -> conv2(h, offsets=offset(h)) -> LeakyReLU -> + x

    ``offset`` is a small 3x3 convolution predicting two offsets (rows, columns) per kernel
    tap and pixel (18 channels). It starts at zero, so that a new block is exactly the
    plain residual block (``compressai.layers.ResidualBlock``, whose layout and parameter
    names ``conv1``/``conv2`` we keep) and learns to deform from there.

    Where the paper is silent we chose: the layout of CompressAI's ``ResidualBlock`` (leaky
    ReLU after both convolutions), 3x3 kernels, and offsets predicted from ``h``, the input
    of the deformable convolution. Channels and size are unchanged.

    Args:
        channels: input and output channels.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.leaky_relu = nn.LeakyReLU(inplace=True)
        self.offset = nn.Conv2d(channels, 2 * 3 * 3, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.conv2 = DeformConv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.leaky_relu(self.conv1(x))
        out = self.leaky_relu(self.conv2(h, self.offset(h)))
        return out + x


class DegradationAwareBlock(nn.Module):
    r"""A residual block modulated by a small conditioning vector ``c``: the degradation-aware
    (DA) block of Wang et al. (2021), "Unsupervised Degradation Representation Learning for
    Blind Super-Resolution" (DASR), which Helminger et al. (2021), "Microdosing", build their
    small decoder from (chapter 6). ``c`` says what the block should do for this content, so one
    set of weights serves several subsets, and a subset's own ``c`` costs a few numbers::

        k = kernel(c)                      a 3x3 kernel per channel
        a = sigmoid(attention(c))          a scale per channel
        h = x + conv1x1(depthwise(x, k)) + a * x      the DA convolution
        out = x + conv2(LeakyReLU(conv1(LeakyReLU(h))))

    ``kernel`` and ``attention`` are two-layer perceptrons on ``c``. The last convolution
    starts at zero, so a new block is the identity and a decoder can grow one without changing
    what it decodes (as chapter 7's DRM starts).

    Args:
        channels: input and output channels.
        condition: length of ``c``.
    """

    def __init__(self, channels: int, condition: int):
        super().__init__()
        if channels < 1 or condition < 1:
            raise LictutorError("a degradation-aware block needs positive channels and condition length")
        self.channels = int(channels)
        self.kernel = nn.Sequential(nn.Linear(condition, channels), nn.LeakyReLU(0.1), nn.Linear(channels, channels * 9))
        self.attention = nn.Sequential(nn.Linear(condition, channels), nn.LeakyReLU(0.1), nn.Linear(channels, channels))
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.leaky_relu = nn.LeakyReLU(0.1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x``: (B, channels, H, W); ``c``: (B, condition), or (condition,) for the whole batch."""
        B, C, H, W = x.shape
        if C != self.channels:
            raise LictutorError(f"the block has {self.channels} channels; the input has {C}")
        c = c.expand(B, -1) if c.dim() == 1 else c
        if c.size(0) != B:
            raise LictutorError(f"{c.size(0)} conditioning vectors for a batch of {B}")
        kernels = self.kernel(c).reshape(B * C, 1, 3, 3)  # one depthwise kernel per image and channel
        depthwise = F.conv2d(x.reshape(1, B * C, H, W), kernels, padding=1, groups=B * C).reshape(B, C, H, W)
        scale = torch.sigmoid(self.attention(c))[:, :, None, None]
        h = x + self.pointwise(depthwise) + scale * x
        return x + self.conv2(self.leaky_relu(self.conv1(self.leaky_relu(h))))
