"""Public image sets, downloaded once into ``lictutor_home()/datasets`` and checked against
published checksums (:data:`DATASETS`, :func:`download`).

The bytes come through :func:`torch.hub.download_url_to_file`, which writes to a temporary
file, checks the SHA-256 and renames the file only when it is complete and right.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch.hub

from lictutor.errors import LictutorError, LictutorWarning
from lictutor.images import IMAGE_EXTENSIONS
from lictutor.paths import lictutor_home

__all__ = ["RemoteFile", "DatasetSpec", "DATASETS", "fetch", "download"]

#: seconds a download may wait for the server before it fails with a clear error
TIMEOUT = 60


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

    :func:`torch.hub.download_url_to_file` writes to a temporary file and renames it only when
    it is complete and has the right ``sha256``, so an interrupted download never looks
    finished. A wrong checksum, a network error or a server silent for :data:`TIMEOUT` seconds
    raises :class:`LictutorError` and leaves no file behind. ``sha256=None`` skips the check.
    """
    dest = Path(dest)
    if dest.exists():
        if sha256 is None or _sha256sum(dest) == sha256:
            return dest
        dest.unlink()  # stale or corrupt: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    # torch.hub opens the URL without a timeout of its own, so the process-wide default is set
    # for the download and put back afterwards (a download from another thread meanwhile shares it)
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TIMEOUT)
    try:
        torch.hub.download_url_to_file(url, os.fspath(dest), hash_prefix=sha256, progress=progress)
    except RuntimeError as err:  # torch.hub's "invalid hash value (expected ..., got ...)"
        raise LictutorError(f"checksum mismatch for {url}: {err}") from None
    except (OSError, http.client.HTTPException) as err:  # URLError and HTTPError are OSErrors
        raise LictutorError(f"cannot download {url}: {err}") from None
    finally:
        socket.setdefaulttimeout(before)
    return dest


def _sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _warn_if_unverified(remote: RemoteFile, spec: DatasetSpec, path: Path) -> None:
    if remote.sha256 is None and spec.sha1_all is None:
        warnings.warn(f"{remote.url} has no published checksum, so it could not be verified; "
                      f"its sha256 is {_sha256sum(path)}", LictutorWarning, stacklevel=3)


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
