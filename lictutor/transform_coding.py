"""Linear transform coding: the classical baseline of chapter 1.

An image is cut into ``n×n`` blocks, each block is transformed by an orthonormal basis (the
DCT of JPEG, or the KLT learned from data), every coefficient is quantized with one uniform
step ``Δ``, and the integers are "entropy coded" by an ideal coder: one that knows the
histogram of each coefficient position. Its rate is the empirical entropy

    R = Σ_k  Σ_blocks  −log2 p_k(q)      (p_k: histogram of quantized coefficient k),

what an ideal coder achieves that codes each coefficient position on its own, from its
exact histogram, sent for free. That is usually optimistic for JPEG's coder (fixed Huffman
tables, with only zero runs and DC differences as context), but not a bound for every coder: a context-adaptive one (JPEG 2000's EBCOT,
HEVC's CABAC) conditions each symbol on its already-coded neighbours and can spend less.
The histograms are each image's own (an oracle) and cost nothing to send. This is JPEG's
design with one uniform step in place of its quantization tables, and an ideal coder in place
of its run-length and Huffman codes.
"""

from __future__ import annotations

import numpy as np

from lictutor.errors import LictutorError
from lictutor.curves import by_rate, mean_over_images
from lictutor.metrics import MS_SSIM_MIN_SIDE, entropy_bits, ms_ssim, psnr

__all__ = ["dct_basis", "klt_basis", "ycbcr", "rgb", "to_blocks", "from_blocks", "neighbour_pairs",
           "transform_code", "transform_code_curve"]

# ITU-R BT.601 RGB <-> YCbCr (full range), as JPEG uses; orthogonality is not needed.
_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def dct_basis(n: int = 8) -> np.ndarray:
    """Orthonormal 2-D DCT-II basis for ``n×n`` blocks, as an ``(n², n²)`` matrix of rows.

    Row ``k = u·n + v`` is the separable cosine ``c_u(i) c_v(j)`` with
    ``c_u(i) = α_u cos(π (2i + 1) u / 2n)``, ``α_0 = √(1/n)``, ``α_u = √(2/n)``.
    """
    i = np.arange(n)
    c = np.sqrt(2 / n) * np.cos(np.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n))
    c[0] /= np.sqrt(2)
    return np.einsum("ui,vj->uvij", c, c).reshape(n * n, n * n)


def to_blocks(channel: np.ndarray, n: int) -> np.ndarray:
    """Non-overlapping ``n×n`` blocks of a 2-D array (cropped to a multiple of ``n``), as rows."""
    h, w = (channel.shape[0] // n) * n, (channel.shape[1] // n) * n
    if h == 0 or w == 0:
        raise LictutorError(f"image of {channel.shape[1]}×{channel.shape[0]} is smaller than one {n}×{n} block")
    blocks = channel[:h, :w].reshape(h // n, n, w // n, n).transpose(0, 2, 1, 3)
    return blocks.reshape(-1, n * n)


def from_blocks(blocks: np.ndarray, shape: tuple[int, int], n: int) -> np.ndarray:
    """Inverse of :func:`to_blocks` for a 2-D array of ``shape`` (a multiple of ``n``)."""
    h, w = shape
    return blocks.reshape(h // n, w // n, n, n).transpose(0, 2, 1, 3).reshape(h, w)


def ycbcr(img: np.ndarray) -> np.ndarray:
    """uint8 RGB to float YCbCr (JPEG's full-range BT.601), luma centred on 0."""
    return img.astype(np.float64) @ _YCBCR.T - np.array([128.0, 0.0, 0.0])


def rgb(ycc: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ycbcr` (float, not clipped)."""
    return (ycc + np.array([128.0, 0.0, 0.0])) @ np.linalg.inv(_YCBCR).T


def klt_basis(images, n: int = 8) -> np.ndarray:
    """The Karhunen–Loève transform: eigenvectors of the covariance of ``n×n`` luma blocks of
    ``images`` (uint8 RGB arrays), as rows sorted by decreasing variance. Orthonormal; on
    natural images it comes out close to the DCT."""
    blocks = np.concatenate([to_blocks(ycbcr(img)[..., 0], n) for img in images])
    blocks = blocks - blocks.mean(axis=0)
    eigenvalues, vectors = np.linalg.eigh(blocks.T @ blocks / len(blocks))
    return vectors[:, np.argsort(eigenvalues)[::-1]].T


def neighbour_pairs(images, basis: np.ndarray, k: int):
    """Coefficient ``k`` of the luma of horizontally adjacent blocks, as two arrays ``(a, b)``.

    Linear transforms decorrelate such pairs but leave their magnitudes dependent, the
    dependency divisive normalization targets (chapter 1).
    """
    n = int(round(np.sqrt(basis.shape[0])))
    a, b = [], []
    for img in images:
        coefficients = to_blocks(ycbcr(img)[..., 0], n) @ basis[k]
        grid = coefficients.reshape(img.shape[0] // n, img.shape[1] // n)
        a.append(grid[:, :-1].ravel())
        b.append(grid[:, 1:].ravel())
    return np.concatenate(a), np.concatenate(b)


def transform_code(img: np.ndarray, basis: np.ndarray, step: float):
    """Code ``img`` (uint8 RGB) with a block transform and uniform quantization of step ``step``.

    Luma and both chroma channels of YCbCr are transformed with ``basis`` (``(n², n²)``
    orthonormal rows), rounded to multiples of ``step`` and transformed back. Returns
    ``(reconstruction as uint8 RGB, bits)``, where ``bits`` is the ideal rate described in the
    module docstring, summed over the three channels. The image is cropped to whole blocks.
    """
    n = int(round(np.sqrt(basis.shape[0])))
    if basis.shape != (n * n, n * n):
        raise LictutorError(f"basis must be (n², n²), got {basis.shape}")
    if step <= 0:
        raise LictutorError(f"quantization step must be positive, got {step}")
    ycc = ycbcr(img)
    h, w = (img.shape[0] // n) * n, (img.shape[1] // n) * n
    out, bits = np.empty((h, w, 3)), 0.0
    for c in range(3):
        q = np.round(to_blocks(ycc[..., c], n) @ basis.T / step)
        bits += sum(entropy_bits(q[:, k]) * len(q) for k in range(n * n))
        out[..., c] = from_blocks(q * step @ basis, (h, w), n)
    return np.clip(np.round(rgb(out)), 0, 255).astype(np.uint8), bits


def transform_code_curve(images, basis, steps, name="transform code"):
    """Rate–distortion curve of :func:`transform_code` over quantization ``steps``, averaged
    over ``images`` (``(name, uint8 RGB)`` pairs), in CompressAI's results format."""
    keys = ("bpp", "psnr-rgb", "ms-ssim-rgb")
    points = []
    for step in steps:
        rows = []
        for _, img in images:
            rec, bits = transform_code(img, basis, step)
            ref = img[: rec.shape[0], : rec.shape[1]]
            rows.append((bits / (rec.shape[0] * rec.shape[1]), psnr(ref, rec),
                         ms_ssim(ref, rec) if min(rec.shape[:2]) >= MS_SSIM_MIN_SIDE else np.nan))
        points.append(mean_over_images(np.array(rows, dtype=float).T))
    res = {k: [float(p[i]) for p in points] for i, k in enumerate(keys)}
    return {"name": name, "description": "block transform, uniform quantizer, ideal entropy coder",
            "results": by_rate({**res, "quality": [float(s) for s in steps]})}
