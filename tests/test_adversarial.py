import pytest
import torch
import torch.nn.functional as F

from lictutor import LictutorError, models
from lictutor.adversarial import LatentConditionedDiscriminator, gan_losses, hific_losses


def _disc():
    torch.manual_seed(0)
    return LatentConditionedDiscriminator(M=8, widths=(8, 16), latent_channels=4)


def test_discriminator_gives_patch_logits_conditioned_on_the_latent():
    d = _disc().eval()  # in training mode each call takes a power-iteration step
    x, y = torch.rand(2, 3, 64, 96), torch.randn(2, 8, 4, 6)
    out = d(x, y)
    assert out.shape == (2, 1, 16, 24)  # two stride-2 layers
    y2 = y.clone()
    y2[:, :, 0, 0] += 3.0  # change the latent at one position: only the patches it reaches move
    moved = (d(x, y2) - out).abs()[0, 0] > 1e-6
    assert moved.any() and not moved[8:, 12:].any()
    with pytest.raises(LictutorError, match="latent"):
        d(x, torch.randn(2, 8, 8, 6))
    with pytest.raises(LictutorError, match="positive"):
        LatentConditionedDiscriminator(M=8, widths=())


def test_every_convolution_is_spectrally_normalized():
    d = _disc().train()
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and all(hasattr(m, "parametrizations") for m in convs)
    with torch.no_grad():
        for _ in range(30):  # power iterations run in training mode
            d(torch.rand(1, 3, 32, 32), torch.randn(1, 8, 2, 2))
    for m in convs:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05)


def test_gan_losses_are_the_non_saturating_binary_cross_entropies():
    real, fake = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3, requires_grad=True)
    d_loss, g_loss = gan_losses(real, fake)
    ones, zeros = torch.ones_like(real), torch.zeros_like(real)
    bce = F.binary_cross_entropy_with_logits
    assert d_loss.item() == pytest.approx((bce(real, ones) + bce(fake, zeros)).item(), rel=1e-6)
    assert g_loss.item() == pytest.approx(bce(fake, ones).item(), rel=1e-6)
    g_loss.backward()
    assert (fake.grad < 0).all()  # the generator pushes its logits up: "looks real"


def test_hific_losses_train_the_codec_and_the_discriminator_apart():
    torch.manual_seed(0)
    codec = models.create("generative", N=8, M=8, blocks=1)
    disc = LatentConditionedDiscriminator(M=8, widths=(8,), latent_channels=2)
    x = torch.rand(2, 3, 64, 64)
    out = codec(x)
    losses = hific_losses(out, x, disc, lmbda=0.01, beta=0.0)
    expected = losses["bpp"] + 0.01 * 255**2 * losses["mse"]
    assert losses["g_loss"].item() == pytest.approx(expected.item(), rel=1e-6)  # β = 0: the RD loss
    losses = hific_losses(codec(x), x, disc, lmbda=0.01, beta=0.5, perceptual=lambda a, b: (a - b).abs().mean(),
                          perceptual_weight=100.0)
    assert losses["perceptual"] > 0 and losses["adversarial"] > 0
    losses["d_loss"].backward()
    assert all(p.grad is None for p in codec.parameters())  # the discriminator's loss leaves the codec alone
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
    disc.zero_grad()
    losses["g_loss"].backward()
    assert codec.g_s[0].tail.weight.grad.abs().sum() > 0  # the texture stack learns (its tail first: it starts at zero)
    assert codec.g_a[0].weight.grad.abs().sum() > 0
    with pytest.raises(LictutorError, match=">= 0"):
        hific_losses(codec(x), x, disc, lmbda=0.01, beta=-1.0)
