"""Encode and decode time of the learned codecs on one image size, measured side by side.

    python benchmarks/decode_time.py [--size 768x512] [--widths 64x96,128x192] [--repeat 3]
    python benchmarks/decode_time.py --widths 64x96   # the book's cpu budget only

``--widths`` lists N×M pairs, measured in the same run: by default the book's cpu budget
(N=64, M=96) and the paper-scale width of CompressAI's low-rate models (N=128, M=192).

Every model codes the same image to a real ``.lic`` file and decodes it (``lictutor.evaluate``);
the table gives the median wall time of ``--repeat`` runs, how many times faster each model
decodes than the serial context model (chapter 4), and how many times slower than the scale
hyperprior. Coding time hardly depends on the weights, so untrained models measure the cost of
the architecture: above all, the serial raster-order decoding of the context model (chapter 4)
against the two parallel passes of the checkerboard models (chapter 7). (``fast`` also skips
the latent channels that are all zero, so its time depends on the weights: the trained models of
chapter 7 leave 31 % of them at zero on an eval photo, on average.)
"""

import argparse

import numpy as np
import torch

from lictutor import evaluate, models
from lictutor.profile import median_time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="768x512", help="WIDTHxHEIGHT (default 768x512)")
    parser.add_argument("--widths", default="64x96,128x192", help="N×M pairs, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", default="factorized,hyperprior,mean-scale,context,checkerboard,fast")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    widths = [tuple(int(v) for v in pair.lower().split("x")) for pair in args.widths.split(",")]
    img = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)

    print(f"{width}×{height} image, {torch.get_num_threads()} threads, median of {args.repeat} runs")
    print(f"{'N×M':<9}{'model':<14}{'encode [s]':>11}{'decode [s]':>12}{'context / model':>17}{'model / hyperprior':>20}")
    for N, M in widths:
        torch.manual_seed(0)
        rows = {}
        for name in args.models.split(","):
            model = models.create(name, N=N, M=M).eval()
            data = evaluate.compress_image(model, img, name)  # builds the tables, outside the timing
            encode = median_time(lambda: evaluate.compress_image(model, img, name), args.repeat)
            decode = median_time(lambda: evaluate.decompress_image(model, data, name), args.repeat)
            rows[name] = (encode, decode)
        for name, (encode, decode) in rows.items():
            faster = f"{rows['context'][1] / decode:>16.1f}×" if "context" in rows else " " * 17
            slower = f"{decode / rows['hyperprior'][1]:>19.1f}×" if "hyperprior" in rows else ""
            print(f"{f'{N}×{M}':<9}{name:<14}{encode:>11.3f}{decode:>12.3f}{faster}{slower}")

if __name__ == "__main__":
    main()
