"""Where lictutor keeps its files (data sets, the checkpoint cache), and how it writes files
without losing any: outputs are checked before any work starts (:func:`check_output`) and
written atomically (:func:`write_atomic`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from lictutor.errors import LictutorError

__all__ = ["lictutor_home", "check_output", "write_atomic"]


def lictutor_home() -> Path:
    """``$LICTUTOR_HOME``, else ``~/.cache/lictutor``: data sets go to ``datasets/``, trained
    models to ``checkpoints/``."""
    return Path(os.environ.get("LICTUTOR_HOME", "~/.cache/lictutor")).expanduser()


def check_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), force: bool = False) -> Path:
    """``path`` as a :class:`Path`, if writing it loses nothing; else :class:`LictutorError`.

    Refused: an output that is one of ``inputs`` (the same file under any name), a folder,
    and an existing file unless ``force``.
    """
    path = Path(path)
    for source in inputs:
        if path.exists() and Path(source).exists() and path.samefile(source):
            raise LictutorError(f"the output '{path}' is the input '{source}'; choose another output file")
    if path.is_dir():
        raise LictutorError(f"the output '{path}' is a folder")
    if path.exists() and not force:
        raise LictutorError(f"'{path}' already exists; use --force (force=True) to replace it")
    return path


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    The rename is atomic (same folder), so ``path`` holds either its old content or the
    whole new file, never half of it, whatever interrupts the write. Missing parent folders
    are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
