"""What each training augmentation does for photos the training never saw, side by side.

Trains the cpu budget's factorized prior (N=64, M=96, 8 crops of 128²) from scratch at one λ
with each augmentation of :data:`lictutor.data.AUGMENTATIONS` alone, with none, and with all,
for a few seeds, and scores every model on the unseen photos (:func:`lictutor.data.unseen_images`)
and on the book's evaluation photos by its training objective ``R + λ·255²·D`` (bits per pixel
from the likelihoods of the rounded latents, MSE on 0–255) and by its rate and PSNR. At one λ
the objective is the fair single number: a model that is better at that trade-off has a lower
one. The table gives each variant's mean, its spread over seeds (min–max), and its change
against no augmentation.

    python benchmarks/augmentation.py                     # 2,000 steps × 6 variants × 2 seeds, about an hour on 2 cores
    python benchmarks/augmentation.py --steps 500 --seeds 1 --json out.json

Models go through the checkpoint cache, so a second run only evaluates.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from lictutor import budget, data, images, metrics
from lictutor.config import budget_config
from lictutor.train import train

VARIANTS = {"none": (), **{name: (name,) for name in data.AUGMENTATIONS}, "all": tuple(data.AUGMENTATIONS)}


@torch.no_grad()
def score(model, photos, lmbda: float) -> dict:
    """Mean bits per pixel, PSNR and objective ``bpp + λ·255²·MSE`` over ``photos``, with the
    latents rounded (``model.eval()``) and the rate from their likelihoods."""
    model.eval()
    rows = []
    for _, img in photos:
        x = images.to_tensor(img).unsqueeze(0)
        out = model(images.pad(x, model.downsampling_factor))
        x_hat = out["x_hat"][..., : x.shape[2], : x.shape[3]].clamp(0, 1)
        bpp = float(metrics.bpp_from_likelihoods(out["likelihoods"], x.shape[2] * x.shape[3]))
        mse = float(torch.mean((x_hat - x) ** 2)) * 255**2
        rows.append((bpp, metrics.psnr(x_hat, x), bpp + lmbda * mse))
    bpp, psnr, loss = np.mean(rows, axis=0)
    return {"bpp": bpp, "psnr": psnr, "loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--lmbda", type=float, default=0.0067)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--json", help="also write the scores here")
    args = parser.parse_args()
    cpu = budget.get_budget("cpu")
    sets = {"unseen": data.unseen_images(), "book eval": data.eval_images()}
    results, start = {}, time.time()
    for variant in args.variants.split(","):
        for seed in range(args.seeds):
            config = budget_config(cpu, args.lmbda, steps=args.steps, augment=VARIANTS[variant], seed=seed)
            model, _ = train(config, progress=False)
            results.setdefault(variant, []).append({name: score(model, photos, args.lmbda) for name, photos in sets.items()})
            print(f"{variant:>9} seed {seed}: " + "; ".join(
                f"{name} {s['bpp']:.3f} bpp {s['psnr']:.2f} dB loss {s['loss']:.4f}"
                for name, s in results[variant][-1].items()) + f"  ({time.time() - start:.0f} s)", flush=True)
    print(f"\nfactorized prior, cpu widths, λ = {args.lmbda}, {args.steps} steps, seeds 0–{args.seeds - 1}: "
          "objective bpp + λ·255²·MSE (lower is better), mean [min–max], change against none")
    for name in sets:
        base = np.mean([r[name]["loss"] for r in results.get("none", [])]) if "none" in results else None
        print(f"\n{name} ({', '.join(n for n, _ in sets[name])})")
        for variant, runs in results.items():
            loss = [r[name]["loss"] for r in runs]
            change = f"{100 * (np.mean(loss) / base - 1):+6.1f} %" if base else ""
            print(f"  {variant:>9}: {np.mean(loss):.4f} [{min(loss):.4f}–{max(loss):.4f}] {change}  "
                  f"{np.mean([r[name]['bpp'] for r in runs]):.3f} bpp, {np.mean([r[name]['psnr'] for r in runs]):.2f} dB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": args.steps, "lmbda": args.lmbda, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
