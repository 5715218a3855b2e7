"""Classical image codecs through Pillow, the baselines a learned codec must beat.

Every codec turns a ``uint8`` ``H×W×3`` RGB array into real bytes and back. Rates are measured
from those bytes (container headers included), never estimated.

=========  ==================================  =============================================
name       encoder                             quality knob
=========  ==================================  =============================================
jpeg       Pillow JPEG (libjpeg-turbo)         quality 1–95; Pillow defaults as in CompressAI's
                                               anchor: 4:2:0 chroma, no ``optimize``
jpeg2000   Pillow JPEG 2000 (OpenJPEG)         **compression ratio** (higher = fewer bits):
                                               9/7 irreversible wavelet, RGB→YCbCr (``mct``),
                                               raw J2K codestream; bpp ≈ 24 / ratio
webp       Pillow WebP (libwebp), lossy        quality 0–100, ``method=6`` (slowest, best)
avif       Pillow AVIF (libavif)               quality 0–100, 4:4:4 chroma, ``speed=6``
hevc       HEVC intra in HEIF (pillow-heif,    quality 0–100, 4:4:4 chroma: the BPG-like
           libheif + x265)                     anchor (BPG is HEVC intra in its own container)
jxl        JPEG XL (pillow-jxl-plugin), only   quality 0–99, ``effort=7``
           when that package is installed
=========  ==================================  =============================================

Use :func:`evaluate_codec` for a rate–distortion curve in CompressAI's JSON schema and
:func:`encode_at_bpp` to compare codecs at one rate.
"""

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version

import numpy as np
import PIL
import pillow_heif
from PIL import Image, features

from lictutor.curves import by_rate, mean_over_images, measure
from lictutor.errors import LictutorError
from lictutor.metrics import bpp_from_bytes


@dataclass(frozen=True)
class Codec:
    """One classical codec: how to save and load a Pillow image, and its quality settings.

    ``qualities`` are the default settings of a rate–distortion curve, chosen to span roughly
    0.1–2 bpp on natural photos; ``quality_range`` bounds the knob for :func:`encode_at_bpp`.
    """

    name: str
    label: str
    library: str
    settings: str
    qualities: tuple
    quality_range: tuple
    save: Callable  # save(pil_image, file, quality)
    load: Callable  # load(file) -> pil_image

    def encode(self, img, quality):
        """Compress a ``uint8`` ``H×W×3`` array; return the bitstream bytes."""
        lo, hi = self.quality_range
        if not lo <= quality <= hi:
            raise LictutorError(f"{self.name} quality must be in [{lo}, {hi}], got {quality}")
        buf = io.BytesIO()
        self.save(Image.fromarray(_check_image(img)), buf, quality)
        return buf.getvalue()

    def decode(self, data):
        """Decompress bytes from :meth:`encode` into a ``uint8`` ``H×W×3`` array."""
        try:
            with self.load(io.BytesIO(data)) as im:
                return np.array(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError, RuntimeError, EOFError) as err:
            raise LictutorError(f"cannot decode {len(data)} bytes as {self.label}: {err}") from err


def _check_image(img):
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
        shape = getattr(img, "shape", None)
        dtype = getattr(img, "dtype", type(img).__name__)
        raise LictutorError(f"codecs take uint8 H×W×3 RGB arrays, got {dtype} with shape {shape}")
    return img


def _pillow_loader(fmt):
    return lambda f: Image.open(f, formats=[fmt])


def _heif_load(f):
    return pillow_heif.open_heif(f, convert_hdr_to_8bit=True).to_pillow()


def _heif_save(im, f, q):
    pillow_heif.encode(im.mode, im.size, im.tobytes(), f, quality=q, chroma=444)


def _jpeg2000_save(im, f, q):
    im.save(f, "JPEG2000", quality_mode="rates", quality_layers=[q], irreversible=True, mct=1, no_jp2=True)


_PILLOW = f"Pillow {PIL.__version__}"
_LIBJPEG = (
    f"libjpeg-turbo {features.version_feature('libjpeg_turbo')}"
    if features.check_feature("libjpeg_turbo")
    else f"libjpeg {features.version('jpg')}"
)
_HEIF = pillow_heif.libheif_info()

