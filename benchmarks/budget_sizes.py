"""What one training step costs at a budget's shapes, per model family: multiply–accumulates,
peak memory and the step time measured here (CPU), and from them an *estimate* of the step
time on a Colab-class GPU (an NVIDIA T4) -- an estimate until measured on one.

    python benchmarks/budget_sizes.py [BUDGET ...]      (default: gpu full)

A step is a training forward and backward of ``budget.batch`` crops of ``budget.crop²`` at the
budget's widths; its MACs are counted by PyTorch's FLOP counter (``lictutor.profile``), forward
and backward. The GPU estimate divides them by ``T4_MACS_PER_S``: a T4 peaks at 8.1 TFLOPS in
float32 (4.05 TMAC/s); convolution training reaches about a third of peak, so 1.3 TMAC/s.
"""

import sys
import time

import torch

from lictutor import models
from lictutor.budget import get_budget
from lictutor.losses import RateDistortionLoss
from lictutor.profile import count_macs, peak_memory

T4_MACS_PER_S = 1.3e12
FAMILIES = ("factorized", "hyperprior", "mean-scale", "context", "checkerboard", "fast")


def step_cost(name: str, budget) -> dict:
    torch.manual_seed(0)
    model = models.create(name, N=budget.N, M=budget.M).train()
    x = torch.rand(budget.batch, 3, budget.crop, budget.crop)
    loss = RateDistortionLoss(0.0067)

    def step():
        model.zero_grad(set_to_none=True)
        loss(model(x), x)["loss"].backward()

    step()  # warm-up
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    return {"macs": count_macs(step), "memory": peak_memory(step), "cpu_s": seconds}


def main(names):
    for name in names:
        budget = get_budget(name)
        print(f"budget {budget.name}: batch {budget.batch} × {budget.crop}², N={budget.N}, M={budget.M}, "
              f"{budget.steps} steps per model")
        print(f"{'family':>13} {'GMAC/step':>10} {'peak GB':>8} {'CPU s/step':>11} {'T4 s/step (est.)':>17}")
        for family in FAMILIES:
            c = step_cost(family, budget)
            print(f"{family:>13} {c['macs'] / 1e9:10.1f} {c['memory'] / 1e9:8.2f} {c['cpu_s']:11.2f} "
                  f"{c['macs'] / T4_MACS_PER_S:17.3f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["gpu", "full"])
