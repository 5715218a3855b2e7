r"""The adversarial part of a GAN codec (chapter 6): HiFiC's latent-conditioned discriminator
and the non-saturating GAN losses.

Mentzer, Toderici, Tschannen & Agustsson (2020), "High-Fidelity Generative Image Compression"
(HiFiC, sec. 3 and appendix A.1): the discriminator sees the image together with the quantized
latent it was decoded from, so it judges whether ``x`` is a plausible image *for* ``ŷ``. The
latent goes through a 1×1 convolution to 12 channels and is upsampled (nearest) to the image
size; the two are concatenated and pass four 4×4 convolutions of stride 2 (64, 128, 256 and 512
channels, leaky ReLU 0.2) and a final 1×1 convolution: one logit per patch. Every convolution
is spectrally normalized (Miyato et al. 2018), which bounds the discriminator's Lipschitz
constant and steadies training. With ``D`` the logits and ``σ`` the sigmoid, the losses are

.. math::
    \mathcal L_D = -\mathbb E\,[\log \sigma(D(x, \hat y))] - \mathbb E\,[\log(1 - \sigma(D(\hat x, \hat y)))],
    \qquad
    \mathcal L_G = -\mathbb E\,[\log \sigma(D(\hat x, \hat y))],

the generator's being the non-saturating form (Goodfellow et al. 2014). HiFiC trains the codec
on :func:`hific_losses`' generator loss, ``bpp + λ·(255²·MSE + k_P·P) + β·L_G`` with ``P`` a
perceptual distance (HiFiC: LPIPS), and the discriminator on its own loss, in alternate steps.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.parametrizations import spectral_norm

from lictutor.errors import LictutorError
from lictutor.losses import RateDistortionLoss

__all__ = ["LatentConditionedDiscriminator", "gan_losses", "hific_losses"]


class LatentConditionedDiscriminator(nn.Module):
    """HiFiC's discriminator ``D(x, ŷ)``: patch logits for an image and its latent.

    Args:
        M: channels of the latent ``ŷ``.
        widths: channels of the four strided convolutions (HiFiC: 64, 128, 256, 512; the
            book's budgets use narrower ones).
        latent_channels: channels the latent is projected to before upsampling (HiFiC: 12).
        downsampling: how much smaller the latent is than the image (16 for the book's codecs).
    """

    def __init__(self, M: int, widths: Sequence[int] = (64, 128, 256, 512), latent_channels: int = 12,
                 downsampling: int = 16):
        super().__init__()
        if not widths or min(widths) < 1 or M < 1 or latent_channels < 1 or downsampling < 1:
            raise LictutorError("the discriminator needs positive widths, M, latent channels and downsampling")
        self.downsampling = int(downsampling)
        self.latent = spectral_norm(nn.Conv2d(M, latent_channels, 1))
        layers, channels = [], 3 + latent_channels
        for width in widths:
            layers += [spectral_norm(nn.Conv2d(channels, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            channels = width
        layers.append(spectral_norm(nn.Conv2d(channels, 1, 1)))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor, y_hat: Tensor) -> Tensor:
        """Logits, one per patch: (B, 1, H / 2^k, W / 2^k) for k strided layers."""
        expected = (x.size(-2) // self.downsampling, x.size(-1) // self.downsampling)
        if x.dim() != 4 or x.size(1) != 3 or tuple(y_hat.shape[-2:]) != expected or y_hat.size(0) != x.size(0):
            raise LictutorError(
                f"the discriminator needs a (B, 3, H, W) image and its (B, M, H/{self.downsampling}, "
                f"W/{self.downsampling}) latent; got {tuple(x.shape)} and {tuple(y_hat.shape)}"
            )
        latent = F.interpolate(self.latent(y_hat), scale_factor=self.downsampling, mode="nearest")
        return self.body(torch.cat((x, latent), 1))


def gan_losses(real_logits: Tensor, fake_logits: Tensor) -> Tuple[Tensor, Tensor]:
    """``(L_D, L_G)`` from the discriminator's logits on real and on decoded images (see the
    module docstring). ``L_G`` keeps the gradient to the decoded image; ``L_D`` is computed on
    the logits as given, so pass ``D(x̂.detach(), ŷ.detach())`` for the discriminator's step."""
    d_loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    g_loss = F.softplus(-fake_logits).mean()
    return d_loss, g_loss


def hific_losses(out: Dict[str, Tensor], x: Tensor, discriminator: nn.Module, lmbda: float, beta: float = 0.15,
                 perceptual: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                 perceptual_weight: float = 1.0) -> Dict[str, Tensor]:
    """HiFiC's losses for a codec's output ``out`` (``x_hat``, ``y_hat``, ``likelihoods``) on
    the batch ``x``:

    * ``"g_loss"``: ``bpp + λ·(255²·MSE + perceptual_weight·perceptual(x̂, x)) + β·L_G`` for the
      codec's step (the perceptual term only if ``perceptual`` is given);
    * ``"d_loss"``: ``L_D`` for the discriminator's, on ``x̂`` and ``ŷ`` detached, so that it
      trains the discriminator alone;
    * and the terms: ``"bpp"``, ``"mse"``, ``"perceptual"``, ``"adversarial"`` (``L_G``).

    The discriminator sees ``ŷ`` detached in both (HiFiC conditions it on the latent without
    letting its loss shape the encoder). ``g_loss.backward()`` also leaves gradients in the
    discriminator: zero them before its own step.
    """
    if beta < 0 or perceptual_weight < 0:
        raise LictutorError("the adversarial and perceptual weights must be >= 0")
    rd = RateDistortionLoss(lmbda)(out, x)
    y_hat = out["y_hat"].detach()
    fake = discriminator(out["x_hat"], y_hat)
    d_loss, _ = gan_losses(discriminator(x, y_hat), discriminator(out["x_hat"].detach(), y_hat))
    adversarial = F.softplus(-fake).mean()  # L_G of gan_losses, through x̂ only
    p = perceptual(out["x_hat"], x) if perceptual is not None else torch.zeros((), device=x.device)
    g_loss = rd["loss"] + lmbda * perceptual_weight * p + beta * adversarial
    return {"g_loss": g_loss, "d_loss": d_loss, "bpp": rd["bpp"], "mse": rd["mse"], "perceptual": p,
            "adversarial": adversarial}
