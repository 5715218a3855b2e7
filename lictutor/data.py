"""Sets of images for training and evaluation.

Two sources of images, returned as ``(name, uint8 H×W×3)`` pairs:

* **Built-in photos** that installed packages ship (scikit-image, scikit-learn, matplotlib),
  split once into training and evaluation images, so the book runs offline
  (:func:`builtin_photos`, :func:`builtin_split`, :func:`train_images`, :func:`eval_images`).
* **A folder** of your own images (:func:`folder_images`), for example a public data set
  fetched by :func:`lictutor.datasets.download`.

Training draws random crops from a list of images (:class:`RandomCrops`, :func:`training_set`).
Reading, writing and converting one image is :mod:`lictutor.images`; the names below that
live there, in :mod:`lictutor.datasets` and in :mod:`lictutor.paths` are re-exported.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lictutor.datasets import DATASETS, DatasetSpec, RemoteFile, download, fetch  # noqa: F401 (re-exported)
from lictutor.errors import LictutorError, LictutorWarning
from lictutor.images import (  # noqa: F401 (re-exported)
    IMAGE_EXTENSIONS, check_uint8_rgb, load_image, save_image, to_tensor, to_uint8,
)
from lictutor.paths import lictutor_home  # noqa: F401 (re-exported)

__all__ = [
    "builtin_photos", "builtin_split", "train_images", "eval_images", "center_crop", "folder_images", "read_images",
    "RandomCrops", "training_set",
]

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


def folder_images(folder: str | os.PathLike, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """Every image directly inside ``folder`` as ``(file name, image)``, sorted by name (the
    first ``limit`` of them when given).

    Files with an image extension (:data:`IMAGE_EXTENSIONS`, any case) are read; hidden
    files are skipped. A missing folder, one without images, or an unreadable image raises
    :class:`LictutorError` (:func:`read_images` skips unreadable images instead).
    """
    images, failures = read_images(folder, limit)
    if failures:
        raise LictutorError(failures[0])
    return images


def read_images(folder: str | os.PathLike, limit: int | None = None) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """``(images, failures)``: the images of :func:`folder_images` that could be read, and one
    message per image file that could not, so that a long evaluation can skip a bad file and
    still report it."""
    folder = Path(folder)
    if folder.is_file():
        raise LictutorError(f"'{folder}' is a file; expected a folder of images")
    if not folder.is_dir():
        raise LictutorError(f"image folder '{folder}' does not exist")
    if limit is not None and limit < 1:
        raise LictutorError(f"limit must be at least 1 image, got {limit}")
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )[:limit]
    if not files:
        raise LictutorError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in '{folder}'")
    images, failures = [], []
    for p in files:
        try:
            images.append((p.name, load_image(p)))
        except LictutorError as err:
            failures.append(str(err))
    return images, failures


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
            check_uint8_rgb(img)
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
                          + ", ".join(skipped), LictutorWarning, stacklevel=2)
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
