"""The ``lictutor`` command line (also ``python -m lictutor``).

Subcommands: ``baselines`` (classical codecs), ``train``, ``compress``, ``decompress`` and
``eval`` (learned codecs, real ``.lic`` bitstreams). Every error -- bad arguments included --
prints one line ``lictutor: error: ...`` to stderr and exits with status 1.

Each subcommand imports the modules it needs when it runs: they load PyTorch, CompressAI and
Pillow's codecs, seconds that ``lictutor --help`` or a mistyped argument should not wait for.
Nothing imports this module, so these deferred imports cannot hide an import circle.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lictutor.errors import LictutorError


def _baselines(args) -> None:
    from lictutor import codecs, results  # deferred: see the module docstring

    names = codecs.available_codecs() if args.codecs is None else _split(args.codecs)
    for name in names:
        codecs.get_codec(name)  # fail early on an unknown name, before any encoding
    images = _images(args)
    print(f"{len(images)} images from {args.images}; codecs: {', '.join(names)}")
    curves = [codecs.evaluate_codec(name, images, progress=not args.quiet) for name in names]
    print(results.format_table(curves))
    if args.json:
        results.save_results(curves, args.json)
        print(f"wrote {args.json}")


def _train(args) -> None:
    from lictutor import budget, train  # deferred: see the module docstring
    from lictutor.config import budget_config  # deferred: see the module docstring

    b = budget.get_budget(args.budget)
    changes = {} if args.steps is None else {"steps": args.steps}
    config = budget_config(b, args.lmbda, model=args.model, images=args.images, **changes)
    print(f"training {config.model} {config.model_args}, λ = {config.lmbda}, "
          f"{config.steps} steps (budget {b.name})")
    _, ckpt = train.train(config, out=args.out, progress=not args.quiet)
    print(f"wrote {args.out} (trained for {ckpt['train_time']:.0f} s)")


def _compress(args) -> None:
    from lictutor import bitstream, data, evaluate, metrics  # deferred: see the module docstring
    from lictutor.checkpoint import load_checkpoint  # deferred: see the module docstring

    model, ckpt = load_checkpoint(args.checkpoint)
    img = data.load_image(args.input)
    blob = evaluate.compress_image(model, img, ckpt["model"])
    Path(args.output).write_bytes(blob)
    bpp = metrics.bpp_from_bytes(len(blob), *img.shape[:2])
    header = bitstream.overhead(bitstream.unpack(blob))
    print(f"wrote {args.output}: {len(blob)} bytes, {bpp:.4f} bpp ({header} of them header bytes)")


def _decompress(args) -> None:
    from lictutor import data, evaluate  # deferred: see the module docstring
    from lictutor.checkpoint import load_checkpoint  # deferred: see the module docstring

    model, ckpt = load_checkpoint(args.checkpoint)
    img = evaluate.decompress_image(model, Path(args.input).read_bytes(), ckpt["model"])
    data.save_image(img, args.output)
    print(f"wrote {args.output}: {img.shape[1]}×{img.shape[0]}")


def _eval(args) -> None:
    from lictutor import evaluate, results  # deferred: see the module docstring

    images = _images(args)
    print(f"{len(images)} images from {args.images}; {len(args.checkpoint)} checkpoint(s)")
    curve = evaluate.evaluate_model(args.checkpoint, images, name=args.name, progress=not args.quiet)
    print(results.format_table(curve))
    if args.json:
        results.save_results(curve, args.json)
        print(f"wrote {args.json}")


def _images(args):
    from lictutor import data  # deferred: see the module docstring

    images = data.folder_images(args.images)
    return images[: args.max_images] if args.max_images else images


def _split(text: str) -> list[str]:
    return [part.strip().lower() for part in text.split(",") if part.strip()]


class _Parser(argparse.ArgumentParser):
    """Reports bad arguments as a :class:`LictutorError`, so that they get the same one line."""

    def error(self, message):
        raise LictutorError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lictutor", description="Learned image compression, from the book's package.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, run, help, description):
        p = sub.add_parser(name, help=help, description=description)
        p.set_defaults(run=run)
        return p

    def folder_options(p):
        p.add_argument("--images", required=True, metavar="DIR", help="folder of images")
        p.add_argument("--json", metavar="OUT", help="write the results in CompressAI's JSON format")
        p.add_argument("--max-images", type=int, metavar="K", help="use only the first K images")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = command(
        "baselines", _baselines,
        "rate–distortion curves of classical codecs on a folder of images",
        "Encode every image with each classical codec over its quality range and report bpp "
        "(from the real encoded bytes), PSNR and MS-SSIM, averaged per quality.",
    )
    folder_options(p)
    p.add_argument("--codecs", metavar="LIST", help="comma-separated, e.g. jpeg,webp (default: all available)")

    p = command(
        "train", _train,
        "train a learned codec and write its checkpoint",
        "Train a model for one rate–distortion trade-off λ with the settings of a compute budget "
        "(steps, batch, crop, channels, learning rate). A finished run is cached: the same "
        "command again copies the cached model.",
    )
    p.add_argument("--model", default="factorized", help="a name in lictutor.models.MODELS (default: factorized)")
    p.add_argument("--lmbda", type=float, required=True, metavar="λ", help="e.g. 0.0067 (MSE)")
    p.add_argument("--images", metavar="DIR", help="training images (default: the book's offline photos)")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    p.add_argument("--budget", metavar="B", help="smoke, cpu or full (default: LICTUTOR_BUDGET's rule)")
    p.add_argument("--steps", type=int, metavar="N", help="override the budget's number of steps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    def coding_command(name, run, help, description, checkpoint, files):
        p = command(name, run, help, description)
        p.add_argument("--checkpoint", required=True, metavar="CKPT", help=checkpoint)
        for role, (metavar, text) in zip(("input", "output"), files):
            p.add_argument(role, metavar=metavar, help=text)

    coding_command("compress", _compress, "code an image to a .lic file with a trained model",
                   "Code an image (any size; grayscale and transparent images become RGB) to a .lic file.",
                   "a checkpoint written by 'lictutor train'", [("IN.png", "image to code"), ("OUT.lic", "file to write")])
    coding_command("decompress", _decompress, "decode a .lic file to a PNG",
                   "Decode a .lic file with the checkpoint that wrote it; the file is checked (format, model, "
                   "weights, CRC) before decoding.", "the checkpoint that wrote the file",
                   [("IN.lic", "file to decode"), ("OUT.png", "PNG to write")])

    p = command(
        "eval", _eval,
        "rate–distortion curve of trained models on a folder of images",
        "Code every image to a real .lic bitstream with each checkpoint (one rate point each) and "
        "report bpp (whole file), PSNR, MS-SSIM and coding times, averaged per checkpoint.",
    )
    p.add_argument("--checkpoint", required=True, nargs="+", metavar="CKPT", help="one or more checkpoints")
    p.add_argument("--name", help="name of the curve (default: 'lictutor MODEL')")
    folder_options(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.run(args)
    except (LictutorError, OSError) as err:  # OSError: a file that cannot be read or written
        first_line = (str(err).splitlines() or [type(err).__name__])[0]
        print(f"lictutor: error: {first_line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lictutor: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
