"""Where lictutor keeps its files: downloaded data sets and the checkpoint cache."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["lictutor_home"]


def lictutor_home() -> Path:
    """``$LICTUTOR_HOME``, else ``~/.cache/lictutor``: data sets go to ``datasets/``, trained
    models to ``checkpoints/``."""
    return Path(os.environ.get("LICTUTOR_HOME", "~/.cache/lictutor")).expanduser()
