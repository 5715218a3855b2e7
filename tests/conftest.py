"""Shared by every test: an empty ``LICTUTOR_HOME``, so the checkpoint cache starts cold and
nothing is read from or written to the user's cache. (The ``slow`` marker is registered in
pyproject.toml.)"""

import pytest


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """An empty LICTUTOR_HOME for every test."""
    monkeypatch.setenv("LICTUTOR_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
