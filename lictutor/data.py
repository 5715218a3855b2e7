"""Sets of images for training and evaluation.

Two sources of images, returned as ``(name, uint8 H×W×3)`` pairs:

* **Built-in photos** that installed packages ship, so the book runs offline, split once
  (:func:`builtin_split`): scikit-image's photos into training (:func:`train_images`) and
  evaluation images (:func:`eval_images`), and the photos of scikit-learn and matplotlib,
  a source the training never sees, into a second, *unseen* evaluation set
  (:func:`unseen_images`) that tells how well a codec generalizes.
* **A folder** of your own images (:func:`folder_images`), or a public data set by name,
  fetched once by :func:`lictutor.datasets.download` (:func:`image_folder`).
* **Online** (``LICTUTOR_ONLINE=1``): the book trains on :data:`ONLINE_TRAINING` (CLIC 2020's
  41 professional validation photos) and evaluates on :data:`ONLINE_EVAL` (Kodak) instead of
  the built-in photos (:func:`online`, :func:`default_training_images`, :func:`eval_images`).

Training draws random crops from a list of images (:class:`RandomCrops`, :func:`training_set`),
augmented as :data:`AUGMENTATIONS` lists: copies at half and quarter size, the eight flips
and rotations of a square, colour changes, and synthetic dead-leaves images
(:mod:`lictutor.synthetic`).
Reading, writing and converting one image is :mod:`lictutor.images`; the names below that
live there, in :mod:`lictutor.datasets` and in :mod:`lictutor.paths` are re-exported.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from lictutor.datasets import DATASETS, DatasetSpec, RemoteFile, download, fetch  # noqa: F401 (re-exported)
from lictutor.errors import LictutorError, LictutorWarning
from lictutor.images import (  # noqa: F401 (re-exported)
    IMAGE_EXTENSIONS, check_uint8_rgb, load_image, save_image, to_tensor, to_uint8,
)
from lictutor.paths import lictutor_home  # noqa: F401 (re-exported)
from lictutor.synthetic import dead_leaves_set

__all__ = [
    "builtin_photos", "builtin_split", "OFF_GRID", "train_images", "eval_images", "unseen_images", "center_crop",
    "folder_images", "read_images", "ONLINE_TRAINING", "ONLINE_EVAL", "online", "default_training_images",
    "image_folder", "describe_data", "AUGMENTATIONS", "DEFAULT_AUGMENT", "check_augment", "training_photos", "turn_hue", "RandomCrops",
    "training_set",
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
#: packages whose photos no training sees: china, flower and grace_hopper, colour photos of
#: other scenes (a temple under sky, a blurred close-up, a portrait), stored as JPEG
UNSEEN_PACKAGES = ("sklearn", "matplotlib")
#: pixels cut from the top and the left of a photo stored as JPEG before it is evaluated: half
#: a block, so that JPEG does not re-code it on the 8×8 grid (16×16 for chroma) it was stored
#: on. On that grid, at the quality it was stored with, JPEG finds its own quantized
#: coefficients again: on the unseen photos quality 80 gave 39.1 dB at 1.53 bpp, against
#: 34.1 dB at the same rate 4 pixels off the grid, where the curve rises smoothly.
OFF_GRID = 4


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


#: the data sets the book trains and evaluates on when online (``LICTUTOR_ONLINE=1``)
ONLINE_TRAINING, ONLINE_EVAL = "clic2020-professional-valid", "kodak"


def online() -> bool:
    """Whether ``LICTUTOR_ONLINE`` asks for the public data sets (``1``, ``true`` or ``yes``)."""
    return os.environ.get("LICTUTOR_ONLINE", "").strip().lower() in ("1", "true", "yes")


def default_training_images() -> str | None:
    """What the book trains on: :data:`ONLINE_TRAINING` when :func:`online`, else ``None``, the
    built-in training photos (:class:`lictutor.config.TrainConfig`'s ``images``)."""
    return ONLINE_TRAINING if online() else None


def image_folder(images: str | os.PathLike) -> Path:
    """The folder of ``images``: the name of a data set in :data:`DATASETS` (downloaded on
    first use, checked, then read from disk), or a path (write ``./kodak`` for a folder
    that has a data set's name)."""
    if isinstance(images, str) and images in DATASETS:
        return download(images)
    return Path(images)


def describe_data() -> str:
    """One line for a chapter to print: which photos its models train and are evaluated on."""
    if online():
        train, test = (DATASETS[name].description.split(" (")[0] for name in (ONLINE_TRAINING, ONLINE_EVAL))
        return f"online: trained on {train}; evaluated on {test}, and on the unseen built-in photos"
    train, evaluation, unseen = builtin_split()
    return (f"offline: trained on {len(train)} built-in photos of scikit-image (+ augmentations), evaluated on "
            f"{', '.join(evaluation)}, and on {', '.join(unseen)} from packages the training never sees")


def builtin_photos() -> dict[str, np.ndarray]:
    """All built-in photos, ``{name: uint8 H×W×3}``, always in the same order."""
    return {name: load_image(path) for name, path in _builtin_paths().items()}


def builtin_split() -> tuple[list[str], list[str], list[str]]:
    """Names of the built-in photos, split once into ``(train, eval, unseen)``.

    Evaluation holds astronaut, chelsea, coffee and motorcycle: the photos stored as PNG
    (so scores are not confounded by JPEG artefacts in the source), each at least 256×256,
    and varied in content. *Unseen* holds the photos of :data:`UNSEEN_PACKAGES`, a source
    that training leaves out, so that a curve on them shows how a codec does on photos
    unlike the ones it learned from. Training gets the rest of scikit-image's photos.
    """
    packages = {name: package for name, package, _ in _BUILTIN}
    names = list(_builtin_paths())
    unseen = [name for name in names if packages[name] in UNSEEN_PACKAGES]
    evaluation = [name for name in names if name in _EVAL_NAMES]
    return [name for name in names if name not in evaluation + unseen], evaluation, unseen


def train_images() -> list[tuple[str, np.ndarray]]:
    """The built-in training photos as ``(name, image)`` pairs."""
    return _builtin_images(builtin_split()[0], None, None, off_grid=False)


def eval_images(folder: str | os.PathLike | None = None, count: int | None = None,
                size: int | None = None) -> list[tuple[str, np.ndarray]]:
    """Evaluation images as ``(name, image)`` pairs: every image in ``folder`` (a path or a
    data set name, :func:`image_folder`) if given, else Kodak when :func:`online`, else the
    built-in evaluation photos.

    ``count`` keeps the first ``count`` images and ``size`` centre-crops each to at most
    ``size``×``size``; chapters pass their budget's ``eval_images`` and ``eval_size``
    (``None`` keeps all images at full size).
    """
    folder = ONLINE_EVAL if folder is None and online() else folder
    if folder is None:
        return _builtin_images(builtin_split()[1], count, size)
    return [(name, center_crop(img, size)) for name, img in folder_images(image_folder(folder))[:count]]


def unseen_images(count: int | None = None, size: int | None = None) -> list[tuple[str, np.ndarray]]:
    """The built-in photos of a source no training sees (:func:`builtin_split`), as
    :func:`eval_images` gives the usual ones (``count`` and ``size`` alike). They are stored
    as JPEG, so each first loses :data:`OFF_GRID` rows and columns at the top and left."""
    return _builtin_images(builtin_split()[2], count, size)


def _builtin_images(names: list[str], count: int | None, size: int | None,
                    off_grid: bool = True) -> list[tuple[str, np.ndarray]]:
    """The first ``count`` of the built-in photos ``names``, each centre-cropped to ``size``;
    for evaluation (``off_grid``), a photo stored as JPEG is first moved off its block grid
    (:data:`OFF_GRID`). Training photos are read as stored."""
    paths = _builtin_paths()
    out = []
    for name in names[:count]:
        img = load_image(paths[name])
        if off_grid and paths[name].suffix.lower() in (".jpg", ".jpeg"):
            img = np.ascontiguousarray(img[OFF_GRID:, OFF_GRID:])
        out.append((name, center_crop(img, size)))
    return out


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


#: the training augmentations :class:`lictutor.config.TrainConfig` can ask for, by name
AUGMENTATIONS = {
    "scales": "each photo also at half and quarter size, while its short side keeps a crop",
    "dihedral": "each crop in one of the 8 flips and rotations of a square (else a left-right flip)",
    "colour": "half the crops with their hue turned and saturation scaled at random",
    "leaves": "synthetic dead-leaves images (lictutor.synthetic) added to the photos",
}
#: what the book and ``lictutor train`` use. Each lowered the rate–distortion objective on the
#: unseen photos when added alone (``benchmarks/augmentation.py``, cpu widths, 2,000 steps,
#: λ = 0.0067, one seed: scales −18 %, dihedral −17 %, colour −4 %, leaves −28 %; all four −26 %)
DEFAULT_AUGMENT = ("colour", "dihedral", "leaves", "scales")
#: dead-leaves images added by ``"leaves"``, each of side ``max(256, 3 · crop // 2)``
LEAVES = 8


def check_augment(augment) -> tuple[str, ...]:
    """``augment`` as a sorted tuple of names in :data:`AUGMENTATIONS`, or :class:`LictutorError`."""
    if isinstance(augment, str) or not all(isinstance(a, str) for a in augment):
        raise LictutorError(f"augment must be a sequence of names, got {augment!r}")
    unknown = sorted(set(augment) - set(AUGMENTATIONS))
    if unknown:
        raise LictutorError(f"unknown augmentation {unknown[0]!r}; choose from {', '.join(AUGMENTATIONS)}")
    return tuple(sorted(set(augment)))


def training_photos(folder: str | os.PathLike | None = None, crop: int = 256,
                    augment=DEFAULT_AUGMENT) -> list[tuple[str, np.ndarray]]:
    """The images training crops from: those in ``folder`` (a path or a data set name,
    :func:`image_folder`; default: the built-in training photos), plus, as ``augment`` asks,
    their copies at half and quarter size (``"scales"``: averaged 2×2 blocks, as CompressAI's
    training sets are down-sampled photos; a copy is made while its short side is at least
    ``crop``) and :data:`LEAVES` dead-leaves images (``"leaves"``)."""
    augment = check_augment(augment)
    images = folder_images(image_folder(folder)) if folder is not None else train_images()
    if "scales" in augment:
        images = images + [(f"{name}/{2 ** k}", small) for name, img in images
                           for k, small in enumerate(_halvings(img, crop), start=1)]
    if "leaves" in augment:
        images = images + list(dead_leaves_set(LEAVES, max(256, 3 * crop // 2)))
    return images


def _halvings(img: np.ndarray, crop: int, most: int = 2) -> list[np.ndarray]:
    """``img`` at 1/2, 1/4, … (at most ``most`` copies), while the short side stays ≥ ``crop``."""
    out, pil = [], Image.fromarray(img)
    for _ in range(most):
        if min(pil.size) // 2 < crop:
            break
        pil = pil.reduce(2)
        out.append(np.asarray(pil))
    return out


class RandomCrops(torch.utils.data.Dataset):
    """Random square crops with random flips, for training.

    Args:
        images: ``uint8`` H×W×3 arrays, or ``(name, array)`` pairs.
        crop: side of the crops.
        length: items per (virtual) epoch, i.e. ``len()``; default one per image. Each item
            picks an image uniformly at random, then a crop position and a flip.
        pad: ``"reflect"`` pads images smaller than ``crop`` by mirroring; ``None`` skips them
            with a warning.
        seed: item ``i`` depends only on ``(seed, i)``, so runs, resumed runs and DataLoader
            workers all see the same crops.
        dihedral: flip and rotate each crop into one of the 8 symmetries of a square (else
            only a left-right flip, half the time).
        colour: turn half the crops' hue by a random angle (a rotation of the chroma plane
            (Cb, Cr) of BT.601 YCbCr) and scale their saturation by a factor in [0.5, 1.5];
            luminance is kept.

    Items are float32 tensors [3, crop, crop] in [0, 1]. Any index ``i >= 0`` is valid, also
    past ``length``, so a training loop may index by the global sample number.
    """

    def __init__(self, images: Sequence[np.ndarray | tuple[str, np.ndarray]], crop: int = 256,
                 length: int | None = None, pad: str | None = "reflect", seed: int = 0,
                 dihedral: bool = False, colour: bool = False):
        if crop < 1:
            raise LictutorError(f"crop must be positive, got {crop}")
        if pad not in ("reflect", None):
            raise LictutorError(f"pad must be 'reflect' or None, got {pad!r}")
        self.crop, self.seed, self.dihedral, self.colour = crop, seed, dihedral, colour
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
            self.images.append(torch.tensor(img).permute(2, 0, 1))  # a copy: the array may be read-only
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
        if self.dihedral:
            patch = torch.rot90(patch, int(torch.randint(4, (1,), generator=g)), dims=(1, 2))
        patch = patch.float().div(255)
        if self.colour and torch.rand(1, generator=g) < 0.5:
            angle, saturation = torch.rand(2, generator=g) * torch.tensor([2 * math.pi, 1.0]) + torch.tensor([-math.pi, 0.5])
            patch = turn_hue(patch, float(angle), float(saturation))
        return patch


def turn_hue(x: torch.Tensor, angle: float, saturation: float = 1.0) -> torch.Tensor:
    """``x`` ([3, H, W] RGB in [0, 1]) with its chroma ``(Cb, Cr)`` (BT.601) turned by ``angle``
    radians and scaled by ``saturation``, its luminance ``Y`` kept; clipped to [0, 1]."""
    r, g, b = x
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb, cr = (b - y) / 1.772, (r - y) / 1.402
    c, s = math.cos(angle) * saturation, math.sin(angle) * saturation
    cb, cr = c * cb - s * cr, s * cb + c * cr
    r, b = y + 1.402 * cr, y + 1.772 * cb
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return torch.stack([r, g, b]).clamp(0, 1)


def _generator(seed: int, index: int) -> torch.Generator:
    """A generator seeded from ``(seed, index)``; NumPy's SeedSequence mixes the pair so that
    nearby pairs give unrelated streams."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def training_set(folder: str | os.PathLike | None = None, crop: int = 256,
                 length: int | None = None, seed: int = 0, augment=DEFAULT_AUGMENT) -> RandomCrops:
    """Random crops from the images in ``folder`` (a path or a data set name), or from the
    built-in training photos,
    augmented as ``augment`` (names in :data:`AUGMENTATIONS`) asks."""
    augment = check_augment(augment)
    return RandomCrops(training_photos(folder, crop, augment), crop=crop, length=length, seed=seed,
                       dihedral="dihedral" in augment, colour="colour" in augment)
