"""Where things live: the repository, the data cache, run records, the book configuration."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "repo_root",
    "cache_dir",
    "data_dir",
    "records_dir",
    "manifests_dir",
    "book_config",
    "repository_url",
]

CACHE_ENV = "NBSUPPORT_CACHE"
RECORDS_ENV = "NBSUPPORT_RECORDS"


def repo_root(start: Path | None = None) -> Path:
    """The book's repository root: the first parent holding ``_toc.yml``.

    Falls back to the current directory when run outside a checkout (e.g. pip-installed on Colab
    without the repository), so that callers get a usable path rather than an exception.
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "_toc.yml").is_file():
            return candidate
    pkg_parent = Path(__file__).resolve().parent.parent
    if (pkg_parent / "_toc.yml").is_file():
        return pkg_parent
    return here


def cache_dir() -> Path:
    """The one cache directory for downloads and prepared data.

    ``$NBSUPPORT_CACHE`` if set, else ``~/.cache/nbsupport``. Created on first use, not at import.
    """
    path = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "nbsupport")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(name: str) -> Path:
    """Directory of one dataset inside the cache (not created)."""
    return cache_dir() / "data" / name


def records_dir() -> Path:
    """Where run records are written: ``$NBSUPPORT_RECORDS`` or ``<repo>/runs``."""
    env = os.environ.get(RECORDS_ENV)
    path = Path(env).expanduser() if env else repo_root() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def manifests_dir() -> Path:
    """The shipped ``data_manifests/`` directory."""
    return repo_root() / "data_manifests"


def book_config(root: Path | None = None) -> dict[str, Any]:
    """The parsed ``_config.yml`` of the book."""
    root = root or repo_root()
    with open(root / "_config.yml", encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def repository_url(root: Path | None = None) -> str:
    """The repository URL, held once in ``_config.yml`` (``repository.url``)."""
    cfg = book_config(root)
    try:
        return str(cfg["repository"]["url"]).rstrip("/")
    except (KeyError, TypeError):
        raise KeyError("_config.yml has no repository.url: add it once, the launch buttons and "
                       "install cells read it") from None
