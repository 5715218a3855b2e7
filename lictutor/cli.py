"""The ``lictutor`` command line (also ``python -m lictutor``).

Subcommands: ``baselines`` (classical codecs), ``train``, ``compress``, ``decompress`` and
``eval`` (learned codecs, real ``.lic`` bitstreams). Every error -- bad arguments included --
prints one line ``lictutor: error: ...`` to stderr and exits with status 1; every warning
(:class:`lictutor.errors.LictutorWarning`) one line ``lictutor: warning: ...``.

No command loses a file: outputs are checked before any work (never one of the inputs, never
an existing file unless ``--force``) and written atomically (:mod:`lictutor.paths`). ``eval``
and ``baselines`` skip an image they cannot read with a warning, finish the others, and then
exit with status 1, so that scripts notice.

Each subcommand imports the modules it needs when it runs: they load PyTorch, CompressAI and
Pillow's codecs, seconds that ``lictutor --help`` or a mistyped argument should not wait for.
Nothing imports this module, so these deferred imports cannot hide an import circle.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from pathlib import Path

from lictutor.errors import LictutorError, LictutorWarning
from lictutor.paths import check_output, write_atomic


def _baselines(args) -> None:
    from lictutor import codecs, results  # deferred: see the module docstring

    names = codecs.available_codecs() if args.codecs is None else _split(args.codecs)
    for name in names:
        codecs.get_codec(name)  # fail early on an unknown name, before any encoding
    images, skipped = _images(args)
    print(f"{len(images)} images from {args.images}; codecs: {', '.join(names)}")
    curves = [codecs.evaluate_codec(name, images, progress=not args.quiet) for name in names]
    print(results.format_table(curves))
    _finish(args, curves, skipped)


def _train(args) -> None:
    from lictutor import budget, zoo  # deferred: see the module docstring

    b = budget.get_budget(args.budget)
    b = b if args.steps is None else b.with_(steps=args.steps)
    print(f"training {args.model} at λ = {args.lmbda} by the book's recipe (budget {b.name}, {b.steps} steps"
          + (", the factorized prior it starts from first)" if args.model in zoo.HYPERPRIOR_FAMILIES else ")"))
    options = {} if args.images is None else {"images": args.images}
    _, ckpt = zoo.trained_model(b, args.model, args.lmbda, progress=not args.quiet, out=args.out,
                                force=args.force, **options)
    how = "copied from the cache; it trained" if ckpt["cached"] else "trained"
    print(f"wrote {args.out} ({how} for {ckpt['train_time']:.0f} s)")


def _compress(args) -> None:
    from lictutor import bitstream, data, evaluate, metrics  # deferred: see the module docstring
    from lictutor.checkpoint import load_checkpoint  # deferred: see the module docstring

    output = check_output(args.output, inputs=[args.input, args.checkpoint], force=args.force)
    model, ckpt = load_checkpoint(args.checkpoint)
    img = data.load_image(args.input)
    blob = evaluate.compress_image(model, img, ckpt["model"], progress=not args.quiet)
    write_atomic(output, lambda tmp: tmp.write_bytes(blob))
    bpp = metrics.bpp_from_bytes(len(blob), *img.shape[:2])
    header = bitstream.overhead(bitstream.unpack(blob))
    print(f"wrote {args.output}: {len(blob)} bytes, {bpp:.4f} bpp ({header} of them header bytes)")


def _decompress(args) -> None:
    from lictutor import data, evaluate  # deferred: see the module docstring
    from lictutor.checkpoint import load_checkpoint  # deferred: see the module docstring

    output = check_output(args.output, inputs=[args.input, args.checkpoint], force=args.force)
    if output.suffix.lower() != ".png":
        raise LictutorError(f"decompress writes PNG; name the output '{output.with_suffix('.png').name}'")
    model, ckpt = load_checkpoint(args.checkpoint)
    img = evaluate.decompress_image(model, Path(args.input).read_bytes(), ckpt["model"], progress=not args.quiet)
    data.save_image(img, output)
    print(f"wrote {args.output}: {img.shape[1]}×{img.shape[0]}")


def _eval(args) -> None:
    from lictutor import evaluate, results  # deferred: see the module docstring

    images, skipped = _images(args)
    print(f"{len(images)} images from {args.images}; {len(args.checkpoint)} checkpoint(s)")
    curve = evaluate.evaluate_model(args.checkpoint, images, name=args.name, progress=not args.quiet)
    print(results.format_table(curve))
    _finish(args, curve, skipped)


def _images(args):
    """``(images, skipped)`` of ``--images``: unreadable ones are skipped with a warning each.
    ``--json`` is checked first, so that a run never ends unable to write its results."""
    from lictutor import data  # deferred: see the module docstring

    if args.json:
        check_output(args.json, force=args.force)
    images, failures = data.read_images(args.images, args.max_images)
    for failure in failures:
        warnings.warn(f"skipped: {failure}", LictutorWarning)
    if not images:
        raise LictutorError(f"none of the {len(failures)} images in '{args.images}' could be read")
    return images, len(failures)


def _finish(args, curves, skipped: int) -> None:
    """Write ``--json``; then fail if images were skipped (the results hold the others)."""
    from lictutor import results  # deferred: see the module docstring

    if args.json:
        results.save_results(curves, args.json)
        print(f"wrote {args.json}")
    if skipped:
        raise LictutorError(f"{skipped} image(s) in '{args.images}' could not be read and were skipped "
                            "(see the warnings above); the results are of the others")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


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
        p.add_argument("--force", action="store_true", help="replace an existing output file")
        return p

    def folder_options(p):
        p.add_argument("--images", required=True, metavar="DIR", help="folder of images")
        p.add_argument("--json", metavar="OUT", help="write the results in CompressAI's JSON format")
        p.add_argument("--max-images", type=_positive, metavar="K", help="use only the first K images (K ≥ 1)")
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
        "Train a model for one rate–distortion trade-off λ by the book's recipe for its family "
        "(lictutor.zoo.trained_model: the factorized prior from a base model at the budget's "
        "middle λ; the hyperprior families on top of it), with the settings of a compute budget "
        "(steps, batch, crop, channels, learning rate) and the book's training data and "
        "augmentations. Every model of the recipe is cached: the same command again, or a "
        "chapter that trains the same, copies the cached model.",
    )
    p.add_argument("--model", default="factorized", help="a name in lictutor.models.MODELS (default: factorized)")
    p.add_argument("--lmbda", type=float, required=True, metavar="λ", help="e.g. 0.0067 (MSE)")
    p.add_argument("--images", metavar="DIR", help="training images: a folder, or a data set of lictutor.datasets (e.g. "
                   "clic2020-professional-valid) (default: the book's: built-in photos, or CLIC 2020 "
                   "with LICTUTOR_ONLINE=1)")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    p.add_argument("--budget", metavar="B", help="smoke, cpu, gpu or full (default: LICTUTOR_BUDGET's rule)")
    p.add_argument("--steps", type=_positive, metavar="N",
                   help="override the budget's number of steps (the recipe's stages scale with it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    def coding_command(name, run, help, description, checkpoint, files):
        p = command(name, run, help, description)
        p.add_argument("--checkpoint", required=True, metavar="CKPT", help=checkpoint)
        for role, (metavar, text) in zip(("input", "output"), files):
            p.add_argument(role, metavar=metavar, help=text)
        p.add_argument("--quiet", action="store_true", help="no progress bar (shown for large images only)")

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


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: lictutor's warnings as one line each."""
    if issubclass(category, LictutorWarning):
        print(f"lictutor: warning: {message}", file=sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        warnings.simplefilter("always", LictutorWarning)
        previous = signal.signal(signal.SIGTERM, _terminate)  # stop as Ctrl-C does: cleanly
        try:
            args = build_parser().parse_args(argv)
            args.run(args)
        except (LictutorError, OSError) as err:  # OSError: a file that cannot be read or written
            first_line = (str(err).splitlines() or [type(err).__name__])[0]
            print(f"lictutor: error: {first_line}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as err:  # training says where it stopped and how to resume
            print(f"lictutor: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
