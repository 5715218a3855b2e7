"""One image: read it, write it, and turn it into the tensors models see.

Images are ``uint8`` NumPy arrays of shape H×W×3 (RGB); models see float tensors
[3, H, W] (or batches [N, 3, H, W]) in [0, 1]. Every conversion between the two is here:
:func:`to_tensor`, :func:`to_uint8` and, for the metrics and tools that take either,
:func:`as_batch`. :func:`pad` makes an image a multiple of a model's down-sampling.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from lictutor.errors import LictutorError, LictutorWarning
from lictutor.paths import write_atomic

__all__ = ["IMAGE_EXTENSIONS", "load_image", "save_image", "check_uint8_rgb", "to_tensor", "to_uint8", "as_batch", "pad"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``uint8`` H×W×3 RGB.

    Grayscale, 1-bit and palette images become RGB; transparent images are composited onto
    white; CMYK is converted; 16-bit images are scaled to 8 bits (65535 → 255, not clipped);
    floating-point images (TIFF mode ``F``) are read on the 0–1 scale (×255) when their values
    lie in [0, 1], on the 0–255 scale when they lie in [0, 255], and refused otherwise; the
    EXIF orientation is applied. Of a multi-frame file (an animated GIF, a TIFF stack) the
    first frame is read, with a :class:`LictutorWarning` saying so. The whole file is decoded
    here, so a truncated file fails now rather than halfway through training. Any file that
    cannot be read raises :class:`LictutorError` naming it.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            frames = getattr(im, "n_frames", 1)
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
    except FileNotFoundError:
        raise LictutorError(f"cannot read image '{path}': no such file") from None
    except UnidentifiedImageError:
        raise LictutorError(f"cannot read image '{path}': not an image Pillow can decode") from None
    except LictutorError as err:
        raise LictutorError(f"cannot read image '{path}': {err}") from None
    except Exception as err:  # Pillow's plugins raise many types (OSError, SyntaxError, ...)
        raise LictutorError(f"cannot read image '{path}': {err}") from None
    if frames > 1:
        warnings.warn(f"'{path.name}' holds {frames} frames; only the first is used", LictutorWarning, stacklevel=2)
    return rgb


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode == "F":
        return _float_to_rgb(np.asarray(im, dtype=np.float64))
    if im.mode == "I" or im.mode.startswith("I;16"):
        # 16-bit samples (Pillow opens 16-bit grayscale PNG/TIFF as I;16 or I). Pillow's own
        # convert() would clip everything above 255 to white; divide by 257 instead, the
        # exact inverse of the usual 8 → 16 bit expansion x * 257.
        wide = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        gray = ((wide + 128) // 257).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _float_to_rgb(values: np.ndarray) -> np.ndarray:
    """A floating-point grayscale image as ``uint8`` RGB: [0, 1] is scaled by 255, [0, 255]
    is taken as it is; other ranges (and NaN) are refused, since no scale is certain."""
    if not np.isfinite(values).all():
        raise LictutorError("a floating-point image with NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise LictutorError(f"a floating-point image with values in [{low:.4g}, {high:.4g}]; "
                            "expected [0, 1] or [0, 255]")
    scale = 255.0 if high <= 1 else 1.0
    gray = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def save_image(image: np.ndarray | torch.Tensor, path: str | os.PathLike) -> None:
    """Write a PNG (lossless); ``path`` must end in ``.png``.

    ``image`` is ``uint8`` H×W×3, or a float tensor [3, H, W] or [1, 3, H, W] in [0, 1].
    Missing parent folders are created; the file is written atomically
    (:func:`lictutor.paths.write_atomic`).
    """
    if isinstance(image, torch.Tensor):
        image = to_uint8(image)
    check_uint8_rgb(image)
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise LictutorError(f"images are written as PNG; name the file '{path.with_suffix('.png').name}', "
                            f"not '{path.name}'")
    write_atomic(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def check_uint8_rgb(img) -> None:
    """Raise :class:`LictutorError` unless ``img`` is a ``uint8`` H×W×3 array."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{img.dtype} array {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise LictutorError(f"expected a uint8 H×W×3 RGB image, got {desc}")


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """``uint8`` H×W×3 → float32 tensor [3, H, W] in [0, 1] (read-only arrays, e.g.
    ``np.asarray`` of a PIL image, are copied)."""
    check_uint8_rgb(img)
    return as_batch(img)[0]


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """Float tensor [3, H, W] or [1, 3, H, W] in [0, 1] → ``uint8`` H×W×3 (clamped, rounded)."""
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3 or not t.is_floating_point():
        raise LictutorError(f"expected a float tensor [3, H, W] or [1, 3, H, W], "
                            f"got {t.dtype} {list(t.shape)}")
    t = t.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    return t.permute(1, 2, 0).numpy()


def as_batch(x) -> torch.Tensor:
    """An image or a batch as an N×3×H×W float32 tensor on the 0–1 scale.

    Takes NumPy arrays channel-last (H×W×3 or N×H×W×3) and tensors channel-first (3×H×W or
    N×3×H×W); ``uint8`` values are on the 0–255 scale and divided by 255, float values are
    taken as they are (0–1). Tensors keep their device and their gradient.
    """
    if isinstance(x, np.ndarray):
        if x.ndim not in (3, 4):
            raise LictutorError(f"expected an H×W×3 or N×H×W×3 array, got shape {x.shape}")
        x = torch.from_numpy(np.array(x))  # a copy: decoded images may be read-only views
        x = x.permute(2, 0, 1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # channel-last → first
    if not isinstance(x, torch.Tensor):
        raise LictutorError(f"expected a NumPy array or a torch tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise LictutorError(f"expected an H×W×3 array or a 3×H×W / N×3×H×W tensor, got shape {tuple(x.shape)}")
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Pad a (B, C, H, W) tensor on the bottom and right to multiples of ``stride`` by
    repeating its edge (cheaper to code than a black border)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % stride, 0, -h % stride), mode="replicate")
