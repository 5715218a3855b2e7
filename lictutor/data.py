"""Images for training and evaluation.

Everything here returns images as ``uint8`` NumPy arrays of shape H×W×3 (RGB); models see
float tensors [3, H, W] in [0, 1] (:func:`to_tensor`, :func:`to_uint8`).

Three sources of images:

* **Built-in photos** that installed packages ship (scikit-image, scikit-learn, matplotlib),
  split once into training and evaluation images, so the book runs offline
  (:func:`builtin_photos`, :func:`builtin_split`, :func:`train_images`, :func:`eval_images`).
* **A folder** of your own images (:func:`folder_images`).
* **Public data sets**, downloaded once into ``lictutor_home()/datasets`` and checked against
  published checksums (:data:`DATASETS`, :func:`download`).

Training draws random crops from a list of images (:class:`RandomCrops`, :func:`training_set`).
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import shutil
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm  # plain text bars: they render in terminals, notebooks and the built book

from lictutor.errors import LictutorError

__all__ = [
    "load_image", "save_image", "to_tensor", "to_uint8",
    "builtin_photos", "builtin_split", "train_images", "eval_images", "center_crop", "folder_images",
    "RandomCrops", "training_set",
    "lictutor_home", "RemoteFile", "DatasetSpec", "DATASETS", "fetch", "download",
    "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

# ---------------------------------------------------------------------------------------------
# Reading and writing images
# ---------------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``uint8`` H×W×3 RGB.

    Grayscale, 1-bit and palette images become RGB; transparent images are composited onto
    white; CMYK is converted; 16-bit images are scaled to 8 bits (65535 → 255, not clipped);
    the EXIF orientation is applied. The whole file is decoded here, so a truncated file
    fails now rather than halfway through training. Any file that cannot be read raises
    :class:`LictutorError` naming it.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except FileNotFoundError:
        raise LictutorError(f"cannot read image '{path}': no such file") from None
    except UnidentifiedImageError:
        raise LictutorError(f"cannot read image '{path}': not an image Pillow can decode") from None
    except Exception as err:  # Pillow's plugins raise many types (OSError, SyntaxError, ...)
        raise LictutorError(f"cannot read image '{path}': {err}") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
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


def save_image(image: np.ndarray | torch.Tensor, path: str | os.PathLike) -> None:
    """Write a PNG (lossless, whatever the suffix says).

    ``image`` is ``uint8`` H×W×3, or a float tensor [3, H, W] or [1, 3, H, W] in [0, 1].
    Missing parent folders are created.
    """
    if isinstance(image, torch.Tensor):
        image = to_uint8(image)
    _check_uint8_rgb(image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """``uint8`` H×W×3 → float32 tensor [3, H, W] in [0, 1] (read-only arrays, e.g.
    ``np.asarray`` of a PIL image, are copied)."""
    _check_uint8_rgb(img)
    img = np.ascontiguousarray(img) if img.flags.writeable else np.array(img)
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """Float tensor [3, H, W] or [1, 3, H, W] in [0, 1] → ``uint8`` H×W×3 (clamped, rounded)."""
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3 or not t.is_floating_point():
        raise LictutorError(f"expected a float tensor [3, H, W] or [1, 3, H, W], "
                            f"got {t.dtype} {list(t.shape)}")
    t = t.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    return t.permute(1, 2, 0).numpy()


def _check_uint8_rgb(img) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{img.dtype} array {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise LictutorError(f"expected a uint8 H×W×3 RGB image, got {desc}")


# ---------------------------------------------------------------------------------------------
# Built-in photos and folders
# ---------------------------------------------------------------------------------------------

# (name, package, file inside the package): natural colour photos that pip installs with the
# book's dependencies. Files are looked up on disk, so nothing is ever downloaded; a photo
# whose package (or package version) lacks it is simply left out.
_BUILTIN = (
    ("astronaut", "skimage", "data/astronaut.png"),  # Eileen Collins, NASA portrait, 512×512
    ("chelsea", "skimage", "data/chelsea.png"),  # a cat: fur and whiskers, 451×300
    ("coffee", "skimage", "data/coffee.png"),  # still life, smooth gradients, 600×400
    ("motorcycle", "skimage", "data/motorcycle_left.png"),  # indoor scene, edges, 741×500
    ("rocket", "skimage", "data/rocket.jpg"),  # launch pad outdoors, 640×427
    ("china", "sklearn", "datasets/images/china.jpg"),  # temple and sky, 640×427
    ("flower", "sklearn", "datasets/images/flower.jpg"),  # close-up with blur, 640×427
    ("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),  # portrait, 512×600
    ("hubble", "skimage", "data/hubble_deep_field.jpg"),  # galaxies on black, 1000×872
    ("ihc", "skimage", "data/ihc.png"),  # stained tissue under a microscope, 512×512
    ("retina", "skimage", "data/retina.jpg"),  # fundus photo, 1411×1411
    # Grey-scale photos (read as R = G = B): more natural textures and edges for training.
    ("camera", "skimage", "data/camera.png"),  # cameraman, 512×512
    ("brick", "skimage", "data/brick.png"),  # brick wall texture, 512×512
    ("grass", "skimage", "data/grass.png"),  # grass texture, 512×512
    ("gravel", "skimage", "data/gravel.png"),  # gravel texture, 512×512
    ("coins", "skimage", "data/coins.png"),  # old coins, 384×303
    ("moon", "skimage", "data/moon.png"),  # lunar surface, 512×512
)

# Held-out photos. They are the four stored losslessly (PNG), so rate–distortion numbers
# measure our codec and not the re-compression of JPEG artefacts; all are at least 256×256
# and they differ in content: a portrait, animal fur, a still life and a cluttered scene.
_EVAL_NAMES = ("astronaut", "chelsea", "coffee", "motorcycle")


def _builtin_paths() -> dict[str, Path]:
    paths = {}
    for name, package, relative in _BUILTIN:
        spec = importlib.util.find_spec(package)  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(list(spec.submodule_search_locations)[0]) / relative
        if path.is_file():
            paths[name] = path
    return paths


def builtin_photos() -> dict[str, np.ndarray]:
    """All built-in photos, ``{name: uint8 H×W×3}``, always in the same order."""
    return {name: load_image(path) for name, path in _builtin_paths().items()}


def builtin_split() -> tuple[list[str], list[str]]:
    """Names of the built-in photos, split once into ``(train, eval)``.

    Evaluation holds astronaut, chelsea, coffee and motorcycle: the photos stored as PNG
    (so scores are not confounded by JPEG artefacts in the source), each at least 256×256,
    and varied in content. Training gets the rest.
    """
    names = list(_builtin_paths())
    evaluation = [name for name in names if name in _EVAL_NAMES]
    return [name for name in names if name not in _EVAL_NAMES], evaluation


def train_images() -> list[tuple[str, np.ndarray]]:
    """The built-in training photos as ``(name, image)`` pairs."""
    paths = _builtin_paths()
    return [(name, load_image(paths[name])) for name in builtin_split()[0]]


def eval_images(folder: str | os.PathLike | None = None, count: int | None = None,
                size: int | None = None) -> list[tuple[str, np.ndarray]]:
    """Evaluation images as ``(name, image)`` pairs: every image in ``folder`` if given,
    else the built-in evaluation photos.

    ``count`` keeps the first ``count`` images and ``size`` centre-crops each to at most
    ``size``×``size``; chapters pass their budget's ``eval_images`` and ``eval_size``
    (``None`` keeps all images at full size).
    """
    if folder is not None:
        images = folder_images(folder)
    else:
        paths = _builtin_paths()
        images = [(name, load_image(paths[name])) for name in builtin_split()[1]]
    return [(name, center_crop(img, size)) for name, img in images[:count]]


def center_crop(img: np.ndarray, size: int | None) -> np.ndarray:
    """The central ``size``×``size`` region of ``img`` (sides shorter than ``size`` are kept)."""
    if size is None:
        return img
    height, width = img.shape[:2]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return img[top : top + size, left : left + size]


def folder_images(folder: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    """Every image directly inside ``folder`` as ``(file name, image)``, sorted by name.

    Files with an image extension (:data:`IMAGE_EXTENSIONS`, any case) are read; hidden
    files are skipped. A missing folder, or one without images, raises :class:`LictutorError`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LictutorError(f"image folder '{folder}' does not exist")
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        raise LictutorError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in '{folder}'")
    return [(p.name, load_image(p)) for p in files]


