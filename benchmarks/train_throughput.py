"""Training speed of ``lictutor.train`` beside a plain CompressAI loop, in the same run.

Both train a factorized-prior model (Ballé et al. 2018; N=128, M=192 by default) on the same
random crops of the book's photos, batch 8, 256×256, λ·255²·MSE + bpp, Adam with an auxiliary
Adam on the quantiles and gradient clipping -- CompressAI's ``examples/train.py`` reduced to its
loop. Warm-up steps are run and not timed. The target: lictutor.train at ≥ 0.95× the plain
loop's steps/s.

    python benchmarks/train_throughput.py             # 10 timed steps each, a few minutes on CPU
    python benchmarks/train_throughput.py --steps 50 --device cuda
    python benchmarks/train_throughput.py --plain-lictutor   # also our model in the plain loop

``--plain-lictutor`` separates the two causes of a gap: our model against CompressAI's (same
plain loop), and our trainer against a plain loop (same model).
"""

from __future__ import annotations

import argparse
import time

import torch
from compressai.losses import RateDistortionLoss as CompressAILoss
from compressai.models import FactorizedPrior as CompressAIFactorizedPrior

from lictutor import data, models
from lictutor.config import TrainConfig
from lictutor.train import train

LMBDA, LR, AUX_LR, CLIP = 0.0067, 1e-4, 1e-3, 1.0


def plain_loop(net, trainset, batch, warmup, steps, device) -> float:
    """CompressAI's training loop (examples/train.py, ``train_one_epoch``); returns steps/s."""
    net = net.to(device).train()
    params = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    optimizer = torch.optim.Adam(params, lr=LR)
    aux_optimizer = torch.optim.Adam(aux_params, lr=AUX_LR)
    criterion = CompressAILoss(lmbda=LMBDA)
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x = torch.stack([trainset[i] for i in range(step * batch, (step + 1) * batch)]).to(device)
        optimizer.zero_grad()
        aux_optimizer.zero_grad()
        out = criterion(net(x), x)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
        optimizer.step()
        aux_loss = net.aux_loss()
        aux_loss.backward()
        aux_optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def lictutor_train(N, M, batch, crop, warmup, steps, device) -> float:
    """``lictutor.train`` on the same data; steps/s from the history's timestamps, so set-up and
    the final ``update()`` are not counted (``log_every=1``: reading three CPU scalars a step)."""
    config = TrainConfig(model="factorized", model_args={"N": N, "M": M}, lmbda=LMBDA, steps=warmup + steps,
                         batch=batch, crop=crop, lr=LR, aux_lr=AUX_LR, clip=CLIP, final_lr=1.0)
    _, ckpt = train(config, cache=False, progress=False, log_every=1, device=device)
    times = [h["time"] for h in ckpt["history"]]
    return steps / (times[-1] - times[warmup - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loop (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--N", type=int, default=128)
    parser.add_argument("--M", type=int, default=192)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice); on a shared "
                        "machine use no more than the idle cores, or OpenMP's waiting dominates the timings")
    parser.add_argument("--plain-lictutor", action="store_true",
                        help="also time lictutor's model in the plain CompressAI loop")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    trainset = data.training_set(crop=args.crop, seed=0)
    run = dict(trainset=trainset, batch=args.batch, warmup=args.warmup, steps=args.steps, device=device)
    print(f"FactorizedPrior(N={args.N}, M={args.M}), batch {args.batch}, {args.crop}² crops, {device}, "
          f"{torch.get_num_threads()} threads; {args.warmup} warm-up + {args.steps} timed steps each")

    torch.manual_seed(0)
    reference = plain_loop(CompressAIFactorizedPrior(args.N, args.M), **run)
    print(f"  plain loop, compressai.models.FactorizedPrior: {reference:.4f} steps/s")
    if args.plain_lictutor:
        torch.manual_seed(0)
        ours = plain_loop(models.create("factorized", N=args.N, M=args.M), **run)
        print(f"  plain loop, lictutor FactorizedPrior:          {ours:.4f} steps/s ({ours / reference:.3f}×)")
    trained = lictutor_train(args.N, args.M, args.batch, args.crop, args.warmup, args.steps, device)
    print(f"  lictutor.train, lictutor FactorizedPrior:      {trained:.4f} steps/s")
    print(f"ratio lictutor.train / plain CompressAI loop: {trained / reference:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
