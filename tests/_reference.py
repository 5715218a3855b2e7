"""Shared by the model tests: CompressAI models made less trivial than their random init."""

import torch


def randomize_(ref):
    """Randomize every GDN's β and γ and the entropy bottleneck's density, in place.

    At CompressAI's initialization GDN is nearly the identity and the factorized density a
    fixed logistic, so equality tests would exercise little of either.
    """
    with torch.no_grad():
        for m in ref.modules():
            if type(m).__name__ == "GDN":
                C = m.beta.numel()
                m.beta.copy_(m.beta_reparam.init(0.5 + torch.rand(C)))
                m.gamma.copy_(m.gamma_reparam.init(0.05 * torch.rand(C, C) + 0.1 * torch.eye(C)))
        eb = ref.entropy_bottleneck
        for p in eb.biases:
            p.copy_(torch.randn_like(p))
        for p in eb.factors:
            p.copy_(0.5 * torch.randn_like(p))
        eb.quantiles.add_(torch.randn_like(eb.quantiles))
    return ref


def assert_same_forward(ours, ref, x, keys=("y", "z")):
    """Our model and CompressAI's give the same x_hat, likelihoods and aux loss on ``x``."""
    with torch.no_grad():
        out_ref, out_our = ref(x), ours(x)
    torch.testing.assert_close(out_our["x_hat"], out_ref["x_hat"], atol=1e-5, rtol=1e-5)
    for k in keys:
        torch.testing.assert_close(out_our["likelihoods"][k], out_ref["likelihoods"][k], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.aux_loss(), ref.aux_loss(), atol=1e-4, rtol=1e-6)