# ---------------------------------------------------------------------------------------------
# Training crops
# ---------------------------------------------------------------------------------------------


class RandomCrops(torch.utils.data.Dataset):
    """Random square crops with random horizontal flips, for training.

    Args:
        images: ``uint8`` H×W×3 arrays, or ``(name, array)`` pairs.
        crop: side of the crops.
        length: items per (virtual) epoch, i.e. ``len()``; default one per image. Each item
            picks an image uniformly at random, then a crop position and a flip.
        pad: ``"reflect"`` pads images smaller than ``crop`` by mirroring; ``None`` skips them
            with a warning.
        seed: item ``i`` depends only on ``(seed, i)``, so runs, resumed runs and DataLoader
            workers all see the same crops.

    Items are float32 tensors [3, crop, crop] in [0, 1]. Any index ``i >= 0`` is valid, also
    past ``length``, so a training loop may index by the global sample number.
    """

    def __init__(self, images: Sequence[np.ndarray | tuple[str, np.ndarray]], crop: int = 256,
                 length: int | None = None, pad: str | None = "reflect", seed: int = 0):
        if crop < 1:
            raise LictutorError(f"crop must be positive, got {crop}")
        if pad not in ("reflect", None):
            raise LictutorError(f"pad must be 'reflect' or None, got {pad!r}")
        self.crop, self.seed = crop, seed
        self.images, skipped = [], []  # kept as uint8 tensors: a quarter of float32's memory
        for i, item in enumerate(images):
            name, img = item if isinstance(item, tuple) else (f"image {i}", item)
            _check_uint8_rgb(img)
            h, w = img.shape[:2]
            if h < crop or w < crop:
                if pad is None:
                    skipped.append(f"{name} ({w}×{h})")
                    continue
                dh, dw = max(crop - h, 0), max(crop - w, 0)
                img = np.pad(img, ((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0)),
                             mode=pad)
            self.images.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
        if skipped:
            warnings.warn(f"skipped {len(skipped)} images smaller than {crop}×{crop}: "
                          + ", ".join(skipped), stacklevel=2)
        if not self.images:
            raise LictutorError(f"no images to crop: none is at least {crop}×{crop}"
                                if skipped else "no images given")
        self.length = len(self.images) if length is None else length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):  # one epoch; without this, iteration would never stop
        return (self[i] for i in range(self.length))

    def __getitem__(self, index: int) -> torch.Tensor:
        if index < 0:
            raise IndexError(index)
        g = _generator(self.seed, index)
        img = self.images[int(torch.randint(len(self.images), (1,), generator=g))]
        _, h, w = img.shape
        top = int(torch.randint(h - self.crop + 1, (1,), generator=g))
        left = int(torch.randint(w - self.crop + 1, (1,), generator=g))
        patch = img[:, top:top + self.crop, left:left + self.crop]
        if torch.rand(1, generator=g) < 0.5:
            patch = patch.flip(-1)
        return patch.float().div(255)


