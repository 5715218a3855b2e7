"""Put our rate–distortion curves beside CompressAI's published Kodak results.

    python benchmarks/compare_compressai.py OURS.json [MORE.json ...] \
        --anchor compressai-bmshj2018-hyperprior_mse_cpu

``OURS.json`` is what ``lictutor eval --images KODAK_DIR --json OURS.json`` writes (one curve
per file, CompressAI's schema). The script prints every curve's points and the BD-rate /
BD-PSNR of each against the published anchor (``lictutor.results.anchors()`` lists them).
The comparison means something only on the same photos: download Kodak first
(``python -c "import lictutor.data as d; print(d.download('kodak'))"``).

Settings that reproduce CompressAI's numbers (its training recipe, e.g. for
bmshj2018-hyperprior quality 3: 0.320 bpp, 30.97 dB on Kodak): the ``full`` budget
(``LICTUTOR_BUDGET=full``, N=128, M=192, 256² crops, batch 16, lr 1e-4, λ=0.0067 for quality 3)
trained on a large photo set (e.g. ``lictutor.data.download("div2k-train")``) for about a million
steps on a GPU.
"""

import argparse

from lictutor import results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("curves", nargs="+", metavar="OURS.json")
    parser.add_argument("--anchor", default="compressai-bmshj2018-hyperprior_mse_cpu",
                        help=f"one of: {', '.join(results.anchors())}")
    args = parser.parse_args()
    anchor = results.anchor(args.anchor)
    ours = []
    for path in args.curves:
        loaded = results.load_results(path)
        ours.extend(loaded if isinstance(loaded, list) else [loaded])
    print(results.format_table([anchor] + ours))
    print()
    print(results.format_bd_table(results.bd_rows(ours, anchor), f"{anchor['name']} ({args.anchor})"))


if __name__ == "__main__":
    main()
