"""Leakage checks: no test image or patient may also be a training image or patient."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["assert_disjoint"]


def assert_disjoint(train_keys: Sequence[Any], test_keys: Sequence[Any], what: str = "image") -> None:
    """Raise if any test key (image id or patient id) is also a training key."""
    leak = set(train_keys) & set(test_keys)
    if leak:
        raise AssertionError(f"{len(leak)} test {what}(s) leaked into training, e.g. {sorted(map(str, leak))[:3]}")
