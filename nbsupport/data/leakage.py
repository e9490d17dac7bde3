"""Leakage checks: no test image or patient may also be a training image or patient."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["assert_disjoint", "shared_groups"]


def assert_disjoint(train_keys: Sequence[Any], test_keys: Sequence[Any], what: str = "image") -> None:
    """Raise if any test key (image id or patient id) is also a training key."""
    leak = set(train_keys) & set(test_keys)
    if leak:
        raise AssertionError(f"{len(leak)} test {what}(s) leaked into training, e.g. {sorted(map(str, leak))[:3]}")


def shared_groups(groups: dict[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """Keys (e.g. patient ids) that appear in more than one split: ``{"train/test": [ids], ...}``
    for every pair of splits that share any (sorted; pairs without overlap are left out)."""
    names = list(groups)
    sets = {k: {g for g in v if g is not None} for k, v in groups.items()}
    out: dict[str, list[Any]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = sets[a] & sets[b]
            if both:
                out[f"{a}/{b}"] = sorted(both, key=str)
    return out
