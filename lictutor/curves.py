"""Rate–distortion curves from real bytes: the one evaluation loop of every codec here.

A codec at one setting is a pair of functions, ``encode(image) -> bytes`` and
``decode(bytes) -> image``: a classical codec at one quality (:mod:`lictutor.codecs`), or a
learned model writing ``.lic`` files (:mod:`lictutor.evaluate`). :func:`measure` codes every
image at every setting and records, per image, the rate from the bytes (container included),
the distortion of the decoded image and the coding times; :func:`mean_over_images` and
:func:`by_rate` turn that into one point per setting, in CompressAI's results schema.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable, Dict, Mapping, Sequence, Tuple

import numpy as np
from tqdm import tqdm  # plain text bars: they render in terminals, notebooks and the built book

from lictutor.errors import LictutorError
from lictutor.metrics import MS_SSIM_MIN_SIDE, bpp_from_bytes, ms_ssim, psnr

__all__ = ["METRICS", "measure", "mean_over_images", "by_rate"]

#: what :func:`measure` records for every image at every setting
METRICS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")

Coder = Tuple[Callable[[np.ndarray], bytes], Callable[[bytes], np.ndarray]]


def measure(coders: Sequence[Coder], images, *, desc: str, progress: bool = True,
            extras: Mapping[str, Callable[[bytes], float]] | None = None) -> Dict[str, np.ndarray]:
    """Code each of ``images`` (``(name, uint8 H×W×3)`` pairs) with each ``(encode, decode)``
    of ``coders``; returns ``{metric: array (settings, images)}`` for :data:`METRICS` and for
    every ``extras[name](bytes)`` (e.g. the container's share of the file).

    ``bpp`` counts every byte ``encode`` returns; ``psnr-rgb`` and ``ms-ssim-rgb`` compare the
    decoded image with the original (MS-SSIM NaN for images under 161 px on a side);
    ``encoding_time`` and ``decoding_time`` are wall-clock seconds.
    """
    if not coders or not images:
        raise LictutorError("a rate–distortion curve needs at least one setting and one image")
    names = (*METRICS, *(extras or {}))
    values = {k: np.empty((len(coders), len(images))) for k in names}
    with tqdm(total=len(coders) * len(images), desc=desc, disable=not progress) as bar:
        for i, (encode, decode) in enumerate(coders):
            for j, (_, img) in enumerate(images):
                start = time.perf_counter()
                data = encode(img)
                encoded = time.perf_counter()
                rec = decode(data)
                decoded = time.perf_counter()
                small = min(img.shape[:2]) < MS_SSIM_MIN_SIDE
                row = {"bpp": bpp_from_bytes(len(data), *img.shape[:2]), "psnr-rgb": psnr(img, rec),
                       "ms-ssim-rgb": math.nan if small else ms_ssim(img, rec),
                       "encoding_time": encoded - start, "decoding_time": decoded - encoded,
                       **{k: f(data) for k, f in (extras or {}).items()}}
                for k in names:
                    values[k][i, j] = row[k]
                bar.update()
    return values


def mean_over_images(values: np.ndarray) -> np.ndarray:
    """The mean over the last axis (the images) of the values that are not NaN; NaN where
    every value is (an MS-SSIM no image was large enough for)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "Mean of empty slice"
        return np.nanmean(values, axis=-1)


def by_rate(results: Mapping[str, Sequence], rate: str = "bpp") -> Dict[str, list]:
    """``results`` (lists of one value per point) with the points sorted by ``rate``."""
    order = np.argsort(results[rate], kind="stable")
    return {k: [v[i] for i in order] for k, v in results.items()}
