"""Which commit of a Hugging Face hub repository was loaded, read back from the local cache.

A record that says ``pretrained:<repo>@default`` cannot be reproduced once the repository moves on;
after a hub load the book asks the cache (``huggingface_hub.try_to_load_from_cache``, no network)
which snapshot the files came from and records that commit instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["loaded_revision"]


def loaded_revision(repo_id: str, filenames: Sequence[str], revision: str | None = None,
                    cache_dir: str | Path | None = None) -> str | None:
    """The commit hash of the cached snapshot holding the first of ``filenames`` found for
    ``repo_id`` at ``revision`` (None: the default branch); None when nothing is cached (e.g. the
    weights came from a local file)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm
        return None
    for name in filenames:
        path = try_to_load_from_cache(repo_id, name, cache_dir=str(cache_dir) if cache_dir else None,
                                      revision=revision)
        if isinstance(path, str):
            parts = Path(path).parts
            if "snapshots" in parts:
                return parts[parts.index("snapshots") + 1]
    return None
