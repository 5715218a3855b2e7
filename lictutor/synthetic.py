"""Synthetic training images with the statistics of natural ones: dead leaves.

The dead-leaves model (Matheron 1968; Lee, Mumford and Huang 2001) drops opaque discs one on
top of another until they cover the plane. With radii drawn from a power law
``p(r) ∝ r^-3`` between ``r_min`` and ``r_max`` the image is scale invariant: its power
spectrum falls as ``1/f^2`` like a photo's, and it holds edges at every scale, occlusions,
and flat or smoothly shaded regions. Baradad et al. (2021) and Achddou et al. (2022) train
image models on such images alone and come close to training on photos.

Each leaf here gets a natural colour (a random luminance and a small random chroma) with a
linear shading across it, and a share of the images is slightly defocused, so that smooth
gradients and soft edges, which photos are full of, are there too. Everything is
deterministic from a seed.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageFilter

from lictutor.errors import LictutorError

__all__ = ["dead_leaves", "dead_leaves_set"]

#: BT.601 YCbCr → RGB for values in [0, 1] (chroma centred on 0)
_YCBCR_TO_RGB = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])


def dead_leaves(size: int = 256, seed: int = 0, r_min: float = 2.0, r_max: float | None = None,
                alpha: float = 3.0, max_leaves: int = 200_000) -> np.ndarray:
    """One ``size``×``size`` dead-leaves image, ``uint8`` H×W×3, a function of ``seed`` alone.

    Leaves fall front to back: the first leaf is on top, and each later one shows only where
    no earlier leaf lies, until every pixel is covered (or ``max_leaves`` have fallen; the
    rest is filled with the last leaf's colour). Radii follow ``p(r) ∝ r^-alpha`` on
    ``[r_min, r_max]`` (``r_max`` defaults to ``size / 2``), by inverting the CDF. The image is
    drawn at twice the size and halved, which anti-aliases the edges.
    """
    if size < 8:
        raise LictutorError(f"dead_leaves: size must be at least 8, got {size}")
    rng = np.random.default_rng(seed)
    big = 2 * size
    lo, hi = 2 * r_min, 2 * (r_max if r_max is not None else size / 2)
    image = np.zeros((big, big, 3))
    uncovered = np.ones((big, big), dtype=bool)
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    for _ in range(max_leaves):
        u = rng.random()
        r = (lo ** (1 - alpha) + u * (hi ** (1 - alpha) - lo ** (1 - alpha))) ** (1 / (1 - alpha))
        cy, cx = rng.uniform(-r, big + r, size=2)
        colour, slope = _leaf_colour(rng), rng.normal(0, 0.12 / max(r, 1), size=2)
        top, bottom = max(int(cy - r), 0), min(int(cy + r) + 1, big)
        left, right = max(int(cx - r), 0), min(int(cx + r) + 1, big)
        if top >= bottom or left >= right:
            continue
        dy, dx = yy[top:bottom, left:right] - cy, xx[top:bottom, left:right] - cx
        show = (dy * dy + dx * dx <= r * r) & uncovered[top:bottom, left:right]
        if show.any():
            shade = (slope[0] * dy + slope[1] * dx)[show]
            image[top:bottom, left:right][show] = np.clip(colour + shade[:, None], 0, 1)
            uncovered[top:bottom, left:right][show] = False
            if not uncovered.any():
                break
    image[uncovered] = colour
    out = Image.fromarray(np.round(image * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    blur = float(rng.choice([0.0, 0.0, 0.8, 1.6]))  # half sharp, half slightly out of focus
    return np.asarray(out.filter(ImageFilter.GaussianBlur(blur)) if blur else out)


def _leaf_colour(rng: np.random.Generator) -> np.ndarray:
    """An RGB colour in [0, 1] with a uniform luminance and a small, mostly muted chroma."""
    ycc = np.array([rng.uniform(0.05, 0.95), *rng.normal(0, 0.08, size=2)])
    return np.clip(_YCBCR_TO_RGB @ ycc, 0, 1)


@functools.lru_cache(maxsize=4)
def dead_leaves_set(count: int, size: int, seed: int = 0) -> tuple[tuple[str, np.ndarray], ...]:
    """``count`` dead-leaves images of ``size``² as ``(name, image)`` pairs, image ``i`` from
    seed ``(seed, i)``; cached, since a training run asks for the same set each time."""
    seeds = np.random.SeedSequence(seed).spawn(count)
    return tuple((f"leaves-{i}", dead_leaves(size, seed=int(s.generate_state(1)[0]))) for i, s in enumerate(seeds))
