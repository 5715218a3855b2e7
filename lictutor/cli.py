"""The ``lictutor`` command line (also ``python -m lictutor``).

Each subcommand prints one clear line and exits non-zero on bad input.
"""

from __future__ import annotations

import argparse
import sys

from lictutor.errors import LictutorError


def _baselines(args) -> None:
    from lictutor import codecs, data, results

    names = codecs.available_codecs() if args.codecs is None else _split(args.codecs)
    for name in names:
        codecs.get_codec(name)  # fail early on an unknown name, before any encoding
    images = data.folder_images(args.images)
    if args.max_images:
        images = images[: args.max_images]
    print(f"{len(images)} images from {args.images}; codecs: {', '.join(names)}")
    curves = [codecs.evaluate_codec(name, images, progress=not args.quiet) for name in names]
    print(results.format_table(curves))
    if args.json:
        results.save_results(curves, args.json)
        print(f"wrote {args.json}")


def _split(text: str) -> list[str]:
    return [part.strip().lower() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lictutor",
        description="Learned image compression, from the book's package.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "baselines",
        help="rate–distortion curves of classical codecs on a folder of images",
        description="Encode every image with each classical codec over its quality range "
        "and report bpp (from the real encoded bytes), PSNR and MS-SSIM, averaged per quality.",
    )
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images")
    p.add_argument("--codecs", metavar="LIST", help="comma-separated, e.g. jpeg,webp (default: all available)")
    p.add_argument("--json", metavar="OUT", help="write the curves in CompressAI's results JSON format")
    p.add_argument("--max-images", type=int, metavar="K", help="use only the first K images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_baselines)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except LictutorError as err:
        print(f"lictutor: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lictutor: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