def _generator(seed: int, index: int) -> torch.Generator:
    """A generator seeded from ``(seed, index)``; NumPy's SeedSequence mixes the pair so that
    nearby pairs give unrelated streams."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def training_set(folder: str | os.PathLike | None = None, crop: int = 256,
                 length: int | None = None, seed: int = 0) -> RandomCrops:
    """Random crops from the images in ``folder``, or from the built-in training photos."""
    images = folder_images(folder) if folder is not None else train_images()
    return RandomCrops(images, crop=crop, length=length, seed=seed)


# ---------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------


def lictutor_home() -> Path:
    """Where lictutor keeps downloads: ``$LICTUTOR_HOME``, else ``~/.cache/lictutor``."""
    return Path(os.environ.get("LICTUTOR_HOME", "~/.cache/lictutor")).expanduser()


@dataclass(frozen=True)
class RemoteFile:
    """One file to download. ``sha256=None`` means no published checksum is known."""

    url: str
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return PurePosixPath(self.url.split("?")[0]).name


@dataclass(frozen=True)
class DatasetSpec:
    """A downloadable image set: image files and/or zip archives of images."""

    description: str
    files: tuple[RemoteFile, ...]
    #: SHA-1 of all files' bytes concatenated in order: how NeuralCompression publishes Kodak
    #: (there is no published per-file checksum for it).
    sha1_all: str | None = None


_ETH = "https://data.vision.ee.ethz.ch/cvl"

#: Known data sets. SHA-256 values of the archives are those TensorFlow Datasets publishes in
#: ``tensorflow_datasets/url_checksums/div2k.txt`` and ``clic.txt``; Kodak's combined SHA-1 is
#: the one in facebookresearch/NeuralCompression, ``neuralcompression/data/_kodak.py``.
DATASETS: dict[str, DatasetSpec] = {
    "kodak": DatasetSpec(
        "Kodak Lossless True Color Image Suite: 24 photos, 768×512, the usual test set (15 MB)",
        tuple(RemoteFile(f"http://r0k.us/graphics/kodak/kodak/kodim{i:02d}.png")
              for i in range(1, 25)),
        sha1_all="076e2a5fd4515b5fda677f15fe63dd112d266bc5",
    ),
    "clic2020-professional-valid": DatasetSpec(
        "CLIC 2020 professional validation: 41 high-resolution photos (135 MB)",
        (RemoteFile(f"{_ETH}/clic/professional_valid_2020.zip",
                    "00be38092ade2ab5163b65f7f6523d46c7bca147007f559adbb02c0afc236b7d"),),
    ),
    "div2k-valid": DatasetSpec(
        "DIV2K validation, high resolution: 100 photos, about 2040×1400 (449 MB)",
        (RemoteFile(f"{_ETH}/DIV2K/DIV2K_valid_HR.zip",
                    "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc"),),
    ),
    "div2k-train": DatasetSpec(
        "DIV2K training, high resolution: 800 photos, about 2040×1400 (3.5 GB)",
        (RemoteFile(f"{_ETH}/DIV2K/DIV2K_train_HR.zip",
                    "9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335"),),
    ),
}


def download(name: str, root: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Download the data set ``name`` (see :data:`DATASETS`) and return the folder of its images.

    The folder is ``root``, by default ``lictutor_home() / "datasets" / name``. Files are
    checked against published checksums: each file's SHA-256 where one is published (the
    archives), else one SHA-1 over all files (Kodak). Archives are unpacked flat (the images
    land directly in the folder) and then deleted. Files already there are not fetched again,
    so a second call needs no network. A file with no published checksum at all cannot be
    verified: you get a warning with its SHA-256, to compare by hand.
    """
    if name not in DATASETS:
        raise LictutorError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    root = Path(root) if root is not None else lictutor_home() / "datasets" / name
    for remote in spec.files:
        dest = root / remote.filename
        if remote.filename.lower().endswith(".zip"):
            done = root / f".{remote.filename}.extracted"  # the archive is gone once unpacked
            if done.exists():
                continue
            fetch(remote.url, dest, remote.sha256, progress)
            _warn_if_unverified(remote, spec, dest)
            _extract_images(dest, root)
            dest.unlink()
            done.touch()
        else:
            new = not dest.exists()
            fetch(remote.url, dest, remote.sha256, progress)
            if new:
                _warn_if_unverified(remote, spec, dest)
    if spec.sha1_all is not None:
        _check_sha1_all(spec, root)
    return root


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None,
          progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` unless it is already there (with the right ``sha256``).

    The bytes go to ``dest.part`` first and are renamed only when complete and verified, so
    an interrupted download never looks finished. A wrong checksum or a network error raises
    :class:`LictutorError` and leaves no file behind. ``sha256=None`` skips the check.
    """
    dest = Path(dest)
    if dest.exists():
        if sha256 is None or _sha256sum(dest) == sha256:
            return dest
        dest.unlink()  # stale or corrupt: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        digest = _stream(url, part, dest.name, progress)
        if sha256 is not None and digest != sha256:
            raise LictutorError(f"checksum mismatch for {url}: "
                                f"expected sha256 {sha256}, got {digest}")
        os.replace(part, dest)
    except (OSError, http.client.HTTPException) as err:  # URLError and HTTPError are OSErrors
        raise LictutorError(f"cannot download {url}: {err}") from None
    finally:
        part.unlink(missing_ok=True)
    return dest


def _stream(url: str, part: Path, label: str, progress: bool) -> str:
    """Copy ``url`` into ``part`` with a progress bar in bytes; return the SHA-256."""
    request = urllib.request.Request(url, headers={"User-Agent": "lictutor"})
    digest = hashlib.sha256()
    with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=label, disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def _sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _warn_if_unverified(remote: RemoteFile, spec: DatasetSpec, path: Path) -> None:
    if remote.sha256 is None and spec.sha1_all is None:
        warnings.warn(f"{remote.url} has no published checksum, so it could not be verified; "
                      f"its sha256 is {_sha256sum(path)}", stacklevel=3)


def _check_sha1_all(spec: DatasetSpec, root: Path) -> None:
    digest = hashlib.sha1()
    for remote in spec.files:
        digest.update((root / remote.filename).read_bytes())
    if digest.hexdigest() != spec.sha1_all:
        for remote in spec.files:
            (root / remote.filename).unlink()
        raise LictutorError(f"checksum mismatch for the files in '{root}': combined sha1 "
                            f"{digest.hexdigest()}, expected {spec.sha1_all}; "
                            "deleted them, try again")


def _extract_images(archive: Path, folder: Path) -> None:
    """Unpack the images in a zip archive directly into ``folder``, dropping inner folders.

    An archive with absolute paths or ``..`` in a member name is refused outright; and as
    only base names are used, nothing can be written outside ``folder`` anyway.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for member in members:
                if member.filename.startswith("/") or ".." in PurePosixPath(member.filename).parts:
                    raise LictutorError(f"unsafe path {member.filename!r} in archive '{archive}'")
            for member in members:
                path = PurePosixPath(member.filename)
                if (member.is_dir() or path.suffix.lower() not in IMAGE_EXTENSIONS
                        or path.name.startswith(".") or "__MACOSX" in path.parts):
                    continue
                with zf.open(member) as src, open(folder / path.name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, OSError) as err:
        archive.unlink(missing_ok=True)
        raise LictutorError(f"cannot unpack '{archive}': {err}") from None