#: the codecs this installation runs, by name
CODECS = {c.name: c for c in [
    Codec(name="jpeg", label="JPEG", library=f"{_PILLOW}, {_LIBJPEG}",
          settings="quality q, Pillow defaults (4:2:0 chroma)", quality_range=(1, 95),
          qualities=(5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90),
          save=lambda im, f, q: im.save(f, "JPEG", quality=q), load=_pillow_loader("JPEG")),
    Codec(name="jpeg2000", label="JPEG2000", library=f"{_PILLOW}, OpenJPEG {features.version('jpg_2000')}",
          settings="compression ratio q, 9/7 irreversible wavelet, mct=1, J2K codestream",
          qualities=(400, 240, 160, 120, 80, 48, 32, 24, 16, 12), quality_range=(2, 1000),
          save=_jpeg2000_save, load=_pillow_loader("JPEG2000")),
    Codec(name="webp", label="WebP", library=f"{_PILLOW}, libwebp {features.version('webp')}",
          settings="quality q, method=6", quality_range=(0, 100),
          qualities=(0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
          save=lambda im, f, q: im.save(f, "WEBP", quality=q, method=6), load=_pillow_loader("WEBP")),
    Codec(name="avif", label="AVIF", library=f"{_PILLOW}, libavif {features.version('avif')}",
          settings="quality q, 4:4:4 chroma, speed=6", qualities=(5, 15, 25, 35, 45, 55, 65, 75, 85, 90),
          quality_range=(0, 100), load=_pillow_loader("AVIF"),
          save=lambda im, f, q: im.save(f, "AVIF", quality=q, speed=6, subsampling="4:4:4")),
    Codec(name="hevc", label="HEVC (HEIF)", settings="quality q, 4:4:4 chroma",
          library=f"pillow-heif {pillow_heif.__version__}, libheif {_HEIF['libheif']}, "
                  f"{_HEIF['encoders'].get('x265', 'x265')}", quality_range=(0, 100),
          qualities=(5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65), save=_heif_save, load=_heif_load),
]}

try:
    import pillow_jxl  # noqa: F401  (importing it registers the "JXL" format with Pillow)
except ImportError:
    pass
else:
    CODECS["jxl"] = Codec(
        name="jxl", label="JPEG XL", library=f"{_PILLOW}, pillow-jxl-plugin {version('pillow-jxl-plugin')}",
        settings="quality q, effort=7", qualities=(0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
        quality_range=(0, 99),  # libjxl rejects 100 unless lossless
        save=lambda im, f, q: im.save(f, "JXL", quality=q, effort=7), load=_pillow_loader("JXL"))


def available_codecs():
    """Names of the codecs this installation can run."""
    return list(CODECS)


def get_codec(name):
    """The :class:`Codec` registered under ``name``."""
    if name not in CODECS:
        raise LictutorError(f"unknown codec {name!r}; available: {', '.join(CODECS)}")
    return CODECS[name]


def evaluate_codec(name, images, qualities=None, points=None, progress=True, per_image=False):
    """Rate–distortion curve of a codec on ``images``, in CompressAI's eval JSON schema.

    ``images`` is a list of ``(name, uint8 H×W×3 array)`` pairs. Every image is encoded at
    every quality (:func:`lictutor.curves.measure`); bpp comes from the real bytes, PSNR and
    MS-SSIM from the decoded image, and times (seconds) from the wall clock. Each point is the
    mean over images, and points are sorted by bpp. Images under 161 px on a side get MS-SSIM
    ``NaN`` and are left out of its mean. ``per_image=True`` adds
    ``"per_image": {image: {metric: [...]}}`` in the same point order. ``points`` keeps that
    many of the qualities, evenly spread from the lowest to the highest (a budget's
    ``codec_points``).
    """
    codec = get_codec(name)
    qualities = list(codec.qualities if qualities is None else qualities)
    if points is not None and points < len(qualities):
        if points < 2:
            raise LictutorError(f"a rate–distortion curve needs at least 2 points, got points={points}")
        qualities = [qualities[round(i)] for i in np.linspace(0, len(qualities) - 1, points)]
    coders = [(partial(codec.encode, quality=q), codec.decode) for q in qualities]
    values = measure(coders, images, desc=codec.label, progress=progress)
    keys = ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time")
    results = {k: mean_over_images(values[k]).tolist() for k in keys}
    out = {
        "name": codec.label,
        "description": f"{codec.label}. {codec.library}; {codec.settings}",
        "results": by_rate({**results, "quality": qualities}),
    }
    if per_image:
        order = np.argsort(results["bpp"], kind="stable")  # as by_rate sorts the points
        out["per_image"] = {n: {k: values[k][order, j].tolist() for k in keys} for j, (n, _) in enumerate(images)}
    return out


def encode_at_bpp(name, img, target_bpp):
    """Encode ``img`` at the quality whose rate lands nearest ``target_bpp``.

    Bisects the integer quality knob over the codec's ``quality_range`` (about 10 encodes).
    Returns ``(quality, data, decoded)``; outside the codec's reach it returns the nearest end.
    """
    codec = get_codec(name)
    height, width = _check_image(img).shape[:2]
    encoded = {}

    def rate(q):
        if q not in encoded:
            encoded[q] = codec.encode(img, q)
        return bpp_from_bytes(len(encoded[q]), height, width)

    lo, hi = codec.quality_range
    rising = rate(hi) > rate(lo)  # JPEG 2000's knob is a compression ratio: rate falls with it
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (rate(mid) < target_bpp) == rising:
            lo = mid
        else:
            hi = mid
    quality = min(encoded, key=lambda q: abs(rate(q) - target_bpp))
    return quality, encoded[quality], codec.decode(encoded[quality])
